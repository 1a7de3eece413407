//! `skein-controlplane` against a real apiserver: Istio resources applied with kubectl reach a
//! connected proxy within a second; invalid ones are rejected with a reason on their status
//! and an Event while the last good config stays in force; ACK/NACK, resume and the metrics
//! that report them; the CA signs only for the ServiceAccount a token proves.
//!
//! The proxy here is a small gRPC client speaking the discovery protocol, so the test can
//! NACK on purpose and time each push; the Bookinfo test runs real `skein-proxy` sidecars.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{Api, api::ListParams};
use skein_api::{
    istio::networking::{DestinationRule, EnvoyFilter, VirtualService},
    proxy::{
        ConfigDelta, ProxyConfig,
        wire::pb::{
            self, certificate_service_client::CertificateServiceClient, proxy_discovery_client::ProxyDiscoveryClient,
        },
    },
};
use skein_e2e::{Cluster, ControlPlane, eventually, http_get};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const BOOKINFO: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-productpage, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-reviews, namespace: default}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: productpage-v1, namespace: default, labels: {app: productpage, version: v1, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: bookinfo-productpage, containers: [{name: app, image: bookinfo/productpage}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: bookinfo-reviews, containers: [{name: app, image: bookinfo/reviews}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: bookinfo-reviews, containers: [{name: app, image: bookinfo/reviews}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v3, namespace: default, labels: {app: reviews, version: v3, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: bookinfo-reviews, containers: [{name: app, image: bookinfo/reviews}]}
"#;

const REVIEWS_DR: &str = r#"
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

fn reviews_vs(route: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: {route}\n"
    )
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

async fn channel(cp: &ControlPlane) -> Channel {
    let tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cp.ca.root_cert_pem)).domain_name("127.0.0.1");
    Endpoint::from_shared(format!("https://127.0.0.1:{}", cp.grpc_port))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect to the control plane over TLS")
}

/// One discovery stream, driven by the test.
struct TestProxy {
    tx: mpsc::Sender<pb::DiscoveryRequest>,
    responses: tonic::Streaming<pb::DiscoveryResponse>,
    /// The config applied last (what a delta applies to).
    running: Option<ProxyConfig>,
}

impl TestProxy {
    async fn connect(ch: &Channel, node_id: &str, running: &str) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let node = pb::Node { id: node_id.into(), ..Default::default() };
        tx.send(pb::DiscoveryRequest { node: Some(node), version_info: running.into(), ..Default::default() })
            .await
            .unwrap();
        let responses = ProxyDiscoveryClient::new(ch.clone())
            .max_decoding_message_size(64 << 20)
            .stream_config(ReceiverStream::new(rx))
            .await
            .expect("stream accepted")
            .into_inner();
        Self { tx, responses, running: None }
    }

    /// The config `r` gives this proxy: a whole config, or a delta applied to the running one
    /// (which must be the delta's base).
    fn apply(&mut self, r: &pb::DiscoveryResponse) -> ProxyConfig {
        use prost::Message as _;
        let mut cfg = if r.base_version.is_empty() {
            decode(r)
        } else {
            let base = self.running.as_ref().expect("a delta before any whole config");
            assert_eq!(base.version, r.base_version, "delta against a version this proxy does not run");
            let wire = pb::ConfigDelta::decode(r.config.clone()).expect("a ConfigDelta message");
            ConfigDelta::try_from(wire).expect("converts").apply_to(base)
        };
        cfg.version = r.version_info.clone();
        self.running = Some(cfg.clone());
        cfg
    }

    /// The next config, reassembled from its chunks.
    async fn next(&mut self, timeout: Duration) -> Option<pb::DiscoveryResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut parts = Vec::new();
        loop {
            let r = tokio::time::timeout_at(deadline, self.responses.message())
                .await
                .ok()?
                .expect("stream ok")
                .expect("open");
            parts.push(r.config.clone());
            if !r.more {
                return Some(pb::DiscoveryResponse { config: parts.concat().into(), ..r });
            }
        }
    }

    async fn ack(&self, r: &pb::DiscoveryResponse) {
        let req = pb::DiscoveryRequest {
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        self.tx.send(req).await.unwrap();
    }

    async fn nack(&self, r: &pb::DiscoveryResponse, running: &str, why: &str) {
        let req = pb::DiscoveryRequest {
            version_info: running.into(),
            response_nonce: r.nonce.clone(),
            error_detail: why.into(),
            ..Default::default()
        };
        self.tx.send(req).await.unwrap();
    }

    /// ACKs every push until one satisfies `want`; returns it and the time it took.
    async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&ProxyConfig) -> bool,
    ) -> (ProxyConfig, Duration) {
        let start = Instant::now();
        loop {
            let left = timeout
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("no config with {what} within {timeout:?}"));
            let r = self.next(left).await.unwrap_or_else(|| panic!("no config with {what} within {timeout:?}"));
            self.ack(&r).await;
            let cfg = self.apply(&r);
            if want(&cfg) {
                return (cfg, start.elapsed());
            }
        }
    }
}

