//! Outbound: services → clusters, VirtualServices → virtual hosts and routes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use kube::ResourceExt;
use skein_api::{
    istio::networking::{self as istio, DestinationRule, HttpRoute, TrafficPolicy, VirtualService},
    proxy::{
        self, Capture, ClientTlsMode, Cluster, ClusterTls, Listener, ListenerProtocol, LoadBalancer, Route, RouteMatch,
        VirtualHost, WeightedDestination,
    },
};

use super::{OUTBOUND_PORT, Workload};
use crate::{
    registry::{Resolution, ServiceInfo, ServicePort, resolve_host},
    render::Encoded,
    snapshot::{Snapshot, selects},
};

/// What the outbound part depends on: the namespace (visibility) and the labels (`sourceLabels`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboundKey {
    /// Client namespace.
    pub namespace: String,
    /// Client labels.
    pub labels: BTreeMap<String, String>,
}

impl OutboundKey {
    /// The key of a workload: its namespace and only the labels some VirtualService's
    /// `sourceLabels` look at, so every workload of a namespace usually shares one outbound
    /// config.
    pub fn of(w: &Workload, snap: &Snapshot) -> Self {
        let labels = w
            .labels
            .iter()
            .filter(|(k, _)| snap.source_label_keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self { namespace: w.namespace.clone(), labels }
    }
}

/// Virtual hosts and clusters of a sidecar, each kept with its encoding so a config is
/// assembled (and a delta between two configs computed) without encoding again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outbound {
    /// One per visible service with HTTP ports.
    pub virtual_hosts: Arc<Encoded<Vec<VirtualHost>>>,
    /// One per service port and subset, by name. A persistent map: a patched snapshot's
    /// shares every unchanged node with the previous one (copying it is free, and the delta
    /// between the two visits only what differs).
    pub clusters: imbl::OrdMap<Arc<str>, Arc<Encoded<Cluster>>>,
    /// Sum of the clusters' hashes (part of the config's version).
    pub clusters_hash: u64,
}

impl Outbound {
    fn new(virtual_hosts: Vec<VirtualHost>, clusters: BTreeMap<String, Cluster>) -> Self {
        let clusters: imbl::OrdMap<Arc<str>, Arc<Encoded<Cluster>>> =
            clusters.into_iter().map(|(n, c)| (Arc::from(n), Arc::new(Encoded::cluster(c)))).collect();
        let clusters_hash = clusters.values().fold(0u64, |h, c| h.wrapping_add(c.hash));
        Self { virtual_hosts: Arc::new(Encoded::virtual_hosts(virtual_hosts)), clusters, clusters_hash }
    }
}

impl Outbound {
    /// A gateway's: the mesh's clusters (shared), the clusters its routes add where the mesh
    /// has none of that name, and its own virtual hosts.
    pub fn for_gateway(mesh: &Outbound, virtual_hosts: Vec<VirtualHost>, extra: BTreeMap<String, Cluster>) -> Self {
        let mut out = Outbound { virtual_hosts: Arc::new(Encoded::virtual_hosts(virtual_hosts)), ..mesh.clone() };
        for (name, c) in extra {
            if !out.clusters.contains_key(name.as_str()) {
                let c = Encoded::cluster(c);
                out.clusters_hash = out.clusters_hash.wrapping_add(c.hash);
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
    }
}

/// `outbound|<port>|<subset>|<host>`.
pub fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Istio's default retry policy for routes that set none: 2 retries on connection failures,
/// resets and 503.
fn default_retries() -> proxy::RetryPolicy {
    proxy::RetryPolicy { attempts: 2, per_try_timeout: None, retry_on: "connect-failure,reset,503".into() }
}

fn dur(s: Option<&String>) -> Option<Duration> {
    s.and_then(|s| proxy::duration::parse(s).ok())
}

/// Whose routes are built: a sidecar's (rules bound to `mesh`) or a gateway's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// Sidecars: VirtualServices and match rules bound to `mesh` (the default).
    Mesh,
    /// One gateway, as `<namespace>/<name>`.
    Gateway(String),
}

impl Scope {
    /// Whether a `gateways` list written in namespace `vs_ns` names this scope (empty: `mesh`).
    pub(super) fn named_by(&self, gateways: &[String], vs_ns: &str) -> bool {
        match self {
            Scope::Mesh => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
            Scope::Gateway(full) => gateways.iter().any(|g| match g.split_once('/') {
                Some(_) => g == full,
                None => format!("{vs_ns}/{g}") == *full,
            }),
        }
    }
}

pub(super) struct Builder<'a> {
    pub(super) snap: &'a Snapshot,
    pub(super) key: &'a OutboundKey,
    pub(super) clusters: BTreeMap<String, Cluster>,
    pub(super) scope: Scope,
}

