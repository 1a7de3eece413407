//! The `MeshControlPlane` controller: resolves the release, makes sure the CA exists, applies the
//! rendered objects, prunes what is no longer wanted and reports status and Events.
//!
//! Level-based and idempotent: every pass recomputes everything from the spec and the cluster,
//! and a pass over a converged installation writes nothing.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::ApiResource,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        finalizer::{self, Event},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use semver::Version;
use serde_json::json;
use skein_api::UpgradeStatus;
use skein_api::{
    ComponentStatus, MeshControlPlane, MeshControlPlaneStatus,
    conditions::{ConditionType, Reason},
};
use tracing::{info, warn};

use crate::{
    context::Context,
    error::{Error, SpecError, backoff},
    kube::{
        apply::{Applier, ApplyError, Outcome},
        conditions::{ConditionUpdate, component_status, has_condition, pod_problem, upsert_condition},
    },
    pki,
    render::{self, CONTROL_PLANE, Desired, Facts, Gateway, MANAGED_BY, OWNER_LABEL, meta::MANAGED_BY_LABEL},
    upgrade::{
        catalog::Release,
        migrate,
        plan::{self, Plan, phase},
        skew, window,
    },
};

mod revisions;

/// The one finalizer the operator puts on a `MeshControlPlane`.
pub const FINALIZER: &str = "mesh.skein.dev/cleanup";

