//! The discovery server: one bidirectional stream per proxy, ADS-like. The server pushes a
//! config whenever the proxy's computed config changes; each push carries a version (a hash
//! of the config's content, so it is the same across control plane restarts) and a nonce;
//! the proxy answers with the nonce and either the version it applied (ACK) or an error
//! (NACK, the proxy keeps its last good config). A proxy that reconnects sends the version it
//! runs; if that is still current nothing is re-sent.
//!
//! Incremental updates: when the proxy has acknowledged a config and the new one differs only
//! in clusters (an endpoint change), the push is a delta against the acknowledged version
//! (`base_version`); a proxy that does not run that base NACKs and gets the whole config.

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use prometheus_client::metrics::counter::Counter;
use skein_api::proxy::wire::pb::{self, proxy_discovery_server::ProxyDiscovery};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::{
    ca::{TokenReviewer, bearer},
    metrics::{Metrics, PushLabels},
    render::{Chunks, Configs, Rendered},
    translate::{Node, Workload},
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
    /// The config the proxy acknowledged last, which it runs (a proxy acknowledges only a
    /// config it has applied): `/debug/config_dump?proxyID=`.
    #[serde(skip)]
    pub running: Option<Arc<Rendered>>,
}

/// Sync state of all connected proxies, by node id. Each connection updates its own entry, so
/// a push takes no lock shared with other proxies.
#[derive(Clone, Default)]
pub struct SyncTable(Arc<Mutex<BTreeMap<String, Arc<Mutex<SyncStatus>>>>>);

impl SyncTable {
    /// A copy of every proxy's state.
    pub fn snapshot(&self) -> BTreeMap<String, SyncStatus> {
        let table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        table.iter().map(|(id, s)| (id.clone(), s.lock().unwrap_or_else(|e| e.into_inner()).clone())).collect()
    }

    /// The config the proxy `proxy` runs, as JSON like the proxy's own `/config_dump` (TLS keys
    /// redacted). `proxy` is a node id or `<pod>.<namespace>`, as `istioctl` takes it.
    pub fn config_dump(&self, proxy: &str) -> Result<String, DumpError> {
        let running = {
            let table = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let (_, status) = table
                .iter()
                .find(|(id, _)| *id == proxy || id.split('~').nth(2) == Some(proxy))
                .ok_or(DumpError::NotConnected)?;
            status.lock().unwrap_or_else(|e| e.into_inner()).running.clone().ok_or(DumpError::NothingAcknowledged)?
        };
        // Decoded outside the table's lock: a large config takes a while.
        let config = running.decode().map_err(DumpError::Undecodable)?;
        Ok(serde_json::to_string_pretty(&config).unwrap_or_default())
    }

    fn join(&self, id: &str) -> Arc<Mutex<SyncStatus>> {
        let entry = Arc::new(Mutex::new(SyncStatus::default()));
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), entry.clone());
        entry
    }

    /// Removes `entry`, unless a newer stream of the same proxy replaced it.
    fn leave(&self, id: &str, entry: &Arc<Mutex<SyncStatus>>) {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if table.get(id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            table.remove(id);
        }
    }
}

impl crate::metrics::Debugz for SyncTable {
    fn syncz(&self) -> String {
        serde_json::to_string_pretty(&self.snapshot()).unwrap_or_default()
    }

    fn config_dump(&self, proxy: &str) -> Result<String, String> {
        SyncTable::config_dump(self, proxy).map_err(|e| e.to_string())
    }
}

/// Why `/debug/config_dump` has no config for a proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    /// No proxy of that id or pod is connected to this control plane.
    #[error("not connected to this control plane")]
    NotConnected,
    /// Connected, but it has acknowledged no config of this control plane yet.
    #[error("connected, but it has acknowledged no config yet")]
    NothingAcknowledged,
    /// The stored config did not decode (a bug: it is the encoding that was sent).
    #[error("its config does not decode: {0}")]
    Undecodable(String),
}

