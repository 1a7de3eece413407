//! Istio-compatible telemetry: `istio_requests_total` and `istio_request_duration_milliseconds`
//! with Istio's label names, plus the proxy's own counters.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, RwLock},
};

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

/// What a finished request is counted under, borrowed from the request (see `Metrics::record`).
#[derive(Clone, Copy, Debug)]
pub struct RequestKey<'a> {
    /// `source` or `destination`.
    pub reporter: &'static str,
    /// Destination service host.
    pub destination_service: &'a str,
    /// HTTP status sent to the client.
    pub response_code: u16,
    /// Envoy-style response flags.
    pub response_flags: &'static str,
}

impl RequestKey<'_> {
    fn matches(&self, l: &RequestLabels) -> bool {
        self.reporter == l.reporter
            && self.destination_service == l.destination_service
            && self.response_code == l.response_code
            && self.response_flags == l.response_flags
    }

    fn labels(&self) -> RequestLabels {
        RequestLabels {
            reporter: self.reporter,
            destination_service: self.destination_service.to_string(),
            destination_service_name: self.destination_service.split('.').next().unwrap_or("unknown").to_string(),
            response_code: self.response_code,
            response_flags: self.response_flags,
            request_protocol: "http",
        }
    }
}

/// The two request metrics of one label set.
struct RequestHandles {
    labels: RequestLabels,
    requests: Counter,
    duration: Histogram,
}

/// Handles by a hash of the borrowed key: a request is counted with one hash and a read lock,
/// without building label Strings (the families would hash them twice, with SipHash).
#[derive(Default)]
struct RequestCache {
    hasher: foldhash::fast::RandomState,
    by_hash: RwLock<HashMap<u64, Vec<RequestHandles>>>,
}

/// Label of Envoy-style per-cluster stats.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    /// Cluster name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub cluster_name: String,
}

/// Label of Envoy-style per-listener stats: the listener's address, as Envoy names them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `0.0.0.0:15006`.
    pub listener_address: String,
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
    /// Retries and mirrors given up because the request body was too large to keep
    /// (`envoy_cluster_retry_or_shadow_abandoned`).
    pub retry_or_shadow_abandoned: Family<ClusterLabel, Counter>,
    /// Connections closed at accept because a connection cap was reached
    /// (`envoy_listener_downstream_cx_overflow`).
    pub cx_overflow: Family<ListenerLabel, Counter>,
    /// `istio_tcp_connections_opened_total`.
    pub tcp_opened: Family<TcpLabels, Counter>,
    /// `istio_tcp_connections_closed_total`.
    pub tcp_closed: Family<TcpLabels, Counter>,
    /// `istio_tcp_sent_bytes_total`: sent to the client (the response direction).
    pub tcp_sent: Family<TcpLabels, Counter>,
    /// `istio_tcp_received_bytes_total`: received from the client (the request direction).
    pub tcp_received: Family<TcpLabels, Counter>,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    request_cache: Arc<RequestCache>,
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
        let retry_or_shadow_abandoned = Family::<ClusterLabel, Counter>::default();
        let cx_overflow = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "envoy_listener_downstream_cx_overflow",
            "Connections closed at accept because the listener's or the proxy's connection cap was reached",
            cx_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_retry_or_shadow_abandoned",
            "Retries and mirrors abandoned because the request body outgrew the buffer limit",
            retry_or_shadow_abandoned.clone(),
        );
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
        let tcp_sent = tcp(&mut registry, "istio_tcp_sent_bytes", "Bytes sent to the client during the response");
        let tcp_received =
            tcp(&mut registry, "istio_tcp_received_bytes", "Bytes received from the client during the request");
        Self {
            registry: Arc::new(registry),
            requests,
            duration,
            config_rejected,
            pending_overflow,
            retry_or_shadow_abandoned,
            cx_overflow,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            access_log_dropped,
            request_cache: Arc::default(),
        }
    }
}

impl Metrics {
    /// Records one finished request (`istio_requests_total` and its duration).
    pub fn record(&self, key: RequestKey<'_>, millis: f64) {
        let cache = &self.request_cache;
        let hash =
            cache.hasher.hash_one((key.reporter, key.destination_service, key.response_code, key.response_flags));
        {
            let map = cache.by_hash.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = map.get(&hash).and_then(|v| v.iter().find(|h| key.matches(&h.labels))) {
                h.duration.observe(millis);
                h.requests.inc();
                return;
            }
        }
        let labels = key.labels();
        let handles = RequestHandles {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            labels,
        };
        handles.duration.observe(millis);
        handles.requests.inc();
        let mut map = cache.by_hash.write().unwrap_or_else(|p| p.into_inner());
        let bucket = map.entry(hash).or_default();
        // Another request may have added it meanwhile; its handles share the same metrics.
        if !bucket.iter().any(|h| key.matches(&h.labels)) {
            bucket.push(handles);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_with_equal_labels_share_a_series_and_others_get_their_own() {
        let m = Metrics::default();
        let key = |service, code| RequestKey {
            reporter: "source",
            destination_service: service,
            response_code: code,
            response_flags: "-",
        };
        for _ in 0..3 {
            m.record(key("reviews.default.svc.cluster.local", 200), 1.0);
        }
        m.record(key("reviews.default.svc.cluster.local", 503), 1.0);
        m.record(key("ratings.default.svc.cluster.local", 200), 1.0);
        let out = m.render();
        let total = |service: &str, code: u16| {
            out.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains(&format!("destination_service=\"{service}\""))
                        && l.contains(&format!("response_code=\"{code}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        assert_eq!(total("reviews.default.svc.cluster.local", 200), Some(3), "{out}");
        assert_eq!(total("reviews.default.svc.cluster.local", 503), Some(1), "{out}");
        assert_eq!(total("ratings.default.svc.cluster.local", 200), Some(1), "{out}");
        assert!(out.contains("destination_service_name=\"ratings\""), "{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("istio_request_duration_milliseconds_count{")).count(), 3);
    }
}
