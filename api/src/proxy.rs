//! The proxy configuration model: what the control plane computes for one proxy and what
//! `skein-proxy` enforces. Plain Rust types, read from a file (YAML or JSON) today and converted
//! from the control plane's protobuf messages later; `validate` is the one gate every config
//! passes before it replaces the last good one.
//!
//! Names follow Istio so a config dump reads like Istio's: clusters are
//! `outbound|<port>|<subset>|<host>`, routes carry the VirtualService rule they came from.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

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

/// Transparent capture: which iptables redirection feeds a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capture {
    /// The workload's outgoing connections (Istio's 15001): HTTP is routed by Host, other TCP
    /// by the original destination (a cluster's `serviceAddresses`), the rest per
    /// `outboundTrafficPolicy`.
    #[serde(rename = "OUTBOUND")]
    Outbound,
    /// Connections to the workload (Istio's 15006): PeerAuthentication and authorization
    /// applied, then forwarded to the original destination.
    #[serde(rename = "INBOUND")]
    Inbound,
}

/// Gateway server TLS (Istio's `Gateway.servers[].tls` with mode SIMPLE or MUTUAL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// Certificates, chosen by the ClientHello's server name; the first is the default.
    pub credentials: Vec<ServerCredential>,
    /// CA bundle client certificates must chain to (mode MUTUAL). Unset: no client
    /// certificate asked for (mode SIMPLE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<std::path::PathBuf>,
}

/// One server certificate and the host names it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerCredential {
    /// Server names (exact, or `*.example.com`) this certificate answers for.
    pub hosts: Vec<String>,
    /// Certificate chain file (PEM), leaf first. Unused when `inline` is set.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub cert_chain: std::path::PathBuf,
    /// Private key file (PEM). Unused when `inline` is set.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub private_key: std::path::PathBuf,
    /// The certificate and key themselves: a Secret named by a Gateway's `credentialName`,
    /// sent by the control plane to the gateway it authenticated. Used instead of the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineCredential>,
}

fn path_is_empty(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

/// A certificate chain and key carried in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InlineCredential {
    /// Certificate chain (PEM), leaf first.
    pub cert_chain: String,
    /// Private key (PEM); never shown in config dumps or logs.
    pub private_key: SecretPem,
    /// CA bundle (PEM) client certificates must chain to (mode MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

/// Key material: compared and used like a string, but printed (Debug, config dump) as
/// `<redacted>` so it never reaches a log or an admin page.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretPem(pub String);

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretPem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A TLS passthrough route (VirtualService `tls` rule): connections whose server name matches
/// go, still encrypted, to `cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Server names (exact, `*.example.com`, or `*`).
    pub sni_hosts: Vec<String>,
    /// Destination cluster.
    pub cluster: String,
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

/// PeerAuthentication mTLS mode of an inbound listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAuthMode {
    /// Plaintext only. The default when unset.
    #[default]
    #[serde(rename = "DISABLE")]
    Disable,
    /// mTLS and plaintext on the same port, told apart per connection.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// mTLS only; a peer without a mesh certificate is refused.
    #[serde(rename = "STRICT")]
    Strict,
}

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

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// Protocol spoken on it. Default `HTTP`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Destination cluster of a `TCP` listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Inbound mTLS mode (PeerAuthentication). Default DISABLE.
    #[serde(default)]
    pub peer_authentication: PeerAuthMode,
    /// Modes for some destination ports instead (PeerAuthentication `portLevelMtls`): the
    /// port the client dialled (the original destination on a capture listener).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub port_peer_authentication: std::collections::BTreeMap<u16, PeerAuthMode>,
    /// AuthorizationPolicies applying to traffic arriving here. Empty: everything allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<AuthorizationPolicy>,
    /// Set on the transparent-capture listeners (15001/15006); their protocol must be `AUTO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
    /// TLS terminated with these certificates (a gateway's HTTPS server). `HTTP` listeners only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls: Option<ServerTls>,
    /// Passthrough routes by server name. `TLS` listeners only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_routes: Vec<TlsRoute>,
}

/// An Istio AuthorizationPolicy (`security.istio.io`), as it applies to one workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// `<namespace>/<name>`, for logs and denials.
    #[serde(default)]
    pub name: String,
    /// `ALLOW` (default) or `DENY`. (`CUSTOM` is not supported.)
    #[serde(default)]
    pub action: AuthzAction,
    /// Rules, any of which matching makes the policy match. None: matches nothing (so an ALLOW
    /// policy without rules is Istio's "allow-nothing").
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

/// Policy action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthzAction {
    /// Allow matching requests; with any ALLOW policy present, unmatched requests are denied.
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// Deny matching requests (evaluated before ALLOW).
    #[serde(rename = "DENY")]
    Deny,
}

