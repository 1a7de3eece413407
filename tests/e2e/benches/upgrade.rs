//! Upgrade benchmark (not a test): time from a MeshControlPlane's version change to every
//! injected workload running on the new revision, for N Deployments (one replica each, the
//! test app with its sidecar), against the baseline of `kubectl rollout restart` of the same
//! Deployments in the same run on the same real node.
//!
//! The upgrade does more than the baseline restart: it starts the new revision's control plane
//! and waits for it to be Ready before moving the tags, then restarts in health-gated batches
//! (here one batch of 100 %, as the baseline restarts everything at once). Both the whole time
//! and the migration part (tags moved → every workload migrated) are reported.
//!
//!   make bench-upgrade            (SKEIN_BENCH_WORKLOADS=10,100 by default)
//!
//! Needs the images of `hack/images.sh` and a machine that can run real nodes.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, api::ListParams};
use skein_api::MeshControlPlane;
use skein_e2e::{
    Cluster, Node,
    real::{install_operator, kubectl_ok, wait_ready},
};

const REGISTRY: &str = "skein.local/skein";
const LIMIT: Duration = Duration::from_secs(900);

fn deployments(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{i}, namespace: bench}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  template:\n    metadata: {{labels: {{app: app-{i}}}}}\n    spec:\n      containers:\n        - name: app\n          image: {REGISTRY}/bookinfo-app:dev\n          args: [app-{i}, v1, \"0.0.0.0:9080\"]\n          ports: [{{containerPort: 9080}}]\n          resources: {{requests: {{cpu: 1m, memory: 8Mi}}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Every Deployment of `bench` rolled out: all replicas updated and available, no old pod left.
async fn rolled_out(cluster: &Cluster) -> bool {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), "bench");
    let Ok(list) = api.list(&ListParams::default()).await else { return false };
    list.items.iter().all(|d| {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(s) = &d.status else { return false };
        s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.available_replicas == Some(want)
            && s.replicas == Some(want)
    })
}

async fn until<F, Fut>(what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < LIMIT, "{what}: not done in {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    start.elapsed()
}

async fn phase(cluster: &Cluster) -> Option<String> {
    let api: Api<MeshControlPlane> = Api::all(cluster.client.clone());
    api.get("default").await.ok()?.status?.upgrade.map(|u| u.phase)
}

async fn run(n: usize) -> (Duration, Duration, Duration) {
    let cluster = Cluster::start_with(&format!("bench-upgrade-{n}"), Node::Real).await.expect("cluster starts");
    for v in ["1.0.2", "1.1.0"] {
        for image in ["skein-controlplane", "skein-proxy"] {
            cluster.node_ctr(&[
                "images",
                "tag",
                "--force",
                &format!("{REGISTRY}/{image}:dev"),
                &format!("{REGISTRY}/{image}:{v}"),
            ]);
        }
    }
    install_operator(&cluster);
    cluster.apply("apiVersion: mesh.skein.dev/v1alpha1\nkind: MeshControlPlane\nmetadata: {name: default}\nspec:\n  version: 1.0.2\n  updateStrategy: {type: RevisionBased, updateWorkloads: true, workloadBatch: 100%, progressDeadlineSeconds: 900}\n");
    wait_ready(&cluster, "Ready=True", |s, _| s == "True").await;
    kubectl_ok(&cluster, &["create", "namespace", "bench"]);
    kubectl_ok(&cluster, &["label", "namespace", "bench", "istio-injection=enabled"]);
    cluster.apply(&deployments(n));
    until("the workloads available", || rolled_out(&cluster)).await;

    // Baseline: the same Deployments restarted with kubectl.
    let start = Instant::now();
    kubectl_ok(&cluster, &["rollout", "restart", "deployment", "-n", "bench"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    until("kubectl rollout restart done", || rolled_out(&cluster)).await;
    let baseline = start.elapsed();

    // The upgrade: spec change → Complete (every workload on the new revision).
    let start = Instant::now();
    kubectl_ok(&cluster, &["patch", "mcp", "default", "--type=merge", "-p", r#"{"spec":{"version":"1.1.0"}}"#]);
    // Every phase the status shows, and when (what the time goes to).
    let mut timeline: Vec<(String, Duration)> = Vec::new();
    let mut moved = None;
    loop {
        let p = phase(&cluster).await.unwrap_or_default();
        if timeline.last().map(|(q, _)| q) != Some(&p) {
            timeline.push((p.clone(), start.elapsed()));
        }
        if moved.is_none() && (p == "Migrating" || p == "Complete") {
            moved = Some(start.elapsed());
        }
        if p == "Complete" {
            break;
        }
        assert!(start.elapsed() < LIMIT, "upgrade not complete in {LIMIT:?}: {timeline:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let total = start.elapsed();
    let moved = moved.unwrap_or(total);
    eprintln!("{n} workloads: {timeline:?}");
    let logs = cluster.kubectl(&["logs", "-n", "skein-operator", "deploy/skein-operator", "--tail=400"], None);
    for line in String::from_utf8_lossy(&logs.stdout)
        .lines()
        .filter(|l| l.contains("migration step") || l.contains("restarted onto"))
    {
        eprintln!("  {line}");
    }
    assert!(rolled_out(&cluster).await, "Complete means every workload rolled out");
    (baseline, total, total - moved)
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("SKEIN_BENCH_WORKLOADS")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "workloads | kubectl rollout restart | skein upgrade (spec change -> all migrated) | of which migration | ratio upgrade/baseline | ratio migration/baseline"
    );
    for n in sizes {
        let (baseline, total, migration) = run(n).await;
        println!(
            "{n:>9} | {:>21.1}s | {:>41.1}s | {:>16.1}s | {:>22.2} | {:>24.2}",
            baseline.as_secs_f64(),
            total.as_secs_f64(),
            migration.as_secs_f64(),
            total.as_secs_f64() / baseline.as_secs_f64(),
            migration.as_secs_f64() / baseline.as_secs_f64()
        );
    }
}
