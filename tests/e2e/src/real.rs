//! Skein installed the way users install it, on a cluster with a real node: the operator from
//! its image (README's `kubectl apply -k config/local` or Helm block), a MeshControlPlane, and
//! what to show when something does not come up.

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

/// Installs the operator from its image with README's kubectl block (`kubectl apply -k
/// config/local`) and waits until its pod is ready.
pub fn install_operator(cluster: &Cluster) {
    crate::readme::run(Some(cluster), &crate::readme::block("kubectl apply -k config/local"), &[]);
    wait_operator(cluster);
}

/// Installs the operator from its image with README's Helm block, `REGISTRY` and `TAG` being
/// the local images' (`hack/images.sh`), and waits until its pod is ready.
pub fn install_operator_with_helm(cluster: &Cluster) {
    let helm = crate::go_tool("SKEIN_HELM", "helm.sh");
    let block = crate::readme::block("helm install skein").replace("REGISTRY", LOCAL_REGISTRY).replace("TAG", "dev");
    crate::readme::run(Some(cluster), &block, &[helm]);
    wait_operator(cluster);
}

/// Upgrades the Helm-installed operator to the release catalog in file `catalog`, with
/// README's `helm upgrade` block, and waits for its new pods.
pub fn upgrade_operator_catalog(cluster: &Cluster, catalog: &std::path::Path) {
    let helm = crate::go_tool("SKEIN_HELM", "helm.sh");
    let block = crate::readme::block("helm upgrade skein").replace("CATALOG", &catalog.to_string_lossy());
    crate::readme::run(Some(cluster), &block, &[helm]);
    wait_operator(cluster);
}

/// Where the local clusters' images are named from (`hack/images.sh`, imported, never pulled).
pub const LOCAL_REGISTRY: &str = "skein.local/skein";

fn wait_operator(cluster: &Cluster) {
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

/// What GitOps tools make of an object (`kubectl get <what>`): the status computed by
/// `sigs.k8s.io/cli-utils` kstatus and by Flux's fork, with the real libraries
/// (`hack/kstatus.sh` builds them; `SKEIN_KSTATUS` names a built binary).
pub fn gitops_status(cluster: &Cluster, what: &[&str]) -> (String, String) {
    let j = gitops_judgement(cluster, what);
    (j.kstatus, j.flux)
}

/// The health Argo CD shows for MeshControlPlane `name`, with the health check Skein ships
/// (`config/argocd/.../health.lua`, run by gopher-lua as Argo CD runs it): (status, message).
pub fn argocd_health(cluster: &Cluster, name: &str) -> (String, String) {
    let j = gitops_judgement(cluster, &["meshcontrolplane", name]);
    (j.argocd, j.argocd_message)
}

/// kstatus, Flux's kstatus and Argo CD's health of one object.
pub struct Judgement {
    /// `sigs.k8s.io/cli-utils` kstatus: Current, InProgress, Failed, ...
    pub kstatus: String,
    /// `github.com/fluxcd/cli-utils` kstatus.
    pub flux: String,
    /// Argo CD with Skein's health.lua: Healthy, Progressing, Degraded, Suspended.
    pub argocd: String,
    /// Argo CD's health message.
    pub argocd_message: String,
}

fn gitops_judgement(cluster: &Cluster, what: &[&str]) -> Judgement {
    let bin = crate::go_tool("SKEIN_KSTATUS", "kstatus.sh");
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend(["-o", "json"]);
    let object = kubectl_ok(cluster, &args);
    let script = repo_root().join("config/argocd/resource_customizations/mesh.skein.dev/MeshControlPlane/health.lua");
    let mut child = std::process::Command::new(&bin)
        .arg("-argocd-health")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kstatus");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), object.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kstatus: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kstatus prints JSON");
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Judgement { kstatus: s("kstatus"), flux: s("flux"), argocd: s("argocd"), argocd_message: s("argocdMessage") }
}
