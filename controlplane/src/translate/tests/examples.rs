//! The acceptance tier: the project's reference examples (`../shared/examples/`, Istio YAML as
//! users write it; copies in `tests/e2e/fixtures/istio-examples/`, which the e2e tier applies
//! to a real apiserver) go through validation and translation, and every resource that is
//! accepted must show its effect in a proxy's config. An `Accepted` resource with no effect —
//! the worst bug a mesh can have — fails here by name.

use std::collections::BTreeSet;

use super::*;
use crate::accept::LastGood;

/// Reads a reference example.
fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/fixtures/istio-examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Istio resources of a file, as `kubectl apply -f` puts them (namespace `default` where
/// none is written); other kinds are left to their own tests.
fn istio_docs(text: &str) -> Vec<serde_yaml::Value> {
    text.split("\n---\n")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|v| v["apiVersion"].as_str().is_some_and(|a| a.contains("istio.io")))
        .map(|mut v| {
            if v["metadata"]["namespace"].is_null() {
                v["metadata"]["namespace"] = "default".into();
            }
            v
        })
        .collect()
}

/// Workloads beyond Bookinfo the examples talk about: the ingress gateway, and the `sample`
/// namespace's `api` service with one pod.
const MORE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: sample}\nspec: {clusterIP: 198.19.0.30, ports: [{name: http, port: 9000}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: api-1, namespace: sample, labels: {app: api, security.istio.io/tlsMode: istio}}\nspec: {serviceAccountName: api, containers: [{name: app, image: x}]}\nstatus: {podIP: 10.0.2.1}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: api-1, namespace: sample, labels: {kubernetes.io/service-name: api}}\naddressType: IPv4\nports: [{name: http, port: 9000}]\nendpoints: [{addresses: [10.0.2.1], conditions: {ready: true}, targetRef: {kind: Pod, name: api-1, namespace: sample}}]\n";

/// What a file turned into: verdicts, and the configs of a sidecar per namespace and of the
/// ingress gateway.
struct Judged {
    rejected: BTreeSet<(String, String)>,
    messages: Vec<String>,
    snap: Snapshot,
}

