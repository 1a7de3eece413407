//! Locality failover: Istio's "Locality failover" task (helloworld in four localities, the
//! `sleep` client in region1/zone1, the task's DestinationRule as written) and the rules
//! around it. The proxy side — walking the levels as endpoints are ejected — is skein-proxy's
//! `upstream` tests.

use std::net::SocketAddr;

use super::*;

/// One node per locality as the task's clusters have them, a helloworld pod on each, and the
/// sleep client on region1/zone1's node.
fn task_workloads() -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: helloworld, namespace: sample}\nspec: {clusterIP: 198.19.0.40, ports: [{name: http, port: 5000}]}\n---\n",
    );
    let zones = [
        ("region1", "zone1", "10.1.0.1"),
        ("region1", "zone2", "10.1.0.2"),
        ("region2", "zone3", "10.1.0.3"),
        ("region3", "zone4", "10.1.0.4"),
    ];
    let mut eps = Vec::new();
    for (region, zone, ip) in zones {
        let node = format!("node-{region}-{zone}");
        s += &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: {{topology.kubernetes.io/region: {region}, topology.kubernetes.io/zone: {zone}}}}}\n---\n"
        );
        let pod = format!("helloworld-{region}-{zone}");
        s += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: sample, labels: {{app: helloworld, version: {region}.{zone}, security.istio.io/tlsMode: istio}}}}\nspec: {{serviceAccountName: default, nodeName: {node}, containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
        );
        eps.push(format!("{{addresses: [{ip}], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: {pod}, namespace: sample}}}}"));
    }
    s += &format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: helloworld-1, namespace: sample, labels: {{kubernetes.io/service-name: helloworld}}}}\naddressType: IPv4\nports: [{{name: http, port: 5000}}]\nendpoints: [{}]\n---\n",
        eps.join(", ")
    );
    s += "apiVersion: v1\nkind: Pod\nmetadata: {name: sleep-1, namespace: sample, labels: {app: sleep, security.istio.io/tlsMode: istio}}\nspec: {serviceAccountName: sleep, nodeName: node-region1-zone1, containers: [{name: sleep, image: x}]}\nstatus: {podIP: 10.1.0.9}\n";
    s
}

/// The task's DestinationRule, every field as written there (the file the e2e test applies
/// with `kubectl apply -n sample`).
const TASK_YAML: &str =
    include_str!("../../../../tests/e2e/fixtures/istio-tasks/locality-failover-destinationrule.yaml");

/// [`TASK_YAML`] in namespace `sample`, where the task applies it.
fn task_rule() -> String {
    TASK_YAML.replacen("  name: helloworld\n", "  name: helloworld\n  namespace: sample\n", 1)
}

const HELLOWORLD: &str = "outbound|5000||helloworld.sample.svc.cluster.local";

fn helloworld_for(mesh: MeshSettings, rule: &str, client: &str) -> Cluster {
    let snap = snapshot(mesh, &format!("{}\n---\n{rule}", task_workloads()));
    let node = Node::parse(&format!("sidecar~10.1.0.9~{client}.sample~sample.svc.cluster.local")).unwrap();
    let mut cfg = config(&snap, &Workload::of(&snap, &node));
    cfg.identity = Some(IdentityFiles { cert_chain: "c".into(), private_key: "k".into(), root_cert: "r".into() });
    cfg.validate().unwrap_or_else(|e| panic!("translated config is invalid: {e}"));
    cfg.clusters.into_iter().find(|c| c.name == HELLOWORLD).expect("helloworld cluster")
}

fn levels(c: &Cluster) -> Vec<Vec<SocketAddr>> {
    std::iter::once(c.endpoints.clone()).chain(c.failover.iter().cloned()).collect()
}

fn addrs(ips: &[&str]) -> Vec<SocketAddr> {
    ips.iter().map(|ip| format!("{ip}:5000").parse().unwrap()).collect()
}