/// How often a converged installation is re-checked without any event (drift the watches
/// missed). Events drive everything else.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check interval while components are still becoming ready.
const PENDING_RECHECK: Duration = Duration::from_secs(5);
/// Re-check interval while an upgrade moves (new revision starting, batches rolling).
const UPGRADE_RECHECK: Duration = Duration::from_secs(3);

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs the `MeshControlPlane` controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    // Children are watched by label only, so the operator caches its own objects and not every
    // Secret or Deployment of the cluster. `watches` with the owner label rather than `owns`:
    // `owns` would key a namespaced child's owner as <namespace>/<name>, a second key for the
    // same cluster-scoped MeshControlPlane, and two reconciles of one object could then run at
    // once.
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let mcps: Api<MeshControlPlane> = Api::all(client.clone());
    let controller = Controller::new(mcps, watcher::Config::default());
    // Injected pods decide how far a migration is and when an unused revision's grace period
    // starts: while a mesh moves (or keeps an inactive revision), a change of one re-checks it.
    // A steady mesh reacts only to pods that come or go (its per-revision proxy counts), not
    // to every status update of a running pod. Not debounced: a debounce restarts its
    // wait on every event, and a rollout's steady stream of pod events then held the
    // migration back (10 workloads took 10x `kubectl rollout restart`); the scheduler already
    // runs at most one reconcile per object and queues one more.
    // One watch of the injected pods both wakes the meshes and is the cache reconciles read
    // them from (`revisions::injected_pods`): no LIST of every injected pod per reconcile.
    let meshes = controller.store();
    let (pods, writer) = reflector::store::<Pod>();
    ctx.set_injected_pods(pods);
    let injected = watcher::Config::default().labels(revisions::INJECTED_SELECTOR);
    let pod_watch = watcher(Api::<Pod>::all(client.clone()), injected).modify(revisions::slim_pod);
    let pod_events =
        reflector::reflector(writer, pod_watch.default_backoff()).touched_objects().filter_map(move |pod| {
            let wake = match pod {
                // Outside an upgrade only a pod that comes or goes changes a proxy count: a
                // Running pod's status updates are ignored.
                Ok(pod) => {
                    let comes_or_goes = pod.metadata.deletion_timestamp.is_some()
                        || pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running");
                    comes_or_goes || meshes.state().iter().any(|m| pods_matter(m))
                }
                Err(e) => {
                    warn!(error = %e, "watching injected pods");
                    false
                }
            };
            std::future::ready(wake.then_some(()))
        });
    let mut controller = controller
        .reconcile_all_on(pod_events)
        .watches(Api::<ClusterRoleBinding>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<MutatingWebhookConfiguration>::all(client.clone()), owned.clone(), owner_of);
    // Namespaced children: in each mesh namespace where the operator has a Role, or
    // cluster-wide for an operator with cluster-wide rights.
    let scopes: Vec<Option<&str>> = match ctx.scope.namespaces() {
        Some(set) => set.iter().map(|n| Some(n.as_str())).collect(),
        None => vec![None],
    };
    for ns in scopes {
        controller = controller
            .watches(scoped::<Deployment>(&client, ns), owned.clone(), owner_of)
            .watches(scoped::<Service>(&client, ns), owned.clone(), owner_of)
            .watches(scoped::<ServiceAccount>(&client, ns), owned.clone(), owner_of)
            .watches(scoped::<ConfigMap>(&client, ns), owned.clone(), owner_of)
            .watches(scoped::<Secret>(&client, ns), owned.clone(), owner_of)
            .watches(scoped::<PodDisruptionBudget>(&client, ns), owned.clone(), owner_of)
            .watches(scoped::<HorizontalPodAutoscaler>(&client, ns), owned.clone(), owner_of)
            .watches(scoped::<Role>(&client, ns), owned.clone(), owner_of)
            .watches(scoped::<RoleBinding>(&client, ns), owned.clone(), owner_of);
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// `Api` of `K` in `namespace`, or cluster-wide for `None`.
fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Whether a mesh's reconciles depend on pod events now: an upgrade is moving (or rolling
/// back), or an inactive revision waits for its last pods to go.
fn pods_matter(m: &MeshControlPlane) -> bool {
    let Some(s) = &m.status else { return false };
    let moving = s.upgrade.as_ref().is_some_and(|u| {
        u.phase == phase::WAITING || u.phase == phase::MIGRATING || (u.phase == phase::ROLLED_BACK && u.remaining > 0)
    });
    moving || s.revisions.len() > 1
}

/// The `MeshControlPlane` a managed object belongs to (cluster-scoped, so no namespace).
fn owner_of<K: Resource>(obj: K) -> Option<ObjectRef<MeshControlPlane>> {
    obj.labels().get(OWNER_LABEL).map(|name| ObjectRef::new(name))
}

/// Reconciles one `MeshControlPlane`.
pub async fn reconcile(mcp: Arc<MeshControlPlane>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let name = mcp.name_any();
    let api: Api<MeshControlPlane> = Api::all(ctx.client.clone());
    let result = finalizer::finalizer(&api, FINALIZER, mcp, |event| async {
        match event {
            Event::Apply(mcp) => apply(&mcp, &ctx).await,
            Event::Cleanup(mcp) => cleanup(&mcp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.succeeded(&name);
    }
    result
}

/// The one place a failed reconcile is judged: counted under its kind, and retried with
/// back-off (a spec error never gets here: it becomes a condition in [`apply`]).
pub fn error_policy(mcp: Arc<MeshControlPlane>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(err.metric_label());
    let delay = backoff(ctx.failed(&mcp.name_any()));
    warn!(name = %mcp.name_any(), error = %err, retry_in = ?delay, "reconcile error");
    Action::requeue(delay)
}

/// Installs what the spec asks for. A spec the operator cannot act on is reported as a
/// condition (and a Warning Event) and waits for a change; nothing installed is touched.
async fn apply(mcp: &MeshControlPlane, ctx: &Context) -> Result<Action, Error> {
    let previous = mcp.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = mcp.metadata.generation;
    status.channel = Some(mcp.spec.channel.to_string());

    // A new object says Ready=False before anything else, so kstatus (Flux) and Argo CD see it
    // as in progress rather than as a resource without status.
    if !has_condition(&previous.conditions, ConditionType::Ready) {
        set(&mut status, mcp, ConditionType::Ready, false, Reason::Installing, "installation has started".into());
        write_status(mcp, ctx, &previous, status.clone()).await?;
    }
    match install(mcp, ctx, &mut status).await {
        Ok(action) => {
            write_status(mcp, ctx, &previous, status).await?;
            Ok(action)
        }
        Err(Error::InvalidSpec(e)) => refuse(mcp, ctx, &previous, status, e).await,
        Err(e) => Err(e),
    }
}

/// The install steps, recording conditions in `status` as they go.
async fn install(mcp: &MeshControlPlane, ctx: &Context, status: &mut MeshControlPlaneStatus) -> Result<Action, Error> {
    let name = mcp.name_any();
    let ns = render::namespace(mcp).to_string();
    // 1. Which release. An unknown one is refused and nothing installed is touched.
    let release = ctx
        .catalog
        .resolve(mcp.spec.version.as_deref(), mcp.spec.channel)
        .map_err(|e| SpecError { reason: Reason::InvalidVersion, message: e.to_string() })?
        .clone()
        .with_image_overrides(mcp.spec.hub.as_deref(), mcp.spec.tag.as_deref());
    // An end-of-life release keeps running where it runs; it is never installed anew.
    if release.end_of_life && status.version.is_none() {
        let message =
            format!("release {} is end-of-life and cannot be installed; choose a supported version", release.version);
        return Err(SpecError { reason: Reason::EndOfLife, message }.into());
    }

    // The update strategy's free-form fields, checked before anything is written.
    let strategy = &mcp.spec.update_strategy;
    let invalid_strategy = |message| SpecError { reason: Reason::InvalidUpdateStrategy, message };
    let windows = strategy
        .maintenance_windows
        .iter()
        .enumerate()
        .map(|(i, w)| window::Window::parse(w, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid_strategy)?;
    migrate::batch_size(strategy.workload_batch.as_ref(), 1).map_err(invalid_strategy)?;

    // 2. The CA: a bad user Secret is also refused without touching anything.
    check_namespace(mcp, ctx).await?;
    let (ca, issued) = pki::ensure_ca(mcp, ctx).await?;
    if issued == pki::Issued::Root {
        let note = format!("generated the self-signed mesh root CA in Secret {ns}/{}", render::ca_secret_name(mcp));
        ctx.events.normal(&mcp.object_ref(&()), "GeneratedRootCA", "Install", note).await;
    }
    let applier = Applier::guarded(ctx.client.clone(), ctx.drift.clone());
    let mut applied = u64::from(pki::ensure_webhook_cert(mcp, ctx, &applier, &ca).await?);

    // 3. The Istio API CRDs, unless another installation owns them.
    let foreign = ensure_istio_crds(&applier, ctx, &mut applied).await?;
    match foreign.is_empty() {
        true => set(
            status,
            mcp,
            ConditionType::IstioCrdsManaged,
            true,
            Reason::Installed,
            "the Istio API CRDs are installed by Skein".into(),
        ),
        false => set(
            status,
            mcp,
            ConditionType::IstioCrdsManaged,
            false,
            Reason::OwnedByAnother,
            format!("left as they are (not installed by Skein): {}", foreign.join(", ")),
        ),
    }

    // 4. Which revisions run and where the tags point (see `upgrade::plan`).
    let client = &ctx.client;
    let installed = revisions::installed(client, mcp).await?;
    let pods = revisions::injected_pods(ctx).await?;
    let in_use = revisions::in_use(&pods);
    let generation = mcp.metadata.generation;
    let active = status.active_revision.clone().zip(status.version.as_deref().and_then(|v| Version::parse(v).ok()));
    let stalled = status
        .conditions
        .iter()
        .find(|c| {
            c.type_ == ConditionType::Stalled.as_str() && c.status == "True" && c.observed_generation == generation
        })
        .map(|c| (c.reason.clone(), c.message.clone()));
    let moving = active.as_ref().is_some_and(|(_, v)| *v != release.version);
    let installed_versions: Vec<Version> = installed.iter().map(|i| i.version.clone()).collect();
    let eol = |what: &str| {
        format!("release {} is end-of-life and can no longer be {what}; choose a supported version", release.version)
    };
    let refused = if moving && release.end_of_life {
        Some(plan::Flag { reason: Reason::EndOfLife, message: eol("installed") })
    } else if moving {
        skew::check(&release.version, &revisions::proxies(&pods), &installed_versions)
            .map(|message| plan::Flag { reason: Reason::SkewViolation, message })
    } else {
        None
    };
    let now_ts = Timestamp::now();
    // Maintenance windows hold only what the operator would start on its own: a target from
    // the channel or from `vX.Y-latest`, never a pinned version.
    let automatic = mcp.spec.version.as_deref().is_none_or(|v| v.ends_with("-latest"));
    let window_closed = window::closed_until(&windows, now_ts).filter(|_| automatic && moving);
    let previous_upgrade = status.upgrade.clone();
    let mut plan = plan::plan(&plan::Input {
        strategy: strategy.type_,
        paused: strategy.paused,
        window_closed,
        update_workloads: strategy.update_workloads,
        deadline: SignedDuration::from_secs(strategy.progress_deadline_seconds),
        grace: SignedDuration::from_secs(strategy.inactive_revision_deletion_grace_period_seconds),
        target: &release.version,
        generation,
        installed: &installed,
        in_use: &in_use,
        active: active.as_ref().map(|(r, v)| (r.as_str(), v)),
        upgrade: previous_upgrade.as_ref(),
        revisions: &status.revisions,
        stalled: stalled.as_ref().map(|(r, m)| (r.as_str(), m.as_str())),
        refused,
        tags: &mcp.spec.revision_tags,
        now: now_ts,
    });

    // 5. Workload migration, decided before rendering: a failed batch moves the tags back in
    //    this same pass, so the webhook never points at a revision being abandoned.
    let mut restarts = Vec::new();
    let mut undos = Vec::new();
    if plan.migrating() && (strategy.update_workloads || plan.rolling_back()) {
        let namespaces = revisions::following_namespaces(client, &mcp.spec.revision_tags).await?;
        let active_release = release_of(ctx, mcp, &plan.active.version)?;
        let workloads =
            revisions::workloads(client, &pods, &namespaces, &plan.active.revision, &active_release.proxy_image)
                .await?;
        let batch = migrate::batch_size(strategy.workload_batch.as_ref(), workloads.len()).map_err(invalid_strategy)?;
        let deadline = SignedDuration::from_secs(strategy.progress_deadline_seconds);
        let gated = !plan.rolling_back();
        let sync = match gated {
            true => revisions::sync_state(client, &ns, &plan.active.revision).await,
            false => migrate::Sync::Known(Default::default()),
        };
        if let migrate::Sync::Unknown(why) = &sync {
            warn!(name, revision = plan.active.revision, %why, "the revision's proxy report is unreadable");
        }
        let mode = match gated {
            true => migrate::Mode::Gated { batch, deadline, sync: &sync },
            false => migrate::Mode::RollingBack,
        };
        let step = migrate::step(&workloads, &plan.active.revision, mode, now_ts);
        info!(
            name,
            revision = plan.active.revision,
            migrated = step.migrated,
            remaining = step.remaining,
            restart = step.restart.len(),
            failed = step.failed.len(),
            rejected = step.rejected.len(),
            "migration step"
        );
        if gated && !step.rejected.is_empty() {
            let message = format!(
                "proxies refused the config of revision {} (NACK): {}; moved the tags back to the previous revision",
                plan.active.revision,
                step.rejected.join(", ")
            );
            plan.roll_back(message);
        } else if gated && !step.failed.is_empty() {
            let unread = match &sync {
                migrate::Sync::Unknown(why) => format!(" (its control plane's proxy report was unreadable: {why})"),
                migrate::Sync::Known(_) => String::new(),
            };
            let message = format!(
                "workloads not healthy on revision {} within {}s: {}{unread}; moved the tags back to the previous \
                 revision",
                plan.active.revision,
                deadline.as_secs(),
                step.failed.join(", ")
            );
            plan.roll_back(message);
        } else {
            // Restarts wait for a pass after the one that moved the tags: the apiserver must
            // have seen the webhook's new target before the pods it admits are created.
            let settled = previous_upgrade.as_ref().zip(plan.upgrade.as_ref()).is_some_and(|(p, u)| {
                p.phase == u.phase && p.to_revision == u.to_revision && p.from_revision == u.from_revision
            });
            if settled {
                restarts = step.restart.iter().map(|&i| workloads[i].clone()).collect();
                undos = step.undo.iter().map(|&i| workloads[i].clone()).collect();
            }
            if let Some(u) = plan.upgrade.as_mut() {
                u.migrated = i32::try_from(step.migrated).unwrap_or(i32::MAX);
                u.remaining = i32::try_from(step.remaining).unwrap_or(i32::MAX);
                if step.remaining == 0 && u.phase == phase::MIGRATING {
                    u.phase = phase::COMPLETE.into();
                    plan.reconciling = None;
                }
            }
        }
    }

    // 6. Everything else, rendered from the spec and the plan.
    let active_release = release_of(ctx, mcp, &plan.active.version)?;
    let mut others = Vec::new();
    for s in &plan.serve {
        others.push(render::Revision { name: s.revision.clone(), release: release_of(ctx, mcp, &s.version)? });
    }
    let facts = Facts {
        release: &active_release,
        root_cert_pem: &ca.root_cert_pem,
        revision: &plan.active.revision,
        others: &others,
    };
    let desired = render::render(mcp, facts);
    let mut written = Vec::new();
    // The soonest a held-off repair may be retried (another writer keeps changing the object).
    let mut held: Option<Duration> = None;
    for d in &desired {
        match applier.ensure(d, &ns).await? {
            Outcome::Unchanged => {}
            Outcome::Applied => {
                info!(name, object = %d.describe(), "applied");
                written.push(d.describe());
            }
            Outcome::AppliedBackingOff { next, writer } => {
                written.push(d.describe());
                let writer = writer.unwrap_or_else(|| "another writer".into());
                let note = format!(
                    "{} keeps being changed by {writer}; repaired again, further repairs wait {}s (doubling, at \
                     most 300s). Set the field in the MeshControlPlane instead, or stop the other writer",
                    d.describe(),
                    next.as_secs()
                );
                warn!(name, object = %d.describe(), %writer, "drift repair backing off");
                ctx.events.warning(&mcp.object_ref(&()), "DriftRepairBackoff", "Install", note).await;
            }
            Outcome::Held { retry_in } => {
                held = Some(held.map_or(retry_in, |h| h.min(retry_in)));
            }
        }
    }
    let pruned = prune(mcp, &applier, &desired).await?;
    applied += written.len() as u64;
    ctx.metrics.objects_applied(applied);
    if !written.is_empty() || !pruned.is_empty() {
        let mut note = format!("release {}: applied {}", active_release.version, list(&written));
        if !pruned.is_empty() {
            note.push_str(&format!("; pruned {}", list(&pruned)));
        }
        ctx.events.normal(&mcp.object_ref(&()), Reason::Applied.as_str(), "Install", note).await;
    }
    // Restarts (and templates put back) go after the webhook points at the active revision.
    for w in &undos {
        revisions::undo(client, w, &plan.active.revision).await?;
        info!(name, workload = %w.describe(), revision = plan.active.revision, "put back onto the previous template");
    }
    if !undos.is_empty() {
        let what: Vec<String> = undos.iter().map(|w| w.describe()).collect();
        let note = format!(
            "put back onto their templates before the restart for the abandoned revision (as rollout undo), for revision {}: {}",
            plan.active.revision,
            list(&what)
        );
        ctx.events.normal(&mcp.object_ref(&()), "RolledBackWorkloads", "Upgrade", note).await;
    }
    for w in &restarts {
        revisions::restart(client, w, &plan.active.revision, now_ts).await?;
        info!(name, workload = %w.describe(), revision = plan.active.revision, "restarted onto the active revision");
    }
    if !restarts.is_empty() {
        let what: Vec<String> = restarts.iter().map(|w| w.describe()).collect();
        let note = format!("restarted onto revision {}: {}", plan.active.revision, list(&what));
        ctx.events.normal(&mcp.object_ref(&()), "RestartedWorkloads", "Upgrade", note).await;
    }

    // 7. Status from what is really running.
    status.version = Some(plan.active.version.to_string());
    status.active_revision = Some(plan.active.revision.clone());
    status.channel_head = ctx.catalog.resolve(None, mcp.spec.channel).ok().map(|r| r.version.to_string());
    status.revisions = plan.revisions.clone();
    status.upgrade = plan.upgrade.clone();
    upgrade_conditions(status, mcp, &plan, previous_upgrade.as_ref(), ctx).await;
    status.components = components_status(mcp, ctx, &plan.active.revision).await?;
    let not_ready: Vec<String> = status.components.iter().filter(|c| !c.ready).map(|c| c.name.clone()).collect();
    let message = match (&plan.paused, &plan.outside_window) {
        (Some(held), _) => format!(
            "release {} applied to namespace {ns}; the upgrade to {held} is held (spec.updateStrategy.paused)",
            plan.active.version
        ),
        (None, Some((held, opens))) => format!(
            "release {} applied to namespace {ns}; the upgrade to {held} waits for the next maintenance window, \
             opening {opens}",
            plan.active.version
        ),
        (None, None) => format!("release {} applied to namespace {ns}", plan.active.version),
    };
    let (reason, message) = match (&plan.paused, release.end_of_life && !moving) {
        (Some(_), _) => (Reason::UpgradePaused, message),
        (None, _) if plan.outside_window.is_some() => (Reason::OutsideMaintenanceWindow, message),
        (None, true) => {
            let warning = format!(
                "release {} is end-of-life: it keeps running, but no longer gets fixes; upgrade to a supported version",
                release.version
            );
            (Reason::EndOfLife, format!("{message}; {warning}"))
        }
        (None, false) => (Reason::Applied, message),
    };
    let was =
        status.conditions.iter().find(|c| c.type_ == ConditionType::Reconciled.as_str()).map(|c| c.reason.clone());
    if reason == Reason::EndOfLife && was.as_deref() != Some(Reason::EndOfLife.as_str()) {
        ctx.events.warning(&mcp.object_ref(&()), Reason::EndOfLife.as_str(), "Install", message.clone()).await;
    }
    set(status, mcp, ConditionType::Reconciled, true, reason, message);
    let ready = not_ready.is_empty();
    let (reason, message) = match ready {
        true => (Reason::ComponentsReady, "all components are available".to_string()),
        false => {
            let why: Vec<String> = status
                .components
                .iter()
                .filter(|c| !c.ready)
                .map(|c| match &c.message {
                    Some(m) => format!("{} ({m})", c.name),
                    None => c.name.clone(),
                })
                .collect();
            (Reason::ComponentsNotReady, format!("waiting for {}", why.join(", ")))
        }
    };
    set(status, mcp, ConditionType::Ready, ready, reason, message);
    remote_clusters_condition(status, mcp);
    let busy =
        plan.reconciling.is_some() || (plan.rolling_back() && plan.upgrade.as_ref().is_some_and(|u| u.remaining > 0));
    // An upgrade advances on time (deadlines, grace periods, pods rolling), not only on events.
    let unused = status.revisions.iter().any(|r| r.unused_since.is_some());
    let next = match (busy || unused, ready) {
        (true, _) => UPGRADE_RECHECK,
        (false, true) => RESYNC,
        (false, false) => PENDING_RECHECK,
    };
    // A held upgrade starts when its window opens, not at the next resync.
    let next = match &plan.outside_window {
        Some((_, opens)) => {
            let wait = Duration::try_from(now_ts.duration_until(*opens)).unwrap_or_default() + Duration::from_secs(1);
            next.min(wait)
        }
        None => next,
    };
    Ok(Action::requeue(held.map_or(next, |h| h.min(next))))
}

/// The release a revision runs, with the spec's image overrides.
fn release_of(ctx: &Context, mcp: &MeshControlPlane, version: &Version) -> Result<Release, Error> {
    let release = ctx
        .catalog
        .resolve(Some(&version.to_string()), mcp.spec.channel)
        .map_err(|e| SpecError { reason: Reason::InvalidVersion, message: e.to_string() })?;
    Ok(release.clone().with_image_overrides(mcp.spec.hub.as_deref(), mcp.spec.tag.as_deref()))
}

/// `Reconciling` and `Stalled` from the plan (each removed when the plan has none, so kstatus
/// reads Current once an upgrade is done), with an Event when an upgrade changes phase.
async fn upgrade_conditions(
    status: &mut MeshControlPlaneStatus,
    mcp: &MeshControlPlane,
    plan: &Plan,
    previous: Option<&UpgradeStatus>,
    ctx: &Context,
) {
    for (type_, flag) in [(ConditionType::Reconciling, &plan.reconciling), (ConditionType::Stalled, &plan.stalled)] {
        match flag {
            Some(f) => set(status, mcp, type_, true, f.reason, f.message.clone()),
            None => status.conditions.retain(|c| c.type_ != type_.as_str()),
        }
    }
    let Some(u) = &plan.upgrade else { return };
    if previous.is_some_and(|p| p.phase == u.phase && p.to_version == u.to_version && p.from_version == u.from_version)
    {
        return;
    }
    let note = format!(
        "{} {} ({}) -> {} ({}){}",
        u.phase,
        u.from_revision,
        u.from_version,
        u.to_revision,
        u.to_version,
        u.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    );
    // A failure is announced under its own reason (RevisionNotReady, MigrationFailed, ...):
    // Events of one reason fold into one series whose note is the first one's.
    let r = mcp.object_ref(&());
    match &plan.stalled {
        Some(f) => ctx.events.warning(&r, f.reason.as_str(), "Upgrade", note).await,
        None => ctx.events.normal(&r, &u.phase, "Upgrade", note).await,
    }
}

/// `RemoteClustersSynced` from what the federation controller wrote to
/// `status.remoteClusters` (its write is a change of this object, so it brings a reconcile):
/// a broken peer shows on the object itself, not only in the list. Absent without peers.
fn remote_clusters_condition(status: &mut MeshControlPlaneStatus, mcp: &MeshControlPlane) {
    let remotes = mcp.status.as_ref().map(|s| s.remote_clusters.as_slice()).unwrap_or_default();
    if remotes.is_empty() {
        status.conditions.retain(|c| c.type_ != ConditionType::RemoteClustersSynced.as_str());
        return;
    }
    let broken: Vec<String> = remotes
        .iter()
        .filter_map(|r| {
            let c = r.conditions.iter().find(|c| c.type_ == "Synced");
            match c {
                Some(c) if c.status == "True" => None,
                Some(c) => Some(format!("{} ({})", r.name, c.reason)),
                None => Some(format!("{} (Pending)", r.name)),
            }
        })
        .collect();
    let (ok, reason, message) = if broken.is_empty() {
        (true, Reason::AllSynced, format!("{} remote cluster(s) synced", remotes.len()))
    } else {
        (false, Reason::RemoteClustersNotSynced, format!("not synced: {}", broken.join(", ")))
    };
    set(status, mcp, ConditionType::RemoteClustersSynced, ok, reason, message);
}

/// `a, b and 2 more`: a short list for an Event note (Events hold at most 1 kB).
fn list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// Sets one condition of `status` for the object's current generation.
fn set(
    status: &mut MeshControlPlaneStatus,
    mcp: &MeshControlPlane,
    type_: ConditionType,
    ok: bool,
    reason: Reason,
    message: String,
) {
    let update = ConditionUpdate { type_, status: ok, reason, message };
    upsert_condition(&mut status.conditions, update, mcp.metadata.generation, now());
}

/// Installs or updates the Istio API CRDs Skein manages; returns the ones another installation
/// owns (`name (managed by X)`), which are left untouched.
async fn ensure_istio_crds(applier: &Applier, ctx: &Context, applied: &mut u64) -> Result<Vec<String>, Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let mut foreign = Vec::new();
    for d in render::istio_crds() {
        let existing = api.get_opt(&d.name).await.map_err(ApplyError::during("get", d.describe()))?;
        if let Some(crd) = existing {
            let manager = crd.labels().get(MANAGED_BY_LABEL).cloned();
            if manager.as_deref() != Some(render::MANAGED_BY) {
                foreign.push(format!("{} (managed by {})", d.name, manager.as_deref().unwrap_or("unknown")));
                continue;
            }
        }
        if applier.ensure_with(&d, "", render::crds::keep_stored_versions).await?.wrote() {
            info!(object = %d.describe(), "applied");
            *applied += 1;
        }
    }
    Ok(foreign)
}

/// Reports a spec the operator cannot act on: `Reconciled=False` with the reason and a Warning
/// Event (once, when the condition changes); `Ready` keeps describing what is installed
/// (False if nothing is).
async fn refuse(
    mcp: &MeshControlPlane,
    ctx: &Context,
    previous: &MeshControlPlaneStatus,
    mut status: MeshControlPlaneStatus,
    e: SpecError,
) -> Result<Action, Error> {
    warn!(name = %mcp.name_any(), reason = %e.reason, message = e.message, "spec refused");
    let retry = e.recheck();
    set(&mut status, mcp, ConditionType::Reconciled, false, e.reason, e.message.clone());
    // kstatus (Flux's `wait`, Argo CD's generic check) reads `Stalled=True` as Failed: without
    // it a refused spec looks Current (Ready stays True while the old install runs) or
    // InProgress forever (a new object). Nothing is progressing while the spec is refused.
    set(&mut status, mcp, ConditionType::Stalled, true, e.reason, e.message.clone());
    status.conditions.retain(|c| c.type_ != ConditionType::Reconciling.as_str());
    // Nothing installed yet: say so, rather than the "installation has started" of the first
    // pass.
    if !has_condition(&status.conditions, ConditionType::Ready) || status.version.is_none() {
        let message = "nothing is installed until the spec can be reconciled".into();
        set(&mut status, mcp, ConditionType::Ready, false, Reason::NotInstalled, message);
    }
    let changed = previous.conditions.iter().find(|c| c.type_ == ConditionType::Reconciled.as_str()).is_none_or(|c| {
        c.reason != e.reason.as_str() || c.message != e.message || c.observed_generation != mcp.metadata.generation
    });
    if changed {
        ctx.events.warning(&mcp.object_ref(&()), e.reason.as_str(), "Install", e.message).await;
    }
    write_status(mcp, ctx, previous, status).await?;
    Ok(retry.map_or_else(Action::await_change, Action::requeue))
}

async fn write_status(
    mcp: &MeshControlPlane,
    ctx: &Context,
    previous: &MeshControlPlaneStatus,
    mut status: MeshControlPlaneStatus,
) -> Result<(), Error> {
    if *previous == status && mcp.status.is_some() {
        return Ok(());
    }
    // `remoteClusters` belongs to the federation controller: a merge patch replaces a list
    // whole, so sending this controller's (possibly older) copy could undo its write.
    status.remote_clusters.clear();
    let api: Api<MeshControlPlane> = Api::all(ctx.client.clone());
    let params = PatchParams { field_manager: Some(render::FIELD_MANAGER.into()), ..Default::default() };
    api.patch_status(&mcp.name_any(), &params, &Patch::Merge(json!({ "status": status })))
        .await
        .map_err(ApplyError::during("patch status of", format!("MeshControlPlane/{}", mcp.name_any())))?;
    ctx.metrics.status_written();
    Ok(())
}

/// `spec.namespace` must be one the operator manages and must exist: like Sail and
/// `istioctl`, the operator does not create it (the install that grants the operator its Role
/// there creates it; `kubectl create namespace` for others), and so never deletes it either.
async fn check_namespace(mcp: &MeshControlPlane, ctx: &Context) -> Result<(), Error> {
    let ns = render::namespace(mcp);
    if let Some(managed) = ctx.scope.namespaces().filter(|set| !set.contains(ns)) {
        let list = managed.iter().cloned().collect::<Vec<_>>().join(", ");
        let message = format!(
            "spec.namespace: {ns:?} is not a namespace this operator manages ({list}); install the \
             operator's mesh-namespace Role there and add it to --mesh-namespaces"
        );
        return Err(SpecError { reason: Reason::NamespaceNotManaged, message }.into());
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(ns).await.map_err(ApplyError::during("get", format!("Namespace/{ns}")))? {
        Some(n) if n.metadata.deletion_timestamp.is_none() => Ok(()),
        Some(_) => {
            let message = format!("spec.namespace: namespace {ns:?} is being deleted");
            Err(SpecError { reason: Reason::NamespaceNotFound, message }.into())
        }
        None => {
            let message =
                format!("spec.namespace: namespace {ns:?} does not exist; create it (kubectl create namespace {ns})");
            Err(SpecError { reason: Reason::NamespaceNotFound, message }.into())
        }
    }
}

/// Deletes namespaced objects this installation made earlier but no longer wants (a gateway
/// turned off, the PDB when replicas drop to 1).
async fn prune(mcp: &MeshControlPlane, applier: &Applier, desired: &[Desired]) -> Result<Vec<String>, Error> {
    let ns = render::namespace(mcp);
    let selector = format!("{OWNER_LABEL}={}", mcp.name_any());
    let mut pruned = Vec::new();
    for resource in [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
    ] {
        let keep: Vec<&str> = desired
            .iter()
            .filter(|d| d.namespaced && d.resource.kind == resource.kind)
            .map(|d| d.name.as_str())
            .collect();
        for gone in applier.prune(&resource, ns, &selector, &keep).await? {
            let what = format!("{}/{gone}", resource.kind);
            info!(object = %what, "pruned");
            pruned.push(what);
        }
    }
    Ok(pruned)
}

async fn components_status(
    mcp: &MeshControlPlane,
    ctx: &Context,
    active_revision: &str,
) -> Result<Vec<ComponentStatus>, Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), render::namespace(mcp));
    let control_plane = render::control_plane::name(active_revision);
    let mut wanted = vec![("controlPlane", control_plane.as_str())];
    wanted.extend(Gateway::ALL.into_iter().filter(|g| g.enabled(mcp)).map(|g| (g.component(), g.name())));
    let mut out = Vec::with_capacity(wanted.len());
    for (component, deployment) in wanted {
        let d = api.get_opt(deployment).await.map_err(ApplyError::during("get", format!("Deployment/{deployment}")))?;
        let mut status = component_status(component, d.as_ref());
        if let (false, Some(d)) = (status.ready, &d) {
            status.message = pods_problem(ctx, d).await?;
        }
        out.push(status);
    }
    Ok(out)
}

/// Why a not-ready Deployment's pods are not ready (their containers' waiting reasons).
async fn pods_problem(ctx: &Context, d: &Deployment) -> Result<Option<String>, Error> {
    let ns = d.metadata.namespace.as_deref().unwrap_or_default();
    let labels = d.spec.as_ref().and_then(|s| s.selector.match_labels.as_ref());
    let Some(selector) = labels.filter(|l| !l.is_empty()) else { return Ok(None) };
    let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector.join(",")))
        .await
        .map_err(ApplyError::during("list", format!("Pods of Deployment/{}", d.name_any())))?;
    Ok(pod_problem(&list.items))
}

/// Removes what owner references cannot: cluster-scoped objects are deleted explicitly (so the
/// result does not depend on garbage-collector timing). The namespace stays: the operator did
/// not create it.
async fn cleanup(mcp: &MeshControlPlane, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let binding = render::cluster_scoped_name(CONTROL_PLANE, mcp);
    delete_if_present(Api::<ClusterRoleBinding>::all(client.clone()), &binding).await?;
    delete_if_present(Api::<MutatingWebhookConfiguration>::all(client.clone()), &render::webhook_name(mcp)).await?;
    let ns = render::namespace(mcp);
    info!(name = %mcp.name_any(), "cleaned up");
    ctx.events.normal(&mcp.object_ref(&()), "CleanedUp", "Delete", format!("removed the installation in {ns}")).await;
    Ok(Action::await_change())
}

async fn delete_if_present<K>(api: Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(ApplyError::during("delete", name.to_string())(e).into()),
    }
}

#[cfg(test)]
mod tests;
