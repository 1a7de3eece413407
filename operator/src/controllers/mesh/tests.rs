//! The reconciler against an in-memory apiserver ([`FakeApiServer`]): what it writes, in which
//! order, and that a converged installation writes nothing; between the pure render tests and
//! the e2e tests on real apiservers.

use std::collections::BTreeSet;

use serde_json::Value;
use skein_api::MeshControlPlaneSpec;

use super::*;
use crate::{
    fixtures::{FakeApiServer, Write},
    telemetry::Metrics,
    upgrade::catalog::Catalog,
};

const MCP: &str = "/apis/mesh.skein.dev/v1alpha1/meshcontrolplanes/mesh";

/// A fake apiserver holding one MeshControlPlane `mesh` with `spec` (finalizer already set, as
/// after the first pass) and its namespace, and a context talking to it.
fn setup(spec: &str) -> (FakeApiServer, Arc<Context>) {
    let (fake, ctx) = setup_without_namespace(spec, crate::context::Scope::Cluster);
    let ns = stored(&fake).spec.namespace.clone();
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    fake.insert(&format!("/api/v1/namespaces/{ns}"), body);
    (fake, ctx)
}

fn setup_without_namespace(spec: &str, scope: crate::context::Scope) -> (FakeApiServer, Arc<Context>) {
    let spec: MeshControlPlaneSpec = serde_yaml::from_str(spec).unwrap();
    let mut m = MeshControlPlane::new("mesh", spec);
    m.metadata.uid = Some("uid-1".into());
    m.metadata.generation = Some(1);
    m.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let fake = FakeApiServer::default();
    fake.insert(MCP, serde_json::to_value(&m).unwrap());
    let ctx = Context::new(fake.client(), Catalog::builtin().unwrap(), Metrics::default(), scope);
    (fake, ctx)
}

fn stored(fake: &FakeApiServer) -> Arc<MeshControlPlane> {
    Arc::new(serde_json::from_value(fake.get(MCP).unwrap()).unwrap())
}

async fn pass(fake: &FakeApiServer, ctx: &Arc<Context>) -> Result<Action, Error> {
    reconcile(stored(fake), ctx.clone()).await
}

fn condition(fake: &FakeApiServer, type_: ConditionType) -> (String, String, String) {
    let m = fake.get(MCP).unwrap();
    let c = m["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_.as_str())
        .unwrap_or_else(|| panic!("no {type_} condition in {}", m["status"]));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// `(type, reason, note)` of the Events recorded so far.
fn events(fake: &FakeApiServer) -> Vec<(String, String, String)> {
    fake.writes()
        .into_iter()
        .filter(|w| w.method == "POST" && w.path.contains("/events"))
        .filter_map(|w| fake.get(&w.path))
        .map(|e: Value| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("note"))
        })
        .collect()
}

fn write(method: &str, path: &str, kind: &str) -> Write {
    Write { method: method.into(), path: path.into(), kind: kind.into() }
}

#[tokio::test]
async fn a_new_mesh_says_not_ready_first_installs_everything_and_a_converged_pass_writes_nothing() {
    let (fake, ctx) = setup("version: 1.0.2\n");
    let action = pass(&fake, &ctx).await.unwrap();
    let writes = fake.writes();
    // Ready=False is the very first write, so GitOps tools never see a status-less object.
    assert_eq!(writes[0], write("PATCH", &format!("{MCP}/status"), "merge"));
    // The root CA is created (never applied over); everything else applied. The namespace
    // exists already: the operator never creates one.
    assert!(!writes.iter().any(|w| w.path == "/api/v1/namespaces" || w.path == "/api/v1/namespaces/istio-system"));
    assert!(writes.contains(&write("POST", "/api/v1/namespaces/istio-system/secrets/skein-ca", "")));
    let applied: BTreeSet<&str> = writes.iter().filter(|w| w.kind == "apply").map(|w| w.path.as_str()).collect();
    for path in [
        "/api/v1/namespaces/istio-system/secrets/skein-webhook-tls",
        "/apis/apps/v1/namespaces/istio-system/deployments/skein-controlplane",
        "/apis/apps/v1/namespaces/istio-system/deployments/skein-ingressgateway",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/skein-sidecar-injector-mesh",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/skein-controlplane-mesh",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/virtualservices.networking.istio.io",
    ] {
        assert!(applied.contains(path), "{path} not applied: {applied:#?}");
    }
    // Status follows what runs: no Deployment is available in a fake apiserver.
    assert_eq!(condition(&fake, ConditionType::Reconciled).1, "Applied");
    assert_eq!(condition(&fake, ConditionType::IstioCrdsManaged).0, "True");
    let (ready, reason, message) = condition(&fake, ConditionType::Ready);
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "ComponentsNotReady"));
    assert!(message.contains("controlPlane"), "{message}");
    assert_eq!(action, Action::requeue(PENDING_RECHECK));
    let ev = events(&fake);
    assert!(ev.iter().any(|(t, r, n)| t == "Normal" && r == "GeneratedRootCA" && n.contains("skein-ca")), "{ev:?}");
    assert!(ev.iter().any(|(t, r, n)| t == "Normal" && r == "Applied" && n.starts_with("release 1.0.2: applied")));

    // A pass over the converged installation reads and writes nothing: no object, no status,
    // no Event.
    let before = fake.writes().len();
    pass(&fake, &ctx).await.unwrap();
    assert_eq!(fake.writes()[before..], [], "writes in steady state");
}

