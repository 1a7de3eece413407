//! The proxy configuration model: what the control plane computes for one proxy and what
//! `skein-proxy` enforces. Plain Rust types, read from a file (YAML or JSON) today and converted
//! from the control plane's protobuf messages later; `validate` is the one gate every config
//! passes before it replaces the last good one.
//!
//! Split by topic — [`listener`](self::Listener), routes, clusters, authorization, durations —
//! each type with its validation; `wire` holds the protobuf conversions.
//!
//! Names follow Istio so a config dump reads like Istio's: clusters are
//! `outbound|<port>|<subset>|<host>`, routes carry the VirtualService rule they came from.

mod authz;
mod cluster;
pub mod duration;
mod listener;
mod route;

use serde::{Deserialize, Serialize};

pub use authz::*;
pub use cluster::*;
pub use listener::*;
pub use route::*;

/// A route destination meaning "where the client was going": the original destination of a
/// captured connection (or the Host, resolved), as for unknown hosts under ALLOW_ANY. Istio's
/// name; used for registered hosts with `resolution: NONE`, so REGISTRY_ONLY lets them pass.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

/// Everything one proxy needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Opaque version of this config (reported back on ACK/NACK and in the config dump).
    #[serde(default)]
    pub version: String,
    /// What happens to requests for hosts no route names.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundPolicy,
    /// Listeners to open.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Virtual hosts, selected by the request's Host/authority.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Upstream clusters routes send to.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// This workload's certificate, key and mesh root (PEM files). Required for mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityFiles>,
    /// Access log (Istio's `meshConfig.accessLogFile`). Unset: no access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// Mesh hosts the sidecar's DNS proxy answers for (Istio's name table): ServiceEntry hosts
    /// with addresses, e.g. the `.global` hosts of federation, and Services' FQDNs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub name_table: Vec<NameEntry>,
}

/// One host of the name table and the addresses a DNS query for it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameEntry {
    /// Fully qualified host, lower case, no trailing dot.
    pub host: String,
    /// Its virtual IPs (A and AAAA answers).
    pub addresses: Vec<std::net::IpAddr>,
}

impl NameEntry {
    /// Checks the host is a DNS name a query can ask for (no wildcard, labels of at most 63
    /// characters, at most 253 in all).
    pub fn validate(&self, at: &str) -> Result<(), InvalidConfig> {
        let h = &self.host;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
            return Err(invalid(format!("{at}.host"), format!("{h:?} is not a lower-case DNS name")));
        }
        if self.addresses.is_empty() {
            return Err(invalid(format!("{at}.addresses"), "a name needs at least one address"));
        }
        Ok(())
    }
}

/// An incremental update of a [`ProxyConfig`]: clusters added or replaced by name, and
/// removed. The control plane sends one instead of a whole config when only clusters changed
/// (an endpoint change), checked against the version it applies to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigDelta {
    /// Clusters added, or replacing the one with the same name.
    pub clusters: Vec<Cluster>,
    /// Names of clusters removed.
    pub removed_clusters: Vec<String>,
}

impl ConfigDelta {
    /// `base` with this delta applied (cluster order: the base's, new ones appended). The
    /// result is validated like any config when applied.
    pub fn apply_to(self, base: &ProxyConfig) -> ProxyConfig {
        let mut replace: std::collections::HashMap<String, Cluster> =
            self.clusters.into_iter().map(|c| (c.name.clone(), c)).collect();
        let removed: std::collections::HashSet<&str> = self.removed_clusters.iter().map(String::as_str).collect();
        let mut clusters = Vec::with_capacity(base.clusters.len() + replace.len());
        for c in &base.clusters {
            if removed.contains(c.name.as_str()) {
                continue;
            }
            clusters.push(replace.remove(&c.name).unwrap_or_else(|| c.clone()));
        }
        let mut added: Vec<Cluster> = replace.into_values().collect();
        added.sort_by(|a, b| a.name.cmp(&b.name));
        clusters.extend(added);
        ProxyConfig { clusters, ..base.clone() }
    }
}

/// Where and how requests are logged, one line per request or TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    /// File appended to; `/dev/stdout` logs to standard output.
    pub path: std::path::PathBuf,
    /// `TEXT` (Envoy's default format, the default) or `JSON`.
    #[serde(default)]
    pub encoding: AccessLogEncoding,
}