/// Configs larger than one chunk in flight (sent, not yet acknowledged) across all proxies:
/// the limit bounds the transport buffers and the CPU a change spends at once when many
/// proxies are pushed (Istio's push throttle). Smaller pushes (deltas) are not held back.
pub const DEFAULT_PUSH_LIMIT: usize = 100;
/// A push not acknowledged within this long frees its slot (and is re-sent on the next change).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The `ProxyDiscovery` service.
#[derive(Clone)]
pub struct Discovery {
    snapshots: watch::Receiver<Arc<Configs>>,
    metrics: Metrics,
    sync: SyncTable,
    throttle: Arc<Semaphore>,
    chunk: usize,
    reviewer: Option<TokenReviewer>,
}

impl Discovery {
    /// Serves configs computed from the snapshots on `snapshots`, at most `push_limit` of
    /// those larger than one chunk unacknowledged at a time, in responses of at most `chunk`
    /// config bytes. Proxies that send a ServiceAccount token are authenticated with `reviewer`.
    pub fn new(
        snapshots: watch::Receiver<Arc<Configs>>,
        metrics: Metrics,
        push_limit: usize,
        chunk: usize,
        reviewer: Option<TokenReviewer>,
    ) -> Self {
        let throttle = Arc::new(Semaphore::new(push_limit.max(1)));
        Self { snapshots, metrics, sync: SyncTable::default(), throttle, chunk: chunk.max(1), reviewer }
    }

    /// The sync table, for `/debug/syncz`.
    pub fn sync_table(&self) -> SyncTable {
        self.sync.clone()
    }
}

/// Default largest chunk of a config in one response.
pub const DEFAULT_CHUNK: usize = 32 << 10;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ProxyDiscovery for Discovery {
    type StreamConfigStream = ResponseStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        // A token is optional (sidecars need no secrets), but one that is sent must be valid.
        let identity = match (bearer(request.metadata()), &self.reviewer) {
            (Some(token), Some(reviewer)) => Some(reviewer.authenticate(&token).await?),
            _ => None,
        };
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream closed before a request"))?;
        let id = first.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
        let node = Node::parse(&id).map_err(|e| Status::invalid_argument(format!("node.id: {e}")))?;
        let pushed = |t| self.metrics.pushes.get_or_create(&PushLabels { r#type: t }).clone();
        let conn = Connection {
            status: self.sync.join(&node.id),
            pushed: Pushed { full: pushed("full"), delta: pushed("delta"), unchanged: pushed("unchanged") },
            workload: None,
            node,
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            sync: self.sync.clone(),
            throttle: self.throttle.clone(),
            chunk: self.chunk,
            current: first.version_info,
            running: None,
            full_next: false,
            identity,
        };
        Ok(Response::new(Box::pin(conn.serve(inbound))))
    }
}

struct Connection {
    node: Node,
    snapshots: watch::Receiver<Arc<Configs>>,
    metrics: Metrics,
    sync: SyncTable,
    /// This proxy's entry in `sync`.
    status: Arc<Mutex<SyncStatus>>,
    /// `pilot_xds_pushes` by type, looked up once.
    pushed: Pushed,
    /// The workload last computed, and the pod it was computed from.
    workload: Option<(Option<Arc<Pod>>, Workload)>,
    throttle: Arc<Semaphore>,
    chunk: usize,
    /// Version the proxy runs (said when it connected, then what it acknowledged).
    current: String,
    /// The config the proxy runs, when it is one this stream sent (base of deltas).
    running: Option<Arc<Rendered>>,
    /// The proxy refused a delta: send the whole config next.
    full_next: bool,
    /// `(namespace, service account)` the proxy proved with its token.
    identity: Option<(String, String)>,
}

/// `pilot_xds_pushes` counters.
struct Pushed {
    full: Counter,
    delta: Counter,
    unchanged: Counter,
}

/// A push awaiting its ACK or NACK; holds its throttle slot (if it needed one) until then.
struct Pending {
    nonce: String,
    config: Arc<Rendered>,
    delta: bool,
    changed_at: Instant,
    deadline: tokio::time::Instant,
    _slot: Option<OwnedSemaphorePermit>,
}

/// A config about to be sent: whole, or as a delta against `delta.0`.
struct Push {
    nonce: String,
    config: Arc<Rendered>,
    delta: Option<(String, bytes::Bytes)>,
    /// Bytes of config (or delta) the push carries.
    total: usize,
    slot: Option<OwnedSemaphorePermit>,
    start: Instant,
    changed_at: Instant,
}

impl Push {
    /// The responses carrying this push, in chunks of at most `chunk` bytes. Chunks are made
    /// as they are sent: large parts are slices of the shared encoding, small ones are
    /// gathered into one chunk-sized copy at a time.
    fn responses(&self, chunk: usize) -> impl Iterator<Item = pb::DiscoveryResponse> + Send + '_ {
        let chunks: Box<dyn Iterator<Item = bytes::Bytes> + Send + '_> = match &self.delta {
            Some((_, bytes)) => Box::new(Chunks::new(std::iter::once(bytes), chunk)),
            None => Box::new(Chunks::new(self.config.parts(), chunk)),
        };
        let mut sent = 0;
        let mut chunks = chunks.map(move |c| {
            sent += c.len();
            let more = sent < self.total;
            self.response(c, more)
        });
        // An empty delta (only possible if two contents hash alike) still needs an answer.
        let first = chunks.next().unwrap_or_else(|| self.response(bytes::Bytes::new(), false));
        std::iter::once(first).chain(chunks)
    }

    fn response(&self, config: bytes::Bytes, more: bool) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version_info: self.config.version.clone(),
            nonce: self.nonce.clone(),
            config,
            more,
            base_version: self.delta.as_ref().map(|(base, _)| base.clone()).unwrap_or_default(),
        }
    }
}

