//! The service registry: Kubernetes Services (with their EndpointSlices and Pods) and
//! ServiceEntries folded into one view of "hosts with ports and endpoints", the shape Istio's
//! translation works on. Built once per snapshot; translation only reads it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::ResourceExt;
use skein_api::istio::networking::ServiceEntry;

use crate::mesh::MeshSettings;

/// Label the injector puts on pods whose proxy accepts mesh mTLS (Istio's name).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Service annotation restricting which namespaces see a Service (Istio's name).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// Application protocol of a port, from its name prefix or `appProtocol` (Istio's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or sniffed).
    Http,
    /// HTTP/2 or gRPC.
    Http2,
    /// TLS passed through by SNI.
    Tls,
    /// Opaque TCP.
    Tcp,
    /// Not declared: sniffed per connection.
    Unknown,
}

impl Protocol {
    /// Istio's protocol selection: `appProtocol`, else the port name's prefix before `-`.
    pub fn from_port(name: Option<&str>, app_protocol: Option<&str>) -> Self {
        let pick = |p: &str| match p.to_ascii_lowercase().as_str() {
            "http" => Some(Self::Http),
            "http2" | "grpc" | "grpc-web" | "h2c" | "kubernetes.io/h2c" => Some(Self::Http2),
            "https" | "tls" => Some(Self::Tls),
            "tcp" | "mongo" | "mysql" | "redis" => Some(Self::Tcp),
            _ => None,
        };
        app_protocol
            .and_then(pick)
            .or_else(|| name.and_then(|n| pick(n.split('-').next().unwrap_or(n))))
            .unwrap_or(Self::Unknown)
    }

    /// Whether requests on this port are routed by HTTP rules.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Unknown)
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port clients dial.
    pub number: u16,
    /// Port name (empty when unnamed).
    pub name: String,
    /// Declared protocol.
    pub protocol: Protocol,
    /// Endpoint port when the endpoint does not say (ServiceEntry `targetPort`, or the number).
    pub target: u16,
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Address.
    pub ip: IpAddr,
    /// Port per service port name (EndpointSlice ports, or WorkloadEntry `ports`).
    pub ports: BTreeMap<String, u16>,
    /// Labels subsets select on (the Pod's, or the WorkloadEntry's).
    pub labels: BTreeMap<String, String>,
    /// Namespace and ServiceAccount of the workload, when known.
    pub service_account: Option<(String, String)>,
    /// Whether the endpoint's proxy accepts mesh mTLS.
    pub mtls_ready: bool,
}

impl Endpoint {
    /// The port this endpoint serves `port` on.
    pub fn port_for(&self, port: &ServicePort) -> u16 {
        self.ports.get(&port.name).copied().unwrap_or(port.target)
    }
}

/// How a ServiceEntry's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Kubernetes Service: EndpointSlices.
    Kubernetes,
    /// Endpoints listed with addresses.
    Static,
    /// Endpoint (or host) names resolved by DNS.
    Dns,
    /// Connections go where the client sent them.
    None,
}

/// A host the mesh knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Fully qualified host (`reviews.default.svc.cluster.local`, or the ServiceEntry host).
    pub host: String,
    /// Namespace of the Service or ServiceEntry.
    pub namespace: String,
    /// Kubernetes Service name; `None` for ServiceEntries.
    pub k8s_name: Option<String>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Virtual IPs (ClusterIPs or ServiceEntry `addresses`).
    pub vips: Vec<IpAddr>,
    /// Ports, in declaration order.
    pub ports: Vec<ServicePort>,
    /// Namespaces the service is visible to (`*`, `.`, or names); empty means everywhere.
    pub export_to: Vec<String>,
    /// Backends.
    pub endpoints: Vec<Endpoint>,
}

impl ServiceInfo {
    /// Whether a proxy in `client_ns` may see this service.
    pub fn visible_to(&self, client_ns: &str) -> bool {
        exported_to(&self.export_to, &self.namespace, client_ns)
    }

