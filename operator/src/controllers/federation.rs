//! The federation controller: registers peers from remote Secrets, watches each with its own
//! client ([`peer`]), and keeps this cluster's `.global` ServiceEntries, DestinationRules and
//! virtual IPs equal to what the peers export (`federation::generate`), with
//! `status.remoteClusters` on the MeshControlPlane saying how each peer is doing.
//!
//! Level-based like the others: every pass recomputes everything from the local stores and the
//! peers' last complete views, writes only what differs, and a converged pass writes nothing.

pub mod peer;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;
use skein_api::{MeshControlPlane, RemoteClusterStatus};
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{debug, info, warn};

use self::peer::{PeerState, Sync};
use crate::{
    context::{Context, Scope},
    federation::{
        DEFAULT_SUFFIX, FEDERATED_ROOTS_CONFIGMAP, GENERATED_LABEL, ISTIO_REMOTE_SECRET_LABEL, REMOTE_SECRET_LABEL,
        SOURCE_CLUSTERS_ANNOTATION, VIP_CONFIGMAP,
        credentials::{self, PeerCredentials},
        generate::{self, GlobalHost, Target},
        health::{GatewayHealth, PROBE_PATH, PROBE_PORT, ready_response},
        pace::Pace,
        vip::VipTable,
    },
    kube::{
        apply::{Applier, ApplyError},
        remote, strip_managed_fields,
    },
    render::{Desired, FIELD_MANAGER},
};

/// Re-check without events (peer gateways' and credentials' expiry, removal grace).
const RECHECK: Duration = Duration::from_secs(10);
/// Changes arriving together are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Generated objects written at once.
const WRITE_CONCURRENCY: usize = 16;
/// The east-west Gateway lists every exported host: while a namespace of thousands is being
/// exported, rewriting it on every pass would cost the apiserver (and etcd's history) the
/// square of their number. It is rewritten at most once per ten times what the last write
/// took, and at most 2 s after a change; a change after a quiet spell is written at once.
const EAST_WEST_PACE: Pace = Pace::new(10, Duration::from_secs(2));

/// Settings of the federation controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a peer whose Secret was deleted keeps its entries (a Secret being replaced by
    /// delete + create must not withdraw every imported service in between).
    pub removal_grace: Duration,
    /// How long a peer gateway may fail its probes before its endpoints are withdrawn (zero:
    /// never).
    pub gateway_lease: Duration,
    /// Exported hosts per east-west Gateway object, on average.
    pub east_west_shard_hosts: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            removal_grace: Duration::from_secs(30),
            gateway_lease: Duration::from_secs(30),
            east_west_shard_hosts: generate::EAST_WEST_SHARD_HOSTS,
        }
    }
}

fn service_entries() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", "ServiceEntry"))
}

fn destination_rules() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule"))
}

/// One registered peer.
struct PeerHandle {
    /// `<namespace>/<name>` of its Secret.
    secret: String,
    fingerprint: u64,
    expires: Option<jiff::Timestamp>,
    task: JoinHandle<()>,
    state: tokio::sync::watch::Receiver<PeerState>,
    /// Set when its Secret went away: removed after the grace period.
    removing_since: Option<Instant>,
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a host's objects were last found equal to.
struct InSync {
    host: GlobalHost,
    /// The plan (`LastPlan::id`) `host` was last found equal in: in a later pass with the
    /// same plan it is equal without being compared.
    plan: u64,
    vip: std::net::Ipv4Addr,
}

/// What a pass found in the user's objects, for the status.
struct Found<'a> {
    /// Hosts whose objects another object blocks.
    conflicts: &'a BTreeSet<String>,
    /// `*.<suffix>`, when the user's rule for it is left alone.
    suffix_conflict: Option<&'a str>,
    /// Users' rules turning mesh mTLS off for `.global` hosts, with the clusters they touch.
    overrides: &'a [(String, BTreeSet<String>)],
}

/// A cluster key of a remote Secret that cannot be used.
struct Refused {
    cluster: String,
    secret: String,
    message: String,
}

struct LocalStores {
    meshes: Store<MeshControlPlane>,
    /// Remote Secrets (Skein's and Istio's label), per watched namespace.
    secrets: Vec<Store<Secret>>,
    service_entries: Store<DynamicObject>,
    destination_rules: Store<DynamicObject>,
    /// Counts remote Secret events: a pass writing thousands of objects stops early when a
    /// peer is registered or changed meanwhile (see [`Federation::membership_changed`]).
    secret_events: Arc<AtomicU64>,
    /// What changed in `service_entries` and `destination_rules` since a pass last looked.
    changed: Arc<std::sync::Mutex<Changed>>,
    task: JoinHandle<()>,
}

/// Names of watched ServiceEntries and DestinationRules that changed (or all of them, after a
/// re-list): a pass compares only those, and the hosts whose inputs changed, with what they
/// should be; with thousands of imported hosts that is what keeps a pass short.
#[derive(Debug, Default)]
struct Changed {
    all: bool,
    names: std::collections::HashSet<String>,
}

