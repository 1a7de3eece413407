//! Outbound: a sidecar's view of the mesh — one virtual host per visible service with the
//! VirtualService rules for each of its ports, and the clusters those routes name.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use skein_api::{
    names::outbound_cluster,
    proxy::{
        self, Capture, Cluster, Listener, ListenerProtocol, NameEntry, Route, RouteMatch, VirtualHost,
        WeightedDestination,
    },
};

use super::{
    OUTBOUND_PORT, OutboundKey,
    clusters::Clusters,
    routes::{Routes, Scope, default_retries},
};
use crate::{
    registry::{Resolution, ServiceInfo, ServicePort},
    snapshot::Snapshot,
};

/// Virtual hosts and clusters of a sidecar (plain values; encoding is the renderer's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outbound {
    /// One per visible service with HTTP ports.
    pub virtual_hosts: Arc<Vec<VirtualHost>>,
    /// One per service port and subset, by name. A persistent map: a patched part shares
    /// every unchanged node with the one it was patched from (copying it is free, and the
    /// difference between the two visits only what differs).
    pub clusters: imbl::OrdMap<Arc<str>, Arc<Cluster>>,
    /// The DNS proxy's name table: every visible host with virtual IPs.
    pub names: Arc<Vec<NameEntry>>,
}

impl Outbound {
    fn new(virtual_hosts: Vec<VirtualHost>, clusters: BTreeMap<String, Cluster>, names: Vec<NameEntry>) -> Self {
        let clusters = clusters.into_iter().map(|(n, c)| (Arc::from(n), Arc::new(c))).collect();
        Self { virtual_hosts: Arc::new(virtual_hosts), clusters, names: Arc::new(names) }
    }

    /// A gateway's: the mesh's clusters (shared), the clusters its routes add where the mesh
    /// has none of that name, and its own virtual hosts.
    pub fn for_gateway(mesh: &Outbound, virtual_hosts: Vec<VirtualHost>, extra: BTreeMap<String, Cluster>) -> Self {
        let mut out = Outbound { virtual_hosts: Arc::new(virtual_hosts), ..mesh.clone() };
        for (name, c) in extra {
            if !out.clusters.contains_key(name.as_str()) {
                out.clusters.insert(Arc::from(name), Arc::new(c));
            }
        }
        out
    }
}

/// The outbound capture listener.
pub fn listener() -> Listener {
    Listener {
        name: "virtualOutbound".into(),
        address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, OUTBOUND_PORT)),
        protocol: ListenerProtocol::Auto,
        cluster: None,
        peer_authentication: proxy::PeerAuthMode::Disable,
        port_peer_authentication: Default::default(),
        authorization: Vec::new(),
        capture: Some(Capture::Outbound),
        server_tls: None,
        tls_routes: Vec::new(),
        passthrough_hosts: Vec::new(),
    }
}

/// Builds the outbound part for `key`.
pub fn build(snap: &Snapshot, key: &OutboundKey) -> Outbound {
    let mut b = Routes::new(Clusters::new(snap, key), key, Scope::Mesh);
    // Every service's clusters first, so a route naming another service's cluster finds the
    // real one rather than leaving an empty placeholder in its place.
    for svc in visible(snap, key) {
        b.clusters.of_service(svc);
    }
    let mut virtual_hosts = Vec::new();
    for svc in visible(snap, key) {
        let http_ports: Vec<&ServicePort> = svc.ports.iter().filter(|p| p.protocol.is_http()).collect();
        if http_ports.is_empty() {
            continue;
        }
        // Resolution NONE has no endpoints to route to: requests pass through to the address
        // the client dialled — allowed, also under REGISTRY_ONLY, because the host is registered.
        if svc.resolution == Resolution::None {
            let routes = http_ports
                .iter()
                .map(|port| Route {
                    name: "passthrough".into(),
                    matches: vec![RouteMatch { port: Some(port.number), ..Default::default() }],
                    route: vec![WeightedDestination {
                        cluster: proxy::PASSTHROUGH_CLUSTER.into(),
                        weight: 100,
                        headers: Default::default(),
                    }],
                    ..Default::default()
                })
                .collect();
            virtual_hosts.push(VirtualHost { name: svc.host.clone(), domains: domains(svc, &key.namespace), routes });
            continue;
        }
        let vs = snap.virtual_service_for(&svc.host, &key.namespace);
        let mut routes = Vec::new();
        for port in http_ports {
            match vs {
                Some(vs) => routes.extend(b.vs_routes(vs, port)),
                None => routes.push(Route {
                    name: "default".into(),
                    matches: vec![RouteMatch { port: Some(port.number), ..Default::default() }],
                    route: vec![WeightedDestination {
                        cluster: outbound_cluster(port.number, "", &svc.host),
                        weight: 100,
                        headers: Default::default(),
                    }],
                    retries: Some(default_retries()),
                    ..Default::default()
                }),
            }
        }
        virtual_hosts.push(VirtualHost { name: svc.host.clone(), domains: domains(svc, &key.namespace), routes });
    }
    Outbound::new(virtual_hosts, b.clusters.map, name_table(snap, key))
}