/// One rule: all of `from`, `to`, `when` that are present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    /// Sources, any of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzFrom>,
    /// Operations, any of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzTo>,
    /// Conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthzCondition>,
}

/// `from` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzFrom {
    /// The source.
    pub source: AuthzSource,
}

/// Istio's Source. Values support exact, `prefix*`, `*suffix` and `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzSource {
    /// Peer identities (`cluster.local/ns/default/sa/productpage`); need mTLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Negation of `principals`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Peer namespaces (from the peer identity); need mTLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Negation of `namespaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Peer IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Negation of `ipBlocks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

/// `to` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzTo {
    /// The operation.
    pub operation: AuthzOperation,
}

/// Istio's Operation. `hosts`, `methods` and `paths` are HTTP-only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzOperation {
    /// Request hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Negation of `hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Negation of `ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Negation of `methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Negation of `paths`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `when` condition: `key` is one of `request.headers[<name>]`, `source.ip`,
/// `source.namespace`, `source.principal`, `destination.port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzCondition {
    /// Attribute name.
    pub key: String,
    /// Values, any of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

impl AuthzCondition {
    /// Whether the proxy can evaluate this condition's key.
    pub fn key_supported(key: &str) -> bool {
        const KEYS: [&str; 4] = ["source.ip", "source.namespace", "source.principal", "destination.port"];
        KEYS.contains(&key) || key.strip_prefix("request.headers[").is_some_and(|h| h.ends_with(']') && h.len() > 1)
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerProtocol {
    /// HTTP/1.1, routed by virtual host.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// Raw TCP to `cluster`.
    #[serde(rename = "TCP")]
    Tcp,
    /// TLS passed through untouched, routed by the ClientHello's server name in Istio's
    /// `outbound_.<port>_.<subset>_.<host>` form (the east-west gateway on 15443).
    #[serde(rename = "AUTO_PASSTHROUGH")]
    AutoPassthrough,
    /// TLS passed through untouched, routed by server name to `tlsRoutes` (a gateway's
    /// PASSTHROUGH server).
    #[serde(rename = "TLS")]
    Tls,
    /// Detected per connection: HTTP/1.1 or HTTP/2 is routed as HTTP, anything else as TCP
    /// (Istio's protocol sniffing). Used by capture listeners.
    #[serde(rename = "AUTO")]
    Auto,
}

/// Routes for a set of domains (one VirtualService host, or a Service's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHost {
    /// Unique name (usually `<host>:<port>`).
    pub name: String,
    /// Host names matched against the request authority, port stripped. `*.example.com`
    /// matches any subdomain; `*` matches everything.
    pub domains: Vec<String>,
    /// Rules, first match wins.
    pub routes: Vec<Route>,
}

/// One VirtualService HTTP rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Name for metrics and logs.
    #[serde(default)]
    pub name: String,
    /// Any of these matches selects the route; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: Vec<RouteMatch>,
    /// Weighted destinations (weights sum to 100 when more than one).
    #[serde(default)]
    pub route: Vec<WeightedDestination>,
    /// Redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Rewrite of path prefix and/or authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Whole-request timeout including retries. Unset: no timeout.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy. Unset: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Fault injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Cluster that receives a copy of each request (fire and forget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Percentage of requests mirrored (0–100). Default 100 when `mirror` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<f64>,
}

/// Request match conditions; all set fields must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Path (without query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Request headers (lower-case names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Listener port the request arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Istio's StringMatch: exactly one of exact, prefix, regex (RE2 syntax, full match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StringMatchFields", into = "StringMatchFields")]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole value matches the regular expression.
    Regex(String),
}

/// StringMatch as written: `{exact: v}`, `{prefix: v}` or `{regex: v}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<StringMatchFields> for StringMatch {
    type Error = String;
    fn try_from(f: StringMatchFields) -> Result<Self, String> {
        match (f.exact, f.prefix, f.regex) {
            (Some(v), None, None) => Ok(StringMatch::Exact(v)),
            (None, Some(v), None) => Ok(StringMatch::Prefix(v)),
            (None, None, Some(v)) => Ok(StringMatch::Regex(v)),
            _ => Err("a string match needs exactly one of exact, prefix, regex".into()),
        }
    }
}

impl From<StringMatch> for StringMatchFields {
    fn from(m: StringMatch) -> Self {
        match m {
            StringMatch::Exact(v) => Self { exact: Some(v), ..Default::default() },
            StringMatch::Prefix(v) => Self { prefix: Some(v), ..Default::default() },
            StringMatch::Regex(v) => Self { regex: Some(v), ..Default::default() },
        }
    }
}

/// A destination and its share of traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedDestination {
    /// Cluster name.
    pub cluster: String,
    /// Share in percent; default 100 (a single destination).
    #[serde(default = "hundred")]
    pub weight: u32,
}

