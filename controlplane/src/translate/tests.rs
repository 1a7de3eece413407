use std::{collections::HashMap, sync::Arc};

use skein_api::proxy::{
    self, ClientTlsMode, Cluster, IdentityFiles, ListenerProtocol, OutboundPolicy, PeerAuthMode, ProxyConfig, Route,
    StringMatch, VirtualHost,
};

use super::*;
use crate::{
    mesh::MeshSettings,
    registry::Registry,
    snapshot::{IstioResources, Snapshot},
};

/// Bookinfo's shape: productpage → details, reviews v1/v2/v3 → ratings, one Service and one
/// EndpointSlice each, pods with sidecars (tlsMode label) and their own ServiceAccounts.
const BOOKINFO: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: default}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: details, namespace: default}
spec: {clusterIP: 198.19.0.11, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {clusterIP: 198.19.0.12, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec: {clusterIP: 198.19.0.13, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: backend, annotations: {networking.istio.io/exportTo: "."}}
spec: {clusterIP: 198.19.0.20, ports: [{name: tcp-db, port: 5432}]}
"#;

fn pod(name: &str, app: &str, version: &str, ip: &str, sa: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}, version: {version}, security.istio.io/tlsMode: istio}}}}\nspec: {{serviceAccountName: {sa}, containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
    )
}

fn slice(service: &str, ns: &str, eps: &[(&str, &str)], port: u16) -> String {
    let endpoints: Vec<String> = eps
        .iter()
        .map(|(ip, pod)| format!("{{addresses: [{ip}], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: {pod}, namespace: {ns}}}}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-abc, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{}]\n---\n",
        endpoints.join(", ")
    )
}

fn bookinfo_workloads() -> String {
    let mut s = String::new();
    s += &pod("productpage-v1-1", "productpage", "v1", "10.0.0.1", "bookinfo-productpage");
    s += &pod("details-v1-1", "details", "v1", "10.0.0.2", "bookinfo-details");
    s += &pod("reviews-v1-1", "reviews", "v1", "10.0.0.3", "bookinfo-reviews");
    s += &pod("reviews-v2-1", "reviews", "v2", "10.0.0.4", "bookinfo-reviews");
    s += &pod("reviews-v3-1", "reviews", "v3", "10.0.0.5", "bookinfo-reviews");
    s += &pod("ratings-v1-1", "ratings", "v1", "10.0.0.6", "bookinfo-ratings");
    s += &slice("productpage", "default", &[("10.0.0.1", "productpage-v1-1")], 9080);
    s += &slice("details", "default", &[("10.0.0.2", "details-v1-1")], 9080);
    s += &slice(
        "reviews",
        "default",
        &[("10.0.0.3", "reviews-v1-1"), ("10.0.0.4", "reviews-v2-1"), ("10.0.0.5", "reviews-v3-1")],
        9080,
    );
    s += &slice("ratings", "default", &[("10.0.0.6", "ratings-v1-1")], 9080);
    s += "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db-1, namespace: backend, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{name: tcp-db, port: 5432}]\nendpoints: [{addresses: [10.0.1.1]}]\n";
    s
}

const DESTINATION_RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

/// Builds a snapshot from YAML documents of any of the watched kinds.
fn snapshot(mesh: MeshSettings, docs: &str) -> Snapshot {
    snapshot_resolved(mesh, docs, &HashMap::new())
}

/// [`snapshot`], with DNS answers for ServiceEntry hosts.
fn snapshot_resolved(mesh: MeshSettings, docs: &str, resolved: &HashMap<String, Vec<std::net::IpAddr>>) -> Snapshot {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut pods = Vec::new();
    let mut nodes = std::collections::BTreeMap::new();
    let mut istio = IstioResources::default();
    for doc in docs.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
        let kind = value["kind"].as_str().unwrap().to_string();
        let t =
            jiff::Timestamp::from_second(1_700_000_000 + services.len() as i64 + istio.virtual_services.len() as i64)
                .unwrap();
        let mut value = value;
        value["metadata"]["creationTimestamp"] = serde_yaml::Value::String(t.to_string());
        // As the apiserver sets them: the same object in two snapshots has the same identity.
        let id = format!("{kind}/{:?}/{:?}", value["metadata"]["namespace"], value["metadata"]["name"]);
        value["metadata"]["uid"] = serde_yaml::Value::String(id);
        if value["metadata"]["generation"].is_null() {
            value["metadata"]["generation"] = serde_yaml::Value::Number(1.into());
        }
        match kind.as_str() {
            "Service" => services.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            "EndpointSlice" => slices.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            "Pod" => pods.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            "Node" => {
                let node: k8s_openapi::api::core::v1::Node = serde_yaml::from_value(value).unwrap();
                let labels = node.metadata.labels.unwrap_or_default();
                nodes.insert(node.metadata.name.unwrap(), crate::locality::Locality::from_node_labels(&labels));
            }
            "VirtualService" => istio.virtual_services.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            "DestinationRule" => istio.destination_rules.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            "ServiceEntry" => istio.service_entries.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            "Gateway" => istio.gateways.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            "PeerAuthentication" => istio.peer_authentications.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            "AuthorizationPolicy" => {
                istio.authorization_policies.push(Arc::new(serde_yaml::from_value(value).unwrap()))
            }
            "Sidecar" => istio.sidecars.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            other => panic!("fixture kind {other}"),
        }
    }
    let registry = Registry::build(&mesh, &services, &slices, &pods, &istio.service_entries, resolved);
    let mut snap = Snapshot::new(mesh, registry, istio, crate::registry::index_pods(&pods));
    snap.node_localities = Arc::new(nodes);
    snap
}

fn bookinfo(extra: &str) -> Snapshot {
    snapshot(MeshSettings::default(), &format!("{BOOKINFO}\n---\n{}\n---\n{extra}", bookinfo_workloads()))
}

fn config_for(snap: &Snapshot, pod: &str) -> ProxyConfig {
    let node = Node::parse(&format!("sidecar~10.0.0.1~{pod}.default~default.svc.cluster.local")).unwrap();
    let mut cfg = config(snap, &Workload::of(snap, &node));
    // The proxy supplies its own certificate files; the control plane never sends key paths.
    assert!(cfg.identity.is_none());
    cfg.identity = Some(IdentityFiles { cert_chain: "c".into(), private_key: "k".into(), root_cert: "r".into() });
    cfg.validate().unwrap_or_else(|e| panic!("translated config is invalid: {e}\n{cfg:#?}"));
    cfg
}

fn vhost<'a>(cfg: &'a ProxyConfig, host: &str) -> &'a VirtualHost {
    cfg.virtual_hosts.iter().find(|v| v.name == host).unwrap_or_else(|| panic!("no virtual host {host}"))
}

fn cluster<'a>(cfg: &'a ProxyConfig, name: &str) -> &'a Cluster {
    cfg.clusters.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no cluster {name}"))
}

