//! Federation benchmark (not a test), on SKEIN_BENCH_CLUSTERS local clusters (default 3) with
//! kwok nodes and an operator each: cluster1 imports, every other cluster exports.
//!
//! 1. Propagation: an exported Service created in cluster2 → its `.global` ServiceEntry present
//!    in cluster1, p50/p99 over SKEIN_BENCH_ROUNDS Services (default 50). Baseline, in the same
//!    run: a plain watch on cluster2's Services, opened by this process, seeing the same
//!    Service (what any watcher of the peer gets at best). Goal: p99 under 1 s and within
//!    200 ms of the plain watch.
//! 2. Cold start: SKEIN_BENCH_COLD exported Services (default 2000) exist in every exporting
//!    cluster, under the same names (the common case of a Service deployed in every cluster),
//!    before cluster1 is joined to all of them at once; time from applying the remote Secrets
//!    to every ServiceEntry in cluster1 listing one endpoint per exporter (seen by a watch),
//!    and the importing operator's resident memory and CPU time. The clock starts once the
//!    exporters have settled (their east-west Gateways list them all and hold still). Goal:
//!    under 30 s.
//! 3. Steady state: writes to cluster1's generated objects over 10 s after convergence (goal 0).
//!
//!   cargo build --release -p skein-operator && cargo build -p skeinctl
//!   SKEIN_OPERATOR_BIN=target/release/skein-operator cargo bench -p skein-e2e --bench federation

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use skein_e2e::{Cluster, Operator};

const NS: &str = "istio-system";

fn se_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", "ServiceEntry"))
}

fn gateway_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", "Gateway"))
}

fn proc_stat(pid: u32) -> (u64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    // utime + stime, in clock ticks (100 per second on Linux).
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (rss, cpu as f64 / 100.0)
}

/// A cluster with its operator and east-west gateway; `index` picks the gateway's address.
async fn member(index: usize) -> (Cluster, Operator) {
    let name = format!("cluster{index}");
    let cluster = Cluster::start(&format!("bfed-{name}")).await.expect("cluster");
    cluster.install_crds().await.expect("CRDs");
    let kc = cluster.kubeconfig.clone();
    // kwok clusters have no gateway pods to probe: health checking off, so the set-by-hand
    // gateway addresses are never withdrawn during the measurement.
    let op = Operator::start_args(&cluster, "op", &kc, "default", &["--gateway-lease-seconds", "0"]).expect("operator");
    let out = cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: istio-system}}\n---\napiVersion: mesh.skein.dev/v1alpha1\nkind: MeshControlPlane\nmetadata: {{name: default}}\nspec:\n  multiCluster: {{clusterName: {name}, network: net-{name}}}\n  components: {{eastWestGateway: {{enabled: true}}}}\n"
        )),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), NS);
    let start = Instant::now();
    while services.get_opt("skein-eastwestgateway").await.ok().flatten().is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "{name}: no east-west gateway Service");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lb = json!({"status": {"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{index}")}]}}});
    services.patch_status("skein-eastwestgateway", &PatchParams::default(), &Patch::Merge(&lb)).await.expect("lb");
    (cluster, op)
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"mesh.skein.dev/export": "true"}},
        "spec": {"ports": [{"name": "http", "port": 9080}]}
    }))
    .unwrap()
}

/// First time each name was seen by a watch of `api` (names from `key`).
fn record<K>(api: Api<K>, key: fn(&K) -> String) -> Arc<Mutex<BTreeMap<String, Instant>>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
        while let Some(Ok(obj)) = events.next().await {
            s.lock().unwrap().entry(key(&obj)).or_insert_with(Instant::now);
        }
    });
    seen
}

