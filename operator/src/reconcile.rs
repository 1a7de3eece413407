//! The `MeshControlPlane` controller: resolves the release, makes sure the CA exists, applies the
//! rendered objects, prunes what is no longer wanted and reports status.
//!
//! Level-based and idempotent: every pass recomputes everything from the spec and the cluster,
//! and a pass over a converged installation writes nothing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::ApiResource,
    runtime::{
        Controller,
        controller::Action,
        finalizer::{self, Event},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use skein_api::{
    CONDITION_ISTIO_CRDS, CONDITION_READY, CONDITION_RECONCILED, ComponentStatus, MeshControlPlane,
    MeshControlPlaneStatus, RootCaType,
    pki::{CaBundle, PkiError, SERVING_DAYS},
};
use tracing::{info, warn};

use crate::{
    apply::{Applier, ApplyError, Outcome},
    catalog::Catalog,
    render::{self, CONTROL_PLANE, DEFAULT_REVISION, Desired, Facts, Gateway, MANAGED_BY, OWNER_LABEL},
    status::{ConditionUpdate, component_status, upsert_condition},
    telemetry::Metrics,
};

/// The one finalizer the operator puts on a `MeshControlPlane`.
pub const FINALIZER: &str = "mesh.skein.dev/cleanup";
/// Annotation on a namespace the operator created (so deletion removes only such namespaces).
pub const CREATED_BY_ANNOTATION: &str = "mesh.skein.dev/created-by";
/// Annotation on the webhook Secret: when its certificate expires (RFC 3339).
const NOT_AFTER_ANNOTATION: &str = "mesh.skein.dev/not-after";
/// Re-issue the webhook certificate when fewer than this many days are left.
const RENEW_BEFORE_DAYS: i64 = 30;

/// How often a converged installation is re-checked without any event (drift the watches
/// missed). Events drive everything else.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check interval while components are still becoming ready.
const PENDING_RECHECK: Duration = Duration::from_secs(5);

/// Reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An apiserver call failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// CA generation failed.
    #[error("CA: {0}")]
    Pki(#[from] PkiError),
    /// The finalizer machinery failed (wraps the above).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

/// Shared state of the controller.
pub struct Context {
    /// Client for the cluster the operator manages.
    pub client: Client,
    /// Release catalog compiled into this build.
    pub catalog: Catalog,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

fn apply_err(action: &'static str, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Apply(ApplyError { action, what, source })
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    // Children are watched by label only, so the operator caches its own objects and not every
    // Secret or Deployment of the cluster. `watches` with the owner label rather than `owns`:
    // `owns` would key a namespaced child's owner as <namespace>/<name>, a second key for the
    // same cluster-scoped MeshControlPlane, and two reconciles of one object could then run at
    // once.
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let mcps: Api<MeshControlPlane> = Api::all(client.clone());
    Controller::new(mcps, watcher::Config::default())
        .watches(Api::<Deployment>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<Service>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<ServiceAccount>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<ConfigMap>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<Secret>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<PodDisruptionBudget>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<Role>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<RoleBinding>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<ClusterRole>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<ClusterRoleBinding>::all(client.clone()), owned.clone(), owner_of)
        .watches(Api::<MutatingWebhookConfiguration>::all(client.clone()), owned, owner_of)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// The `MeshControlPlane` a managed object belongs to (cluster-scoped, so no namespace).
fn owner_of<K: Resource>(obj: K) -> Option<ObjectRef<MeshControlPlane>> {
    obj.labels().get(OWNER_LABEL).map(|name| ObjectRef::new(name))
}

/// Reconciles one `MeshControlPlane`.
pub async fn reconcile(mcp: Arc<MeshControlPlane>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let api: Api<MeshControlPlane> = Api::all(ctx.client.clone());
    finalizer::finalizer(&api, FINALIZER, mcp, |event| async {
        match event {
            Event::Apply(mcp) => apply(&mcp, &ctx).await,
            Event::Cleanup(mcp) => cleanup(&mcp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Requeues a failed reconcile with a short delay and counts it.
pub fn error_policy(mcp: Arc<MeshControlPlane>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error();
    warn!(name = %mcp.name_any(), error = %err, "reconcile error, retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn apply(mcp: &MeshControlPlane, ctx: &Context) -> Result<Action, Error> {
    let name = mcp.name_any();
    let ns = render::namespace(mcp).to_string();
    let previous = mcp.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = mcp.metadata.generation;
    status.channel = Some(mcp.spec.channel.to_string());

    // 0. A new object says Ready=False before anything else, so kstatus (Flux) and Argo CD
    //    see it as in progress rather than as a resource without status.
    if !previous.conditions.iter().any(|c| c.type_ == CONDITION_READY) {
        upsert_condition(
            &mut status.conditions,
            ConditionUpdate {
                type_: CONDITION_READY,
                status: false,
                reason: "Installing",
                message: "installation has started".into(),
            },
            mcp.metadata.generation,
            now(),
        );
        write_status(mcp, ctx, &previous, status.clone()).await?;
    }

    // 1. Which release. An unknown one is reported and nothing installed is touched.
    let release = match ctx.catalog.resolve(mcp.spec.version.as_deref(), mcp.spec.channel) {
        Ok(r) => r.clone(),
        Err(e) => {
            // Only a spec change can fix this; the watch brings it.
            return refuse(mcp, ctx, status, "InvalidVersion", e.to_string(), None).await;
        }
    };

    // 2. The CA: a bad user Secret is also reported without touching anything.
    ensure_namespace(mcp, ctx).await?;
    let ca = match ensure_ca(mcp, ctx).await? {
        Ok(ca) => ca,
        // The user's Secret is not watched (the operator watches only its own objects), so look
        // again soon: creating or fixing the Secret is enough to proceed.
        Err(reason) => {
            return refuse(mcp, ctx, status, "InvalidRootCA", reason, Some(PENDING_RECHECK)).await;
        }
    };
    ensure_webhook_cert(mcp, ctx, &ca).await?;

    // 3. The Istio API CRDs, unless another installation owns them.
    let applier = Applier::new(ctx.client.clone());
    let mut applied = 0;
    let foreign = ensure_istio_crds(&applier, ctx, &mut applied).await?;
    upsert_condition(
        &mut status.conditions,
        match foreign.is_empty() {
            true => ConditionUpdate {
                type_: CONDITION_ISTIO_CRDS,
                status: true,
                reason: "Installed",
                message: "the Istio API CRDs are installed by Skein".into(),
            },
            false => ConditionUpdate {
                type_: CONDITION_ISTIO_CRDS,
                status: false,
                reason: "OwnedByAnother",
                message: format!("left as they are (not installed by Skein): {}", foreign.join(", ")),
            },
        },
        mcp.metadata.generation,
        now(),
    );

    // 4. Everything else, rendered from the spec.
    let desired = render::render(mcp, Facts { release: &release, root_cert_pem: &ca.root_cert_pem });
    for d in &desired {
        if applier.ensure(d, &ns).await? == Outcome::Applied {
            info!(name, object = %d.describe(), "applied");
            applied += 1;
        }
    }
    prune(mcp, &applier, &desired).await?;
    ctx.metrics.objects_applied(applied);

    // 5. Status from what is really running.
    status.version = Some(release.version.to_string());
    status.active_revision = Some(DEFAULT_REVISION.to_string());
    status.components = components_status(mcp, ctx).await?;
    let not_ready: Vec<&str> = status.components.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
    let generation = mcp.metadata.generation;
    let t = now();
    upsert_condition(
        &mut status.conditions,
        ConditionUpdate {
            type_: CONDITION_RECONCILED,
            status: true,
            reason: "Applied",
            message: format!("release {} applied to namespace {ns}", release.version),
        },
        generation,
        t.clone(),
    );
    let ready = not_ready.is_empty();
    upsert_condition(
        &mut status.conditions,
        ConditionUpdate {
            type_: CONDITION_READY,
            status: ready,
            reason: if ready { "ComponentsReady" } else { "ComponentsNotReady" },
            message: if ready {
                "all components are available".to_string()
            } else {
                format!("waiting for {}", not_ready.join(", "))
            },
        },
        generation,
        t,
    );
    write_status(mcp, ctx, &previous, status).await?;
    Ok(Action::requeue(if ready { RESYNC } else { PENDING_RECHECK }))
}

/// Installs or updates the Istio API CRDs Skein manages; returns the ones another installation
/// owns (`name (managed by X)`), which are left untouched.
async fn ensure_istio_crds(applier: &Applier, ctx: &Context, applied: &mut u64) -> Result<Vec<String>, Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let mut foreign = Vec::new();
    for d in render::istio_crds() {
        let existing = api.get_opt(&d.name).await.map_err(apply_err("get", d.describe()))?;
        if let Some(crd) = existing {
            let manager = crd.labels().get("app.kubernetes.io/managed-by").cloned();
            if manager.as_deref() != Some(render::MANAGED_BY) {
                foreign.push(format!("{} (managed by {})", d.name, manager.as_deref().unwrap_or("unknown")));
                continue;
            }
        }
        if applier.ensure(&d, "").await? == Outcome::Applied {
            info!(object = %d.describe(), "applied");
            *applied += 1;
        }
    }
    Ok(foreign)
}

/// Reports a spec the operator cannot act on: `Reconciled=False` with the reason; `Ready` keeps
/// describing what is installed (False if nothing is).
async fn refuse(
    mcp: &MeshControlPlane,
    ctx: &Context,
    mut status: MeshControlPlaneStatus,
    reason: &str,
    message: String,
    retry: Option<Duration>,
) -> Result<Action, Error> {
    warn!(name = %mcp.name_any(), reason, message, "spec refused");
    let previous = mcp.status.clone().unwrap_or_default();
    let generation = mcp.metadata.generation;
    let t = now();
    upsert_condition(
        &mut status.conditions,
        ConditionUpdate { type_: CONDITION_RECONCILED, status: false, reason, message },
        generation,
        t.clone(),
    );
    if !status.conditions.iter().any(|c| c.type_ == CONDITION_READY) {
        upsert_condition(
            &mut status.conditions,
            ConditionUpdate {
                type_: CONDITION_READY,
                status: false,
                reason: "NotInstalled",
                message: "nothing is installed until the spec can be reconciled".into(),
            },
            generation,
            t,
        );
    }
    write_status(mcp, ctx, &previous, status).await?;
    Ok(retry.map_or_else(Action::await_change, Action::requeue))
}

async fn write_status(
    mcp: &MeshControlPlane,
    ctx: &Context,
    previous: &MeshControlPlaneStatus,
    status: MeshControlPlaneStatus,
) -> Result<(), Error> {
    if *previous == status && mcp.status.is_some() {
        return Ok(());
    }
    let api: Api<MeshControlPlane> = Api::all(ctx.client.clone());
    api.patch_status(&mcp.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .map_err(apply_err("patch status of", format!("MeshControlPlane/{}", mcp.name_any())))?;
    ctx.metrics.status_written();
    Ok(())
}

fn owned_meta(mcp: &MeshControlPlane, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
            ("app.kubernetes.io/part-of".to_string(), "skein".to_string()),
            (OWNER_LABEL.to_string(), mcp.name_any()),
        ])),
        owner_references: mcp.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Creates `spec.namespace` if it is missing, marked as ours so deletion can remove it. A
/// namespace that existed before is never modified.
async fn ensure_namespace(mcp: &MeshControlPlane, ctx: &Context) -> Result<(), Error> {
    let ns = render::namespace(mcp);
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    if api.get_opt(ns).await.map_err(apply_err("get", format!("Namespace/{ns}")))?.is_some() {
        return Ok(());
    }
    let mut meta = owned_meta(mcp, ns, None);
    meta.annotations = Some(BTreeMap::from([(CREATED_BY_ANNOTATION.to_string(), mcp.name_any())]));
    let obj = Namespace { metadata: meta, ..Default::default() };
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {
            info!(namespace = ns, "created namespace");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(apply_err("create", format!("Namespace/{ns}"))(e)),
    }
}

/// Returns the CA bundle, generating the self-signed root once. The inner `Err` is a
/// user-facing reason (bad or missing user Secret).
async fn ensure_ca(mcp: &MeshControlPlane, ctx: &Context) -> Result<Result<CaBundle, String>, Error> {
    let ns = render::namespace(mcp);
    let name = render::ca_secret_name(mcp);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let existing = api.get_opt(name).await.map_err(apply_err("get", format!("Secret/{name}")))?;
    let data = |s: &Secret| -> BTreeMap<String, Vec<u8>> {
        s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
    };
    if mcp.spec.security.root_ca.type_ == RootCaType::Secret {
        return Ok(match existing {
            None => Err(format!("spec.security.rootCA.secretName: Secret {ns}/{name} does not exist")),
            Some(s) => {
                CaBundle::from_secret_data(name, &data(&s)).map_err(|e| format!("spec.security.rootCA.secretName: {e}"))
            }
        });
    }
    if let Some(s) = existing {
        // Never regenerated: replacing the root would break trust with every issued certificate.
        return Ok(CaBundle::from_secret_data(name, &data(&s)).map_err(|e| format!("self-signed root CA: {e}")));
    }
    let ca = CaBundle::generate_self_signed(&mcp.spec.mesh_config.trust_domain)?;
    let secret = Secret {
        metadata: owned_meta(mcp, name, Some(ns)),
        type_: Some("Opaque".into()),
        data: Some(ca.to_secret_data().into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(namespace = ns, secret = name, "generated self-signed root CA");
            Ok(Ok(ca))
        }
        // Another replica won the race: use its root, not ours.
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let s = api.get(name).await.map_err(apply_err("get", format!("Secret/{name}")))?;
            Ok(CaBundle::from_secret_data(name, &data(&s)).map_err(|e| e.to_string()))
        }
        Err(e) => Err(apply_err("create", format!("Secret/{name}"))(e)),
    }
}

/// Keeps the webhook's serving certificate signed by the current root and far from expiry.
async fn ensure_webhook_cert(mcp: &MeshControlPlane, ctx: &Context, ca: &CaBundle) -> Result<(), Error> {
    let ns = render::namespace(mcp);
    let name = render::WEBHOOK_TLS_SECRET;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let existing = api.get_opt(name).await.map_err(apply_err("get", format!("Secret/{name}")))?;
    let fresh = existing.as_ref().is_some_and(|s| {
        let same_root =
            s.data.as_ref().and_then(|d| d.get("ca.crt")).is_some_and(|c| c.0 == ca.root_cert_pem.as_bytes());
        let not_after =
            s.annotations().get(NOT_AFTER_ANNOTATION).and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
        let renew_at =
            k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(24 * RENEW_BEFORE_DAYS);
        same_root && not_after.is_some_and(|t| t > renew_at)
    });
    if fresh {
        return Ok(());
    }
    let svc = format!("{CONTROL_PLANE}.{ns}.svc");
    let names = vec![svc.clone(), format!("{svc}.cluster.local"), format!("{CONTROL_PLANE}.{ns}")];
    let (chain, key) = ca.issue_serving_cert(&names)?;
    let not_after =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(24 * SERVING_DAYS);
    let mut meta = owned_meta(mcp, name, Some(ns));
    meta.annotations = Some(BTreeMap::from([(NOT_AFTER_ANNOTATION.to_string(), not_after.to_string())]));
    let secret = Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), ByteString(chain.into_bytes())),
            ("tls.key".to_string(), ByteString(key.into_bytes())),
            ("ca.crt".to_string(), ByteString(ca.root_cert_pem.clone().into_bytes())),
        ])),
        ..Default::default()
    };
    let params = PatchParams::apply(render::FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&secret)).await.map_err(apply_err("apply", format!("Secret/{name}")))?;
    info!(namespace = ns, "issued webhook serving certificate");
    Ok(())
}