fn targets(route: &Route) -> Vec<(&str, u32)> {
    route.route.iter().map(|d| (d.cluster.as_str(), d.weight)).collect()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

#[test]
fn node_id_is_parsed_as_istio_writes_it() {
    let n = Node::parse("sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local").unwrap();
    assert_eq!((n.kind, n.pod.as_str(), n.namespace.as_str()), (NodeKind::Sidecar, "reviews-v1-abc", "default"));
    assert_eq!(n.ip, Some("10.1.2.3".parse().unwrap()));
    for bad in ["sidecar~1.2.3.4~nonamespace~x", "proxy~1.2.3.4~a.b~x", "sidecar~notanip~a.b~x", "sidecar"] {
        assert!(Node::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn without_virtual_services_every_service_has_a_default_route_with_mesh_mtls() {
    let snap = bookinfo("");
    let cfg = config_for(&snap, "productpage-v1-1");
    let vh = vhost(&cfg, REVIEWS);
    for d in ["reviews", "reviews.default", "reviews.default.svc", REVIEWS, "198.19.0.12"] {
        assert!(vh.domains.iter().any(|x| x == d), "{d} missing from {:?}", vh.domains);
    }
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(vh.routes[0].matches[0].port, Some(9080));
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080||reviews.default.svc.cluster.local", 100)]);
    let c = cluster(&cfg, "outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(c.endpoints.len(), 3);
    assert_eq!(c.service_addresses, vec!["198.19.0.12:9080".parse().unwrap()]);
    // Auto mTLS: every endpoint has a sidecar, so the client speaks mesh mTLS and expects the
    // endpoints' ServiceAccount identity.
    let tls = c.tls.as_ref().expect("auto mTLS");
    assert_eq!(tls.mode, ClientTlsMode::IstioMutual);
    assert_eq!(tls.subject_alt_names, vec!["spiffe://cluster.local/ns/default/sa/bookinfo-reviews".to_string()]);
    // Istio's defaults: PERMISSIVE inbound, ALLOW_ANY outbound, default retries.
    let inbound = cfg.listeners.iter().find(|l| l.name == "virtualInbound").unwrap();
    assert_eq!(inbound.peer_authentication, PeerAuthMode::Permissive);
    assert_eq!(cfg.outbound_traffic_policy, OutboundPolicy::AllowAny);
    assert_eq!(vh.routes[0].retries.as_ref().map(|r| r.attempts), Some(2));
}

#[test]
fn a_service_exported_to_its_own_namespace_is_invisible_elsewhere() {
    let snap = bookinfo("");
    let cfg = config_for(&snap, "productpage-v1-1");
    assert!(!cfg.clusters.iter().any(|c| c.name.contains("db.backend")), "db leaked into default");
    // A TCP service seen from its own namespace: a cluster reachable by VIP, no HTTP routes.
    let w = Workload { namespace: "backend".into(), ..Default::default() };
    let backend = config(&snap, &w);
    let db = backend.clusters.iter().find(|c| c.name == "outbound|5432||db.backend.svc.cluster.local").unwrap();
    assert_eq!(db.service_addresses, vec!["198.19.0.20:5432".parse().unwrap()]);
    assert_eq!(db.endpoints, vec!["10.0.1.1:5432".parse().unwrap()]);
    assert!(!backend.virtual_hosts.iter().any(|v| v.name.starts_with("db.")));
    // Short names only resolve inside the service's namespace.
    let other = backend.virtual_hosts.iter().find(|v| v.name == REVIEWS).unwrap();
    assert!(!other.domains.iter().any(|d| d == "reviews"));
}

#[test]
fn subsets_select_endpoints_by_labels_and_routes_go_to_them() {
    let snap = bookinfo(&format!(
        "{DESTINATION_RULES}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n"
    ));
    let cfg = config_for(&snap, "productpage-v1-1");
    let v1 = cluster(&cfg, "outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(v1.endpoints, vec!["10.0.0.3:9080".parse().unwrap()]);
    assert!(v1.service_addresses.is_empty(), "the VIP belongs to the subset-less cluster");
    let vh = vhost(&cfg, REVIEWS);
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080|v1|reviews.default.svc.cluster.local", 100)]);
    assert_eq!(vh.routes[0].name, "default/reviews[0]");
}

#[test]
fn header_match_weights_fault_timeout_and_mirror_are_translated() {
    let snap = bookinfo(&format!(
        r#"{DESTINATION_RULES}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers: {{End-User: {{exact: jason}}}}
      uri: {{prefix: /reviews}}
    route:
    - destination: {{host: reviews, subset: v2}}
    fault:
      delay: {{fixedDelay: 2s, percentage: {{value: 100}}}}
      abort: {{httpStatus: 500, percentage: {{value: 50}}}}
    timeout: 0.5s
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: 50
    - destination: {{host: reviews, subset: v3}}
      weight: 50
    mirror: {{host: reviews, subset: v2}}
    mirrorPercentage: {{value: 25.0}}
    retries: {{attempts: 3, perTryTimeout: 100ms, retryOn: 5xx}}
"#
    ));
    let cfg = config_for(&snap, "productpage-v1-1");
    let r = &vhost(&cfg, REVIEWS).routes;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].name, "jason");
    let m = &r[0].matches[0];
    assert_eq!(m.headers.get("end-user"), Some(&StringMatch::Exact("jason".into())));
    assert_eq!(m.uri, Some(StringMatch::Prefix("/reviews".into())));
    assert_eq!(r[0].timeout, Some(std::time::Duration::from_millis(500)));
    let fault = r[0].fault.as_ref().unwrap();
    assert_eq!(fault.delay.as_ref().unwrap().fixed_delay, std::time::Duration::from_secs(2));
    assert_eq!(fault.abort.as_ref().map(|a| (a.http_status, a.percentage)), Some((500, 50.0)));
    assert_eq!(
        targets(&r[1]),
        vec![
            ("outbound|9080|v1|reviews.default.svc.cluster.local", 50),
            ("outbound|9080|v3|reviews.default.svc.cluster.local", 50)
        ]
    );
    assert_eq!(r[1].mirror.as_deref(), Some("outbound|9080|v2|reviews.default.svc.cluster.local"));
    assert_eq!(r[1].mirror_percentage, Some(25.0));
    let retry = r[1].retries.as_ref().unwrap();
    assert_eq!((retry.attempts, retry.retry_on.as_str()), (3, "5xx"));
    assert_eq!(retry.per_try_timeout, Some(std::time::Duration::from_millis(100)));
}

#[test]
fn header_edits_are_translated_as_istio_writes_them() {
    // Istio's header-manipulation example shape: on the rule and on a destination.
    let snap = bookinfo(&format!(
        r#"{DESTINATION_RULES}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - headers:
      request:
        set: {{X-Test: "100%%"}}
        remove: [Cookie]
      response:
        add: {{x-served-by: mesh}}
    route:
    - destination: {{host: reviews, subset: v2}}
      weight: 25
      headers:
        request: {{set: {{":authority": reviews-v2.internal}}}}
        response: {{remove: [foo]}}
    - destination: {{host: reviews, subset: v1}}
      weight: 75
"#
    ));
    let cfg = config_for(&snap, "productpage-v1-1");
    let r = &vhost(&cfg, REVIEWS).routes[0];
    // Names lower-case, Envoy's `%%` a literal `%`.
    assert_eq!(r.headers.request.set, [("x-test".to_string(), "100%".to_string())].into());
    assert_eq!(r.headers.request.remove, ["cookie"]);
    assert_eq!(r.headers.response.add, [("x-served-by".to_string(), "mesh".to_string())].into());
    // `:authority` is the Host the upstream sees.
    assert_eq!(r.route[0].headers.request.set, [("host".to_string(), "reviews-v2.internal".to_string())].into());
    assert_eq!(r.route[0].headers.response.remove, ["foo"]);
    assert!(r.route[1].headers.is_empty());
}

#[test]
fn wildcard_hosts_of_destination_rules_and_virtual_services_apply_most_specific_first() {
    // Istio's multicluster (gateways) model: one `*.global` rule for every `.global` host; an
    // exact host or a longer wildcard wins over it; a wildcard VirtualService routes every
    // host it covers.
    let docs = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: globals, namespace: default}
spec:
  hosts: [reviews.default.global, ratings.default.global, details.other.global]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  resolution: STATIC
  addresses: [240.0.0.9]
  endpoints: [{address: 192.0.2.9, ports: {http: 15443}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: istio-multicluster-destinationrule, namespace: default}
spec:
  host: "*.global"
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: default-global, namespace: default}
spec:
  host: "*.default.global"
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, connectionPool: {tcp: {maxConnections: 7}}}
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings-global, namespace: default}
spec:
  host: ratings.default.global
  trafficPolicy: {tls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: globals, namespace: default}
spec:
  hosts: ["*.default.global"]
  http:
  - route: [{destination: {host: reviews.default.global, subset: v2}}]
    timeout: 3s
"#;
    let snap = bookinfo(docs);
    let cfg = config_for(&snap, "productpage-v1-1");
    let c = |n: &str| cluster(&cfg, n).clone();
    // `*.global` alone: mesh mTLS for a host only it covers.
    assert_eq!(c("outbound|9080||details.other.global").tls.map(|t| t.mode), Some(ClientTlsMode::IstioMutual));
    assert!(c("outbound|9080||details.other.global").connection_pool.is_none());
    // The longer wildcard wins over `*.global`.
    let reviews = c("outbound|9080||reviews.default.global");
    assert_eq!(reviews.connection_pool.and_then(|p| p.max_connections), Some(7));
    // The exact host wins over both.
    assert!(c("outbound|9080||ratings.default.global").tls.is_none(), "exact rule: DISABLE");
    // The wildcard VirtualService routes each host it covers, and its subset (defined by the
    // wildcard rule) is accepted and built.
    for host in ["reviews.default.global", "ratings.default.global"] {
        let r = &vhost(&cfg, host).routes[0];
        assert_eq!(targets(r), vec![("outbound|9080|v2|reviews.default.global", 100)], "{host}");
        assert_eq!(r.timeout, Some(std::time::Duration::from_secs(3)));
    }
    assert_eq!(vhost(&cfg, "details.other.global").routes[0].name, "default", "not covered");
    let (_, verdicts) = crate::accept::LastGood::default().accept(&snap.istio, "cluster.local");
    assert!(verdicts.iter().all(|v| v.accepted()), "{verdicts:?}");
}

#[test]
fn source_labels_decide_per_client_whether_a_rule_applies() {
    let snap = bookinfo(&format!(
        "{DESTINATION_RULES}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{sourceLabels: {{app: productpage}}}}]\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n"
    ));
    let from_pp = config_for(&snap, "productpage-v1-1");
    assert_eq!(vhost(&from_pp, REVIEWS).routes.len(), 2);
    let from_details = config_for(&snap, "details-v1-1");
    let r = &vhost(&from_details, REVIEWS).routes;
    assert_eq!(r.len(), 1, "the sourceLabels rule does not apply to details");
    assert_eq!(targets(&r[0]), vec![("outbound|9080|v1|reviews.default.svc.cluster.local", 100)]);
}

#[test]
fn unknown_subset_routes_to_an_empty_cluster_instead_of_breaking_the_config() {
    let snap = bookinfo(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v9}}]\n",
    );
    let cfg = config_for(&snap, "productpage-v1-1");
    assert!(cluster(&cfg, "outbound|9080|v9|reviews.default.svc.cluster.local").endpoints.is_empty());
}

#[test]
fn destination_rule_policies_merge_subset_over_top_level() {
    let snap = bookinfo(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {maxConnections: 1, connectTimeout: 250ms}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
    tls: {mode: DISABLE}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: X-User}}
      tls: {mode: ISTIO_MUTUAL}