#[tokio::test]
async fn an_unknown_version_is_a_condition_and_an_event_and_installs_nothing() {
    let (fake, ctx) = setup("version: 9.9.9\n");
    let action = pass(&fake, &ctx).await.unwrap();
    assert_eq!(action, Action::await_change(), "only a spec change can fix it: no requeue");
    let (status, reason, message) = condition(&fake, ConditionType::Reconciled);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidVersion"));
    assert!(message.contains("9.9.9"), "{message}");
    assert_eq!(condition(&fake, ConditionType::Ready).1, "NotInstalled");
    let writes = fake.writes();
    assert!(
        writes.iter().all(|w| w.path.starts_with(MCP) || w.path.contains("/events")),
        "nothing but status and Events: {writes:#?}"
    );
    assert_eq!(events(&fake).iter().filter(|(t, r, _)| t == "Warning" && r == "InvalidVersion").count(), 1);
    // Looked at again (a resync): the same verdict is neither re-written nor re-announced.
    let before = fake.writes().len();
    pass(&fake, &ctx).await.unwrap();
    assert_eq!(fake.writes()[before..], [], "writes for an unchanged refusal");
}

#[tokio::test]
async fn a_namespace_that_is_missing_or_not_managed_is_refused_as_stalled_and_nothing_is_written() {
    // Missing: looked at again soon (namespaces are not watched), Stalled for kstatus.
    let (fake, ctx) = setup_without_namespace("version: 1.0.2\n", crate::context::Scope::Cluster);
    let action = pass(&fake, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let (status, reason, message) = condition(&fake, ConditionType::Stalled);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "NamespaceNotFound"));
    assert!(
        message.contains("spec.namespace") && message.contains("kubectl create namespace istio-system"),
        "{message}"
    );
    assert_eq!(condition(&fake, ConditionType::Reconciled).1, "NamespaceNotFound");
    let writes = fake.writes();
    assert!(writes.iter().all(|w| w.path.starts_with(MCP) || w.path.contains("/events")), "{writes:#?}");

    // Outside --mesh-namespaces: refused before any request in that namespace.
    let scope = crate::context::Scope::parse("istio-system");
    let (fake, ctx) = setup_without_namespace("version: 1.0.2\nnamespace: kube-system\n", scope);
    assert_eq!(pass(&fake, &ctx).await.unwrap(), Action::await_change());
    let (status, reason, message) = condition(&fake, ConditionType::Stalled);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "NamespaceNotManaged"));
    assert!(message.contains("\"kube-system\"") && message.contains("istio-system"), "{message}");
    let writes = fake.writes();
    assert!(writes.iter().all(|w| w.path.starts_with(MCP) || w.path.contains("/events")), "{writes:#?}");
}

#[tokio::test]
async fn a_missing_root_ca_secret_is_refused_and_looked_at_again_soon() {
    let (fake, ctx) = setup("version: 1.0.2\nsecurity: {rootCA: {type: Secret, secretName: cacerts}}\n");
    let action = pass(&fake, &ctx).await.unwrap();
    let (status, reason, message) = condition(&fake, ConditionType::Reconciled);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidRootCA"));
    assert!(message.contains("spec.security.rootCA.secretName") && message.contains("cacerts"), "{message}");
    assert_eq!(action, Action::requeue(Duration::from_secs(5)), "the user's Secret is not watched");
    assert!(fake.writes().iter().all(|w| w.kind != "apply"), "nothing applied without a CA");
}

#[tokio::test]
async fn apiserver_failures_are_counted_by_kind_and_retried_with_growing_back_off() {
    let (fake, ctx) = setup("version: 1.0.2\n");
    fake.fail("/api/v1/namespaces/istio-system");
    let err = pass(&fake, &ctx).await.unwrap_err();
    assert_eq!(err.metric_label(), "kube", "{err}");
    let m = stored(&fake);
    assert_eq!(error_policy(m.clone(), &err, ctx.clone()), Action::requeue(Duration::from_secs(1)));
    assert_eq!(error_policy(m.clone(), &err, ctx.clone()), Action::requeue(Duration::from_secs(2)));
    assert_eq!(error_policy(m, &err, ctx.clone()), Action::requeue(Duration::from_secs(4)));
    let metrics = ctx.metrics.render();
    assert!(metrics.contains("skein_operator_reconcile_errors_total{error=\"kube\"} 3"), "{metrics}");
}
