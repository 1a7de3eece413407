//! The operator's install path against a real kube-apiserver: install, readiness, drift repair,
//! validation, deletion, steady state, apiserver restart and leader election.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use skein_api::MeshControlPlane;
use skein_e2e::{Cluster, Operator, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// A cluster with Skein's CRDs installed and an operator running.
async fn setup(prefix: &str) -> (Cluster, Operator) {
    let cluster = Cluster::start(prefix).await.expect("cluster starts");
    cluster.install_crds().await.expect("CRDs installed");
    let operator = Operator::start(&cluster, "op-a").expect("operator starts");
    (cluster, operator)
}

fn apply(cluster: &Cluster, yaml: &str) -> Result<String, String> {
    let out = cluster.kubectl(&["apply", "-f", "-"], Some(yaml));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// MeshControlPlane `name` with `spec` (indented YAML lines), preceded by its namespace, which
/// the user creates as for Istio (the operator never does).
fn mcp_yaml(name: &str, spec: &str) -> String {
    let ns = spec.lines().find_map(|l| l.strip_prefix("  namespace: ")).unwrap_or("istio-system").trim();
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n{}", mcp_doc(name, spec))
}

/// MeshControlPlane `name` with `spec` alone.
fn mcp_doc(name: &str, spec: &str) -> String {
    format!("apiVersion: mesh.skein.dev/v1alpha1\nkind: MeshControlPlane\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

fn condition(mcp: &MeshControlPlane, type_: &str) -> Option<(String, String, String)> {
    mcp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_ready(client: &Client, name: &str, op: &Operator) -> MeshControlPlane {
    let api: Api<MeshControlPlane> = Api::all(client.clone());
    let start = std::time::Instant::now();
    loop {
        if let Ok(m) = api.get(name).await {
            let current = m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation;
            if current && condition(&m, "Ready").is_some_and(|c| c.0 == "True") {
                return m;
            }
        }
        assert!(start.elapsed() < WAIT, "MeshControlPlane {name} not Ready; operator log:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.expect("apiserver answers")
}

#[tokio::test]
async fn applying_a_mesh_control_plane_installs_every_child_and_becomes_ready() {
    let (cluster, op) = setup("install").await;
    let c = cluster.client.clone();
    let api: Api<MeshControlPlane> = Api::all(c.clone());

    // Record every Ready value the object shows, from before it exists.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = {
        let (api, seen) = (api.clone(), seen.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            let stream = kube::runtime::watcher(api, kube::runtime::watcher::Config::default());
            let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(stream));
            while let Some(Ok(m)) = stream.next().await {
                if let Some((s, _, _)) = condition(&m, "Ready") {
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&s) {
                        seen.push(s);
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    apply(
        &cluster,
        &mcp_yaml(
            "mesh",
            "  namespace: mesh-system\n  components:\n    controlPlane: {replicas: 2}\n    eastWestGateway: {enabled: true}\n  multiCluster: {network: net1}\n",
        ),
    )
    .expect("valid spec applies");
    let mcp = wait_ready(&c, "mesh", &op).await;
    let status = mcp.status.clone().unwrap();
    assert_eq!(status.version.as_deref(), Some("1.0.2"), "stable channel resolves to 1.0.2");
    assert_eq!(status.channel.as_deref(), Some("stable"));
    assert_eq!(status.active_revision.as_deref(), Some("default"));
    assert_eq!(condition(&mcp, "Reconciled").unwrap().0, "True");
    assert_eq!(condition(&mcp, "IstioCRDsManaged").map(|c| (c.0, c.1)), Some(("True".into(), "Installed".into())));
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    for crd in skein_api::istio::crds() {
        let name = crd.metadata.name.unwrap();
        let live = get_opt(&crds, &name).await.unwrap_or_else(|| panic!("{name} installed"));
        assert_eq!(live.labels().get("app.kubernetes.io/managed-by").map(String::as_str), Some("skein-operator"));
        assert!(live.metadata.owner_references.unwrap_or_default().is_empty(), "{name} must outlive any one mesh");
    }
    let comps: BTreeMap<_, _> =
        status.components.iter().map(|c| (c.name.as_str(), (c.ready, c.ready_replicas))).collect();
    assert_eq!(comps.get("controlPlane"), Some(&(true, 2)));
    assert_eq!(comps.get("ingressGateway"), Some(&(true, 1)));
    assert_eq!(comps.get("eastWestGateway"), Some(&(true, 1)));
    assert!(!comps.contains_key("egressGateway"));

    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.first().map(String::as_str), Some("False"), "Ready=False before ready: {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("True"), "{seen:?}");

    let ns = "mesh-system";
    // The namespace is the user's (mcp_yaml applied it): the operator leaves it unannotated.
    let ns_obj = get_opt(&Api::<Namespace>::all(c.clone()), ns).await.expect("namespace");
    assert!(!ns_obj.annotations().keys().any(|k| k.contains("skein")), "{:?}", ns_obj.annotations());
    assert!(!ns_obj.labels().keys().any(|k| k.contains("skein")), "{:?}", ns_obj.labels());
    for name in ["skein-controlplane", "skein-ingressgateway", "skein-eastwestgateway"] {
        assert!(get_opt(&Api::<ServiceAccount>::namespaced(c.clone(), ns), name).await.is_some(), "SA {name}");
        let d = get_opt(&Api::<Deployment>::namespaced(c.clone(), ns), name)
            .await
            .unwrap_or_else(|| panic!("Deployment {name}"));
        let pod = d.spec.unwrap().template.spec.unwrap();
        if name == "skein-controlplane" {
            let args = pod.containers[0].args.clone().unwrap_or_default();
            assert!(args.iter().any(|a| a.starts_with("--proxy-image=")), "{args:?}");
        }
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert!(get_opt(&Api::<Service>::namespaced(c.clone(), ns), name).await.is_some(), "Service {name}");
    }
    let svc = get_opt(&Api::<Service>::namespaced(c.clone(), ns), "skein-controlplane").await.unwrap();
    let ports: Vec<i32> = svc.spec.unwrap().ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(ports, [15010, 15012, 15014, 15017]);
    let ew = get_opt(&Api::<Service>::namespaced(c.clone(), ns), "skein-eastwestgateway").await.unwrap();
    assert!(ew.spec.unwrap().ports.unwrap().iter().any(|p| p.port == 15443));
    assert!(
        get_opt(&Api::<PodDisruptionBudget>::namespaced(c.clone(), ns), "skein-controlplane").await.is_some(),
        "PDB for 2 replicas"
    );
    assert!(get_opt(&Api::<ConfigMap>::namespaced(c.clone(), ns), "skein-mesh").await.is_some());
    assert!(get_opt(&Api::<Role>::namespaced(c.clone(), ns), "skein-controlplane").await.is_some());
    assert!(get_opt(&Api::<RoleBinding>::namespaced(c.clone(), ns), "skein-controlplane").await.is_some());
    // Bound to the ClusterRole the operator's install ships; no ClusterRole is rendered.
    let crb = get_opt(&Api::<ClusterRoleBinding>::all(c.clone()), "skein-controlplane-mesh").await.unwrap();
    assert_eq!(crb.role_ref.name, "skein-controlplane");
    assert!(get_opt(&Api::<ClusterRole>::all(c.clone()), "skein-controlplane-mesh").await.is_none());

    // The webhook trusts the generated root, and the root is in Istio's cacerts layout.
    let ca = get_opt(&Api::<Secret>::namespaced(c.clone(), ns), "skein-ca").await.expect("root CA secret");
    let data = ca.data.unwrap();
    for key in ["ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"] {
        assert!(data.contains_key(key), "cacerts layout has {key}");
    }
    let hook = get_opt(&Api::<MutatingWebhookConfiguration>::all(c.clone()), "skein-sidecar-injector-mesh")
        .await
        .expect("webhook");
    let bundle = hook.webhooks.unwrap()[0].client_config.ca_bundle.clone().unwrap();
    assert_eq!(bundle.0, data["root-cert.pem"].0, "caBundle is the mesh root");
    let tls = get_opt(&Api::<Secret>::namespaced(c.clone(), ns), "skein-webhook-tls").await.expect("webhook cert");
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
}

#[tokio::test]
async fn deleted_or_edited_children_are_repaired() {
    let (cluster, op) = setup("drift").await;
    let c = cluster.client.clone();
    apply(&cluster, &mcp_yaml("mesh", "  components: {controlPlane: {replicas: 1}}\n")).unwrap();
    wait_ready(&c, "mesh", &op).await;
    let ns = "istio-system";
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), ns);
    let ca_before = get_opt(&Api::<Secret>::namespaced(c.clone(), ns), "skein-ca").await.unwrap().data;

    // Deleted Deployment comes back (a new object).
    let old_uid = deployments.get("skein-controlplane").await.unwrap().uid();
    deployments.delete("skein-controlplane", &DeleteParams::default()).await.unwrap();
    eventually("deleted Deployment recreated", Duration::from_secs(15), || async {
        get_opt(&deployments, "skein-controlplane").await.filter(|d| d.uid() != old_uid).map(|_| ())
    })
    .await;

    // Hand edits by another field manager are reverted.
    let by_hand = PatchParams::apply("someone-else").force();
    deployments
        .patch(
            "skein-controlplane",
            &by_hand,
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    eventually("replicas restored to 1", Duration::from_secs(15), || async {
        (get_opt(&deployments, "skein-controlplane").await?.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
    cms.patch(
        "skein-mesh",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"mesh": "trustDomain: evil.example\n"}})),
    )
    .await
    .unwrap();
    eventually("mesh config restored", Duration::from_secs(15), || async {
        let data = get_opt(&cms, "skein-mesh").await?.data?;
        data["mesh"].contains("trustDomain: cluster.local").then_some(())
    })
    .await;

    // Cluster-scoped children too.
    let bindings: Api<ClusterRoleBinding> = Api::all(c.clone());
    bindings.delete("skein-controlplane-mesh", &DeleteParams::default()).await.unwrap();
    eventually("ClusterRoleBinding recreated", Duration::from_secs(15), || async {
        get_opt(&bindings, "skein-controlplane-mesh").await.map(|_| ())
    })
    .await;
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
    hooks.delete("skein-sidecar-injector-mesh", &DeleteParams::default()).await.unwrap();
    eventually("webhook recreated", Duration::from_secs(15), || async {
        get_opt(&hooks, "skein-sidecar-injector-mesh").await.map(|_| ())
    })
    .await;

    // Repairs never regenerate the root of trust.
    let ca_after = get_opt(&Api::<Secret>::namespaced(c.clone(), ns), "skein-ca").await.unwrap().data;
    assert_eq!(ca_before, ca_after, "root CA unchanged");
    wait_ready(&c, "mesh", &op).await;
}

#[tokio::test]
async fn invalid_specs_are_rejected_by_the_apiserver_naming_the_field() {
    let (cluster, op) = setup("validate").await;
    let cases = [
        ("  channel: beta\n", "spec.channel"),
        ("  version: latest-please\n", "spec.version"),
        ("  components: {controlPlane: {replicas: 0}}\n", "spec.components.controlPlane.replicas"),
        ("  components: {ingressGateway: {serviceType: Magic}}\n", "spec.components.ingressGateway.serviceType"),
        ("  meshConfig: {outboundTrafficPolicy: {mode: DENY_ALL}}\n", "spec.meshConfig.outboundTrafficPolicy.mode"),
        ("  security: {rootCA: {type: Secret}}\n", "secretName is required when type is Secret"),
        ("  meshConfig: {enableTracing: true}\n", "tracing.address is required when enableTracing is true"),
        ("  updateStrategy: {type: BlueGreen}\n", "spec.updateStrategy.type"),
        ("  namespace: Not_A_Namespace\n", "spec.namespace"),
        ("  tag: \"dev build\"\n", "spec.tag"),
        ("  hub: \"registry.example/\"\n", "spec.hub"),
        (
            "  updateStrategy: {maintenanceWindows: [{start: \"24:00\", duration: 1h}]}\n",
            "spec.updateStrategy.maintenanceWindows[0].start",
        ),
        (
            "  updateStrategy: {maintenanceWindows: [{days: [Funday], start: \"02:00\", duration: 1h}]}\n",
            "spec.updateStrategy.maintenanceWindows[0].days[0]",
        ),
        (
            "  updateStrategy: {maintenanceWindows: [{start: \"02:00\", duration: 4 hours}]}\n",
            "spec.updateStrategy.maintenanceWindows[0].duration",
        ),
    ];
    for (spec, field) in cases {
        let err = apply(&cluster, &mcp_doc("bad", spec)).expect_err(spec);
        assert!(err.contains(field), "error for {spec:?} should name {field:?}: {err}");
    }

    // Immutable namespace: the change is refused and the object keeps its value.
    apply(&cluster, &mcp_yaml("mesh", "  namespace: first\n")).unwrap();
    wait_ready(&cluster.client, "mesh", &op).await;
    let err = apply(&cluster, &mcp_yaml("mesh", "  namespace: second\n")).expect_err("namespace is immutable");
    assert!(err.contains("namespace is immutable"), "{err}");
    let api: Api<MeshControlPlane> = Api::all(cluster.client.clone());
    assert_eq!(api.get("mesh").await.unwrap().spec.namespace, "first");
}

#[tokio::test]
async fn unknown_version_sets_reconciled_false_and_changes_nothing() {
    let (cluster, op) = setup("version").await;
    let c = cluster.client.clone();
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.1\n")).unwrap();
    wait_ready(&c, "mesh", &op).await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "istio-system");
    let before = deployments.get("skein-controlplane").await.unwrap();
    let image =
        |d: &Deployment| d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap();
    assert!(image(&before).ends_with(":1.0.1"), "{}", image(&before));
    // Argo CD with the shipped health check: the installed mesh is Healthy (the kwok node makes
    // its Deployments available).
    let health = skein_e2e::real::argocd_health(&cluster, "mesh");
    assert_eq!(health.0, "Healthy", "{health:?}");

    apply(&cluster, &mcp_yaml("mesh", "  version: 9.9.9\n")).unwrap();
    let api: Api<MeshControlPlane> = Api::all(c.clone());
    let m = eventually("Reconciled=False for an unknown version", WAIT, || async {
        let m = api.get("mesh").await.ok()?;
        let (status, _, _) = condition(&m, "Reconciled")?;
        (status == "False" && m.status.as_ref()?.observed_generation == m.metadata.generation).then_some(m)
    })
    .await;
    let (_, reason, message) = condition(&m, "Reconciled").unwrap();
    assert_eq!(reason, "InvalidVersion");
    assert!(message.contains("spec.version \"9.9.9\""), "{message}");
    assert_eq!(m.status.as_ref().unwrap().version.as_deref(), Some("1.0.1"), "still reports what is installed");
    assert_eq!(condition(&m, "Ready").unwrap().0, "True", "the installed release keeps serving");
    // GitOps tools see the refusal as a failure, not as Current (Ready is still True).
    let stalled = condition(&m, "Stalled").expect("Stalled condition");
    assert_eq!((stalled.0.as_str(), stalled.1.as_str()), ("True", "InvalidVersion"), "{:?}", m.status);
    assert!(condition(&m, "Reconciling").is_none(), "{:?}", m.status);
    let judged = skein_e2e::real::gitops_status(&cluster, &["meshcontrolplane", "mesh"]);
    assert_eq!(judged, ("Failed".to_string(), "Failed".to_string()), "kstatus / Flux kstatus");
    let health = skein_e2e::real::argocd_health(&cluster, "mesh");
    assert_eq!(health.0, "Degraded", "Argo CD: {health:?}");
    assert!(health.1.starts_with("InvalidVersion: ") && health.1.contains("9.9.9"), "{health:?}");
    let after = deployments.get("skein-controlplane").await.unwrap();
    assert_eq!(after.resource_version(), before.resource_version(), "installed Deployment untouched");

    // Update strategies the schema cannot judge are refused by the operator the same way,
    // naming the field.
    let strategies = [
        ("{workloadBatch: half}", "spec.updateStrategy.workloadBatch: \"half\""),
        ("{maintenanceWindows: [{start: \"02:00\", duration: 0m}]}", "maintenanceWindows[0].duration: \"0m\""),
    ];
    for (strategy, field) in strategies {
        apply(&cluster, &mcp_yaml("mesh", &format!("  version: 1.0.1\n  updateStrategy: {strategy}\n"))).unwrap();
        let m = eventually("Reconciled=False InvalidUpdateStrategy", WAIT, || async {
            let m = api.get("mesh").await.ok()?;
            let (status, reason, _) = condition(&m, "Reconciled")?;
            let current = m.status.as_ref()?.observed_generation == m.metadata.generation;
            (current && status == "False" && reason == "InvalidUpdateStrategy").then_some(m)
        })
        .await;
        let (_, _, message) = condition(&m, "Reconciled").unwrap();
        assert!(message.contains(field), "names {field}: {message}");
        assert_eq!(condition(&m, "Stalled").map(|c| c.1), Some("InvalidUpdateStrategy".to_string()));
        assert_eq!(condition(&m, "Ready").unwrap().0, "True", "the installed release keeps serving");
        let after = deployments.get("skein-controlplane").await.unwrap();
        assert_eq!(after.resource_version(), before.resource_version(), "installed Deployment untouched");
    }
    // `kubectl describe mcp mesh` tells the story: what was applied, and why the spec was refused.
    let events = eventually("Warning InvalidVersion event", WAIT, || async {
        let out = cluster.kubectl(
            &[
                "get",
                "events",
                "-A",
                "--field-selector",
                "involvedObject.name=mesh",
                "-o",
                "jsonpath={range .items[*]}{.type} {.reason} {.note}{.message}{\"\\n\"}{end}",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines().any(|l| l.starts_with("Warning InvalidVersion") && l.contains("9.9.9")).then_some(text)
    })
    .await;
    assert!(
        events.lines().any(|l| l.starts_with("Normal Applied") && l.contains("release 1.0.1: applied")),
        "{events}"
    );

    // An in-place version change rolls the images forward; status names the new version once
    // its control plane is Ready (Reconciling until then).
    let upgraded_to = |v: &'static str| {
        move |m: &MeshControlPlane| {
            let s = m.status.as_ref();
            s.and_then(|s| s.version.as_deref()) == Some(v)
                && condition(m, "Ready").is_some_and(|c| c.0 == "True")
                && condition(m, "Reconciling").is_none()
                && condition(m, "Stalled").is_none()
        }
    };
    apply(&cluster, &mcp_yaml("mesh", "  version: v1.0-latest\n")).unwrap();
    until_mcp(&api, "mesh", "upgraded in place to 1.0.2", &op, upgraded_to("1.0.2")).await;
    assert!(image(&deployments.get("skein-controlplane").await.unwrap()).ends_with(":1.0.2"));

    // Channels: with no version, `fast` takes 1.1.0.
    apply(&cluster, &mcp_yaml("mesh", "  channel: fast\n")).unwrap();
    until_mcp(&api, "mesh", "upgraded in place to 1.1.0", &op, upgraded_to("1.1.0")).await;
}

#[tokio::test]
async fn user_provided_root_ca_is_used_and_a_missing_one_is_reported() {
    let (cluster, op) = setup("cacerts").await;
    let c = cluster.client.clone();
    apply(&cluster, &mcp_yaml("mesh", "  security: {rootCA: {type: Secret, secretName: cacerts}}\n")).unwrap();
    let api: Api<MeshControlPlane> = Api::all(c.clone());
    let m = eventually("InvalidRootCA reported", WAIT, || async {
        let m = api.get("mesh").await.ok()?;
        (condition(&m, "Reconciled")?.1 == "InvalidRootCA").then_some(m)
    })
    .await;
    assert!(condition(&m, "Reconciled").unwrap().2.contains("cacerts"), "{:?}", condition(&m, "Reconciled"));
    assert_eq!(condition(&m, "Ready").unwrap().0, "False");
    assert!(
        get_opt(&Api::<Deployment>::namespaced(c.clone(), "istio-system"), "skein-controlplane").await.is_none(),
        "nothing installed"
    );

    // Provide the Secret (Istio's layout); the operator installs with it and never writes it.
    let ca = skein_support::pki::CaBundle::generate_self_signed("cluster.local").unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "istio-system");
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("cacerts".into()), ..Default::default() },
        data: Some(ca.to_secret_data().into_iter().map(|(k, v)| (k, k8s_openapi::ByteString(v))).collect()),
        ..Default::default()
    };
    secrets.create(&Default::default(), &secret).await.unwrap();
    wait_ready(&c, "mesh", &op).await;
    let hook =
        get_opt(&Api::<MutatingWebhookConfiguration>::all(c.clone()), "skein-sidecar-injector-mesh").await.unwrap();
    assert_eq!(hook.webhooks.unwrap()[0].client_config.ca_bundle.clone().unwrap().0, ca.root_cert_pem.as_bytes());
    assert!(get_opt(&secrets, "skein-ca").await.is_none(), "no self-signed root generated");
    let user = secrets.get("cacerts").await.unwrap();
    assert!(user.owner_references().is_empty(), "user's Secret is not adopted");
}

#[tokio::test]
async fn deleting_the_mesh_control_plane_removes_everything_it_created() {
    let (cluster, op) = setup("delete").await;
    let c = cluster.client.clone();
    let namespaces: Api<Namespace> = Api::all(c.clone());
    // Two installations, each in a namespace the user created (`mcp_yaml` applies it first).
    apply(&cluster, &mcp_yaml("ours", "  namespace: ours-system\n")).unwrap();
    apply(&cluster, &mcp_yaml("theirs", "  namespace: preexisting\n  components: {egressGateway: {enabled: true}}\n"))
        .unwrap();
    wait_ready(&c, "ours", &op).await;
    wait_ready(&c, "theirs", &op).await;

    let api: Api<MeshControlPlane> = Api::all(c.clone());
    api.delete("ours", &DeleteParams::default()).await.unwrap();
    api.delete("theirs", &DeleteParams::default()).await.unwrap();
    eventually("both MeshControlPlanes gone", WAIT, || async {
        (get_opt(&api, "ours").await.is_none() && get_opt(&api, "theirs").await.is_none()).then_some(())
    })
    .await;
    for name in ["ours", "theirs"] {
        let cr = format!("skein-controlplane-{name}");
        assert!(get_opt(&Api::<ClusterRoleBinding>::all(c.clone()), &cr).await.is_none(), "{cr}");
        let hook = format!("skein-sidecar-injector-{name}");
        assert!(get_opt(&Api::<MutatingWebhookConfiguration>::all(c.clone()), &hook).await.is_none(), "{hook}");
    }
    // The Istio CRDs stay: they hold the users' routing and policy.
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    assert!(get_opt(&crds, "virtualservices.networking.istio.io").await.is_some(), "Istio CRDs are never deleted");
    // The namespaces stay (the operator did not create them); what it put in them is collected.
    for ns in ["ours-system", "preexisting"] {
        let kept = get_opt(&namespaces, ns).await.expect("namespace kept");
        assert!(kept.metadata.deletion_timestamp.is_none(), "{ns}");
    }
    eventually("children in the kept namespace garbage-collected", WAIT, || async {
        let deps = Api::<Deployment>::namespaced(c.clone(), "preexisting").list(&Default::default()).await.ok()?;
        let secrets = Api::<Secret>::namespaced(c.clone(), "preexisting").list(&Default::default()).await.ok()?;
        let cms = Api::<ConfigMap>::namespaced(c.clone(), "preexisting")
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=skein-operator"))
            .await
            .ok()?;
        (deps.items.is_empty() && secrets.items.is_empty() && cms.items.is_empty()).then_some(())
    })
    .await;
}

/// Resource versions of the MeshControlPlane and everything it manages.
async fn versions(c: &Client, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let sel = kube::api::ListParams::default().labels("mesh.skein.dev/owner=mesh");
    macro_rules! collect {
        ($kind:ty, $api:expr) => {
            for o in $api.list(&sel).await.unwrap().items {
                let o: $kind = o;
                out.insert(format!("{}/{}", stringify!($kind), o.name_any()), o.resource_version().unwrap_or_default());
            }
        };
    }
    collect!(Deployment, Api::<Deployment>::namespaced(c.clone(), ns));
    collect!(Service, Api::<Service>::namespaced(c.clone(), ns));
    collect!(ServiceAccount, Api::<ServiceAccount>::namespaced(c.clone(), ns));
    collect!(ConfigMap, Api::<ConfigMap>::namespaced(c.clone(), ns));
    collect!(Secret, Api::<Secret>::namespaced(c.clone(), ns));
    collect!(Role, Api::<Role>::namespaced(c.clone(), ns));
    collect!(ClusterRoleBinding, Api::<ClusterRoleBinding>::all(c.clone()));
    collect!(MutatingWebhookConfiguration, Api::<MutatingWebhookConfiguration>::all(c.clone()));
    let m = Api::<MeshControlPlane>::all(c.clone()).get("mesh").await.unwrap();
    out.insert("MeshControlPlane/mesh".into(), m.resource_version().unwrap_or_default());
    out
}

#[tokio::test]
async fn steady_state_writes_nothing() {
    let (cluster, op) = setup("steady").await;
    let c = cluster.client.clone();
    apply(
        &cluster,
        &mcp_yaml("mesh", "  components: {egressGateway: {enabled: true}, eastWestGateway: {enabled: true}}\n"),
    )
    .unwrap();
    wait_ready(&c, "mesh", &op).await;
    // Let the last status write and watch events settle, then measure a window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = versions(&c, "istio-system").await;
    assert!(before.len() >= 15, "expected every managed object, got {before:?}");
    let applied = op.metric("skein_operator_objects_applied_total").await.expect("metric");
    let status_writes = op.metric("skein_operator_status_writes_total").await.expect("metric");
    let reconciles = op.metric("skein_operator_reconciles_total").await.expect("metric");

    // Force extra reconciles with no spec change (an unrelated annotation bumps no generation
    // and changes nothing desired): they must still write nothing.
    let api: Api<MeshControlPlane> = Api::all(c.clone());
    for i in 0..3 {
        api.patch(
            "mesh",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": i.to_string()}}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Another tool writes fields of the operator's objects that the operator does not own (a
    // label on the webhook configuration, an annotation on the control plane's Deployment):
    // each write is an event the operator reacts to, and none may be answered with a write
    // (Sail's hot loop on webhook rewrites).
    for i in 0..3 {
        let label = format!("team=t{i}");
        let out = cluster.kubectl(
            &["label", "--overwrite", "mutatingwebhookconfiguration", "skein-sidecar-injector-mesh", &label],
            None,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let note = format!("example.com/note=n{i}");
        let out = cluster.kubectl(
            &["annotate", "--overwrite", "-n", "istio-system", "deployment", "skein-controlplane", &note],
            None,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;

    let mut after = versions(&c, "istio-system").await;
    // Our own patches bumped these; nothing else may move.
    let mut before = before;
    for ours in [
        "MeshControlPlane/mesh",
        "MutatingWebhookConfiguration/skein-sidecar-injector-mesh",
        "Deployment/skein-controlplane",
    ] {
        after.remove(ours);
        before.remove(ours);
    }
    assert_eq!(before, after, "managed objects were written in steady state");
    assert!(
        op.metric("skein_operator_reconciles_total").await.unwrap() > reconciles,
        "the pokes did trigger reconciles"
    );
    assert_eq!(op.metric("skein_operator_objects_applied_total").await, Some(applied), "no object applied");
    assert_eq!(op.metric("skein_operator_status_writes_total").await, Some(status_writes), "no status written");
}

#[tokio::test]
async fn operator_converges_after_an_apiserver_restart_without_restarting_itself() {
    let (cluster, mut op) = setup("restart").await;
    let c = cluster.client.clone();
    apply(&cluster, &mcp_yaml("mesh", "  components: {controlPlane: {replicas: 1}}\n")).unwrap();
    wait_ready(&c, "mesh", &op).await;
    let pid = op.pid();

    cluster.stop_apiserver().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.start_apiserver().unwrap();

    // A change made after the restart is acted on by the same process.
    apply(&cluster, &mcp_yaml("mesh", "  components: {controlPlane: {replicas: 1}, egressGateway: {enabled: true}}\n"))
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "istio-system");
    eventually("egress gateway installed after the restart", WAIT, || async {
        get_opt(&deployments, "skein-egressgateway").await.map(|_| ())
    })
    .await;
    wait_ready(&c, "mesh", &op).await;
    assert!(op.is_running(), "operator exited; log:\n{}", op.log());
    assert_eq!(op.pid(), pid);
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let (cluster, mut leader) = setup("leader").await;
    let c = cluster.client.clone();
    eventually("first replica leads", WAIT, || async {
        (leader.metric("skein_operator_leader").await? == 1.0).then_some(())
    })
    .await;
    let standby = Operator::start(&cluster, "op-b").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(standby.metric("skein_operator_leader").await, Some(0.0), "standby must not lead");

    apply(&cluster, &mcp_yaml("mesh", "  components: {controlPlane: {replicas: 1}}\n")).unwrap();
    wait_ready(&c, "mesh", &leader).await;
    assert_eq!(standby.metric("skein_operator_reconciles_total").await, Some(0.0), "standby reconciled");

    leader.kill();
    eventually("standby takes the lease", WAIT, || async {
        (standby.metric("skein_operator_leader").await? == 1.0).then_some(())
    })
    .await;
    apply(&cluster, &mcp_yaml("mesh", "  components: {controlPlane: {replicas: 1}, egressGateway: {enabled: true}}\n"))
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "istio-system");
    eventually("new leader acts on changes", WAIT, || async {
        get_opt(&deployments, "skein-egressgateway").await.map(|_| ())
    })
    .await;
    let health = |path: &'static str| async move { skein_e2e::http_get(standby.metrics_port, path).await.is_ok() };
    assert!(health("/healthz").await && health("/readyz").await, "the leader's /healthz and /readyz answer 200");

    // Another holder takes the Lease (as after a partition): the replica notices at its next
    // renewal, stops leading, and stands again in the same process once that holder lapses.
    let pid = standby.pid();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(c.clone(), "default");
    let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap();
    let steal = json!({"spec": {"holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 6}});
    leases.patch("skein-operator-leader", &PatchParams::default(), &Patch::Merge(steal)).await.unwrap();
    eventually("the replica notices it lost the lease", WAIT, || async {
        (standby.metric("skein_operator_leader").await? == 0.0).then_some(())
    })
    .await;
    assert!(health("/healthz").await, "a replica that lost the lease stays alive");
    eventually("the same replica leads again once the intruder lapses", WAIT, || async {
        (standby.metric("skein_operator_leader").await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(standby.pid(), pid, "no restart");
    apply(&cluster, &mcp_yaml("mesh", "  components: {controlPlane: {replicas: 1}}\n")).unwrap();
    eventually("the re-elected replica acts on changes", WAIT, || async {
        get_opt(&deployments, "skein-egressgateway").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn istio_crds_owned_by_another_installation_are_left_alone_and_reported() {
    let (cluster, op) = setup("foreign-crds").await;
    let c = cluster.client.clone();
    // As an Istio (Helm) install leaves it: same CRD, another manager.
    let mut vs = skein_api::istio::crds()
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some("virtualservices.networking.istio.io"))
        .unwrap();
    vs.metadata.labels = Some([("app.kubernetes.io/managed-by".to_string(), "Helm".to_string())].into());
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.create(&Default::default(), &vs).await.unwrap();
    apply(&cluster, &mcp_yaml("mesh", "  namespace: mesh-system\n")).unwrap();
    let mcp = wait_ready(&c, "mesh", &op).await;
    let (status, reason, message) = condition(&mcp, "IstioCRDsManaged").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "OwnedByAnother"));
    assert!(message.contains("virtualservices.networking.istio.io (managed by Helm)"), "{message}");
    let after = get_opt(&crds, "virtualservices.networking.istio.io").await.unwrap();
    assert_eq!(after.labels().get("app.kubernetes.io/managed-by").map(String::as_str), Some("Helm"));
    let managers: Vec<String> =
        after.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|f| f.manager).collect();
    assert!(!managers.iter().any(|m| m.contains("skein")), "a foreign CRD must not be written: {managers:?}");
    // The others are Skein's.
    let dr = get_opt(&crds, "destinationrules.networking.istio.io").await.unwrap();
    assert_eq!(dr.labels().get("app.kubernetes.io/managed-by").map(String::as_str), Some("skein-operator"));
}

#[tokio::test]
async fn istio_crds_installed_by_hand_as_the_readme_says_are_recognised_as_skeins() {
    let (cluster, op) = setup("hand-crds").await;
    // README: `kubectl apply --server-side -k config/crd/istio`.
    cluster.install_istio_crds().await.unwrap();
    apply(&cluster, &mcp_yaml("mesh", "  namespace: mesh-system\n")).unwrap();
    let mcp = wait_ready(&cluster.client, "mesh", &op).await;
    assert_eq!(
        condition(&mcp, "IstioCRDsManaged").map(|c| (c.0, c.1, c.2)),
        Some(("True".into(), "Installed".into(), "the Istio API CRDs are installed by Skein".into()))
    );
}

/// A catalog file for `--catalog` (the format of `config/versions.yaml`).
fn catalog_file(cluster: &Cluster, name: &str, releases: &str) -> String {
    let path = cluster.scratch_dir().join(name);
    std::fs::write(&path, format!("registry: registry.skein.dev/skein\nreleases:\n{releases}")).unwrap();
    path.to_string_lossy().into_owned()
}

/// Waits (at most [`WAIT`]) until `check` holds for MeshControlPlane `name`; on timeout shows
/// its status and the operator's log.
async fn until_mcp(
    api: &Api<MeshControlPlane>,
    name: &str,
    what: &str,
    op: &Operator,
    check: impl Fn(&MeshControlPlane) -> bool,
) -> MeshControlPlane {
    let start = std::time::Instant::now();
    loop {
        let m = api.get_opt(name).await.expect("apiserver answers");
        if let Some(m) = m.as_ref().filter(|m| check(m)) {
            return m.clone();
        }
        if start.elapsed() > WAIT {
            let status = m.and_then(|m| m.status).map(|s| serde_json::to_string_pretty(&s).unwrap());
            let log = op.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{what}: not seen after {WAIT:?}; status {}\noperator log (last lines, newest first):\n{}",
                status.unwrap_or_default(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until MeshControlPlane `name`'s current generation is `Reconciled` with `reason`.
async fn until_reconciled(api: &Api<MeshControlPlane>, name: &str, reason: &str, op: &Operator) -> MeshControlPlane {
    until_mcp(api, name, &format!("Reconciled {reason}"), op, |m| {
        let current = m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation;
        current && condition(m, "Reconciled").is_some_and(|c| c.1 == reason)
    })
    .await
}

#[tokio::test]
async fn a_channel_follower_upgrades_when_a_new_catalog_arrives_and_end_of_life_releases_are_refused() {
    let cluster = Cluster::start("channel").await.expect("cluster starts");
    cluster.install_crds().await.expect("CRDs installed");
    let c = cluster.client.clone();
    let old = catalog_file(
        &cluster,
        "catalog-old.yaml",
        "  - {version: 1.0.0, channel: stable}\n  - {version: 1.0.1, channel: stable}\n",
    );
    let mut op =
        Operator::start_args(&cluster, "op-old", &cluster.kubeconfig, "default", &["--catalog", &old]).unwrap();
    // A minor channel: the newest stable 1.0.z.
    apply(&cluster, &mcp_yaml("mesh", "  channel: stable-1.0\n")).unwrap();
    let m = wait_ready(&c, "mesh", &op).await;
    let s = m.status.unwrap();
    assert_eq!((s.version.as_deref(), s.channel_head.as_deref()), (Some("1.0.1"), Some("1.0.1")));
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "istio-system");
    let image =
        |d: &Deployment| d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap();
    assert!(image(&deployments.get("skein-controlplane").await.unwrap()).ends_with(":1.0.1"));

    // An operator upgrade brings a newer catalog: 1.0.2 reached stable (and 1.1.1, which the
    // 1.0 line does not take), 1.0.0 is end-of-life.
    op.kill();
    let new = catalog_file(
        &cluster,
        "catalog-new.yaml",
        "  - {version: 1.0.0, channel: stable, endOfLife: true}\n  - {version: 1.0.1, channel: stable}\n  - {version: 1.0.2, channel: stable}\n  - {version: 1.1.0, channel: fast}\n  - {version: 1.1.1, channel: stable}\n",
    );
    // Held first (`paused`): the newer release is named, not installed.
    apply(&cluster, &mcp_yaml("mesh", "  channel: stable-1.0\n  updateStrategy: {paused: true}\n")).unwrap();
    let op = Operator::start_args(&cluster, "op-new", &cluster.kubeconfig, "default", &["--catalog", &new]).unwrap();
    let api: Api<MeshControlPlane> = Api::all(c.clone());
    let m = until_reconciled(&api, "mesh", "UpgradePaused", &op).await;
    let (_, _, message) = condition(&m, "Reconciled").unwrap();
    assert!(message.contains("upgrade to 1.0.2 is held"), "{message}");
    let health = skein_e2e::real::argocd_health(&cluster, "mesh");
    assert_eq!(health.0, "Suspended", "Argo CD shows a held upgrade as suspended: {health:?}");
    assert_eq!(m.status.as_ref().unwrap().version.as_deref(), Some("1.0.1"));
    assert!(image(&deployments.get("skein-controlplane").await.unwrap()).ends_with(":1.0.1"));

    // Unpaused, but outside its maintenance window (daily, opening in 6 hours): still held,
    // and the status says until when.
    let hhmm = |t: k8s_openapi::jiff::Timestamp| t.strftime("%H:%M").to_string();
    let now = k8s_openapi::jiff::Timestamp::now();
    let later = hhmm(now + k8s_openapi::jiff::SignedDuration::from_hours(6));
    let windowed = |start: &str, duration: &str| {
        format!(
            "  channel: stable-1.0\n  updateStrategy:\n    maintenanceWindows: [{{start: \"{start}\", duration: {duration}}}]\n"
        )
    };
    apply(&cluster, &mcp_yaml("mesh", &windowed(&later, "2h"))).unwrap();
    let m = until_reconciled(&api, "mesh", "OutsideMaintenanceWindow", &op).await;
    let (_, _, message) = condition(&m, "Reconciled").unwrap();
    assert!(message.contains("the upgrade to 1.0.2 waits for the next maintenance window"), "{message}");
    assert!(message.contains(&format!("T{later}:00Z")), "names the opening ({later} UTC): {message}");
    assert_eq!(m.status.as_ref().unwrap().version.as_deref(), Some("1.0.1"));
    assert!(condition(&m, "Reconciling").is_none(), "nothing in progress: {:?}", m.status);
    assert_eq!(skein_e2e::real::argocd_health(&cluster, "mesh").0, "Healthy", "waiting for a window is healthy");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(image(&deployments.get("skein-controlplane").await.unwrap()).ends_with(":1.0.1"), "not upgraded");

    // A window open now (it began an hour ago): the upgrade starts.
    let earlier = hhmm(now - k8s_openapi::jiff::SignedDuration::from_hours(1));
    apply(&cluster, &mcp_yaml("mesh", &windowed(&earlier, "3h"))).unwrap();
    let m = until_mcp(&api, "mesh", "the mesh follows stable-1.0 to 1.0.2", &op, |m| {
        let Some(s) = m.status.as_ref() else { return false };
        let done = s.version.as_deref() == Some("1.0.2") && s.upgrade.as_ref().is_some_and(|u| u.phase == "Complete");
        done && condition(m, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;
    let s = m.status.as_ref().unwrap();
    assert_eq!(s.channel_head.as_deref(), Some("1.0.2"));
    let u = s.upgrade.as_ref().unwrap();
    assert_eq!((u.from_version.as_str(), u.to_version.as_str()), ("1.0.1", "1.0.2"));
    assert!(image(&deployments.get("skein-controlplane").await.unwrap()).ends_with(":1.0.2"));
    assert!(condition(&m, "Reconciling").is_none() && condition(&m, "Stalled").is_none(), "{:?}", s.conditions);

    // Pinning the end-of-life release is refused, and nothing changes.
    let before = deployments.get("skein-controlplane").await.unwrap();
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.0\n")).unwrap();
    let m = until_mcp(&api, "mesh", "Stalled=True EndOfLife", &op, |m| {
        let current = m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation;
        current && condition(m, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "EndOfLife")
    })
    .await;
    let (_, _, message) = condition(&m, "Stalled").unwrap();
    assert!(message.contains("1.0.0 is end-of-life"), "{message}");
    assert_eq!(m.status.as_ref().unwrap().version.as_deref(), Some("1.0.2"));
    let after = deployments.get("skein-controlplane").await.unwrap();
    assert_eq!(after.resource_version(), before.resource_version(), "installed Deployment untouched: {}", op.log());

    // A new installation of it is refused before anything is installed.
    apply(&cluster, &mcp_yaml("eol", "  version: 1.0.0\n  namespace: eol-mesh\n")).unwrap();
    let m = until_mcp(&api, "eol", "Reconciled=False EndOfLife", &op, |m| {
        condition(m, "Reconciled").is_some_and(|c| c.0 == "False" && c.1 == "EndOfLife")
    })
    .await;
    assert_eq!(condition(&m, "Ready").unwrap().1, "NotInstalled");
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "eol-mesh");
    let nothing = deployments.list(&Default::default()).await.unwrap().items.is_empty();
    assert!(nothing, "nothing installed for an end-of-life release");
}

#[tokio::test]
async fn an_older_operator_never_drops_a_crd_version_objects_are_stored_in() {
    let (cluster, op) = setup("crd-versions").await;
    let c = cluster.client.clone();
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.2\n")).unwrap();
    wait_ready(&c, "mesh", &op).await;

    // A newer operator added `v2` as the storage version, and an object was stored in it.
    let crd = "virtualservices.networking.istio.io";
    let out = cluster.kubectl(&["get", "crd", crd, "-o", "json"], None);
    let mut body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions = body["spec"]["versions"].as_array_mut().unwrap();
    let mut v2 = versions[0].clone();
    assert_eq!(v2["name"], "v1");
    for v in versions.iter_mut() {
        v["storage"] = json!(false);
    }
    v2["name"] = json!("v2");
    v2["storage"] = json!(true);
    versions.push(v2);
    let out = cluster.kubectl(&["replace", "-f", "-"], Some(&body.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vs = "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: stored-in-v2, namespace: default}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}\n";
    eventually("a VirtualService stored in v2", WAIT, || async { apply(&cluster, vs).ok() }).await;
    let stored = cluster.kubectl(&["get", "crd", crd, "-o", "jsonpath={.status.storedVersions}"], None);
    assert!(String::from_utf8_lossy(&stored.stdout).contains("v2"), "{}", String::from_utf8_lossy(&stored.stdout));

    // This (older) operator reconciles again: its CRD lists no v2, yet v2 stays, served.
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.2\n  revisionTags: [prod]\n")).unwrap();
    let api: Api<MeshControlPlane> = Api::all(c.clone());
    let m = until_mcp(&api, "mesh", "Reconciled=True for generation 2", &op, |m| {
        let r = m.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Reconciled"));
        r.is_some_and(|r| r.status == "True" && r.observed_generation == Some(2))
    })
    .await;
    assert_eq!(m.status.unwrap().observed_generation, Some(2), "{}", op.log());
    let out = cluster.kubectl(&["get", "crd", crd, "-o", "json"], None);
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_name = |n: &str| live["spec"]["versions"].as_array().unwrap().iter().find(|v| v["name"] == n).cloned();
    let v2 = by_name("v2").expect("v2 kept");
    assert_eq!((v2["served"].as_bool(), v2["storage"].as_bool()), (Some(true), Some(false)));
    assert_eq!(by_name("v1").unwrap()["storage"], true, "the operator's storage version");
    let got =
        cluster.kubectl(&["get", "virtualservices.v2.networking.istio.io", "stored-in-v2", "-n", "default"], None);
    assert!(got.status.success(), "the object stays readable: {}", String::from_utf8_lossy(&got.stderr));
    assert!(!op.log().contains("storedVersions"), "no apply was refused: {}", op.log());
}

/// Another writer that keeps changing a field the spec sets (here `kubectl scale` of the
/// control plane, once a second, as a misconfigured autoscaler would) gets no 1:1 fight: the
/// first repairs are immediate, then they back off, with a Warning Event naming the object; once
/// the writer stops, the spec's value comes back.
#[tokio::test]
async fn a_writer_that_keeps_changing_a_child_meets_backoff_not_a_hot_loop() {
    let (cluster, op) = setup("fight").await;
    let c = cluster.client.clone();
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.2\n")).unwrap();
    wait_ready(&c, "mesh", &op).await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "istio-system");
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    // Record every replicas value the Deployment takes.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let recorder = {
        let (api, seen) = (deployments.clone(), seen.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            let cfg = kube::runtime::watcher::Config::default().fields("metadata.name=skein-controlplane");
            let stream = kube::runtime::WatchStreamExt::applied_objects(kube::runtime::watcher(api, cfg));
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(d)) = stream.next().await {
                let r = replicas(&d);
                let mut seen = seen.lock().unwrap();
                if seen.last() != Some(&r) {
                    seen.push(r);
                }
            }
        })
    };
    // 20 scale-ups, one a second (bounded in count and time).
    for _ in 0..20 {
        let out =
            cluster.kubectl(&["scale", "-n", "istio-system", "deployment/skein-controlplane", "--replicas=3"], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let reverts = seen.lock().unwrap().windows(2).filter(|w| w[0] == 3 && w[1] == 1).count();
    // Without back-off every scale was reverted (20); with it: 3 free repairs, then 10 s and
    // 20 s waits leave room for about two more in 20 s.
    assert!((3..=7).contains(&reverts), "{reverts} reverts in 20 s: {:?}\n{}", seen.lock().unwrap(), op.log());
    let events = eventually("Warning DriftRepairBackoff", WAIT, || async {
        let out = cluster.kubectl(
            &[
                "get",
                "events",
                "-A",
                "--field-selector",
                "reason=DriftRepairBackoff",
                "-o",
                "jsonpath={.items[*].message}",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("Deployment/skein-controlplane").then_some(text)
    })
    .await;
    assert!(events.contains("further repairs wait"), "{events}");
    // The writer stopped: the spec's replicas come back after the current back-off.
    eventually("replicas restored", Duration::from_secs(90), || async {
        (replicas(&deployments.get("skein-controlplane").await.ok()?) == 1).then_some(())
    })
    .await;
    recorder.abort();
}

/// With `autoscaling`, a HorizontalPodAutoscaler owns the control plane's replicas: what it
/// (here `kubectl scale`, as the autoscaler does through the scale subresource) sets is left
/// alone, with no repair and no Event; turning autoscaling off gives `replicas` back to the
/// spec and removes the autoscaler.
#[tokio::test]
async fn an_autoscaler_owns_replicas_when_autoscaling_is_set() {
    let (cluster, op) = setup("hpa").await;
    let c = cluster.client.clone();
    apply(
        &cluster,
        &mcp_yaml("mesh", "  version: 1.0.2\n  components: {controlPlane: {autoscaling: {maxReplicas: 5}}}\n"),
    )
    .unwrap();
    wait_ready(&c, "mesh", &op).await;
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(c.clone(), "istio-system");
    let hpa = hpas.get("skein-controlplane").await.expect("HorizontalPodAutoscaler");
    assert_eq!(hpa.spec.as_ref().unwrap().max_replicas, 5);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "istio-system");
    let log_before = op.log().len();
    let out = cluster.kubectl(&["scale", "-n", "istio-system", "deployment/skein-controlplane", "--replicas=3"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Reconciles happen (the Deployment changed and is watched); none puts replicas back.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let d = deployments.get("skein-controlplane").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3), "the autoscaler's replicas were reverted: {}", op.log());
    let since = op.log()[log_before..].to_string();
    assert!(!since.contains("object=Deployment/skein-controlplane"), "Deployment re-applied: {since}");

    // Back to a fixed size: the spec's replicas again, the autoscaler removed.
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.2\n  components: {controlPlane: {replicas: 2}}\n")).unwrap();
    eventually("replicas 2 and no HorizontalPodAutoscaler", WAIT, || async {
        let d = deployments.get("skein-controlplane").await.ok()?;
        let gone = hpas.get_opt("skein-controlplane").await.ok()?.is_none();
        (d.spec?.replicas == Some(2) && gone).then_some(())
    })
    .await;
}

/// With `security.webhookCABundle: External` a CA injector owns the webhook's `caBundle` (here
/// written as cert-manager's injector does with `inject-ca-from-secret`: the `ca.crt` of the
/// webhook's serving Secret, under its own field manager, once a second): the operator never
/// writes or repairs it, keeps it through its own changes to the webhook (a new revision tag),
/// and writes the mesh root again once the spec returns to `Operator`.
#[tokio::test]
async fn an_external_ca_injector_owns_the_webhook_ca_bundle() {
    let (cluster, op) = setup("cainject").await;
    let c = cluster.client.clone();
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.2\n  security: {webhookCABundle: External}\n")).unwrap();
    wait_ready(&c, "mesh", &op).await;
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
    let name = "skein-sidecar-injector-mesh";
    let bundles = |h: &MutatingWebhookConfiguration| -> Vec<Option<Vec<u8>>> {
        h.webhooks.iter().flatten().map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone())).collect()
    };
    let hook = hooks.get(name).await.unwrap();
    assert!(bundles(&hook).iter().all(Option::is_none), "the operator wrote caBundle: {:?}", bundles(&hook));
    let tls = Api::<Secret>::namespaced(c.clone(), "istio-system").get("skein-webhook-tls").await.unwrap();
    let root = tls.data.unwrap()["ca.crt"].0.clone();
    // What the injector writes differs from what the operator would (the root plus a CA being
    // rotated in), so a repair would show.
    let injected = [&root[..], b"-----BEGIN CERTIFICATE-----\nbmV4dA==\n-----END CERTIFICATE-----\n"].concat();

    let log_before = op.log().len();
    let inject = || async {
        let hook = hooks.get(name).await.unwrap();
        // webhooks merge by name (strategic merge patch), as `kubectl patch` sends it.
        let entries: Vec<_> = hook
            .webhooks
            .iter()
            .flatten()
            .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": k8s_openapi::ByteString(injected.clone())}}))
            .collect();
        let params = PatchParams { field_manager: Some("cert-manager-cainjector".into()), ..Default::default() };
        hooks.patch(name, &params, &Patch::Strategic(json!({"webhooks": entries}))).await.unwrap();
    };
    // The injector writes on every change it sees; here once a second for 8 s (bounded).
    for _ in 0..8 {
        inject().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let hook = hooks.get(name).await.unwrap();
    assert!(bundles(&hook).iter().all(|b| b.as_deref() == Some(&injected[..])), "injected caBundle kept");
    let since = op.log()[log_before..].to_string();
    assert!(!since.contains(&format!("object=MutatingWebhookConfiguration/{name}")), "webhook re-applied: {since}");
    let events = cluster.kubectl(&["get", "events", "-A", "--field-selector", "reason=DriftRepairBackoff"], None);
    assert!(!String::from_utf8_lossy(&events.stdout).contains("MutatingWebhookConfiguration"), "a fight was announced");

    // The operator's own change to the webhook (a revision tag) leaves the injected field.
    apply(
        &cluster,
        &mcp_yaml("mesh", "  version: 1.0.2\n  revisionTags: [prod]\n  security: {webhookCABundle: External}\n"),
    )
    .unwrap();
    let hook = eventually("revision tag in the webhook", WAIT, || async {
        let h = hooks.get(name).await.ok()?;
        serde_json::to_string(&h.webhooks).ok()?.contains("\"prod\"").then_some(h)
    })
    .await;
    assert!(bundles(&hook).iter().all(|b| b.as_deref() == Some(&injected[..])), "caBundle lost: {:?}", bundles(&hook));

    // Back to the operator: it puts the mesh root back.
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.2\n  revisionTags: [prod]\n")).unwrap();
    eventually("the mesh root restored in caBundle", WAIT, || async {
        let h = hooks.get(name).await.ok()?;
        bundles(&h).iter().all(|b| b.as_deref() == Some(&root[..])).then_some(())
    })
    .await;
}

/// A MeshControlPlane the operator has not looked at yet (here: no operator running) reads
/// InProgress to kstatus and Flux, not Current: the CRD defaults `status.observedGeneration` to
/// 0, so Flux's `wait` cannot pass before the operator has acted. Argo CD shows Progressing.
/// Once the operator runs, the mesh becomes Current.
#[tokio::test]
async fn a_new_mesh_reads_in_progress_until_the_operator_has_seen_it() {
    let cluster = Cluster::start("gitops-new").await.expect("cluster starts");
    cluster.install_crds().await.expect("CRDs installed");
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.2\n")).unwrap();
    let judged = skein_e2e::real::gitops_status(&cluster, &["meshcontrolplane", "mesh"]);
    assert_eq!(judged, ("InProgress".to_string(), "InProgress".to_string()), "kstatus / Flux kstatus");
    let health = skein_e2e::real::argocd_health(&cluster, "mesh");
    assert_eq!(health.0, "Progressing", "Argo CD: {health:?}");
    let op = Operator::start(&cluster, "op-a").expect("operator starts");
    wait_ready(&cluster.client, "mesh", &op).await;
    eventually("kstatus Current", WAIT, || async {
        let judged = skein_e2e::real::gitops_status(&cluster, &["meshcontrolplane", "mesh"]);
        (judged == ("Current".to_string(), "Current".to_string())).then_some(())
    })
    .await;
}

/// What GitOps tools show while a MeshControlPlane is deleted: kstatus and Flux's kstatus say
/// Terminating and Argo CD (Skein's health check) Progressing while the finalizer runs (held
/// here by stopping the operator), and the object is gone once the operator is back.
#[tokio::test]
async fn a_mesh_being_deleted_reads_terminating_then_goes() {
    let (cluster, mut op) = setup("gitops-delete").await;
    let c = cluster.client.clone();
    apply(&cluster, &mcp_yaml("mesh", "  version: 1.0.2\n")).unwrap();
    wait_ready(&c, "mesh", &op).await;
    op.kill();
    let api: Api<MeshControlPlane> = Api::all(c.clone());
    api.delete("mesh", &DeleteParams::default()).await.unwrap();
    let m = api.get("mesh").await.expect("held by the finalizer");
    assert!(m.metadata.deletion_timestamp.is_some());
    let judged = skein_e2e::real::gitops_status(&cluster, &["meshcontrolplane", "mesh"]);
    assert_eq!(judged, ("Terminating".to_string(), "Terminating".to_string()), "kstatus / Flux kstatus");
    let health = skein_e2e::real::argocd_health(&cluster, "mesh");
    assert_eq!(health.0, "Progressing", "Argo CD: {health:?}");
    let op = Operator::start(&cluster, "op-b").unwrap();
    eventually("MeshControlPlane gone", WAIT, || async { api.get_opt("mesh").await.ok()?.is_none().then_some(()) })
        .await;
    drop(op);
}

#[test]
fn an_empty_or_truncated_catalog_file_stops_the_operator_naming_the_file() {
    let bin = skein_e2e::target_dir().join("debug/skein-operator");
    assert!(bin.exists(), "{} missing: run `cargo build -p skein-operator` first", bin.display());
    let dir = std::env::temp_dir().join(format!("skein-catalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("empty.yaml", "", "the document is empty"),
        // The YAML error, with where it is.
        ("truncated.yaml", "registry: r.example/skein\nreleases:\n  - {version: 1.0", "at line 4"),
        ("bad-version.yaml", "registry: r.example/skein\nreleases:\n  - {version: one, channel: stable}\n", "\"one\""),
    ];
    for (name, text, why) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        // It stops before it needs a cluster: the kubeconfig does not exist.
        let out = std::process::Command::new(&bin)
            .args(["--catalog", &path.to_string_lossy()])
            .env("KUBECONFIG", dir.join("none"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: the operator must not start");
        let want = format!("--catalog {}: ", path.display());
        assert!(stderr.contains(&want) && stderr.contains(why), "{name}: names the file and {why:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
