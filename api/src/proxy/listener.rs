//! Listeners: where a proxy accepts connections and what it does with them (protocol,
//! capture, inbound mTLS, gateway TLS, TLS passthrough routes).

use std::{collections::BTreeSet, net::SocketAddr};

use serde::{Deserialize, Serialize};

use super::{AuthorizationPolicy, InvalidConfig, invalid};

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
    /// The service hosts an `AUTO_PASSTHROUGH` listener serves (its Gateway server's hosts:
    /// exact names, `*.suffix` or `*`): an SNI naming any other service is refused. Empty:
    /// none. `AUTO_PASSTHROUGH` listeners only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough_hosts: Vec<String>,
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

impl Listener {
    /// Checks the fields that only some protocols use.
    pub(crate) fn validate(&self, clusters: &BTreeSet<&str>) -> Result<(), InvalidConfig> {
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
        if self.protocol != ListenerProtocol::AutoPassthrough && !self.passthrough_hosts.is_empty() {
            return Err(invalid(at("passthroughHosts"), "only AUTO_PASSTHROUGH listeners have passthrough hosts"));
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
