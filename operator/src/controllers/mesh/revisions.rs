//! What an upgrade needs to know of the cluster, and the one write it makes besides the
//! rendered objects: which control plane revisions are installed, which injected pods run
//! (per revision, and their proxy versions for the skew guard), which workloads follow a tag
//! and how far their rollout is, and the restart of a workload onto the active revision.
//!
//! The decisions themselves are pure ([`crate::upgrade`]); this module only reads and patches.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::{Container, Namespace, Pod, PodSpec, PodStatus},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use semver::Version;
use serde_json::json;
use skein_api::MeshControlPlane;

use crate::{
    context::Context,
    error::Error,
    kube::{apply::ApplyError, conditions::component_status},
    render::{
        self, CONTROL_PLANE, DEFAULT_REVISION, FIELD_MANAGER, OWNER_LABEL, PORT_MONITORING,
        meta::{REVISION_LABEL, common_labels},
    },
    upgrade::{
        migrate::{Kind, Previous, RESTARTED_AT, RESTARTED_FOR, RESTARTED_FROM, ROLLED_BACK_TO, Stamp, Sync, Workload},
        plan::Installed,
        skew::{RunningProxy, image_version},
    },
};

/// Selects the pods the injector gave a sidecar (and a revision).
pub const INJECTED_SELECTOR: &str = "security.istio.io/tlsMode=istio,istio.io/rev";
/// Name of the injected sidecar container.
const PROXY_CONTAINER: &str = "skein-proxy";

/// The control plane revisions installed now (their Deployments).
pub async fn installed(client: &Client, mcp: &MeshControlPlane) -> Result<Vec<Installed>, Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), render::namespace(mcp));
    let name_label =
        common_labels(mcp, CONTROL_PLANE)["app.kubernetes.io/name"].as_str().unwrap_or_default().to_string();
    let selector = format!("{OWNER_LABEL}={},app.kubernetes.io/name={name_label}", mcp.name_any());
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ApplyError::during("list", "control plane Deployments"))?;
    let mut out = Vec::new();
    for d in &list.items {
        let labels = d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.as_ref());
        let Some(labels) = labels else { continue };
        let revision = labels.get(REVISION_LABEL).cloned().unwrap_or_else(|| DEFAULT_REVISION.to_string());
        let Some(version) = labels.get("app.kubernetes.io/version").and_then(|v| Version::parse(v).ok()) else {
            continue;
        };
        out.push(Installed { revision, version, ready: component_status(CONTROL_PLANE, Some(d)).ready });
    }
    Ok(out)
}

/// Injected pods that run or will (`Running`/`Pending`): a Completed Job's pod or an evicted
/// one never holds a revision. From the mesh controller's cache when it watches them (a
/// reconcile then costs the apiserver no LIST of every injected pod of the cluster), else
/// listed.
pub async fn injected_pods(ctx: &Context) -> Result<Vec<Arc<Pod>>, Error> {
    let all: Vec<Arc<Pod>> = match ctx.injected_pods() {
        Some(store) => {
            // Ready once the watch listed; a writer gone means the term is ending.
            store.wait_until_ready().await.map_err(|_| Error::CacheStopped("injected pods"))?;
            store.state()
        }
        None => {
            let api: Api<Pod> = Api::all(ctx.client.clone());
            let list = api
                .list(&ListParams::default().labels(INJECTED_SELECTOR))
                .await
                .map_err(ApplyError::during("list", "injected Pods"))?;
            list.items.into_iter().map(Arc::new).collect()
        }
    };
    Ok(all
        .into_iter()
        .filter(|p| matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running" | "Pending")))
        .collect())
}

/// What the mesh controller's cache keeps of an injected pod: name, namespace, labels, owners,
/// deletion, phase and its containers' names and images, which is all a reconcile reads of it.
/// Whole pods (specs, statuses, managed fields) of every injected pod of a large cluster would
/// be most of the operator's memory.
pub fn slim_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    let slim = |cs: &mut Vec<Container>| {
        for c in cs.iter_mut() {
            *c = Container { name: std::mem::take(&mut c.name), image: c.image.take(), ..Default::default() };
        }
    };
    if let Some(spec) = p.spec.as_mut() {
        let (mut containers, mut init) = (std::mem::take(&mut spec.containers), spec.init_containers.take());
        slim(&mut containers);
        init.iter_mut().for_each(slim);
        *spec = PodSpec { containers, init_containers: init, ..Default::default() };
    }
    if let Some(status) = p.status.as_mut() {
        *status = PodStatus { phase: status.phase.take(), ..Default::default() };
    }
}