impl Changed {
    /// Records the objects of watch events into `changed`. The reflector has updated its
    /// store when the event comes out, so a name taken from here can be looked up there.
    fn recorder(
        changed: Arc<std::sync::Mutex<Changed>>,
    ) -> impl FnMut(Result<watcher::Event<DynamicObject>, watcher::Error>) {
        move |event| {
            let mut c = changed.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    if !c.all {
                        c.names.insert(o.name_any());
                    }
                }
                // A re-list replaces the store: anything may have changed.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone) => {
                    c.all = true;
                    c.names.clear();
                }
                Err(_) => {}
            }
        }
    }

    fn take(changed: &std::sync::Mutex<Changed>) -> Changed {
        std::mem::take(&mut *changed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn contains(&self, name: &str) -> bool {
        self.all || self.names.contains(name)
    }
}

impl LocalStores {
    /// Starts the local watches; each event wakes `notify`.
    fn start(client: &kube::Client, scope: &Scope, notify: Arc<Notify>) -> Self {
        let cfg = watcher::Config::default;
        let (meshes, w) = reflector::store::<MeshControlPlane>();
        let m = reflector::reflector(w, watcher(Api::all(client.clone()), cfg()).default_backoff()).map(|_| ()).boxed();
        // Remote Secrets live in the mesh namespaces: watched there only (the operator may read
        // no Secret elsewhere), or cluster-wide when it runs with cluster-wide rights.
        let mut streams = vec![m];
        let mut secrets = Vec::new();
        let secret_events = Arc::new(AtomicU64::new(0));
        let namespaces: Vec<Option<&str>> = match scope.namespaces() {
            Some(set) => set.iter().map(|n| Some(n.as_str())).collect(),
            None => vec![None],
        };
        for ns in namespaces {
            for label in [REMOTE_SECRET_LABEL, ISTIO_REMOTE_SECRET_LABEL] {
                let api: Api<Secret> = match ns {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                };
                let (store, w) = reflector::store::<Secret>();
                let config = cfg().labels(&format!("{label}=true"));
                let seen = secret_events.clone();
                let stream = reflector::reflector(w, watcher(api, config).default_backoff());
                streams.push(stream.map(move |_| _ = seen.fetch_add(1, Ordering::Relaxed)).boxed());
                secrets.push(store);
            }
        }
        let se = service_entries();
        let w = reflector::store::Writer::new(se.clone());
        let service_entries = w.as_reader();
        let se_api = Api::<DynamicObject>::all_with(client.clone(), &se);
        let changed = Arc::new(std::sync::Mutex::new(Changed::default()));
        let s3 = reflector::reflector(w, watcher(se_api, cfg()).modify(strip_managed_fields).default_backoff())
            .map(Changed::recorder(changed.clone()))
            .boxed();
        let dr = destination_rules();
        let w = reflector::store::Writer::new(dr.clone());
        let destination_rules = w.as_reader();
        let dr_api = Api::<DynamicObject>::all_with(client.clone(), &dr);
        // All of them, not only the generated ones: a user's rule holding a generated rule's
        // name or host must be seen to be left alone.
        let dr_watch = watcher(dr_api, cfg()).modify(strip_managed_fields);
        let s4 = reflector::reflector(w, dr_watch.default_backoff()).map(Changed::recorder(changed.clone())).boxed();
        streams.extend([s3, s4]);
        let mut all = futures::stream::select_all(streams);
        let task = tokio::spawn(async move {
            while all.next().await.is_some() {
                notify.notify_one();
            }
        });
        Self { meshes, secrets, service_entries, destination_rules, secret_events, changed, task }
    }

    async fn ready(&self) {
        let _ = tokio::join!(
            self.meshes.wait_until_ready(),
            futures::future::join_all(self.secrets.iter().map(Store::wait_until_ready)),
            self.service_entries.wait_until_ready(),
            self.destination_rules.wait_until_ready(),
        );
    }
}

impl Drop for LocalStores {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Federation {
    ctx: Arc<Context>,
    settings: Settings,
    local: LocalStores,
    notify: Arc<Notify>,
    peers: BTreeMap<String, PeerHandle>,
    /// Hosts whose objects were last found equal to what they should be, with what they were
    /// made from, for the target (namespace/mesh/uid) in the key; an entry goes when the watch
    /// sees its objects change ([`Changed`]). A pass compares (serializes) only hosts whose
    /// inputs or objects changed since, not every imported host.
    in_sync: (String, HashMap<String, InSync>),
    /// The VIP table, once read.
    vips: Option<Arc<VipTable>>,
    /// The quarantine as last persisted (`None`: not known to be persisted as it is).
    quarantine: Option<BTreeMap<std::net::Ipv4Addr, crate::federation::vip::Released>>,
    /// The peers' roots as last written to `skein-federated-roots`, once read.
    roots: Option<BTreeMap<String, String>>,
    /// This cluster read as its peers read it (what it exports), once started.
    local_view: Option<(JoinHandle<()>, tokio::sync::watch::Receiver<PeerState>)>,
    /// The peers' gateway health, written by the probe task.
    health: Arc<std::sync::Mutex<GatewayHealth>>,
    /// The gateway addresses the probe task probes (every peer's).
    probed: Arc<std::sync::Mutex<BTreeSet<String>>>,
    east_west_pace: Pace,
    /// Names of the east-west Gateway shards this controller wrote in a namespace and has not
    /// deleted (`None`: to be read from the cluster).
    east_west_shards: Option<(String, BTreeSet<String>)>,
    /// When a pass has to run even without events (work a pace held back).
    wake: Option<Instant>,
    last_plan: Option<LastPlan>,
    /// The ServiceEntry and DestinationRule names the last complete prune kept.
    pruned: Option<(BTreeSet<String>, BTreeSet<String>)>,
}

/// The last plan and what it was made from.
struct LastPlan {
    /// The peers' views (held, so that a pointer names one view).
    views: Vec<Arc<generate::Peer>>,
    withdrawn: BTreeSet<String>,
    suffix: String,
    plan: Arc<BTreeMap<String, GlobalHost>>,
    /// Counts the plans made.
    id: u64,
}

impl Drop for Federation {
    fn drop(&mut self) {
        if let Some((task, _)) = &self.local_view {
            task.abort();
        }
    }
}

/// Runs the federation controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, settings: Settings, shutdown: impl std::future::Future<Output = ()> + Send) {
    let notify = Arc::new(Notify::new());
    let local = LocalStores::start(&ctx.client, &ctx.scope, notify.clone());
    let health = Arc::new(std::sync::Mutex::new(GatewayHealth::new(settings.gateway_lease)));
    let probed = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let probes = tokio::spawn(probe_gateways(probed.clone(), health.clone(), notify.clone(), settings.gateway_lease));
    let mut fed = Federation {
        ctx,
        settings,
        local,
        notify,
        peers: BTreeMap::new(),
        in_sync: Default::default(),
        vips: None,
        quarantine: None,
        roots: None,
        local_view: None,
        health,
        probed,
        east_west_pace: EAST_WEST_PACE,
        east_west_shards: None,
        wake: None,
        last_plan: None,
        pruned: None,
    };
    tokio::select! {
        _ = shutdown => {}
        _ = fed.run() => {}
    }
    probes.abort();
}

impl Federation {
    async fn run(&mut self) {
        self.local.ready().await;
        let mut failures = 0u32;
        loop {
            match self.pass().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "federation pass failed");
                    tokio::time::sleep(crate::error::backoff(failures)).await;
                    continue;
                }
            }
            let recheck =
                self.wake.take().map_or(RECHECK, |at| at.saturating_duration_since(Instant::now()).min(RECHECK));
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(recheck) => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
        }
    }

    /// The MeshControlPlane federation works for: the oldest one (one mesh per cluster).
    fn mesh(&self) -> Option<Arc<MeshControlPlane>> {
        let mut all = self.local.meshes.state();
        all.sort_by_key(|m| (m.metadata.creation_timestamp.clone().map(|t| t.0), m.name_any()));
        all.into_iter().find(|m| m.metadata.deletion_timestamp.is_none())
    }

    async fn pass(&mut self) -> Result<(), ApplyError> {
        let Some(mcp) = self.mesh() else {
            self.peers.clear();
            return Ok(());
        };
        let namespace = mcp.spec.namespace.clone();
        let started = Instant::now();
        // Read before the Secrets are: an event after this cuts a long write short.
        let secret_events = self.local.secret_events.load(Ordering::Relaxed);
        let refused = self.sync_peers(&mcp, &namespace).await;
        let pending: Vec<String> =
            self.peers.iter().filter(|(_, p)| p.state.borrow().view.is_none()).map(|(c, _)| c.clone()).collect();

        // What the peers export, from their last complete views, without the gateways whose
        // health lease ran out.
        let views: Vec<Arc<generate::Peer>> =
            self.peers.values().filter_map(|p| p.state.borrow().view.clone()).collect();
        let addresses: BTreeSet<String> = views.iter().flat_map(|v| v.gateways.iter().cloned()).collect();
        let withdrawn = {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            health.retain(&addresses);
            health.withdrawn(Instant::now())
        };
        *self.probed.lock().unwrap_or_else(|e| e.into_inner()) = addresses;
        let suffix = mcp.spec.multi_cluster.as_ref().and_then(|m| m.global_domain_suffix.clone());
        let suffix = suffix.as_deref().unwrap_or(DEFAULT_SUFFIX);
        let (plan, plan_id) = self.plan(views, &withdrawn, suffix);
        let planned = started.elapsed();

        // A user's own ServiceEntry for a host, or an object of ours' name not made by us, is
        // left alone and reported.
        let conflicts = self.conflicts(&plan, &namespace, &mcp.name_any());
        let suffix_conflict = self.suffix_rule_conflict(&namespace, &mcp.name_any(), suffix);
        let hosts: BTreeSet<String> = plan.keys().filter(|h| !conflicts.contains(*h)).cloned().collect();
        // Objects made from a peer not read yet in this process (just started, or unreachable
        // since the start) are left exactly as they are: withdrawing them would make a restart
        // fail every cross-cluster request until the peer answers.
        let unknown: BTreeSet<&str> =
            self.peers.iter().filter(|(_, p)| p.state.borrow().view.is_none()).map(|(c, _)| c.as_str()).collect();
        let frozen = self.frozen(&namespace, &mcp.name_any(), &unknown);
        let keep: BTreeSet<String> = hosts.union(&frozen).cloned().collect();
        let checked = started.elapsed();
        let vips = self.vips(&namespace, &mcp, &keep).await?;
        let vips_done = started.elapsed();

        let target = Target {
            namespace: namespace.clone(),
            mesh: mcp.name_any(),
            owner: serde_json::to_value(mcp.controller_owner_ref(&())).unwrap_or_default(),
        };
        let mut writes: Vec<Desired> = Vec::new();
        let (se, dr) = (service_entries(), destination_rules());
        let made_for = format!("{namespace}/{}/{}", target.mesh, mcp.uid().unwrap_or_default());
        if self.in_sync.0 != made_for {
            self.in_sync = (made_for, HashMap::new());
        }
        // Taken after the last fallible step before the comparison: what is taken is compared
        // in this pass (and what changes from here on, in the next).
        let changed = Changed::take(&self.local.changed);
        // Taken with it: a pass that ends early leaves None, and the next prune looks at all.
        let pruned = self.pruned.take();
        self.in_sync.1.retain(|host, _| hosts.contains(host) && !frozen.contains(host) && !changed.contains(host));
        for host in hosts.difference(&frozen) {
            let (Some(h), Some(vip)) = (plan.get(host), vips.assigned.get(host)) else {
                continue;
            };
            if let Some(m) = self.in_sync.1.get_mut(host)
                && m.vip == *vip
                && (m.plan == plan_id || m.host == *h)
            {
                m.plan = plan_id;
                continue;
            }
            let live = [
                live(&self.local.service_entries, &se, &namespace, host),
                live(&self.local.destination_rules, &dr, &namespace, host),
            ];
            let mut equal = true;
            for ((resource, body), live) in [
                (se.clone(), Some(generate::service_entry(h, *vip, &target))),
                (dr.clone(), generate::destination_rule(h, &target)),
            ]
            .into_iter()
            .zip(live)
            {
                // A host without subsets has no rule of its own (one the host had is pruned).
                let Some(body) = body else { continue };
                if needs_write(live.as_deref(), &body) {
                    equal = false;
                    writes.push(Desired { resource, namespaced: true, name: host.clone(), body });
                }
            }
            if equal {
                self.in_sync.1.insert(host.clone(), InSync { host: h.clone(), plan: plan_id, vip: *vip });
            } else {
                self.in_sync.1.remove(host);
            }
        }
        // The rule for every `.<suffix>` host, while there is any: ours unless the user wrote one.
        let mut keep_rules: BTreeSet<String> = hosts
            .iter()
            .filter(|h| plan.get(*h).is_some_and(GlobalHost::has_own_rule))
            .chain(&frozen)
            .cloned()
            .collect();
        let mut suffix_write = None;
        if !keep.is_empty() && !suffix_conflict {
            let name = generate::suffix_destination_rule_name(suffix);
            let body = generate::suffix_destination_rule(suffix, &target);
            if needs_write(live(&self.local.destination_rules, &dr, &namespace, &name).as_deref(), &body) {
                suffix_write = Some(Desired { resource: dr.clone(), namespaced: true, name: name.clone(), body });
            }
            keep_rules.insert(name);
        }
        let written = writes.len() + usize::from(suffix_write.is_some());
        let compared = started.elapsed();
        let applier = Applier::new(self.ctx.client.clone());
        // First, so that no new host is ever served without mesh mTLS to the gateways, and an
        // operator that wrote a rule for every host (earlier versions) has it before those are pruned.
        if let Some(d) = &suffix_write {
            applier.apply(d, &namespace).await?;
        }
        // Independent objects: written WRITE_CONCURRENCY at a time (a cold start imports
        // thousands), each in one request: `needs_write` compared them with the watched copies.
        // A peer joining while thousands of hosts are written (clusters joined one after the
        // other) stops the writing: the next pass writes each host once with every peer's
        // endpoints, instead of finishing this one and rewriting them all.
        let this = &*self;
        let done = write_until(
            &writes,
            || this.membership_changed(secret_events, &pending),
            |d| async { applier.apply(d, &namespace).await.map(drop) },
        )
        .await?;
        if done < writes.len() {
            info!(written = done, left = writes.len() - done, "federation: peers changed; writing again with them");
            self.wake = Some(Instant::now());
            return Ok(());
        }
        let applied = started.elapsed();
        let deleted = self.prune(&namespace, &mcp.name_any(), &keep, &keep_rules, &changed, pruned).await?;
        debug!(?planned, ?checked, ?vips_done, ?compared, ?applied, pruned = ?started.elapsed(), written, "federation pass timing");
        self.federate_roots(&namespace, &mcp).await?;
        self.east_west(&namespace, &mcp, &target).await?;
        if written > 0 || deleted > 0 {
            info!(written, deleted, hosts = hosts.len(), "federation: .global objects updated");
        }
        let suffix_conflict = suffix_conflict.then(|| format!("*.{suffix}"));
        let overrides = self.tls_overrides(&plan, &mcp.name_any());
        let found = Found { conflicts: &conflicts, suffix_conflict: suffix_conflict.as_deref(), overrides: &overrides };
        self.write_status(&mcp, &plan, &found, refused, &withdrawn).await
    }

    /// Starts, restarts (new credentials) and removes peer watches to match the remote Secrets
    /// of `namespace`. Returns the cluster keys that cannot be used.
    async fn sync_peers(&mut self, mcp: &MeshControlPlane, namespace: &str) -> Vec<Refused> {
        let local_cluster = mcp.spec.multi_cluster.as_ref().and_then(|m| m.cluster_name.clone());
        let mut secrets: Vec<Arc<Secret>> = self.local.secrets.iter().flat_map(Store::state).collect();
        secrets.retain(|s| s.namespace().as_deref() == Some(namespace));
        secrets.sort_by_key(|s| s.name_any());
        secrets.dedup_by_key(|s| s.name_any());
        let mut wanted: BTreeMap<String, (String, PeerCredentials)> = BTreeMap::new();
        let mut refused = Vec::new();
        for secret in &secrets {
            let secret_ref = format!("{namespace}/{}", secret.name_any());
            let data: BTreeMap<String, Vec<u8>> =
                secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
            for parsed in credentials::parse(&data) {
                match parsed {
                    Ok(c) if Some(&c.cluster) == local_cluster.as_ref() => {}
                    Ok(c) if wanted.contains_key(&c.cluster) => refused.push(Refused {
                        message: format!("cluster {} is already registered by {}", c.cluster, wanted[&c.cluster].0),
                        cluster: c.cluster,
                        secret: secret_ref.clone(),
                    }),
                    Ok(c) => {
                        wanted.insert(c.cluster.clone(), (secret_ref.clone(), c));
                    }
                    Err((key, e)) => {
                        let cluster = if key.is_empty() { secret.name_any() } else { key };
                        refused.push(Refused { cluster, secret: secret_ref.clone(), message: e.to_string() });
                    }
                }
            }
        }
        // Removed Secrets: keep the entries through the grace period, then forget the peer.
        let now = Instant::now();
        let grace = self.settings.removal_grace;
        self.peers.retain(|cluster, p| {
            if wanted.contains_key(cluster) {
                p.removing_since = None;
                return true;
            }
            let since = *p.removing_since.get_or_insert(now);
            let keep = now.duration_since(since) < grace;
            if !keep {
                info!(cluster, "remote cluster removed");
            }
            keep
        });
        for (cluster, (secret, creds)) in wanted {
            let current = self.peers.get(&cluster);
            if current.is_some_and(|p| p.fingerprint == creds.fingerprint) {
                if let Some(p) = self.peers.get_mut(&cluster) {
                    p.secret = secret;
                }
                continue;
            }
            let previous = current.map(|p| p.state.borrow().clone());
            let client = match remote::client(&creds).await {
                Ok(c) => c,
                Err(message) => {
                    refused.push(Refused { cluster, secret, message });
                    continue;
                }
            };
            info!(cluster, secret, restart = previous.is_some(), "watching remote cluster");
            let (tx, rx) = tokio::sync::watch::channel(PeerState::pending(previous.as_ref()));
            let task = tokio::spawn(peer::run(cluster.clone(), client, tx, self.notify.clone()));
            let handle = PeerHandle {
                secret,
                fingerprint: creds.fingerprint,
                expires: creds.expires,
                task,
                state: rx,
                removing_since: None,
            };
            self.peers.insert(cluster, handle);
        }
        refused
    }

    /// The hosts `views` make (without the gateways in `withdrawn`) and the plan's id: the
    /// last plan while no view changed since (a pass woken by the watch of what it wrote
    /// itself, say, does not plan thousands of hosts again).
    fn plan(
        &mut self,
        views: Vec<Arc<generate::Peer>>,
        withdrawn: &BTreeSet<String>,
        suffix: &str,
    ) -> (Arc<BTreeMap<String, GlobalHost>>, u64) {
        if let Some(last) = &self.last_plan
            && last.suffix == suffix
            && last.withdrawn == *withdrawn
            && last.views.len() == views.len()
            && last.views.iter().zip(&views).all(|(a, b)| Arc::ptr_eq(a, b))
        {
            return (last.plan.clone(), last.id);
        }
        let id = self.last_plan.as_ref().map_or(1, |l| l.id + 1);
        let mut peers = views.clone();
        for v in &mut peers {
            let w: BTreeSet<String> = v.gateways.iter().filter(|g| withdrawn.contains(*g)).cloned().collect();
            if w != v.withdrawn {
                Arc::make_mut(v).withdrawn = w;
            }
        }
        let plan = Arc::new(generate::plan(&peers, suffix));
        let last = LastPlan { views, withdrawn: withdrawn.clone(), suffix: suffix.to_string(), plan: plan.clone(), id };
        self.last_plan = Some(last);
        (plan, id)
    }

    /// Whether a remote Secret changed since the pass read `secret_events`, or a peer that was
    /// still listing (`pending`) has completed its first view.
    fn membership_changed(&self, secret_events: u64, pending: &[String]) -> bool {
        self.local.secret_events.load(Ordering::Relaxed) != secret_events
            || pending.iter().any(|c| self.peers.get(c).is_some_and(|p| p.state.borrow().view.is_some()))
    }

    /// Hosts the operator must not write: a ServiceEntry not generated by it names the host,
    /// or holds the name the generated one would have.
    fn conflicts(&self, plan: &BTreeMap<String, GlobalHost>, namespace: &str, mesh: &str) -> BTreeSet<String> {
        let ours = |o: &DynamicObject| o.labels().get(GENERATED_LABEL).is_some_and(|v| v == mesh);
        let mut out = BTreeSet::new();
        for se in self.local.service_entries.state().iter().filter(|o| !ours(o)) {
            let hosts = se.data["spec"]["hosts"].as_array().into_iter().flatten().filter_map(|h| h.as_str());
            out.extend(hosts.filter(|h| plan.contains_key(*h)).map(String::from));
            if se.namespace().as_deref() == Some(namespace) && plan.contains_key(&se.name_any()) {
                out.insert(se.name_any());
            }
        }
        for dr in self.local.destination_rules.state().iter().filter(|o| !ours(o)) {
            // Only a host with subsets has a rule of its own that the name would be taken from.
            let ours_needed = plan.get(&dr.name_any()).is_some_and(GlobalHost::has_own_rule);
            if dr.namespace().as_deref() == Some(namespace) && ours_needed {
                out.insert(dr.name_any());
            }
        }
        out
    }

    /// Users' DestinationRules (any namespace) setting a TLS mode other than `ISTIO_MUTUAL`
    /// for hosts of `plan`, with the clusters whose hosts they cover.
    fn tls_overrides(&self, plan: &BTreeMap<String, GlobalHost>, mesh: &str) -> Vec<(String, BTreeSet<String>)> {
        let rules = self.local.destination_rules.state();
        let theirs = rules.iter().filter(|o| o.labels().get(GENERATED_LABEL).is_none_or(|v| v != mesh));
        let rules: Vec<(&str, &str, &serde_json::Value)> = theirs
            .filter_map(|o| Some((o.metadata.namespace.as_deref()?, o.metadata.name.as_deref()?, &o.data["spec"])))
            .collect();
        crate::federation::overrides::tls_overrides(rules, plan)
    }

    /// Whether a DestinationRule not made by us, in `namespace`, is for every `.<suffix>` host or
    /// holds the name of ours: it is left alone (two rules for one host in one namespace would
    /// leave which one applies to the order they were read in) and reported.
    fn suffix_rule_conflict(&self, namespace: &str, mesh: &str, suffix: &str) -> bool {
        let (name, host) = (generate::suffix_destination_rule_name(suffix), format!("*.{suffix}"));
        self.local.destination_rules.state().iter().any(|dr| {
            dr.namespace().as_deref() == Some(namespace)
                && dr.labels().get(GENERATED_LABEL).is_none_or(|v| v != mesh)
                && (dr.name_any() == name || dr.data["spec"]["host"].as_str() == Some(host.as_str()))
        })
    }

    /// Generated ServiceEntries made (in part) from a peer in `unknown`, by their annotation.
    fn frozen(&self, namespace: &str, mesh: &str, unknown: &BTreeSet<&str>) -> BTreeSet<String> {
        if unknown.is_empty() {
            return BTreeSet::new();
        }
        self.generated_service_entries(namespace, mesh)
            .filter(|o| {
                let sources = o.annotations().get(SOURCE_CLUSTERS_ANNOTATION).map(String::as_str).unwrap_or_default();
                sources.split(',').any(|c| unknown.contains(c))
            })
            .map(|o| o.name_any())
            .collect()
    }

    /// The VIP table holding exactly `hosts`. A new assignment is recorded by the ServiceEntry
    /// that uses it; a release is persisted (the quarantine ConfigMap) before the pass deletes
    /// the released host's objects.
    async fn vips(
        &mut self,
        namespace: &str,
        mcp: &MeshControlPlane,
        hosts: &BTreeSet<String>,
    ) -> Result<Arc<VipTable>, ApplyError> {
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), namespace);
        let what = || format!("ConfigMap/{VIP_CONFIGMAP}");
        let mut table = match self.vips.take() {
            Some(t) => t,
            None => {
                let cm = api.get_opt(VIP_CONFIGMAP).await.map_err(ApplyError::during("get", what()))?;
                let text = cm.and_then(|c| c.data?.get("vips.json").cloned());
                let mut table = match text.map(|t| serde_json::from_str::<VipTable>(&t)) {
                    Some(Ok(t)) => {
                        // A table of an earlier version holds every assignment: rewritten once
                        // as the quarantine alone.
                        self.quarantine = t.assigned.is_empty().then(|| t.released.clone());
                        t
                    }
                    Some(Err(e)) => {
                        // Starting over is safe (assignments come back from the objects);
                        // losing the quarantine is the cost, so say so.
                        warn!(error = %e, "virtual IP quarantine unreadable; starting it over");
                        VipTable::default()
                    }
                    None => VipTable::default(),
                };
                table.recover(self.recorded_vips(namespace, &mcp.name_any()));
                Arc::new(table)
            }
        };
        // Shared with the previous pass only until it ended: no copy is made here.
        Arc::make_mut(&mut table).assign(hosts, jiff::Timestamp::now().as_second());
        if self.quarantine.as_ref() != Some(&table.released) {
            let body = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": VIP_CONFIGMAP,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": crate::render::MANAGED_BY, GENERATED_LABEL: mcp.name_any()},
                    "ownerReferences": [mcp.controller_owner_ref(&())],
                },
                "data": {"vips.json": serde_json::to_string(&table.quarantine()).unwrap_or_default()},
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(VIP_CONFIGMAP, &params, &Patch::Apply(&body))
                .await
                .map_err(ApplyError::during("apply", what()))?;
            self.quarantine = Some(table.released.clone());
        }
        self.vips = Some(table.clone());
        Ok(table)
    }

    /// (host, address) of every generated ServiceEntry: the assignments they record.
    fn recorded_vips(&self, namespace: &str, mesh: &str) -> Vec<(String, std::net::Ipv4Addr)> {
        self.generated_service_entries(namespace, mesh)
            .filter_map(|o| Some((o.name_any(), o.data["spec"]["addresses"][0].as_str()?.parse().ok()?)))
            .collect()
    }

    /// The watched ServiceEntries this operator generated for `mesh` in `namespace`.
    fn generated_service_entries<'a>(
        &self,
        namespace: &'a str,
        mesh: &'a str,
    ) -> impl Iterator<Item = Arc<DynamicObject>> + 'a {
        self.local.service_entries.state().into_iter().filter(move |o| {
            o.namespace().as_deref() == Some(namespace) && o.labels().get(GENERATED_LABEL).is_some_and(|v| v == mesh)
        })
    }

    /// Opens this cluster's east-west gateway to what it exports (a generated Gateway), when the
    /// mesh runs one.
    async fn east_west(&mut self, namespace: &str, mcp: &MeshControlPlane, target: &Target) -> Result<(), ApplyError> {
        let (_, view) = self.local_view.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::watch::channel(PeerState::pending(None));
            let task = tokio::spawn(peer::run("local".into(), self.ctx.client.clone(), tx, self.notify.clone()));
            (task, rx)
        });
        let state = view.borrow().clone();
        if state.sync != Sync::Synced {
            return Ok(());
        }
        let enabled = mcp.spec.components.east_west_gateway.as_ref().is_some_and(|g| g.enabled == Some(true));
        let exports = state.view.map(|v| v.services.clone()).unwrap_or_default();
        let wanted = if enabled {
            generate::east_west_gateways(&exports, target, self.settings.east_west_shard_hosts)
        } else {
            Vec::new()
        };
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", "Gateway"));
        let api = Api::<DynamicObject>::namespaced_with(self.ctx.client.clone(), namespace, &resource);
        if !wanted.is_empty()
            && let Some(wait) = self.east_west_pace.wait(Instant::now())
        {
            let at = Instant::now() + wait;
            self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
            return Ok(());
        }
        // The shards there are: read once, then known from what this controller wrote.
        let mesh = mcp.name_any();
        let mut present = match self.east_west_shards.take() {
            Some((ns, known)) if ns == namespace => known,
            _ => {
                let ours = ListParams::default().labels(&format!("{GENERATED_LABEL}={mesh}"));
                let live = api.list_metadata(&ours).await.map_err(ApplyError::during("list", "Gateways"))?;
                live.items
                    .into_iter()
                    .map(|g| g.name_any())
                    .filter(|n| generate::is_east_west_gateway_name(n))
                    .collect()
            }
        };
        let started = Instant::now();
        let mut wrote = false;
        for (name, body) in &wanted {
            let desired =
                Desired { resource: resource.clone(), namespaced: true, name: name.clone(), body: body.clone() };
            // On an error the shards are read again next time (`east_west_shards` stays None).
            let outcome = Applier::new(self.ctx.client.clone()).ensure(&desired, namespace).await?;
            wrote |= outcome.wrote();
            present.insert(name.clone());
        }
        if wrote {
            self.east_west_pace.record(Instant::now(), started.elapsed());
        }
        // Shards no longer wanted (fewer hosts, or none exported): only ours are deleted.
        let stale: Vec<String> = present.iter().filter(|n| !wanted.iter().any(|(w, _)| w == *n)).cloned().collect();
        for name in stale {
            let what = || format!("Gateway/{name}");
            let live = api.get_metadata_opt(&name).await.map_err(ApplyError::during("get", what()))?;
            if live.is_some_and(|g| g.labels().get(GENERATED_LABEL).is_some_and(|v| *v == mesh)) {
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(ApplyError::during("delete", what())(e)),
                }
            }
            present.remove(&name);
        }
        self.east_west_shards = Some((namespace.to_string(), present));
        Ok(())
    }

    /// Writes every known peer's root to `skein-federated-roots` (the control plane adds them
    /// to the bundle its workloads verify with). A peer keeps its root while it is unreachable
    /// and loses it when it is removed.
    async fn federate_roots(&mut self, namespace: &str, mcp: &MeshControlPlane) -> Result<(), ApplyError> {
        let wanted: BTreeMap<String, String> = self
            .peers
            .iter()
            .filter_map(|(cluster, p)| Some((format!("{cluster}.pem"), p.state.borrow().root.clone()?)))
            .collect();
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), namespace);
        let what = || format!("ConfigMap/{FEDERATED_ROOTS_CONFIGMAP}");
        if self.roots.is_none() {
            let live = api.get_opt(FEDERATED_ROOTS_CONFIGMAP).await.map_err(ApplyError::during("get", what()))?;
            self.roots = Some(live.and_then(|c| c.data).unwrap_or_default());
        }
        if self.roots.as_ref() == Some(&wanted) {
            return Ok(());
        }
        // Apply replaces the data this manager owns, so a removed peer's key goes too.
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": FEDERATED_ROOTS_CONFIGMAP,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": crate::render::MANAGED_BY, GENERATED_LABEL: mcp.name_any()},
                "ownerReferences": [mcp.controller_owner_ref(&())],
            },
            "data": wanted,
        });
        api.patch(FEDERATED_ROOTS_CONFIGMAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(ApplyError::during("apply", what()))?;
        info!(peers = wanted.len(), "federated roots written");
        self.roots = Some(wanted);
        Ok(())
    }

    /// Deletes generated objects no longer wanted: ServiceEntries not named in `entries`,
    /// DestinationRules not named in `rules`. Returns how many.
    ///
    /// When both sets are those of the `last` complete prune (with no pass cut short since)
    /// and the stores did not re-list, only objects in `changed` can be new candidates: the
    /// others are not looked at.
    async fn prune(
        &mut self,
        namespace: &str,
        mesh: &str,
        entries: &BTreeSet<String>,
        rules: &BTreeSet<String>,
        changed: &Changed,
        last: Option<(BTreeSet<String>, BTreeSet<String>)>,
    ) -> Result<usize, ApplyError> {
        let incremental = !changed.all && last.as_ref().is_some_and(|(e, r)| e == entries && r == rules);
        let mut deleted = 0;
        for (resource, store, keep) in [
            (service_entries(), &self.local.service_entries, entries),
            (destination_rules(), &self.local.destination_rules, rules),
        ] {
            let api = Api::<DynamicObject>::namespaced_with(self.ctx.client.clone(), namespace, &resource);
            let candidates: Vec<Arc<DynamicObject>> = if incremental {
                changed.names.iter().filter_map(|n| live(store, &resource, namespace, n)).collect()
            } else {
                store.state()
            };
            for obj in candidates {
                let ours = obj.labels().get(GENERATED_LABEL).is_some_and(|v| v == mesh);
                let name = obj.metadata.name.as_deref().unwrap_or_default();
                if !ours || obj.namespace().as_deref() != Some(namespace) || keep.contains(name) {
                    continue;
                }
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    // `pruned` stays None: the next prune looks at everything again.
                    Err(e) => return Err(ApplyError::during("delete", format!("{}/{name}", resource.kind))(e)),
                }
            }
        }
        self.pruned = match last {
            Some(last) if incremental => Some(last),
            _ => Some((entries.clone(), rules.clone())),
        };
        Ok(deleted)
    }

    async fn write_status(
        &self,
        mcp: &MeshControlPlane,
        plan: &BTreeMap<String, GlobalHost>,
        found: &Found<'_>,
        refused: Vec<Refused>,
        withdrawn: &BTreeSet<String>,
    ) -> Result<(), ApplyError> {
        let previous = mcp.status.as_ref().map(|s| s.remote_clusters.clone()).unwrap_or_default();
        let mut out: Vec<RemoteClusterStatus> = Vec::new();
        let now = jiff::Timestamp::now();
        for (cluster, p) in &self.peers {
            let state = p.state.borrow().clone();
            let refusal = refused.iter().find(|r| &r.cluster == cluster);
            let (ok, reason, message) = match (&state.sync, p.removing_since) {
                // The Secret is still there but no longer usable: say why, not just "removing".
                (_, Some(_)) if refusal.is_some() => (
                    false,
                    "InvalidSecret",
                    format!(
                        "{}; the entries made with the previous credentials are withdrawn after the grace period",
                        refusal.map(|r| r.message.as_str()).unwrap_or_default()
                    ),
                ),
                (_, Some(_)) => (false, "Removing", "the remote Secret was deleted; entries are withdrawn after the grace period".to_string()),
                (Sync::Pending, _) => (false, "Pending", "listing the peer's Services".to_string()),
                (Sync::Failed(r, m), _) => (false, *r, format!("{m}; its last known Services stay imported")),
                (Sync::Synced, _) if state.view.as_ref().is_some_and(|v| v.gateways.is_empty()) => {
                    (false, "NoGateway", "the peer has no east-west gateway address (Service labelled istio=eastwestgateway with a LoadBalancer address)".to_string())
                }
                (Sync::Synced, _) if p.expires.is_some_and(|e| e <= now) => (false, "CredentialsExpired", "the remote Secret's credentials have expired".to_string()),
                (Sync::Synced, _) if state.view.as_ref().is_some_and(|v| v.gateways.iter().any(|g| withdrawn.contains(g))) => {
                    let dead: Vec<&str> = state.view.iter().flat_map(|v| &v.gateways).filter(|g| withdrawn.contains(*g)).map(String::as_str).collect();
                    (false, "GatewayUnhealthy", format!("east-west gateway {} not ready (port {PROBE_PORT}) for longer than the lease: its endpoints are withdrawn until it answers", dead.join(", ")))
                }
                (Sync::Synced, _) => (true, "Synced", "watching the peer".to_string()),
            };
            let view = state.view.as_ref();
            let mut conflicted: Vec<String> = found
                .conflicts
                .iter()
                .filter_map(|h| plan.get(h))
                .filter(|h| h.clusters().contains(cluster.as_str()))
                .map(|h| h.host.clone())
                .chain(found.suffix_conflict.map(String::from))
                .collect();
            conflicted.sort();
            let tls_overrides: Vec<String> =
                found.overrides.iter().filter(|(_, c)| c.contains(cluster)).map(|(line, _)| line.clone()).collect();
            out.push(RemoteClusterStatus {
                name: cluster.clone(),
                secret: p.secret.clone(),
                network: view.and_then(|v| v.network.clone()),
                conditions: vec![condition(&previous, cluster, ok, reason, &message, mcp.metadata.generation)],
                last_sync_time: state.last_sync.map(Time),
                exported_services: view.map_or(0, |v| v.services.len() as i32),
                gateway_addresses: view.map(|v| v.gateways.clone()).unwrap_or_default(),
                trust_bundle_fingerprint: state.root.as_deref().map(crate::federation::trust::fingerprint),
                credentials_expire: p.expires.map(Time),
                conflicts: conflicted,
                tls_overrides,
            });
        }
        for r in refused {
            if out.iter().any(|o| o.name == r.cluster) {
                continue;
            }
            out.push(RemoteClusterStatus {
                conditions: vec![condition(
                    &previous,
                    &r.cluster,
                    false,
                    "InvalidSecret",
                    &r.message,
                    mcp.metadata.generation,
                )],
                name: r.cluster,
                secret: r.secret,
                ..Default::default()
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        if out == previous {
            return Ok(());
        }
        let api: Api<MeshControlPlane> = Api::all(self.ctx.client.clone());
        api.patch_status(
            &mcp.name_any(),
            &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
            &Patch::Merge(json!({"status": {"remoteClusters": out}})),
        )
        .await
        .map_err(ApplyError::during("patch status of", format!("MeshControlPlane/{}", mcp.name_any())))?;
        self.ctx.metrics.status_written();
        Ok(())
    }
}

/// How often each peer gateway's readiness is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Time one probe may take (connect, request, status line).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes every address in `probed` each [`PROBE_INTERVAL`], records the results in `health`
/// and wakes the controller when the withdrawn set changes. Nothing runs with a zero lease.
async fn probe_gateways(
    probed: Arc<std::sync::Mutex<BTreeSet<String>>>,
    health: Arc<std::sync::Mutex<GatewayHealth>>,
    notify: Arc<Notify>,
    lease: Duration,
) {
    if lease.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets: Vec<String> = probed.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let results: Vec<(String, bool)> = futures::stream::iter(targets)
            .map(|gw| async move {
                let ready = tokio::time::timeout(PROBE_TIMEOUT, probe(&gw)).await.unwrap_or(false);
                (gw, ready)
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let now = Instant::now();
        let mut h = health.lock().unwrap_or_else(|e| e.into_inner());
        let before = h.withdrawn(now);
        for (gw, ready) in &results {
            h.record(gw, *ready, now);
        }
        // A lease also runs out between probes' answers: compared at the same instant.
        let after = h.withdrawn(now);
        drop(h);
        if before != after {
            info!(withdrawn = ?after, "federation: peer gateway health changed");
            notify.notify_one();
        }
    }
}

/// One readiness probe: `GET /healthz/ready` on the gateway's status port, ready on a 2xx.
async fn probe(gateway: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = if gateway.contains(':') { format!("[{gateway}]") } else { gateway.to_string() };
    let Ok(mut s) = tokio::net::TcpStream::connect(format!("{host}:{PROBE_PORT}")).await else { return false };
    let req = format!("GET {PROBE_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    // The status line is all that matters; a bounded read.
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() {
        match s.read(&mut head[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if head[..n].contains(&b'\n') {
            break;
        }
    }
    ready_response(&head[..n])
}

/// The watched copy of generated object `name`.
fn live(
    store: &Store<DynamicObject>,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
) -> Option<Arc<DynamicObject>> {
    store.get(&reflector::ObjectRef::new_with(name, resource.clone()).within(namespace))
}

/// Whether `body` must be applied: the watched copy `live` does not already hold it. A pass
/// over thousands of converged hosts so makes no apiserver call at all (a copy the watch has
/// not caught up with costs one redundant apply, which compares before writing).
/// Writes `writes` with `apply`, [`WRITE_CONCURRENCY`] at a time, until `stop` says to (it is
/// asked before each write starts; those started finish). Returns how many were written: fewer
/// than `writes.len()` when stopped. The first failure ends it.
async fn write_until<'a, Fut>(
    writes: &'a [Desired],
    stop: impl Fn() -> bool,
    apply: impl FnMut(&'a Desired) -> Fut,
) -> Result<usize, ApplyError>
where
    Fut: std::future::Future<Output = Result<(), ApplyError>>,
{
    let written = futures::stream::iter(writes)
        .take_while(|_| futures::future::ready(!stop()))
        .map(apply)
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(written.len())
}

fn needs_write(live: Option<&DynamicObject>, body: &serde_json::Value) -> bool {
    let live = live.and_then(|o| serde_json::to_value(o).ok());
    !live.is_some_and(|live| crate::kube::apply::is_subset(body, &live))
}

/// The `Synced` condition of `cluster`, keeping `lastTransitionTime` while the status holds.
fn condition(
    previous: &[RemoteClusterStatus],
    cluster: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let before =
        previous.iter().find(|p| p.name == cluster).and_then(|p| p.conditions.iter().find(|c| c.type_ == "Synced"));
    let last_transition_time = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(jiff::Timestamp::now()),
    };
    Condition {
        type_: "Synced".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;

    fn writes(n: usize) -> Vec<Desired> {
        (0..n)
            .map(|i| Desired {
                resource: service_entries(),
                namespaced: true,
                name: format!("s{i}.default.global"),
                body: json!({}),
            })
            .collect()
    }

    /// A pass writing thousands of hosts stops soon after a peer joins (what the bench log
    /// shows as a cut-off pass), and otherwise writes every one.
    #[tokio::test]
    async fn a_long_write_stops_once_told_and_finishes_what_it_started() {
        let all = writes(1000);
        let (started, stopped) = (AtomicUsize::new(0), AtomicBool::new(false));
        let apply = |_: &Desired| {
            // The 100th write to start is when a peer joins.
            if started.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                stopped.store(true, Ordering::SeqCst);
            }
            async {
                tokio::task::yield_now().await;
                Ok(())
            }
        };
        let done = write_until(&all, || stopped.load(Ordering::SeqCst), apply).await.unwrap();
        assert!((100..100 + WRITE_CONCURRENCY).contains(&done), "stopped after {done} of 1000");
        assert_eq!(done, started.load(Ordering::SeqCst), "every write started was finished and counted");

        let done = write_until(&all, || false, |_| async { Ok(()) }).await.unwrap();
        assert_eq!(done, 1000);
        assert_eq!(write_until(&[], || false, |_| async { Ok(()) }).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_writing_with_its_error() {
        let all = writes(50);
        let started = AtomicUsize::new(0);
        let apply = |d: &Desired| {
            let n = started.fetch_add(1, Ordering::SeqCst);
            let name = d.name.clone();
            async move {
                if n == 20 {
                    let status: kube::core::Status =
                        serde_json::from_value(json!({"code": 500, "message": "etcd timeout"})).unwrap();
                    return Err(ApplyError { action: "apply", what: name, source: kube::Error::Api(Box::new(status)) });
                }
                Ok(())
            }
        };
        let err = write_until(&all, || false, apply).await.unwrap_err();
        assert!(err.to_string().contains("s20.default.global"), "{err}");
        assert!(started.load(Ordering::SeqCst) < 50, "no write started after the failure was seen");
    }
}