/// Builds the outbound part for `key`.
pub fn build(snap: &Snapshot, key: &OutboundKey) -> Outbound {
    let mut b = Builder { snap, key, clusters: BTreeMap::new(), scope: Scope::Mesh };
    // Every service's clusters first, so a route naming another service's cluster finds the
    // real one rather than leaving an empty placeholder in its place.
    for svc in snap.registry.visible(&key.namespace) {
        b.clusters_of(svc);
    }
    let mut virtual_hosts = Vec::new();
    for svc in snap.registry.visible(&key.namespace) {
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
                    route: vec![WeightedDestination { cluster: proxy::PASSTHROUGH_CLUSTER.into(), weight: 100 }],
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
                    route: vec![WeightedDestination { cluster: cluster_name(port.number, "", &svc.host), weight: 100 }],
                    retries: Some(default_retries()),
                    ..Default::default()
                }),
            }
        }
        virtual_hosts.push(VirtualHost { name: svc.host.clone(), domains: domains(svc, &key.namespace), routes });
    }
    Outbound::new(virtual_hosts, b.clusters)
}

/// The outbound part for `key` after a change that touched only the endpoints of `hosts`
/// (everything else as when `prev` was built): `prev` with those hosts' clusters rebuilt.
/// Virtual hosts and every other cluster are shared with `prev`, so the cost is the size of
/// the change, not of the mesh.
pub fn rebuild(snap: &Snapshot, key: &OutboundKey, prev: &Outbound, hosts: &BTreeSet<String>) -> Outbound {
    let mut b = Builder { snap, key, clusters: BTreeMap::new(), scope: Scope::Mesh };
    for host in hosts {
        if let Some(svc) = snap.registry.lookup(host, &key.namespace) {
            b.clusters_of(svc);
        }
    }
    let mut out = prev.clone();
    for (name, cluster) in b.clusters {
        let built = Encoded::cluster(cluster);
        let old = out.clusters.get(name.as_str());
        if old.is_some_and(|o| o.bytes == built.bytes) {
            continue;
        }
        out.clusters_hash = out.clusters_hash.wrapping_sub(old.map_or(0, |o| o.hash)).wrapping_add(built.hash);
        out.clusters.insert(Arc::from(name), Arc::new(built));
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

impl Builder<'_> {
    /// The clusters of every port of `svc`.
    fn clusters_of(&mut self, svc: &ServiceInfo) {
        let dr = self.snap.destination_rule_for(&svc.host, &self.key.namespace, &svc.namespace);
        for port in &svc.ports {
            self.service_clusters(svc, port, dr.map(Arc::as_ref));
        }
    }

    /// The cluster for every subset of `svc`:`port`, plus the subset-less one.
    fn service_clusters(&mut self, svc: &ServiceInfo, port: &ServicePort, dr: Option<&DestinationRule>) {
        self.add_cluster(svc, port, None, dr);
        for subset in dr.iter().flat_map(|d| &d.spec.subsets) {
            self.add_cluster(svc, port, Some(subset), dr);
        }
    }

    fn add_cluster(
        &mut self,
        svc: &ServiceInfo,
        port: &ServicePort,
        subset: Option<&istio::Subset>,
        dr: Option<&DestinationRule>,
    ) {
        let name = cluster_name(port.number, subset.map_or("", |s| s.name.as_str()), &svc.host);
        if self.clusters.contains_key(&name) {
            return;
        }
        let selected: Vec<_> =
            svc.endpoints.iter().filter(|e| subset.is_none_or(|s| selects(&s.labels, &e.labels))).collect();
        let policy = Policy::merge(dr.and_then(|d| d.spec.traffic_policy.as_ref()), subset, port.number);
        let tls = match policy.tls.and_then(|t| t.mode) {
            Some(istio::ClientTlsMode::ISTIO_MUTUAL) => Some(self.mesh_tls(&selected, policy.tls)),
            Some(istio::ClientTlsMode::SIMPLE) => Some(ClusterTls {
                mode: ClientTlsMode::Simple,
                subject_alt_names: policy.tls.map(|t| t.subject_alt_names.clone()).unwrap_or_default(),
                sni: policy.tls.and_then(|t| t.sni.clone()),
            }),
            Some(istio::ClientTlsMode::DISABLE) => None,
            // MUTUAL is refused by validation.
            Some(istio::ClientTlsMode::MUTUAL) => None,
            // Auto mTLS (Istio's default): mesh mTLS when every endpoint's proxy accepts it.
            None if !selected.is_empty() && selected.iter().all(|e| e.mtls_ready) => {
                Some(self.mesh_tls(&selected, None))
            }
            None => None,
        };
        let cluster = Cluster {
            name: name.clone(),
            endpoints: selected.iter().map(|e| SocketAddr::new(e.ip, e.port_for(port))).collect(),
            connect_timeout: policy
                .connection_pool
                .and_then(|c| c.tcp.as_ref())
                .and_then(|t| dur(t.connect_timeout.as_ref())),
            load_balancer: policy.load_balancer.map(load_balancer).unwrap_or_default(),
            connection_pool: policy.connection_pool.map(connection_pool),
            outlier_detection: policy.outlier_detection.map(outlier_detection),
            tls,
            http2: matches!(port.protocol, crate::registry::Protocol::Http2),
            // TCP by VIP is for the subset-less cluster only: a VIP names the whole service.
            service_addresses: if subset.is_none() {
                svc.vips.iter().map(|ip| SocketAddr::new(*ip, port.number)).collect()
            } else {
                Vec::new()
            },
        };
        self.clusters.insert(name, cluster);
    }

    /// ISTIO_MUTUAL towards `endpoints`: the server must present one of their identities.
    fn mesh_tls(
        &self,
        endpoints: &[&crate::registry::Endpoint],
        settings: Option<&istio::ClientTlsSettings>,
    ) -> ClusterTls {
        let mut sans: BTreeSet<String> =
            settings.map(|s| s.subject_alt_names.iter().cloned().collect()).unwrap_or_default();
        if sans.is_empty() {
            sans = endpoints
                .iter()
                .filter_map(|e| e.service_account.as_ref())
                .map(|(ns, sa)| self.snap.mesh.spiffe_id(ns, sa))
                .collect();
        }
        ClusterTls {
            mode: ClientTlsMode::IstioMutual,
            subject_alt_names: sans.into_iter().collect(),
            sni: settings.and_then(|s| s.sni.clone()),
        }
    }

    /// Makes sure a route's destination cluster exists. Unknown hosts or subsets get an
    /// empty cluster, so the route answers 503 (as Envoy does for a missing cluster) rather
    /// than the whole config being refused.
    pub(super) fn destination(&mut self, d: &istio::Destination, vs_ns: &str, default_port: u16) -> String {
        let domain = &self.snap.mesh.cluster_domain;
        let host = resolve_host(&d.host, vs_ns, domain);
        let svc = self.snap.registry.lookup(&host, &self.key.namespace).cloned();
        let port = d.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok()).unwrap_or_else(|| {
            match svc.as_deref().map(|s| s.ports.as_slice()) {
                Some([only]) => only.number,
                _ => default_port,
            }
        });
        let subset = d.subset.clone().unwrap_or_default();
        let name = cluster_name(port, &subset, &host);
        if !self.clusters.contains_key(&name) {
            self.clusters.insert(
                name.clone(),
                Cluster {
                    name: name.clone(),
                    endpoints: Vec::new(),
                    connect_timeout: None,
                    load_balancer: LoadBalancer::default(),
                    connection_pool: None,
                    outlier_detection: None,
                    tls: None,
                    http2: false,
                    service_addresses: Vec::new(),
                },
            );
        }
        name
    }

    /// The rules of `vs` that apply to `port` of `svc`, in order. A VirtualService replaces
    /// the default route: requests matching none of its rules get 404, as in Istio.
    pub(super) fn vs_routes(&mut self, vs: &VirtualService, port: &ServicePort) -> Vec<Route> {
        let vs_ns = vs.namespace().unwrap_or_default();
        let mut routes = Vec::new();
        for (i, rule) in vs.spec.http.iter().enumerate() {
            let Some(matches) = self.matches(rule, port.number, &vs_ns) else { continue };
            let name = rule.name.clone().unwrap_or_else(|| format!("{vs_ns}/{}[{i}]", vs.name_any()));
            let route = rule
                .route
                .iter()
                .map(|d| WeightedDestination {
                    cluster: self.destination(&d.destination, &vs_ns, port.number),
                    weight: match rule.route.len() {
                        1 => 100,
                        _ => d.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(0),
                    },
                })
                .collect();
            let mirror = rule.mirror.as_ref().map(|m| self.destination(m, &vs_ns, port.number));
            let mirror_percentage = mirror.as_ref().map(|_| {
                rule.mirror_percentage.as_ref().map(|p| p.value).or(rule.mirror_percent.map(f64::from)).unwrap_or(100.0)
            });
            routes.push(Route {
                name,
                matches,
                route,
                redirect: rule.redirect.as_ref().map(redirect),
                rewrite: rule
                    .rewrite
                    .as_ref()
                    .map(|r| proxy::Rewrite { uri: r.uri.clone(), authority: r.authority.clone() }),
                // "0s" disables the timeout in Istio.
                timeout: dur(rule.timeout.as_ref()).filter(|d| !d.is_zero()),
                retries: retries(rule),
                fault: fault(rule),
                mirror,
                mirror_percentage,
            });
        }
        routes
    }

    /// The rule's matches narrowed to `port` and to this client; `None` when none can match.
    /// `sourceLabels`, `sourceNamespace` and `gateways` are decided here, per client, as Istio
    /// does when it builds a sidecar's routes.
    fn matches(&self, rule: &HttpRoute, port: u16, vs_ns: &str) -> Option<Vec<RouteMatch>> {
        if rule.matches.is_empty() {
            return Some(vec![RouteMatch { port: Some(port), ..Default::default() }]);
        }
        let out: Vec<RouteMatch> = rule
            .matches
            .iter()
            .filter(|m| m.port.is_none_or(|p| p == u32::from(port)))
            .filter(|m| selects(&m.source_labels, &self.key.labels))
            .filter(|m| m.source_namespace.as_ref().is_none_or(|ns| *ns == self.key.namespace))
            // A match without `gateways` applies wherever its VirtualService does.
            .filter(|m| m.gateways.is_empty() || self.scope.named_by(&m.gateways, vs_ns))
            .map(|m| RouteMatch {
                uri: m.uri.as_ref().and_then(string_match),
                method: m.method.as_ref().and_then(string_match),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), string_match(v)?)))
                    .collect(),
                port: Some(port),
            })
            .collect();
        (!out.is_empty()).then_some(out)
    }
}