/// Pods per revision.
pub fn in_use(pods: &[Arc<Pod>]) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for p in pods {
        if let Some(rev) = p.labels().get(REVISION_LABEL) {
            *out.entry(rev.clone()).or_insert(0) += 1;
        }
    }
    out
}

fn proxy_image(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .chain(p.spec.as_ref()?.init_containers.iter().flatten())
        .find_map(|c| (c.name == PROXY_CONTAINER).then_some(c.image.as_deref()).flatten())
}

/// The proxies the skew guard judges (those running a release-tagged image).
pub fn proxies(pods: &[Arc<Pod>]) -> Vec<RunningProxy> {
    pods.iter()
        .filter_map(|p| {
            let version = image_version(proxy_image(p)?)?;
            Some(RunningProxy { pod: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), version })
        })
        .collect()
}

/// Namespaces whose injection follows a tag: `skein-injection=enabled`,
/// `istio-injection=enabled`, or `istio.io/rev` set to `default` or one of `tags`.
pub async fn following_namespaces(client: &Client, tags: &[String]) -> Result<BTreeSet<String>, Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await.map_err(ApplyError::during("list", "Namespaces"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|n| {
            let l = n.labels();
            let enabled = |k: &str| l.get(k).is_some_and(|v| v == "enabled");
            let by_tag = l.get(REVISION_LABEL).is_some_and(|r| r == DEFAULT_REVISION || tags.contains(r));
            enabled("skein-injection") || enabled("istio-injection") || by_tag
        })
        .map(|n| n.name_any())
        .collect())
}

/// The workload that owns a pod: Deployment (through its ReplicaSet, whose name is the
/// Deployment's plus `-<pod-template-hash>`), StatefulSet or DaemonSet.
fn owner(p: &Pod) -> Option<(Kind, String)> {
    let o = p.owner_references().iter().find(|o| o.controller == Some(true))?;
    match o.kind.as_str() {
        "ReplicaSet" => {
            let hash = p.labels().get("pod-template-hash")?;
            Some((Kind::Deployment, o.name.strip_suffix(&format!("-{hash}"))?.to_string()))
        }
        "StatefulSet" => Some((Kind::StatefulSet, o.name.clone())),
        "DaemonSet" => Some((Kind::DaemonSet, o.name.clone())),
        _ => None,
    }
}

/// Whether a pod runs what the active revision injects now, or is on its way out (deleted,
/// draining: it takes no new work, so a batch does not wait for its drain to end).
fn current(p: &Pod, active: &str, proxy: &str) -> bool {
    let leaving = p.metadata.deletion_timestamp.is_some();
    leaving || (p.labels().get(REVISION_LABEL).is_some_and(|r| r == active) && proxy_image(p) == Some(proxy))
}

/// The workloads of `namespaces` with injected pods, and how many of their pods are not on
/// the active revision (`active`, injecting `proxy`).
pub async fn workloads(
    client: &Client,
    pods: &[Arc<Pod>],
    namespaces: &BTreeSet<String>,
    active: &str,
    proxy: &str,
) -> Result<Vec<Workload>, Error> {
    // Per workload: its stale pods, and the proxies of its pods on the active revision.
    let mut stale: BTreeMap<(Kind, String, String), (usize, Vec<String>)> = BTreeMap::new();
    for p in pods {
        let ns = p.namespace().unwrap_or_default();
        if !namespaces.contains(&ns) {
            continue;
        }
        let Some((kind, name)) = owner(p) else { continue };
        let entry = stale.entry((kind, ns.clone(), name)).or_default();
        if !current(p, active, proxy) {
            entry.0 += 1;
        } else if p.metadata.deletion_timestamp.is_none() {
            entry.1.push(format!("{}.{ns}", p.name_any()));
        }
    }
    let mut out = Vec::with_capacity(stale.len());
    for ((kind, ns, name), (stale_pods, proxies)) in stale {
        let what = format!("{} {ns}/{name}", kind.as_str());
        let got = match kind {
            Kind::Deployment => {
                let d = Api::<Deployment>::namespaced(client.clone(), &ns).get_opt(&name).await;
                d.map(|d| {
                    d.map(|d| {
                        let template = template_annotations(d.spec.as_ref().map(|s| &s.template));
                        (d.annotations().clone(), template, deployment_rolled_out(&d))
                    })
                })
            }
            Kind::StatefulSet => {
                let s = Api::<StatefulSet>::namespaced(client.clone(), &ns).get_opt(&name).await;
                s.map(|s| {
                    s.map(|s| {
                        let template = template_annotations(s.spec.as_ref().map(|s| &s.template));
                        (s.annotations().clone(), template, statefulset_rolled_out(&s))
                    })
                })
            }
            Kind::DaemonSet => {
                let d = Api::<DaemonSet>::namespaced(client.clone(), &ns).get_opt(&name).await;
                d.map(|d| {
                    d.map(|d| {
                        let template = template_annotations(d.spec.as_ref().map(|s| &s.template));
                        (d.annotations().clone(), template, daemonset_rolled_out(&d))
                    })
                })
            }
        };
        // Gone meanwhile: nothing to migrate.
        let Some((own, annotations, rolled_out)) = got.map_err(ApplyError::during("get", what))? else { continue };
        out.push(Workload {
            kind,
            namespace: ns,
            name,
            restarted_for: annotations.get(RESTARTED_FOR).cloned(),
            restarted_at: annotations.get(RESTARTED_AT).and_then(|t| t.parse::<Timestamp>().ok()),
            restarted_at_verbatim: annotations.get(RESTARTED_AT).cloned(),
            // Unreadable (edited by hand): not put back, restarted instead.
            restarted_from: own.get(RESTARTED_FROM).and_then(|p| serde_json::from_str(p).ok()),
            rolled_back_to: own.get(ROLLED_BACK_TO).cloned(),
            rolled_out,
            stale_pods,
            proxies,
        });
    }
    Ok(out)
}

