//! Services and DestinationRules → clusters: one per service port and subset
//! (`outbound|<port>|<subset>|<host>`), with the DestinationRule's traffic policy merged as
//! Istio merges it. Shared by sidecar and gateway translation.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
};

use skein_api::{
    istio::networking::{self as istio, DestinationRule, TrafficPolicy},
    names::outbound_cluster,
    proxy::{self, ClientTlsMode, Cluster, ClusterTls, LoadBalancer},
};

use super::{OutboundKey, dur};
use crate::{
    locality::{self, Candidate},
    registry::{Endpoint, Protocol, ServiceInfo, ServicePort, resolve_host},
    snapshot::{Snapshot, selects},
};

/// The clusters one client's routes need, built on demand and kept by name.
pub(super) struct Clusters<'a> {
    pub(super) snap: &'a Snapshot,
    /// The client's namespace: what it sees and which DestinationRule applies.
    pub(super) client_ns: &'a str,
    /// The client's locality and labels: the order it fails over in.
    client: &'a OutboundKey,
    /// Built so far, by name.
    pub(super) map: BTreeMap<String, Cluster>,
}

impl<'a> Clusters<'a> {
    /// No clusters yet, for the client `key` describes.
    pub(super) fn new(snap: &'a Snapshot, key: &'a OutboundKey) -> Self {
        Self { snap, client_ns: &key.namespace, client: key, map: BTreeMap::new() }
    }
}

impl Clusters<'_> {
    /// The clusters of every port of `svc`.
    pub(super) fn of_service(&mut self, svc: &ServiceInfo) {
        let dr = self.snap.destination_rule_for(&svc.host, self.client_ns, &svc.namespace);
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
        let name = outbound_cluster(port.number, subset.map_or("", |s| s.name.as_str()), &svc.host);
        if self.map.contains_key(&name) {
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
        let lb = policy.load_balancer.and_then(|l| l.locality_lb_setting.as_ref());
        let by_locality = locality::effective(lb, &self.snap.mesh.locality_lb, policy.outlier_detection.is_some());
        let mut levels = self.levels(&selected, port, by_locality);
        // An imported `.global` host: this cluster's own endpoints come first, then the peers'.
        let local = self.local_endpoints(svc, port, subset);
        if !local.is_empty() {
            levels.insert(0, local);
        }
        let mut levels = levels.into_iter().filter(|l| !l.is_empty());
        let endpoints = levels.next().unwrap_or_default();
        let failover = levels.collect();
        let cluster = Cluster {
            name: name.clone(),
            endpoints,
            failover,
            connect_timeout: policy
                .connection_pool
                .and_then(|c| c.tcp.as_ref())
                .and_then(|t| dur(t.connect_timeout.as_ref())),
            load_balancer: policy.load_balancer.map(load_balancer).unwrap_or_default(),
            connection_pool: policy.connection_pool.map(connection_pool),
            outlier_detection: policy.outlier_detection.map(outlier_detection),
            tls,
            http2: matches!(port.protocol, Protocol::Http2),
            // TCP by VIP is for the subset-less cluster only: a VIP names the whole service.
            service_addresses: if subset.is_none() {
                svc.vips.iter().map(|ip| SocketAddr::new(*ip, port.number)).collect()
            } else {
                Vec::new()
            },
        };
        self.map.insert(name, cluster);
    }

    /// For an imported `.global` host, the endpoints of this cluster's own Service of that
    /// name (`subset` as this cluster's DestinationRule for it defines the subset; none when
    /// it does not): the nearest, so they come first and the peers' gateways are the failover.
    fn local_endpoints(
        &self,
        svc: &ServiceInfo,
        port: &ServicePort,
        subset: Option<&istio::Subset>,
    ) -> Vec<SocketAddr> {
        let Some(base) = &svc.imported else { return Vec::new() };
        let host = format!("{base}.svc.{}", self.snap.mesh.cluster_domain);
        let Some(local) = self.snap.registry.lookup(&host, self.client_ns) else { return Vec::new() };
        let Some(local_port) = local.port(port.number) else { return Vec::new() };
        let labels = match subset {
            None => None,
            Some(s) => {
                let dr = self.snap.destination_rule_for(&local.host, self.client_ns, &local.namespace);
                match dr.and_then(|d| d.spec.subsets.iter().find(|x| x.name == s.name)) {
                    Some(local_subset) => Some(&local_subset.labels),
                    None => return Vec::new(),
                }
            }
        };
        local
            .endpoints
            .iter()
            .filter(|e| labels.is_none_or(|l| selects(l, &e.labels)))
            .map(|e| SocketAddr::new(e.ip, e.port_for(local_port)))
            .collect()
    }

    /// `endpoints` in the order the client tries them: one level under no locality setting,
    /// else grouped by Istio's priority of each for this client (nearest first).
    fn levels(
        &self,
        endpoints: &[&Endpoint],
        port: &ServicePort,
        setting: Option<&istio::LocalityLbSetting>,
    ) -> Vec<Vec<SocketAddr>> {
        let addr = |e: &Endpoint| SocketAddr::new(e.ip, e.port_for(port));
        let Some(setting) = setting else { return vec![endpoints.iter().map(|e| addr(e)).collect()] };
        let client = locality::Client { locality: &self.client.locality, labels: &self.client.labels };
        locality::levels(endpoints.iter().map(|e| {
            let here = self.snap.endpoint_locality(e);
            (locality::priority(setting, client, Candidate { locality: &here, labels: &e.labels }), addr(e))
        }))
    }

    /// ISTIO_MUTUAL towards `endpoints`: the server must present one of their identities.
    fn mesh_tls(&self, endpoints: &[&Endpoint], settings: Option<&istio::ClientTlsSettings>) -> ClusterTls {
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
        let svc = self.snap.registry.lookup(&host, self.client_ns).cloned();
        let port = d.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok()).unwrap_or_else(|| {
            match svc.as_deref().map(|s| s.ports.as_slice()) {
                Some([only]) => only.number,
                _ => default_port,
            }
        });
        let subset = d.subset.clone().unwrap_or_default();
        let name = outbound_cluster(port, &subset, &host);
        if !self.map.contains_key(&name) {
            self.map.insert(
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
                    failover: Vec::new(),
                },
            );
        }
        name
    }
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
    // Istio's cluster builder: the deprecated `consecutiveErrors` counts gateway errors only
    // (502/503/504 and connect failures) and switches off Envoy's default 5xx ejection, unless
    // `consecutive5xxErrors` is given too; `consecutiveGatewayErrors` wins over it.
    let legacy = od.consecutive_errors.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    let default_5xx = if legacy.is_some() { None } else { Some(5) };
    proxy::OutlierDetection {
        consecutive_5xx_errors: od.consecutive_5xx_errors.or(default_5xx),
        consecutive_gateway_errors: od.consecutive_gateway_errors.or(legacy),
        interval: dur(od.interval.as_ref()),
        base_ejection_time: dur(od.base_ejection_time.as_ref()),
        max_ejection_percent: non_negative(od.max_ejection_percent),
        // Istio sets Envoy's panic threshold to minHealthPercent, 0 when unset: no panic mode.
        min_health_percent: Some(non_negative(od.min_health_percent).unwrap_or(0)),
    }
}