    /// Whether `other` differs from this at most in its endpoints.
    pub fn same_but_endpoints(&self, other: &ServiceInfo) -> bool {
        // Destructured so a new field must be considered here.
        let ServiceInfo { host, namespace, k8s_name, resolution, vips, ports, export_to, endpoints: _ } = self;
        *host == other.host
            && *namespace == other.namespace
            && *k8s_name == other.k8s_name
            && *resolution == other.resolution
            && *vips == other.vips
            && *ports == other.ports
            && *export_to == other.export_to
    }

    /// The port numbered `number`.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// Istio's `exportTo` semantics: empty or `*` is everyone, `.` the owner's namespace, else the
/// listed namespaces. `~` (nobody) matches nothing.
pub fn exported_to(export_to: &[String], owner_ns: &str, client_ns: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => owner_ns == client_ns,
            other => other == client_ns,
        })
}

/// Istio's short-name resolution: `reviews` written in namespace `default` means
/// `reviews.default.svc.<domain>`; `reviews.prod` means `reviews.prod.svc.<domain>`; names
/// with more dots, or wildcards, are taken as written.
pub fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.starts_with('*') {
        return host;
    }
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.svc.{cluster_domain}"),
        1 => format!("{host}.svc.{cluster_domain}"),
        _ => host,
    }
}

/// Services of one host: the Kubernetes Service (or the oldest entry) first.
pub type HostServices = Arc<[Arc<ServiceInfo>]>;

/// All services, by host. A persistent map: a snapshot's registry shares all but the changed
/// entries with the previous one, so copying it is free and patching it costs the change.
#[derive(Debug, Default)]
pub struct Registry {
    /// Services by fully qualified host. One host may have entries from several namespaces
    /// (ServiceEntries); the Kubernetes Service, or the oldest entry, comes first.
    pub by_host: imbl::OrdMap<Arc<str>, HostServices>,
}

/// A pod a Service's endpoints referred to, and what was found under that name.
type PodRef = ((String, String), Option<Arc<Pod>>);

/// (namespace, name) of an object, borrowed.
fn names(m: &kube::api::ObjectMeta) -> (&str, &str) {
    (m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or(""))
}

/// A fast hasher for the per-build indexes (their keys are names from the apiserver's own
/// objects, not attacker-chosen lookups).
type Fast = foldhash::fast::RandomState;

/// Pods by (namespace, name), borrowing the names from the pods.
type PodIndex<'a> = HashMap<(&'a str, &'a str), &'a Arc<Pod>, Fast>;

/// What a Service's registry entry was built from.
struct Built {
    /// Held so that the address keying this entry is not reused by another object.
    _service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    pods: Vec<PodRef>,
    info: Option<Arc<ServiceInfo>>,
    /// `info.host`, shared by every registry this entry goes into.
    host: Arc<str>,
}

/// The Services' entries of the previous build, reused while the Service, its EndpointSlices
/// and the pods they name are the same objects: after one change, only the services it
/// touched are translated again (the watch keeps unchanged objects as the same `Arc`). Keyed
/// by the Service object's address, which cannot be reused while the entry holds the object.
#[derive(Default)]
pub struct RegistryCache {
    by_service: HashMap<usize, Built, Fast>,
    /// The registry last built, patched by the next build.
    by_host: imbl::OrdMap<Arc<str>, HostServices>,
    /// ServiceEntry entries of the last build (few; replaced whole every build).
    entry_infos: Vec<(Arc<str>, Arc<ServiceInfo>)>,
}

/// Adds `info` to its host, first (a Kubernetes Service) or last (a ServiceEntry).
fn add(by_host: &mut imbl::OrdMap<Arc<str>, HostServices>, host: &Arc<str>, info: &Arc<ServiceInfo>, first: bool) {
    let mut v: Vec<Arc<ServiceInfo>> = by_host.get(host).map(|s| s.to_vec()).unwrap_or_default();
    if first {
        v.insert(0, info.clone());
    } else {
        v.push(info.clone());
    }
    by_host.insert(host.clone(), v.into());
}