"#,
    );
    let cfg = config_for(&snap, "productpage-v1-1");
    let all = cluster(&cfg, "outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(all.load_balancer, skein_api::proxy::LoadBalancer::LeastRequest);
    assert!(all.tls.is_none(), "tls DISABLE turns auto mTLS off");
    let pool = all.connection_pool.as_ref().unwrap();
    assert_eq!((pool.max_connections, pool.http1_max_pending_requests), (Some(1), Some(1)));
    assert_eq!(pool.max_requests_per_connection, Some(1));
    assert_eq!(all.connect_timeout, Some(std::time::Duration::from_millis(250)));
    let od = all.outlier_detection.as_ref().unwrap();
    assert_eq!((od.consecutive_5xx_errors, od.max_ejection_percent), (Some(1), Some(100)));
    let v1 = cluster(&cfg, "outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(
        v1.load_balancer,
        skein_api::proxy::LoadBalancer::ConsistentHash(skein_api::proxy::HashKey::HttpHeaderName("x-user".into()))
    );
    assert_eq!(v1.tls.as_ref().map(|t| t.mode), Some(ClientTlsMode::IstioMutual));
    assert_eq!(v1.connection_pool, all.connection_pool, "unset subset fields inherit the top level");
}

#[test]
fn outlier_detection_follows_istio_cluster_builder_for_legacy_errors_and_panic_threshold() {
    let od = |policy: &str| {
        let snap = bookinfo(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {policy}\n"
        ));
        let cfg = config_for(&snap, "productpage-v1-1");
        cluster(&cfg, "outbound|9080||reviews.default.svc.cluster.local").outlier_detection.clone().unwrap()
    };
    // Istio's defaults: 5 consecutive 5xx, panic threshold 0 (no panic mode).
    let d = od("{interval: 1s}");
    assert_eq!(
        (d.consecutive_5xx_errors, d.consecutive_gateway_errors, d.min_health_percent),
        (Some(5), None, Some(0))
    );
    // The deprecated consecutiveErrors counts gateway errors only and turns the 5xx default off.
    let legacy = od("{consecutiveErrors: 7}");
    assert_eq!((legacy.consecutive_5xx_errors, legacy.consecutive_gateway_errors), (None, Some(7)));
    let both = od("{consecutiveErrors: 7, consecutive5xxErrors: 2}");
    assert_eq!((both.consecutive_5xx_errors, both.consecutive_gateway_errors), (Some(2), Some(7)));
    assert_eq!(od("{minHealthPercent: 30}").min_health_percent, Some(30));
}

#[test]
fn peer_authentication_precedence_is_workload_then_namespace_then_mesh() {
    let pa = |name: &str, ns: &str, selector: &str, mode: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{selector} mtls: {{mode: {mode}}}}}\n---\n"
        )
    };
    let inbound = |snap: &Snapshot, pod: &str| {
        let cfg = config_for(snap, pod);
        cfg.listeners.iter().find(|l| l.name == "virtualInbound").unwrap().peer_authentication
    };
    let mesh_strict = pa("default", "istio-system", "", "STRICT");
    let snap = bookinfo(&mesh_strict);
    assert_eq!(inbound(&snap, "reviews-v1-1"), PeerAuthMode::Strict);
    let snap = bookinfo(&format!("{mesh_strict}{}", pa("default", "default", "", "PERMISSIVE")));
    assert_eq!(inbound(&snap, "reviews-v1-1"), PeerAuthMode::Permissive);
    let snap = bookinfo(&format!(
        "{mesh_strict}{}{}",
        pa("default", "default", "", "UNSET"),
        pa("ratings", "default", "selector: {matchLabels: {app: ratings}},", "DISABLE")
    ));
    assert_eq!(inbound(&snap, "reviews-v1-1"), PeerAuthMode::Strict, "UNSET inherits the mesh-wide mode");
    assert_eq!(inbound(&snap, "ratings-v1-1"), PeerAuthMode::Disable);
}

#[test]
fn authorization_policies_apply_by_namespace_and_selector() {
    let snap = bookinfo(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-reviews]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [evil]}}]}]
"#,
    );
    let names = |pod: &str| -> Vec<String> {
        let cfg = config_for(&snap, pod);
        let l = cfg.listeners.iter().find(|l| l.name == "virtualInbound").unwrap();
        l.authorization.iter().map(|p| p.name.clone()).collect()
    };
    assert_eq!(
        names("ratings-v1-1"),
        vec!["default.allow-nothing", "default.ratings-viewer", "istio-system.deny-evil"]
    );
    assert_eq!(names("reviews-v1-1"), vec!["default.allow-nothing", "istio-system.deny-evil"]);
    let cfg = config_for(&snap, "ratings-v1-1");
    let l = cfg.listeners.iter().find(|l| l.name == "virtualInbound").unwrap();
    let viewer = &l.authorization[1];
    assert_eq!(viewer.rules[0].from[0].source.principals, vec!["cluster.local/ns/default/sa/bookinfo-reviews"]);
    assert_eq!(l.authorization[2].action, skein_api::proxy::AuthzAction::Deny);
}

#[test]
fn service_entries_register_external_hosts_and_registry_only_is_passed_on() {
    let mesh = MeshSettings { outbound_policy: OutboundPolicy::RegistryOnly, ..Default::default() };
    let snap = snapshot(
        mesh,
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{address: 192.0.2.7}]
"#,
    );
    let cfg = config_for(&snap, "client-1");
    assert_eq!(cfg.outbound_traffic_policy, OutboundPolicy::RegistryOnly);
    assert_eq!(vhost(&cfg, "api.example.com").domains, vec!["api.example.com".to_string()]);
    let c = cluster(&cfg, "outbound|80||api.example.com");
    assert_eq!(c.endpoints, vec!["192.0.2.7:80".parse().unwrap()]);
    assert!(c.tls.is_none(), "an external endpoint does not speak mesh mTLS");
}

#[test]
fn global_service_entries_reach_the_peer_gateway_on_15443_with_mesh_mtls() {
    let snap = snapshot(
        MeshSettings::default(),
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: reviews-default, namespace: default}
spec:
  hosts: [reviews.default.global]
  location: MESH_INTERNAL
  ports: [{name: http1, number: 9080, protocol: http}]
  resolution: DNS
  addresses: [240.0.0.3]
  endpoints: [{address: 192.0.2.20, labels: {cluster: cluster2}, ports: {http1: 15443}}]
"#,
    );
    let cfg = config_for(&snap, "client-1");
    let c = cluster(&cfg, "outbound|9080||reviews.default.global");
    assert_eq!(c.endpoints, vec!["192.0.2.20:15443".parse().unwrap()]);
    assert_eq!(c.service_addresses, vec!["240.0.0.3:9080".parse().unwrap()]);
    assert_eq!(c.tls.as_ref().map(|t| t.mode), Some(ClientTlsMode::IstioMutual));
    assert!(vhost(&cfg, "reviews.default.global").domains.contains(&"240.0.0.3".to_string()));
}

#[test]
fn the_name_table_holds_every_visible_host_with_an_address_for_the_dns_proxy() {
    let snap = bookinfo(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-global, namespace: default}
spec:
  hosts: [reviews.default.global]
  location: MESH_INTERNAL
  ports: [{name: http1, number: 9080, protocol: http}]
  resolution: STATIC
  addresses: [240.0.0.3]
  endpoints: [{address: 192.0.2.20, ports: {http1: 15443}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: no-address, namespace: default}
spec: {hosts: [api.example.com], ports: [{name: https, number: 443, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wildcard, namespace: default}
spec: {hosts: ["*.example.org"], addresses: [240.0.0.9], ports: [{name: tcp, number: 9000, protocol: TCP}], resolution: NONE}
"#,
    );
    let cfg = config_for(&snap, "productpage-v1-1");
    let names: Vec<(&str, Vec<String>)> = cfg
        .name_table
        .iter()
        .map(|n| (n.host.as_str(), n.addresses.iter().map(ToString::to_string).collect()))
        .collect();
    assert!(names.contains(&("reviews.default.global", vec!["240.0.0.3".into()])), "{names:?}");
    assert!(names.contains(&(REVIEWS, vec!["198.19.0.12".into()])), "{names:?}");
    // Not visible from `default` (exportTo "."), no address, a wildcard: not answered.
    for host in ["db.backend.svc.cluster.local", "api.example.com", "*.example.org"] {
        assert!(!names.iter().any(|(h, _)| *h == host), "{host} is in {names:?}");
    }
}

#[test]
fn a_virtual_service_in_the_clients_namespace_wins_over_an_older_one_elsewhere() {
    let snap = bookinfo(&format!(
        "{DESTINATION_RULES}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: elsewhere, namespace: other}}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  http: [{{route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: v3}}}}]}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: local, namespace: default}}\nspec:\n  hosts: [reviews]\n  http: [{{route: [{{destination: {{host: reviews, subset: v1}}}}]}}]\n"
    ));
    let cfg = config_for(&snap, "productpage-v1-1");
    assert_eq!(
        targets(&vhost(&cfg, REVIEWS).routes[0]),
        vec![("outbound|9080|v1|reviews.default.svc.cluster.local", 100)]
    );
    // From a namespace without its own, the other one (exported everywhere) applies.
    let w = Workload { namespace: "backend".into(), ..Default::default() };
    let from_backend = config(&snap, &w);
    let vh = from_backend.virtual_hosts.iter().find(|v| v.name == REVIEWS).unwrap();
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080|v3|reviews.default.svc.cluster.local", 100)]);
}

#[test]
fn gateway_bound_virtual_services_do_not_change_sidecars() {
    let snap = bookinfo(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: gw, namespace: default}\nspec:\n  hosts: [reviews]\n  gateways: [bookinfo-gateway]\n  http: [{route: [{destination: {host: details}}]}]\n",
    );
    let cfg = config_for(&snap, "productpage-v1-1");
    assert_eq!(
        targets(&vhost(&cfg, REVIEWS).routes[0]),
        vec![("outbound|9080||reviews.default.svc.cluster.local", 100)]
    );
}

const REVIEWS_TO_V3: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v3}\n";

