//! Istio's multi-cluster version-routing scenario on two real clusters on separate networks,
//! with no hand-written `.global` object and no shared CA: Bookinfo with reviews v1 in
//! cluster1, v2 and v3 in cluster2. The user only labels cluster2's `reviews` Service for
//! export, registers each cluster with the other (`skeinctl create-remote-secret`), applies the
//! DestinationRules for the local `reviews` host in each cluster and, in cluster1, the
//! VirtualService of the article: `end-user: jason` goes 50/50 to subsets v2 and v3 of
//! `reviews.default.global`, everyone else to local v1.
//!
//! Pods of one network cannot reach the other's pods or Services (the harness's networks), so
//! every answer from v2 or v3 crossed cluster2's east-west gateway on 15443; the gateway
//! forwards by SNI and never terminates the workloads' mTLS, so cluster2's reviews sees
//! cluster1's productpage as its caller, and an AuthorizationPolicy in cluster2 naming that
//! principal decides. Each cluster keeps its own CA: the operators federate the roots.
//!
//! Needs the images of `hack/images.sh` (`make test-e2e` builds them first).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use kube::Api;
use serde_json::Value;
use skein_api::MeshControlPlane;
use skein_e2e::{
    Cluster, Operator, eventually,
    real::{diagnostics, kubectl_ok},
    repo_root,
};

const NS: &str = "istio-system";

fn get(addr: SocketAddr, user: Option<&str>) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let user = user.map(|u| format!("end-user: {u}\r\n")).unwrap_or_default();
    write!(s, "GET / HTTP/1.1\r\nHost: productpage:9080\r\n{user}Connection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("not HTTP: {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Ok((status, serde_json::from_str(body).unwrap_or(Value::String(body.to_string()))))
}

/// Whether a TLS ClientHello with server name `sni` sent to `addr` gets any answer (a
/// ServerHello from the workload behind an east-west gateway) rather than a closed connection.
fn hello_answered(addr: SocketAddr, sni: &str) -> bool {
    let config =
        rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 5];
    s.write_all(&hello).is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
}

fn reviews(page: &Value) -> (&str, &str) {
    let r = &page["calls"]["reviews"]["body"];
    (r["version"].as_str().unwrap_or(""), r["xfcc"].as_str().unwrap_or(""))
}

/// A real cluster on `network` with Skein's operator (a host process: it reaches the other
/// cluster's apiserver at the address in the remote Secret, started with `extra` arguments)
/// and a mesh named `name`.
async fn member(name: &str, network: &str, east_west: bool, extra: &[&str]) -> (Cluster, Operator) {
    let cluster = Cluster::start_real_on_network(&format!("fb-{name}"), network).await.expect("cluster starts");
    cluster.install_crds().await.expect("CRDs");
    let kubeconfig = cluster.kubeconfig.clone();
    let args = [&["--image-registry", "skein.local/skein", "--gateway-lease-seconds", "6"][..], extra].concat();
    let operator = Operator::start_args(&cluster, "op", &kubeconfig, "default", &args).expect("operator starts");
    let gateways = if east_west { "components: {eastWestGateway: {enabled: true}}" } else { "components: {}" };
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: istio-system}}\n---\napiVersion: mesh.skein.dev/v1alpha1\nkind: MeshControlPlane\nmetadata: {{name: default}}\nspec:\n  tag: dev\n  multiCluster: {{clusterName: {name}, network: {network}}}\n  {gateways}\n"
    ));
    (cluster, operator)
}

