//! The apiserver side: kube-runtime reflectors for the Istio resources and the service
//! registry, a debounced builder turning their state into [`Snapshot`]s, and the writer of
//! validation verdicts (status condition `Accepted` and a Warning Event on rejection).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::{
    core::v1::{Node, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use skein_api::istio::{
    IstioStatus,
    networking::{DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService},
    security::{AuthorizationPolicy, PeerAuthentication},
};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::{
    accept::{self, Current, LastGood, Verdict},
    ingress,
    locality::Locality,
    mesh::MeshSettings,
    metrics::{KindLabels, Metrics},
    registry::{self, Changed, Key},
    render::Configs,
    snapshot::{Snapshot, TlsSecret},
};

/// Quiet time after a change before a snapshot is built while changes keep coming: a burst
/// (a `kubectl apply` of many objects, a rollout) becomes one push.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Quiet time for the first change after a calm period: a lone endpoint change is pushed
/// without waiting the full debounce.
pub const DEBOUNCE_CALM: Duration = Duration::from_millis(1);
/// How long without a snapshot makes the system calm: at most one snapshot per this long is
/// built on the short quiet time, so a storm of changes still costs one build per 100 ms.
const CALM_AFTER: Duration = Duration::from_millis(100);
/// A stream of changes never delays a snapshot longer than this.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
/// How long a DNS answer for a ServiceEntry host is reused.
const DNS_TTL: Duration = Duration::from_secs(30);

/// "Something changed": the time of the first change not yet in a snapshot, and which
/// registry objects changed (the registry re-translates only the Services they touch).
#[derive(Default)]
pub struct Changes {
    notify: Notify,
    pending: Mutex<(Option<Instant>, Touched)>,
}

/// Registry objects the watches reported since the last snapshot, by (namespace, name).
#[derive(Debug, Default)]
pub struct Touched {
    /// A watch (re)listed: its store was replaced, so everything is compared.
    pub all: bool,
    /// Services.
    pub services: BTreeSet<Key>,
    /// EndpointSlices.
    pub slices: BTreeSet<Key>,
    /// Pods.
    pub pods: BTreeSet<Key>,
}

/// Which set of [`Touched`] a watched kind's events go to.
type TouchedSet = fn(&mut Touched) -> &mut BTreeSet<Key>;

impl Changes {
    /// Records a change.
    pub fn mark(&self) {
        self.touch(|_| {});
    }

    /// Records a change to registry objects.
    fn touch(&self, f: impl FnOnce(&mut Touched)) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.0.get_or_insert_with(Instant::now);
        f(&mut pending.1);
        drop(pending);
        self.notify.notify_one();
    }

    fn take(&self) -> (Option<Instant>, Touched) {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Read access to the Istio resources' status, for compare-before-write.
pub trait HasIstioStatus {
    /// The object's status.
    fn istio_status(&self) -> Option<&IstioStatus>;
}

macro_rules! has_status {
    ($($t:ty),*) => {$(
        impl HasIstioStatus for $t {
            fn istio_status(&self) -> Option<&IstioStatus> {
                self.status.as_ref()
            }
        }
    )*};
}
has_status!(
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Gateway,
    PeerAuthentication,
    AuthorizationPolicy,
    Sidecar,
    EnvoyFilter
);

/// The reflector stores.
#[derive(Clone)]
pub struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    virtual_services: Store<VirtualService>,
    destination_rules: Store<DestinationRule>,
    service_entries: Store<ServiceEntry>,
    gateways: Store<Gateway>,
    peer_authentications: Store<PeerAuthentication>,
    authorization_policies: Store<AuthorizationPolicy>,
    sidecars: Store<Sidecar>,
    /// `kubernetes.io/tls` Secrets in the control plane's namespace (gateway `credentialName`).
    tls_secrets: Store<Secret>,
    /// Kubernetes Ingresses (those of Istio's class are served by the ingress gateway).
    ingresses: Store<Ingress>,
    ingress_classes: Store<IngressClass>,
    /// EnvoyFilters: never applied, each marked `Accepted=False` (`Unsupported`).
    envoy_filters: Store<EnvoyFilter>,
    /// Nodes, metadata only: their topology labels are the localities of their pods.
    nodes: Store<PartialObjectMeta<Node>>,
    /// Each node's locality, kept up to date by the Node watch.
    node_localities: Localities,
}

/// Each node's locality by node name, shared with the Node watch, which replaces it on change.
type Localities = Arc<Mutex<Arc<BTreeMap<String, Locality>>>>;

/// Watches Nodes' metadata and keeps `localities`; a snapshot starts only when a node's
/// locality changes or a node goes. Every status update of a Node also changes its metadata
/// (its resourceVersion), so a large cluster sends Node events all the time; they change
/// nothing here and must not rebuild the mesh's config.
fn watch_localities(client: &Client, changes: Arc<Changes>, localities: Localities) -> Store<PartialObjectMeta<Node>> {
    let (reader, writer) = reflector::store();
    let api = Api::<PartialObjectMeta<Node>>::all(client.clone());
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(strip_meta).reflect(writer);
    let store = reader.clone();
    let of = |n: &PartialObjectMeta<Node>| {
        Locality::from_node_labels(n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
    };
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let changed = {
                let mut map = localities.lock().unwrap_or_else(|e| e.into_inner());
                match ev {
                    Ok(watcher::Event::Apply(n)) => {
                        let loc = of(&n);
                        let changed = map.get(&n.name_any()) != Some(&loc);
                        if changed {
                            Arc::make_mut(&mut map).insert(n.name_any(), loc);
                        }
                        changed
                    }
                    Ok(watcher::Event::Delete(n)) => Arc::make_mut(&mut map).remove(&n.name_any()).is_some(),
                    // A (re)list is complete: the store holds every node, gone ones dropped.
                    Ok(watcher::Event::InitDone) => {
                        let fresh: BTreeMap<String, Locality> =
                            store.state().iter().map(|n| (n.name_any(), of(n))).collect();
                        let changed = **map != fresh;
                        *map = Arc::new(fresh);
                        changed
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
                    Err(e) => {
                        warn!(kind = "Node", error = %e, "watch failed; retrying with backoff");
                        false
                    }
                }
            };
            if changed {
                changes.touch(|_| {});
            }
        }
    });
    reader
}

