//! One peer cluster, watched with its remote credentials: its Services and namespaces (what it
//! exports), its DestinationRules (subsets to mirror), its MeshControlPlane (export rules),
//! its east-west gateway (addresses, network) and its root certificate.
//!
//! The task publishes a [`PeerState`] whenever what it has read changes, and only once every
//! watch has listed: a half-read peer would withdraw Services it still exports. When the peer
//! fails, the last complete view is kept and only the sync state changes: entries of an
//! unreachable peer stay (no flapping, no fail-fast after a restart).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    pin::Pin,
    sync::Arc,
};

use futures::{FutureExt, Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::{
    Api, Client, ResourceExt,
    api::DynamicObject,
    core::{ApiResource, GroupVersionKind, PartialObjectMeta},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use skein_api::{ExportRule, MeshControlPlane};
use tokio::sync::{Notify, watch};

use crate::{
    federation::{
        EAST_WEST_SELECTOR, GENERATED_LABEL, MESH_ROOT_CONFIGMAP, NETWORK_LABEL,
        export::{self, ExportedService},
        generate::Peer,
        pace::Pace,
    },
    kube::strip_managed_fields,
};

/// Whether the peer is being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sync {
    /// Still listing for the first time.
    Pending,
    /// Every watch is up.
    Synced,
    /// A watch fails: reason (`Unreachable`, `Unauthorized`) and message.
    Failed(&'static str, String),
}

/// What the task publishes.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// Sync state.
    pub sync: Sync,
    /// Last complete view (kept while the peer fails). Shared: every pass reads it, and a view
    /// of a peer exporting thousands of Services is not copied for that.
    pub view: Option<Arc<Peer>>,
    /// When the view was last complete after a (re)list.
    pub last_sync: Option<Timestamp>,
    /// The peer's own root certificate(s) (PEM), when published.
    pub root: Option<String>,
}

impl PeerState {
    /// The state before anything is read, carrying `previous`'s view (new credentials for a
    /// known peer keep its entries while the new client lists).
    pub fn pending(previous: Option<&PeerState>) -> Self {
        Self {
            sync: Sync::Pending,
            view: previous.and_then(|p| p.view.clone()),
            last_sync: previous.and_then(|p| p.last_sync),
            root: previous.and_then(|p| p.root.clone()),
        }
    }
}

/// The watches of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Services,
    Namespaces,
    DestinationRules,
    MeshControlPlanes,
    RootCerts,
}

/// What a watch has done so far.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    Listing,
    Listed,
    /// The API is not served there (say, no Istio CRDs, or not a Skein cluster): empty.
    Absent,
    Failing(&'static str, String),
}

/// How often an unreachable peer is probed.
const PROBE: std::time::Duration = std::time::Duration::from_secs(5);

type Events = Pin<Box<dyn Stream<Item = (Source, Result<bool, watcher::Error>)> + Send>>;

/// Maps a watch to (source, Ok(list complete) | Err).
fn events<K>(source: Source, stream: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static) -> Events
where
    K: Send + 'static,
{
    stream
        .map(move |e| {
            (
                source,
                e.map(|e| matches!(e, watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))),
            )
        })
        .boxed()
}

/// What each watch of a peer has done, and so whether the peer is read completely.
#[derive(Debug)]
struct Tracker {
    progress: BTreeMap<Source, Progress>,
    /// Sources that listed once: a watch that resumes after an outage says nothing (kube's
    /// watcher re-watches from its last version without an event), so their recovery is seen
    /// by probing the apiserver instead.
    listed_once: std::collections::BTreeSet<Source>,
}

impl Tracker {
    const SOURCES: [Source; 5] =
        [Source::Services, Source::Namespaces, Source::DestinationRules, Source::MeshControlPlanes, Source::RootCerts];

    fn new() -> Self {
        let progress = Self::SOURCES.into_iter().map(|s| (s, Progress::Listing)).collect();
        Self { progress, listed_once: Default::default() }
    }