/// How long one control plane replica's report may take through the apiserver.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What revision `revision`'s control plane reports of its proxies: `/debug/syncz` on the
/// monitoring port of every Ready replica (each proxy is connected to one), read through the
/// apiserver's pod proxy so that it works wherever the operator runs. Any failure is
/// [`Sync::Unknown`] with the reason.
pub async fn sync_state(client: &Client, namespace: &str, revision: &str) -> Sync {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("app={CONTROL_PLANE},{REVISION_LABEL}={revision}");
    let pods = match tokio::time::timeout(SYNC_TIMEOUT, api.list(&ListParams::default().labels(&selector))).await {
        Ok(Ok(list)) => list.items,
        Ok(Err(e)) => return Sync::Unknown(format!("listing the pods of revision {revision}: {e}")),
        Err(_) => return Sync::Unknown(format!("listing the pods of revision {revision}: no answer")),
    };
    let ready: Vec<String> =
        pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p)).map(|p| p.name_any()).collect();
    if ready.is_empty() {
        return Sync::Unknown(format!("revision {revision} has no Ready control plane pod"));
    }
    let mut merged = Sync::Known(BTreeMap::new());
    for pod in ready {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{PORT_MONITORING}/proxy/debug/syncz");
        let report = match http::Request::get(&path).body(Vec::new()) {
            Err(e) => Sync::Unknown(format!("GET {path}: {e}")),
            Ok(request) => match tokio::time::timeout(SYNC_TIMEOUT, client.request_text(request)).await {
                Ok(Ok(body)) => Sync::from_syncz(&body),
                Ok(Err(e)) => Sync::Unknown(format!("GET {path}: {e}")),
                Err(_) => Sync::Unknown(format!("GET {path}: no answer within {}s", SYNC_TIMEOUT.as_secs())),
            },
        };
        merged = merged.merge(report);
    }
    merged
}

fn pod_ready(p: &Pod) -> bool {
    let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn template_annotations(t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> BTreeMap<String, String> {
    t.and_then(|t| t.metadata.as_ref()).and_then(|m| m.annotations.clone()).unwrap_or_default()
}

fn deployment_rolled_out(d: &Deployment) -> bool {
    component_status("", Some(d)).ready
}

fn statefulset_rolled_out(s: &StatefulSet) -> bool {
    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &s.status else { return false };
    st.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0)
        && st.updated_replicas.unwrap_or(0) >= want
        && st.ready_replicas.unwrap_or(0) >= want
        && st.current_revision == st.update_revision
}

fn daemonset_rolled_out(d: &DaemonSet) -> bool {
    let Some(st) = &d.status else { return false };
    st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && st.updated_number_scheduled.unwrap_or(0) >= st.desired_number_scheduled
        && st.number_available.unwrap_or(0) >= st.desired_number_scheduled
}

/// Restarts a workload onto `revision` the way `kubectl rollout restart` does: a new
/// pod-template annotation, so the workload's own rollout strategy (surge, PDBs) applies. The
/// stamp it replaces is kept on the workload ([`RESTARTED_FROM`]) for a rollback to put back.
pub async fn restart(client: &Client, w: &Workload, revision: &str, now: Timestamp) -> Result<(), Error> {
    let previous = Previous {
        stamp: Stamp { revision: w.restarted_for.clone(), at: w.restarted_at_verbatim.clone() },
        to: revision.to_string(),
    };
    let patch = json!({
        "metadata": {"annotations": {
            RESTARTED_FROM: serde_json::to_string(&previous).unwrap_or_default(),
            ROLLED_BACK_TO: null,
        }},
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_FOR: revision,
            RESTARTED_AT: now.to_string(),
        }}}},
    });
    patch_workload(client, w, &patch, "restart").await
}

