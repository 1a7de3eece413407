//! Istio API → proxy configuration, for one proxy. Pure functions of a [`Snapshot`] and the
//! proxy's [`Node`]; this is where Istio's semantics live, and where most tests are.
//!
//! A sidecar gets Istio's shape: a capture listener for outbound traffic (15001) routing by
//! Host (HTTP) or by the dialled service address (TCP), one virtual host per visible service
//! with the VirtualService rules for each of its ports, one cluster per service port and
//! DestinationRule subset (`outbound|<port>|<subset>|<host>`), and a capture listener for
//! inbound traffic (15006) carrying the workload's PeerAuthentication mode and
//! AuthorizationPolicies.

pub mod gateway;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::IpAddr};

use skein_api::proxy::ProxyConfig;

use crate::snapshot::Snapshot;

pub use outbound::OutboundKey;

/// Port of the outbound capture listener.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the inbound capture listener.
pub const INBOUND_PORT: u16 = 15006;

/// What a proxy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A workload's sidecar.
    Sidecar,
    /// A gateway (`router` in Istio's node ids).
    Router,
}

/// A connected proxy, from Istio's node id `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The id as sent.
    pub id: String,
    /// Sidecar or gateway.
    pub kind: NodeKind,
    /// The workload's address.
    pub ip: Option<IpAddr>,
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
}

impl Node {
    /// Parses a node id; the error says which part is wrong.
    pub fn parse(id: &str) -> Result<Self, String> {
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, pod_ns, _domain] = parts[..] else {
            return Err(format!("node id {id:?}: expected <type>~<ip>~<pod>.<namespace>~<domain>"));
        };
        let kind = match kind {
            "sidecar" => NodeKind::Sidecar,
            "router" => NodeKind::Router,
            other => return Err(format!("node id {id:?}: unknown proxy type {other:?} (sidecar or router)")),
        };
        let ip = if ip.is_empty() {
            None
        } else {
            Some(ip.parse().map_err(|_| format!("node id {id:?}: {ip:?} is not an IP address"))?)
        };
        let (pod, namespace) =
            pod_ns.rsplit_once('.').ok_or_else(|| format!("node id {id:?}: {pod_ns:?} is not <pod>.<namespace>"))?;
        if pod.is_empty() || namespace.is_empty() {
            return Err(format!("node id {id:?}: empty pod name or namespace"));
        }
        Ok(Self { id: id.to_string(), kind, ip, pod: pod.into(), namespace: namespace.into() })
    }
}

/// What translation needs to know about the proxy's workload, from its Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Pod labels (selectors of policies, `sourceLabels` of routes).
    pub labels: BTreeMap<String, String>,
    /// ServiceAccount.
    pub service_account: String,
    /// A gateway (`router` node) rather than a sidecar.
    pub router: bool,
    /// The proxy proved (ServiceAccount token) that it runs as this workload's ServiceAccount:
    /// it may be sent TLS Secrets of its namespace.
    pub authenticated: bool,
}

impl Workload {
    /// The workload of `node` in `snap`; a pod not (yet) known gets its namespace only.
    pub fn of(snap: &Snapshot, node: &Node) -> Self {
        let router = node.kind == NodeKind::Router;
        match snap.pod(&node.namespace, &node.pod) {
            Some(pod) => Self {
                namespace: node.namespace.clone(),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                service_account: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into()),
                router,
                authenticated: false,
            },
            None => Self {
                namespace: node.namespace.clone(),
                service_account: "default".into(),
                router,
                ..Default::default()
            },
        }
    }
}

/// The full configuration of a sidecar or gateway.
pub fn config(snap: &Snapshot, workload: &Workload) -> ProxyConfig {
    let (own, out) = parts(snap, workload);
    ProxyConfig {
        virtual_hosts: out.virtual_hosts.value.clone(),
        clusters: out.clusters.values().map(|c| c.value.clone()).collect(),
        ..own
    }
}

/// A proxy's config in two parts: its own (listeners and settings, no virtual hosts or
/// clusters), and the outbound part (virtual hosts and clusters), shared by every sidecar
/// with the same outbound key. A gateway's outbound part is the mesh's clusters (shared, so
/// patched incrementally like a sidecar's) with its own virtual hosts.
pub fn parts(snap: &Snapshot, workload: &Workload) -> (ProxyConfig, std::sync::Arc<Outbound>) {
    let key = OutboundKey::of(workload, snap);
    let mesh = outbound(snap, &key);
    if !workload.router {
        return (own(snap, vec![inbound::listener(snap, workload), outbound::listener()]), mesh);
    }
    let gw = gateway::build(snap, workload, &key);
    (own(snap, gw.listeners), std::sync::Arc::new(Outbound::for_gateway(&mesh, gw.virtual_hosts, gw.clusters)))
}

pub use outbound::Outbound;

/// The outbound part of a sidecar's config, shared by every workload with the same key (the
/// expensive part: all visible services). Computed once per snapshot and key.
pub fn outbound(snap: &Snapshot, key: &OutboundKey) -> std::sync::Arc<Outbound> {
    if let Some(hit) = snap.outbound_cache.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
        return hit.clone();
    }
    // Computed outside the lock: two proxies racing on one key may both compute it, which
    // costs time once but never blocks every other proxy behind one computation. After an
    // endpoint-only change the previous snapshot's part is patched instead of rebuilt.
    let prev = snap.reuse.as_ref().and_then(|r| Some((r.outbound.get(key)?, &r.changed_hosts)));
    let built = std::sync::Arc::new(match prev {
        Some((prev, hosts)) => outbound::rebuild(snap, key, prev, hosts),
        None => outbound::build(snap, key),
    });
    snap.outbound_cache.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_insert(built).clone()
}

/// A proxy's own part: its listeners and the mesh settings, no virtual hosts or clusters.
pub fn own(snap: &Snapshot, listeners: Vec<skein_api::proxy::Listener>) -> ProxyConfig {
    ProxyConfig {
        version: String::new(),
        outbound_traffic_policy: snap.mesh.outbound_policy,
        listeners,
        virtual_hosts: Vec::new(),
        clusters: Vec::new(),
        identity: None,
        access_log: snap.mesh.access_log.clone(),
    }
}