/// Removes exactly `info` (by identity) from its host.
fn remove(by_host: &mut imbl::OrdMap<Arc<str>, HostServices>, host: &Arc<str>, info: &Arc<ServiceInfo>) {
    let Some(current) = by_host.get(host) else { return };
    let v: Vec<Arc<ServiceInfo>> = current.iter().filter(|i| !Arc::ptr_eq(i, info)).cloned().collect();
    if v.is_empty() {
        by_host.remove(host);
    } else {
        by_host.insert(host.clone(), v.into());
    }
}

impl Registry {
    /// Builds the registry from the watched objects.
    pub fn build(
        mesh: &MeshSettings,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &[Arc<Pod>],
        entries: &[Arc<ServiceEntry>],
        dns: &HashMap<String, Vec<IpAddr>>,
    ) -> Self {
        Self::build_cached(mesh, services, slices, pods, entries, dns, &mut RegistryCache::default())
    }

    /// [`Registry::build`], reusing what `cache` has from the previous build and leaving this
    /// build's entries in it. Allocates only for the services it translates again.
    pub fn build_cached(
        mesh: &MeshSettings,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &[Arc<Pod>],
        entries: &[Arc<ServiceEntry>],
        dns: &HashMap<String, Vec<IpAddr>>,
        cache: &mut RegistryCache,
    ) -> Self {
        let pods_by_name: PodIndex<'_> = pods.iter().map(|p| (names(&p.metadata), p)).collect();
        let mut slices_by_service: HashMap<(&str, &str), Vec<&Arc<EndpointSlice>>, Fast> = HashMap::default();
        for s in slices {
            if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) {
                let ns = s.metadata.namespace.as_deref().unwrap_or("");
                slices_by_service.entry((ns, svc.as_str())).or_default().push(s);
            }
        }
        // The last registry, patched: its ServiceEntry entries come out (they are re-added
        // below), changed and deleted Services' entries are replaced or removed by identity.
        let mut by_host = cache.by_host.clone();
        for (host, info) in std::mem::take(&mut cache.entry_infos) {
            remove(&mut by_host, &host, &info);
        }
        let mut next = HashMap::with_capacity_and_hasher(services.len(), Fast::default());
        for svc in services {
            let mut own = slices_by_service.remove(&names(&svc.metadata)).unwrap_or_default();
            // Watch order is arbitrary; endpoints come in slice-name order so an unchanged
            // service keeps the same endpoint order (and its proxies the same config).
            own.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            let key = Arc::as_ptr(svc) as usize;
            let unchanged = |b: &Built| {
                b.slices.len() == own.len()
                    && b.slices.iter().zip(&own).all(|(x, y)| Arc::ptr_eq(x, y))
                    && b.pods.iter().all(|((ns, name), found)| {
                        match (pods_by_name.get(&(ns.as_str(), name.as_str())), found) {
                            (Some(now), Some(then)) => Arc::ptr_eq(now, then),
                            (None, None) => true,
                            _ => false,
                        }
                    })
            };
            let built = match cache.by_service.remove(&key) {
                Some(b) if unchanged(&b) => b,
                old => {
                    if let Some(info) = old.as_ref().and_then(|b| Some((&b.host, b.info.as_ref()?))) {
                        remove(&mut by_host, info.0, info.1);
                    }
                    let mut used = Vec::new();
                    let info = from_service(mesh, svc, &own, &pods_by_name, &mut used).map(Arc::new);
                    let host: Arc<str> = Arc::from(info.as_ref().map_or("", |i| i.host.as_str()));
                    if let Some(info) = &info {
                        add(&mut by_host, &host, info, true);
                    }
                    Built { _service: svc.clone(), slices: own.into_iter().cloned().collect(), pods: used, info, host }
                }
            };
            next.insert(key, built);
        }
        // What is left in the old cache: Services deleted, or replaced by a new object.
        for b in std::mem::replace(&mut cache.by_service, next).into_values() {
            if let Some(info) = &b.info {
                remove(&mut by_host, &b.host, info);
            }
        }
        let mut entries: Vec<&Arc<ServiceEntry>> = entries.iter().collect();
        entries.sort_by_key(|e| (e.metadata.creation_timestamp.clone().map(|t| t.0), e.namespace(), e.name_any()));
        for se in entries {
            for info in from_service_entry(se, dns) {
                let (host, info) = (Arc::from(info.host.as_str()), Arc::new(info));
                add(&mut by_host, &host, &info, false);
                cache.entry_infos.push((host, info));
            }
        }
        cache.by_host = by_host.clone();
        Self { by_host }
    }

    /// The service for `host` as seen from `client_ns`.
    pub fn lookup(&self, host: &str, client_ns: &str) -> Option<&Arc<ServiceInfo>> {
        self.by_host.get(host)?.iter().find(|s| s.visible_to(client_ns))
    }

    /// Every service visible from `client_ns` (one per host).
    pub fn visible(&self, client_ns: &str) -> impl Iterator<Item = &Arc<ServiceInfo>> {
        self.by_host.values().filter_map(move |v| v.iter().find(|s| s.visible_to(client_ns)))
    }
}