/// Deletes namespaced objects this installation made earlier but no longer wants (a gateway
/// turned off, the PDB when replicas drop to 1).
async fn prune(mcp: &MeshControlPlane, applier: &Applier, desired: &[Desired]) -> Result<(), Error> {
    let ns = render::namespace(mcp);
    let selector = format!("{OWNER_LABEL}={}", mcp.name_any());
    for resource in [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
    ] {
        let keep: Vec<&str> = desired
            .iter()
            .filter(|d| d.namespaced && d.resource.kind == resource.kind)
            .map(|d| d.name.as_str())
            .collect();
        for gone in applier.prune(&resource, ns, &selector, &keep).await? {
            info!(object = %format!("{}/{gone}", resource.kind), "pruned");
        }
    }
    Ok(())
}

async fn components_status(mcp: &MeshControlPlane, ctx: &Context) -> Result<Vec<ComponentStatus>, Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), render::namespace(mcp));
    let mut wanted = vec![("controlPlane", CONTROL_PLANE)];
    wanted.extend(Gateway::ALL.into_iter().filter(|g| g.enabled(mcp)).map(|g| (g.component(), g.name())));
    let mut out = Vec::with_capacity(wanted.len());
    for (component, deployment) in wanted {
        let d = api.get_opt(deployment).await.map_err(apply_err("get", format!("Deployment/{deployment}")))?;
        out.push(component_status(component, d.as_ref()));
    }
    Ok(out)
}

/// Removes what owner references cannot: cluster-scoped objects are deleted explicitly (so the
/// result does not depend on garbage-collector timing) and the namespace goes only if the
/// operator created it.
async fn cleanup(mcp: &MeshControlPlane, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let cluster_role = render::cluster_scoped_name(CONTROL_PLANE, mcp);
    delete_if_present(Api::<ClusterRoleBinding>::all(client.clone()), &cluster_role).await?;
    delete_if_present(Api::<ClusterRole>::all(client.clone()), &cluster_role).await?;
    delete_if_present(Api::<MutatingWebhookConfiguration>::all(client.clone()), &render::webhook_name(mcp)).await?;
    let ns = render::namespace(mcp);
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let live = ns_api.get_opt(ns).await.map_err(apply_err("get", format!("Namespace/{ns}")))?;
    if live.is_some_and(|n| n.annotations().get(CREATED_BY_ANNOTATION) == Some(&mcp.name_any())) {
        delete_if_present(ns_api, ns).await?;
    }
    info!(name = %mcp.name_any(), "cleaned up");
    Ok(Action::await_change())
}

async fn delete_if_present<K>(api: Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(apply_err("delete", name.to_string())(e)),
    }
}