/// The whole config a response carries (encoded bytes on the wire).
fn decode(r: &pb::DiscoveryResponse) -> ProxyConfig {
    use prost::Message as _;
    assert!(r.base_version.is_empty(), "a delta where a whole config was expected");
    ProxyConfig::try_from(pb::ProxyConfig::decode(r.config.clone()).expect("a ProxyConfig message")).expect("converts")
}

fn reviews_targets(cfg: &ProxyConfig) -> Vec<String> {
    cfg.virtual_hosts
        .iter()
        .find(|v| v.name == REVIEWS)
        .map(|v| v.routes.iter().flat_map(|r| r.route.iter().map(|d| d.cluster.clone())).collect())
        .unwrap_or_default()
}

fn endpoints(cfg: &ProxyConfig, cluster: &str) -> usize {
    cfg.clusters.iter().find(|c| c.name == cluster).map_or(0, |c| c.endpoints.len())
}

async fn pod_ip(cluster: &Cluster, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    eventually(&format!("{name} has an IP"), Duration::from_secs(60), || async {
        pods.get(name).await.ok()?.status?.pod_ip
    })
    .await
}

#[tokio::test]
async fn istio_changes_reach_a_connected_proxy_within_a_second_and_invalid_ones_keep_the_last_good_config() {
    let cluster = Cluster::start("cp").await.unwrap();
    let cp = ControlPlane::start(&cluster, "127.0.0.1", "").await.unwrap();
    cluster.apply(BOOKINFO);
    let ip = pod_ip(&cluster, "productpage-v1").await;
    let node = format!("sidecar~{ip}~productpage-v1.default~default.svc.cluster.local");
    let ch = channel(&cp).await;
    let mut proxy = TestProxy::connect(&ch, &node, "").await;

    // The registry arrives: reviews with its three ready pods, mesh mTLS (they have sidecars).
    let all = format!("outbound|9080||{REVIEWS}");
    let (cfg, _) = proxy.until("3 reviews endpoints", Duration::from_secs(60), |c| endpoints(c, &all) == 3).await;
    let c = cfg.clusters.iter().find(|c| c.name == all).unwrap();
    assert_eq!(
        c.tls.as_ref().map(|t| t.subject_alt_names.clone()),
        Some(vec!["spiffe://cluster.local/ns/default/sa/bookinfo-reviews".to_string()])
    );
    assert_eq!(cfg.listeners.len(), 2, "capture listeners 15001 and 15006");

    // A VirtualService applied with kubectl changes routing within a second.
    cluster.apply(REVIEWS_DR);
    cluster.apply(&reviews_vs("[{destination: {host: reviews, subset: v1}}]"));
    let applied = Instant::now();
    let v1 = format!("outbound|9080|v1|{REVIEWS}");
    proxy.until("reviews → v1", Duration::from_secs(5), |c| reviews_targets(c) == vec![v1.clone()]).await;
    let took = applied.elapsed();
    assert!(took < Duration::from_secs(1), "kubectl apply → proxy config took {took:?}");
    // The version this proxy runs (and ACKed); the control plane records the ACK a moment
    // later on a loaded machine, and what follows relies on it.
    let good_version = proxy.running.as_ref().map(|c| c.version.clone()).expect("a config applied");
    eventually("the ACK of the v1 config recorded", Duration::from_secs(5), || async {
        let body = http_get(cp.monitoring_port, "/debug/syncz").await.ok()?;
        let table: serde_json::Value = serde_json::from_str(&body).ok()?;
        (table[&node]["acked"].as_str()? == good_version).then_some(())
    })
    .await;

    // skeinctl reads what the proxy runs as istioctl would: synced, and routing reviews to v1.
    let cp_addr = format!("127.0.0.1:{}", cp.monitoring_port);
    let skeinctl = |args: &[&str]| {
        let out = cluster.skeinctl(&[&["--controlplane", cp_addr.as_str()], args].concat());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, status, err) = skeinctl(&["proxy-status"]);
    assert_eq!(code, Some(0), "{status}{err}");
    let row: Vec<&str> = status
        .lines()
        .find(|l| l.starts_with("productpage-v1.default "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // (The version may have moved past `good_version`: an endpoint change is pushed too.)
    assert_eq!(row[1..4], ["sidecar", "SYNCED", cp_addr.as_str()], "{status}");
    assert!(row[4].len() == 16 && row[4].chars().all(|c| c.is_ascii_hexdigit()), "{status}");
    let (code, routes, err) = skeinctl(&["proxy-config", "routes", "productpage-v1"]);
    assert_eq!(code, Some(0), "{err}");
    let reviews_routes: Vec<&str> = routes.lines().filter(|l| l.split_whitespace().next() == Some(REVIEWS)).collect();
    assert_eq!(reviews_routes.len(), 1, "{routes}");
    assert!(reviews_routes[0].ends_with(&v1), "{routes}");
    let (code, json, err) = skeinctl(&["proxy-config", "clusters", "productpage-v1.default", "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let clusters: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(clusters.as_array().unwrap().iter().any(|c| c["name"] == v1), "{json}");
    let (code, _, err) = skeinctl(&["proxy-config", "routes", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no config for nope.default") && err.contains("not connected"), "{err}");

    // An invalid edit: rejected on its status and by an Event, and no proxy config changes.
    cluster.apply(&reviews_vs(
        "[{destination: {host: reviews, subset: v1}, weight: 70}, {destination: {host: reviews, subset: v3}, weight: 50}]",
    ));
    let vss: Api<VirtualService> = Api::namespaced(cluster.client.clone(), "default");
    let message = eventually("VirtualService rejected on its status", Duration::from_secs(10), || async {
        let vs = vss.get("reviews").await.ok()?;
        let st = vs.status?;
        let c = st.conditions.iter().find(|c| c.type_ == "Accepted" && c.status == "False")?;
        (st.observed_generation == vs.metadata.generation).then(|| c.message.clone().unwrap_or_default())
    })
    .await;
    assert!(message.contains("spec.http[0].route: weights sum to 120, not 100"), "{message}");
    assert!(message.contains("the last accepted version (generation 1) stays in force"), "{message}");
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    eventually("Warning event Rejected", Duration::from_secs(10), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Rejected")
                    && e.involved_object.name.as_deref() == Some("reviews")
                    && e.message.as_deref().is_some_and(|m| m.contains("weights sum to 120"))
            })
            .then_some(())
    })
    .await;
    if let Some(r) = proxy.next(Duration::from_millis(1500)).await {
        let cfg = decode(&r);
        panic!("an invalid VirtualService changed the proxy config: {:?}", reviews_targets(&cfg));
    }
    assert_eq!(cp.metric("skein_rejected_resources{kind=\"VirtualService\"}").await, Some(1.0));

    // `skeinctl analyze` finds what the control plane rejected, with Istio's code, and exits 79
    // as istioctl does; the fix laid over the cluster as a file analyzes clean.
    let (code, report, err) = skeinctl(&["analyze", "-n", "default"]);
    assert_eq!(code, Some(79), "{report}{err}");
    assert!(
        report.contains(
            "Error [IST0106] (VirtualService default/reviews) spec.http[0].route: weights sum to 120, not 100"
        ),
        "{report}"
    );
    let fix = std::env::temp_dir().join(format!("skeinctl-fix-{}.yaml", std::process::id()));
    std::fs::write(
        &fix,
        reviews_vs("[{destination: {host: reviews, subset: v1}, weight: 50}, {destination: {host: reviews, subset: v3}, weight: 50}]"),
    )
    .unwrap();
    let (code, report, err) = skeinctl(&["analyze", "-n", "default", fix.to_str().unwrap()]);
    assert_eq!(
        (code, report.as_str()),
        (Some(0), "\u{2714} No validation issues found when analyzing namespace: default.\n"),
        "{err}"
    );
    let _ = std::fs::remove_file(&fix);

    // Fixing it is accepted; the status says so.
    cluster.apply(&reviews_vs(
        "[{destination: {host: reviews, subset: v1}, weight: 50}, {destination: {host: reviews, subset: v3}, weight: 50}]",
    ));
    let fifty = proxy.next(Duration::from_secs(5)).await.expect("the fixed VirtualService is pushed");
    let cfg = decode(&fifty);
    assert_eq!(reviews_targets(&cfg), vec![v1.clone(), format!("outbound|9080|v3|{REVIEWS}")]);

    // The proxy refuses it (NACK): reported, counted, and the proxy is known to run the old one.
    proxy.nack(&fifty, &good_version, "test: refused on purpose").await;
    eventually("NACK visible in /debug/syncz", Duration::from_secs(5), || async {
        let body = http_get(cp.monitoring_port, "/debug/syncz").await.ok()?;
        body.contains("test: refused on purpose").then_some(())
    })
    .await;
    assert_eq!(cp.metric("pilot_total_xds_rejects_total").await, Some(1.0));
    // skeinctl: NACKED with the reason, and the config shown is the one the proxy still runs.
    let (code, status, _) = skeinctl(&["proxy-status", "productpage-v1.default"]);
    assert_eq!(code, Some(1), "{status}");
    assert!(status.contains(" NACKED ") && status.contains("test: refused on purpose"), "{status}");
    let (code, routes, err) = skeinctl(&["proxy-config", "routes", "productpage-v1"]);
    let reviews_routes: Vec<&str> = routes.lines().filter(|l| l.split_whitespace().next() == Some(REVIEWS)).collect();
    assert!(reviews_routes.len() == 1 && reviews_routes[0].ends_with(&v1), "exit {code:?}: {routes}{err}");

    // A proxy that reconnects running the current config is not sent it again.
    let current = fifty.version_info.clone();
    let mut resumed = TestProxy::connect(&ch, &node, &current).await;
    assert!(resumed.next(Duration::from_millis(1500)).await.is_none(), "unchanged config re-sent on resume");
    // Not re-sent, yet known: the control plane counts the content it resumed with as what it
    // runs (a later push, which this test proxy leaves unanswered, may make it STALE).
    let (_, status, _) = skeinctl(&["proxy-status", "productpage-v1.default"]);
    assert!(!status.contains("NOT SENT") && status.contains("productpage-v1.default"), "{status}");
    let (code, routes, err) = skeinctl(&["proxy-config", "routes", "productpage-v1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(routes.contains(&format!("{v1} 50%")), "{routes}");
    assert_eq!(cp.metric("pilot_xds").await, Some(2.0));
    assert!(cp.metric("pilot_proxy_convergence_time_count").await.unwrap_or(0.0) >= 2.0);

    // A node id that is not Istio's shape is refused by name.
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::DiscoveryRequest {
        node: Some(pb::Node { id: "garbage".into(), ..Default::default() }),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = ProxyDiscoveryClient::new(ch.clone()).stream_config(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node.id"), "{}", err.message());

    // Steady state writes no status: new snapshots (a Service change that every proxy sees) judge
    // the same verdicts. First the fixed VirtualService's own verdict must be on its status, so
    // the counter read below already includes that write.
    eventually("the fixed VirtualService is Accepted on its status", Duration::from_secs(10), || async {
        let vs = vss.get("reviews").await.ok()?;
        let st = vs.status?;
        let accepted = st.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "True");
        (accepted && st.observed_generation == vs.metadata.generation).then_some(())
    })
    .await;
    let writes = cp.metric("skein_status_writes_total").await.unwrap();
    let snapshots = cp.metric("skein_snapshots_total").await.unwrap();
    cluster.apply("apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default}\nspec: {ports: [{name: http, port: 80}]}\n");
    eventually("a new snapshot", Duration::from_secs(5), || async {
        (cp.metric("skein_snapshots_total").await? > snapshots).then_some(())
    })
    .await;
    assert_eq!(cp.metric("skein_status_writes_total").await, Some(writes), "status rewritten without a verdict change");

    // An EnvoyFilter (Istio's local rate limit task, as written) applies — repositories that
    // hold one keep syncing — and says on its status that it does nothing here.
    cluster.apply(ENVOY_FILTER);
    let filters: Api<EnvoyFilter> = Api::namespaced(cluster.client.clone(), "default");
    let (reason, message) = eventually("EnvoyFilter marked unsupported", Duration::from_secs(10), || async {
        let f = filters.get("filter-local-ratelimit-svc").await.ok()?;
        let st = f.status?;
        let c = st.conditions.iter().find(|c| c.type_ == "Accepted" && c.status == "False")?;
        Some((c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
    })
    .await;
    assert_eq!(reason, "Unsupported");
    assert!(message.contains("skein-proxy is not Envoy"), "{message}");
    assert_eq!(cp.metric("skein_rejected_resources{kind=\"EnvoyFilter\"}").await, Some(1.0));

    // The deprecated `consecutiveErrors` is applied as Istio applies it and warned about with
    // Istio's words: on the status (still Accepted) and in a Warning Event.
    cluster.apply("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings-cb, namespace: default}\nspec: {host: ratings, trafficPolicy: {outlierDetection: {consecutiveErrors: 2}}}\n");
    let drs: Api<DestinationRule> = Api::namespaced(cluster.client.clone(), "default");
    let message = eventually("the DestinationRule's warning on its status", Duration::from_secs(10), || async {
        let st = drs.get("ratings-cb").await.ok()?.status?;
        st.conditions.iter().find(|c| c.type_ == "Accepted" && c.status == "True")?.message.clone()
    })
    .await;
    let warning = "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead";
    assert!(message.contains(warning), "{message}");
    eventually("Warning event ValidationWarning", Duration::from_secs(10), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("ValidationWarning")
                    && e.involved_object.name.as_deref() == Some("ratings-cb")
                    && e.message.as_deref().is_some_and(|m| m.contains(warning))
            })
            .then_some(())
    })
    .await;

    // Header edits (on the rule and on its destination) and a DestinationRule with a wildcard
    // host, applied with kubectl, are accepted by the apiserver's schema and the control plane
    // and reach a proxy's config; the exact host's own rule still wins over the wildcard.
    let vs = reviews_vs("[{destination: {host: reviews, subset: v1}, headers: {request: {remove: [cookie]}}}]");
    cluster.apply(&format!(
        "{vs}    headers: {{request: {{set: {{X-Mesh: skein}}}}, response: {{add: {{x-served-by: mesh}}}}}}\n"
    ));
    cluster.apply("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: default-wildcard, namespace: default}\nspec: {host: '*.default.svc.cluster.local', trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}}\n");
    let mut p3 = TestProxy::connect(&ch, &node, "").await;
    let other = "outbound|80||other.default.svc.cluster.local";
    let (cfg, _) = p3
        .until("header edits and the wildcard rule", Duration::from_secs(10), |c| {
            let edited =
                c.virtual_hosts.iter().find(|v| v.name == REVIEWS).is_some_and(|v| {
                    v.routes[0].headers.request.set.get("x-mesh").map(String::as_str) == Some("skein")
                });
            let pooled = c
                .clusters
                .iter()
                .any(|c| c.name == other && c.connection_pool.as_ref().and_then(|p| p.max_connections) == Some(7));
            edited && pooled
        })
        .await;
    let route = &cfg.virtual_hosts.iter().find(|v| v.name == REVIEWS).unwrap().routes[0];
    assert_eq!(route.headers.response.add.get("x-served-by").map(String::as_str), Some("mesh"));
    assert_eq!(route.route[0].headers.request.remove, ["cookie"]);
    let reviews = cfg.clusters.iter().find(|c| c.name == v1).unwrap();
    assert!(reviews.connection_pool.is_none(), "reviews' own rule wins over the wildcard: {reviews:?}");

    // Incremental updates: an endpoint change reaches a proxy as a delta of the changed
    // clusters only, against the version it acknowledged.
    let ip = pod_ip(&cluster, "reviews-v1").await;
    let mut p2 =
        TestProxy::connect(&ch, &format!("sidecar~{ip}~reviews-v1.default~default.svc.cluster.local"), "").await;
    let (whole, _) = p2.until("3 reviews endpoints", Duration::from_secs(10), |c| endpoints(c, &all) == 3).await;
    let deltas = cp.metric("pilot_xds_pushes_total{type=\"delta\"}").await.unwrap_or(0.0);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    pods.delete("reviews-v3", &Default::default()).await.unwrap();
    let r = p2.next(Duration::from_secs(5)).await.expect("the endpoint change is pushed");
    assert_eq!(r.base_version, whole.version, "a delta against the acknowledged config");
    let delta = {
        use prost::Message as _;
        ConfigDelta::try_from(pb::ConfigDelta::decode(r.config.clone()).unwrap()).unwrap()
    };
    let changed: Vec<&str> = delta.clusters.iter().map(|c| c.name.as_str()).collect();
    assert!(changed.iter().all(|n| n.ends_with(REVIEWS)), "only reviews clusters change: {changed:?}");
    assert!(changed.contains(&all.as_str()) && changed.contains(&format!("outbound|9080|v3|{REVIEWS}").as_str()));
    let cfg = p2.apply(&r);
    p2.ack(&r).await;
    assert_eq!(endpoints(&cfg, &all), 2);
    assert_eq!(endpoints(&cfg, &format!("outbound|9080|v3|{REVIEWS}")), 0);
    assert_eq!(cfg.virtual_hosts, whole.virtual_hosts);
    eventually("the delta counted", Duration::from_secs(5), || async {
        (cp.metric("pilot_xds_pushes_total{type=\"delta\"}").await? > deltas).then_some(())
    })
    .await;

    // A proxy that cannot apply a delta (NACK) gets the whole config, same version.
    pods.delete("reviews-v2", &Default::default()).await.unwrap();
    let r = p2.next(Duration::from_secs(5)).await.expect("the endpoint change is pushed");
    assert_eq!(r.base_version, cfg.version);
    p2.nack(&r, &cfg.version, "test: base not found").await;
    let again = p2.next(Duration::from_secs(5)).await.expect("the whole config follows a refused delta");
    assert!(again.base_version.is_empty(), "a whole config, not another delta");
    assert_eq!(again.version_info, r.version_info);
    assert_eq!(endpoints(&decode(&again), &all), 1);
}

#[tokio::test]
async fn the_ca_signs_only_for_the_service_account_the_token_proves() {
    let cluster = Cluster::start("ca").await.unwrap();
    let cp = ControlPlane::start(&cluster, "127.0.0.1", "trustDomain: cluster.local\n").await.unwrap();
    cluster.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bookinfo-reviews, namespace: default}\n");
    let token = |audience: Option<&str>| {
        let mut args = vec!["create", "token", "bookinfo-reviews", "-n", "default", "--duration", "10m"];
        if let Some(a) = audience {
            args.extend(["--audience", a]);
        }
        let out = cluster.kubectl(&args, None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let key = rcgen::KeyPair::generate().unwrap();
    // The CSR asks for someone else's identity; the CA must ignore that.
    let mut params = rcgen::CertificateParams::new(vec!["admin.example.com".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI("spiffe://cluster.local/ns/kube-system/sa/admin".try_into().unwrap()));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut client = CertificateServiceClient::new(channel(&cp).await);
    let request = |token: Option<&str>, csr: &str| {
        let mut r = tonic::Request::new(pb::CertificateRequest { csr: csr.to_string(), validity_duration: 3600 });
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };

    let chain =
        client.create_certificate(request(Some(&token(Some("istio-ca"))), &csr)).await.unwrap().into_inner().cert_chain;
    let (_, leaf) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
    let cert = leaf.parse_x509().unwrap();
    let sans: Vec<String> =
        cert.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|n| n.to_string()).collect();
    assert_eq!(sans, vec!["URI(spiffe://cluster.local/ns/default/sa/bookinfo-reviews)".to_string()]);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!((3600..=3660).contains(&life), "asked for 1 h, got {life} s");
    let (_, root) = x509_parser::pem::parse_x509_pem(cp.ca.root_cert_pem.as_bytes()).unwrap();
    assert!(
        cert.verify_signature(Some(root.parse_x509().unwrap().public_key())).is_ok(),
        "not signed by the mesh root"
    );

    let err = client.create_certificate(request(None, &csr)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client.create_certificate(request(Some(&token(None)), &csr)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "a token for the apiserver's audience: {}", err.message());
    let err = client.create_certificate(request(Some("not-a-token"), &csr)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client.create_certificate(request(Some(&token(Some("istio-ca"))), "garbage")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(cp.metric("citadel_server_success_cert_issuance_count_total").await, Some(1.0));

    // The discovery stream: a proxy that presents a token is authenticated; a bad one is refused.
    let ch = channel(&cp).await;
    let open = |token: String| {
        let ch = ch.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            let node =
                pb::Node { id: "sidecar~10.0.0.9~p.default~default.svc.cluster.local".into(), ..Default::default() };
            tx.send(pb::DiscoveryRequest { node: Some(node), ..Default::default() }).await.unwrap();
            let mut req = tonic::Request::new(ReceiverStream::new(rx));
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            let first = async {
                let mut stream = ProxyDiscoveryClient::new(ch).stream_config(req).await?.into_inner();
                stream.message().await
            };
            let result = tokio::time::timeout(Duration::from_secs(10), first).await.expect("an answer in time");
            drop(tx);
            result.map(|m| m.is_some()).map_err(|s| s.code())
        }
    };
    assert_eq!(open("not-a-token".into()).await, Err(tonic::Code::Unauthenticated), "a bad token opens no stream");
    assert_eq!(open(token(None)).await, Err(tonic::Code::Unauthenticated), "a token for another audience");
    assert_eq!(open(token(Some("istio-ca"))).await, Ok(true), "a valid token gets a config");
    assert!(!cp.log().contains("eyJ"), "a JWT reached the control plane log");
}

#[tokio::test]
async fn pods_in_opted_in_namespaces_get_a_sidecar_and_every_namespace_gets_the_root() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cluster = Cluster::start("inject").await.unwrap();
    let cp = ControlPlane::start(&cluster, "127.0.0.1", "").await.unwrap();
    // The operator registers the webhook by Service; here the apiserver calls it by URL (no
    // kube-proxy routes Service IPs on this machine). Selectors as the operator writes them.
    // The webhook configuration exactly as the operator renders it (all three opt-in selectors:
    // skein-injection, istio-injection, istio.io/rev), pointed at the test's control plane.
    let catalog = skein_operator::upgrade::catalog::Catalog::builtin().unwrap();
    let release = catalog.resolve(Some("1.0.2"), skein_api::Channel::STABLE).unwrap().clone();
    let spec: skein_api::MeshControlPlaneSpec = serde_yaml::from_str("{}").unwrap();
    let mcp = skein_api::MeshControlPlane::new("e2e", spec);
    let facts = skein_operator::render::Facts {
        release: &release,
        root_cert_pem: &cp.ca.root_cert_pem,
        revision: skein_operator::render::DEFAULT_REVISION,
        others: &[],
    };
    let mut webhook = skein_operator::render::webhook::injection_webhook(&mcp, facts).body;
    for hook in webhook["webhooks"].as_array_mut().unwrap() {
        hook["clientConfig"]["url"] = serde_json::json!(format!("https://127.0.0.1:{}/inject", cp.webhook_port));
        hook["clientConfig"].as_object_mut().unwrap().remove("service");
    }
    webhook["metadata"].as_object_mut().unwrap().remove("ownerReferences");
    cluster.apply(&webhook.to_string());
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio-injection: enabled}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: by-rev, labels: {istio.io/rev: default}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: other-rev, labels: {istio.io/rev: canary}}\n");
    let pod = |name: &str, ns: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}{extra}}}\nspec: {{containers: [{{name: app, image: app:1}}]}}\n"
        )
    };
    // The webhook may take a moment to be called by a fresh apiserver; retry creation.
    let mesh_pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "mesh");
    let injected = eventually("a pod in the mesh namespace gets a sidecar", Duration::from_secs(30), || async {
        let _ = cluster.kubectl(&["delete", "pod", "web", "-n", "mesh", "--ignore-not-found", "--wait=false"], None);
        let out = cluster.kubectl(&["create", "-f", "-"], Some(&pod("web", "mesh", "")));
        if !out.status.success() {
            return None;
        }
        let p = mesh_pods.get("web").await.ok()?;
        let spec = p.spec.clone()?;
        spec.containers.iter().any(|c| c.name == "skein-proxy").then_some(p)
    })
    .await;
    let spec = injected.spec.unwrap();
    let init_args = spec.init_containers.unwrap()[0].args.clone().unwrap_or_default();
    assert_eq!(init_args, ["init-iptables", "--redirect-dns-port", "15053"]);
    let sidecar = spec.containers.iter().find(|c| c.name == "skein-proxy").unwrap();
    assert_eq!(sidecar.image.as_deref(), Some("registry.skein.dev/skein-proxy:e2e"));
    assert_eq!(sidecar.security_context.as_ref().and_then(|s| s.run_as_user), Some(1337));
    let labels = injected.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("security.istio.io/tlsMode").map(String::as_str), Some("istio"));

    // A namespace that names this revision (istio.io/rev=default) is injected too.
    cluster.apply(&pod("web", "by-rev", ""));
    let p = Api::<Pod>::namespaced(cluster.client.clone(), "by-rev").get("web").await.unwrap();
    assert!(p.spec.unwrap().containers.iter().any(|c| c.name == "skein-proxy"), "istio.io/rev=default not injected");

    cluster.apply(&pod("opted-out", "mesh", ", annotations: {sidecar.istio.io/inject: 'false'}"));
    cluster.apply(&pod("web", "plain", ""));
    cluster.apply(&pod("web", "other-rev", ""));
    for (ns, name) in [("mesh", "opted-out"), ("plain", "web"), ("other-rev", "web")] {
        let p = Api::<Pod>::namespaced(cluster.client.clone(), ns).get(name).await.unwrap();
        let names: Vec<String> = p.spec.unwrap().containers.into_iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["app".to_string()], "{ns}/{name} must not be injected");
    }
    assert!(cp.metric("sidecar_injection_success_total").await.unwrap_or(0.0) >= 1.0);

    // Every namespace gets the mesh root the sidecars verify the control plane with.
    for ns in ["mesh", "plain", "default"] {
        let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), ns);
        let root = eventually(&format!("istio-ca-root-cert in {ns}"), Duration::from_secs(10), || async {
            cms.get("istio-ca-root-cert").await.ok()?.data?.get("root-cert.pem").cloned()
        })
        .await;
        assert_eq!(root, cp.ca.root_cert_pem);
    }
    // Deleted, it comes back.
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "plain");
    cms.delete("istio-ca-root-cert", &Default::default()).await.unwrap();
    eventually("istio-ca-root-cert restored", Duration::from_secs(10), || async {
        cms.get("istio-ca-root-cert").await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn one_replica_writes_status_and_another_takes_over_when_it_dies() {
    let cluster = Cluster::start("cpleader").await.unwrap();
    let lease = ["--lease-duration-seconds", "3"];
    let mut first = ControlPlane::start_with(&cluster, "127.0.0.1", "", &lease).await.unwrap();
    eventually("the first replica leads", Duration::from_secs(10), || async {
        (first.metric("skein_leader").await? == 1.0).then_some(())
    })
    .await;
    let second = first.replica(&cluster, &lease).await.unwrap();
    // Both serve; only the leader writes verdicts.
    cluster.apply(REVIEWS_DR);
    cluster.apply(&reviews_vs("[{destination: {host: reviews, subset: v9}}]"));
    let vss: Api<VirtualService> = Api::namespaced(cluster.client.clone(), "default");
    eventually("VirtualService rejected on its status", Duration::from_secs(10), || async {
        let st = vss.get("reviews").await.ok()?.status?;
        st.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "False").then_some(())
    })
    .await;
    eventually("the second replica has judged it too", Duration::from_secs(10), || async {
        (second.metric("skein_rejected_resources{kind=\"VirtualService\"}").await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(second.metric("skein_leader").await, Some(0.0));
    assert_eq!(second.metric("skein_status_writes_total").await, Some(0.0), "a follower wrote status");
    assert!(first.metric("skein_status_writes_total").await.unwrap() >= 1.0);

    // The leader dies: the other takes the Lease once it expires and writes from then on.
    first.kill();
    eventually("the second replica leads", Duration::from_secs(15), || async {
        (second.metric("skein_leader").await? == 1.0).then_some(())
    })
    .await;
    cluster.apply(&reviews_vs("[{destination: {host: reviews, subset: v1}}]"));
    eventually("the fix accepted on its status", Duration::from_secs(10), || async {
        let vs = vss.get("reviews").await.ok()?;
        let st = vs.status?;
        let ok = st.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "True");
        (ok && st.observed_generation == vs.metadata.generation).then_some(())
    })
    .await;
    assert!(second.metric("skein_status_writes_total").await.unwrap() >= 1.0);
}

/// Istio's local rate limit task (docs/tasks/policy-enforcement/rate-limit), as written.
const ENVOY_FILTER: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: default
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket:
                max_tokens: 4
                tokens_per_fill: 4
                fill_interval: 60s
"#;