    /// Takes one watch event; whether it may change what the peer publishes (a list in
    /// progress does not).
    fn apply(&mut self, (source, event): (Source, Result<bool, watcher::Error>)) -> bool {
        match event {
            Ok(true) => self.listed(source),
            // Init/InitApply: the list is under way; keep what the source had.
            Ok(false) => return false,
            Err(e) => self.failed(source, classify(&e).map_err(|()| e.to_string())),
        }
        true
    }

    /// `source` listed, or saw a change.
    fn listed(&mut self, source: Source) {
        self.progress.insert(source, Progress::Listed);
        self.listed_once.insert(source);
    }

    /// `source` failed: `Ok((reason, message))` from [`classify`], `Err(message)` for an API
    /// the peer does not serve (empty for optional sources, a failure for the required ones).
    fn failed(&mut self, source: Source, why: Result<(&'static str, String), String>) {
        let p = match why {
            Ok((reason, message)) => Progress::Failing(reason, message),
            Err(message) if matches!(source, Source::Services | Source::Namespaces) => {
                Progress::Failing("Unreachable", message)
            }
            Err(_) => {
                self.listed_once.insert(source);
                Progress::Absent
            }
        };
        self.progress.insert(source, p);
    }

    /// Sources failing for reachability that had listed: a successful probe brings them back.
    fn resumable(&self) -> Vec<Source> {
        self.progress
            .iter()
            .filter(|(s, p)| matches!(p, Progress::Failing("Unreachable", _)) && self.listed_once.contains(*s))
            .map(|(s, _)| *s)
            .collect()
    }

    fn resumed(&mut self, sources: &[Source]) {
        for s in sources {
            self.progress.insert(*s, Progress::Listed);
        }
    }

    /// The first failure (reason, message).
    fn failing(&self) -> Option<(&'static str, String)> {
        self.progress.values().find_map(|p| match p {
            Progress::Failing(r, m) => Some((*r, m.clone())),
            _ => None,
        })
    }

    /// Whether every source has listed (or is not served).
    fn complete(&self) -> bool {
        self.progress.values().all(|p| matches!(p, Progress::Listed | Progress::Absent))
    }
}

/// Reasons of a failing watch (what `status.remoteClusters[].conditions[Synced]` says).
fn classify(e: &watcher::Error) -> Result<(&'static str, String), ()> {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some((s.code, s.message.clone())),
        watcher::Error::WatchError(s) => Some((s.code, s.message.clone())),
        _ => None,
    };
    match api {
        // Not served: an absent optional API, not a failure.
        Some((404, _)) => Err(()),
        Some((401 | 403, m)) => Ok(("Unauthorized", m)),
        Some((code, m)) => Ok(("Unreachable", format!("{code}: {m}"))),
        None => Ok(("Unreachable", e.to_string())),
    }
}

