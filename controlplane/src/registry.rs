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

use crate::{
    locality::{Locality, POD_LOCALITY_LABEL},
    mesh::MeshSettings,
};

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
    /// Where it runs, when given outright (a ServiceEntry endpoint's `locality`, a Pod's
    /// `istio-locality` label); otherwise its node's (see [`Endpoint::node`]).
    pub locality: Option<Locality>,
    /// The Pod's node, whose topology labels give its locality.
    pub node: Option<String>,
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
    /// The Kubernetes Service's pod selector (empty: none, or a ServiceEntry). Gateways find
    /// the Services in front of them with it, to listen on their target ports.
    pub selector: BTreeMap<String, String>,
    /// Backends.
    pub endpoints: Vec<Endpoint>,
    /// For a `.global` host the operator generated (`<name>.<namespace>.<suffix>`):
    /// `<name>.<namespace>`, the Service of this cluster that is the same service, whose
    /// endpoints come first.
    pub imported: Option<String>,
}

impl ServiceInfo {
    /// Whether a proxy in `client_ns` may see this service.
    pub fn visible_to(&self, client_ns: &str) -> bool {
        exported_to(&self.export_to, &self.namespace, client_ns)
    }

    /// Whether `other` differs from this at most in its endpoints.
    pub fn same_but_endpoints(&self, other: &ServiceInfo) -> bool {
        // Destructured so a new field must be considered here.
        let ServiceInfo {
            host,
            namespace,
            k8s_name,
            resolution,
            vips,
            ports,
            export_to,
            selector,
            endpoints: _,
            imported,
        } = self;
        *host == other.host
            && *namespace == other.namespace
            && *k8s_name == other.k8s_name
            && *resolution == other.resolution
            && *vips == other.vips
            && *ports == other.ports
            && *export_to == other.export_to
            && *selector == other.selector
            && *imported == other.imported
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

/// Istio's short-name resolution (`ResolveShortnameToFQDN`): a name without a dot, written in
/// namespace `default`, means `<name>.default.svc.<domain>`; any name with a dot (`httpbin.org`,
/// `reviews.prod.svc.cluster.local`) and wildcards are taken as written. Istio does not expand
/// `reviews.prod`: doing so would turn every two-label external name into a Kubernetes one.
pub fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.starts_with('*') || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    format!("{host}.{namespace}.svc.{cluster_domain}")
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

/// (namespace, name) of an object.
pub type Key = (String, String);

/// Pods by (namespace, name). A persistent map: the registry cache patches it with the pods
/// the watch reported and every snapshot shares it, so neither copies the whole.
pub type Pods = imbl::OrdMap<Key, Arc<Pod>>;

/// Indexes `pods` by (namespace, name).
pub fn index_pods(pods: &[Arc<Pod>]) -> Pods {
    pods.iter().map(|p| (key_of(&p.metadata), p.clone())).collect()
}

/// A pod a Service's endpoints referred to, and what was found under that name.
type PodRef = (Key, Option<Arc<Pod>>);

/// (namespace, name) of an object.
pub fn key_of(m: &kube::api::ObjectMeta) -> Key {
    (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
}

/// A fast hasher for the cache's indexes (their keys are names from the apiserver's own
/// objects, not attacker-chosen lookups).
type Fast = foldhash::fast::RandomState;

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
fn owner_of(slice: &EndpointSlice) -> Option<Key> {
    let svc = slice.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
    Some((slice.metadata.namespace.clone().unwrap_or_default(), svc.clone()))
}

/// Objects the watches reported since the last build, as they are now (`None`: deleted).
/// An object reported twice, or reported but unchanged, costs a comparison.
#[derive(Debug, Default)]
pub struct Changed {
    /// Services.
    pub services: Vec<(Key, Option<Arc<Service>>)>,
    /// EndpointSlices.
    pub slices: Vec<(Key, Option<Arc<EndpointSlice>>)>,
    /// Pods.
    pub pods: Vec<(Key, Option<Arc<Pod>>)>,
}

/// What a Service's registry entry was built from.
struct Built {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    pods: Vec<PodRef>,
    info: Option<Arc<ServiceInfo>>,
    /// `info.host`, shared by every registry this entry goes into.
    host: Arc<str>,
}

/// The service registry kept up to date from watch events: a change costs the Services it
/// touches (the Service itself, the Service an EndpointSlice belongs to, the Services whose
/// endpoints name a Pod), never a pass over all of them. The watch keeps unchanged objects as
/// the same `Arc`, so "changed" is a pointer comparison.
#[derive(Default)]
pub struct RegistryCache {
    by_service: HashMap<Key, Built, Fast>,
    /// EndpointSlices by the Service they belong to, by slice name (endpoints come in
    /// slice-name order, so an unchanged service keeps the same endpoint order).
    slices: HashMap<Key, BTreeMap<String, Arc<EndpointSlice>>, Fast>,
    /// The Service each EndpointSlice was filed under (a slice's label may change).
    slice_owner: HashMap<Key, Key, Fast>,
    pods: Pods,
    /// Services whose endpoints name each pod.
    pod_users: HashMap<Key, BTreeSet<Key>, Fast>,
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

fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl RegistryCache {
    /// Takes in what the watches reported and re-translates the Services it touches.
    pub fn update(&mut self, mesh: &MeshSettings, changed: Changed) {
        let mut dirty: BTreeSet<Key> = BTreeSet::new();
        for (key, pod) in changed.pods {
            let old = match &pod {
                Some(p) => self.pods.insert(key.clone(), p.clone()),
                None => self.pods.remove(&key),
            };
            if !same(old.as_ref(), pod.as_ref()) {
                dirty.extend(self.pod_users.get(&key).into_iter().flatten().cloned());
            }
        }
        for (key, slice) in changed.slices {
            let owner = slice.as_deref().and_then(owner_of);
            let filed = self.slice_owner.get(&key).and_then(|o| Some((o, self.slices.get(o)?.get(&key.1)?)));
            if let (Some((was, old)), Some(new)) = (filed, &slice)
                && Some(was) == owner.as_ref()
                && Arc::ptr_eq(old, new)
            {
                continue;
            }
            if let Some(was) = self.slice_owner.remove(&key) {
                if let Some(m) = self.slices.get_mut(&was) {
                    m.remove(&key.1);
                    if m.is_empty() {
                        self.slices.remove(&was);
                    }
                }
                dirty.insert(was);
            }
            if let (Some(slice), Some(owner)) = (slice, owner) {
                self.slices.entry(owner.clone()).or_default().insert(key.1.clone(), slice);
                self.slice_owner.insert(key, owner.clone());
                dirty.insert(owner);
            }
        }
        let mut services: HashMap<Key, Option<Arc<Service>>, Fast> = changed.services.into_iter().collect();
        dirty.extend(services.keys().cloned());
        for key in dirty {
            let svc = match services.remove(&key) {
                Some(reported) => reported,
                None => self.by_service.get(&key).map(|b| b.service.clone()),
            };
            self.rebuild(mesh, key, svc);
        }
    }

    /// Replaces everything with these lists (the first build, or after a watch listed again):
    /// what is not listed is deleted; listed objects that are the same `Arc` as before cost
    /// a comparison.
    pub fn resync(
        &mut self,
        mesh: &MeshSettings,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &[Arc<Pod>],
    ) {
        fn listing<K: kube::Resource>(objs: &[Arc<K>], known: impl Iterator<Item = Key>) -> Vec<(Key, Option<Arc<K>>)> {
            let listed: HashMap<Key, Arc<K>, Fast> = objs.iter().map(|o| (key_of(o.meta()), o.clone())).collect();
            let gone: Vec<(Key, Option<Arc<K>>)> =
                known.filter(|k| !listed.contains_key(k)).map(|k| (k, None)).collect();
            listed.into_iter().map(|(k, o)| (k, Some(o))).chain(gone).collect()
        }
        let changed = Changed {
            services: listing(services, self.by_service.keys().cloned()),
            slices: listing(slices, self.slice_owner.keys().cloned()),
            pods: listing(pods, self.pods.keys().cloned()),
        };
        self.update(mesh, changed);
    }

    /// The registry: the Services' entries plus those of `entries` (translated every time;
    /// they are few and their DNS answers change).
    pub fn registry(&mut self, entries: &[Arc<ServiceEntry>], dns: &HashMap<String, Vec<IpAddr>>) -> Registry {
        for (host, info) in std::mem::take(&mut self.entry_infos) {
            remove(&mut self.by_host, &host, &info);
        }
        let mut entries: Vec<&Arc<ServiceEntry>> = entries.iter().collect();
        entries.sort_by_key(|e| (e.metadata.creation_timestamp.clone().map(|t| t.0), e.namespace(), e.name_any()));
        for se in entries {
            for info in from_service_entry(se, dns) {
                let (host, info) = (Arc::from(info.host.as_str()), Arc::new(info));
                add(&mut self.by_host, &host, &info, false);
                self.entry_infos.push((host, info));
            }
        }
        Registry { by_host: self.by_host.clone() }
    }

    /// The pods, as of the last update.
    pub fn pods(&self) -> Pods {
        self.pods.clone()
    }

    /// Brings the entry of Service `key` (now `svc`; `None`: gone) up to date.
    fn rebuild(&mut self, mesh: &MeshSettings, key: Key, svc: Option<Arc<Service>>) {
        let own: Vec<Arc<EndpointSlice>> =
            self.slices.get(&key).map(|m| m.values().cloned().collect()).unwrap_or_default();
        let old = self.by_service.remove(&key);
        if let (Some(b), Some(svc)) = (&old, &svc) {
            let unchanged = Arc::ptr_eq(&b.service, svc)
                && b.slices.len() == own.len()
                && b.slices.iter().zip(&own).all(|(x, y)| Arc::ptr_eq(x, y))
                && b.pods.iter().all(|(k, found)| same(self.pods.get(k), found.as_ref()));
            if unchanged {
                self.by_service.insert(key, old.expect("matched above"));
                return;
            }
        }
        let (old_info, old_host) = match old {
            Some(b) => {
                self.unuse(&key, &b.pods);
                (b.info, b.host)
            }
            None => (None, Arc::from("")),
        };
        let Some(svc) = svc else {
            if let Some(info) = &old_info {
                remove(&mut self.by_host, &old_host, info);
            }
            return;
        };
        let mut used = Vec::new();
        let pods = &self.pods;
        let fresh = from_service(mesh, &svc, &own, |k| pods.get(k).cloned(), &mut used);
        let (info, host) = match (old_info, fresh) {
            // Same content (say, a pod's status changed but not its IP or labels): the same
            // entry, so nothing downstream sees a change.
            (Some(old), Some(fresh)) if *old == fresh => (Some(old), old_host),
            (old, fresh) => {
                if let Some(old) = &old {
                    remove(&mut self.by_host, &old_host, old);
                }
                let info = fresh.map(Arc::new);
                let host: Arc<str> = Arc::from(info.as_ref().map_or("", |i| i.host.as_str()));
                if let Some(info) = &info {
                    add(&mut self.by_host, &host, info, true);
                }
                (info, host)
            }
        };
        for (pod, _) in &used {
            self.pod_users.entry(pod.clone()).or_default().insert(key.clone());
        }
        self.by_service.insert(key, Built { service: svc, slices: own, pods: used, info, host });
    }

    /// Forgets that Service `key` uses `pods`.
    fn unuse(&mut self, key: &Key, pods: &[PodRef]) {
        for (pod, _) in pods {
            if let Some(users) = self.pod_users.get_mut(pod) {
                users.remove(key);
                if users.is_empty() {
                    self.pod_users.remove(pod);
                }
            }
        }
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

    /// [`Registry::build`] through `cache`: a resync with these lists, so only what differs
    /// from the cache's last state is translated again.
    pub fn build_cached(
        mesh: &MeshSettings,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &[Arc<Pod>],
        entries: &[Arc<ServiceEntry>],
        dns: &HashMap<String, Vec<IpAddr>>,
        cache: &mut RegistryCache,
    ) -> Self {
        cache.resync(mesh, services, slices, pods);
        cache.registry(entries, dns)
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
    slices: &[Arc<EndpointSlice>],
    pod_named: impl Fn(&Key) -> Option<Arc<Pod>>,
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
            let pod = pod_key.as_ref().and_then(&pod_named);
            let pod = pod.as_ref();
            let missing = pod_key.is_some() && pod.is_none();
            if let Some(k) = pod_key {
                used.push((k, pod.cloned()));
            }
            // Like istiod, an endpoint whose Pod is not (or no longer) known is left out: it
            // would carry no labels, service account or sidecar mark, so it would fall out of
            // every subset and fail mTLS identity checks. When a Pod is deleted its watch event
            // usually arrives before the EndpointSlice update; the reverse index above brings
            // the endpoint back when a late Pod arrives.
            if missing {
                continue;
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
                    locality: pod.and_then(|p| p.labels().get(POD_LOCALITY_LABEL)).map(|l| Locality::from_pod_label(l)),
                    node: pod.and_then(|p| p.spec.as_ref()?.node_name.clone()),
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
        selector: spec.selector.clone().unwrap_or_default(),
        endpoints,
        imported: None,
    })
}

/// `reviews.default` of `reviews.default.global`: a host of exactly three labels.
fn imported_base(host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let (base, _suffix) = host.rsplit_once('.')?;
    let (name, ns) = base.split_once('.')?;
    (!name.is_empty() && !ns.is_empty() && !ns.contains('.')).then(|| base.to_string())
}

fn from_service_entry(se: &ServiceEntry, dns: &HashMap<String, Vec<IpAddr>>) -> Vec<ServiceInfo> {
    let ns = se.namespace().unwrap_or_default();
    let generated = se.labels().contains_key(skein_api::names::FEDERATION_LABEL);
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
        locality: we.and_then(|w| w.locality.as_deref()).filter(|l| !l.is_empty()).map(Locality::parse),
        node: None,
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
                selector: BTreeMap::new(),
                endpoints,
                imported: generated.then(|| imported_base(host)).flatten(),
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