fn bookinfo_docs(workloads: &str, extra: &str) -> String {
    format!("{BOOKINFO}\n---\n{workloads}\n---\n{DESTINATION_RULES}\n---\n{extra}")
}

#[test]
fn an_endpoint_change_patches_the_previous_translation_and_equals_a_fresh_one() {
    let before = snapshot(MeshSettings::default(), &bookinfo_docs(&bookinfo_workloads(), REVIEWS_TO_V3));
    let node = Node::parse("sidecar~10.0.0.1~productpage-v1-1.default~default.svc.cluster.local").unwrap();
    let key = OutboundKey::of(&Workload::of(&before, &node), &before);
    let old = outbound(&before, &key);
    // reviews-v3 moves to another address: only the reviews endpoints change.
    let moved = bookinfo_workloads().replace("{addresses: [10.0.0.5]", "{addresses: [10.0.0.15]");
    let docs = bookinfo_docs(&moved, REVIEWS_TO_V3);
    let after = snapshot(MeshSettings::default(), &docs);
    let hosts = after.endpoint_only_changes(&before);
    assert_eq!(hosts, Some([REVIEWS.to_string()].into()));
    let patched = patch_outbound(&after, &key, &old, &hosts.unwrap());
    let fresh = outbound(&snapshot(MeshSettings::default(), &docs), &key);
    assert_eq!(patched, fresh);
    assert_ne!(patched, old);
    let v3 = &patched.clusters["outbound|9080|v3|reviews.default.svc.cluster.local"];
    assert_eq!(v3.endpoints, vec!["10.0.0.15:9080".parse().unwrap()]);
    // What did not change is shared, not rebuilt: the renderer's diff visits only the change.
    let details = "outbound|9080||details.default.svc.cluster.local";
    assert!(Arc::ptr_eq(&patched.clusters[details], &old.clusters[details]));
    let v1 = "outbound|9080|v1|reviews.default.svc.cluster.local";
    assert!(Arc::ptr_eq(&patched.clusters[v1], &old.clusters[v1]), "an equal rebuilt cluster keeps the old one");
    assert!(Arc::ptr_eq(&patched.virtual_hosts, &old.virtual_hosts));
    let changed: Vec<_> = old.clusters.diff(&patched.clusters).map(|d| format!("{d:?}")).collect();
    assert_eq!(changed.len(), 2, "the v3 subset and the whole-service cluster: {changed:?}");
}

/// What the operator generates for a peer's exported reviews (v2 there), with the local
/// reviews (v1, v2, v3 here) also running.
const IMPORTED_REVIEWS: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews.default.global, namespace: istio-system, labels: {mesh.skein.dev/federation: default}}
spec:
  hosts: [reviews.default.global]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  resolution: STATIC
  addresses: [240.0.0.3]
  endpoints: [{address: 192.0.2.20, ports: {http: 15443}, labels: {subsets.mesh.skein.dev/v2: "true", subsets.mesh.skein.dev/v4: "true"}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews.default.global, namespace: istio-system, labels: {mesh.skein.dev/federation: default}}
spec:
  host: reviews.default.global
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    outlierDetection: {consecutiveGatewayErrors: 5, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 100}
  subsets:
  - {name: v2, labels: {subsets.mesh.skein.dev/v2: "true"}}
  - {name: v4, labels: {subsets.mesh.skein.dev/v4: "true"}}
"#;

#[test]
fn an_imported_global_host_puts_the_local_service_first_and_the_peer_gateway_as_failover() {
    let docs = bookinfo_docs(&bookinfo_workloads(), IMPORTED_REVIEWS);
    let snap = snapshot(MeshSettings::default(), &docs);
    let cfg = config_for(&snap, "productpage-v1-1");
    let gateway: Vec<std::net::SocketAddr> = vec!["192.0.2.20:15443".parse().unwrap()];
    let all = cluster(&cfg, "outbound|9080||reviews.default.global");
    let local: Vec<std::net::SocketAddr> =
        ["10.0.0.3:9080", "10.0.0.4:9080", "10.0.0.5:9080"].map(|a| a.parse().unwrap()).into();
    assert_eq!((&all.endpoints, &all.failover), (&local, &vec![gateway.clone()]));
    // The generated rule's outlier detection is what fails over from a listed but failing
    // local endpoint.
    let od = all.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!((od.consecutive_gateway_errors, od.max_ejection_percent), (Some(5), Some(100)));
    // A subset the local DestinationRule defines: its local pods first, then the peer.
    let v2 = cluster(&cfg, "outbound|9080|v2|reviews.default.global");
    assert_eq!((&v2.endpoints, &v2.failover), (&vec!["10.0.0.4:9080".parse().unwrap()], &vec![gateway.clone()]));
    // A subset only the peer has: the peer only.
    let v4 = cluster(&cfg, "outbound|9080|v4|reviews.default.global");
    assert_eq!((&v4.endpoints, &v4.failover), (&gateway, &Vec::new()));
    // A hand-written `.global` entry (no federation label) is taken as written.
    let hand = IMPORTED_REVIEWS.replace(", labels: {mesh.skein.dev/federation: default}}", "}");
    let snap = snapshot(MeshSettings::default(), &bookinfo_docs(&bookinfo_workloads(), &hand));
    let all = cluster(&config_for(&snap, "productpage-v1-1"), "outbound|9080||reviews.default.global").clone();
    assert_eq!((all.endpoints, all.failover), (gateway, Vec::new()));

    // A local pod moving is an endpoint-only change of the local host and of its `.global` twin.
    let node = Node::parse("sidecar~10.0.0.1~productpage-v1-1.default~default.svc.cluster.local").unwrap();
    let key = OutboundKey::of(&Workload::of(&snap, &node), &snap);
    let before = snapshot(MeshSettings::default(), &docs);
    let old = outbound(&before, &key);
    let moved = bookinfo_workloads().replace("{addresses: [10.0.0.4]", "{addresses: [10.0.0.14]");
    let after_docs = bookinfo_docs(&moved, IMPORTED_REVIEWS);
    let after = snapshot(MeshSettings::default(), &after_docs);
    let hosts = after.endpoint_only_changes(&before).expect("endpoint-only");
    assert_eq!(hosts, [REVIEWS.to_string(), "reviews.default.global".to_string()].into());
    let patched = patch_outbound(&after, &key, &old, &hosts);
    assert_eq!(patched, outbound(&snapshot(MeshSettings::default(), &after_docs), &key));
    let v2 = &patched.clusters["outbound|9080|v2|reviews.default.global"];
    assert_eq!(v2.endpoints, vec!["10.0.0.14:9080".parse().unwrap()]);
}

#[test]
fn any_change_beyond_endpoints_is_translated_anew() {
    let base = bookinfo_docs(&bookinfo_workloads(), REVIEWS_TO_V3);
    let before = snapshot(MeshSettings::default(), &base);
    // A new VirtualService.
    let vs = snapshot(
        MeshSettings::default(),
        &format!(
            "{base}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings, namespace: default}}\nspec: {{hosts: [ratings], http: [{{route: [{{destination: {{host: ratings}}}}]}}]}}\n"
        ),
    );
    assert_eq!(vs.endpoint_only_changes(&before), None);
    // A VirtualService edited (the apiserver bumps its generation).
    let edited = base.replace("subset: v3}", "subset: v2}").replace(
        "metadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http",
        "metadata: {name: reviews, namespace: default, generation: 2}\nspec:\n  hosts: [reviews]\n  http",
    );
    assert!(edited.contains("generation: 2"));
    assert_eq!(snapshot(MeshSettings::default(), &edited).endpoint_only_changes(&before), None);
    // A Service's port.
    let port = base.replace(
        "spec: {clusterIP: 198.19.0.11, ports: [{name: http, port: 9080}]}",
        "spec: {clusterIP: 198.19.0.11, ports: [{name: http, port: 9081}]}",
    );
    assert_ne!(port, base);
    assert_eq!(snapshot(MeshSettings::default(), &port).endpoint_only_changes(&before), None);
    // Nothing at all: reusable, nothing to patch.
    assert_eq!(snapshot(MeshSettings::default(), &base).endpoint_only_changes(&before), Some(Default::default()));
}

type RegistryObjects = (
    Vec<Arc<k8s_openapi::api::core::v1::Service>>,
    Vec<Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    Vec<Arc<k8s_openapi::api::core::v1::Pod>>,
);

/// Bookinfo's Services, EndpointSlices and Pods.
fn registry_objects() -> RegistryObjects {
    let docs = format!("{BOOKINFO}\n---\n{}", bookinfo_workloads());
    let (mut services, mut slices, mut pods) = (Vec::new(), Vec::new(), Vec::new());
    for doc in docs.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        let v: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
        match v["kind"].as_str().unwrap() {
            "Service" => services.push(Arc::new(serde_yaml::from_value(v).unwrap())),
            "EndpointSlice" => slices.push(Arc::new(serde_yaml::from_value(v).unwrap())),
            _ => pods.push(Arc::new(serde_yaml::from_value(v).unwrap())),
        }
    }
    (services, slices, pods)
}