/// Runs until aborted: watches the peer through `client` and publishes to `state`, waking
/// `notify` on every change.
pub async fn run(cluster: String, client: Client, state: watch::Sender<PeerState>, notify: Arc<Notify>) {
    let cfg = watcher::Config::default;
    let (services, w) = reflector::store::<Service>();
    let s1 = events(
        Source::Services,
        reflector::reflector(
            w,
            watcher(Api::<Service>::all(client.clone()), cfg()).modify(strip_managed_fields).default_backoff(),
        ),
    );
    let (namespaces, w) = reflector::store::<PartialObjectMeta<Namespace>>();
    let ns_api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
    let s2 = events(Source::Namespaces, reflector::reflector(w, watcher(ns_api, cfg()).default_backoff()));
    let dr = ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule"));
    let w = reflector::store::Writer::new(dr.clone());
    let destination_rules = w.as_reader();
    // The DestinationRules generated for `.global` hosts are no subsets of a local Service:
    // left out, so that importing thousands of hosts into this cluster does not recompute what
    // it exports once per written object.
    let dr_cfg = cfg().labels(&format!("!{GENERATED_LABEL}"));
    let s3 = events(
        Source::DestinationRules,
        reflector::reflector(
            w,
            watcher(Api::<DynamicObject>::all_with(client.clone(), &dr), dr_cfg)
                .modify(strip_managed_fields)
                .default_backoff(),
        ),
    );
    let (meshes, w) = reflector::store::<MeshControlPlane>();
    let s4 = events(
        Source::MeshControlPlanes,
        reflector::reflector(w, watcher(Api::all(client.clone()), cfg()).default_backoff()),
    );
    let (roots, w) = reflector::store::<ConfigMap>();
    let roots_cfg = cfg().fields(&format!("metadata.name={MESH_ROOT_CONFIGMAP}"));
    let s5 = events(
        Source::RootCerts,
        reflector::reflector(w, watcher(Api::<ConfigMap>::all(client.clone()), roots_cfg).default_backoff()),
    );
    let stores = Stores { services, namespaces, destination_rules, meshes, roots };

    let mut all = futures::stream::select_all([s1, s2, s3, s4, s5]);
    let mut tracker = Tracker::new();
    let mut probe = tokio::time::interval(PROBE);
    let mut pace = VIEW_PACE;
    let mut cache = ExportCache::default();
    loop {
        let event = tokio::select! {
            ev = all.next() => match ev {
                Some(ev) => Some(ev),
                None => break,
            },
            _ = probe.tick() => None,
        };
        let relevant = match event {
            Some(ev) => tracker.apply(ev),
            None => {
                let resumable = tracker.resumable();
                if resumable.is_empty() || client.apiserver_version().await.is_err() {
                    continue;
                }
                // Reachable again: the watches resume on their own (or fail again, and say so).
                tracker.resumed(&resumable);
                true
            }
        };
        if !relevant {
            continue;
        }
        // A burst (a peer creating thousands of Services) makes one view per pace interval,
        // not one per event: a view of a large peer costs milliseconds.
        if let Some(wait) = pace.wait(std::time::Instant::now()) {
            read_until(&mut all, tokio::time::Instant::now() + wait, |ev| {
                tracker.apply(ev);
            })
            .await;
        }
        while let Some(ev) = all.next().now_or_never() {
            match ev {
                Some(ev) => {
                    tracker.apply(ev);
                }
                None => break,
            }
        }
        let (failing, complete) = (tracker.failing(), tracker.complete());
        let mut changed = false;
        state.send_if_modified(|s| {
            let before = (s.sync.clone(), s.root.clone());
            let mut view_changed = false;
            if let Some((reason, message)) = failing {
                s.sync = Sync::Failed(reason, message);
            } else if complete {
                if s.sync != Sync::Synced {
                    s.last_sync = Some(Timestamp::now());
                }
                s.sync = Sync::Synced;
                let t = std::time::Instant::now();
                let view = stores.view(&cluster, &mut cache);
                view_changed = s.view.as_deref() != Some(&view);
                if view_changed {
                    s.view = Some(Arc::new(view));
                }
                pace.record(std::time::Instant::now(), t.elapsed());
                tracing::debug!(cluster, took = ?t.elapsed(), "peer view");
                s.root = stores.root();
            }
            changed = view_changed || before != (s.sync.clone(), s.root.clone());
            changed
        });
        if changed {
            notify.notify_one();
        }
    }
}

/// Reads `events` into `apply` until `until` (or the stream's end); how many were read.
/// A pace wait is spent here rather than asleep: reading is what updates the reflector
/// stores, and after a sleep the drain that follows could take only what the runtime's
/// cooperative budget allows (about a hundred events), so a burst of 10 000 would take minutes
/// to be seen.
async fn read_until<S: Stream + Unpin>(
    events: &mut S,
    until: tokio::time::Instant,
    mut apply: impl FnMut(S::Item),
) -> usize {
    let mut read = 0;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, events.next()).await {
        apply(ev);
        read += 1;
    }
    read
}