#[test]
fn the_locality_failover_task_orders_the_four_localities_as_istio_documents() {
    let c = helloworld_for(MeshSettings::default(), &task_rule(), "sleep-1");
    // Istio's table: 0 region1.zone1, 2 region1.zone2, 3 region2.zone3 (the failover target),
    // 4 region3.zone4.
    assert_eq!(
        levels(&c),
        vec![addrs(&["10.1.0.1"]), addrs(&["10.1.0.2"]), addrs(&["10.1.0.3"]), addrs(&["10.1.0.4"])]
    );
    assert!(c.outlier_detection.is_some(), "ejection is what moves traffic down the levels");
}

#[test]
fn without_a_failover_entry_every_other_region_shares_one_level() {
    let rule = task_rule().replace("        failover:\n          - from: region1\n            to: region2\n", "");
    let c = helloworld_for(MeshSettings::default(), &rule, "sleep-1");
    assert_eq!(levels(&c), vec![addrs(&["10.1.0.1"]), addrs(&["10.1.0.2"]), addrs(&["10.1.0.3", "10.1.0.4"])]);
}

#[test]
fn locality_failover_is_on_by_default_and_needs_outlier_detection() {
    // No localityLbSetting at all: the mesh default (enabled) applies, as in Istio.
    let rule = task_rule().replace(
        "      localityLbSetting:\n        enabled: true\n        failover:\n          - from: region1\n            to: region2\n",
        "",
    );
    let c = helloworld_for(MeshSettings::default(), &rule, "sleep-1");
    assert_eq!(levels(&c).len(), 3, "{:?}", levels(&c));
    // Without outlier detection Envoy would never leave the first priority: one level.
    let no_od = rule.replace(
        "    outlierDetection:\n      consecutive5xxErrors: 1\n      interval: 1s\n      baseEjectionTime: 1m\n",
        "",
    );
    let c = helloworld_for(MeshSettings::default(), &no_od, "sleep-1");
    assert_eq!(levels(&c), vec![addrs(&["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"])]);
    // Disabled in the rule, or mesh-wide.
    let off = task_rule().replace("enabled: true", "enabled: false");
    assert_eq!(levels(&helloworld_for(MeshSettings::default(), &off, "sleep-1")).len(), 1);
    let mesh_off = MeshSettings::from_yaml("localityLbSetting: {enabled: false}").unwrap();
    assert_eq!(levels(&helloworld_for(mesh_off, &rule, "sleep-1")).len(), 1);
}

#[test]
fn each_client_gets_its_own_order() {
    // A client on region3/zone4's node: its own locality first, then every other region (the
    // failover entry is for region1's clients only).
    let client = "apiVersion: v1\nkind: Pod\nmetadata: {name: far-1, namespace: sample, labels: {app: sleep}}\nspec: {serviceAccountName: sleep, nodeName: node-region3-zone4, containers: [{name: sleep, image: x}]}\nstatus: {podIP: 10.1.0.10}\n";
    let c = helloworld_for(MeshSettings::default(), &format!("{}\n---\n{client}", task_rule()), "far-1");
    assert_eq!(levels(&c), vec![addrs(&["10.1.0.4"]), addrs(&["10.1.0.1", "10.1.0.2", "10.1.0.3"])]);
    // The `istio-locality` label overrides the node's.
    let labelled = client.replace("labels: {app: sleep}", "labels: {app: sleep, istio-locality: region2.zone3}");
    let c = helloworld_for(MeshSettings::default(), &format!("{}\n---\n{labelled}", task_rule()), "far-1");
    assert_eq!(c.endpoints, addrs(&["10.1.0.3"]));
}

#[test]
fn failover_priority_ranks_endpoints_by_the_clients_labels() {
    let rule = task_rule().replace(
        "        enabled: true\n        failover:\n          - from: region1\n            to: region2\n",
        "        failoverPriority: [version]\n",
    );
    let client = "apiVersion: v1\nkind: Pod\nmetadata: {name: v-1, namespace: sample, labels: {app: sleep, version: region2.zone3}}\nspec: {serviceAccountName: sleep, nodeName: node-region1-zone1, containers: [{name: sleep, image: x}]}\nstatus: {podIP: 10.1.0.11}\n";
    let c = helloworld_for(MeshSettings::default(), &format!("{rule}\n---\n{client}"), "v-1");
    assert_eq!(levels(&c), vec![addrs(&["10.1.0.3"]), addrs(&["10.1.0.1", "10.1.0.2", "10.1.0.4"])]);
}

