//! One consistent view of everything the control plane translates: the accepted Istio
//! resources, the service registry and the pods, indexed the way translation looks them up.
//! A new snapshot is built after every (debounced) change. It holds inputs and indexes only:
//! what is computed from it (and cached) lives with the renderer.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use skein_api::istio::{
    networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService},
    security::{AuthorizationPolicy, PeerAuthentication},
};

use crate::{
    locality::Locality,
    mesh::MeshSettings,
    registry::{self, Registry},
};

/// The accepted Istio resources (invalid ones already replaced by their last good version or
/// left out).
#[derive(Debug, Default, Clone)]
pub struct IstioResources {
    /// VirtualServices.
    pub virtual_services: Vec<Arc<VirtualService>>,
    /// DestinationRules.
    pub destination_rules: Vec<Arc<DestinationRule>>,
    /// ServiceEntries.
    pub service_entries: Vec<Arc<ServiceEntry>>,
    /// Gateways.
    pub gateways: Vec<Arc<Gateway>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    /// Sidecars.
    pub sidecars: Vec<Arc<Sidecar>>,
}

/// Kind, namespace, name, uid, generation.
pub type Fingerprint = (&'static str, String, String, String, String);

impl IstioResources {
    /// What identifies the accepted resources' content: kind, namespace, name, uid and
    /// generation of each (status updates do not change it), sorted. An object without a
    /// generation (never from an apiserver) is identified by its address.
    pub fn fingerprint(&self) -> Vec<Fingerprint> {
        fn of<'a, K: kube::Resource>(kind: &'static str, v: &'a [Arc<K>]) -> impl Iterator<Item = Fingerprint> + 'a {
            v.iter().map(move |o| {
                let m = o.meta();
                let version = match m.generation {
                    Some(g) => g.to_string(),
                    None => format!("{:p}", Arc::as_ptr(o)),
                };
                let name = m.name.clone().unwrap_or_default();
                (kind, m.namespace.clone().unwrap_or_default(), name, m.uid.clone().unwrap_or_default(), version)
            })
        }
        let mut all: Vec<_> = of("VirtualService", &self.virtual_services)
            .chain(of("DestinationRule", &self.destination_rules))
            .chain(of("ServiceEntry", &self.service_entries))
            .chain(of("Gateway", &self.gateways))
            .chain(of("PeerAuthentication", &self.peer_authentications))
            .chain(of("AuthorizationPolicy", &self.authorization_policies))
            .chain(of("Sidecar", &self.sidecars))
            .collect();
        all.sort();
        all
    }
}

/// Everything a translation reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Mesh settings.
    pub mesh: MeshSettings,
    /// Services by host.
    pub registry: Registry,
    /// Accepted Istio resources.
    pub istio: IstioResources,
    /// Pods by (namespace, name).
    pub pods: registry::Pods,
    /// VirtualServices bound to sidecars (`gateways` empty or naming `mesh`), by resolved
    /// host, oldest first.
    pub mesh_virtual_services: HashMap<String, Vec<Arc<VirtualService>>>,
    /// DestinationRules by resolved host, oldest first.
    pub destination_rules: HashMap<String, Vec<Arc<DestinationRule>>>,
    /// Increases with every snapshot built.
    pub generation: u64,
    /// When the first change this snapshot includes was observed (convergence time starts).
    pub changed_at: Option<std::time::Instant>,
    /// Label keys any sidecar-bound VirtualService matches `sourceLabels` on, or any
    /// `failoverPriority` compares.
    pub source_label_keys: BTreeSet<String>,
    /// TLS Secrets gateways may name in `credentialName`, by (namespace, name).
    pub tls_secrets: BTreeMap<(String, String), Arc<TlsSecret>>,
    /// Each node's locality (its topology labels), by node name.
    pub node_localities: Arc<BTreeMap<String, Locality>>,
    /// The wildcard hosts (`*.example.com`) of `mesh_virtual_services` and of
    /// `destination_rules`, longest first: looked up after the exact host, so kept apart (a
    /// mesh has few).
    wildcard_vs_hosts: Vec<String>,
    wildcard_dr_hosts: Vec<String>,
    /// Whether any DestinationRule has outlier detection, without which locality never
    /// orders endpoints: until one does, clients in every zone share their outbound config.
    pub locality_failover: bool,
}