/// Views of one peer take at most a fifth of a core however fast its objects change, and
/// wait at most 500 ms.
const VIEW_PACE: Pace = Pace::new(5, std::time::Duration::from_millis(500));

/// What, besides the Service itself, decides whether and how a Service is exported.
#[derive(Debug, PartialEq)]
struct ExportContext {
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    rules: Vec<ExportRule>,
    /// (namespace, host, subset names) of the peer's DestinationRules, sorted.
    drs: Vec<(String, String, Vec<String>)>,
}

/// The results of the last view, by the store's own `Arc` of each Service (the store replaces
/// the `Arc` of a Service that changes, and keeps the others): a view after one of thousands
/// of Services changed computes that one again, not all.
#[derive(Default)]
struct ExportCache {
    context: Option<ExportContext>,
    /// By the address of the `Arc`'s Service; the entry holds that `Arc`, so no other Service
    /// can be at that address while the entry exists.
    results: HashMap<usize, (Arc<Service>, Option<Arc<ExportedService>>)>,
}

impl ExportCache {
    /// The exported Services among `services`, sorted by namespace and name.
    fn exported(&mut self, services: &[Arc<Service>], context: ExportContext) -> Vec<Arc<ExportedService>> {
        let reuse = self.context.as_ref() == Some(&context);
        let mut results = HashMap::with_capacity(services.len());
        let mut out = Vec::new();
        for svc in services {
            let key = Arc::as_ptr(svc) as usize;
            let result = match self.results.get(&key) {
                Some((_, r)) if reuse => r.clone(),
                _ => {
                    export::exported_service(svc, &context.namespace_labels, &context.rules, &context.drs).map(Arc::new)
                }
            };
            out.extend(result.clone());
            results.insert(key, (svc.clone(), result));
        }
        self.results = results;
        self.context = Some(context);
        export::sort(&mut out);
        out
    }
}

struct Stores {
    services: Store<Service>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    destination_rules: Store<DynamicObject>,
    meshes: Store<MeshControlPlane>,
    roots: Store<ConfigMap>,
}

impl Stores {
    fn view(&self, cluster: &str, cache: &mut ExportCache) -> Peer {
        // The store's own Arcs: no Service is copied per event.
        let services: Vec<Arc<Service>> = self.services.state();
        let namespace_labels: BTreeMap<String, BTreeMap<String, String>> =
            self.namespaces.state().iter().map(|n| (n.name_any(), n.labels().clone())).collect();
        let mut meshes = self.meshes.state();
        meshes.sort_by_key(|m| (m.namespace(), m.name_any()));
        let rules: Vec<ExportRule> =
            meshes.iter().filter_map(|m| m.spec.multi_cluster.as_ref()).flat_map(|m| m.export.clone()).collect();
        let mut drs: Vec<(String, String, Vec<String>)> = self
            .destination_rules
            .state()
            .iter()
            .filter_map(|d| {
                let host = d.data["spec"]["host"].as_str()?.to_string();
                let subsets = d.data["spec"]["subsets"].as_array().into_iter().flatten();
                let names = subsets.filter_map(|s| s["name"].as_str().map(String::from)).collect();
                Some((d.namespace()?, host, names))
            })
            .collect();
        drs.sort();
        let exported = cache.exported(&services, ExportContext { namespace_labels, rules, drs });
        let gateways: Vec<&Service> = services
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| s.labels().get(EAST_WEST_SELECTOR.0).is_some_and(|v| v == EAST_WEST_SELECTOR.1))
            .collect();
        let mut addresses: Vec<String> = gateways.iter().flat_map(|s| gateway_addresses(s)).collect();
        addresses.sort();
        addresses.dedup();
        let network = gateways
            .iter()
            .find_map(|s| s.labels().get(NETWORK_LABEL).cloned())
            .or_else(|| meshes.iter().find_map(|m| m.spec.multi_cluster.as_ref()?.network.clone()));
        // The gateway Service's topology labels (the operator writes them from
        // `multiCluster.locality`; a hand-labelled gateway works too).
        let locality = gateways.iter().find_map(|s| {
            let labels = s.labels();
            let region = labels.get("topology.kubernetes.io/region").filter(|r| !r.is_empty())?;
            let parts =
                [Some(region), labels.get("topology.kubernetes.io/zone"), labels.get("topology.istio.io/subzone")];
            Some(parts.into_iter().map_while(|p| p.filter(|p| !p.is_empty()).cloned()).collect::<Vec<_>>().join("/"))
        });
        Peer {
            cluster: cluster.to_string(),
            network,
            locality,
            gateways: addresses,
            services: exported,
            withdrawn: BTreeSet::new(),
        }
    }

    /// The peer's own root: `skein-mesh-root` (one per mesh namespace; several meshes in one
    /// cluster would each publish theirs).
    fn root(&self) -> Option<String> {
        let mut pems: Vec<String> = self
            .roots
            .state()
            .iter()
            .filter_map(|c| c.data.as_ref()?.get(skein_api::names::ROOT_CERT_FILE).cloned())
            .collect();
        pems.sort();
        pems.dedup();
        (!pems.is_empty()).then(|| pems.concat())
    }
}

