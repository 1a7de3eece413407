//! Gateways (`router` proxies): Istio `Gateway` servers selecting the gateway's pod become
//! listeners, and the VirtualServices bound to those Gateways become its virtual hosts.
//!
//! Per server: HTTP (and HTTP2/GRPC) is routed by Host; HTTPS with tls mode SIMPLE or MUTUAL
//! is terminated — with the `credentialName` Secret (sent only to a gateway that proved, with
//! its ServiceAccount token, that it runs in the Secret's namespace) or the certificate files
//! the server names — and then routed like HTTP;
//! TLS/HTTPS with PASSTHROUGH goes by SNI to the VirtualServices' `tls` routes, still
//! encrypted; TLS with AUTO_PASSTHROUGH (the east-west gateway on 15443) sends each
//! connection to the local endpoints its Istio SNI names; TCP goes to the first bound
//! VirtualService's `tcp` route. Servers are grouped by port, as Istio does: on one port the
//! first server's protocol wins and the others' hosts and certificates join it.
//!
//! A server's port number is the port of the gateway's Service, as in Istio: the listener
//! binds that Service port's `targetPort` (the operator's gateway Service maps 80 → 8080 and
//! 443 → 8443, so the gateway runs without the right to bind ports below 1024). Without a
//! Service in front of the gateway, the listener binds the number as written.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use kube::ResourceExt;
use skein_api::{
    istio::networking::{Gateway, Server, VirtualService},
    proxy::{
        Cluster, InlineCredential, Listener, ListenerProtocol, PeerAuthMode, Redirect, Route, RouteMatch,
        ServerCredential, ServerTls, TlsRoute, VirtualHost,
    },
};
use tracing::debug;

use super::{
    OutboundKey, Workload,
    clusters::Clusters,
    inbound,
    routes::{Routes, Scope},
};
use crate::{
    registry::{Protocol, ServicePort},
    snapshot::{Snapshot, age_key, selects},
};

/// What a gateway serves: listeners, virtual hosts, and the clusters its routes name that
/// the mesh-wide cluster set may not have (unknown hosts or subsets, as empty clusters).
#[derive(Debug, Default)]
pub struct GatewayConfig {
    /// One listener per server port.
    pub listeners: Vec<Listener>,
    /// Virtual hosts of the HTTP(S) servers, by domain.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Clusters routes name.
    pub clusters: BTreeMap<String, Cluster>,
}

/// How one server port is served.
#[derive(Clone)]
enum PortKind {
    Http { tls: Option<ServerTls> },
    Passthrough,
    AutoPassthrough,
    Tcp,
}

/// What one listen port serves: the first server's kind, and every server bound there.
struct PortPlan {
    kind: PortKind,
    servers: Vec<PlannedServer>,
}

/// A Gateway server on a listen port.
struct PlannedServer {
    /// The Gateway, `<ns>/<name>`.
    gateway: String,
    /// The Gateway's namespace.
    namespace: String,
    server: Server,
    /// The server's own port number (route `port` matches and default destination ports
    /// name it, not the port it binds).
    number: u16,
}

/// Gateways whose selector matches the workload's labels, oldest first (Istio looks for them
/// in every namespace).
fn selected<'a>(snap: &'a Snapshot, w: &Workload) -> Vec<&'a Arc<Gateway>> {
    let mut v: Vec<&Arc<Gateway>> =
        snap.istio.gateways.iter().filter(|g| selects(&g.spec.selector, &w.labels)).collect();
    v.sort_by_key(|g| age_key(g.as_ref()));
    v
}

fn kind_of(snap: &Snapshot, w: &Workload, server: &Server) -> Option<PortKind> {
    let protocol = server.port.protocol.as_deref().unwrap_or("HTTP").to_ascii_uppercase();
    let mode = server.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("").to_ascii_uppercase();
    Some(match (protocol.as_str(), mode.as_str()) {
        (_, "AUTO_PASSTHROUGH") => PortKind::AutoPassthrough,
        ("HTTPS" | "TLS", "PASSTHROUGH") => PortKind::Passthrough,
        ("HTTPS", "SIMPLE" | "MUTUAL") => PortKind::Http { tls: Some(server_tls(snap, w, server)?) },
        ("HTTP" | "HTTP2" | "GRPC", _) => PortKind::Http { tls: None },
        ("TCP" | "MONGO" | "MYSQL" | "REDIS", _) => PortKind::Tcp,
        _ => return None,
    })
}