#[test]
fn the_registry_cache_rebuilds_only_services_whose_objects_changed() {
    use k8s_openapi::api::core::v1::Pod;
    let (services, slices, mut pods) = registry_objects();
    let mesh = MeshSettings::default();
    let mut cache = crate::registry::RegistryCache::default();
    let build = |pods: &[Arc<Pod>], cache: &mut crate::registry::RegistryCache| {
        Registry::build_cached(&mesh, &services, &slices, pods, &[], &HashMap::new(), cache)
    };
    let first = build(&pods, &mut cache);
    let same = build(&pods, &mut cache);
    for (host, infos) in &first.by_host {
        assert!(Arc::ptr_eq(&infos[0], &same.by_host[host][0]), "{host} rebuilt although nothing changed");
    }
    // reviews-v3's pod loses its sidecar: only reviews (whose endpoint names it) is rebuilt.
    let i = pods.iter().position(|p| p.metadata.name.as_deref() == Some("reviews-v3-1")).unwrap();
    let mut p = (*pods[i]).clone();
    p.metadata.labels.as_mut().unwrap().remove("security.istio.io/tlsMode");
    pods[i] = Arc::new(p);
    let next = build(&pods, &mut cache);
    for (host, infos) in &first.by_host {
        assert_eq!(Arc::ptr_eq(&infos[0], &next.by_host[host][0]), &**host != REVIEWS, "{host}");
    }
    let v3 = next.by_host[REVIEWS][0].endpoints.iter().find(|e| e.ip.to_string() == "10.0.0.5").unwrap();
    assert!(!v3.mtls_ready);
    // And the result equals a build from scratch.
    assert_eq!(next.by_host, Registry::build(&mesh, &services, &slices, &pods, &[], &HashMap::new()).by_host);
}

const INGRESS_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: istio-ingressgateway-1, namespace: istio-system, labels: {istio: ingressgateway}}\nspec: {serviceAccountName: istio-ingressgateway, containers: [{name: proxy, image: x}]}\nstatus: {podIP: 10.0.9.1}\n";

/// Istio's Bookinfo ingress (samples/bookinfo/networking/bookinfo-gateway.yaml), as written.
const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    route:
    - destination: {host: productpage, port: {number: 9080}}
"#;

fn gateway_config(snap: &Snapshot) -> ProxyConfig {
    let node =
        Node::parse("router~10.0.9.1~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local").unwrap();
    let w = Workload::of(snap, &node);
    assert!(w.router);
    let mut cfg = config(snap, &w);
    cfg.identity = Some(IdentityFiles { cert_chain: "c".into(), private_key: "k".into(), root_cert: "r".into() });
    cfg.validate().unwrap_or_else(|e| panic!("translated gateway config is invalid: {e}\n{cfg:#?}"));
    cfg
}

#[test]
fn an_ingress_gateway_serves_the_virtual_services_bound_to_its_gateways() {
    let snap = bookinfo(&format!("{INGRESS_POD}\n---\n{BOOKINFO_GATEWAY}"));
    let cfg = gateway_config(&snap);
    assert_eq!(cfg.listeners.len(), 1, "{:?}", cfg.listeners);
    let l = &cfg.listeners[0];
    assert_eq!((l.name.as_str(), l.address.port(), l.protocol), ("0.0.0.0_80", 80, ListenerProtocol::Http));
    assert!(l.capture.is_none() && l.server_tls.is_none());
    assert_eq!(cfg.virtual_hosts.len(), 1);
    let vh = vhost(&cfg, "*");
    assert_eq!(vh.domains, vec!["*".to_string()]);
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080||productpage.default.svc.cluster.local", 100)]);
    let m = &vh.routes[0].matches;
    assert_eq!(m[0].uri, Some(StringMatch::Exact("/productpage".into())));
    assert_eq!(m[1].uri, Some(StringMatch::Prefix("/static".into())));
    assert!(m.iter().all(|m| m.port == Some(80)));
    // The gateway reaches the mesh with mesh mTLS, like any client.
    let pp = cluster(&cfg, "outbound|9080||productpage.default.svc.cluster.local");
    assert_eq!(pp.endpoints, vec!["10.0.0.1:9080".parse().unwrap()]);
    assert_eq!(pp.tls.as_ref().map(|t| t.mode), Some(ClientTlsMode::IstioMutual));
    // Sidecars do not get the gateway's routes.
    assert!(config_for(&snap, "productpage-v1-1").virtual_hosts.iter().all(|v| v.name != "*"));
}

#[test]
fn a_gateway_listens_on_the_target_port_of_its_service() {
    // The operator's (and Istio's) ingress Service: 80 → 8080, 443 → 8443, selecting the
    // gateway's pod. A Service elsewhere or selecting other pods changes nothing.
    let services = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: v1
kind: Service
metadata: {name: unrelated, namespace: istio-system}
spec:
  selector: {app: something-else}
  ports: [{name: http, port: 80, targetPort: 9999}]
"#;
    let snap = bookinfo(&format!("{INGRESS_POD}\n---\n{BOOKINFO_GATEWAY}\n---\n{services}"));
    let cfg = gateway_config(&snap);
    let l: Vec<(&str, u16)> = cfg.listeners.iter().map(|l| (l.name.as_str(), l.address.port())).collect();
    assert_eq!(l, vec![("0.0.0.0_8080", 8080)]);
    // Routes match the port the proxy accepts on.
    let vh = vhost(&cfg, "*");
    assert!(vh.routes.iter().flat_map(|r| &r.matches).all(|m| m.port == Some(8080)), "{:?}", vh.routes);
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080||productpage.default.svc.cluster.local", 100)]);

    // A named targetPort is the port the Service's endpoints give that name.
    let named = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: http-alt}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: istio-ingressgateway-1, namespace: istio-system, labels: {kubernetes.io/service-name: istio-ingressgateway}}
addressType: IPv4
ports: [{name: http2, port: 8081}]
endpoints: [{addresses: [10.0.9.1], conditions: {ready: true}, targetRef: {kind: Pod, name: istio-ingressgateway-1, namespace: istio-system}}]
"#;
    let snap = bookinfo(&format!("{INGRESS_POD}\n---\n{BOOKINFO_GATEWAY}\n---\n{named}"));
    assert_eq!(gateway_config(&snap).listeners[0].address.port(), 8081);
}

#[test]
fn servers_written_for_the_service_port_and_for_the_pod_port_share_one_listener() {
    // Istio's current Bookinfo gateway says 8080 (the pod's port); older YAML and Istio's
    // HTTPS-redirect example say 80 (the Service's, bound as its target 8080). Istio merges
    // servers by the port they resolve to: both are served on 8080, neither is dropped.
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ['*']
  gateways: [bookinfo-gateway]
  http: [{match: [{uri: {exact: /productpage}}], route: [{destination: {host: productpage, port: {number: 9080}}}]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: legacy, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [ratings.example.com]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: default}
spec:
  hosts: [ratings.example.com]
  gateways: [legacy]
  http: [{match: [{port: 80}], route: [{destination: {host: ratings, port: {number: 9080}}}]}]
"#;
    let snap = bookinfo(&format!("{INGRESS_POD}\n---\n{yaml}"));
    let cfg = gateway_config(&snap);
    let l: Vec<u16> = cfg.listeners.iter().map(|l| l.address.port()).collect();
    assert_eq!(l, vec![8080]);
    assert_eq!(
        targets(&vhost(&cfg, "*").routes[0]),
        vec![("outbound|9080||productpage.default.svc.cluster.local", 100)]
    );
    // The `port: 80` match names the server's port; the proxy sees the bound one.
    let legacy = vhost(&cfg, "ratings.example.com");
    assert_eq!(legacy.routes[0].matches[0].port, Some(8080));
    assert_eq!(targets(&legacy.routes[0]), vec![("outbound|9080||ratings.default.svc.cluster.local", 100)]);
}

#[test]
fn https_redirect_servers_and_redirect_routes_keep_istio_semantics() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
    hosts: [shop.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/shop]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}
  - route:
    - destination: {host: productpage}
"#;
    let snap = bookinfo(&format!("{INGRESS_POD}\n---\n{yaml}"));
    let cfg = gateway_config(&snap);
    let vh = vhost(&cfg, "shop.example.com");
    // Port 80: one route, a 301 to https whatever the path; no VirtualService route there.
    let on80: Vec<&Route> = vh.routes.iter().filter(|r| r.matches.iter().any(|m| m.port == Some(80))).collect();
    assert_eq!(on80.len(), 1, "{:?}", vh.routes);
    let rd = on80[0].redirect.as_ref().expect("a redirect");
    assert_eq!((rd.scheme.as_deref(), rd.redirect_code, rd.port), (Some("https"), 301, None));
    assert!(on80[0].matches.iter().all(|m| m.uri.is_none()));
    // Port 443: the VirtualService, its redirect with scheme and the scheme's default port.
    let on443: Vec<&Route> = vh.routes.iter().filter(|r| r.matches.iter().any(|m| m.port == Some(443))).collect();
    assert_eq!(on443.len(), 2, "{:?}", vh.routes);
    let rd = on443[0].redirect.as_ref().expect("the VirtualService redirect");
    assert_eq!((rd.uri.as_deref(), rd.scheme.as_deref(), rd.port), (Some("/new"), Some("https"), Some(443)));
    assert!(on443[1].redirect.is_none());
}

