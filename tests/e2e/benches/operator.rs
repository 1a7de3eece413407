//! Operator benchmark (not a test): for fresh MeshControlPlanes, time from `apply` to every
//! child existing and to `Ready=True`, and the operator's resident memory.
//!
//! Baseline, measured in the same run on the same cluster: creating the same Deployments
//! directly (no operator) and waiting until they are available. The ratio shows what the
//! operator adds on top of what Kubernetes itself (controller-manager, scheduler, kwok) needs.
//!
//!   cargo build --release -p skein-operator
//!   SKEIN_OPERATOR_BIN=target/release/skein-operator cargo bench -p skein-e2e --bench operator
//!
//! SKEIN_BENCH_ROUNDS sets the number of installations (default 10).

use std::time::{Duration, Instant};

use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, apps::v1::Deployment};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use skein_api::MeshControlPlane;
use skein_e2e::{Cluster, Operator};

const DEPLOYMENTS: [&str; 4] =
    ["skein-controlplane", "skein-ingressgateway", "skein-egressgateway", "skein-eastwestgateway"];

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn poll<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < Duration::from_secs(120), "benchmark step did not finish in 120s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

async fn all_available(c: &Client, ns: &str) -> bool {
    let api: Api<Deployment> = Api::namespaced(c.clone(), ns);
    for d in DEPLOYMENTS {
        let ok =
            api.get_opt(d).await.ok().flatten().and_then(|d| d.status).and_then(|s| s.available_replicas) == Some(1);
        if !ok {
            return false;
        }
    }
    true
}

/// Baseline: the same four Deployments created directly, until available.
async fn baseline(c: &Client, round: usize) -> Duration {
    let ns = format!("baseline-{round}");
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    nsapi
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    let api: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let start = Instant::now();
    for d in DEPLOYMENTS {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": d},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": d}},
                "template": {"metadata": {"labels": {"app": d}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        api.patch(d, &PatchParams::apply("bench"), &Patch::Apply(obj)).await.unwrap();
    }
    poll(|| all_available(c, &ns)).await;
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p_max(v: &[Duration]) -> Duration {
    v.iter().copied().max().unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("SKEIN_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let cluster = Cluster::start("bench").await.expect("cluster");
    cluster.install_crds().await.expect("CRDs installed");
    let op = Operator::start(&cluster, "bench").expect("operator");
    let c = cluster.client.clone();
    let mcps: Api<MeshControlPlane> = Api::all(c.clone());
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(op.pid());

    let (mut children, mut ready, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        base.push(baseline(&c, round).await);
        let name = format!("bench-{round}");
        let ns = format!("bench-{round}-system");
        let obj = json!({"apiVersion": "mesh.skein.dev/v1alpha1", "kind": "MeshControlPlane", "metadata": {"name": name},
            "spec": {"namespace": ns, "components": {"egressGateway": {"enabled": true}, "eastWestGateway": {"enabled": true}}}});
        // The user's namespace, created before the clock starts (the operator never creates it).
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(c.clone())
            .create(&PostParams::default(), &serde_json::from_value(namespace).unwrap())
            .await
            .unwrap();
        let start = Instant::now();
        mcps.create(&PostParams::default(), &serde_json::from_value(obj).unwrap()).await.unwrap();
        let hook = format!("skein-sidecar-injector-{name}");
        poll(|| async {
            let deps: Api<Deployment> = Api::namespaced(c.clone(), &ns);
            for d in DEPLOYMENTS {
                if deps.get_opt(d).await.ok().flatten().is_none() {
                    return false;
                }
            }
            hooks.get_opt(&hook).await.ok().flatten().is_some()
        })
        .await;
        children.push(start.elapsed());
        poll(|| async {
            mcps.get(&name)
                .await
                .ok()
                .and_then(|m| m.status)
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await;
        ready.push(start.elapsed());
    }
    let rss_loaded = rss_kib(op.pid());

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nskein-operator install benchmark ({rounds} installations, each 4 Deployments + 14 other objects)");
    println!("| measure | median ms | max ms | ratio to baseline (median) |");
    println!("|---|---|---|---|");
    let b = median(base.clone());
    println!(
        "| baseline: same 4 Deployments applied directly -> available | {:.1} | {:.1} | 1.00 |",
        ms(b),
        ms(p_max(&base))
    );
    let ch = median(children.clone());
    println!(
        "| apply MeshControlPlane -> all children created | {:.1} | {:.1} | {:.2} |",
        ms(ch),
        ms(p_max(&children)),
        ms(ch) / ms(b)
    );
    let r = median(ready.clone());
    println!(
        "| apply MeshControlPlane -> Ready=True | {:.1} | {:.1} | {:.2} |",
        ms(r),
        ms(p_max(&ready)),
        ms(r) / ms(b)
    );
    println!(
        "\noperator RSS: {:.1} MiB idle, {:.1} MiB with {rounds} installations",
        rss_idle as f64 / 1024.0,
        rss_loaded as f64 / 1024.0
    );
}
