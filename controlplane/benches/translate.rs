//! Translation cost by stage (not a test): N services (each a Service and an EndpointSlice with
//! two endpoints, over 10 namespaces); a snapshot and one sidecar config built from scratch,
//! then after one endpoint change the snapshot rebuilt (registry cache) and the config patched
//! from the previous snapshot's, and the delta a proxy receives vs the whole config.
//!
//!   cargo bench -p skein-controlplane --bench translate     (SKEIN_BENCH_SERVICES=1000,10000)

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;
use skein_controlplane::{
    mesh::MeshSettings,
    registry::{self, Changed, Registry, RegistryCache},
    render::Configs,
    snapshot::{IstioResources, Snapshot},
    translate::Workload,
};

fn objects(n: usize, change: u8) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let ns = format!("bench-{}", i % 10);
        let name = format!("svc-{i}");
        services.push(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": format!("198.19.{}.{}", i / 250, i % 250), "ports": [{"name": "http", "port": 8080}]},
            }))
            .unwrap(),
        ));
        let last = if i == 0 { change } else { 2 };
        slices.push(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [
                    {"addresses": [format!("10.{}.{}.1", (i / 250) % 250, i % 250)], "conditions": {"ready": true}},
                    {"addresses": [format!("10.{}.{}.{last}", (i / 250) % 250, i % 250)], "conditions": {"ready": true}},
                ],
            }))
            .unwrap(),
        ));
    }
    (services, slices)
}

fn snapshot(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    cache: &mut RegistryCache,
) -> (Snapshot, Duration) {
    let t = Instant::now();
    let mesh = MeshSettings::default();
    let registry = Registry::build_cached(&mesh, services, slices, &[], &[], &HashMap::new(), cache);
    let snap = Snapshot::new(mesh, registry, IstioResources::default(), Default::default());
    (snap, t.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SKEIN_BENCH_SERVICES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "| services | snapshot from scratch | snapshot after an endpoint change | config from scratch | config patched | whole config | delta |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let workload = Workload { namespace: "bench-0".into(), ..Default::default() };
        let (services, slices) = objects(n, 2);
        let mut cache = RegistryCache::default();
        let (before, scratch_build) = snapshot(&services, &slices, &mut cache);
        let before = Arc::new(before);
        let t = Instant::now();
        let before = Configs::new(before, None);
        let old = before.render(&workload);
        let scratch = t.elapsed();

        // One EndpointSlice changes, and the watch reports it.
        let (_, changed) = objects(1, 3);
        let t = Instant::now();
        let key = registry::key_of(&changed[0].metadata);
        let mesh = MeshSettings::default();
        cache.update(&mesh, Changed { slices: vec![(key, Some(changed[0].clone()))], ..Default::default() });
        let registry = cache.registry(&[], &HashMap::new());
        let after = Snapshot::new(mesh, registry, IstioResources::default(), cache.pods());
        let build = t.elapsed();
        let after = Configs::new(Arc::new(after), Some(&before));
        let hosts = after.patched_hosts().map(|h| h.len());
        assert_eq!(hosts, Some(1), "an endpoint-only change must be recognised");
        let t = Instant::now();
        let new = after.render(&workload);
        let delta = new.delta_from(&old).expect("delta");
        let patched = t.elapsed();
        assert_ne!(new.version, old.version);
        println!(
            "| {n} | {} | {} | {} | {} | {} KiB | {} B |",
            ms(scratch_build),
            ms(build),
            ms(scratch),
            ms(patched),
            new.len() / 1024,
            delta.len()
        );
    }
}