#[test]
fn gateway_servers_become_https_passthrough_and_east_west_listeners() {
    let gw = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key}
    hosts: ["default/app.example.com"]
  - port: {number: 8443, name: tls, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: ["*.secure.example.com"]
  - port: {number: 15443, name: tls-ew, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 9999, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: [app.example.com]
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
  tls:
  - match: [{sniHosts: [db.secure.example.com]}]
    route:
    - destination: {host: details, port: {number: 9080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere, namespace: other}
spec:
  hosts: [app.example.com]
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {host: ratings.default.svc.cluster.local}
"#;
    let snap = bookinfo(&format!("{INGRESS_POD}\n---\n{DESTINATION_RULES}\n---\n{gw}"));
    let cfg = gateway_config(&snap);
    let names: Vec<&str> = cfg.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, vec!["0.0.0.0_443", "0.0.0.0_8443", "0.0.0.0_15443"], "the egress gateway's server is not here");
    let https = &cfg.listeners[0];
    assert_eq!(https.protocol, ListenerProtocol::Http);
    let cred = &https.server_tls.as_ref().expect("TLS terminated").credentials[0];
    assert_eq!(cred.hosts, vec!["app.example.com".to_string()]);
    assert_eq!(cred.cert_chain, std::path::PathBuf::from("/etc/certs/tls.crt"));
    // Only the VirtualService in the namespace the server's host admits (`default/`) is served.
    let vh = vhost(&cfg, "app.example.com");
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080|v2|reviews.default.svc.cluster.local", 100)]);
    assert_eq!(vh.routes.len(), 1, "{:?}", vh.routes);
    let pass = &cfg.listeners[1];
    assert_eq!(pass.protocol, ListenerProtocol::Tls);
    assert_eq!(pass.tls_routes.len(), 1);
    assert_eq!(pass.tls_routes[0].sni_hosts, vec!["db.secure.example.com".to_string()]);
    assert_eq!(pass.tls_routes[0].cluster, "outbound|9080||details.default.svc.cluster.local");
    assert_eq!(cfg.listeners[2].protocol, ListenerProtocol::AutoPassthrough);
    assert_eq!(cfg.listeners[2].passthrough_hosts, vec!["*.local".to_string()], "only the server's hosts");
    // East-west passthrough finds every subset cluster by its Istio SNI name.
    assert!(!cluster(&cfg, "outbound|9080|v3|reviews.default.svc.cluster.local").endpoints.is_empty());
}

/// The operator splits a large export over several east-west Gateways (shards): on one port
/// their AUTO_PASSTHROUGH servers make one listener serving the union of their hosts.
#[test]
fn east_west_gateway_shards_on_one_port_serve_the_union_of_their_hosts() {
    let shard = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 15443, name: tls-east-west, protocol: TLS}}\n    tls: {{mode: AUTO_PASSTHROUGH}}\n    hosts: [\"default/{host}.default.svc.cluster.local\"]\n"
        )
    };
    let gws =
        format!("{}---\n{}", shard("skein-eastwestgateway", "reviews"), shard("skein-eastwestgateway-1", "ratings"));
    let snap = bookinfo(&format!("{INGRESS_POD}\n---\n{gws}"));
    let cfg = gateway_config(&snap);
    assert_eq!(cfg.listeners.len(), 1, "{:?}", cfg.listeners);
    assert_eq!(cfg.listeners[0].protocol, ListenerProtocol::AutoPassthrough);
    assert_eq!(
        cfg.listeners[0].passthrough_hosts,
        vec!["ratings.default.svc.cluster.local".to_string(), "reviews.default.svc.cluster.local".to_string()]
    );
}

#[test]
fn credential_name_serves_the_secret_only_to_a_gateway_that_authenticated_in_its_namespace() {
    // security.yaml's bookinfo-gateway-https, as written (the Secret lives with the gateway).
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bookinfo-gateway-https, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, credentialName: bookinfo-credential}\n    hosts: [bookinfo.example.com]\n";
    let mut snap = bookinfo(&format!("{INGRESS_POD}\n---\n{gw}"));
    let secret = crate::snapshot::TlsSecret {
        cert_chain: "-----BEGIN CERTIFICATE-----\nchain\n".into(),
        private_key: skein_api::proxy::SecretPem("-----BEGIN PRIVATE KEY-----\nKEY-MATERIAL\n".into()),
        ca_certificates: None,
    };
    snap.tls_secrets.insert(("istio-system".into(), "bookinfo-credential".into()), Arc::new(secret));
    let node =
        Node::parse("router~10.0.9.1~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local").unwrap();
    let mut w = Workload::of(&snap, &node);
    // Not authenticated: the server is not served (no key material leaves the control plane).
    let anonymous = config(&snap, &w);
    assert!(anonymous.listeners.is_empty(), "{:?}", anonymous.listeners);
    w.authenticated = true;
    let cfg = config(&snap, &w);
    let tls = cfg.listeners[0].server_tls.as_ref().expect("HTTPS terminated");
    let inline = tls.credentials[0].inline.as_ref().expect("the Secret's certificate");
    assert!(inline.private_key.0.contains("KEY-MATERIAL"));
    assert_eq!(tls.credentials[0].hosts, vec!["bookinfo.example.com".to_string()]);
    // Never printed: not in Debug output, not in a config dump.
    assert!(!format!("{cfg:?}").contains("KEY-MATERIAL"));
    assert!(!serde_json::to_string(&cfg).unwrap().contains("KEY-MATERIAL"));
    // A Secret of another namespace is not served, even to an authenticated gateway.
    let mut other = snap.tls_secrets.clone();
    let s = other.remove(&("istio-system".into(), "bookinfo-credential".into())).unwrap();
    snap.tls_secrets = [(("default".to_string(), "bookinfo-credential".to_string()), s)].into();
    assert!(config(&snap, &w).listeners.is_empty());
}

#[test]
fn port_level_mtls_of_the_selecting_policy_overrides_the_mode_per_port() {
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    \"9080\": {mode: DISABLE}\n    \"9090\": {mode: UNSET}\n";
    let snap = bookinfo(pa);
    let inbound = |pod: &str| {
        let cfg = config_for(&snap, pod);
        cfg.listeners.into_iter().find(|l| l.name == "virtualInbound").unwrap()
    };
    let reviews = inbound("reviews-v1-1");
    assert_eq!(reviews.peer_authentication, PeerAuthMode::Strict);
    // UNSET keeps the workload's mode: no entry.
    assert_eq!(reviews.port_peer_authentication, [(9080, PeerAuthMode::Disable)].into());
    assert!(inbound("ratings-v1-1").port_peer_authentication.is_empty(), "not selected");
}

#[test]
fn resolution_none_hosts_pass_through_to_where_the_client_was_going() {
    let mesh = MeshSettings { outbound_policy: OutboundPolicy::RegistryOnly, ..Default::default() };
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wiki, namespace: default}\nspec:\n  hosts: ['*.wikipedia.org']\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: NONE\n  location: MESH_EXTERNAL\n";
    let cfg = config_for(&snapshot(mesh, se), "client-1");
    let vh = vhost(&cfg, "*.wikipedia.org");
    assert_eq!(vh.domains, vec!["*.wikipedia.org".to_string()]);
    assert_eq!(targets(&vh.routes[0]), vec![(skein_api::proxy::PASSTHROUGH_CLUSTER, 100)]);
    assert_eq!(vh.routes[0].matches[0].port, Some(80));
}

#[test]
fn a_patched_registry_equals_one_built_from_scratch_after_deletes_edits_and_entries() {
    let (mut services, slices, mut pods) = registry_objects();
    let entry = |host: &str| -> Arc<skein_api::istio::networking::ServiceEntry> {
        Arc::new(serde_yaml::from_str(&format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {host}, namespace: default}}\nspec: {{hosts: [{host}, {REVIEWS}], ports: [{{number: 80, name: http, protocol: HTTP}}], resolution: STATIC, endpoints: [{{address: 192.0.2.1}}]}}\n")).unwrap())
    };
    let mesh = MeshSettings::default();
    let mut cache = crate::registry::RegistryCache::default();
    let mut entries = vec![entry("a.example.com")];
    Registry::build_cached(&mesh, &services, &slices, &pods, &entries, &HashMap::new(), &mut cache);
    // details deleted, ratings edited (a new object), the entry replaced by another.
    services.retain(|s| s.metadata.name.as_deref() != Some("details"));
    let i = services.iter().position(|s| s.metadata.name.as_deref() == Some("ratings")).unwrap();
    let mut ratings = (*services[i]).clone();
    ratings.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 9081;
    services[i] = Arc::new(ratings);
    pods.pop();
    entries = vec![entry("b.example.com")];
    let patched = Registry::build_cached(&mesh, &services, &slices, &pods, &entries, &HashMap::new(), &mut cache);
    let fresh = Registry::build(&mesh, &services, &slices, &pods, &entries, &HashMap::new());
    assert_eq!(patched.by_host, fresh.by_host);
    assert!(patched.by_host.get("details.default.svc.cluster.local").is_none());
    assert!(patched.by_host.get("a.example.com").is_none());
    // reviews: the Service first, then the entry that also names it.
    let reviews = patched.by_host.get(REVIEWS).unwrap();
    assert_eq!((reviews.len(), reviews[0].k8s_name.as_deref()), (2, Some("reviews")));
}