fn reflect<K>(api: Api<K>, changes: Arc<Changes>, strip: fn(&mut K), touched: Option<TouchedSet>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    reflect_with(api, watcher::Config::default(), changes, strip, touched)
}

/// Watches `api` into a store, recording every event in `changes` (object keys in the
/// `touched` set, when given).
fn reflect_with<K>(
    api: Api<K>,
    config: watcher::Config,
    changes: Arc<Changes>,
    strip: fn(&mut K),
    touched: Option<TouchedSet>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).to_string();
    let stream = watcher(api, config).default_backoff().modify(strip).reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => changes.touch(|t| {
                    let Some(set) = touched else { return };
                    match ev {
                        watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                            set(t).insert(registry::key_of(o.meta()));
                        }
                        watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => t.all = true,
                    }
                }),
                Err(e) => warn!(kind, error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    reader
}

/// Managed fields are large and never read; dropping them halves the memory of a big registry.
fn strip_meta<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
    if let Some(a) = o.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Of a TLS Secret only what a gateway serves is kept.
fn strip_secret(s: &mut Secret) {
    strip_meta(s);
    if let Some(data) = s.data.as_mut() {
        data.retain(|k, _| matches!(k.as_str(), "tls.crt" | "tls.key" | "ca.crt"));
    }
    s.string_data = None;
}