/// Puts a workload's pod-template stamp back to what it was before the restart for the
/// revision being abandoned (`kubectl rollout undo`: the previous ReplicaSet is scaled back
/// up, no new one is made), marking the workload as put back for `revision`.
pub async fn undo(client: &Client, w: &Workload, revision: &str) -> Result<(), Error> {
    let Some(previous) = &w.restarted_from else { return Ok(()) };
    let patch = json!({
        "metadata": {"annotations": {RESTARTED_FROM: null, ROLLED_BACK_TO: revision}},
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_FOR: previous.stamp.revision,
            RESTARTED_AT: previous.stamp.at,
        }}}},
    });
    patch_workload(client, w, &patch, "roll back").await
}

/// A merge patch of a workload (null removes a key).
async fn patch_workload(
    client: &Client,
    w: &Workload,
    patch: &serde_json::Value,
    action: &'static str,
) -> Result<(), Error> {
    let patch = Patch::Merge(patch);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let ns = w.namespace.as_str();
    let res = match w.kind {
        Kind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), ns).patch(&w.name, &params, &patch).await.map(drop)
        }
        Kind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), ns).patch(&w.name, &params, &patch).await.map(drop)
        }
        Kind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client.clone(), ns).patch(&w.name, &params, &patch).await.map(drop)
        }
    };
    res.map_err(ApplyError::during(action, w.describe()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slimmed pod answers every question a reconcile asks of it as the whole pod does, and
    /// keeps none of the rest.
    #[test]
    fn a_slim_pod_answers_what_a_reconcile_reads_and_keeps_nothing_else() {
        let whole: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "reviews-v2-5d8f-abcde", "namespace": "bookinfo",
                "labels": {"app": "reviews", "pod-template-hash": "5d8f", REVISION_LABEL: "1-1-0", "security.istio.io/tlsMode": "istio"},
                "annotations": {"sidecar.istio.io/status": "{\"containers\":[\"skein-proxy\"]}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v2-5d8f", "uid": "u", "controller": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]
            },
            "spec": {
                "containers": [
                    {"name": "reviews", "image": "bookinfo/reviews:v2", "env": [{"name": "A", "value": "b"}]},
                    {"name": PROXY_CONTAINER, "image": "registry.skein.dev/skein/skein-proxy:1.1.0", "args": ["proxy"]}
                ],
                "initContainers": [{"name": "skein-init", "image": "registry.skein.dev/skein/skein-proxy:1.1.0", "command": ["init"]}],
                "volumes": [{"name": "certs", "emptyDir": {}}],
                "nodeName": "node-1"
            },
            "status": {"phase": "Running", "podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let mut slim = whole.clone();
        slim_pod(&mut slim);
        let (whole, slim) = (Arc::new(whole), Arc::new(slim));
        assert_eq!(owner(&slim), owner(&whole));
        assert_eq!(owner(&slim), Some((Kind::Deployment, "reviews-v2".to_string())));
        assert_eq!(proxy_image(&slim), proxy_image(&whole));
        let proxy = "registry.skein.dev/skein/skein-proxy:1.1.0";
        for (rev, image) in [("1-1-0", proxy), ("1-2-0", proxy), ("1-1-0", "other:1.1.0")] {
            assert_eq!(current(&slim, rev, image), current(&whole, rev, image), "{rev} {image}");
        }
        assert!(current(&slim, "1-1-0", proxy) && !current(&slim, "1-2-0", proxy));
        assert_eq!(in_use(std::slice::from_ref(&slim)), in_use(std::slice::from_ref(&whole)));
        assert_eq!(
            format!("{:?}", proxies(std::slice::from_ref(&slim))),
            format!("{:?}", proxies(std::slice::from_ref(&whole)))
        );
        assert_eq!(slim.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
        let mut leaving = (*whole).clone();
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        slim_pod(&mut leaving);
        assert!(current(&leaving, "1-2-0", proxy), "a pod being deleted stays one");
        // The rest is gone.
        let text = serde_json::to_string(slim.as_ref()).unwrap();
        for gone in
            ["managedFields", "annotations", "env", "args", "command", "volumes", "nodeName", "podIP", "conditions"]
        {
            assert!(!text.contains(gone), "{gone} kept: {text}");
        }
    }
}