/// The services a client with `key` sees: those exported to its namespace, within its
/// Sidecar resource's egress hosts when it has one.
fn visible<'a>(snap: &'a Snapshot, key: &'a OutboundKey) -> impl Iterator<Item = &'a Arc<ServiceInfo>> + 'a {
    snap.registry.visible(&key.namespace).filter(|svc| key.egress.as_ref().is_none_or(|e| e.sees(svc)))
}

/// What the sidecar's DNS proxy answers for a client in `client_ns`: each visible host with
/// virtual IPs, by its fully qualified name (the resolver's search path turns `reviews` into
/// `reviews.<ns>.svc.cluster.local` before asking). Wildcard hosts cannot be answered and hosts
/// without addresses are left to the cluster's DNS, as Istio's name table does.
fn name_table(snap: &Snapshot, key: &OutboundKey) -> Vec<NameEntry> {
    let mut names: Vec<NameEntry> = visible(snap, key)
        .filter(|svc| !svc.vips.is_empty() && !svc.host.contains('*'))
        .map(|svc| NameEntry { host: svc.host.to_ascii_lowercase(), addresses: svc.vips.clone() })
        // A host no query can name would make the proxy refuse the whole config.
        .filter(|n| n.validate("nameTable").is_ok())
        .collect();
    names.sort_by(|a, b| a.host.cmp(&b.host));
    names.dedup_by(|b, a| a.host == b.host);
    names
}

/// The outbound part for `key` after a change that touched only the endpoints of `hosts`
/// (everything else as when `prev` was built): `prev` with those hosts' clusters rebuilt.
/// Virtual hosts and every other cluster are shared with `prev`, and a rebuilt cluster equal
/// to its old self keeps the old one, so the cost (and the difference a consumer sees) is the
/// size of the change, not of the mesh.
pub fn rebuild(snap: &Snapshot, key: &OutboundKey, prev: &Outbound, hosts: &BTreeSet<String>) -> Outbound {
    let mut b = Clusters::new(snap, key);
    for host in hosts {
        if let Some(svc) = snap.registry.lookup(host, &key.namespace)
            && key.egress.as_ref().is_none_or(|e| e.sees(svc))
        {
            b.of_service(svc);
        }
    }
    let mut out = prev.clone();
    for (name, cluster) in b.map {
        if out.clusters.get(name.as_str()).is_some_and(|old| **old == cluster) {
            continue;
        }
        out.clusters.insert(Arc::from(name), Arc::new(cluster));
    }
    out
}

/// The names a client may use for a service: Kubernetes short forms (the bare name only in the
/// service's own namespace, as DNS search paths give it), the FQDN, and the VIPs.
fn domains(svc: &ServiceInfo, client_ns: &str) -> Vec<String> {
    let mut d = vec![svc.host.clone()];
    if let Some(name) = &svc.k8s_name {
        let ns = &svc.namespace;
        d.push(format!("{name}.{ns}.svc"));
        d.push(format!("{name}.{ns}"));
        if ns == client_ns {
            d.push(name.clone());
        }
    }
    d.extend(svc.vips.iter().map(|ip| ip.to_string()));
    d
}