/// The certificate of a SIMPLE/MUTUAL server: the `credentialName` Secret (in the gateway's
/// namespace, only for a gateway that proved its ServiceAccount there), or the files named
/// on the gateway's disk.
fn server_tls(snap: &Snapshot, w: &Workload, server: &Server) -> Option<ServerTls> {
    let tls = server.tls.as_ref()?;
    let mutual = tls.mode.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("MUTUAL"));
    let hosts: Vec<String> = server.hosts.iter().map(|h| host_part(h).to_string()).collect();
    let secret_name = tls.credential_name.as_ref().or(tls.credential_names.first());
    let credential = match secret_name {
        Some(name) => {
            if !w.authenticated {
                debug!(secret = name, "gateway did not authenticate; credentialName not served");
                return None;
            }
            let Some(secret) = snap.tls_secrets.get(&(w.namespace.clone(), name.clone())) else {
                debug!(namespace = w.namespace, secret = name, "credentialName: no such kubernetes.io/tls Secret");
                return None;
            };
            ServerCredential {
                hosts,
                cert_chain: Default::default(),
                private_key: Default::default(),
                inline: Some(InlineCredential {
                    cert_chain: secret.cert_chain.clone(),
                    private_key: secret.private_key.clone(),
                    ca_certificates: secret.ca_certificates.clone().filter(|_| mutual),
                }),
            }
        }
        None => ServerCredential {
            hosts,
            cert_chain: tls.server_certificate.clone()?.into(),
            private_key: tls.private_key.clone()?.into(),
            inline: None,
        },
    };
    Some(ServerTls {
        credentials: vec![credential],
        ca_certificates: tls.ca_certificates.clone().filter(|_| mutual).map(Into::into),
    })
}

/// `ns/host` → `host`.
fn host_part(h: &str) -> &str {
    h.split_once('/').map_or(h, |(_, host)| host)
}

/// Whether server host `pattern` (`[ns/]host`, wildcards allowed) admits VirtualService host
/// `vs_host` of a VirtualService in `vs_ns`; returns the domain to serve it under (the more
/// specific of the two).
fn admits(pattern: &str, gw_ns: &str, vs_ns: &str, vs_host: &str) -> Option<String> {
    let (ns, host) = pattern.split_once('/').unwrap_or(("*", pattern));
    let ns_ok = match ns {
        "*" => true,
        "." => vs_ns == gw_ns,
        other => other == vs_ns,
    };
    if !ns_ok {
        return None;
    }
    if wildcard_covers(host, vs_host) {
        Some(vs_host.to_ascii_lowercase())
    } else if wildcard_covers(vs_host, host) {
        Some(host.to_ascii_lowercase())
    } else {
        None
    }
}

/// Whether host pattern `wide` covers every name `narrow` does (`*` covers all, `*.a.com`
/// covers `b.a.com` and `*.b.a.com`).
pub fn wildcard_covers(wide: &str, narrow: &str) -> bool {
    if wide == "*" {
        return true;
    }
    match wide.strip_prefix('*') {
        Some(suffix) => {
            narrow.len() > suffix.len() && narrow.to_ascii_lowercase().ends_with(&suffix.to_ascii_lowercase())
        }
        None => wide.eq_ignore_ascii_case(narrow),
    }
}

/// The configuration of the gateway `w`. `key` is its outbound key (for `sourceLabels`).
pub fn build(snap: &Snapshot, w: &Workload, key: &OutboundKey) -> GatewayConfig {
    let mut ports: BTreeMap<u16, PortPlan> = BTreeMap::new();
    for gw in selected(snap, w) {
        let gw_ns = gw.namespace().unwrap_or_default();
        let full = format!("{gw_ns}/{}", gw.name_any());
        for server in &gw.spec.servers {
            let Ok(number) = u16::try_from(server.port.number) else { continue };
            let Some(kind) = kind_of(snap, w, server) else {
                debug!(gateway = full, port = number, "server not served (protocol/tls mode)");
                continue;
            };
            // Grouped by the port they bind, as Istio merges servers: `80` (the Service port,
            // bound as its target 8080) and `8080` (Istio's current Bookinfo sample) are one
            // listener, each server keeping its own number for route `port` matches.
            for bind in listen_ports(snap, w, number) {
                let plan = match ports.entry(bind) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(PortPlan { kind: kind.clone(), servers: Vec::new() })
                    }
                    std::collections::btree_map::Entry::Occupied(e) => {
                        let plan = e.into_mut();
                        // A later HTTPS server on a port brings its certificate along.
                        if let (PortKind::Http { tls: Some(existing) }, PortKind::Http { tls: Some(more) }) =
                            (&mut plan.kind, kind.clone())
                        {
                            existing.credentials.extend(more.credentials);
                        }
                        plan
                    }
                };
                plan.servers.push(PlannedServer {
                    gateway: full.clone(),
                    namespace: gw_ns.clone(),
                    server: server.clone(),
                    number,
                });
            }
        }
    }

    let authorization = inbound::authorization(snap, w);
    let mut out = GatewayConfig::default();
    let mut vhosts: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    for (bind, plan) in &ports {
        if let Some(l) = listener_for(snap, key, *bind, plan, &authorization, &mut vhosts, &mut out) {
            out.listeners.push(l);
        }
    }
    out.virtual_hosts = vhosts
        .into_iter()
        .map(|(domain, routes)| VirtualHost { name: domain.clone(), domains: vec![domain], routes })
        .collect();
    out
}