/// Access log line format (Istio's `meshConfig.accessLogEncoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessLogEncoding {
    /// Envoy's default text format.
    #[default]
    #[serde(rename = "TEXT")]
    Text,
    /// One JSON object per line.
    #[serde(rename = "JSON")]
    Json,
}

/// Paths of the workload's identity material (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityFiles {
    /// Certificate chain, leaf first; the leaf carries the SPIFFE id.
    pub cert_chain: std::path::PathBuf,
    /// Private key of the leaf.
    pub private_key: std::path::PathBuf,
    /// Mesh root certificate(s).
    pub root_cert: std::path::PathBuf,
}

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboundPolicy {
    /// Unknown hosts are forwarded to the address they were sent to. The default.
    #[default]
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
    /// Unknown hosts get 502.
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
}

/// Why a configuration was refused. The message names the object and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct InvalidConfig {
    /// Where: `virtualHosts[reviews].routes[0].route`.
    pub path: String,
    /// Why.
    pub reason: String,
}

pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> InvalidConfig {
    InvalidConfig { path: path.into(), reason: reason.into() }
}

pub(crate) fn check_percentage(path: String, p: f64) -> Result<(), InvalidConfig> {
    if (0.0..=100.0).contains(&p) { Ok(()) } else { Err(invalid(path, format!("percentage {p} is outside 0–100"))) }
}

impl ProxyConfig {
    /// Checks everything that does not need the proxy's runtime: unique names, references to
    /// existing clusters, weights, percentages, status codes.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        for (i, n) in self.name_table.iter().enumerate() {
            n.validate(&format!("nameTable[{i}]"))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for l in &self.listeners {
            if !names.insert(&l.name) {
                return Err(invalid(format!("listeners[{}]", l.name), "duplicate listener name"));
            }
        }
        for c in &self.clusters {
            if let Some(p) = c.outlier_detection.as_ref().and_then(|o| o.max_ejection_percent).filter(|p| *p > 100) {
                return Err(invalid(
                    format!("clusters[{}].outlierDetection.maxEjectionPercent", c.name),
                    format!("{p} is above 100"),
                ));
            }
        }
        let clusters: std::collections::BTreeSet<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
        if clusters.len() != self.clusters.len() {
            return Err(invalid("clusters", "duplicate cluster name"));
        }
        let needs_identity = self.listeners.iter().any(|l| l.peer_authentication != PeerAuthMode::Disable)
            || self.clusters.iter().any(|c| c.tls.as_ref().is_some_and(|t| t.mode != ClientTlsMode::Disable));
        if needs_identity && self.identity.is_none() {
            return Err(invalid("identity", "mTLS is configured but no workload identity is given"));
        }
        for l in &self.listeners {
            if l.protocol == ListenerProtocol::AutoPassthrough && l.peer_authentication != PeerAuthMode::Disable {
                return Err(invalid(
                    format!("listeners[{}].peerAuthentication", l.name),
                    "a passthrough listener never terminates TLS",
                ));
            }
        }
        for l in &self.listeners {
            l.validate(&clusters)?;
        }
        for l in &self.listeners {
            let at = format!("listeners[{}].cluster", l.name);
            match (l.protocol, l.cluster.as_deref()) {
                (ListenerProtocol::Tcp, None) => return Err(invalid(at, "a TCP listener needs a cluster")),
                (ListenerProtocol::Tcp, Some(c)) if !clusters.contains(c) => {
                    return Err(invalid(at, format!("unknown cluster {c:?}")));
                }
                (ListenerProtocol::Tcp, Some(_)) => {}
                (_, Some(_)) => {
                    return Err(invalid(at, "only TCP listeners name a cluster"));
                }
                _ => {}
            }
        }
        let mut vhosts = std::collections::BTreeSet::new();
        for vh in &self.virtual_hosts {
            let at = format!("virtualHosts[{}]", vh.name);
            if !vhosts.insert(&vh.name) {
                return Err(invalid(at, "duplicate virtual host name"));
            }
            if vh.domains.is_empty() {
                return Err(invalid(format!("{at}.domains"), "at least one domain is required"));
            }
            for (i, r) in vh.routes.iter().enumerate() {
                r.validate(&format!("{at}.routes[{i}]"), &clusters)?;
            }
        }
        Ok(())
    }
}

pub mod wire;

#[cfg(test)]
mod tests;
