//! Istio API → proxy configuration, for one proxy. Pure functions of a [`Snapshot`] and the
//! proxy's [`Node`]; this is where Istio's semantics live, and where most tests are.
//!
//! A sidecar gets Istio's shape: a capture listener for outbound traffic (15001) routing by
//! Host (HTTP) or by the dialled service address (TCP), one virtual host per visible service
//! with the VirtualService rules for each of its ports, one cluster per service port and
//! DestinationRule subset (`outbound|<port>|<subset>|<host>`), and a capture listener for
//! inbound traffic (15006) carrying the workload's PeerAuthentication mode and
//! AuthorizationPolicies.

mod clusters;
mod egress;
pub mod gateway;
mod inbound;
mod outbound;
mod routes;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use skein_api::proxy::{Cluster, OutboundPolicy, ProxyConfig, VirtualHost};

use crate::{locality::Locality, snapshot::Snapshot};

pub use egress::EgressScope;
pub use outbound::{Outbound, rebuild as patch_outbound};

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

/// A node id that is not Istio's `<type>~<ip>~<pod>.<namespace>~<domain>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id {id:?}: {reason}")]
pub struct InvalidNodeId {
    /// The id as sent.
    pub id: String,
    /// Which part is wrong.
    pub reason: String,
}

impl Node {
    /// Parses a node id; the error says which part is wrong.
    pub fn parse(id: &str) -> Result<Self, InvalidNodeId> {
        let bad = |reason: String| InvalidNodeId { id: id.to_string(), reason };
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, pod_ns, _domain] = parts[..] else {
            return Err(bad("expected <type>~<ip>~<pod>.<namespace>~<domain>".into()));
        };
        let kind = match kind {
            "sidecar" => NodeKind::Sidecar,
            "router" => NodeKind::Router,
            other => return Err(bad(format!("unknown proxy type {other:?} (sidecar or router)"))),
        };
        let ip = if ip.is_empty() {
            None
        } else {
            Some(ip.parse().map_err(|_| bad(format!("{ip:?} is not an IP address")))?)
        };
        let (pod, namespace) =
            pod_ns.rsplit_once('.').ok_or_else(|| bad(format!("{pod_ns:?} is not <pod>.<namespace>")))?;
        if pod.is_empty() || namespace.is_empty() {
            return Err(bad("empty pod name or namespace".into()));
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
    /// Where it runs (its `istio-locality` label, else its node's topology labels): the
    /// order in which it fails over between endpoints.
    pub locality: Locality,
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
                locality: snap.pod_locality(pod),
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

/// What the outbound part depends on: the namespace (visibility), the labels (`sourceLabels`,
/// `failoverPriority`), the locality (failover order) and the Sidecar resource's egress scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OutboundKey {
    /// Client namespace.
    pub namespace: String,
    /// Client labels.
    pub labels: BTreeMap<String, String>,
    /// Client locality.
    pub locality: Locality,
    /// The services the client's Sidecar resource limits it to (`None`: every visible one).
    pub egress: Option<Arc<EgressScope>>,
}

impl OutboundKey {
    /// The key of a workload: its namespace, its locality and only the labels some
    /// VirtualService's `sourceLabels` or DestinationRule's `failoverPriority` look at, so every
    /// workload of a namespace and zone usually shares one outbound config.
    pub fn of(w: &Workload, snap: &Snapshot) -> Self {
        let labels = w
            .labels
            .iter()
            .filter(|(k, _)| snap.source_label_keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let locality = if snap.locality_failover { w.locality.clone() } else { Locality::default() };
        // A Sidecar resource scopes sidecars only; gateways see the mesh as without one.
        let egress = if w.router {
            None
        } else {
            snap.sidecar_for(&w.namespace, &w.labels).and_then(|sc| EgressScope::of(sc, &w.namespace))
        };
        Self { namespace: w.namespace.clone(), labels, locality, egress }
    }
}

/// A proxy's own part of its config: its listeners and the mesh settings (no virtual hosts or
/// clusters), and for a gateway the routes that replace the mesh's virtual hosts.
#[derive(Debug)]
pub struct Own {
    /// Listeners and settings.
    pub config: ProxyConfig,
    /// A gateway's virtual hosts and the clusters its routes name (added to the mesh's where
    /// the mesh has none of that name); `None` for a sidecar.
    pub gateway: Option<(Vec<VirtualHost>, BTreeMap<String, Cluster>)>,
}

impl Own {
    /// The outbound part this proxy gets, given the mesh's part for its key.
    pub fn outbound(&self, mesh: &Outbound) -> Outbound {
        match &self.gateway {
            None => mesh.clone(),
            Some((virtual_hosts, extra)) => Outbound::for_gateway(mesh, virtual_hosts.clone(), extra.clone()),
        }
    }
}

/// The own part of `workload`'s config (see [`Own`]).
pub fn own(snap: &Snapshot, workload: &Workload) -> Own {
    if !workload.router {
        // The workload's Sidecar resource may set its own outbound traffic policy.
        let policy = snap.sidecar_for(&workload.namespace, &workload.labels).and_then(|sc| egress::outbound_policy(sc));
        let listeners = vec![inbound::listener(snap, workload), outbound::listener()];
        return Own { config: settings(snap, listeners, policy.unwrap_or(snap.mesh.outbound_policy)), gateway: None };
    }
    let gw = gateway::build(snap, workload, &OutboundKey::of(workload, snap));
    Own {
        config: settings(snap, gw.listeners, snap.mesh.outbound_policy),
        gateway: Some((gw.virtual_hosts, gw.clusters)),
    }
}

/// The outbound part of a sidecar's config for `key`, shared by every workload with that key
/// (the expensive part: all visible services), translated from scratch. [`patch_outbound`]
/// patches a previous one after an endpoint-only change.
pub fn outbound(snap: &Snapshot, key: &OutboundKey) -> Outbound {
    outbound::build(snap, key)
}

/// The full configuration of a sidecar or gateway, translated from scratch (what the
/// renderer's cached and patched parts add up to).
pub fn config(snap: &Snapshot, workload: &Workload) -> ProxyConfig {
    let own = own(snap, workload);
    let out = own.outbound(&outbound(snap, &OutboundKey::of(workload, snap)));
    ProxyConfig {
        virtual_hosts: out.virtual_hosts.as_ref().clone(),
        clusters: out.clusters.values().map(|c| c.as_ref().clone()).collect(),
        name_table: out.names.as_ref().clone(),
        ..own.config
    }
}

/// A proxy's listeners with the mesh settings, no virtual hosts or clusters.
fn settings(snap: &Snapshot, listeners: Vec<skein_api::proxy::Listener>, policy: OutboundPolicy) -> ProxyConfig {
    ProxyConfig {
        version: String::new(),
        outbound_traffic_policy: policy,
        listeners,
        virtual_hosts: Vec::new(),
        clusters: Vec::new(),
        identity: None,
        access_log: snap.mesh.access_log.clone(),
        name_table: Vec::new(),
    }
}

/// A duration as Istio writes it; validation has refused unparsable ones already.
fn dur(s: Option<&String>) -> Option<Duration> {
    s.and_then(|s| skein_api::proxy::duration::parse(s).ok())
}