/// A VirtualService redirect. `derivePort: FROM_PROTOCOL_DEFAULT` is the scheme's default port
/// (80, or 443 for https; without a scheme, 80), `FROM_REQUEST_PORT` (or nothing) keeps the
/// request's.
fn redirect(r: &istio::HttpRedirect) -> proxy::Redirect {
    let default_port = match r.scheme.as_deref() {
        Some("https") => 443,
        _ => 80,
    };
    let port = match (r.port, r.derive_port.as_deref()) {
        (Some(p), _) => u16::try_from(p).ok(),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => Some(default_port),
        _ => None,
    };
    proxy::Redirect {
        uri: r.uri.clone(),
        authority: r.authority.clone(),
        redirect_code: r.redirect_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(301),
        scheme: r.scheme.clone(),
        port,
    }
}

fn string_match(m: &istio::StringMatch) -> Option<proxy::StringMatch> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), _, _) => Some(proxy::StringMatch::Exact(v.clone())),
        (_, Some(v), _) => Some(proxy::StringMatch::Prefix(v.clone())),
        (_, _, Some(v)) => Some(proxy::StringMatch::Regex(v.clone())),
        _ => None,
    }
}

fn retries(rule: &HttpRoute) -> Option<proxy::RetryPolicy> {
    match &rule.retries {
        None => Some(default_retries()),
        Some(r) => {
            let attempts = r.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(2);
            (attempts > 0).then(|| proxy::RetryPolicy {
                attempts,
                per_try_timeout: dur(r.per_try_timeout.as_ref()),
                retry_on: r.retry_on.clone().unwrap_or_else(|| default_retries().retry_on),
            })
        }
    }
}