/// The entry of one Service; `used` gets every pod its endpoints name, found or not.
fn from_service(
    mesh: &MeshSettings,
    svc: &Service,
    slices: &[&Arc<EndpointSlice>],
    pods: &PodIndex<'_>,
    used: &mut Vec<PodRef>,
) -> Option<ServiceInfo> {
    let ns = svc.namespace()?;
    let name = svc.name_any();
    let spec = svc.spec.as_ref()?;
    // ExternalName services are aliases, not backends; headless ones have no VIP but still
    // have endpoints.
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let number = u16::try_from(p.port).ok()?;
            Some(ServicePort {
                number,
                name: p.name.clone().unwrap_or_default(),
                protocol: Protocol::from_port(p.name.as_deref(), p.app_protocol.as_deref()),
                target: match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        u16::try_from(*n).unwrap_or(number)
                    }
                    _ => number,
                },
            })
        })
        .collect();
    let vips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter(|ip| ip.as_str() != "None")
        .filter_map(|ip| ip.parse().ok())
        .collect::<BTreeSet<IpAddr>>()
        .into_iter()
        .collect();
    let export_to = svc
        .annotations()
        .get(EXPORT_TO_ANNOTATION)
        .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    let mut seen = BTreeSet::new();
    for slice in slices {
        let slice_ports: BTreeMap<String, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        for ep in &slice.endpoints {
            // Istio sends traffic to ready endpoints only (terminating ones finish in-flight).
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let pod_key = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| Some((r.namespace.clone().unwrap_or_else(|| ns.clone()), r.name.clone()?)));
            let pod = pod_key.as_ref().and_then(|(ns, name)| pods.get(&(ns.as_str(), name.as_str())).copied());
            if let Some(k) = pod_key {
                used.push((k, pod.cloned()));
            }
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else { continue };
                if !seen.insert(ip) {
                    continue;
                }
                endpoints.push(Endpoint {
                    ip,
                    ports: slice_ports.clone(),
                    labels: pod.map(|p| p.labels().clone()).unwrap_or_default(),
                    service_account: pod.map(|p| {
                        let sa = p.spec.as_ref().and_then(|s| s.service_account_name.clone());
                        (p.namespace().unwrap_or_default(), sa.unwrap_or_else(|| "default".into()))
                    }),
                    mtls_ready: pod.is_some_and(|p| p.labels().get(TLS_MODE_LABEL).is_some_and(|v| v == "istio")),
                });
            }
        }
    }
    Some(ServiceInfo {
        host: format!("{name}.{ns}.svc.{}", mesh.cluster_domain),
        namespace: ns,
        k8s_name: Some(name),
        resolution: Resolution::Kubernetes,
        vips,
        ports,
        export_to,
        endpoints,
    })
}