/// A `kubernetes.io/tls` Secret: what a gateway serves with `credentialName`.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSecret {
    /// `tls.crt`.
    pub cert_chain: String,
    /// `tls.key`.
    pub private_key: skein_api::proxy::SecretPem,
    /// `ca.crt`, for mode MUTUAL.
    pub ca_certificates: Option<String>,
}

impl std::fmt::Debug for TlsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSecret").finish_non_exhaustive()
    }
}

impl TlsSecret {
    /// `((namespace, name), secret)` of a Secret carrying `tls.crt` and `tls.key` as UTF-8 PEM.
    pub fn from_secret(s: &k8s_openapi::api::core::v1::Secret) -> Option<((String, String), Arc<Self>)> {
        let data = s.data.as_ref()?;
        let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
        let secret = TlsSecret {
            cert_chain: text("tls.crt")?,
            private_key: skein_api::proxy::SecretPem(text("tls.key")?),
            ca_certificates: text("ca.crt"),
        };
        Some(((s.namespace()?, s.name_any()), Arc::new(secret)))
    }
}

/// Creation order, then namespace and name: Istio's tie-break for conflicting resources.
pub fn age_key<K: kube::Resource>(o: &K) -> (Option<jiff::Timestamp>, String, String) {
    let m = o.meta();
    (
        m.creation_timestamp.as_ref().map(|t| t.0),
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// A DestinationRule's traffic policies: the top level's and each subset's.
fn traffic_policies(
    spec: &skein_api::istio::networking::DestinationRuleSpec,
) -> impl Iterator<Item = &skein_api::istio::networking::TrafficPolicy> {
    spec.traffic_policy.iter().chain(spec.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()))
}

/// Every `localityLbSetting` of a DestinationRule (top level, port level, subsets).
fn locality_settings(
    spec: &skein_api::istio::networking::DestinationRuleSpec,
) -> impl Iterator<Item = &skein_api::istio::networking::LocalityLbSetting> {
    traffic_policies(spec).flat_map(|p| {
        p.load_balancer
            .iter()
            .chain(p.port_level_settings.iter().filter_map(|pl| pl.load_balancer.as_ref()))
            .filter_map(|lb| lb.locality_lb_setting.as_ref())
    })
}

/// Whether a VirtualService applies to sidecars.
pub fn binds_to_mesh(vs: &VirtualService) -> bool {
    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
}

impl Snapshot {
    /// Indexes the inputs.
    pub fn new(mesh: MeshSettings, registry: Registry, istio: IstioResources, pods: registry::Pods) -> Self {
        let domain = mesh.cluster_domain.clone();
        let mut mesh_virtual_services: HashMap<String, Vec<Arc<VirtualService>>> = HashMap::new();
        for vs in &istio.virtual_services {
            if !binds_to_mesh(vs) {
                continue;
            }
            let ns = vs.namespace().unwrap_or_default();
            for h in &vs.spec.hosts {
                mesh_virtual_services.entry(registry::resolve_host(h, &ns, &domain)).or_default().push(vs.clone());
            }
        }
        for v in mesh_virtual_services.values_mut() {
            v.sort_by_key(|vs| age_key(vs.as_ref()));
            v.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        let mut destination_rules: HashMap<String, Vec<Arc<DestinationRule>>> = HashMap::new();
        for dr in &istio.destination_rules {
            let ns = dr.namespace().unwrap_or_default();
            destination_rules.entry(registry::resolve_host(&dr.spec.host, &ns, &domain)).or_default().push(dr.clone());
        }
        for v in destination_rules.values_mut() {
            v.sort_by_key(|dr| age_key(dr.as_ref()));
        }
        let mut source_label_keys: BTreeSet<String> = mesh_virtual_services
            .values()
            .flatten()
            .flat_map(|vs| {
                vs.spec.http.iter().flat_map(|r| r.matches.iter().flat_map(|m| m.source_labels.keys().cloned()))
            })
            .collect();
        let (wildcard_vs_hosts, wildcard_dr_hosts) =
            (wildcard_keys(mesh_virtual_services.keys()), wildcard_keys(destination_rules.keys()));
        let locality_failover = istio.destination_rules.iter().flat_map(|dr| traffic_policies(&dr.spec)).any(|p| {
            p.outlier_detection.is_some() || p.port_level_settings.iter().any(|pl| pl.outlier_detection.is_some())
        });
        // `failoverPriority` compares the client's labels with the endpoints'.
        let settings = istio
            .destination_rules
            .iter()
            .flat_map(|dr| locality_settings(&dr.spec))
            .chain(std::iter::once(&mesh.locality_lb));
        for s in settings {
            source_label_keys.extend(s.failover_priority.iter().map(|l| l.split('=').next().unwrap_or(l).to_string()));
        }
        Self {
            mesh,
            registry,
            istio,
            pods,
            mesh_virtual_services,
            destination_rules,
            generation: 0,
            changed_at: None,
            source_label_keys,
            tls_secrets: BTreeMap::new(),
            node_localities: Arc::default(),
            locality_failover,
            wildcard_vs_hosts,
            wildcard_dr_hosts,
        }
    }

    /// Where `pod` runs: its `istio-locality` label, else its node's locality, else unknown
    /// (an endpoint's is the same rule, see [`Snapshot::endpoint_locality`]).
    pub fn pod_locality(&self, pod: &Pod) -> Locality {
        let label = pod.labels().get(crate::locality::POD_LOCALITY_LABEL).map(|l| Locality::from_pod_label(l));
        let node = || self.node_localities.get(pod.spec.as_ref()?.node_name.as_ref()?).cloned();
        label.or_else(node).unwrap_or_default()
    }

    /// Where `ep` runs: its own locality, else its node's, else unknown.
    pub fn endpoint_locality(&self, ep: &registry::Endpoint) -> Locality {
        ep.locality
            .clone()
            .or_else(|| ep.node.as_ref().and_then(|n| self.node_localities.get(n).cloned()))
            .unwrap_or_default()
    }

    /// The hosts whose endpoints changed since `prev`, when nothing else did (the common
    /// change: a pod starts, stops or moves); `None` when anything else changed.
    pub fn endpoint_only_changes(&self, prev: &Snapshot) -> Option<BTreeSet<String>> {
        if self.mesh != prev.mesh
            || self.istio.fingerprint() != prev.istio.fingerprint()
            || self.tls_secrets != prev.tls_secrets
            || self.node_localities != prev.node_localities
        {
            return None;
        }
        // The registries share every unchanged entry: the diff visits only what changed.
        let mut changed = BTreeSet::new();
        for item in prev.registry.by_host.diff(&self.registry.by_host) {
            let imbl::ordmap::DiffItem::Update { old: (host, old), new: (_, new) } = item else {
                return None; // a host added or removed
            };
            if old.len() != new.len() {
                return None;
            }
            for (x, y) in new.iter().zip(old.iter()) {
                if Arc::ptr_eq(x, y) || x == y {
                    continue;
                }
                if !x.same_but_endpoints(y) {
                    return None;
                }
                changed.insert(host.to_string());
            }
        }
        // An imported `.global` host also holds its local twin's endpoints (nearest first).
        if changed.is_empty() {
            return Some(changed);
        }
        let twins: Vec<String> = self
            .registry
            .by_host
            .values()
            .flat_map(|v| v.iter())
            .filter_map(|s| Some((s, s.imported.as_ref()?)))
            .filter(|(_, base)| changed.contains(&format!("{base}.svc.{}", self.mesh.cluster_domain)))
            .map(|(s, _)| s.host.clone())
            .collect();
        changed.extend(twins);
        Some(changed)
    }

    /// The VirtualService routing `host` for a sidecar in `client_ns`: one in the client's
    /// namespace first, else the oldest visible one (Istio uses one per host).
    pub fn virtual_service_for(&self, host: &str, client_ns: &str) -> Option<&Arc<VirtualService>> {
        let visible = |vs: &&Arc<VirtualService>| {
            registry::exported_to(&vs.spec.export_to, &vs.namespace().unwrap_or_default(), client_ns)
        };
        // The exact host, else the most specific wildcard host (`*.example.com`) that covers it.
        let candidates = std::iter::once(host).chain(wildcards_covering(&self.wildcard_vs_hosts, host));
        candidates.filter_map(|h| self.mesh_virtual_services.get(h)).find_map(|all| {
            all.iter()
                .filter(visible)
                .find(|vs| vs.namespace().as_deref() == Some(client_ns))
                .or_else(|| all.iter().find(visible))
        })
    }

    /// The DestinationRule for `host` as Istio looks it up: the client's namespace, then the
    /// service's namespace, then the root namespace; in each, the rule for the exact host, else
    /// the one whose wildcard host (`*.global`, `*.example.com`, `*`) covers it most
    /// specifically.
    pub fn destination_rule_for(&self, host: &str, client_ns: &str, service_ns: &str) -> Option<&Arc<DestinationRule>> {
        let hosts: Vec<&str> = std::iter::once(host).chain(wildcards_covering(&self.wildcard_dr_hosts, host)).collect();
        let in_ns = |ns: &str| {
            hosts.iter().filter_map(|h| self.destination_rules.get(*h)).find_map(|all| {
                all.iter().find(|dr| {
                    let dr_ns = dr.namespace().unwrap_or_default();
                    dr_ns == ns && registry::exported_to(&dr.spec.export_to, &dr_ns, client_ns)
                })
            })
        };
        in_ns(client_ns).or_else(|| in_ns(service_ns)).or_else(|| in_ns(&self.mesh.root_namespace))
    }

    /// The Sidecar of a sidecar proxy in `namespace` with `labels`, as Istio picks it: one of
    /// the namespace whose `workloadSelector` selects the workload, else the namespace's one
    /// without a selector, else the root namespace's one without a selector; the oldest where
    /// several qualify (acceptance refuses a second selector-less one in a namespace).
    pub fn sidecar_for(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<&Arc<Sidecar>> {
        fn selector(sc: &Sidecar) -> Option<&BTreeMap<String, String>> {
            sc.spec.workload_selector.as_ref().map(|s| &s.labels).filter(|l| !l.is_empty())
        }
        let oldest = |ns: &str, selected: &dyn Fn(&Sidecar) -> bool| {
            self.istio
                .sidecars
                .iter()
                .filter(|sc| sc.namespace().as_deref() == Some(ns) && selected(sc))
                .min_by_key(|sc| age_key(sc.as_ref()))
        };
        oldest(namespace, &|sc| selector(sc).is_some_and(|s| selects(s, labels)))
            .or_else(|| oldest(namespace, &|sc| selector(sc).is_none()))
            .or_else(|| oldest(&self.mesh.root_namespace, &|sc| selector(sc).is_none()))
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Arc<Pod>> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }
}

/// The wildcard keys (`*.example.com`, `*`), longest first.
fn wildcard_keys<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut w: Vec<String> = keys.filter(|k| k.starts_with('*')).cloned().collect();
    w.sort_by_key(|k| std::cmp::Reverse(k.len()));
    w
}

/// Those of `wildcards` (longest first) that cover `host`. A wildcard never covers the bare
/// domain (`*.example.com` is not `example.com`), as in Istio.
fn wildcards_covering<'a>(wildcards: &'a [String], host: &'a str) -> impl Iterator<Item = &'a str> {
    wildcards.iter().map(String::as_str).filter(move |k| wildcard_covers(k, host))
}

/// Whether wildcard host `pattern` (`*.example.com`, `*`) covers `host` (not itself, nor the
/// bare domain: `*.example.com` is not `example.com`), as Istio matches hosts.
pub fn wildcard_covers(pattern: &str, host: &str) -> bool {
    pattern != host
        && (pattern == "*"
            || pattern.strip_prefix('*').is_some_and(|suffix| suffix.starts_with('.') && host.ends_with(suffix)))
}

/// Whether `labels` carry every `selector` pair (an empty selector matches everything).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