fn fault(rule: &HttpRoute) -> Option<proxy::Fault> {
    let f = rule.fault.as_ref()?;
    let delay = f.delay.as_ref().and_then(|d| {
        Some(proxy::Delay {
            fixed_delay: dur(d.fixed_delay.as_ref())?,
            percentage: d.percentage.as_ref().map(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(100.0),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        Some(proxy::Abort {
            http_status: u16::try_from(a.http_status?).ok()?,
            percentage: a.percentage.as_ref().map_or(100.0, |p| p.value),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(proxy::Fault { delay, abort })
}

/// A DestinationRule's policy for one port of one subset: subset settings override the
/// rule's, port-level settings override both levels' defaults (Istio's merge).
#[derive(Default)]
struct Policy<'a> {
    load_balancer: Option<&'a istio::LoadBalancerSettings>,
    connection_pool: Option<&'a istio::ConnectionPoolSettings>,
    outlier_detection: Option<&'a istio::OutlierDetection>,
    tls: Option<&'a istio::ClientTlsSettings>,
}

impl<'a> Policy<'a> {
    fn merge(top: Option<&'a TrafficPolicy>, subset: Option<&'a istio::Subset>, port: u16) -> Self {
        let mut p = Policy::default();
        for level in [top, subset.and_then(|s| s.traffic_policy.as_ref())].into_iter().flatten() {
            p.overlay(
                level.load_balancer.as_ref(),
                level.connection_pool.as_ref(),
                level.outlier_detection.as_ref(),
                level.tls.as_ref(),
            );
            if let Some(pl) = level
                .port_level_settings
                .iter()
                .find(|pl| pl.port.as_ref().and_then(|x| x.number) == Some(u32::from(port)))
            {
                p.overlay(
                    pl.load_balancer.as_ref(),
                    pl.connection_pool.as_ref(),
                    pl.outlier_detection.as_ref(),
                    pl.tls.as_ref(),
                );
            }
        }
        p
    }

    fn overlay(
        &mut self,
        lb: Option<&'a istio::LoadBalancerSettings>,
        cp: Option<&'a istio::ConnectionPoolSettings>,
        od: Option<&'a istio::OutlierDetection>,
        tls: Option<&'a istio::ClientTlsSettings>,
    ) {
        self.load_balancer = lb.or(self.load_balancer);
        self.connection_pool = cp.or(self.connection_pool);
        self.outlier_detection = od.or(self.outlier_detection);
        self.tls = tls.or(self.tls);
    }
}

fn load_balancer(lb: &istio::LoadBalancerSettings) -> LoadBalancer {
    if let Some(h) = &lb.consistent_hash {
        if let Some(name) = &h.http_header_name {
            return LoadBalancer::ConsistentHash(proxy::HashKey::HttpHeaderName(name.to_ascii_lowercase()));
        }
        if let Some(c) = &h.http_cookie {
            return LoadBalancer::ConsistentHash(proxy::HashKey::HttpCookie(c.name.clone()));
        }
        if h.use_source_ip == Some(true) {
            return LoadBalancer::ConsistentHash(proxy::HashKey::UseSourceIp);
        }
    }
    match lb.simple {
        Some(istio::SimpleLb::LEAST_CONN | istio::SimpleLb::LEAST_REQUEST) => LoadBalancer::LeastRequest,
        Some(istio::SimpleLb::RANDOM) => LoadBalancer::Random,
        _ => LoadBalancer::RoundRobin,
    }
}

fn non_negative(v: Option<i32>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

fn connection_pool(cp: &istio::ConnectionPoolSettings) -> proxy::ConnectionPool {
    let http = cp.http.as_ref();
    proxy::ConnectionPool {
        max_connections: non_negative(cp.tcp.as_ref().and_then(|t| t.max_connections)),
        http1_max_pending_requests: non_negative(http.and_then(|h| h.http1_max_pending_requests)),
        http2_max_requests: non_negative(http.and_then(|h| h.http2_max_requests)),
        max_retries: non_negative(http.and_then(|h| h.max_retries)),
        max_requests_per_connection: non_negative(http.and_then(|h| h.max_requests_per_connection)),
    }
}

fn outlier_detection(od: &istio::OutlierDetection) -> proxy::OutlierDetection {
    proxy::OutlierDetection {
        // Istio: consecutive5xxErrors defaults to 5 (the deprecated consecutiveErrors is the
        // same counter for gateway errors).
        consecutive_5xx_errors: od.consecutive_5xx_errors.or(Some(5)),
        consecutive_gateway_errors: od
            .consecutive_gateway_errors
            .or(od.consecutive_errors.and_then(|v| u32::try_from(v).ok())),
        interval: dur(od.interval.as_ref()),
        base_ejection_time: dur(od.base_ejection_time.as_ref()),
        max_ejection_percent: non_negative(od.max_ejection_percent),
    }
}