/// The registry kept from watch events, step by step, against a build from scratch of the
/// same objects; `unchanged` hosts must keep their very entries (nothing downstream re-sent).
#[test]
fn the_registry_follows_watch_events_and_equals_a_fresh_build() {
    use crate::registry::{Changed, RegistryCache, key_of};
    let (mut services, mut slices, mut pods) = registry_objects();
    let mesh = MeshSettings::default();
    let mut cache = RegistryCache::default();
    cache.resync(&mesh, &services, &slices, &pods);
    let mut last = cache.registry(&[], &HashMap::new());
    let mut step = |cache: &mut RegistryCache, changed: Changed, objs: &RegistryObjects, changed_hosts: &[&str]| {
        cache.update(&mesh, changed);
        let next = cache.registry(&[], &HashMap::new());
        let fresh = Registry::build(&mesh, &objs.0, &objs.1, &objs.2, &[], &HashMap::new());
        assert_eq!(next.by_host, fresh.by_host);
        assert_eq!(next.by_host.keys().collect::<Vec<_>>(), last.by_host.keys().collect::<Vec<_>>());
        for (host, infos) in &next.by_host {
            let kept = Arc::ptr_eq(&infos[0], &last.by_host[host][0]);
            assert_eq!(kept, !changed_hosts.contains(&&**host), "{host}");
        }
        last = next;
        last.by_host[REVIEWS][0].endpoints.len()
    };
    let pod_at = |pods: &[Arc<k8s_openapi::api::core::v1::Pod>], name: &str| {
        pods.iter().position(|p| p.metadata.name.as_deref() == Some(name)).unwrap()
    };
    const RATINGS: &str = "ratings.default.svc.cluster.local";

    // A pod status update that changes nothing the registry reads: every entry kept.
    let i = pod_at(&pods, "reviews-v3-1");
    let mut p = (*pods[i]).clone();
    p.status.get_or_insert_default().phase = Some("Running".into());
    pods[i] = Arc::new(p);
    let changed = Changed { pods: vec![(key_of(&pods[i].metadata), Some(pods[i].clone()))], ..Default::default() };
    step(&mut cache, changed, &(services.clone(), slices.clone(), pods.clone()), &[]);

    // The pod loses its sidecar: reviews (whose endpoint names it) changes, nothing else.
    let mut p = (*pods[i]).clone();
    p.metadata.labels.as_mut().unwrap().remove("security.istio.io/tlsMode");
    pods[i] = Arc::new(p);
    let changed = Changed { pods: vec![(key_of(&pods[i].metadata), Some(pods[i].clone()))], ..Default::default() };
    step(&mut cache, changed, &(services.clone(), slices.clone(), pods.clone()), &[REVIEWS]);

    // The pod is deleted before its EndpointSlice is updated: its endpoint leaves reviews at
    // once (as in istiod, an endpoint whose Pod is unknown is not sent).
    let gone = pods.remove(i);
    let changed = Changed { pods: vec![(key_of(&gone.metadata), None)], ..Default::default() };
    assert_eq!(step(&mut cache, changed, &(services.clone(), slices.clone(), pods.clone()), &[REVIEWS]), 2);

    // A Pod that arrives after the EndpointSlice naming it brings its endpoint back.
    pods.insert(i, gone.clone());
    let changed = Changed { pods: vec![(key_of(&gone.metadata), Some(gone.clone()))], ..Default::default() };
    assert_eq!(step(&mut cache, changed, &(services.clone(), slices.clone(), pods.clone()), &[REVIEWS]), 3);
    let gone = pods.remove(i);
    let changed = Changed { pods: vec![(key_of(&gone.metadata), None)], ..Default::default() };
    step(&mut cache, changed, &(services.clone(), slices.clone(), pods.clone()), &[REVIEWS]);

    // ratings' EndpointSlice is relabelled to reviews: both change.
    let j = slices.iter().position(|s| s.metadata.name.as_deref() == Some("ratings-abc")).unwrap();
    let mut moved = (*slices[j]).clone();
    moved.metadata.labels.as_mut().unwrap().insert("kubernetes.io/service-name".into(), "reviews".into());
    slices[j] = Arc::new(moved);
    let changed =
        Changed { slices: vec![(key_of(&slices[j].metadata), Some(slices[j].clone()))], ..Default::default() };
    step(&mut cache, changed, &(services.clone(), slices.clone(), pods.clone()), &[REVIEWS, RATINGS]);

    // It is deleted.
    let gone = slices.remove(j);
    let changed = Changed { slices: vec![(key_of(&gone.metadata), None)], ..Default::default() };
    step(&mut cache, changed, &(services.clone(), slices.clone(), pods.clone()), &[REVIEWS]);

    // ratings is deleted, then created again: its EndpointSlice (recreated first) is found.
    let k = services.iter().position(|s| s.metadata.name.as_deref() == Some("ratings")).unwrap();
    let ratings = services.remove(k);
    cache.update(&mesh, Changed { services: vec![(key_of(&ratings.metadata), None)], ..Default::default() });
    assert!(cache.registry(&[], &HashMap::new()).by_host.get(RATINGS).is_none());
    slices.push(gone.clone());
    let mut back = (*gone).clone();
    back.metadata.labels.as_mut().unwrap().insert("kubernetes.io/service-name".into(), "ratings".into());
    let back = Arc::new(back);
    *slices.last_mut().unwrap() = back.clone();
    cache.update(&mesh, Changed { slices: vec![(key_of(&back.metadata), Some(back.clone()))], ..Default::default() });
    services.push(Arc::new((*ratings).clone()));
    let changed =
        Changed { services: vec![(key_of(&ratings.metadata), services.last().cloned())], ..Default::default() };
    step(&mut cache, changed, &(services.clone(), slices.clone(), pods.clone()), &[RATINGS]);
    assert_eq!(last.by_host[RATINGS][0].endpoints.len(), 1);

    // A resync with the same objects changes nothing; one with ratings gone removes it.
    cache.resync(&mesh, &services, &slices, &pods);
    assert_eq!(cache.registry(&[], &HashMap::new()).by_host, last.by_host);
    services.retain(|s| s.metadata.name.as_deref() != Some("ratings"));
    cache.resync(&mesh, &services, &slices, &pods);
    let after = cache.registry(&[], &HashMap::new());
    assert_eq!(after.by_host, Registry::build(&mesh, &services, &slices, &pods, &[], &HashMap::new()).by_host);
    assert!(after.by_host.get(RATINGS).is_none());
    assert_eq!(cache.pods().len(), pods.len());
}

#[test]
fn export_to_on_virtual_services_and_destination_rules_limits_who_sees_them() {
    // Both exported only to their own namespace: a client in `backend` gets neither the route
    // nor the DestinationRule's policy; a client in `default` gets both.
    let snap = bookinfo(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  exportTo: [\".\"]\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n  subsets: [{name: v1, labels: {version: v1}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  exportTo: [\".\"]\n  http: [{route: [{destination: {host: reviews, subset: v1}}]}]\n",
    );
    let local = config_for(&snap, "productpage-v1-1");
    assert_eq!(
        targets(&vhost(&local, REVIEWS).routes[0]),
        vec![("outbound|9080|v1|reviews.default.svc.cluster.local", 100)]
    );
    assert_eq!(
        cluster(&local, "outbound|9080||reviews.default.svc.cluster.local").load_balancer,
        proxy::LoadBalancer::Random
    );
    let remote = config(&snap, &Workload { namespace: "backend".into(), ..Default::default() });
    let vh = remote.virtual_hosts.iter().find(|v| v.name == REVIEWS).unwrap();
    assert_eq!(vh.routes[0].name, "default", "the VirtualService is not visible from backend");
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080||reviews.default.svc.cluster.local", 100)]);
    let c = remote.clusters.iter().find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local").unwrap();
    assert_eq!(c.load_balancer, proxy::LoadBalancer::RoundRobin, "the DestinationRule is not visible from backend");
    assert!(remote.clusters.iter().all(|c| c.name != "outbound|9080|v1|reviews.default.svc.cluster.local"));
}

#[test]
fn source_namespace_matches_and_rewrites_reach_the_route() {
    let snap = bookinfo(&format!(
        "{DESTINATION_RULES}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{sourceNamespace: backend, uri: {{prefix: /api/}}}}]\n    rewrite: {{uri: /v2/, authority: reviews-internal}}\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n"
    ));
    // From `backend` the first rule applies, with its prefix match and rewrite.
    let from_backend = config(&snap, &Workload { namespace: "backend".into(), ..Default::default() });
    let vh = from_backend.virtual_hosts.iter().find(|v| v.name == REVIEWS).unwrap();
    assert_eq!(vh.routes.len(), 2);
    assert_eq!(vh.routes[0].matches[0].uri, Some(StringMatch::Prefix("/api/".into())));
    assert_eq!(
        vh.routes[0].rewrite,
        Some(proxy::Rewrite { uri: Some("/v2/".into()), authority: Some("reviews-internal".into()) })
    );
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080|v2|reviews.default.svc.cluster.local", 100)]);
    // From `default` the rule cannot match: only the catch-all is left.
    let local = config_for(&snap, "productpage-v1-1");
    let routes = &vhost(&local, REVIEWS).routes;
    assert_eq!(routes.len(), 1, "{routes:#?}");
    assert_eq!(targets(&routes[0]), vec![("outbound|9080|v1|reviews.default.svc.cluster.local", 100)]);
}

#[test]
fn a_dns_service_entry_gets_the_addresses_its_host_resolves_to() {
    let docs = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: default}\nspec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  ports: [{name: https, number: 443, protocol: TLS}]\n  resolution: DNS\n";
    let resolved = HashMap::from([(
        "api.example.com".to_string(),
        vec!["192.0.2.7".parse().unwrap(), "192.0.2.8".parse().unwrap()],
    )]);
    let snap = snapshot_resolved(MeshSettings::default(), docs, &resolved);
    let cfg = config(&snap, &Workload { namespace: "default".into(), ..Default::default() });
    let c = cfg.clusters.iter().find(|c| c.name == "outbound|443||api.example.com").expect("cluster");
    assert_eq!(c.endpoints, vec!["192.0.2.7:443".parse().unwrap(), "192.0.2.8:443".parse().unwrap()]);
    // Not resolved (yet, or at all): a cluster without endpoints, so requests fail instead of
    // going somewhere else.
    let unresolved = snapshot(MeshSettings::default(), docs);
    let cfg = config(&unresolved, &Workload { namespace: "default".into(), ..Default::default() });
    assert!(cfg.clusters.iter().find(|c| c.name == "outbound|443||api.example.com").unwrap().endpoints.is_empty());
}