/// Addresses a gateway Service is reachable at from other networks.
fn gateway_addresses(svc: &Service) -> Vec<String> {
    let lb = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    let mut out: Vec<String> =
        lb.into_iter().flatten().filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone())).collect();
    out.extend(svc.spec.as_ref().and_then(|s| s.external_ips.clone()).into_iter().flatten());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_listed() -> Tracker {
        let mut t = Tracker::new();
        for s in Tracker::SOURCES {
            t.listed(s);
        }
        t
    }

    fn service(name: &str, export: bool) -> Arc<Service> {
        let label = if export { "true" } else { "false" };
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "labels": {crate::federation::EXPORT_LABEL: label}},
                "spec": {"ports": [{"name": "http", "port": 9080}]}
            }))
            .unwrap(),
        )
    }

    fn context(subsets: &[&str]) -> ExportContext {
        let names = subsets.iter().map(|s| s.to_string()).collect();
        ExportContext {
            namespace_labels: BTreeMap::new(),
            rules: vec![],
            drs: vec![("default".into(), "b".into(), names)],
        }
    }

    /// A view after one Service changed reuses every other Service's result (the same `Arc`);
    /// a change of what all results depend on (a DestinationRule's subsets) recomputes them.
    #[test]
    fn an_export_view_computes_again_only_what_changed() {
        let mut cache = ExportCache::default();
        let (a, b, hidden) = (service("a", true), service("b", true), service("c", false));
        let first = cache.exported(&[b.clone(), hidden.clone(), a.clone()], context(&[]));
        let names: Vec<&str> = first.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "exported only, sorted");

        // b replaced by the store (a new Arc, now with another port); a and c kept.
        let b2 = Arc::new({
            let mut s = (*b).clone();
            s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 9081;
            s
        });
        let second = cache.exported(&[a.clone(), b2.clone(), hidden.clone()], context(&[]));
        assert!(Arc::ptr_eq(&first[0], &second[0]), "a's result is reused");
        assert!(!Arc::ptr_eq(&first[1], &second[1]));
        assert_eq!(second[1].ports[0].number, 9081);

        // Un-exported by a label change: gone.
        let third = cache.exported(&[a.clone(), service("b", false), hidden.clone()], context(&[]));
        assert_eq!(third.len(), 1);

        // A subset appears for b: recomputed though b's Arc is the same.
        let fourth = cache.exported(&[a.clone(), b2.clone(), hidden.clone()], context(&["v2"]));
        assert_eq!(fourth[1].subsets, ["v2"]);
        assert!(!Arc::ptr_eq(&second[0], &fourth[0]), "every result is computed again");
    }

    /// A burst queued in a tokio channel (which, like the watch streams, spends the task's
    /// cooperative budget) is read in full during one pace wait, and the wait still ends on
    /// time while the stream stays open.
    #[tokio::test]
    async fn a_pace_wait_reads_a_whole_burst_and_ends_on_time() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        for i in 0..10_000 {
            tx.send(i).unwrap();
        }
        let mut events = Box::pin(futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|v| (v, rx)) }));
        let mut last = None;
        let start = tokio::time::Instant::now();
        let wait = std::time::Duration::from_millis(300);
        let read = read_until(&mut events, start + wait, |v| last = Some(v)).await;
        assert_eq!((read, last), (10_000, Some(9_999)));
        let took = start.elapsed();
        assert!(took >= wait && took < wait * 10, "the wait took {took:?}");
        // Only the budget's worth is ready to a drain without waiting: what the wait is for.
        for i in 0..10_000 {
            tx.send(i).unwrap();
        }
        let mut drained = 0;
        while let Some(Some(_)) = events.next().now_or_never() {
            drained += 1;
        }
        assert!(drained < 10_000, "a drain without waiting read all {drained}");
    }

    #[test]
    fn list_events_are_not_changes_and_errors_are() {
        let mut t = Tracker::new();
        assert!(!t.apply((Source::Services, Ok(false))));
        assert!(t.apply((Source::Services, Ok(true))));
        assert!(t.apply((Source::Namespaces, Err(watcher::Error::NoResourceVersion))));
    }

    #[test]
    fn a_peer_is_complete_once_every_watch_listed_and_absent_apis_count_as_empty() {
        let mut t = Tracker::new();
        assert!(!t.complete());
        for s in [Source::Services, Source::Namespaces, Source::RootCerts] {
            t.listed(s);
        }
        t.failed(Source::DestinationRules, Err("404".into()));
        t.failed(Source::MeshControlPlanes, Err("404".into()));
        assert!(t.complete() && t.failing().is_none(), "{t:?}");
        // Services not served is no peer at all.
        t.failed(Source::Services, Err("404".into()));
        assert_eq!(t.failing().map(|f| f.0), Some("Unreachable"));
    }

    #[test]
    fn an_outage_is_recovered_by_a_probe_even_if_the_watch_resumes_silently() {
        let mut t = all_listed();
        t.failed(Source::Services, Ok(("Unreachable", "connection refused".into())));
        t.failed(Source::RootCerts, Ok(("Unreachable", "connection refused".into())));
        assert_eq!(t.failing(), Some(("Unreachable", "connection refused".into())));
        assert_eq!(t.resumable(), vec![Source::Services, Source::RootCerts]);
        t.resumed(&t.resumable());
        assert!(t.complete() && t.failing().is_none());
    }

    #[test]
    fn unauthorized_and_never_listed_sources_wait_for_their_watch() {
        let mut t = all_listed();
        t.failed(Source::Namespaces, Ok(("Unauthorized", "forbidden".into())));
        assert!(t.resumable().is_empty(), "a probe says nothing about permissions");
        let mut fresh = Tracker::new();
        fresh.failed(Source::Services, Ok(("Unreachable", "refused".into())));
        assert!(fresh.resumable().is_empty(), "never listed: its list has to complete first");
    }

    #[test]
    fn api_errors_are_classified_by_status() {
        let api = |code: u16| {
            let status: kube::core::Status =
                serde_json::from_value(serde_json::json!({"code": code, "message": "m"})).unwrap();
            watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
        };
        assert_eq!(classify(&api(404)), Err(()));
        assert_eq!(classify(&api(403)), Ok(("Unauthorized", "m".to_string())));
        assert_eq!(classify(&api(401)).map(|c| c.0), Ok("Unauthorized"));
        assert_eq!(classify(&api(500)), Ok(("Unreachable", "500: m".to_string())));
    }
}