/// Judges `files` applied in order, as `kubectl apply -f` would (a later object with the same
/// kind, namespace and name replaces the earlier one). Istio's tasks start from the Bookinfo
/// DestinationRules with subsets (`mtls-destination-rules.yaml`), so the others follow it.
fn judge(files: &[&str]) -> Judged {
    let mut docs: Vec<serde_yaml::Value> = Vec::new();
    for file in files {
        let these = istio_docs(&example(file));
        assert!(!these.is_empty(), "{file}: no Istio resources");
        for d in these {
            let id = |v: &serde_yaml::Value| {
                (v["kind"].clone(), v["metadata"]["namespace"].clone(), v["metadata"]["name"].clone())
            };
            docs.retain(|o| id(o) != id(&d));
            docs.push(d);
        }
    }
    let text = |docs: &[serde_yaml::Value]| {
        docs.iter().map(|d| serde_yaml::to_string(d).unwrap()).collect::<Vec<_>>().join("\n---\n")
    };
    let base = format!("{BOOKINFO}\n---\n{}\n---\n{MORE}\n---\n{INGRESS_POD}", bookinfo_workloads());
    let all = snapshot(MeshSettings::default(), &format!("{base}\n---\n{}", text(&docs)));
    let (_, verdicts) = LastGood::default().accept(&all.istio, "cluster.local");
    let rejected: BTreeSet<(String, String)> =
        verdicts.iter().filter(|v| !v.accepted()).map(|v| (v.kind.to_string(), v.name.clone())).collect();
    let messages =
        verdicts.iter().filter(|v| !v.accepted()).map(|v| format!("{} {}: {}", v.kind, v.name, v.message())).collect();
    let kept: Vec<serde_yaml::Value> = docs
        .into_iter()
        .filter(|d| {
            let k = (
                d["kind"].as_str().unwrap_or("").to_string(),
                d["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            !rejected.contains(&k)
        })
        .collect();
    let mut snap = snapshot(MeshSettings::default(), &format!("{base}\n---\n{}", text(&kept)));
    // security.yaml's `credentialName` Secret, next to the gateway as its comment says.
    let secret = crate::snapshot::TlsSecret {
        cert_chain: "-----BEGIN CERTIFICATE-----\nchain\n".into(),
        private_key: skein_api::proxy::SecretPem("-----BEGIN PRIVATE KEY-----\nkey\n".into()),
        ca_certificates: None,
    };
    snap.tls_secrets.insert(("istio-system".into(), "bookinfo-credential".into()), Arc::new(secret));
    Judged { rejected, messages, snap }
}

fn sidecar(snap: &Snapshot, namespace: &str) -> ProxyConfig {
    match namespace {
        "sample" => {
            let node = Node::parse("sidecar~10.0.2.1~api-1.sample~sample.svc.cluster.local").unwrap();
            let mut cfg = config(snap, &Workload::of(snap, &node));
            cfg.identity =
                Some(IdentityFiles { cert_chain: "c".into(), private_key: "k".into(), root_cert: "r".into() });
            cfg
        }
        _ => config_for(snap, "productpage-v1-1"),
    }
}

fn fqdn(host: &str, ns: &str) -> String {
    if host.contains('.') || host.contains('*') { host.to_string() } else { format!("{host}.{ns}.svc.cluster.local") }
}

/// Every accepted resource of the file has its effect somewhere.
fn every_accepted_resource_takes_effect(j: &Judged) {
    let snap = &j.snap;
    // The gateway authenticated with its ServiceAccount token, as a real one does.
    let node =
        Node::parse("router~10.0.9.1~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local").unwrap();
    let mut w = Workload::of(snap, &node);
    w.authenticated = true;
    let router = config(snap, &w);
    for vs in &snap.istio.virtual_services {
        let ns = vs.metadata.namespace.clone().unwrap_or_default();
        let name = vs.metadata.name.clone().unwrap_or_default();
        let on_gateways = !vs.spec.gateways.is_empty() && !vs.spec.gateways.iter().any(|g| g == "mesh");
        let cfg = if on_gateways { router.clone() } else { sidecar(snap, &ns) };
        for host in &vs.spec.hosts {
            let want = if on_gateways { host.clone() } else { fqdn(host, &ns) };
            let found = cfg
                .virtual_hosts
                .iter()
                .any(|v| v.domains.iter().any(|d| *d == want || d.starts_with(&format!("{want}:"))));
            assert!(
                found,
                "VirtualService {ns}/{name}: accepted, but no virtual host for {want} in the {} config",
                if on_gateways { "gateway" } else { "sidecar" }
            );
        }
    }
    for dr in &snap.istio.destination_rules {
        let ns = dr.metadata.namespace.clone().unwrap_or_default();
        let host = fqdn(&dr.spec.host, &ns);
        let cfg = sidecar(snap, &ns);
        let matches = |c: &str| {
            let h = c.rsplit('|').next().unwrap_or("");
            match host.strip_prefix('*') {
                Some(suffix) => h.ends_with(suffix),
                None => h == host,
            }
        };
        let clusters: Vec<&Cluster> = cfg.clusters.iter().filter(|c| matches(&c.name)).collect();
        assert!(!clusters.is_empty(), "DestinationRule {ns}/{host}: accepted, but no cluster for its host");
        for s in &dr.spec.subsets {
            assert!(
                clusters.iter().any(|c| c.name.split('|').nth(2) == Some(s.name.as_str())),
                "DestinationRule {ns}/{host}: subset {} has no cluster",
                s.name
            );
        }
        if dr
            .spec
            .traffic_policy
            .as_ref()
            .and_then(|p| p.tls.as_ref())
            .is_some_and(|t| t.mode == Some(skein_api::istio::networking::ClientTlsMode::ISTIO_MUTUAL))
        {
            assert!(
                clusters.iter().all(|c| c.tls.as_ref().map(|t| t.mode) == Some(ClientTlsMode::IstioMutual)),
                "DestinationRule {ns}/{host}: ISTIO_MUTUAL not on every cluster"
            );
        }
    }
    for se in &snap.istio.service_entries {
        let ns = se.metadata.namespace.clone().unwrap_or_default();
        let cfg = sidecar(snap, &ns);
        for host in &se.spec.hosts {
            for p in &se.spec.ports {
                let name = format!("outbound|{}||{host}", p.number);
                assert!(
                    cfg.clusters.iter().any(|c| c.name == name),
                    "ServiceEntry {ns}/{host}: accepted, but no cluster {name}"
                );
            }
        }
    }
    for gw in &snap.istio.gateways {
        for s in &gw.spec.servers {
            let port = s.port.number as u16;
            assert!(
                router.listeners.iter().any(|l| l.address.port() == port),
                "Gateway {}: server on port {port} has no listener on the gateway",
                gw.metadata.name.as_deref().unwrap_or("")
            );
        }
    }
}

#[test]
fn traffic_management_example_is_accepted_and_every_resource_takes_effect() {
    let j = judge(&["mtls-destination-rules.yaml", "traffic-management.yaml"]);
    // Two VirtualServices for `reviews` on the sidecars (the task's `reviews` and the
    // mirroring one): Istio applies one and drops the other without saying so; Skein keeps the
    // older and rejects the newer by name.
    assert_eq!(
        j.rejected,
        BTreeSet::from([("VirtualService".to_string(), "reviews-mirror".to_string())]),
        "{:?}",
        j.messages
    );
    assert!(j.messages[0].contains("reviews"), "{:?}", j.messages);
    every_accepted_resource_takes_effect(&j);
    let cfg = config_for(&j.snap, "productpage-v1-1");
    // The egress task: 3 s on httpbin.org.
    let httpbin = cfg.virtual_hosts.iter().find(|v| v.domains.iter().any(|d| d == "httpbin.org")).unwrap();
    assert_eq!(httpbin.routes[0].timeout, Some(std::time::Duration::from_secs(3)));
    // Circuit breaking on productpage.
    let pp = cluster(&cfg, "outbound|9080||productpage.default.svc.cluster.local");
    let pool = pp.connection_pool.as_ref().unwrap();
    assert_eq!(
        (pool.max_connections, pool.http1_max_pending_requests, pool.max_requests_per_connection),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(pp.outlier_detection.as_ref().unwrap().consecutive_5xx_errors, Some(1));
}

#[test]
fn security_example_is_accepted_and_every_resource_takes_effect() {
    let j = judge(&["mtls-destination-rules.yaml", "security.yaml"]);
    assert!(j.rejected.is_empty(), "{:?}", j.messages);
    every_accepted_resource_takes_effect(&j);
    // Mesh-wide STRICT from istio-system; the ALLOW policies on the inbound listener.
    let cfg = config_for(&j.snap, "productpage-v1-1");
    let inbound = cfg.listeners.iter().find(|l| l.name == "virtualInbound").unwrap();
    assert_eq!(inbound.peer_authentication, PeerAuthMode::Strict);
    assert!(!inbound.authorization.is_empty(), "the AuthorizationPolicies reach productpage's inbound listener");
}

#[test]
fn mtls_destination_rules_example_is_accepted_and_every_resource_takes_effect() {
    let j = judge(&["mtls-destination-rules.yaml"]);
    assert!(j.rejected.is_empty(), "{:?}", j.messages);
    every_accepted_resource_takes_effect(&j);
}

#[test]
fn production_namespace_example_is_accepted_and_every_resource_takes_effect() {
    let j = judge(&["mtls-destination-rules.yaml", "production-namespace.yaml"]);
    assert!(j.rejected.is_empty(), "{:?}", j.messages);
    every_accepted_resource_takes_effect(&j);
}

#[test]
fn multicluster_global_example_is_accepted_and_every_resource_takes_effect() {
    let j = judge(&["mtls-destination-rules.yaml", "multicluster-global.yaml"]);
    assert!(j.rejected.is_empty(), "{:?}", j.messages);
    every_accepted_resource_takes_effect(&j);
}
