//! Istio-compatible telemetry: `istio_requests_total` and `istio_request_duration_milliseconds`
//! with Istio's label names, plus the proxy's own counters.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Labels of Istio's standard HTTP metrics (the subset the proxy knows on its own).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `source` on the client side, `destination` on the server side.
    pub reporter: &'static str,
    /// Destination service host (`reviews.default.svc.cluster.local`), `unknown` if none.
    pub destination_service: String,
    /// Short service name.
    pub destination_service_name: String,
    /// HTTP status sent to the client.
    pub response_code: u16,
    /// Envoy-style response flags: `-`, `NR` (no route), `UF` (upstream connect failure),
    /// `UT` (upstream timeout), `FI` (fault abort), `DI` (delay), `UO` (overflow).
    pub response_flags: &'static str,
    /// `http`.
    pub request_protocol: &'static str,
}

/// Label of Envoy-style per-cluster stats.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    /// Cluster name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub cluster_name: String,
}

/// Labels of Istio's TCP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Destination service host.
    pub destination_service: String,
}

/// All metrics of one proxy.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// `istio_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `istio_request_duration_milliseconds`.
    pub duration: Family<RequestLabels, Histogram>,
    /// Configs refused (NACKed) by validation.
    pub config_rejected: Counter,
    /// Requests refused by circuit breakers (`envoy_cluster_upstream_rq_pending_overflow`).
    pub pending_overflow: Family<ClusterLabel, Counter>,
    /// `istio_tcp_connections_opened_total`.
    pub tcp_opened: Family<TcpLabels, Counter>,
    /// `istio_tcp_connections_closed_total`.
    pub tcp_closed: Family<TcpLabels, Counter>,
    /// `istio_tcp_sent_bytes_total` (client to upstream).
    pub tcp_sent: Family<TcpLabels, Counter>,
    /// `istio_tcp_received_bytes_total` (upstream to client).
    pub tcp_received: Family<TcpLabels, Counter>,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0])
        });
        let config_rejected = Counter::default();
        let pending_overflow = Family::<ClusterLabel, Counter>::default();
        registry.register(
            "envoy_cluster_upstream_rq_pending_overflow",
            "Requests refused because the cluster's circuit breakers were open",
            pending_overflow.clone(),
        );
        registry.register("istio_requests", "Requests handled", requests.clone());
        registry.register("istio_request_duration_milliseconds", "Request duration", duration.clone());
        registry.register("skein_proxy_config_rejected", "Configurations rejected as invalid", config_rejected.clone());
        let access_log_dropped = Counter::default();
        registry.register(
            "skein_proxy_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let tcp = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<TcpLabels, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let tcp_opened = tcp(&mut registry, "istio_tcp_connections_opened", "TCP connections opened");
        let tcp_closed = tcp(&mut registry, "istio_tcp_connections_closed", "TCP connections closed");
        let tcp_sent = tcp(&mut registry, "istio_tcp_sent_bytes", "Bytes sent to the upstream");
        let tcp_received = tcp(&mut registry, "istio_tcp_received_bytes", "Bytes received from the upstream");
        Self {
            registry: Arc::new(registry),
            requests,
            duration,
            config_rejected,
            pending_overflow,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            access_log_dropped,
        }
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, labels: RequestLabels, millis: f64) {
        self.duration.get_or_create(&labels).observe(millis);
        self.requests.get_or_create(&labels).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
