//! Istio's "Locality failover" task on real pods: helloworld in four localities
//! (region1.zone1, region1.zone2, region2.zone3, region3.zone4), the `sleep` client in
//! region1.zone1, the task's DestinationRule applied with kubectl exactly as written, and each
//! locality made to fail the way the task does it — `POST /drain_listeners` on that
//! helloworld's sidecar (`kubectl exec … -c skein-proxy -- skein-proxy request POST
//! drain_listeners`, Envoy's admin call in the task). Traffic must answer from region1.zone1,
//! then region1.zone2, region2.zone3 and region3.zone4, in Istio's order (the `failover` entry
//! puts region2 before region3).
//!
//! The task runs one cluster per locality; here one real node runs all four, each Deployment's
//! pods carrying Istio's `istio-locality` label (`region.zone`), which Istio reads before the
//! node's topology labels. Needs the images of `hack/images.sh`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use skein_e2e::{
    Cluster, Node,
    netns::PodNetns,
    real::{diagnostics, install_mesh, install_operator, kubectl_ok},
};

const LOCALITIES: [&str; 4] = ["region1.zone1", "region1.zone2", "region2.zone3", "region3.zone4"];

/// The sample namespace: helloworld's Service, one Deployment per locality, and sleep.
fn workloads() -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: sample, labels: {istio-injection: enabled}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: helloworld, namespace: sample, labels: {app: helloworld}}\nspec: {selector: {app: helloworld}, ports: [{name: http, port: 5000}]}\n---\n",
    );
    for l in LOCALITIES {
        let name = format!("helloworld-{}", l.replace('.', "-"));
        s += &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: sample}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: helloworld, version: {l}}}}}\n  template:\n    metadata: {{labels: {{app: helloworld, version: {l}, istio-locality: {l}}}}}\n    spec:\n      containers:\n      - {{name: helloworld, image: \"skein.local/skein/bookinfo-app:dev\", args: [helloworld, {l}, \"0.0.0.0:5000\"]}}\n---\n"
        );
    }
    s += "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sleep, namespace: sample}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: sleep, namespace: sample}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: sleep}}\n  template:\n    metadata: {labels: {app: sleep, istio-locality: region1.zone1}}\n    spec:\n      serviceAccountName: sleep\n      containers:\n      - {name: sleep, image: \"skein.local/skein/bookinfo-app:dev\", args: [sleep, v1, \"0.0.0.0:9080\"]}\n";
    s
}

/// The task's DestinationRule, as the task applies it (`kubectl apply -n sample`).
const TASK_RULE: &str = include_str!("../fixtures/istio-tasks/locality-failover-destinationrule.yaml");

/// The version that answered `curl helloworld.sample:5000/hello` from sleep's network
/// namespace (through its sidecar), or why nothing did.
fn hello(sleep: &PodNetns, vip: SocketAddr) -> Result<String, String> {
    sleep.run(move || {
        let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(8))).map_err(|e| e.to_string())?;
        write!(s, "GET /hello HTTP/1.1\r\nHost: helloworld.sample:5000\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        if out.get(9..12) != Some("200") {
            return Err(out.lines().next().unwrap_or_default().to_string());
        }
        let body: serde_json::Value =
            serde_json::from_str(out.split_once("\r\n\r\n").map_or("", |(_, b)| b)).map_err(|e| e.to_string())?;
        Ok(body["version"].as_str().unwrap_or_default().to_string())
    })
}

fn pod(cluster: &Cluster, labels: &str, field: &str) -> String {
    let start = Instant::now();
    loop {
        let out = kubectl_ok(
            cluster,
            &["get", "pods", "-n", "sample", "-l", labels, "-o", &format!("jsonpath={{.items[*].{field}}}")],
        );
        if !out.trim().is_empty() && !out.contains(' ') {
            return out.trim().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(90), "one pod {labels}: {out:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls until `version` answers, then requires ten answers in a row from it.
fn stays_in(what: &str, sleep: &PodNetns, vip: SocketAddr, version: &str, cluster: &Cluster) -> Duration {
    let start = Instant::now();
    let mut last = Err(String::new());
    while last.as_deref() != Ok(version) {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "{what}: never answered by {version}; last {last:?}\n{}",
            diagnostics(cluster, "istio-system")
        );
        std::thread::sleep(Duration::from_millis(300));
        last = hello(sleep, vip);
    }
    let took = start.elapsed();
    for _ in 0..10 {
        assert_eq!(hello(sleep, vip).as_deref(), Ok(version), "{what}: every answer from {version}");
    }
    took
}

#[tokio::test]
async fn istio_locality_failover_task_moves_traffic_locality_by_locality() {
    let cluster = Cluster::start_with("locality", Node::Real).await.expect("cluster with a real node");
    install_operator(&cluster);
    install_mesh(&cluster, "{tag: dev}").await;
    cluster.apply(&workloads());
    let out = cluster.kubectl(&["rollout", "status", "deployment", "-n", "sample", "--timeout=180s"], None);
    assert!(out.status.success(), "sample did not roll out\n{}", diagnostics(&cluster, "istio-system"));
    let apply = cluster.kubectl(&["apply", "-n", "sample", "-f", "-"], Some(TASK_RULE));
    assert!(apply.status.success(), "{}", String::from_utf8_lossy(&apply.stderr));

    let sleep = PodNetns::of(&pod(&cluster, "app=sleep", "status.podIP"));
    let ip =
        kubectl_ok(&cluster, &["get", "service", "helloworld", "-n", "sample", "-o", "jsonpath={.spec.clusterIP}"]);
    let vip: SocketAddr = format!("{ip}:5000").parse().unwrap();

    // Traffic stays in region1.zone1.
    stays_in("before any failure", &sleep, vip, LOCALITIES[0], &cluster);
    for (i, l) in LOCALITIES.iter().enumerate().take(3) {
        let name = pod(&cluster, &format!("app=helloworld,version={l}"), "metadata.name");
        let drained = kubectl_ok(
            &cluster,
            &[
                "exec",
                "-n",
                "sample",
                &name,
                "-c",
                "skein-proxy",
                "--",
                "skein-proxy",
                "request",
                "POST",
                "drain_listeners",
            ],
        );
        assert!(drained.contains("OK"), "drain_listeners on {name}: {drained}");
        let next = LOCALITIES[i + 1];
        let took = stays_in(&format!("after draining {l}"), &sleep, vip, next, &cluster);
        eprintln!("{l} drained: {next} answers after {took:?}");
    }
}