fn from_service_entry(se: &ServiceEntry, dns: &HashMap<String, Vec<IpAddr>>) -> Vec<ServiceInfo> {
    let ns = se.namespace().unwrap_or_default();
    let spec = &se.spec;
    let resolution = match spec.resolution.as_deref() {
        Some("STATIC") => Resolution::Static,
        Some("DNS" | "DNS_ROUND_ROBIN") => Resolution::Dns,
        _ => Resolution::None,
    };
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .filter_map(|p| {
            let number = u16::try_from(p.number).ok()?;
            Some(ServicePort {
                number,
                name: p.name.clone().unwrap_or_default(),
                protocol: Protocol::from_port(p.protocol.as_deref(), None),
                target: p.target_port.and_then(|t| u16::try_from(t).ok()).unwrap_or(number),
            })
        })
        .collect();
    let vips: Vec<IpAddr> = spec.addresses.iter().filter_map(|a| a.split('/').next()?.parse().ok()).collect();
    let endpoint = |ip: IpAddr, we: Option<&skein_api::istio::networking::WorkloadEntry>| Endpoint {
        ip,
        ports: we
            .map(|w| w.ports.iter().filter_map(|(k, v)| Some((k.clone(), u16::try_from(*v).ok()?))).collect())
            .unwrap_or_default(),
        labels: we.map(|w| w.labels.clone()).unwrap_or_default(),
        service_account: we.and_then(|w| w.service_account.clone()).map(|sa| (ns.clone(), sa)),
        // Entries for mesh-internal hosts (another cluster's gateway) speak mesh mTLS.
        mtls_ready: spec.location.as_deref() == Some("MESH_INTERNAL"),
    };
    spec.hosts
        .iter()
        .map(|host| {
            let mut endpoints = Vec::new();
            match resolution {
                Resolution::Static | Resolution::Dns => {
                    for we in &spec.endpoints {
                        let Some(addr) = we.address.as_deref() else { continue };
                        match addr.parse::<IpAddr>() {
                            Ok(ip) => endpoints.push(endpoint(ip, Some(we))),
                            Err(_) => {
                                for ip in dns.get(addr).into_iter().flatten() {
                                    endpoints.push(endpoint(*ip, Some(we)));
                                }
                            }
                        }
                    }
                    if resolution == Resolution::Dns && spec.endpoints.is_empty() {
                        for ip in dns.get(host.as_str()).into_iter().flatten() {
                            endpoints.push(endpoint(*ip, None));
                        }
                    }
                }
                Resolution::None | Resolution::Kubernetes => {}
            }
            ServiceInfo {
                host: host.to_ascii_lowercase(),
                namespace: ns.clone(),
                k8s_name: None,
                resolution,
                vips: vips.clone(),
                ports: ports.clone(),
                export_to: spec.export_to.clone(),
                endpoints,
            }
        })
        .collect()
}

/// Host names the control plane must resolve for DNS ServiceEntries (endpoint names, or the
/// hosts themselves when no endpoints are listed).
pub fn dns_names(entries: &[Arc<ServiceEntry>]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for se in entries {
        if !matches!(se.spec.resolution.as_deref(), Some("DNS" | "DNS_ROUND_ROBIN")) {
            continue;
        }
        if se.spec.endpoints.is_empty() {
            names.extend(se.spec.hosts.iter().filter(|h| !h.starts_with('*')).cloned());
        }
        for we in &se.spec.endpoints {
            if let Some(a) = we.address.as_deref().filter(|a| a.parse::<IpAddr>().is_err()) {
                names.insert(a.to_string());
            }
        }
    }
    names
}