async fn wait_ready(cluster: &Cluster, op: &Operator) {
    let api: Api<MeshControlPlane> = Api::all(cluster.client.clone());
    let start = Instant::now();
    loop {
        let mcp = api.get_opt("default").await.ok().flatten();
        let ready = mcp
            .as_ref()
            .and_then(|m| m.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "{}: mesh not Ready\n{}\noperator:\n{}",
            cluster.name,
            diagnostics(cluster, NS),
            op.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn root_count(cluster: &Cluster) -> usize {
    let pem = kubectl_ok(
        cluster,
        &["get", "configmap", "istio-ca-root-cert", "-n", "default", "-o", "jsonpath={.data.root-cert\\.pem}"],
    );
    pem.matches("BEGIN CERTIFICATE").count()
}

/// What the two sides of a cross-cluster request show: the client's sidecar, the east-west
/// gateway, the server's sidecar, and the client's proxy config for the `.global` host.
fn cross_diagnostics(c1: &Cluster, c2: &Cluster) -> String {
    let run = |c: &Cluster, args: &[&str]| {
        let out = c.kubectl(args, None);
        format!(
            "$ [{}] kubectl {}\n{}{}",
            c.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let pod = c1.kubectl(
        &["get", "pods", "-n", "default", "-l", "app=productpage", "-o", "jsonpath={.items[0].metadata.name}"],
        None,
    );
    let pod = String::from_utf8_lossy(&pod.stdout).into_owned();
    let cfg = c1.skeinctl(&["proxy-config", "all", &pod, "-n", "default"]);
    let gw = c2.kubectl(
        &["get", "pods", "-n", NS, "-l", "app=skein-eastwestgateway", "-o", "jsonpath={.items[0].metadata.name}"],
        None,
    );
    let gw = String::from_utf8_lossy(&gw.stdout).into_owned();
    let gw_cfg = c2.skeinctl(&["proxy-config", "all", &gw, "-n", NS]);
    [
        run(
            c1,
            &[
                "exec",
                "-n",
                "default",
                "deploy/productpage-v1",
                "-c",
                "skein-proxy",
                "--",
                "skein-proxy",
                "request",
                "GET",
                "/stats?filter=global",
            ],
        ),
        run(
            c2,
            &[
                "exec",
                "-n",
                NS,
                "deploy/skein-eastwestgateway",
                "--",
                "skein-proxy",
                "request",
                "GET",
                "/stats?filter=reviews",
            ],
        ),
        run(
            c2,
            &[
                "exec",
                "-n",
                "default",
                "deploy/reviews-v2",
                "-c",
                "skein-proxy",
                "--",
                "skein-proxy",
                "request",
                "GET",
                "/stats?filter=inbound",
            ],
        ),
        run(c2, &["get", "gateways", "-n", NS, "-o", "yaml"]),
        format!("{}{}", String::from_utf8_lossy(&gw_cfg.stdout), String::from_utf8_lossy(&gw_cfg.stderr)),
        run(c1, &["logs", "-n", "default", "-l", "app=productpage", "-c", "skein-proxy", "--tail=30"]),
        run(c2, &["logs", "-n", NS, "-l", "app=skein-eastwestgateway", "--tail=30"]),
        run(c2, &["logs", "-n", "default", "-l", "app=reviews", "-c", "skein-proxy", "--tail=30"]),
        run(c1, &["get", "serviceentries,destinationrules", "-A", "-o", "yaml"]),
        format!("{}{}", String::from_utf8_lossy(&cfg.stdout), String::from_utf8_lossy(&cfg.stderr)),
        diagnostics(c1, NS),
        diagnostics(c2, NS),
    ]
    .join("\n")
}

/// The address of the first pod matching `selector` in `default`, port 9080.
fn addr_of_pod(c: &Cluster, selector: &str) -> SocketAddr {
    // A terminating pod keeps serving through its sidecar's termination drain: never pick it.
    let out = kubectl_ok(
        c,
        &["get", "pods", "-n", "default", "-l", selector, "--field-selector=status.phase=Running", "-o", "json"],
    );
    let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{selector}: pod list: {e}"));
    let ip = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["metadata"]["deletionTimestamp"].is_null())
        .and_then(|p| p["status"]["podIP"].as_str())
        .unwrap_or_default()
        .to_string();
    format!("{ip}:9080").parse().unwrap_or_else(|e| panic!("{selector}: pod address {ip:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn reviews_v2_and_v3_of_another_network_are_reached_through_its_east_west_gateway() {
    // cluster2 splits its east-west Gateway at one host per object (4096 by default): its two
    // exports are served from two Gateways (by their hashes: reviews from the first, ratings
    // from `skein-eastwestgateway-1`), which its control plane merges on 15443.
    let ((c1, op1), (c2, op2)) = tokio::join!(
        member("cluster1", "east", false, &[]),
        member("cluster2", "west", true, &["--east-west-shard-hosts", "1"])
    );
    tokio::join!(wait_ready(&c1, &op1), wait_ready(&c2, &op2));

    // Each cluster registers the other, as the README's steps say.
    for (from, into) in [(&c2, &c1), (&c1, &c2)] {
        let out = from.skeinctl(&["create-remote-secret"]);
        assert!(out.status.success(), "create-remote-secret: {}", String::from_utf8_lossy(&out.stderr));
        let applied = into.kubectl(&["apply", "-f", "-"], Some(&String::from_utf8_lossy(&out.stdout)));
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    }
    // Trust: both clusters' bundles hold both roots before any workload starts.
    for c in [&c1, &c2] {
        eventually(&format!("{}: trust bundle with the peer's root", c.name), Duration::from_secs(60), || async {
            (root_count(c) == 2).then_some(())
        })
        .await;
    }
    // cluster1 reports cluster2's own root (the one its control plane publishes), by SHA-256.
    let api: Api<MeshControlPlane> = Api::all(c1.client.clone());
    let fingerprint = eventually("cluster1 reports cluster2's trust bundle", Duration::from_secs(60), || async {
        let mcp = api.get("default").await.ok()?;
        mcp.status?.remote_clusters.into_iter().find(|r| r.name == "cluster2")?.trust_bundle_fingerprint
    })
    .await;
    let c2_root =
        kubectl_ok(&c2, &["get", "configmap", "skein-mesh-root", "-n", NS, "-o", "jsonpath={.data.root-cert\\.pem}"]);
    assert_eq!(fingerprint, skein_operator::federation::trust::fingerprint(&c2_root));
    let lb = eventually("cluster2's east-west gateway address", Duration::from_secs(60), || async {
        let ip = kubectl_ok(
            &c2,
            &[
                "get",
                "service",
                "skein-eastwestgateway",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
        );
        (!ip.is_empty()).then_some(ip)
    })
    .await;

    // Bookinfo: reviews v1, productpage and details in cluster1 (reviews v1 calls no ratings),
    // reviews v2 and v3 and ratings in cluster2.
    let bookinfo = repo_root().join("config/samples/bookinfo/bookinfo.yaml").to_string_lossy().into_owned();
    for (c, drop) in
        [(&c1, ["reviews-v2", "reviews-v3", "ratings-v1"]), (&c2, ["productpage-v1", "details-v1", "reviews-v1"])]
    {
        kubectl_ok(c, &["label", "namespace", "default", "istio-injection=enabled"]);
        kubectl_ok(c, &["apply", "-n", "default", "-f", &bookinfo]);
        for d in drop {
            kubectl_ok(c, &["delete", "deployment", d, "-n", "default"]);
        }
    }
    kubectl_ok(&c2, &["label", "service", "reviews", "ratings", "-n", "default", "mesh.skein.dev/export=true"]);
    // A client in cluster1 that calls `http://reviews.default.global:9080` itself.
    let client = repo_root().join("config/samples/federation/global-client.yaml");
    kubectl_ok(&c1, &["apply", "-f", &client.to_string_lossy()]);
    if std::env::var_os("SKEIN_DEBUG_FEDERATION").is_some() {
        let debug = r#"{"spec":{"template":{"metadata":{"annotations":{"proxy.istio.io/config":"proxyMetadata: {RUST_LOG: debug}"}}}}}"#;
        kubectl_ok(&c1, &["patch", "deployment", "productpage-v1", "-n", "default", "-p", debug]);
        kubectl_ok(&c2, &["patch", "deployment", "reviews-v2", "-n", "default", "-p", debug]);
    }
    // The user's DestinationRules for the local reviews host, and cluster1's VirtualService.
    let sample = |f: &str| repo_root().join("config/samples/federation").join(f).to_string_lossy().into_owned();
    kubectl_ok(&c2, &["apply", "-f", &sample("cluster2-reviews.yaml")]);
    kubectl_ok(&c1, &["apply", "-f", &sample("cluster1-reviews.yaml")]);
    for c in [&c1, &c2] {
        let out = c.kubectl(&["rollout", "status", "deployment", "-n", "default", "--timeout=180s"], None);
        assert!(out.status.success(), "{}: Bookinfo did not roll out\n{}", c.name, diagnostics(c, NS));
    }
    // What the operator generated in cluster1: the endpoint is cluster2's gateway on 15443.
    let se = kubectl_ok(&c1, &["get", "serviceentry", "reviews.default.global", "-n", NS, "-o", "json"]);
    let se: Value = serde_json::from_str(&se).unwrap();
    assert_eq!(se["spec"]["endpoints"][0]["address"], Value::String(lb.clone()), "{se}");
    assert_eq!(se["spec"]["endpoints"][0]["ports"]["http"], 15443, "{se}");

    let productpage = kubectl_ok(
        &c1,
        &["get", "pods", "-n", "default", "-l", "app=productpage", "-o", "jsonpath={.items[0].status.podIP}"],
    );
    let addr: SocketAddr = format!("{productpage}:9080").parse().unwrap();

    // Everyone else: local v1, every time.
    let start = Instant::now();
    let mut run = 0;
    while run < 10 {
        match get(addr, None) {
            Ok((200, page)) if reviews(&page).0 == "v1" => run += 1,
            other => {
                run = 0;
                assert!(start.elapsed() < Duration::from_secs(60), "local v1 never answered steadily: {other:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    // jason: v2 and v3 of cluster2, about half each, with productpage's identity arriving there.
    let start = Instant::now();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut last = String::new();
    while seen.values().sum::<u32>() < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "jason's requests did not reach cluster2 (seen {seen:?}); last: {last}\n{}",
            cross_diagnostics(&c1, &c2)
        );
        match get(addr, Some("jason")) {
            Ok((200, page)) if matches!(reviews(&page).0, "v2" | "v3") => {
                let (version, xfcc) = reviews(&page);
                assert!(
                    xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
                    "cluster2's reviews sees cluster1's productpage as its caller: {xfcc}"
                );
                assert!(!xfcc.contains("eastwestgateway"), "the gateway does not terminate mTLS: {xfcc}");
                *seen.entry(version.to_string()).or_default() += 1;
            }
            other => {
                last = format!("{other:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    for v in ["v2", "v3"] {
        let n = seen.get(v).copied().unwrap_or(0);
        assert!((8..=32).contains(&n), "50/50 split: {v} answered {n} of 40 ({seen:?})");
    }

    // A workload that names `reviews.default.global` itself: the name resolves in the pod with
    // no CoreDNS edit (the cluster's DNS knows no `.global` name; the pod's queries go to its
    // sidecar's DNS proxy, which answers the ServiceEntry's virtual IP). cluster1 runs reviews
    // too (v1), so the nearest answers: local v1 first, cluster2 (v2, v3) only as failover.
    // Killing cluster1's reviews moves the traffic to cluster2 within seconds, and bringing it
    // back returns it (the admiral#134 case: failover that happens, and ends).
    let client = addr_of_pod(&c1, "app=global-client");
    let versions_after = |want: &'static [&'static str], what: &'static str| {
        let (c1, c2) = (&c1, &c2);
        async move {
            let start = Instant::now();
            let mut run = 0;
            let mut last = String::new();
            while run < 5 {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{what}: reviews.default.global from the client pod never answered from {want:?}; last: {last}\n{}",
                    cross_diagnostics(c1, c2)
                );
                match get(client, None) {
                    Ok((200, page))
                        if want.contains(
                            &page["calls"]["reviews.default.global"]["body"]["version"].as_str().unwrap_or(""),
                        ) =>
                    {
                        run += 1
                    }
                    other => {
                        run = 0;
                        last = format!("{other:?}");
                        std::thread::sleep(Duration::from_millis(300));
                    }
                }
            }
            start.elapsed()
        }
    };
    versions_after(&["v1"], "local first").await;
    kubectl_ok(&c1, &["scale", "deployment", "reviews-v1", "-n", "default", "--replicas=0"]);
    let failover = versions_after(&["v2", "v3"], "failover to cluster2").await;
    kubectl_ok(&c1, &["scale", "deployment", "reviews-v1", "-n", "default", "--replicas=1"]);
    let back = versions_after(&["v1"], "return to the local service").await;
    eprintln!("failover to cluster2 in {failover:?}, back to local in {back:?}");
    // A local backend that is still listed but failing (503s): the generated DestinationRule's
    // outlier detection ejects it and the peer takes over (admiral#134's failure mode).
    // The pod just scaled back up: the old one may still be listed while it terminates, so the
    // address is looked up again until the new pod's app answers the toggle.
    let set_fault = |status: u16| {
        let start = Instant::now();
        loop {
            let v1 = addr_of_pod(&c1, "app=reviews,version=v1");
            let answer = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect_timeout(&v1, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET /fault?status={status} HTTP/1.1\r\nHost: reviews:9080\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })();
            match answer {
                Ok(out) if out.starts_with("HTTP/1.1 200") => return,
                other => {
                    assert!(start.elapsed() < Duration::from_secs(60), "fault toggle on reviews-v1 ({v1}): {other:?}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    };
    set_fault(503);
    let ejected = versions_after(&["v2", "v3"], "failover from a failing local backend").await;
    eprintln!("failover from a failing local backend in {ejected:?}");
    set_fault(0);

    // ratings: cluster2 only, no subsets (no user rule for it anywhere), so no DestinationRule
    // of its own; the generated `*.global` rule (ISTIO_MUTUAL) is what makes the client's
    // sidecar speak mesh mTLS to cluster2's gateway, and cluster2's ratings sees the caller.
    let rules = kubectl_ok(&c1, &["get", "destinationrules", "-n", NS, "-o", "jsonpath={.items[*].metadata.name}"]);
    let rules: Vec<&str> = rules.split_whitespace().collect();
    assert!(rules.contains(&"skein-federation-global"), "{rules:?}");
    assert!(!rules.contains(&"ratings.default.global"), "{rules:?}");
    let start = Instant::now();
    loop {
        let page = get(client, None);
        let call = page.as_ref().ok().map(|(_, p)| p["calls"]["ratings.default.global"].clone());
        if let Some(call) = call.as_ref().filter(|c| c["status"] == 200) {
            assert_eq!(call["body"]["service"], "ratings", "{call}");
            let xfcc = call["body"]["xfcc"].as_str().unwrap_or("");
            assert!(xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/default"), "caller identity: {xfcc}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ratings.default.global from the client pod: {page:?}\n{}",
            cross_diagnostics(&c1, &c2)
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The east-west gateway opens only what cluster2 exports: reviews answers a ClientHello,
    // details (a Service there, not exported) gets the connection closed.
    let ew: SocketAddr = format!("{lb}:15443").parse().unwrap();
    assert!(hello_answered(ew, "outbound_.9080_.v2_.reviews.default.global"), "the exported service is served");
    assert!(!hello_answered(ew, "outbound_.9080_._.details.default.svc.cluster.local"), "details is not exported");
    assert!(!hello_answered(ew, "outbound_.9080_._.details.default.global"), "details is not exported");
    let shards = || {
        let out = kubectl_ok(
            &c2,
            &[
                "get",
                "gateways.networking.istio.io",
                "-n",
                NS,
                "-l",
                "mesh.skein.dev/federation",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name}={.spec.servers[0].hosts}{"\n"}{end}"#,
            ],
        );
        out.lines().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(
        shards(),
        [
            r#"skein-eastwestgateway=["default/reviews.default.svc.cluster.local"]"#,
            r#"skein-eastwestgateway-1=["default/ratings.default.svc.cluster.local"]"#
        ]
    );
    assert!(hello_answered(ew, "outbound_.9080_._.ratings.default.global"), "the second shard's host is served");
    // ratings no longer exported: its shard goes, and the gateway stops serving it.
    kubectl_ok(&c2, &["label", "service", "ratings", "-n", "default", "mesh.skein.dev/export-"]);
    eventually("cluster2's second east-west Gateway removed", Duration::from_secs(30), || async {
        (shards().len() == 1).then_some(())
    })
    .await;
    assert_eq!(shards(), [r#"skein-eastwestgateway=["default/reviews.default.svc.cluster.local"]"#]);
    eventually("ratings no longer served by the east-west gateway", Duration::from_secs(30), || async {
        (!hello_answered(ew, "outbound_.9080_._.ratings.default.global")).then_some(())
    })
    .await;
    assert!(hello_answered(ew, "outbound_.9080_.v2_.reviews.default.global"), "reviews still served");

    // cluster2's sidecar enforces AuthorizationPolicies on cluster1's identity: denied when the
    // policy names another principal, allowed again when it names productpage.
    let policy = |principal: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: ['cluster.local/ns/default/sa/{principal}']}}\n"
        )
    };
    for (principal, want) in [("bookinfo-ratings", 403), ("bookinfo-productpage", 200)] {
        c2.apply(&policy(principal));
        let start = Instant::now();
        let mut run = 0;
        while run < 5 {
            let status = get(addr, Some("jason")).ok().and_then(|(_, p)| p["calls"]["reviews"]["status"].as_u64());
            if status == Some(want) {
                run += 1;
                continue;
            }
            run = 0;
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "principal {principal}: reviews answered {status:?}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Peer gateway health: cluster2's east-west gateway stops (its operator first, which would
    // restore it). After the lease, cluster1 withdraws cluster2's endpoints everywhere (the
    // host and its virtual IP stay, so names keep resolving and a local twin keeps serving)
    // and says why in status; they come back when the gateway answers again.
    let vip = se["spec"]["addresses"][0].clone();
    drop(op2);
    kubectl_ok(&c2, &["scale", "deployment", "skein-eastwestgateway", "-n", NS, "--replicas=0"]);
    let imported = || {
        let se = kubectl_ok(&c1, &["get", "serviceentry", "reviews.default.global", "-n", NS, "-o", "json"]);
        serde_json::from_str::<Value>(&se).unwrap()
    };
    eventually("cluster1 withdraws cluster2's dead gateway", Duration::from_secs(60), || async {
        let se = imported();
        (se["spec"]["endpoints"] == serde_json::json!([]) && se["spec"]["addresses"][0] == vip).then_some(())
    })
    .await;
    let reason = eventually("cluster1 reports the dead gateway", Duration::from_secs(30), || async {
        let mcp = api.get("default").await.ok()?;
        let peer = mcp.status?.remote_clusters.into_iter().find(|r| r.name == "cluster2")?;
        let synced = peer.conditions.into_iter().find(|c| c.type_ == "Synced")?;
        (synced.reason == "GatewayUnhealthy").then_some(synced.message)
    })
    .await;
    assert!(reason.contains(&lb), "the message names the gateway: {reason}");
    kubectl_ok(&c2, &["scale", "deployment", "skein-eastwestgateway", "-n", NS, "--replicas=1"]);
    eventually("cluster2's gateway back in cluster1's entry", Duration::from_secs(90), || async {
        let se = imported();
        (se["spec"]["endpoints"][0]["address"] == Value::String(lb.clone())).then_some(())
    })
    .await;
    drop(op1);
}
