//! The discovery server: one bidirectional stream per proxy, ADS-like. The server pushes a
//! config whenever the proxy's computed config changes; each push carries a version (a hash
//! of the config, so it is the same across control plane restarts) and a nonce; the proxy
//! answers with the nonce and either the version it applied (ACK) or an error (NACK, the
//! proxy keeps its last good config). A proxy that reconnects sends the version it runs; if
//! that is still current nothing is re-sent.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::Stream;
use prost::Message;
use skein_api::proxy::wire::pb::{self, proxy_discovery_server::ProxyDiscovery};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::{
    metrics::{Metrics, PushLabels},
    snapshot::Snapshot,
    translate::{self, Node, NodeKind, Workload},
};

/// What one connected proxy has been sent and has acknowledged (`/debug/syncz`).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Version last sent.
    pub sent: String,
    /// Version last acknowledged.
    pub acked: String,
    /// Error of the last NACK, if the last answer was one.
    pub nack: Option<String>,
    /// Pushes sent on this stream.
    pub pushes: u64,
}

/// Sync state of all connected proxies, by node id.
pub type SyncTable = Arc<Mutex<BTreeMap<String, SyncStatus>>>;

/// The `ProxyDiscovery` service.
#[derive(Clone)]
pub struct Discovery {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Metrics,
    sync: SyncTable,
}

impl Discovery {
    /// Serves configs computed from the snapshots on `snapshots`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, metrics: Metrics) -> Self {
        Self { snapshots, metrics, sync: SyncTable::default() }
    }

    /// The sync table, for `/debug/syncz`.
    pub fn sync_table(&self) -> SyncTable {
        self.sync.clone()
    }
}

/// The config for `node` from `snap`, in wire form, with its content version filled in.
pub fn config_for(snap: &Snapshot, node: &Node) -> pb::ProxyConfig {
    let workload = Workload::of(snap, node);
    let out = translate::outbound(snap, &translate::OutboundKey::of(&workload));
    let cfg = translate::assemble(snap, &workload, &out);
    let mut wire = pb::ProxyConfig::from(&cfg);
    wire.version = version_of(&wire);
    wire
}

/// A content hash: equal configs get equal versions, in every control plane process.
fn version_of(cfg: &pb::ProxyConfig) -> String {
    // DefaultHasher::new() uses fixed keys, so the hash is stable across processes.
    let mut h = std::hash::DefaultHasher::new();
    cfg.encode_to_vec().hash(&mut h);
    format!("{:016x}", h.finish())
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ProxyDiscovery for Discovery {
    type StreamConfigStream = ResponseStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream closed before a request"))?;
        let id = first.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
        let node = Node::parse(&id).map_err(|e| Status::invalid_argument(format!("node.id: {e}")))?;
        if node.kind != NodeKind::Sidecar {
            return Err(Status::unimplemented("only sidecar proxies are configured by this control plane so far"));
        }
        let (tx, rx) = mpsc::channel(2);
        let conn = Connection {
            node,
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            sync: self.sync.clone(),
            tx,
            resumed: first.version_info,
        };
        tokio::spawn(conn.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Connection {
    node: Node,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Metrics,
    sync: SyncTable,
    tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
    /// Version the proxy said it runs when it connected.
    resumed: String,
}

/// A push awaiting its ACK or NACK.
struct Pending {
    nonce: String,
    version: String,
    changed_at: Instant,
}

impl Connection {
    async fn run(mut self, mut inbound: Streaming<pb::DiscoveryRequest>) {
        let id = self.node.id.clone();
        info!(node = %id, "proxy connected");
        self.metrics.connected.inc();
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), SyncStatus::default());
        let mut current = std::mem::take(&mut self.resumed);
        let mut pending: Option<Pending> = None;
        let mut nonce = 0u64;
        self.snapshots.mark_changed();
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() { break; }
                    let snap = self.snapshots.borrow_and_update().clone();
                    let start = Instant::now();
                    let cfg = config_for(&snap, &self.node);
                    let sent_or_current = pending.as_ref().map_or(&current, |p| &p.version);
                    if cfg.version == *sent_or_current {
                        self.metrics.pushes.get_or_create(&PushLabels { r#type: "unchanged" }).inc();
                        continue;
                    }
                    nonce += 1;
                    let version = cfg.version.clone();
                    let response = pb::DiscoveryResponse { version_info: version.clone(), nonce: nonce.to_string(), config: Some(cfg) };
                    if self.tx.send(Ok(response)).await.is_err() { break; }
                    self.metrics.push_time.observe(start.elapsed().as_secs_f64());
                    self.metrics.pushes.get_or_create(&PushLabels { r#type: "sent" }).inc();
                    debug!(node = %id, version, nonce, "config pushed");
                    self.update(|s| { s.sent = version.clone(); s.pushes += 1; });
                    pending = Some(Pending { nonce: nonce.to_string(), version, changed_at: snap.changed_at.unwrap_or(start) });
                }
                msg = inbound.message() => {
                    let req = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => { debug!(node = %id, error = %e, "stream error"); break; }
                    };
                    let Some(p) = pending.take_if(|p| p.nonce == req.response_nonce) else {
                        // An answer to a push that was superseded: the newer one is still pending.
                        continue;
                    };
                    if req.error_detail.is_empty() {
                        self.metrics.convergence.observe(p.changed_at.elapsed().as_secs_f64());
                        current = p.version.clone();
                        self.update(|s| { s.acked = p.version.clone(); s.nack = None; });
                    } else {
                        self.metrics.xds_rejects.inc();
                        warn!(node = %id, version = p.version, error = req.error_detail, "proxy rejected config (NACK); it keeps its last good config");
                        self.update(|s| s.nack = Some(req.error_detail.clone()));
                        // What the proxy runs is unchanged; a later config is sent as usual.
                        current = req.version_info;
                    }
                }
            }
        }
        self.metrics.connected.dec();
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        info!(node = %id, "proxy disconnected");
    }

    fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        if let Some(s) = self.sync.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.node.id) {
            f(s);
        }
    }
}