/// First time each generated ServiceEntry of `api` was seen by a watch with at least
/// `endpoints` endpoints (a watch, not polling: a LIST of 10 000 objects every 100 ms would
/// itself load the apiserver being measured).
fn record_dynamic(api: Api<DynamicObject>, endpoints: usize) -> Arc<Mutex<BTreeMap<String, Instant>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        let generated = watcher::Config::default().labels("mesh.skein.dev/federation");
        let mut events = std::pin::pin!(watcher(api, generated).default_backoff().applied_objects());
        while let Some(Ok(obj)) = events.next().await {
            if obj.data["spec"]["endpoints"].as_array().map_or(0, Vec::len) >= endpoints {
                s.lock().unwrap().entry(obj.name_any()).or_insert_with(Instant::now);
            }
        }
    });
    seen
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn join(from: &Cluster, into: &Cluster) {
    let out = from.skeinctl(&["create-remote-secret"]);
    assert!(out.status.success(), "create-remote-secret: {}", String::from_utf8_lossy(&out.stderr));
    let applied = into.kubectl(&["apply", "-f", "-"], Some(&String::from_utf8_lossy(&out.stdout)));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
}

async fn wait_count(seen: &Mutex<BTreeMap<String, Instant>>, prefix: &str, n: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let have = seen.lock().unwrap().keys().filter(|k| k.starts_with(prefix)).count();
        if have >= n {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "only {have} of {n} ServiceEntries after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the exporter's operator has finished with the `n` Services just created: its
/// east-west Gateways (one, or several shards) list them all and have not changed for 3 s.
/// Until then the exporting cluster's apiserver is busy, and the cold start would measure
/// clusters sharing the machine's cores rather than the import.
async fn exporter_settled(exporter: &Cluster, n: usize, limit: Duration) -> Duration {
    let gateways: Api<DynamicObject> = Api::namespaced_with(exporter.client.clone(), NS, &gateway_resource());
    let start = Instant::now();
    let mut last: Option<(Vec<String>, Instant)> = None;
    loop {
        let generated = ListParams::default().labels("mesh.skein.dev/federation");
        let gws = gateways.list(&generated).await.map(|l| l.items).unwrap_or_default();
        let hosts: usize =
            gws.iter().map(|g| g.data["spec"]["servers"][0]["hosts"].as_array().map_or(0, Vec::len)).sum();
        let versions: Vec<String> = gws.iter().filter_map(|g| g.resource_version()).collect();
        match &last {
            Some((seen, since)) if *seen == versions => {
                if hosts >= n && since.elapsed() >= Duration::from_secs(3) {
                    return start.elapsed();
                }
            }
            _ => last = Some((versions, Instant::now())),
        }
        assert!(start.elapsed() < limit, "the exporter's east-west Gateways did not settle in {limit:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Creates `cold-0` .. `cold-{n-1}` in `cluster`, 50 at a time; how long that took.
async fn create_cold(cluster: &Cluster, n: usize) -> Duration {
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let creating = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let creates = chunk.iter().map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &service(&format!("cold-{i}"))).await.expect("create") }
        });
        futures::future::join_all(creates).await;
    }
    creating.elapsed()
}