/// Pods are the largest objects watched; translation needs their labels, ServiceAccount and IP.
fn strip_pod(p: &mut Pod) {
    strip_meta(p);
    if let Some(spec) = p.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::PodSpec {
            service_account_name: spec.service_account_name.take(),
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
    if let Some(status) = p.status.as_mut() {
        *status = k8s_openapi::api::core::v1::PodStatus {
            pod_ip: status.pod_ip.take(),
            pod_ips: status.pod_ips.take(),
            phase: status.phase.take(),
            ..Default::default()
        };
    }
}

impl Stores {
    /// Starts watching everything, cluster-wide; TLS Secrets only in `namespace` (the control
    /// plane reads Secrets nowhere else; gateways run there).
    pub fn start(client: &Client, changes: &Arc<Changes>, namespace: &str) -> Self {
        let c = || changes.clone();
        let localities = Localities::default();
        let tls_only = watcher::Config::default().fields("type=kubernetes.io/tls");
        Self {
            tls_secrets: reflect_with(Api::namespaced(client.clone(), namespace), tls_only, c(), strip_secret, None),
            services: reflect(Api::all(client.clone()), c(), strip_meta, Some(|t| &mut t.services)),
            slices: reflect(Api::all(client.clone()), c(), strip_meta, Some(|t| &mut t.slices)),
            pods: reflect(Api::all(client.clone()), c(), strip_pod, Some(|t| &mut t.pods)),
            virtual_services: reflect(Api::all(client.clone()), c(), strip_meta, None),
            destination_rules: reflect(Api::all(client.clone()), c(), strip_meta, None),
            service_entries: reflect(Api::all(client.clone()), c(), strip_meta, None),
            gateways: reflect(Api::all(client.clone()), c(), strip_meta, None),
            peer_authentications: reflect(Api::all(client.clone()), c(), strip_meta, None),
            authorization_policies: reflect(Api::all(client.clone()), c(), strip_meta, None),
            sidecars: reflect(Api::all(client.clone()), c(), strip_meta, None),
            ingresses: reflect(Api::all(client.clone()), c(), strip_meta, None),
            ingress_classes: reflect(Api::all(client.clone()), c(), strip_meta, None),
            envoy_filters: reflect(Api::all(client.clone()), c(), strip_meta, None),
            // Metadata only: labels are all that is read; a full Node carries its images and
            // status, many times larger.
            nodes: watch_localities(client, c(), localities.clone()),
            node_localities: localities,
        }
    }

    /// Waits until every store has its initial list, saying which ones are late.
    pub async fn ready(&self) {
        let waits: Vec<(&str, _)> = vec![
            ("services", self.services.wait_until_ready().boxed()),
            ("endpointslices", self.slices.wait_until_ready().boxed()),
            ("pods", self.pods.wait_until_ready().boxed()),
            ("virtualservices", self.virtual_services.wait_until_ready().boxed()),
            ("destinationrules", self.destination_rules.wait_until_ready().boxed()),
            ("serviceentries", self.service_entries.wait_until_ready().boxed()),
            ("gateways", self.gateways.wait_until_ready().boxed()),
            ("peerauthentications", self.peer_authentications.wait_until_ready().boxed()),
            ("authorizationpolicies", self.authorization_policies.wait_until_ready().boxed()),
            ("sidecars", self.sidecars.wait_until_ready().boxed()),
            ("ingresses", self.ingresses.wait_until_ready().boxed()),
            ("ingressclasses", self.ingress_classes.wait_until_ready().boxed()),
            ("envoyfilters", self.envoy_filters.wait_until_ready().boxed()),
            ("nodes", self.nodes.wait_until_ready().boxed()),
        ];
        for (what, fut) in waits {
            let mut fut = fut;
            loop {
                match tokio::time::timeout(Duration::from_secs(10), &mut fut).await {
                    Ok(_) => break,
                    Err(_) => warn!(what, "still waiting for the initial list (are the Istio CRDs installed?)"),
                }
            }
        }
    }

    /// The touched registry objects as they are now.
    fn changed(&self, touched: Touched) -> Changed {
        fn now<K: Resource<DynamicType = ()> + Clone>(
            store: &Store<K>,
            keys: BTreeSet<Key>,
        ) -> Vec<(Key, Option<Arc<K>>)> {
            keys.into_iter()
                .map(|(ns, name)| {
                    let obj = store.get(&ObjectRef::new(&name).within(&ns));
                    ((ns, name), obj)
                })
                .collect()
        }
        Changed {
            services: now(&self.services, touched.services),
            slices: now(&self.slices, touched.slices),
            pods: now(&self.pods, touched.pods),
        }
    }

    /// Each node's locality, as the Node watch last saw them (shared, not copied).
    fn node_localities(&self) -> Arc<BTreeMap<String, Locality>> {
        self.node_localities.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn current(&self) -> Current {
        Current {
            virtual_services: self.virtual_services.state(),
            destination_rules: self.destination_rules.state(),
            service_entries: self.service_entries.state(),
            gateways: self.gateways.state(),
            peer_authentications: self.peer_authentications.state(),
            authorization_policies: self.authorization_policies.state(),
            sidecars: self.sidecars.state(),
        }
    }
}

/// Builds snapshots from the stores and publishes them on `tx`, one per debounced burst of
/// changes; writes verdicts as it goes while `leader` is set. Runs forever.
pub async fn run(
    client: Client,
    stores: Stores,
    changes: Arc<Changes>,
    mesh: MeshSettings,
    tx: watch::Sender<Arc<Configs>>,
    metrics: Metrics,
    leader: Arc<std::sync::atomic::AtomicBool>,
) {
    stores.ready().await;
    info!("initial lists loaded");
    let mut last_good = LastGood::default();
    let mut status = StatusWriter::new(client, metrics.clone());
    let mut dns = DnsCache::default();
    let mut generation = 0u64;
    let mut prev: Option<Arc<Configs>> = None;
    let mut registry_cache = registry::RegistryCache::default();
    let mut synced = false;
    loop {
        // Taken before the stores are read: whatever the stores hold is at least as new as
        // what this names (a change that lands in between is also named next time).
        let (changed_at, touched) = changes.take();
        let start = Instant::now();
        let current = stores.current();
        let (mut istio, mut verdicts) = last_good.accept(&current, &mesh.cluster_domain);
        let envoy_filters = stores.envoy_filters.state();
        verdicts.extend(accept::envoy_filters(&envoy_filters));
        // Ingresses of Istio's class join as the Gateway and VirtualServices Istio derives.
        let ingresses = stores.ingresses.state();
        let derived = ingress::convert(
            &ingresses,
            &stores.ingress_classes.state(),
            &stores.services.state(),
            &mesh.ingress,
            &mesh.root_namespace,
            &mesh.cluster_domain,
        );
        istio.gateways.extend(derived.gateways);
        istio.virtual_services.extend(derived.virtual_services);
        let names = registry::dns_names(&istio.service_entries);
        let resolved = dns.resolve(&names).await;
        let inputs = start.elapsed();
        if touched.all || !synced {
            let (services, slices, pods) = (stores.services.state(), stores.slices.state(), stores.pods.state());
            registry_cache.resync(&mesh, &services, &slices, &pods);
            synced = true;
        } else {
            registry_cache.update(&mesh, stores.changed(touched));
        }
        let registry = registry_cache.registry(&istio.service_entries, &resolved);
        let registered = start.elapsed();
        let mut snap = Snapshot::new(mesh.clone(), registry, istio, registry_cache.pods());
        snap.tls_secrets = stores.tls_secrets.state().iter().filter_map(|s| TlsSecret::from_secret(s)).collect();
        snap.node_localities = stores.node_localities();
        generation += 1;
        snap.generation = generation;
        snap.changed_at = changed_at;
        let indexed = start.elapsed();
        let configs = Arc::new(Configs::new(Arc::new(snap), prev.as_deref()));
        if let Some(hosts) = configs.patched_hosts() {
            debug!(generation, hosts = hosts.len(), "only endpoints changed; translation is patched");
        }
        prev = Some(configs.clone());
        let compared = start.elapsed();
        let replaced = tx.send_replace(configs);
        let published = start.elapsed();
        drop(replaced);
        metrics.snapshots.inc();
        metrics.snapshot_time.observe(start.elapsed().as_secs_f64());
        // `since_change`: from the first watch event this snapshot includes to its publication.
        let since_change = changed_at.map(|t| t.elapsed());
        debug!(generation, ?since_change, ?inputs, ?registered, ?indexed, ?compared, ?published, elapsed = ?start.elapsed(), "snapshot built");
        for kind in [
            "VirtualService",
            "DestinationRule",
            "ServiceEntry",
            "Gateway",
            "PeerAuthentication",
            "AuthorizationPolicy",
            "Sidecar",
            "EnvoyFilter",
        ] {
            let n = verdicts.iter().filter(|v| v.kind == kind && !v.accepted()).count();
            metrics.rejected.get_or_create(&KindLabels { kind }).set(n as i64);
        }
        // One replica writes verdicts; the others judge the same and keep quiet.
        if leader.load(std::sync::atomic::Ordering::Relaxed) {
            status.write(&current, &verdicts).await;
            status.kind(&envoy_filters, &verdicts_by_key(&verdicts)).await;
            let gateway = stores.services.get(&ObjectRef::new(&mesh.ingress.service).within(&mesh.root_namespace));
            let served: Vec<_> = ingresses
                .iter()
                .filter(|i| ingress::served(i, &stores.ingress_classes.state(), &mesh.ingress))
                .cloned()
                .collect();
            status.ingresses(&served, &ingress::addresses(gateway.as_deref())).await;
        }

        // Wait for a change, then for quiet.
        let built = Instant::now();
        changes.notify.notified().await;
        let burst = Instant::now();
        let quiet = if burst.duration_since(built) > CALM_AFTER { DEBOUNCE_CALM } else { DEBOUNCE };
        while burst.elapsed() < DEBOUNCE_MAX {
            if tokio::time::timeout(quiet, changes.notify.notified()).await.is_err() {
                break;
            }
        }
    }
}

/// DNS answers for ServiceEntry hosts, refreshed every [`DNS_TTL`].
#[derive(Default)]
struct DnsCache {
    entries: HashMap<String, (Vec<IpAddr>, Instant)>,
}

impl DnsCache {
    async fn resolve(&mut self, names: &BTreeSet<String>) -> HashMap<String, Vec<IpAddr>> {
        self.entries.retain(|k, _| names.contains(k));
        for name in names {
            if self.entries.get(name).is_some_and(|(_, at)| at.elapsed() < DNS_TTL) {
                continue;
            }
            let lookup = tokio::net::lookup_host((name.as_str(), 0));
            let ips = match tokio::time::timeout(Duration::from_secs(2), lookup).await {
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect::<BTreeSet<_>>().into_iter().collect(),
                Ok(Err(e)) => {
                    warn!(name, error = %e, "ServiceEntry host does not resolve");
                    Vec::new()
                }
                Err(_) => {
                    warn!(name, "ServiceEntry host lookup timed out");
                    Vec::new()
                }
            };
            self.entries.insert(name.clone(), (ips, Instant::now()));
        }
        self.entries.iter().map(|(k, (ips, _))| (k.clone(), ips.clone())).collect()
    }
}

/// Writes verdicts to the objects' status (condition `Accepted`) when they differ from what
/// is there, and a Warning Event when an object is rejected. Steady state writes nothing.
struct StatusWriter {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
}

/// The condition type Skein writes on Istio resources.
pub const ACCEPTED: &str = "Accepted";

/// Verdicts by (kind, namespace, name).
fn verdicts_by_key(verdicts: &[Verdict]) -> HashMap<(&str, &str, &str), &Verdict> {
    verdicts.iter().map(|v| ((v.kind, v.namespace.as_str(), v.name.as_str()), v)).collect()
}

impl StatusWriter {
    fn new(client: Client, metrics: Metrics) -> Self {
        let reporter = Reporter { controller: "skein-controlplane".into(), instance: std::env::var("POD_NAME").ok() };
        Self { recorder: Recorder::new(client.clone(), reporter), client, metrics }
    }

    async fn write(&mut self, cur: &Current, verdicts: &[Verdict]) {
        let by_key = verdicts_by_key(verdicts);
        self.kind(&cur.virtual_services, &by_key).await;
        self.kind(&cur.destination_rules, &by_key).await;
        self.kind(&cur.service_entries, &by_key).await;
        self.kind(&cur.gateways, &by_key).await;
        self.kind(&cur.peer_authentications, &by_key).await;
        self.kind(&cur.authorization_policies, &by_key).await;
        self.kind(&cur.sidecars, &by_key).await;
    }

    /// Served Ingresses report the ingress gateway's addresses in `status.loadBalancer`, as
    /// Istio's do (what `kubectl get ingress` shows in ADDRESS).
    async fn ingresses(&self, served: &[Arc<Ingress>], addresses: &[(Option<String>, Option<String>)]) {
        let want: Vec<serde_json::Value> = addresses
            .iter()
            .map(|(ip, hostname)| {
                let mut a = serde_json::Map::new();
                if let Some(ip) = ip {
                    a.insert("ip".into(), json!(ip));
                }
                if let Some(h) = hostname {
                    a.insert("hostname".into(), json!(h));
                }
                serde_json::Value::Object(a)
            })
            .collect();
        for ing in served {
            if ingress::reported(ing) == addresses {
                continue;
            }
            let (ns, name) = (ing.namespace().unwrap_or_default(), ing.name_any());
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &ns);
            let patch = json!({"status": {"loadBalancer": {"ingress": want}}});
            self.metrics.status_writes.inc();
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                warn!(%ns, %name, error = %e, "Ingress status not written");
            }
        }
    }

    async fn kind<K>(&self, objs: &[Arc<K>], verdicts: &HashMap<(&str, &str, &str), &Verdict>)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + HasIstioStatus
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let kind = K::kind(&());
        for obj in objs {
            let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
            let Some(v) = verdicts.get(&(kind.as_ref(), ns.as_str(), name.as_str())) else { continue };
            let (status, reason) = if v.accepted() { ("True", "Accepted") } else { ("False", v.reason) };
            let message = v.message();
            let existing = obj.istio_status();
            let same = existing.is_some_and(|s| {
                s.observed_generation == v.generation
                    && s.conditions.iter().any(|c| {
                        c.type_ == ACCEPTED && c.status == status && c.message.as_deref() == Some(message.as_str())
                    })
            });
            if same {
                continue;
            }
            let flipped = existing
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == ACCEPTED))
                .is_none_or(|c| c.status != status);
            let now = jiff::Timestamp::now().to_string();
            let transition = match existing.and_then(|s| s.conditions.iter().find(|c| c.type_ == ACCEPTED)) {
                Some(c) if !flipped => c.last_transition_time.clone().unwrap_or(now),
                _ => now,
            };
            let patch = json!({"status": {
                "observedGeneration": v.generation,
                "conditions": [{
                    "type": ACCEPTED, "status": status, "reason": reason,
                    "message": message, "lastTransitionTime": transition,
                }],
            }});
            let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
            self.metrics.status_writes.inc();
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                warn!(kind = %kind, %ns, %name, error = %e, "status not written");
            }
            if v.accepted() && !v.warnings.is_empty() {
                // Istio's validating webhook shows these on `kubectl apply`; here they are on the
                // status and in an Event (`kubectl describe`), written once per change.
                let ev = Event {
                    type_: EventType::Warning,
                    reason: "ValidationWarning".into(),
                    note: Some(v.warnings.join("; ").chars().take(1000).collect()),
                    action: "Validate".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
                    warn!(kind = %kind, %ns, %name, error = %e, "event not written");
                }
            }
            if !v.accepted() {
                warn!(kind = %kind, %ns, %name, reason = %message, "resource rejected");
                let mut note = message.clone();
                note.truncate(1000);
                let ev = Event {
                    type_: EventType::Warning,
                    reason: "Rejected".into(),
                    note: Some(note),
                    action: "Validate".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
                    warn!(kind = %kind, %ns, %name, error = %e, "event not written");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn service_entry_hosts_resolve_through_the_system_resolver_and_unknown_ones_resolve_to_nothing() {
        let mut dns = DnsCache::default();
        let names: BTreeSet<String> = ["localhost".to_string(), "no-such-host.invalid".to_string()].into();
        let got = dns.resolve(&names).await;
        assert!(got["localhost"].iter().all(|ip| ip.is_loopback()) && !got["localhost"].is_empty(), "{got:?}");
        assert_eq!(got["no-such-host.invalid"], Vec::<IpAddr>::new(), "an unresolvable host has no endpoints");
        // Names no ServiceEntry asks for any more are forgotten.
        let got = dns.resolve(&["localhost".to_string()].into()).await;
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["localhost"]);
    }
}