fn hundred() -> u32 {
    100
}

/// HTTP redirect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// Replacement path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replacement authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Status code; default 301.
    #[serde(default = "default_redirect_code")]
    pub redirect_code: u16,
    /// Replacement scheme (`http` or `https`); unset keeps the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Replacement port; unset keeps the request's (none when the scheme changes: the new
    /// scheme's default port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn default_redirect_code() -> u16 {
    301
}

/// Rewrite before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path for exact/regex matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the Host/authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Istio's HTTPRetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try. Unset: the route timeout.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated conditions: `5xx`, `gateway-error`, `connect-failure`, `reset`,
    /// `retriable-status-codes` or status codes. Default `connect-failure,reset,503`.
    #[serde(default = "default_retry_on")]
    pub retry_on: String,
}

fn default_retry_on() -> String {
    "connect-failure,reset,503".into()
}

/// Istio's HTTPFaultInjection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Delay before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Answer with an error instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// Injected delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// How long.
    #[serde(with = "duration")]
    pub fixed_delay: Duration,
    /// Share of requests delayed, 0–100; default 100.
    #[serde(default = "hundred_f")]
    pub percentage: f64,
}

/// Injected error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// HTTP status returned.
    pub http_status: u16,
    /// Share of requests aborted, 0–100; default 100.
    #[serde(default = "hundred_f")]
    pub percentage: f64,
}

