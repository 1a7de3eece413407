//! Prometheus metrics, named as istiod names them where there is an equivalent (`pilot_xds`,
//! `pilot_xds_pushes`, `pilot_proxy_convergence_time`, `pilot_total_xds_rejects`), and the
//! monitoring endpoint: `/metrics`, `/ready` (ready once the first snapshot is built and the
//! gRPC server is serving), `/debug/syncz` (each proxy's sent and acknowledged versions) and
//! `/debug/config_dump?proxyID=<pod>.<namespace>` (the config a proxy runs), as istiod serves
//! them on 15014.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Labels of `pilot_xds_pushes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `full` (whole config), `delta` (changed clusters only), `unchanged` (computed but identical).
    pub r#type: &'static str,
}

/// Labels of `skein_rejected_resources`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Resource kind.
    pub kind: &'static str,
}

/// The control plane's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Connected proxies.
    pub connected: Gauge,
    /// Configs pushed, by outcome.
    pub pushes: Family<PushLabels, Counter>,
    /// Change observed → config acknowledged by the proxy, seconds.
    pub convergence: Histogram,
    /// Time to compute and send one proxy's config, seconds.
    pub push_time: Histogram,
    /// NACKs received.
    pub xds_rejects: Counter,
    /// Resources currently rejected, by kind.
    pub rejected: Family<KindLabels, Gauge>,
    /// Snapshots built.
    pub snapshots: Counter,
    /// Status writes on Istio resources (0 while verdicts do not change).
    pub status_writes: Counter,
    /// Time to build a snapshot, seconds.
    pub snapshot_time: Histogram,
    /// 1 while this replica is the leader (writes status and Events).
    pub leader: Gauge,
    /// Certificates signed.
    pub certs_signed: Counter,
    /// Certificate requests refused (authentication or CSR errors).
    pub certs_refused: Counter,
    /// Pods given a sidecar by the injection webhook.
    pub injections: Counter,
    ready: Arc<AtomicBool>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0].into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let m = Self {
            registry: Arc::default(),
            connected: Gauge::default(),
            pushes: Family::default(),
            convergence: Histogram::new(latency_buckets()),
            push_time: Histogram::new(latency_buckets()),
            xds_rejects: Counter::default(),
            rejected: Family::default(),
            snapshots: Counter::default(),
            status_writes: Counter::default(),
            snapshot_time: Histogram::new(latency_buckets()),
            leader: Gauge::default(),
            certs_signed: Counter::default(),
            certs_refused: Counter::default(),
            injections: Counter::default(),
            ready: Arc::default(),
        };
        r.register("pilot_xds", "Proxies connected to this control plane", m.connected.clone());
        r.register("pilot_xds_pushes", "Configuration pushes, by type", m.pushes.clone());
        r.register(
            "pilot_proxy_convergence_time",
            "Seconds from a configuration change to the proxy's acknowledgement",
            m.convergence.clone(),
        );
        r.register("skein_push_time_seconds", "Seconds to compute and send one proxy's config", m.push_time.clone());
        r.register("pilot_total_xds_rejects", "Configurations rejected (NACKed) by proxies", m.xds_rejects.clone());
        r.register("skein_rejected_resources", "Istio resources currently rejected, by kind", m.rejected.clone());
        r.register("skein_snapshots", "Registry snapshots built", m.snapshots.clone());
        r.register("skein_status_writes", "Status writes on Istio resources", m.status_writes.clone());
        r.register("skein_snapshot_build_seconds", "Seconds to build a snapshot", m.snapshot_time.clone());
        r.register("skein_leader", "1 while this replica writes status and Events", m.leader.clone());
        r.register("citadel_server_success_cert_issuance_count", "Certificates signed", m.certs_signed.clone());
        r.register("skein_cert_requests_refused", "Certificate requests refused", m.certs_refused.clone());
        r.register("sidecar_injection_success", "Pods given a sidecar", m.injections.clone());
        Self { registry: Arc::new(r), ..m }
    }
}

impl Metrics {
    /// Marks the control plane ready (`/ready` answers 200).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            warn!("metrics encoding failed");
        }
        out
    }
}

/// What the debug endpoints read: the discovery server's view of its proxies. A trait, so
/// this module needs nothing of the discovery server's (which reports into these metrics).
pub trait Debugz: Send + Sync {
    /// `/debug/syncz`: every connected proxy's sync state, as JSON.
    fn syncz(&self) -> String;
    /// `/debug/config_dump?proxyID=`: the config `proxy` runs as JSON, or why there is none.
    fn config_dump(&self, proxy: &str) -> Result<String, String>;
}

/// The `/debug/config_dump` answer for `query` (`proxyID=<pod>.<namespace>` or a node id).
fn config_dump(debugz: &dyn Debugz, query: Option<&str>) -> (StatusCode, String) {
    let id = query.and_then(|q| url_query(q).find_map(|(k, v)| (k == "proxyID" && !v.is_empty()).then_some(v)));
    let Some(id) = id else {
        return (StatusCode::BAD_REQUEST, "proxyID: required, <pod>.<namespace> or a node id\n".into());
    };
    match debugz.config_dump(&id) {
        Ok(dump) => (StatusCode::OK, dump),
        Err(why) => (StatusCode::NOT_FOUND, format!("proxy {id}: {why}\n")),
    }
}

fn url_query(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// Serves `/metrics`, `/ready` and the debug endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics, debugz: Arc<dyn Debugz>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (metrics, debugz) = (metrics.clone(), debugz.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, debugz) = (metrics.clone(), debugz.clone());
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics.render()),
                        "/ready" if metrics.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n".into()),
                        "/ready" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
                        "/debug/syncz" => (StatusCode::OK, debugz.syncz()),
                        "/debug/config_dump" => config_dump(&*debugz, req.uri().query()),
                        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                    };
                    Response::builder().status(status).body(Full::new(Bytes::from(body)))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await
            {
                debug!(error = %e, "monitoring connection");
            }
        });
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
