//! Prometheus metrics and the operator's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// The operator's metrics. Cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    objects_applied: Counter,
    status_writes: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("skein_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let objects_applied = Counter::default();
        let status_writes = Counter::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconcile passes of MeshControlPlanes", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed, by error kind (transient ones are requeued with back-off)",
            reconcile_errors.clone(),
        );
        registry.register("reconcile_duration_seconds", "Duration of a reconcile pass", reconcile_duration.clone());
        registry.register(
            "objects_applied",
            "Managed objects created or patched (0 in steady state)",
            objects_applied.clone(),
        );
        registry.register("status_writes", "MeshControlPlane status updates written", status_writes.clone());
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        Self {
            registry: Arc::new(registry),
            reconciles,
            reconcile_errors,
            reconcile_duration,
            objects_applied,
            status_writes,
            leader,
        }
    }
}

/// Labels of a failed reconcile: what kind of error it was.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::error::Error::metric_label`].
    pub error: &'static str,
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer { start: Instant::now(), histogram: self.reconcile_duration.clone() }
    }

    /// Counts a failed reconcile under its error kind.
    pub fn reconcile_error(&self, error: &'static str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { error }).inc();
    }

    /// Counts managed objects written by one pass.
    pub fn objects_applied(&self, n: u64) {
        self.objects_applied.inc_by(n);
    }

    /// Counts a status write.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Records leadership.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
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

/// Health state reported by the endpoints.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Marks the process ready (connected to the apiserver) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics, health: Health) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics and health");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = match (req.method(), req.uri().path()) {
                    (&Method::GET, "/metrics") => {
                        let mut r = respond(StatusCode::OK, metrics.render());
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        r
                    }
                    (&Method::GET, "/healthz") => respond(StatusCode::OK, "ok"),
                    (&Method::GET, "/readyz") if health.ready.load(Ordering::Relaxed) => respond(StatusCode::OK, "ok"),
                    (&Method::GET, "/readyz") => respond(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
                    (&Method::GET, _) => respond(StatusCode::NOT_FOUND, "not found"),
                    _ => respond(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
                };
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_operator_prefix() {
        let m = Metrics::default();
        drop(m.reconcile_timer());
        m.objects_applied(3);
        let text = m.render();
        assert!(text.contains("skein_operator_reconciles_total 1"), "{text}");
        assert!(text.contains("skein_operator_objects_applied_total 3"), "{text}");
        assert!(text.contains("skein_operator_reconcile_duration_seconds_count 1"), "{text}");
    }
}
