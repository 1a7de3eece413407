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
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::Stream;
use prost::Message;
use skein_api::proxy::wire::pb::{self, proxy_discovery_server::ProxyDiscovery};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
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

/// Configs in flight (sent, not yet acknowledged) across all proxies: the limit bounds the
/// transport buffers and the CPU a change spends at once when many proxies are pushed
/// (Istio's push throttle).
pub const DEFAULT_PUSH_LIMIT: usize = 100;
/// A push not acknowledged within this long frees its slot (and is re-sent on the next change).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// One config, encoded once.
#[derive(Debug)]
pub struct Rendered {
    /// Content version.
    pub version: String,
    /// Encoded `ProxyConfig`.
    pub bytes: Bytes,
}

/// The `ProxyDiscovery` service.
#[derive(Clone)]
pub struct Discovery {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Metrics,
    sync: SyncTable,
    throttle: Arc<Semaphore>,
    chunk: usize,
}

impl Discovery {
    /// Serves configs computed from the snapshots on `snapshots`, at most `push_limit`
    /// unacknowledged at a time, in responses of at most `chunk` config bytes.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, metrics: Metrics, push_limit: usize, chunk: usize) -> Self {
        let throttle = Arc::new(Semaphore::new(push_limit.max(1)));
        Self { snapshots, metrics, sync: SyncTable::default(), throttle, chunk: chunk.max(1) }
    }

    /// The sync table, for `/debug/syncz`.
    pub fn sync_table(&self) -> SyncTable {
        self.sync.clone()
    }
}

/// Default largest chunk of a config in one response.
pub const DEFAULT_CHUNK: usize = 256 << 10;

/// The config of `workload`, encoded, with its version: a hash of the encoding, so equal
/// configs get equal versions in every control plane process.
fn render(snap: &Snapshot, workload: &Workload) -> Rendered {
    let out = translate::outbound(snap, &translate::OutboundKey::of(workload, snap));
    let cfg = translate::assemble(snap, workload, &out);
    let bytes = Bytes::from(pb::ProxyConfig::from(&cfg).encode_to_vec());
    // DefaultHasher::new() uses fixed keys, so the hash is stable across processes.
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    Rendered { version: format!("{:016x}", h.finish()), bytes }
}

/// The encoded config of `workload`, computed once per snapshot however many proxies ask.
pub async fn rendered(snap: &Arc<Snapshot>, workload: &Workload) -> Arc<Rendered> {
    let cell = snap.rendered.lock().unwrap_or_else(|e| e.into_inner()).entry(workload.clone()).or_default().clone();
    cell.get_or_init(|| async { Arc::new(render(snap, workload)) }).await.clone()
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
        let (tx, rx) = mpsc::channel(1);
        let conn = Connection {
            node,
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            sync: self.sync.clone(),
            throttle: self.throttle.clone(),
            chunk: self.chunk,
            tx,
            current: first.version_info,
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
    throttle: Arc<Semaphore>,
    chunk: usize,
    tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
    /// Version the proxy runs (said when it connected, then what it acknowledged).
    current: String,
}

/// A push awaiting its ACK or NACK; holds a throttle slot until then.
struct Pending {
    nonce: String,
    version: String,
    changed_at: Instant,
    deadline: tokio::time::Instant,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// One push at a time per proxy: a change that arrives while a push is unacknowledged is
    /// sent (as the then-latest config) once the proxy answers.
    async fn run(mut self, mut inbound: Streaming<pb::DiscoveryRequest>) {
        let id = self.node.id.clone();
        info!(node = %id, "proxy connected");
        self.metrics.connected.inc();
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), SyncStatus::default());
        let mut pending: Option<Pending> = None;
        let mut nonce = 0u64;
        let mut dirty = true;
        loop {
            if dirty && pending.is_none() {
                dirty = false;
                match self.push(&mut nonce).await {
                    Ok(p) => pending = p,
                    Err(()) => break,
                }
            }
            let deadline = pending.as_ref().map(|p| p.deadline);
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() { break; }
                    dirty = true;
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    warn!(node = %id, "push not acknowledged in time; will resend on the next change");
                    pending = None;
                }
                msg = inbound.message() => {
                    let req = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => { debug!(node = %id, error = %e, "stream error"); break; }
                    };
                    let Some(p) = pending.take_if(|p| p.nonce == req.response_nonce) else { continue };
                    if req.error_detail.is_empty() {
                        self.metrics.convergence.observe(p.changed_at.elapsed().as_secs_f64());
                        self.current = p.version.clone();
                        self.update(|s| { s.acked = p.version.clone(); s.nack = None; });
                    } else {
                        self.metrics.xds_rejects.inc();
                        warn!(node = %id, version = p.version, error = req.error_detail, "proxy rejected config (NACK); it keeps its last good config");
                        self.update(|s| s.nack = Some(req.error_detail.clone()));
                        self.current = req.version_info;
                    }
                }
            }
        }
        self.metrics.connected.dec();
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        info!(node = %id, "proxy disconnected");
    }

    /// Sends the latest config if it differs from what the proxy runs. `Err` when the stream
    /// is gone.
    async fn push(&mut self, nonce: &mut u64) -> Result<Option<Pending>, ()> {
        let snap = self.snapshots.borrow_and_update().clone();
        let start = Instant::now();
        let workload = Workload::of(&snap, &self.node);
        let cfg = rendered(&snap, &workload).await;
        if cfg.version == self.current {
            self.metrics.pushes.get_or_create(&PushLabels { r#type: "unchanged" }).inc();
            return Ok(None);
        }
        let slot = self.throttle.clone().acquire_owned().await.map_err(|_| ())?;
        *nonce += 1;
        // Slices of the shared bytes: no copy until the transport encodes a chunk.
        let total = cfg.bytes.len();
        let mut at = 0;
        loop {
            let end = (at + self.chunk).min(total);
            let response = pb::DiscoveryResponse {
                version_info: cfg.version.clone(),
                nonce: nonce.to_string(),
                config: cfg.bytes.slice(at..end),
                more: end < total,
            };
            self.tx.send(Ok(response)).await.map_err(|_| ())?;
            if end == total {
                break;
            }
            at = end;
        }
        self.metrics.push_time.observe(start.elapsed().as_secs_f64());
        self.metrics.pushes.get_or_create(&PushLabels { r#type: "sent" }).inc();
        debug!(node = %self.node.id, version = cfg.version, nonce, "config pushed");
        self.update(|s| {
            s.sent = cfg.version.clone();
            s.pushes += 1;
        });
        Ok(Some(Pending {
            nonce: nonce.to_string(),
            version: cfg.version.clone(),
            changed_at: snap.changed_at.unwrap_or(start),
            deadline: tokio::time::Instant::now() + ACK_TIMEOUT,
            _slot: slot,
        }))
    }

    fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        if let Some(s) = self.sync.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.node.id) {
            f(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_config_is_encoded_once_per_snapshot_and_workload() {
        let snap = Arc::new(Snapshot::default());
        let w = Workload { namespace: "default".into(), ..Default::default() };
        let (a, b) = tokio::join!(rendered(&snap, &w), rendered(&snap, &w));
        assert!(Arc::ptr_eq(&a, &b), "computed twice");
        let other = rendered(&snap, &Workload { namespace: "other".into(), ..Default::default() }).await;
        assert!(!Arc::ptr_eq(&a, &other));
        // Same content, same version, in any process: the version is a content hash.
        let again = rendered(&Arc::new(Snapshot::default()), &w).await;
        assert_eq!(again.version, a.version);
        assert!(pb::ProxyConfig::decode(a.bytes.clone()).is_ok());
    }
}