#[test]
fn service_entry_endpoints_carry_their_written_locality() {
    // Istio's "failover for external services" blog: the same external service in two
    // regions, the nearer one first.
    let se = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dynamodb, namespace: sample}
spec:
  hosts: [dynamodb.example.com]
  location: MESH_EXTERNAL
  ports: [{name: http, number: 80, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.1, locality: region3/zone9}
  - {address: 192.0.2.2, locality: region1/zone7}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dynamodb, namespace: sample}
spec:
  host: dynamodb.example.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 15s, baseEjectionTime: 1m}
"#;
    let snap = snapshot(MeshSettings::default(), &format!("{}\n---\n{se}", task_workloads()));
    let node = Node::parse("sidecar~10.1.0.9~sleep-1.sample~sample.svc.cluster.local").unwrap();
    let cfg = config(&snap, &Workload::of(&snap, &node));
    let c = cfg.clusters.iter().find(|c| c.name == "outbound|80||dynamodb.example.com").unwrap();
    let at = |ip: &str| -> SocketAddr { format!("{ip}:80").parse().unwrap() };
    assert_eq!((c.endpoints.clone(), c.failover.clone()), (vec![at("192.0.2.2")], vec![vec![at("192.0.2.1")]]));
}

#[test]
fn a_node_relabelled_into_another_zone_is_not_an_endpoint_only_change() {
    let docs = format!("{}\n---\n{}", task_workloads(), task_rule());
    let a = snapshot(MeshSettings::default(), &docs);
    let b = snapshot(
        MeshSettings::default(),
        &docs.replace("topology.kubernetes.io/zone: zone2", "topology.kubernetes.io/zone: zone1"),
    );
    assert!(b.endpoint_only_changes(&a).is_none(), "failover order changes: translate anew");
}

#[test]
fn peers_exporting_a_global_host_are_tried_nearest_first() {
    // What the operator generates in cluster1 (region1/zone-a) for `reviews` exported by
    // cluster2 (region1/zone-b) and cluster3 (region2/zone-c): endpoints with the peers'
    // localities, a rule with outlier detection. cluster1 does not run reviews itself.
    let generated = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews.default.global, namespace: istio-system, labels: {mesh.skein.dev/federation: default}}
spec:
  hosts: [reviews.default.global]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  resolution: STATIC
  addresses: [240.0.0.3]
  endpoints:
  - {address: 192.0.2.3, ports: {http: 15443}, locality: region2/zone-c, labels: {topology.istio.io/cluster: cluster3}}
  - {address: 192.0.2.2, ports: {http: 15443}, locality: region1/zone-b, labels: {topology.istio.io/cluster: cluster2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews.default.global, namespace: istio-system, labels: {mesh.skein.dev/federation: default}}
spec:
  host: reviews.default.global
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    outlierDetection: {consecutiveGatewayErrors: 5, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 100}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {topology.kubernetes.io/region: region1, topology.kubernetes.io/zone: zone-a}}
---
apiVersion: v1
kind: Pod
metadata: {name: productpage-1, namespace: default, labels: {app: productpage, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: productpage, nodeName: node-a, containers: [{name: app, image: x}]}
status: {podIP: 10.0.0.1}
"#;
    let snap = snapshot(MeshSettings::default(), generated);
    let node = Node::parse("sidecar~10.0.0.1~productpage-1.default~default.svc.cluster.local").unwrap();
    let cfg = config(&snap, &Workload::of(&snap, &node));
    let c = cfg.clusters.iter().find(|c| c.name == "outbound|9080||reviews.default.global").unwrap();
    let gw = |ip: &str| -> SocketAddr { format!("{ip}:15443").parse().unwrap() };
    assert_eq!(levels(c), vec![vec![gw("192.0.2.2")], vec![gw("192.0.2.3")]], "same region first");
}