/// Counts the writes to `cluster`'s east-west Gateway and their bytes, from now on.
fn count_gateway_writes(cluster: &Cluster) -> Arc<Mutex<(usize, usize)>> {
    let writes = Arc::new(Mutex::new((0usize, 0usize)));
    let counted = writes.clone();
    let gateways: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), NS, &gateway_resource());
    tokio::spawn(async move {
        let mut events =
            std::pin::pin!(watcher(gateways, watcher::Config::default()).default_backoff().applied_objects());
        while let Some(Ok(gw)) = events.next().await {
            let size = serde_json::to_vec(&gw).map_or(0, |b| b.len());
            let mut c = counted.lock().unwrap();
            *c = (c.0 + 1, c.1 + size);
        }
    });
    writes
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("SKEIN_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let cold: usize = std::env::var("SKEIN_BENCH_COLD").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let clusters: usize = std::env::var("SKEIN_BENCH_CLUSTERS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    assert!(clusters >= 2, "SKEIN_BENCH_CLUSTERS: at least 2 (one importer, one exporter)");
    let mut members = futures::future::join_all((1..=clusters).map(member)).await;
    let exporters: Vec<(Cluster, Operator)> = members.split_off(1);
    let (c1, op1) = members.pop().unwrap();
    let c2 = &exporters[0].0;
    let exporter: Api<Service> = Api::namespaced(c2.client.clone(), "default");
    let ses: Api<DynamicObject> = Api::namespaced_with(c1.client.clone(), NS, &se_resource());

    // 2. Cold start: the Services exist in every exporter before the importer is joined. What
    // the exporters write meanwhile (their east-west Gateways) is counted.
    let gateway_writes: Vec<_> = exporters.iter().map(|(c, _)| count_gateway_writes(c)).collect();
    let created = futures::future::join_all(exporters.iter().map(|(c, _)| create_cold(c, cold))).await;
    let created = created.into_iter().max().unwrap_or_default();
    let settled =
        futures::future::join_all(exporters.iter().map(|(c, _)| exporter_settled(c, cold, Duration::from_secs(900))))
            .await
            .into_iter()
            .max()
            .unwrap_or_default();
    let (gw_writes, gw_bytes) =
        gateway_writes.iter().map(|w| *w.lock().unwrap()).fold((0, 0), |a, w| (a.0 + w.0, a.1 + w.1));
    let imported = record_dynamic(ses.clone(), exporters.len());
    let (rss_before, cpu_before) = proc_stat(op1.pid());
    futures::future::join_all(exporters.iter().map(|(c, _)| join(c, &c1))).await;
    let converge = wait_count(&imported, "cold-", cold, Duration::from_secs(600)).await;
    let (rss_after, cpu_after) = proc_stat(op1.pid());

    // 3. Steady state: nothing rewritten.
    let versions = |items: Vec<DynamicObject>| -> BTreeMap<String, String> {
        items.into_iter().map(|o| (o.name_any(), o.resource_version().unwrap_or_default())).collect()
    };
    let before = versions(ses.list(&ListParams::default()).await.unwrap().items);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = versions(ses.list(&ListParams::default()).await.unwrap().items);
    let rewritten = before.iter().filter(|(k, v)| after.get(*k) != Some(*v)).count();

    // 1. Propagation, against a plain watch of the exporter.
    let watched = record(Api::<Service>::namespaced(c2.client.clone(), "default"), |s: &Service| s.name_any());
    let imported = record_dynamic(ses.clone(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut plain, mut fed, mut delta) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let name = format!("hot-{i}");
        let host = format!("{name}.default.global");
        let t0 = Instant::now();
        exporter.create(&PostParams::default(), &service(&name)).await.expect("create");
        let start = Instant::now();
        loop {
            let (w, s) = (watched.lock().unwrap().get(&name).copied(), imported.lock().unwrap().get(&host).copied());
            if let (Some(w), Some(s)) = (w, s) {
                plain.push(w - t0);
                fed.push(s - t0);
                delta.push(s.saturating_duration_since(w));
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{host} not imported in 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\nfederation benchmark (kwok clusters, operator {})",
        std::env::var("SKEIN_OPERATOR_BIN").unwrap_or("debug build".into())
    );
    println!("| measure | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!(
        "| plain watch of the exporter sees the Service ({rounds}) | {:.0} | {:.0} |",
        ms(pct(&mut plain, 0.5)),
        ms(pct(&mut plain, 0.99))
    );
    println!(
        "| ServiceEntry present in the importer ({rounds}) | {:.0} | {:.0} |",
        ms(pct(&mut fed, 0.5)),
        ms(pct(&mut fed, 0.99))
    );
    println!(
        "| ServiceEntry after the plain watch (difference) | {:.0} | {:.0} |",
        ms(pct(&mut delta, 0.5)),
        ms(pct(&mut delta, 0.99))
    );
    println!(
        "\ncold start: {cold} Services exported by each of {} clusters imported ({cold} ServiceEntries of {} endpoints) in {:.1} s; importing operator RSS {} -> {} MiB, CPU {:.1} s",
        exporters.len(),
        exporters.len(),
        converge.as_secs_f64(),
        rss_before / 1024,
        rss_after / 1024,
        cpu_after - cpu_before
    );
    println!(
        "exporters: {cold} Services created in each in {:.1} s, their operators settled {:.1} s later; east-west Gateways written {gw_writes} times, {} MiB in all",
        created.as_secs_f64(),
        settled.as_secs_f64(),
        gw_bytes >> 20
    );
    println!("steady state: {rewritten} of {} ServiceEntries rewritten in 10 s", before.len());
    // The importer's log (its federation pass timings, at debug) outlives the clusters.
    let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-federation-importer.log");
    if std::fs::write(&kept, op1.log()).is_ok() {
        println!("importing operator's log: {}", kept.display());
    }
}