/// Counts the proxy as connected while its stream lives, however the stream ends: the proxy
/// closing it, an error, or hyper dropping it with the connection.
struct Joined {
    id: String,
    metrics: Metrics,
    sync: SyncTable,
    status: Arc<Mutex<SyncStatus>>,
}

impl Joined {
    fn new(id: &str, metrics: &Metrics, sync: &SyncTable, status: &Arc<Mutex<SyncStatus>>) -> Self {
        info!(node = %id, "proxy connected");
        metrics.connected.inc();
        Self { id: id.to_string(), metrics: metrics.clone(), sync: sync.clone(), status: status.clone() }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.metrics.connected.dec();
        self.sync.leave(&self.id, &self.status);
        info!(node = %self.id, "proxy disconnected");
    }
}

impl Connection {
    /// The responses of this proxy's stream. One push at a time per proxy: a change that
    /// arrives while a push is unacknowledged is sent (as the then-latest config) once the proxy
    /// answers. The stream is polled by the task that writes the HTTP/2 stream (tonic's), not
    /// by a task of its own: a change reaches the wire after one wake-up per proxy instead of a
    /// hand-over through a channel to another task — with thousands of proxies that hand-over
    /// was a large share of the control plane's CPU per change.
    fn serve(
        mut self,
        mut inbound: Streaming<pb::DiscoveryRequest>,
    ) -> impl Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send + 'static {
        let id = self.node.id.clone();
        // Made here, not in the stream, so a stream dropped before its first poll still leaves.
        let joined = Joined::new(&id, &self.metrics, &self.sync, &self.status);
        async_stream::stream! {
            let _joined = joined;
            let mut pending: Option<Pending> = None;
            let mut nonce = 0u64;
            let mut dirty = true;
            loop {
                if dirty && pending.is_none() {
                    dirty = false;
                    let push = match self.prepare(&mut nonce).await {
                        Ok(Some(push)) => push,
                        Ok(None) => continue,
                        Err(()) => break,
                    };
                    for response in push.responses(self.chunk) {
                        yield Ok(response);
                    }
                    pending = Some(self.sent(push));
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
                        if self.answered(p, req) {
                            dirty = true;
                        }
                    }
                }
            }
        }
    }

    /// Takes the proxy's answer to push `p`; true when the next push must follow at once (a
    /// refused delta is retried once as the whole config).
    fn answered(&mut self, p: Pending, req: pb::DiscoveryRequest) -> bool {
        let version = p.config.version.clone();
        if req.error_detail.is_empty() {
            self.metrics.convergence.observe(p.changed_at.elapsed().as_secs_f64());
            self.current = version.clone();
            self.running = Some(p.config.clone());
            self.update(|s| {
                s.acked = version;
                s.nack = None;
                s.running = Some(p.config);
            });
            return false;
        }
        self.metrics.xds_rejects.inc();
        warn!(node = %self.node.id, version, delta = p.delta, error = req.error_detail, "proxy rejected config (NACK); it keeps its last good config");
        self.update(|s| s.nack = Some(req.error_detail.clone()));
        self.current = req.version_info;
        self.running = self.running.take().filter(|r| r.version == self.current);
        let running = self.running.clone();
        self.update(|s| s.running = running);
        if p.delta {
            self.full_next = true;
        }
        p.delta
    }

    /// The push of the latest config if it differs from what the proxy runs: a delta against
    /// the config it runs when only clusters changed, else whole. `Err` when the control plane
    /// is shutting down.
    async fn prepare(&mut self, nonce: &mut u64) -> Result<Option<Push>, ()> {
        let configs = self.snapshots.borrow_and_update().clone();
        let snap = configs.snapshot();
        let start = Instant::now();
        // The workload follows from the pod alone: recomputed when the pod object changes.
        let pod = snap.pod(&self.node.namespace, &self.node.pod).cloned();
        let workload = match self.workload.take() {
            Some((seen, w)) if seen.as_ref().map(Arc::as_ptr) == pod.as_ref().map(Arc::as_ptr) => w,
            _ => {
                let mut w = Workload::of(snap, &self.node);
                w.authenticated = pod.is_some()
                    && self.identity.as_ref().is_some_and(|(ns, sa)| *ns == w.namespace && *sa == w.service_account);
                w
            }
        };
        let cfg = configs.rendered(&workload).await;
        self.workload = Some((pod, workload));
        if cfg.version == self.current {
            self.pushed.unchanged.inc();
            // A proxy that resumed with this content (versions are content hashes) runs it:
            // it is the base of the next delta and what `/debug/config_dump` shows.
            if self.running.is_none() {
                self.running = Some(cfg.clone());
                self.update(|s| {
                    s.acked = cfg.version.clone();
                    s.running = Some(cfg);
                });
            }
            return Ok(None);
        }
        let base = self.running.as_ref().filter(|r| r.version == self.current && !self.full_next);
        let delta = base.and_then(|b| Some((b.version.clone(), cfg.delta_from(b)?)));
        self.full_next = false;
        let total = delta.as_ref().map_or_else(|| cfg.len(), |(_, bytes)| bytes.len());
        // A config of one chunk or less (a delta, a small mesh) holds no more transport
        // memory than any stream may anyway: only larger ones wait for a slot.
        let slot = match total > self.chunk {
            true => Some(self.throttle.clone().acquire_owned().await.map_err(|_| ())?),
            false => None,
        };
        *nonce += 1;
        Ok(Some(Push {
            nonce: nonce.to_string(),
            config: cfg,
            delta,
            total,
            slot,
            start,
            changed_at: snap.changed_at.unwrap_or(start),
        }))
    }

    /// Records that `push` is on the wire; it awaits the proxy's answer.
    fn sent(&self, push: Push) -> Pending {
        self.metrics.push_time.observe(push.start.elapsed().as_secs_f64());
        let kind = if push.delta.is_some() { "delta" } else { "full" };
        if push.delta.is_some() { &self.pushed.delta } else { &self.pushed.full }.inc();
        debug!(node = %self.node.id, version = push.config.version, nonce = push.nonce, kind, bytes = push.total, "config pushed");
        self.update(|s| {
            s.sent = push.config.version.clone();
            s.pushes += 1;
        });
        Pending {
            nonce: push.nonce,
            delta: push.delta.is_some(),
            config: push.config,
            changed_at: push.changed_at,
            deadline: tokio::time::Instant::now() + ACK_TIMEOUT,
            _slot: push.slot,
        }
    }

    fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_config_is_rendered_once_per_snapshot_and_workload() {
        let configs = Configs::default();
        let w = Workload { namespace: "default".into(), ..Default::default() };
        let (a, b) = tokio::join!(configs.rendered(&w), configs.rendered(&w));
        assert!(Arc::ptr_eq(&a, &b), "computed twice");
        let other = configs.rendered(&Workload { namespace: "other".into(), ..Default::default() }).await;
        assert!(!Arc::ptr_eq(&a, &other));
        // Same content, same version, in any process: the version is a content hash.
        let again = Configs::default().rendered(&w).await;
        assert_eq!(again.version, a.version);
    }

    /// A discovery server on loopback serving `configs`, and a way to open streams to it.
    async fn server(
        configs: Arc<Configs>,
        push_limit: usize,
        chunk: usize,
    ) -> (tonic::transport::Channel, Metrics, watch::Sender<Arc<Configs>>) {
        use skein_api::proxy::wire::pb::proxy_discovery_server::ProxyDiscoveryServer;
        let (tx, rx) = watch::channel(configs);
        let metrics = Metrics::default();
        let discovery = Discovery::new(rx, metrics.clone(), push_limit, chunk, None);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ProxyDiscoveryServer::new(discovery))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        (ch, metrics, tx)
    }

    /// Opens a stream as `pod` (in namespace `default`), saying it runs `running`.
    async fn open(
        ch: &tonic::transport::Channel,
        pod: &str,
        running: &str,
    ) -> (tokio::sync::mpsc::Sender<pb::DiscoveryRequest>, Streaming<pb::DiscoveryResponse>) {
        use skein_api::proxy::wire::pb::proxy_discovery_client::ProxyDiscoveryClient;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node =
            pb::Node { id: format!("sidecar~10.0.0.1~{pod}.default~default.svc.cluster.local"), ..Default::default() };
        tx.send(pb::DiscoveryRequest { node: Some(node), version_info: running.into(), ..Default::default() })
            .await
            .unwrap();
        let stream = ProxyDiscoveryClient::new(ch.clone())
            .stream_config(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, stream)
    }

    /// The next whole push (all its chunks), within `within`.
    async fn next(s: &mut Streaming<pb::DiscoveryResponse>, within: Duration) -> Option<pb::DiscoveryResponse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = tokio::time::timeout_at(deadline, s.message()).await.ok()?.ok()??;
            if !r.more {
                return Some(r);
            }
        }
    }

    #[tokio::test]
    async fn the_push_limit_holds_large_pushes_until_earlier_ones_are_acknowledged() {
        // One byte chunks: every config needs a throttle slot, and there is one.
        let (ch, _metrics, _tx) = server(Arc::new(Configs::default()), 1, 1).await;
        let (a_tx, mut a) = open(&ch, "a", "").await;
        let first = next(&mut a, Duration::from_secs(5)).await.expect("a gets its config");
        let (_b_tx, mut b) = open(&ch, "b", "").await;
        assert!(next(&mut b, Duration::from_millis(500)).await.is_none(), "b waits while a's push is unacknowledged");
        a_tx.send(pb::DiscoveryRequest {
            version_info: first.version_info,
            response_nonce: first.nonce,
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(next(&mut b, Duration::from_secs(5)).await.is_some(), "a's ACK frees the slot for b");
    }

    #[tokio::test]
    async fn a_proxy_that_runs_the_current_config_is_not_sent_it_again() {
        let (ch, metrics, _tx) = server(Arc::new(Configs::default()), 100, DEFAULT_CHUNK).await;
        let (_a_tx, mut a) = open(&ch, "a", "").await;
        let current = next(&mut a, Duration::from_secs(5)).await.expect("a config").version_info;
        let (_b_tx, mut b) = open(&ch, "b", &current).await;
        assert!(next(&mut b, Duration::from_millis(500)).await.is_none(), "re-sent an unchanged config");
        let text = metrics.render();
        assert!(text.contains("pilot_xds_pushes_total{type=\"unchanged\"} 1"), "{text}");
        assert!(text.contains("pilot_xds_pushes_total{type=\"full\"} 1"), "{text}");
    }
}
