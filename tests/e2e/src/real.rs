//! Skein installed the way users install it, on a cluster with a real node: the operator from
//! its image (`kubectl apply -k config/local`), a MeshControlPlane, and what to show when
//! something does not come up.

use std::time::{Duration, Instant};

use kube::Api;
use skein_api::MeshControlPlane;

use crate::{Cluster, repo_root};

/// Runs kubectl, panicking with its stderr on failure; its stdout.
pub fn kubectl_ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.kubectl(args, None);
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the cluster shows when something does not come up: pods, events, the operator's and
/// the control plane's logs (`namespace`: where the control plane runs).
pub fn diagnostics(cluster: &Cluster, namespace: &str) -> String {
    let run = |args: &[&str]| {
        let out = cluster.kubectl(args, None);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        format!("$ kubectl {}\n{stdout}{stderr}", args.join(" "))
    };
    [
        run(&["get", "pods", "-A", "-o", "wide"]),
        run(&["get", "events", "-A", "--sort-by=.lastTimestamp"]),
        run(&["logs", "-n", "skein-operator", "deploy/skein-operator", "--tail=40"]),
        run(&["logs", "-n", namespace, "deploy/skein-controlplane", "--tail=40"]),
    ]
    .join("\n")
}

/// Installs the operator from its image and waits until its pod is ready.
pub fn install_operator(cluster: &Cluster) {
    kubectl_ok(cluster, &["apply", "-k", &repo_root().join("config/local").to_string_lossy()]);
    let rollout = ["rollout", "status", "deployment/skein-operator", "-n", "skein-operator", "--timeout=120s"];
    let out = cluster.kubectl(&rollout, None);
    assert!(out.status.success(), "the operator pod did not become ready\n{}", diagnostics(cluster, "istio-system"));
}

/// The `Ready` condition of MeshControlPlane `default`: (status, message).
async fn ready(api: &Api<MeshControlPlane>) -> Option<(String, String)> {
    let mcp = api.get_opt("default").await.ok()??;
    let c = mcp.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((c.status, c.message))
}

/// Waits (at most 180 s) until `check` holds for MeshControlPlane `default`'s `Ready`
/// condition (status, message); returns them.
pub async fn wait_ready(cluster: &Cluster, what: &str, check: impl Fn(&str, &str) -> bool) -> (String, String) {
    let api: Api<MeshControlPlane> = Api::all(cluster.client.clone());
    let start = Instant::now();
    loop {
        if let Some((status, message)) = ready(&api).await
            && check(&status, &message)
        {
            return (status, message);
        }
        if start.elapsed() > Duration::from_secs(180) {
            let ns = api.get_opt("default").await.ok().flatten().map(|m| m.spec.namespace).unwrap_or_default();
            panic!("{what} not seen after 180 s; Ready = {:?}\n{}", ready(&api).await, diagnostics(cluster, &ns));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Applies MeshControlPlane `default` with `spec` (YAML flow map, e.g. `{tag: dev}`) and waits
/// until it is Ready.
pub async fn install_mesh(cluster: &Cluster, spec: &str) {
    cluster.apply(&format!(
        "apiVersion: mesh.skein.dev/v1alpha1\nkind: MeshControlPlane\nmetadata: {{name: default}}\nspec: {spec}\n"
    ));
    wait_ready(cluster, "Ready=True", |s, _| s == "True").await;
}
