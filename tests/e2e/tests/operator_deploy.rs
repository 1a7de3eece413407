//! Installing the operator itself with kustomize (`config/default`), and proof that the
//! least-privilege RBAC it declares is enough for a full install/remove cycle.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, api::DeleteParams};
use skein_api::MeshControlPlane;
use skein_e2e::{Cluster, Operator, eventually, readme, repo_root};

const WAIT: Duration = Duration::from_secs(60);

fn kubectl_ok(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> String {
    let out = cluster.kubectl(args, stdin);
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The changed lines `kubectl diff --server-side -k dir` reports, but `resourceVersion`: a
/// controller's status write between diff's read and its dry-run apply moves the version, and
/// that is no drift of what was applied. Empty: nothing to apply.
fn server_side_diff(cluster: &Cluster, dir: &str) -> String {
    let out = cluster.kubectl(&["diff", "--server-side", "-k", dir], None);
    // Exit 0: no difference; 1: differences; anything else: diff itself failed.
    assert!(matches!(out.status.code(), Some(0 | 1)), "kubectl diff: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---"))
        .filter(|l| !l[1..].trim_start().starts_with("resourceVersion:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn kustomize_install_runs_the_operator_under_restricted_pod_security() {
    let cluster = Cluster::start("kustomize").await.unwrap();
    let dir = repo_root().join("config/default");
    let dir = dir.to_str().unwrap();
    // The documented install is client-side; a later server-side apply (GitOps tools, or the
    // user switching) must take over without conflicts, and leave nothing to diff.
    kubectl_ok(&cluster, &["apply", "-k", dir], None);
    kubectl_ok(&cluster, &["apply", "--server-side", "-k", dir], None);
    let drift = server_side_diff(&cluster, dir);
    assert!(drift.is_empty(), "kubectl diff --server-side after install is not empty:\n{drift}");
    // The namespace enforces the `restricted` Pod Security Standard, so the Pods only exist if
    // the operator's pod spec is non-root, seccomp-confined and capability-free.
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "skein-operator");
    eventually("operator Deployment available with 2 replicas", WAIT, || async {
        let d = deployments.get_opt("skein-operator").await.ok()??;
        (d.status?.available_replicas? == 2).then_some(())
    })
    .await;
    let crd = kubectl_ok(&cluster, &["get", "crd", "meshcontrolplanes.mesh.skein.dev", "-o", "name"], None);
    assert!(crd.contains("meshcontrolplanes.mesh.skein.dev"));
}

/// `kubectl auth can-i` as the operator's ServiceAccount: what it needs, and what the issue
/// listed as too broad and it must no longer be able to do.
#[tokio::test]
async fn the_operators_rbac_allows_what_it_does_and_nothing_listed_as_too_broad() {
    let cluster = Cluster::start("can-i").await.unwrap();
    let dir = repo_root().join("config/default");
    kubectl_ok(&cluster, &["apply", "--server-side", "-k", dir.to_str().unwrap()], None);
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        a.push("--as=system:serviceaccount:skein-operator:skein-operator");
        let out = cluster.kubectl(&a, None);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let must = [
        &["get", "secrets", "-n", "istio-system"][..],
        &["create", "secrets", "-n", "istio-system"],
        &["create", "deployments.apps", "-n", "istio-system"],
        &["delete", "deployments.apps", "-n", "istio-system"],
        &["create", "rolebindings.rbac.authorization.k8s.io", "-n", "istio-system"],
        &["create", "horizontalpodautoscalers.autoscaling", "-n", "istio-system"],
        &["update", "leases.coordination.k8s.io", "-n", "skein-operator"],
        &["bind", "clusterroles.rbac.authorization.k8s.io/skein-controlplane"],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["patch", "customresourcedefinitions.apiextensions.k8s.io/virtualservices.networking.istio.io"],
        // Workload migration restarts injected workloads wherever they are.
        &["patch", "deployments.apps", "-n", "bookinfo"],
        &["list", "pods", "-A"],
        &["patch", "meshcontrolplanes.mesh.skein.dev/status"],
    ];
    for args in must {
        assert!(can(args), "the operator needs {args:?}");
    }
    let must_not = [
        // No Secret outside the mesh namespace.
        &["get", "secrets", "-n", "kube-system"][..],
        &["list", "secrets", "-A"],
        &["create", "secrets", "-n", "default"],
        // No workloads created or deleted outside it.
        &["create", "deployments.apps", "-n", "kube-system"],
        &["delete", "deployments.apps", "-n", "default"],
        &["create", "pods", "-n", "istio-system"],
        // Namespaces, nodes, Leases of others.
        &["delete", "namespaces"],
        &["create", "namespaces"],
        &["update", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["update", "leases.coordination.k8s.io", "-n", "kube-node-lease"],
        &["patch", "nodes"],
        // No RBAC beyond binding the two shipped roles.
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
        &["bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin"],
        &["create", "roles.rbac.authorization.k8s.io", "-n", "kube-system"],
        // Only the Istio API CRDs, and never deleted.
        &["patch", "customresourcedefinitions.apiextensions.k8s.io/meshcontrolplanes.mesh.skein.dev"],
        &["delete", "customresourcedefinitions.apiextensions.k8s.io/virtualservices.networking.istio.io"],
        // Verbs it does not use.
        &["update", "meshcontrolplanes.mesh.skein.dev"],
        &["update", "mutatingwebhookconfigurations.admissionregistration.k8s.io"],
        &["create", "validatingwebhookconfigurations.admissionregistration.k8s.io"],
    ];
    for args in must_not {
        assert!(!can(args), "the operator must not be able to {args:?}");
    }
}

#[tokio::test]
async fn operator_with_only_its_declared_rbac_installs_and_removes_a_mesh() {
    let cluster = Cluster::start("rbac").await.unwrap();
    let dir = repo_root().join("config/default");
    kubectl_ok(&cluster, &["apply", "--server-side", "-k", dir.to_str().unwrap()], None);
    // The in-cluster replicas are kwok pods that run nothing; scale them away and run the real
    // binary here with exactly the ServiceAccount's permissions.
    kubectl_ok(&cluster, &["scale", "-n", "skein-operator", "deployment/skein-operator", "--replicas=0"], None);
    let kubeconfig = cluster.impersonating_kubeconfig("system:serviceaccount:skein-operator:skein-operator").unwrap();
    // The impersonation is in force: this identity may not, say, create Pods.
    let can =
        cluster.kubectl(&["--kubeconfig", kubeconfig.to_str().unwrap(), "auth", "can-i", "create", "pods", "-A"], None);
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    // As the Deployment runs it (config/manager/manager.yaml).
    let op =
        Operator::start_args(&cluster, "rbac", &kubeconfig, "skein-operator", &["--mesh-namespaces", "istio-system"])
            .unwrap();

    let c = cluster.client.clone();
    let production = std::fs::read_to_string(repo_root().join("config/samples/production.yaml")).unwrap();
    // The production sample uses a user CA: provide one in Istio's layout, in istio-system
    // (the install created it, with the operator's Role).
    let ca = skein_support::pki::CaBundle::generate_self_signed("cluster.local").unwrap();
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta { name: Some("cacerts".into()), ..Default::default() },
        data: Some(ca.to_secret_data().into_iter().map(|(k, v)| (k, k8s_openapi::ByteString(v))).collect()),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.clone(), "istio-system")
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    kubectl_ok(&cluster, &["apply", "-f", "-"], Some(&production));

    let api: Api<MeshControlPlane> = Api::all(c.clone());
    let start = std::time::Instant::now();
    loop {
        let m = api.get("production").await.unwrap();
        let ready =
            m.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            assert_eq!(m.status.unwrap().components.len(), 4, "control plane and three gateways");
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "not Ready with declared RBAC; status {:?}; operator log:\n{}",
            m.status,
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A mesh outside the operator's namespaces is refused up front, not attempted.
    kubectl_ok(
        &cluster,
        &["apply", "-f", "-"],
        Some(
            "apiVersion: mesh.skein.dev/v1alpha1\nkind: MeshControlPlane\nmetadata: {name: elsewhere}\nspec: {namespace: kube-system}\n",
        ),
    );
    let m = eventually("elsewhere: Stalled NamespaceNotManaged", WAIT, || async {
        let m = api.get("elsewhere").await.ok()?;
        let c = m.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Stalled")?.clone();
        (c.status == "True" && c.reason == "NamespaceNotManaged").then_some(c)
    })
    .await;
    assert!(m.message.contains("kube-system") && m.message.contains("istio-system"), "{}", m.message);
    // kube-client reports a 403 as `Forbidden`; matching "403" could hit a timestamp.
    assert!(!op.log().contains("Forbidden"), "a request was forbidden:\n{}", op.log());
    // Every write is recorded under the operator's name, apply or not (status, finalizer).
    for what in [&["meshcontrolplane", "production"][..], &["deployment", "-n", "istio-system", "skein-ingressgateway"]]
    {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend(["--show-managed-fields", "-o", "jsonpath={.metadata.managedFields[*].manager}"]);
        let managers = kubectl_ok(&cluster, &args, None);
        // The user's kubectl apply and the controller-manager may appear too; "unknown" (a
        // write without user agent or field manager) may not.
        assert!(!managers.split_whitespace().any(|m| m == "unknown"), "{what:?}: {managers}");
        assert!(managers.split_whitespace().any(|m| m == "skein-operator"), "{what:?}: {managers}");
    }
    api.delete("elsewhere", &DeleteParams::default()).await.unwrap();

    api.delete("production", &DeleteParams::default()).await.unwrap();
    eventually("MeshControlPlane removed with declared RBAC", WAIT, || async {
        api.get_opt("production").await.ok()?.is_none().then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "istio-system");
    eventually("children collected", WAIT, || async {
        deployments.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
}

/// The GitOps layout the README documents, in the order Argo CD's sync waves (or Flux's
/// `dependsOn`) apply it: wave 0 `config/default`, wave 1 `config/gitops/mesh` once the operator
/// is healthy; the mesh then reads Current to kstatus (Flux's `wait`) and Healthy to Argo CD
/// with the shipped health check, and the argocd-cm snippet merges into Argo CD's ConfigMap.
/// (No Argo CD or Flux controller runs here: what they would apply and judge does.)
#[tokio::test]
async fn gitops_layout_applies_in_wave_order_and_reads_healthy() {
    let cluster = Cluster::start("gitops").await.unwrap();
    let root = repo_root();
    let wave0 = root.join("config/default");
    kubectl_ok(&cluster, &["apply", "--server-side", "-k", wave0.to_str().unwrap()], None);
    cluster.wait_established("meshcontrolplanes.mesh.skein.dev").await.unwrap();
    // The in-cluster replicas are kwok pods: run the binary with the ServiceAccount's rights.
    kubectl_ok(&cluster, &["scale", "-n", "skein-operator", "deployment/skein-operator", "--replicas=0"], None);
    let kubeconfig = cluster.impersonating_kubeconfig("system:serviceaccount:skein-operator:skein-operator").unwrap();
    let op =
        Operator::start_args(&cluster, "gitops", &kubeconfig, "skein-operator", &["--mesh-namespaces", "istio-system"])
            .unwrap();
    let wave1 = root.join("config/gitops/mesh");
    kubectl_ok(&cluster, &["apply", "--server-side", "-k", wave1.to_str().unwrap()], None);
    let api: Api<MeshControlPlane> = Api::all(cluster.client.clone());
    eventually("the GitOps mesh Ready", WAIT, || async {
        let m = api.get_opt("default").await.ok()??;
        m.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    let judged = skein_e2e::real::gitops_status(&cluster, &["meshcontrolplane", "default"]);
    assert_eq!(judged, ("Current".to_string(), "Current".to_string()), "kstatus / Flux; operator log:\n{}", op.log());
    let health = skein_e2e::real::argocd_health(&cluster, "default");
    assert_eq!(health.0, "Healthy", "{health:?}");
    // Nothing to diff in the synced mesh: the operator's status writes do not touch what Git
    // holds. (Wave 0 was scaled to 0 above; the kustomize test diffs the install.)
    let drift = server_side_diff(&cluster, wave1.to_str().unwrap());
    assert!(drift.is_empty(), "diff {}:\n{drift}", wave1.display());

    // The argocd-cm snippet, merged as the README says, carries the shipped script unchanged.
    kubectl_ok(&cluster, &["create", "namespace", "argocd"], None);
    kubectl_ok(
        &cluster,
        &["create", "configmap", "argocd-cm", "-n", "argocd", "--from-literal=url=https://argocd.example"],
        None,
    );
    readme::run(Some(&cluster), &readme::block("kubectl -n argocd patch cm argocd-cm"), &[]);
    let key = r"jsonpath={.data.resource\.customizations\.health\.mesh\.skein\.dev_MeshControlPlane}";
    let merged = kubectl_ok(&cluster, &["get", "cm", "argocd-cm", "-n", "argocd", "-o", key], None);
    let script = std::fs::read_to_string(
        root.join("config/argocd/resource_customizations/mesh.skein.dev/MeshControlPlane/health.lua"),
    )
    .unwrap();
    assert_eq!(merged.trim_end(), script.trim_end());
    let url = kubectl_ok(&cluster, &["get", "cm", "argocd-cm", "-n", "argocd", "-o", "jsonpath={.data.url}"], None);
    assert_eq!(url, "https://argocd.example", "the user's settings are kept");
}

/// helm (built by `hack/helm.sh`, or `SKEIN_HELM`).
fn helm() -> String {
    skein_e2e::go_tool("SKEIN_HELM", "helm.sh").to_string_lossy().into_owned()
}

/// `v` with whole floating-point numbers as integers (kustomize writes `10` where the generated
/// CRD file, which Helm passes through, says `10.0`: the same value).
fn whole_numbers(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() && n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
            Value::from(n.as_f64().unwrap_or_default() as i64)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(whole_numbers).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, whole_numbers(v))).collect()),
        other => other,
    }
}

/// Objects of a multi-document YAML stream, keyed `Kind namespace/name`.
fn objects(yaml: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let key = format!(
            "{} {}/{}",
            v["kind"].as_str().unwrap_or_default(),
            v["metadata"]["namespace"].as_str().unwrap_or_default(),
            v["metadata"]["name"].as_str().unwrap_or_default()
        );
        out.insert(key, whole_numbers(v));
    }
    out
}

/// The Helm chart and `config/default` are one install: with default values the chart renders
/// exactly the kustomize objects (but the operator's own namespace, which Helm's
/// `--create-namespace` makes, and the keep policy on the mesh namespace); and it installs on a
/// cluster, runs, and leaves the mesh namespace on uninstall.
#[tokio::test]
async fn helm_chart_renders_config_default_and_installs() {
    let helm = helm();
    let chart = repo_root().join("charts/skein-operator");
    let chart = chart.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&helm).args(args).output().unwrap();
        assert!(out.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rendered =
        run(&["template", "skein", chart, "-n", "skein-operator", "--include-crds", "--kube-version", "1.34.4"]);
    let mut from_helm = objects(&rendered);
    for (_, v) in from_helm.iter_mut() {
        let meta = v.get_mut("metadata").and_then(|m| m.as_object_mut()).unwrap();
        if let Some(a) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
            a.remove("helm.sh/resource-policy");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    let kustomized = std::process::Command::new("kubectl")
        .args(["kustomize", &repo_root().join("config/default").to_string_lossy()])
        .output()
        .unwrap();
    assert!(kustomized.status.success());
    let mut from_kustomize = objects(&String::from_utf8_lossy(&kustomized.stdout));
    assert!(from_kustomize.remove("Namespace /skein-operator").is_some());
    assert_eq!(
        from_helm.keys().collect::<Vec<_>>(),
        from_kustomize.keys().collect::<Vec<_>>(),
        "the chart and config/default install different objects"
    );
    for (key, want) in &from_kustomize {
        assert_eq!(&from_helm[key], want, "{key} differs between the chart and config/default");
    }

    // Installed with helm on a cluster: the operator runs, with its Role in the mesh namespace.
    let cluster = Cluster::start("helm").await.unwrap();
    let kubeconfig = cluster.kubeconfig.to_str().unwrap().to_string();
    run(&[
        "--kubeconfig",
        &kubeconfig,
        "install",
        "skein",
        chart,
        "-n",
        "skein-operator",
        "--create-namespace",
        "--wait",
        "--timeout",
        "2m",
    ]);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "skein-operator");
    let d = deployments.get("skein-operator").await.unwrap();
    assert_eq!(d.status.and_then(|s| s.available_replicas), Some(2));
    let can = cluster.kubectl(
        &[
            "auth",
            "can-i",
            "get",
            "secrets",
            "-n",
            "istio-system",
            "--as=system:serviceaccount:skein-operator:skein-operator",
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "yes");
    run(&["--kubeconfig", &kubeconfig, "uninstall", "skein", "-n", "skein-operator", "--wait"]);
    assert!(deployments.get_opt("skein-operator").await.unwrap().is_none(), "uninstalled");
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    let kept = ns.get("istio-system").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none(), "the mesh namespace is kept");
}

/// README's OLM block, as a user runs it before building bundle and catalog images: the
/// file-based catalog validates and the bundle renders (opm from its pinned Go module).
#[test]
fn readmes_olm_block_validates_the_catalog_and_renders_the_bundle() {
    let opm = skein_e2e::go_tool("SKEIN_OPM", "opm.sh");
    let out = readme::run(None, &readme::block("opm validate"), &[opm]);
    assert!(out.contains("olm.bundle") && out.contains("skein-operator"), "the bundle rendered: {out}");
}

/// README's Argo CD and Flux blocks, run against the CRDs of the pinned releases (from their Go
/// modules, `hack/gitops-crds.sh`): the apiserver validates the Application, the GitRepository
/// and both Kustomizations strictly against the real schemas, and they read back as written
/// (the mesh's Kustomization depending on the operator's). No Argo CD or Flux controller acts on
/// them here.
#[tokio::test]
async fn readmes_argo_cd_and_flux_blocks_apply_against_the_real_crds() {
    let cluster = Cluster::start("gitops-crds").await.unwrap();
    let out = std::process::Command::new(repo_root().join("hack/gitops-crds.sh")).output().unwrap();
    assert!(out.status.success(), "hack/gitops-crds.sh: {}", String::from_utf8_lossy(&out.stderr));
    for crd in String::from_utf8_lossy(&out.stdout).lines() {
        // Argo CD's Application CRD is too large for client-side apply's annotation.
        kubectl_ok(&cluster, &["apply", "--server-side", "-f", crd], None);
    }
    for crd in [
        "applications.argoproj.io",
        "gitrepositories.source.toolkit.fluxcd.io",
        "kustomizations.kustomize.toolkit.fluxcd.io",
    ] {
        cluster.wait_established(crd).await.unwrap();
    }
    for ns in ["argocd", "flux-system"] {
        kubectl_ok(&cluster, &["create", "namespace", ns], None);
    }
    readme::run(Some(&cluster), &readme::block("kubectl apply -f config/gitops/argocd/application.yaml"), &[]);
    readme::run(Some(&cluster), &readme::block("kubectl apply -f config/gitops/flux/kustomizations.yaml"), &[]);
    let get = |args: &[&str]| kubectl_ok(&cluster, args, None);
    let app = get(&[
        "get",
        "application",
        "skein",
        "-n",
        "argocd",
        "-o",
        "jsonpath={.spec.source.path} {.spec.syncPolicy.syncOptions}",
    ]);
    assert_eq!(app, r#"config/gitops/argocd ["ServerSideApply=true"]"#);
    let mesh = get(&[
        "get",
        "kustomization",
        "skein-mesh",
        "-n",
        "flux-system",
        "-o",
        "jsonpath={.spec.path} {.spec.dependsOn[0].name} {.spec.wait}",
    ]);
    assert_eq!(mesh, "./config/gitops/mesh skein-operator true");
    let source = get(&["get", "gitrepository", "skein", "-n", "flux-system", "-o", "jsonpath={.spec.ref.branch}"]);
    assert_eq!(source, "main");
}
