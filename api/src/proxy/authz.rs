//! Authorization policies (Istio's AuthorizationPolicy, compiled per listener).

use serde::{Deserialize, Serialize};

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