/// The ports the gateway listens on for server port `number`: the target ports of that port
/// of the Services selecting the gateway's pod (Istio's port translation), else `number`.
/// A named `targetPort` is resolved through the Service's endpoints (their port of that name;
/// until the gateway's endpoint is listed, the number itself).
fn listen_ports(snap: &Snapshot, w: &Workload, number: u16) -> Vec<u16> {
    let mut out: Vec<u16> = snap
        .registry
        .by_host
        .values()
        .flat_map(|v| v.iter())
        .filter(|s| s.k8s_name.is_some() && s.namespace == w.namespace)
        .filter(|s| !s.selector.is_empty() && selects(&s.selector, &w.labels))
        .filter_map(|s| {
            let port = s.port(number)?;
            // A numeric targetPort is known without endpoints (the gateway's own endpoint
            // appears only once it is ready, i.e. after it got this config).
            if port.target != number {
                return Some(port.target);
            }
            Some(s.endpoints.iter().find_map(|e| e.ports.get(&port.name).copied()).unwrap_or(number))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        out.push(number);
    }
    out
}

/// The listener on `bind` serving server port `number`; its HTTP routes join `vhosts` (route
/// matches name the listener's port, which is what the proxy sees) and the clusters they name
/// join `out`. `None` for a TCP server without a route.
#[allow(clippy::too_many_arguments)]
fn listener_for(
    snap: &Snapshot,
    key: &OutboundKey,
    bind: u16,
    plan: &PortPlan,
    authorization: &[skein_api::proxy::AuthorizationPolicy],
    vhosts: &mut BTreeMap<String, Vec<Route>>,
    out: &mut GatewayConfig,
) -> Option<Listener> {
    let mut listener = Listener {
        name: format!("0.0.0.0_{bind}"),
        address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, bind)),
        protocol: ListenerProtocol::Http,
        cluster: None,
        peer_authentication: PeerAuthMode::Disable,
        port_peer_authentication: Default::default(),
        authorization: authorization.to_vec(),
        capture: None,
        server_tls: None,
        tls_routes: Vec::new(),
        passthrough_hosts: Vec::new(),
    };
    let mut b = Routes::new(Clusters::new(snap, key), key, Scope::Mesh);
    match &plan.kind {
        PortKind::Http { tls } => {
            listener.server_tls = tls.clone();
            for PlannedServer { gateway: full, namespace: gw_ns, server, number } in &plan.servers {
                let number = *number;
                let port = ServicePort { number, name: String::new(), protocol: Protocol::Http, target: number };
                if server.tls.as_ref().and_then(|t| t.https_redirect) == Some(true) {
                    // Every request to the server's hosts on this port is told to use HTTPS
                    // (301), whether or not a VirtualService is bound.
                    for host in &server.hosts {
                        let domain = host_part(host).to_ascii_lowercase();
                        vhosts.entry(domain).or_default().insert(0, https_redirect(bind));
                    }
                    continue;
                }
                b.scope = Scope::Gateway(full.clone());
                for vs in bound(snap, &b.scope) {
                    let vs_ns = vs.namespace().unwrap_or_default();
                    let domains: Vec<String> = vs
                        .spec
                        .hosts
                        .iter()
                        .flat_map(|h| server.hosts.iter().filter_map(|p| admits(p, gw_ns, &vs_ns, h)))
                        .collect();
                    if domains.is_empty() {
                        continue;
                    }
                    let mut routes = b.vs_routes(vs, &port);
                    for m in routes.iter_mut().flat_map(|r| r.matches.iter_mut()) {
                        m.port = m.port.map(|_| bind);
                    }
                    for d in domains {
                        vhosts.entry(d).or_default().extend(routes.iter().cloned());
                    }
                }
            }
        }
        PortKind::Passthrough => {
            listener.protocol = ListenerProtocol::Tls;
            for PlannedServer { gateway: full, namespace: gw_ns, server, number } in &plan.servers {
                let number = *number;
                b.scope = Scope::Gateway(full.clone());
                for vs in bound(snap, &b.scope) {
                    let vs_ns = vs.namespace().unwrap_or_default();
                    for rule in &vs.spec.tls {
                        let sni: Vec<String> = rule
                            .matches
                            .iter()
                            .filter(|m| m.port.is_none_or(|p| p == u32::from(number)))
                            .filter(|m| m.gateways.is_empty() || b.scope.named_by(&m.gateways, &vs_ns))
                            .flat_map(|m| m.sni_hosts.iter())
                            .filter(|h| server.hosts.iter().any(|p| admits(p, gw_ns, &vs_ns, h).is_some()))
                            .cloned()
                            .collect();
                        let Some(dest) = rule.route.first() else { continue };
                        if sni.is_empty() {
                            continue;
                        }
                        let cluster = b.clusters.destination(&dest.destination, &vs_ns, number);
                        listener.tls_routes.push(TlsRoute { sni_hosts: sni, cluster });
                    }
                }
            }
        }
        PortKind::AutoPassthrough => {
            listener.protocol = ListenerProtocol::AutoPassthrough;
            // The connection's destination is in its SNI; authorization is the workload's.
            listener.authorization = Vec::new();
            // Only the services the servers name (`ns/host` or `host`): the east-west gateway
            // must not open every local service to another network.
            let mut hosts: Vec<String> = plan
                .servers
                .iter()
                .flat_map(|p| &p.server.hosts)
                .map(|h| h.split_once('/').map_or(h.as_str(), |(_, host)| host).to_string())
                .collect();
            hosts.sort();
            hosts.dedup();
            listener.passthrough_hosts = hosts;
        }
        PortKind::Tcp => {
            listener.protocol = ListenerProtocol::Tcp;
            'found: for PlannedServer { gateway: full, number, .. } in &plan.servers {
                let number = *number;
                b.scope = Scope::Gateway(full.clone());
                for vs in bound(snap, &b.scope) {
                    let vs_ns = vs.namespace().unwrap_or_default();
                    for rule in &vs.spec.tcp {
                        let applies = rule.matches.is_empty()
                            || rule.matches.iter().any(|m| {
                                m.port.is_none_or(|p| p == u32::from(number))
                                    && (m.gateways.is_empty() || b.scope.named_by(&m.gateways, &vs_ns))
                            });
                        if let (true, Some(dest)) = (applies, rule.route.first()) {
                            listener.cluster = Some(b.clusters.destination(&dest.destination, &vs_ns, number));
                            break 'found;
                        }
                    }
                }
            }
            if listener.cluster.is_none() {
                debug!(port = bind, "TCP server without a bound VirtualService tcp route; not served");
                return None;
            }
        }
    }
    out.clusters.append(&mut b.clusters.map);
    Some(listener)
}

/// The route of an `httpsRedirect` server on listener port `bind`.
fn https_redirect(bind: u16) -> Route {
    Route {
        name: format!("https-redirect-{bind}"),
        matches: vec![RouteMatch { port: Some(bind), ..Default::default() }],
        redirect: Some(Redirect {
            scheme: Some("https".into()),
            redirect_code: 301,
            uri: None,
            authority: None,
            port: None,
        }),
        ..Default::default()
    }
}

/// VirtualServices bound to the gateway `scope`, oldest first.
fn bound<'a>(snap: &'a Snapshot, scope: &Scope) -> Vec<&'a Arc<VirtualService>> {
    let mut v: Vec<&Arc<VirtualService>> = snap
        .istio
        .virtual_services
        .iter()
        .filter(|vs| scope.named_by(&vs.spec.gateways, &vs.namespace().unwrap_or_default()))
        .collect();
    v.sort_by_key(|vs| age_key(vs.as_ref()));
    v
}