fn hundred_f() -> f64 {
    100.0
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
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
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
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Ejection time, multiplied by the number of times the endpoint was ejected (default 30 s).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Most endpoints ejected at once, percent (default 10; at least one endpoint may be ejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
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

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> InvalidConfig {
    InvalidConfig { path: path.into(), reason: reason.into() }
}

fn check_percentage(path: String, p: f64) -> Result<(), InvalidConfig> {
    if (0.0..=100.0).contains(&p) { Ok(()) } else { Err(invalid(path, format!("percentage {p} is outside 0–100"))) }
}

impl StringMatch {
    fn validate(&self, path: String) -> Result<(), InvalidConfig> {
        if let StringMatch::Regex(r) = self {
            compile_regex(r).map_err(|e| invalid(path, format!("invalid regex {r:?}: {e}")))?;
        }
        Ok(())
    }
}

/// Compiles an Istio regex (RE2 syntax) anchored to the whole value, with bounded size so a
/// config cannot make the proxy build a huge automaton.
pub fn compile_regex(r: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{r})$")).size_limit(1 << 20).build()
}

impl ProxyConfig {
    /// Checks everything that does not need the proxy's runtime: unique names, references to
    /// existing clusters, weights, percentages, status codes.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
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

impl Listener {
    /// Checks the fields that only some protocols use.
    fn validate(&self, clusters: &std::collections::BTreeSet<&str>) -> Result<(), InvalidConfig> {
        let at = |f: &str| format!("listeners[{}].{f}", self.name);
        if self.capture.is_some() && self.protocol != ListenerProtocol::Auto {
            return Err(invalid(at("protocol"), "a capture listener detects the protocol: set AUTO"));
        }
        if self.protocol == ListenerProtocol::Auto && self.capture.is_none() {
            return Err(invalid(at("protocol"), "AUTO is only for capture listeners (set capture)"));
        }
        if let Some(tls) = &self.server_tls {
            if self.protocol != ListenerProtocol::Http {
                return Err(invalid(at("serverTls"), "only HTTP listeners terminate gateway TLS"));
            }
            if self.peer_authentication != PeerAuthMode::Disable {
                return Err(invalid(
                    at("serverTls"),
                    "gateway TLS and mesh mTLS (peerAuthentication) exclude each other",
                ));
            }
            if tls.credentials.is_empty() {
                return Err(invalid(at("serverTls.credentials"), "at least one certificate is required"));
            }
            for (i, c) in tls.credentials.iter().enumerate() {
                if c.hosts.is_empty() {
                    return Err(invalid(
                        at(&format!("serverTls.credentials[{i}].hosts")),
                        "at least one host is required",
                    ));
                }
            }
        }
        match (self.protocol, self.tls_routes.is_empty()) {
            (ListenerProtocol::Tls, true) => return Err(invalid(at("tlsRoutes"), "a TLS listener needs routes")),
            (ListenerProtocol::Tls, false) => {}
            (_, false) => return Err(invalid(at("tlsRoutes"), "only TLS listeners have TLS routes")),
            (_, true) => {}
        }
        if self.protocol == ListenerProtocol::Tls && self.peer_authentication != PeerAuthMode::Disable {
            return Err(invalid(at("peerAuthentication"), "a passthrough listener never terminates TLS"));
        }
        for (i, r) in self.tls_routes.iter().enumerate() {
            if r.sni_hosts.is_empty() {
                return Err(invalid(at(&format!("tlsRoutes[{i}].sniHosts")), "at least one host is required"));
            }
            if !clusters.contains(r.cluster.as_str()) {
                return Err(invalid(
                    at(&format!("tlsRoutes[{i}].cluster")),
                    format!("unknown cluster {:?}", r.cluster),
                ));
            }
        }
        Ok(())
    }
}

impl Route {
    fn validate(&self, at: &str, clusters: &std::collections::BTreeSet<&str>) -> Result<(), InvalidConfig> {
        for (i, m) in self.matches.iter().enumerate() {
            let mat = format!("{at}.match[{i}]");
            if let Some(u) = &m.uri {
                u.validate(format!("{mat}.uri"))?;
            }
            if let Some(u) = &m.method {
                u.validate(format!("{mat}.method"))?;
            }
            for (h, v) in &m.headers {
                if h.chars().any(|c| c.is_ascii_uppercase()) {
                    return Err(invalid(format!("{mat}.headers[{h}]"), "header names must be lower-case"));
                }
                v.validate(format!("{mat}.headers[{h}]"))?;
            }
        }
        match (&self.redirect, self.route.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(at, "route and redirect are mutually exclusive"));
            }
            (None, true) => {
                return Err(invalid(format!("{at}.route"), "a route needs at least one destination or a redirect"));
            }
            _ => {}
        }
        if let Some(r) = self.redirect.as_ref().filter(|r| !(300..=399).contains(&r.redirect_code)) {
            return Err(invalid(
                format!("{at}.redirect.redirectCode"),
                format!("{} is not a 3xx status", r.redirect_code),
            ));
        }
        if let Some(s) =
            self.redirect.as_ref().and_then(|r| r.scheme.as_deref()).filter(|s| !matches!(*s, "http" | "https"))
        {
            return Err(invalid(format!("{at}.redirect.scheme"), format!("{s:?} is not http or https")));
        }
        if self.redirect.as_ref().is_some_and(|r| r.port == Some(0)) {
            return Err(invalid(format!("{at}.redirect.port"), "0 is not a port"));
        }
        for (i, d) in self.route.iter().enumerate() {
            if d.cluster == PASSTHROUGH_CLUSTER && self.route.len() > 1 {
                return Err(invalid(
                    format!("{at}.route[{i}].cluster"),
                    "PassthroughCluster is a route's only destination",
                ));
            }
            if !clusters.contains(d.cluster.as_str()) && d.cluster != PASSTHROUGH_CLUSTER {
                return Err(invalid(format!("{at}.route[{i}].cluster"), format!("unknown cluster {:?}", d.cluster)));
            }
        }
        if self.route.len() > 1 {
            let total: u32 = self.route.iter().map(|d| d.weight).sum();
            if total != 100 {
                return Err(invalid(format!("{at}.route"), format!("weights sum to {total}, not 100")));
            }
        }
        if let Some(m) = self.mirror.as_ref().filter(|m| !clusters.contains(m.as_str())) {
            return Err(invalid(format!("{at}.mirror"), format!("unknown cluster {m:?}")));
        }
        if let Some(p) = self.mirror_percentage {
            check_percentage(format!("{at}.mirrorPercentage"), p)?;
        }
        if let Some(f) = &self.fault {
            if let Some(d) = &f.delay {
                check_percentage(format!("{at}.fault.delay.percentage"), d.percentage)?;
            }
            if let Some(a) = &f.abort {
                check_percentage(format!("{at}.fault.abort.percentage"), a.percentage)?;
                if !(200..=599).contains(&a.http_status) {
                    return Err(invalid(
                        format!("{at}.fault.abort.httpStatus"),
                        format!("{} is not an HTTP status", a.http_status),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Durations as Istio writes them: `1.5s`, `500ms`, `2m`, `1h`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Parses `<number><unit>` with unit `h`, `m`, `s`, `ms`, `us`.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(|| format!("duration {s:?} has no unit"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("duration {s:?} is not a number"))?;
        let secs = match unit {
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            "ms" => n / 1e3,
            "us" => n / 1e6,
            _ => return Err(format!("duration {s:?} has unknown unit {unit:?}")),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("duration {s:?} must be non-negative"));
        }
        Duration::try_from_secs_f64(secs).map_err(|e| format!("duration {s:?}: {e}"))
    }

    /// Formats as milliseconds, exact for every value `parse` yields from config.
    pub fn format(d: Duration) -> String {
        format!("{}ms", d.as_millis())
    }

    /// serde: deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    /// serde: serialize.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| super::duration::parse(&s).map_err(D::Error::custom)).transpose()
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::duration::format(*d)),
            None => s.serialize_none(),
        }
    }
}

pub mod wire;

#[cfg(test)]
mod tests;
