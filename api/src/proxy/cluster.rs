//! Clusters: a named set of endpoints with load balancing, connection limits, outlier
//! detection and client TLS.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

/// DestinationRule `trafficPolicy.tls` of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterTls {
    /// `ISTIO_MUTUAL`, `SIMPLE` or `DISABLE`.
    pub mode: ClientTlsMode,
    /// Accepted server identities (SPIFFE ids for ISTIO_MUTUAL). Empty: any mesh identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Server name sent. Default for ISTIO_MUTUAL: Istio's `outbound_.<port>_.<subset>_.<host>`
    /// derived from the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// Client TLS mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientTlsMode {
    /// Plaintext.
    #[default]
    #[serde(rename = "DISABLE")]
    Disable,
    /// TLS verifying the server against the mesh root, no client certificate.
    #[serde(rename = "SIMPLE")]
    Simple,
    /// Mesh mTLS with this workload's identity.
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
}

/// An upstream service (one subset of one host and port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// Unique name, Istio style: `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: String,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// Connect timeout; default 10 s (Istio's default).
    #[serde(default, with = "crate::proxy::duration::opt", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// How an endpoint is chosen. Default round robin.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Circuit breaking (DestinationRule `connectionPool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of failing endpoints (DestinationRule `outlierDetection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the endpoints. Unset: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Speak HTTP/2 to the endpoints (gRPC and `http2` ports; Istio's `h2UpgradePolicy`).
    /// Default HTTP/1.1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// Service addresses (VIP:port) whose captured non-HTTP connections go to this cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_addresses: Vec<SocketAddr>,
    /// The endpoints of each lower priority (Envoy's priorities 1, 2, ...), nearest first: a
    /// level is used only while no endpoint of every level before it is available (none
    /// listed, or all ejected by outlier detection). Locality failover (DestinationRule
    /// `localityLbSetting`), and a `.global` host's peer gateways when the service also runs
    /// here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Vec<SocketAddr>>,
}

/// DestinationRule `loadBalancer`, written as Istio does: `{simple: LEAST_REQUEST}` or
/// `{consistentHash: {httpHeaderName: x-user}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LoadBalancerFields", into = "LoadBalancerFields")]
pub enum LoadBalancer {
    /// Each endpoint in turn. The default.
    #[default]
    RoundRobin,
    /// The less loaded of two random endpoints.
    LeastRequest,
    /// Uniformly random.
    Random,
    /// Same key, same endpoint (while the endpoint set is stable).
    ConsistentHash(HashKey),
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (lower-case name).
    HttpHeaderName(String),
    /// A cookie, by name.
    HttpCookie(String),
    /// The client's IP address.
    UseSourceIp,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
enum SimpleLb {
    ROUND_ROBIN,
    LEAST_REQUEST,
    LEAST_CONN,
    RANDOM,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadBalancerFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    simple: Option<SimpleLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consistent_hash: Option<ConsistentHashFields>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsistentHashFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_cookie: Option<CookieFields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    use_source_ip: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CookieFields {
    name: String,
}

impl TryFrom<LoadBalancerFields> for LoadBalancer {
    type Error = String;
    fn try_from(f: LoadBalancerFields) -> Result<Self, String> {
        match (f.simple, f.consistent_hash) {
            (None, None) | (Some(SimpleLb::ROUND_ROBIN), None) => Ok(Self::RoundRobin),
            // LEAST_CONN is Istio's older name for LEAST_REQUEST.
            (Some(SimpleLb::LEAST_REQUEST | SimpleLb::LEAST_CONN), None) => Ok(Self::LeastRequest),
            (Some(SimpleLb::RANDOM), None) => Ok(Self::Random),
            (None, Some(h)) => match (h.http_header_name, h.http_cookie, h.use_source_ip) {
                (Some(n), None, None) => Ok(Self::ConsistentHash(HashKey::HttpHeaderName(n.to_ascii_lowercase()))),
                (None, Some(c), None) => Ok(Self::ConsistentHash(HashKey::HttpCookie(c.name))),
                (None, None, Some(true)) => Ok(Self::ConsistentHash(HashKey::UseSourceIp)),
                _ => Err("consistentHash needs exactly one of httpHeaderName, httpCookie, useSourceIp: true".into()),
            },
            (Some(_), Some(_)) => Err("loadBalancer: simple and consistentHash are mutually exclusive".into()),
        }
    }
}

impl From<LoadBalancer> for LoadBalancerFields {
    fn from(lb: LoadBalancer) -> Self {
        let simple = |s| Self { simple: Some(s), consistent_hash: None };
        let hash = |h| Self { simple: None, consistent_hash: Some(h) };
        match lb {
            LoadBalancer::RoundRobin => simple(SimpleLb::ROUND_ROBIN),
            LoadBalancer::LeastRequest => simple(SimpleLb::LEAST_REQUEST),
            LoadBalancer::Random => simple(SimpleLb::RANDOM),
            LoadBalancer::ConsistentHash(HashKey::HttpHeaderName(n)) => {
                hash(ConsistentHashFields { http_header_name: Some(n), ..Default::default() })
            }
            LoadBalancer::ConsistentHash(HashKey::HttpCookie(name)) => {
                hash(ConsistentHashFields { http_cookie: Some(CookieFields { name }), ..Default::default() })
            }
            LoadBalancer::ConsistentHash(HashKey::UseSourceIp) => {
                hash(ConsistentHashFields { use_source_ip: Some(true), ..Default::default() })
            }
        }
    }
}

/// Circuit-breaking limits; overflow answers 503 (`UO`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: requests in flight to the cluster over HTTP/1.1 (one per connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    /// `http.maxRetries`: retries in flight to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// `http.maxRequestsPerConnection`: an upstream connection is closed after this many
    /// requests (0 or unset: unlimited; 1 disables keep-alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
}

/// Outlier detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject an endpoint (0 or unset disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// 502/503/504 or connect failures in a row that eject an endpoint (0 or unset disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Sweep interval (Istio default 10 s). Ejections expire lazily, so this only documents
    /// the Istio field today.
    #[serde(default, with = "crate::proxy::duration::opt", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Ejection time, multiplied by the number of times the endpoint was ejected (default 30 s).
    #[serde(default, with = "crate::proxy::duration::opt", skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Most endpoints ejected at once, percent (default 10; at least one endpoint may be ejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// Envoy's panic threshold, Istio's `minHealthPercent`: while fewer than this percentage of
    /// the endpoints are healthy, requests go to all of them, ejected or not. Unset or 0 (Istio's
    /// default): never — with every endpoint ejected requests get 503 `UH` ("no healthy
    /// upstream") until an ejection ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
}
