//! Installing the operator itself with kustomize (`config/default`), and proof that the
//! least-privilege RBAC it declares is enough for a full install/remove cycle.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::{Api, api::DeleteParams};
use skein_api::MeshControlPlane;
use skein_e2e::{Cluster, Operator, eventually, repo_root};

const WAIT: Duration = Duration::from_secs(60);

fn kubectl_ok(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> String {
    let out = cluster.kubectl(args, stdin);
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn kustomize_install_runs_the_operator_under_restricted_pod_security() {
    let cluster = Cluster::start("kustomize").await.unwrap();
    let dir = repo_root().join("config/default");
    kubectl_ok(&cluster, &["apply", "--server-side", "-k", dir.to_str().unwrap()], None);
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
    let op = Operator::start_with(&cluster, "rbac", &kubeconfig, "skein-operator").unwrap();

    let c = cluster.client.clone();
    let production = std::fs::read_to_string(repo_root().join("config/samples/production.yaml")).unwrap();
    // The production sample uses a user CA: provide one in Istio's layout.
    let ca = skein_support::pki::CaBundle::generate_self_signed("cluster.local").unwrap();
    let ns = Namespace {
        metadata: kube::api::ObjectMeta { name: Some("skein-system".into()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(c.clone()).create(&Default::default(), &ns).await.unwrap();
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta { name: Some("cacerts".into()), ..Default::default() },
        data: Some(ca.to_secret_data().into_iter().map(|(k, v)| (k, k8s_openapi::ByteString(v))).collect()),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.clone(), "skein-system")
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
    // kube-client reports a 403 as `Forbidden`; matching "403" could hit a timestamp.
    assert!(!op.log().contains("Forbidden"), "a request was forbidden:\n{}", op.log());

    api.delete("production", &DeleteParams::default()).await.unwrap();
    eventually("MeshControlPlane removed with declared RBAC", WAIT, || async {
        api.get_opt("production").await.ok()?.is_none().then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "skein-system");
    eventually("children collected", WAIT, || async {
        deployments.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
}