#[test]
fn only_names_without_a_dot_are_kubernetes_short_names() {
    use crate::registry::resolve_host;
    let r = |h: &str| resolve_host(h, "default", "cluster.local");
    assert_eq!(r("reviews"), "reviews.default.svc.cluster.local");
    assert_eq!(r("Reviews"), "reviews.default.svc.cluster.local");
    assert_eq!(r("httpbin.org"), "httpbin.org", "an external name with one dot");
    assert_eq!(r("reviews.prod"), "reviews.prod", "Istio does not expand <name>.<namespace>");
    assert_eq!(r("reviews.prod.svc.cluster.local"), "reviews.prod.svc.cluster.local");
    assert_eq!(r("*.example.com"), "*.example.com");
    assert_eq!(r("*"), "*");
}

/// Istio's egress task "Manage traffic to external services": a 3 s timeout on httpbin.org.
const HTTPBIN_EXT: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts:
    - httpbin.org
  http:
  - timeout: 3s
    route:
      - destination:
          host: httpbin.org
        weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin-ext, namespace: default}
spec:
  host: httpbin.org
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
"#;

#[test]
fn rules_for_an_external_host_with_one_dot_reach_its_routes_and_cluster() {
    let resolved = HashMap::from([("httpbin.org".to_string(), vec!["192.0.2.80".parse().unwrap()])]);
    let snap = snapshot_resolved(MeshSettings::default(), HTTPBIN_EXT, &resolved);
    let cfg = config(&snap, &Workload { namespace: "default".into(), ..Default::default() });
    let vh = cfg.virtual_hosts.iter().find(|v| v.name == "httpbin.org").expect("httpbin.org virtual host");
    assert_eq!(vh.routes.len(), 1, "{:#?}", vh.routes);
    assert_eq!(vh.routes[0].timeout, Some(std::time::Duration::from_secs(3)), "the VirtualService's timeout");
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|80||httpbin.org", 100)]);
    let c = cfg.clusters.iter().find(|c| c.name == "outbound|80||httpbin.org").unwrap();
    assert_eq!(c.load_balancer, proxy::LoadBalancer::Random, "the DestinationRule's policy");
    assert_eq!(c.endpoints, vec!["192.0.2.80:80".parse().unwrap()]);
    assert!(cfg.clusters.iter().all(|c| !c.name.contains("httpbin.org.svc")), "no Kubernetes twin of the host");
}

#[test]
fn a_kubernetes_ingress_of_istio_class_reaches_the_ingress_gateway_config() {
    // ../shared/examples/ingress-class.yaml, applied to `default` as a user would.
    let example = include_str!("../../../tests/e2e/fixtures/istio-examples/ingress-class.yaml");
    let mut ing: k8s_openapi::api::networking::v1::Ingress = serde_yaml::from_str(example).unwrap();
    ing.metadata.namespace = Some("default".into());
    let mesh = MeshSettings::default();
    let derived =
        crate::ingress::convert(&[Arc::new(ing)], &[], &[], &mesh.ingress, &mesh.root_namespace, &mesh.cluster_domain);
    let docs: Vec<String> = derived
        .gateways
        .iter()
        .map(|g| serde_yaml::to_string(&**g).unwrap())
        .chain(derived.virtual_services.iter().map(|v| serde_yaml::to_string(&**v).unwrap()))
        .collect();
    let snap = bookinfo(&format!("{INGRESS_POD}\n---\n{}", docs.join("\n---\n")));
    let cfg = gateway_config(&snap);
    let l: Vec<(&str, u16)> = cfg.listeners.iter().map(|l| (l.name.as_str(), l.address.port())).collect();
    assert_eq!(l, vec![("0.0.0.0_80", 80)]);
    let vh = vhost(&cfg, "*");
    assert_eq!(vh.routes.len(), 1, "{:?}", vh.routes);
    let m = &vh.routes[0].matches;
    assert_eq!(m[0].uri, Some(StringMatch::Exact("/productpage".into())));
    assert_eq!(m[1].uri, Some(StringMatch::Prefix("/productpage/".into())));
    assert_eq!(targets(&vh.routes[0]), vec![("outbound|9080||productpage.default.svc.cluster.local", 100)]);
    let pp = cluster(&cfg, "outbound|9080||productpage.default.svc.cluster.local");
    assert_eq!(pp.tls.as_ref().map(|t| t.mode), Some(ClientTlsMode::IstioMutual));
    // Sidecars are untouched by it.
    assert!(config_for(&snap, "productpage-v1-1").virtual_hosts.iter().all(|v| v.name != "*"));
}

#[cfg(test)]
mod examples;
mod locality;

/// Istio's Sidecar resource: the root namespace's default (the "same namespace and
/// istio-system" example of Istio's reference), a namespace's own, which replaces it, and a
/// workload's, which replaces that; each scopes the services, clusters and names its sidecars
/// get and sets their outbound traffic policy. Gateways are not scoped.
#[test]
fn a_sidecar_resource_scopes_what_its_workloads_see_and_their_outbound_policy() {
    let others = r#"apiVersion: v1
kind: Service
metadata: {name: search, namespace: other}
spec: {clusterIP: 198.19.0.30, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: telemetry, namespace: istio-system}
spec:
  hosts: [telemetry.example.com]
  addresses: [198.51.100.9]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.9}]
"#;
    let root = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec:\n  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
    let hosts = |cfg: &ProxyConfig| -> Vec<String> {
        let mut h: Vec<String> = cfg.virtual_hosts.iter().map(|v| v.name.clone()).collect();
        h.sort();
        h
    };
    let names = |cfg: &ProxyConfig| -> Vec<String> { cfg.name_table.iter().map(|n| n.host.clone()).collect() };

    // No Sidecar: everything exported is seen.
    let snap = bookinfo(others);
    let cfg = config_for(&snap, "productpage-v1-1");
    assert!(hosts(&cfg).contains(&"search.other.svc.cluster.local".to_string()));
    assert_eq!(cfg.outbound_traffic_policy, OutboundPolicy::AllowAny);

    // The root namespace's Sidecar: the workload's own namespace and istio-system, REGISTRY_ONLY.
    let snap = bookinfo(&format!("{others}\n---\n{root}"));
    let cfg = config_for(&snap, "productpage-v1-1");
    let default_ns = [
        "details.default.svc.cluster.local",
        "productpage.default.svc.cluster.local",
        "ratings.default.svc.cluster.local",
        "reviews.default.svc.cluster.local",
        "telemetry.example.com",
    ];
    assert_eq!(hosts(&cfg), default_ns);
    assert!(!cfg.clusters.iter().any(|c| c.name.contains("search.other")), "no cluster out of scope");
    assert!(!names(&cfg).contains(&"search.other.svc.cluster.local".to_string()), "nor a name");
    assert!(names(&cfg).contains(&"reviews.default.svc.cluster.local".to_string()));
    assert_eq!(cfg.outbound_traffic_policy, OutboundPolicy::RegistryOnly);
    // In another namespace `.` is that namespace.
    let w = Workload { namespace: "other".into(), ..Default::default() };
    assert_eq!(hosts(&config(&snap, &w)), ["search.other.svc.cluster.local", "telemetry.example.com"]);

    // A namespace's own Sidecar replaces the root's whole (its policy too: the mesh's).
    let own = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: default}\nspec:\n  egress:\n  - hosts: [\"*/*.svc.cluster.local\"]\n";
    // And a workload's: ratings sees search alone.
    let ratings = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: ratings, namespace: default}\nspec:\n  workloadSelector: {labels: {app: ratings}}\n  egress:\n  - hosts: [\"other/search.other.svc.cluster.local\"]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
    let snap = bookinfo(&format!("{others}\n---\n{root}\n---\n{own}\n---\n{ratings}"));
    let cfg = config_for(&snap, "productpage-v1-1");
    let mut all = default_ns[..4].to_vec();
    all.push("search.other.svc.cluster.local");
    assert_eq!(hosts(&cfg), all);
    assert_eq!(cfg.outbound_traffic_policy, OutboundPolicy::AllowAny);
    let cfg = config_for(&snap, "ratings-v1-1");
    assert_eq!(hosts(&cfg), ["search.other.svc.cluster.local"]);
    assert_eq!(names(&cfg), ["search.other.svc.cluster.local"]);
    assert_eq!(cfg.outbound_traffic_policy, OutboundPolicy::RegistryOnly);

    // Gateways are not sidecars: the root Sidecar neither scopes nor changes them.
    let gw = gateway_config(&snap);
    assert_eq!(gw.outbound_traffic_policy, OutboundPolicy::AllowAny);
}
