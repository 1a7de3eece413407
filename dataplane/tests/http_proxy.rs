//! The HTTP request path end to end, in process: real sockets on loopback, small upstream
//! servers that report who they are, the proxy between them and a client.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use skein_api::proxy::PeerAuthMode;
use skein_proxy::{
    http::{Limits, Proxy},
    listener,
    metrics::Metrics,
    store::Store,
};
use tokio::net::TcpListener;

/// What an upstream saw: (host header, path and query, end-user header).
type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

struct Upstream {
    addr: SocketAddr,
    seen: Seen,
}

/// An upstream answering `name`; the first `fail_first` requests get 503.
async fn upstream(name: &'static str, fail_first: usize) -> Upstream {
    upstream_with(name, fail_first, Duration::ZERO, StatusCode::SERVICE_UNAVAILABLE).await
}

/// An upstream answering `name` after `delay`; the first `fail_first` requests get `fail_status`.
async fn upstream_with(name: &'static str, fail_first: usize, delay: Duration, fail_status: StatusCode) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (s, count) = (s.clone(), count.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let host = req.headers().get("host").map(|h| h.to_str().unwrap().to_string()).unwrap_or_default();
                    let user = req.headers().get("end-user").map(|h| h.to_str().unwrap().to_string());
                    s.lock().unwrap().push((host, req.uri().to_string(), user));
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = if n < fail_first { fail_status } else { StatusCode::OK };
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut r = Response::new(Full::new(Bytes::from(name)));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Upstream { addr, seen }
}

struct Harness {
    addr: SocketAddr,
    store: Store,
    metrics: Metrics,
    client: Client<HttpConnector, Full<Bytes>>,
}

async fn proxy(yaml: &str) -> Harness {
    proxy_with(yaml, Limits::default()).await
}

/// A proxy with one Envoy worker: every connection shares its claim on a cluster's
/// connections. (With two, a request on a second connection may open a connection of its own
/// at `maxConnections`, as Envoy's per-worker pools do; tests of queueing behind the limit
/// must not depend on which worker a connection lands on.)
async fn proxy_one_worker(yaml: &str) -> Harness {
    proxy_with(yaml, Limits { workers: 1, ..Limits::default() }).await
}

async fn proxy_with(yaml: &str, limits: Limits) -> Harness {
    let store = Store::new(serde_yaml::from_str(yaml).expect("test config parses")).expect("test config is valid");
    let metrics = Metrics::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener::serve_http(
        listener,
        Proxy::with_limits(store.clone(), metrics.clone(), limits),
        PeerAuthMode::Disable,
        "test".into(),
    ));
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    Harness { addr, store, metrics, client }
}

impl Harness {
    async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String, hyper::HeaderMap) {
        let mut req = Request::get(format!("http://{}{path}", self.addr)).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.client.request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (parts.status, body, parts.headers)
    }
}

fn reviews_config(v1: SocketAddr, v2: SocketAddr, v3: SocketAddr, routes: &str) -> String {
    format!(
        r#"
outboundTrafficPolicy: REGISTRY_ONLY
virtualHosts:
  - name: reviews
    domains: [reviews, reviews.default.svc.cluster.local]
    routes:
{routes}
clusters:
  - {{name: "outbound|9080|v1|reviews.default.svc.cluster.local", endpoints: ["{v1}"]}}
  - {{name: "outbound|9080|v2|reviews.default.svc.cluster.local", endpoints: ["{v2}"]}}
  - {{name: "outbound|9080|v3|reviews.default.svc.cluster.local", endpoints: ["{v3}"]}}
"#
    )
}

const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";
const V3: &str = "outbound|9080|v3|reviews.default.svc.cluster.local";

#[tokio::test]
async fn end_user_jason_goes_to_v2_and_everyone_else_to_v1() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!(
        "      - {{match: [{{headers: {{end-user: {{exact: jason}}}}}}], route: [{{cluster: \"{V2}\"}}]}}\n      - {{route: [{{cluster: \"{V1}\"}}]}}\n"
    );
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    assert_eq!(h.get("reviews:9080", "/reviews/0", &[("end-user", "jason")]).await.1, "v2");
    assert_eq!(h.get("reviews:9080", "/reviews/0", &[("end-user", "alice")]).await.1, "v1");
    assert_eq!(h.get("reviews.default.svc.cluster.local", "/", &[]).await.1, "v1");
    // The end-user header reaches the upstream unchanged.
    assert_eq!(v2.seen.lock().unwrap()[0].2.as_deref(), Some("jason"));
}

#[tokio::test]
async fn weighted_destinations_land_within_statistical_bounds() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!("      - {{route: [{{cluster: \"{V1}\", weight: 80}}, {{cluster: \"{V3}\", weight: 20}}]}}\n");
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    let n = 400;
    let mut v1_count = 0;
    for _ in 0..n {
        let (status, body, _) = h.get("reviews", "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body == "v1" || body == "v3", "{body}");
        v1_count += usize::from(body == "v1");
    }
    // Binomial(400, 0.8): mean 320, sd = 8; ±5 sd keeps a false failure below one in a million,
    // and a picker blind to weights (mean 200) or to their order (mean 80) fails by far.
    assert!((280..=360).contains(&v1_count), "v1 got {v1_count} of {n}");
    assert!(v2.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_two_second_delay_under_a_half_second_timeout_answers_504_after_half_a_second() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!(
        "      - {{route: [{{cluster: \"{V1}\"}}], timeout: 0.5s, fault: {{delay: {{fixedDelay: 2s, percentage: 100}}}}}}\n"
    );
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    let start = Instant::now();
    let (status, body, _) = h.get("reviews", "/", &[]).await;
    let took = start.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1500), "took {took:?}");
    assert!(v1.seen.lock().unwrap().is_empty(), "request never reached the upstream");
}

#[tokio::test]
async fn delay_without_timeout_delays_then_forwards() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}], fault: {{delay: {{fixedDelay: 300ms}}}}}}\n");
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    let start = Instant::now();
    assert_eq!(h.get("reviews", "/", &[]).await.1, "v1");
    assert!(start.elapsed() >= Duration::from_millis(290));
}

#[tokio::test]
async fn abort_applies_to_jason_only() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!(
        "      - {{match: [{{headers: {{end-user: {{exact: jason}}}}}}], route: [{{cluster: \"{V1}\"}}], fault: {{abort: {{httpStatus: 500, percentage: 100}}}}}}\n      - {{route: [{{cluster: \"{V1}\"}}]}}\n"
    );
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    let (status, body, _) = h.get("reviews", "/", &[("end-user", "jason")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "fault filter abort\n"));
    assert_eq!(h.get("reviews", "/", &[("end-user", "bob")]).await.0, StatusCode::OK);
    assert_eq!(v1.seen.lock().unwrap().len(), 1, "the aborted request never reached the upstream");
    let metrics = h.metrics.render();
    assert!(metrics.contains("response_code=\"500\",response_flags=\"FI\""), "{metrics}");
}

#[tokio::test]
async fn mirror_receives_a_shadow_copy_while_the_caller_sees_only_the_primary() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}], mirror: \"{V2}\", mirrorPercentage: 100}}\n");
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    for _ in 0..5 {
        let (status, body, _) = h.get("reviews:9080", "/r?x=1", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while v2.seen.lock().unwrap().len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shadow = v2.seen.lock().unwrap().clone();
    assert_eq!(shadow.len(), 5, "every request mirrored");
    assert!(shadow.iter().all(|(host, path, _)| host == "reviews-shadow:9080" && path == "/r?x=1"), "{shadow:?}");
    assert!(v1.seen.lock().unwrap().iter().all(|(host, _, _)| host == "reviews:9080"));
}

#[tokio::test]
async fn registry_only_refuses_unknown_hosts_with_502_and_allow_any_passes_them_through() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let outside = upstream("outside", 0).await;
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}]}}\n");
    let cfg = reviews_config(v1.addr, v2.addr, v3.addr, &routes);
    let h = proxy(&cfg).await;
    let (status, _, _) = h.get(&outside.addr.to_string(), "/", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(outside.seen.lock().unwrap().is_empty());
    assert!(h.metrics.render().contains("destination_service=\"BlackHoleCluster\""));

    h.store.apply(serde_yaml::from_str(&cfg.replace("REGISTRY_ONLY", "ALLOW_ANY")).unwrap()).unwrap();
    let (status, body, _) = h.get(&outside.addr.to_string(), "/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "outside"));
    assert_eq!(h.get("reviews", "/", &[]).await.1, "v1", "registered hosts still routed");
}

#[tokio::test]
async fn registry_only_passes_registered_hosts_without_endpoints_through() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let outside = upstream("outside", 0).await;
    // A ServiceEntry with resolution NONE for 127.0.0.1: registered, no endpoints of its own.
    let routes = format!(
        "      - {{route: [{{cluster: \"{V1}\"}}]}}\n  - name: external\n    domains: ['127.0.0.1']\n    routes: [{{route: [{{cluster: PassthroughCluster}}]}}]\n"
    );
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    let (status, body, _) = h.get(&outside.addr.to_string(), "/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "outside"), "registered: passes under REGISTRY_ONLY");
    let (status, _, _) = h.get(&format!("localhost:{}", outside.addr.port()), "/", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "another name for the same address is not registered");
    assert_eq!(outside.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn rewrite_replaces_prefix_and_authority_and_redirect_answers_301() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!(
        "      - {{match: [{{uri: {{prefix: /old/}}}}], redirect: {{uri: /new, authority: newhost}}}}\n      - {{match: [{{uri: {{prefix: /api/}}}}], rewrite: {{uri: /v2/, authority: ratings}}, route: [{{cluster: \"{V1}\"}}]}}\n"
    );
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    let (status, body, _) = h.get("reviews", "/api/items?page=2", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    assert_eq!(v1.seen.lock().unwrap()[0].0, "ratings");
    assert_eq!(v1.seen.lock().unwrap()[0].1, "/v2/items?page=2");
    let (status, _, headers) = h.get("reviews", "/old/thing", &[]).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "http://newhost/new");
    assert_eq!(h.get("reviews", "/other", &[]).await.0, StatusCode::NOT_FOUND, "no rule matches");
}

#[tokio::test]
async fn retries_recover_from_503s_and_stop_at_the_attempt_limit() {
    let flaky = upstream("flaky", 2).await;
    let (v2, v3) = (upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}], retries: {{attempts: 2, retryOn: \"5xx\"}}}}\n");
    let h = proxy(&reviews_config(flaky.addr, v2.addr, v3.addr, &routes)).await;
    let (status, body, _) = h.get("reviews", "/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "flaky"), "third try succeeds");
    assert_eq!(flaky.seen.lock().unwrap().len(), 3);

    let always = upstream("always", 1000).await;
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}], retries: {{attempts: 1, retryOn: \"5xx\"}}}}\n");
    let h = proxy(&reviews_config(always.addr, v2.addr, v3.addr, &routes)).await;
    assert_eq!(h.get("reviews", "/", &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(always.seen.lock().unwrap().len(), 2, "one try plus one retry");
}

#[tokio::test]
async fn connect_failure_answers_503_and_counts_the_flag() {
    // A port nothing listens on: bind, note it, close.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (v2, v3) = (upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}]}}\n");
    let h = proxy(&reviews_config(dead, v2.addr, v3.addr, &routes)).await;
    assert_eq!(h.get("reviews", "/", &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.metrics.render().contains("response_flags=\"UF\""));
}

#[tokio::test]
async fn requests_are_counted_under_istio_metric_names() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}]}}\n");
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    for _ in 0..3 {
        h.get("reviews", "/", &[]).await;
    }
    let m = h.metrics.render();
    let line = m.lines().find(|l| l.starts_with("istio_requests_total{")).unwrap_or_else(|| panic!("{m}"));
    assert!(line.contains("destination_service=\"reviews.default.svc.cluster.local\""), "{line}");
    assert!(line.contains("destination_service_name=\"reviews\""), "{line}");
    assert!(line.contains("response_code=\"200\""), "{line}");
    assert!(line.ends_with(" 3"), "{line}");
    assert!(m.contains("istio_request_duration_milliseconds_count{"), "{m}");
}

#[tokio::test]
async fn malformed_requests_get_4xx_not_a_crash() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}]}}\n");
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    for raw in [
        "GARBAGE\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\n\r\n".to_string(), // no Host
        format!("GET / HTTP/1.1\r\nHost: reviews\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024)),
        format!(
            "GET / HTTP/1.1\r\nHost: reviews\r\n{}\r\n",
            (0..150).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        let request = &raw[..raw.len().min(40)];
        assert!(head.starts_with("HTTP/1.1 4"), "{request:?} answered {head:?}");
    }
    // Still serving.
    assert_eq!(h.get("reviews", "/", &[]).await.1, "v1");
}

#[tokio::test]
async fn max_connections_one_with_one_pending_request_overflows_with_503() {
    let slow = upstream_with("slow", 0, Duration::from_millis(400), StatusCode::OK).await;
    let (v2, v3) = (upstream("v2", 0).await, upstream("v3", 0).await);
    let routes = format!("      - {{route: [{{cluster: \"{V1}\"}}]}}\n");
    let cfg = reviews_config(slow.addr, v2.addr, v3.addr, &routes).replace(
        &format!("endpoints: [\"{}\"]}}", slow.addr),
        &format!("endpoints: [\"{}\"], connectionPool: {{maxConnections: 1, http1MaxPendingRequests: 1}}}}", slow.addr),
    );
    let h = Arc::new(proxy_one_worker(&cfg).await);
    // One request first leaves an open connection in the pool: the next request takes it at
    // once. Without it the first request would be pending while its connection is set up
    // (Envoy's rule), and a second one arriving meanwhile would overflow as well.
    assert_eq!(h.get("reviews", "/", &[]).await.0, StatusCode::OK);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.get("reviews", "/", &[]).await })
        })
        .collect();
    let mut answers = Vec::new();
    for c in clients {
        answers.push(c.await.unwrap());
    }
    let codes: Vec<StatusCode> = answers.iter().map(|a| a.0).collect();
    let overflowed = codes.iter().filter(|c| **c == StatusCode::SERVICE_UNAVAILABLE).count();
    let ok = codes.iter().filter(|c| **c == StatusCode::OK).count();
    assert_eq!((ok, overflowed), (2, 1), "{codes:?}: one on the open connection, one queued, one refused");
    // What Envoy answers on overflow, so clients and dashboards keyed on it work.
    let (_, body, headers) = answers.iter().find(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE).unwrap();
    assert_eq!(headers.get("x-envoy-overloaded").map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert_eq!(body, "upstream connect error or disconnect/reset before headers. reset reason: overflow");
    let m = h.metrics.render();
    assert!(m.contains(&format!("envoy_cluster_upstream_rq_pending_overflow_total{{cluster_name=\"{V1}\"}} 1")), "{m}");
    assert!(m.contains("response_flags=\"UO\""), "{m}");
}

#[tokio::test]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let bad = upstream_with("bad", usize::MAX, Duration::ZERO, StatusCode::INTERNAL_SERVER_ERROR).await;
    let good = upstream("good", 0).await;
    let (v2, v3) = (upstream("v2", 0).await, upstream("v3", 0).await);
    let cfg = format!(
        r#"
virtualHosts:
  - {{name: r, domains: [reviews], routes: [{{route: [{{cluster: c}}]}}]}}
clusters:
  - name: c
    endpoints: ["{}", "{}"]
    outlierDetection: {{consecutive5xxErrors: 2, baseEjectionTime: 60s, maxEjectionPercent: 50}}
  - {{name: unused2, endpoints: ["{}"]}}
  - {{name: unused3, endpoints: ["{}"]}}
"#,
        bad.addr, good.addr, v2.addr, v3.addr
    );
    let h = proxy(&cfg).await;
    // Round robin alternates; after two 500s from `bad` it is ejected.
    let mut bodies = Vec::new();
    for _ in 0..12 {
        bodies.push(h.get("reviews", "/", &[]).await.1);
    }
    assert_eq!(bodies.iter().filter(|b| *b == "bad").count(), 2, "{bodies:?}");
    assert!(bodies[4..].iter().all(|b| b == "good"), "{bodies:?}");
}

#[tokio::test]
async fn with_its_only_endpoint_ejected_a_cluster_answers_no_healthy_upstream_and_reports_the_ejection() {
    // Istio's defaults after `outlierDetection`: minHealthPercent 0, no panic mode.
    let bad = upstream_with("bad", usize::MAX, Duration::ZERO, StatusCode::SERVICE_UNAVAILABLE).await;
    let cfg = format!(
        r#"
virtualHosts:
  - {{name: r, domains: [reviews], routes: [{{route: [{{cluster: c}}]}}]}}
clusters:
  - name: c
    endpoints: ["{}"]
    outlierDetection: {{consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100, minHealthPercent: 0}}
"#,
        bad.addr
    );
    let h = proxy(&cfg).await;
    assert_eq!(h.get("reviews", "/", &[]).await.1, "bad");
    for _ in 0..3 {
        let (status, body, _) = h.get("reviews", "/", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n"));
    }
    let m = h.metrics.render();
    assert!(m.contains("response_flags=\"UH\""), "{m}");
    // The admin endpoint's Prometheus text carries Envoy's ejection series.
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(listener::admin::serve_admin(
        admin,
        listener::admin::AdminRole::Metrics,
        h.store.clone(),
        h.metrics.clone(),
        skein_proxy::drain::Drain::default(),
    ));
    let resp = h.client.get(format!("http://{admin_addr}/stats/prometheus").parse().unwrap()).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("envoy_cluster_outlier_detection_ejections_active{cluster_name=\"c\"} 1\n"), "{text}");
    assert!(
        text.contains("envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name=\"c\"} 1\n"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

#[tokio::test]
async fn consistent_hash_keeps_a_user_on_one_endpoint() {
    let (a, b, c) = (upstream("a", 0).await, upstream("b", 0).await, upstream("c", 0).await);
    let cfg = format!(
        r#"
virtualHosts:
  - {{name: r, domains: [reviews], routes: [{{route: [{{cluster: c}}]}}]}}
clusters:
  - {{name: c, endpoints: ["{}", "{}", "{}"], loadBalancer: {{consistentHash: {{httpHeaderName: end-user}}}}}}
"#,
        a.addr, b.addr, c.addr
    );
    let h = proxy(&cfg).await;
    let first = h.get("reviews", "/", &[("end-user", "jason")]).await.1;
    for _ in 0..10 {
        assert_eq!(h.get("reviews", "/", &[("end-user", "jason")]).await.1, first);
    }
}

/// An HTTP/2 (h2c) upstream answering like a gRPC server: body, then a `grpc-status` trailer.
/// Records the version and `te` header it saw.
async fn h2_upstream() -> (SocketAddr, Arc<Mutex<Vec<(hyper::Version, Option<String>)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let te = req.headers().get("te").map(|v| v.to_str().unwrap().to_string());
                    s.lock().unwrap().push((req.version(), te));
                    async move {
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = vec![
                            Ok(hyper::body::Frame::data(Bytes::from_static(b"grpc-body"))),
                            Ok(hyper::body::Frame::trailers(trailers)),
                        ];
                        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn grpc_over_h2c_passes_through_with_trailers() {
    let (up, seen) = h2_upstream().await;
    let cfg = format!(
        "virtualHosts: [{{name: g, domains: [greeter], routes: [{{route: [{{cluster: g}}]}}]}}]\nclusters: [{{name: g, endpoints: ['{up}'], http2: true}}]\n"
    );
    let h = proxy(&cfg).await;
    // The caller speaks HTTP/2 with prior knowledge (h2c), as gRPC clients do in the mesh, and
    // names the service in :authority.
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://greeter/helloworld.Greeter/SayHello")
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap()), Some("0"));
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"grpc-body"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(hyper::Version::HTTP_2, Some("trailers".to_string()))],
        "upstream got HTTP/2 with te: trailers"
    );

    // An HTTP/1.1 caller reaches the same HTTP/2 upstream.
    assert_eq!(h.get("greeter", "/x", &[]).await.1, "grpc-body");
}

#[tokio::test]
async fn a_request_still_queued_for_a_connection_at_the_route_timeout_gets_504() {
    let slow = upstream_with("slow", 0, Duration::from_millis(600), StatusCode::OK).await;
    let cfg = format!(
        "virtualHosts: [{{name: r, domains: [reviews], routes: [{{match: [{{uri: {{prefix: /slow}}}}], route: [{{cluster: c}}]}}, {{route: [{{cluster: c}}], timeout: 300ms}}]}}]\nclusters: [{{name: c, endpoints: ['{}'], connectionPool: {{maxConnections: 1}}}}]\n",
        slow.addr
    );
    let h = Arc::new(proxy_one_worker(&cfg).await);
    let first = {
        let h = h.clone();
        tokio::spawn(async move { h.get("reviews", "/slow", &[]).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    assert_eq!(h.get("reviews", "/", &[]).await.0, StatusCode::GATEWAY_TIMEOUT, "queued request times out");
    assert!(start.elapsed() < Duration::from_millis(600), "answered at the route timeout, not after the slot freed");
    assert_eq!(first.await.unwrap(), StatusCode::OK, "the request holding the connection (no timeout) completes");
    assert_eq!(slow.seen.lock().unwrap().len(), 1, "the queued request never reached the upstream");
}

/// An upstream that answers with the trace headers it received, one `name=value` per line.
async fn header_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut out = String::new();
                    for name in ["x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "b3"] {
                        if let Some(v) = req.headers().get(name) {
                            out.push_str(&format!("{name}={}\n", v.to_str().unwrap()));
                        }
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(out))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn trace_context_passes_through_and_a_request_id_is_added_when_missing() {
    let echo = header_echo().await;
    let h = proxy(&format!(
        "virtualHosts: [{{name: e, domains: [echo], routes: [{{route: [{{cluster: e}}]}}]}}]\nclusters: [{{name: e, endpoints: ['{echo}']}}]"
    ))
    .await;
    let trace = [
        ("x-request-id", "req-1"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ];
    let (status, body, _) = h.get("echo", "/", &trace).await;
    assert_eq!(status, StatusCode::OK);
    for (k, v) in trace {
        assert!(body.contains(&format!("{k}={v}\n")), "{k} not propagated unchanged: {body}");
    }
    let (_, body, _) = h.get("echo", "/", &[]).await;
    let id = body.lines().find_map(|l| l.strip_prefix("x-request-id=")).expect("a request id is added");
    assert_eq!(id.len(), 32, "{id}");
    let (_, again, _) = h.get("echo", "/", &[]).await;
    assert!(!again.contains(id), "each request gets its own id");
}

async fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("access log {} never reached {n} lines", path.display());
}

#[tokio::test]
async fn access_log_writes_one_line_per_request_in_text_or_json() {
    let v1 = upstream("v1", 0).await;
    let dir = std::env::temp_dir().join(format!("skein-accesslog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (text_log, json_log) = (dir.join("text.log"), dir.join("json.log"));
    let base = reviews_config(
        v1.addr,
        v1.addr,
        v1.addr,
        &format!("      - {{name: default, route: [{{cluster: \"{V1}\"}}]}}"),
    );
    let h = proxy(&format!("{base}accessLog: {{path: '{}'}}\n", text_log.display())).await;
    h.get("reviews", "/reviews/1?x=1", &[("x-request-id", "abc-123"), ("user-agent", "test/1")]).await;
    h.get("unknown.example", "/", &[]).await;
    let lines = wait_for_lines(&text_log, 2).await;
    let line = &lines[0];
    assert!(line.starts_with('['), "{line}");
    assert!(line.contains("\"GET /reviews/1?x=1 HTTP/1.1\" 200 - "), "{line}");
    assert!(line.contains("\"test/1\" \"abc-123\" \"reviews\""), "{line}");
    assert!(line.contains(&format!("\"{}\" {V1} ", v1.addr)), "{line}");
    assert!(line.ends_with(" default"), "{line}");
    assert!(lines[1].contains("\" 502 NR "), "REGISTRY_ONLY refusal is logged with its flag: {}", lines[1]);

    // The same config with JSON encoding, applied as an update.
    h.store
        .apply(
            serde_yaml::from_str(&format!("{base}accessLog: {{path: '{}', encoding: JSON}}\n", json_log.display()))
                .unwrap(),
        )
        .unwrap();
    h.get("reviews", "/ratings", &[("x-request-id", "json-1")]).await;
    let lines = wait_for_lines(&json_log, 1).await;
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/ratings");
    assert_eq!(v["response_code"], 200);
    assert_eq!(v["request_id"], "json-1");
    assert_eq!(v["upstream_cluster"], V1);
    std::fs::remove_dir_all(&dir).ok();
}

/// An upstream that counts requests per client connection (by the client's port).
async fn connection_counter() -> (SocketAddr, Arc<Mutex<std::collections::HashMap<u16, usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let per_conn: Arc<Mutex<std::collections::HashMap<u16, usize>>> = Arc::default();
    let p = per_conn.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let p = p.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    *p.lock().unwrap().entry(peer.port()).or_default() += 1;
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, per_conn)
}

#[tokio::test]
async fn max_requests_per_connection_retires_upstream_connections() {
    for (limit, check) in [(Some(2), "limited"), (None, "unlimited")] {
        let (addr, per_conn) = connection_counter().await;
        let pool = limit.map(|n| format!(", connectionPool: {{maxRequestsPerConnection: {n}}}")).unwrap_or_default();
        let h = proxy(&format!(
            "virtualHosts: [{{name: c, domains: [c], routes: [{{route: [{{cluster: c}}]}}]}}]\nclusters: [{{name: c, endpoints: ['{addr}']{pool}}}]"
        ))
        .await;
        for _ in 0..6 {
            assert_eq!(h.get("c", "/", &[]).await.0, StatusCode::OK);
            // Let the pool take the connection back before the next request.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let counts = per_conn.lock().unwrap().clone();
        assert_eq!(counts.values().sum::<usize>(), 6);
        match check {
            "limited" => {
                assert!(counts.values().all(|n| *n <= 2), "a connection carried more than 2: {counts:?}");
                assert!(counts.len() >= 3, "{counts:?}");
            }
            _ => assert!(counts.values().any(|n| *n > 2), "connections are reused without a limit: {counts:?}"),
        }
    }
}

#[tokio::test]
async fn header_edits_reach_the_upstream_and_the_client_as_istio_writes_them() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    // Istio's `headers` on a rule and on its destination: the destination's first, the
    // route's last (it wins a conflict), remove before set before add.
    let routes = format!(
        "      - match: [{{uri: {{prefix: /both}}}}]\n        headers: {{request: {{set: {{end-user: from-route}}}}, response: {{set: {{x-route: r}}, add: {{x-added: '2'}}}}}}\n        route: [{{cluster: \"{V1}\", headers: {{request: {{set: {{end-user: from-destination}}}}, response: {{set: {{x-destination: d}}, add: {{x-added: '1'}}}}}}}}]\n      - match: [{{uri: {{prefix: /dest}}}}]\n        route: [{{cluster: \"{V2}\", headers: {{request: {{set: {{end-user: from-destination}}}}}}}}]\n      - match: [{{uri: {{prefix: /strip}}}}]\n        headers: {{request: {{remove: [end-user], set: {{host: elsewhere}}}}, response: {{remove: [x-never]}}}}\n        route: [{{cluster: \"{V3}\"}}]\n"
    );
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    let (status, _, headers) = h.get("reviews", "/both", &[("end-user", "jason")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1.seen.lock().unwrap()[0].2.as_deref(), Some("from-route"), "the route's edit wins");
    assert_eq!((headers["x-route"].to_str().unwrap(), headers["x-destination"].to_str().unwrap()), ("r", "d"));
    let added: Vec<_> = headers.get_all("x-added").iter().collect();
    assert_eq!(added, ["1", "2"], "both appended, destination first");
    h.get("reviews", "/dest", &[("end-user", "jason")]).await;
    assert_eq!(v2.seen.lock().unwrap()[0].2.as_deref(), Some("from-destination"));
    h.get("reviews", "/strip", &[("end-user", "jason")]).await;
    let seen = v3.seen.lock().unwrap()[0].clone();
    assert_eq!((seen.0.as_str(), seen.2), ("elsewhere", None), "removed, and the authority set");
}

#[tokio::test]
async fn the_mirror_gets_the_request_as_the_primary_is_sent_after_header_edits() {
    let (v1, v2, v3) = (upstream("v1", 0).await, upstream("v2", 0).await, upstream("v3", 0).await);
    // As in Envoy, the shadow copies the headers the route finalized (its edits, a `host` set
    // by them), and its authority is that host suffixed `-shadow`.
    let routes = format!(
        "      - match: [{{uri: {{prefix: /edit}}}}]\n        headers: {{request: {{set: {{end-user: from-route}}}}}}\n        route: [{{cluster: \"{V1}\"}}]\n        mirror: \"{V2}\"\n        mirrorPercentage: 100\n      - match: [{{uri: {{prefix: /host}}}}]\n        headers: {{request: {{set: {{host: elsewhere}}}}}}\n        route: [{{cluster: \"{V1}\"}}]\n        mirror: \"{V2}\"\n"
    );
    let h = proxy(&reviews_config(v1.addr, v2.addr, v3.addr, &routes)).await;
    assert_eq!(h.get("reviews:9080", "/edit", &[("end-user", "jason")]).await.0, StatusCode::OK);
    assert_eq!(h.get("reviews:9080", "/host", &[("end-user", "jason")]).await.0, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    while v2.seen.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut shadow = v2.seen.lock().unwrap().clone();
    shadow.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        shadow,
        [
            ("reviews-shadow:9080".to_string(), "/edit".to_string(), Some("from-route".to_string())),
            ("elsewhere-shadow".to_string(), "/host".to_string(), Some("jason".to_string())),
        ]
    );
    let primary = v1.seen.lock().unwrap().clone();
    assert_eq!(primary[0], ("reviews:9080".to_string(), "/edit".to_string(), Some("from-route".to_string())));
    assert_eq!(primary[1].0, "elsewhere");
}

#[tokio::test]
async fn route_response_edits_reach_redirects_and_upstream_answers_not_the_proxys_own_replies() {
    // Envoy applies a route's response edits to an upstream's answer and to a direct response
    // (a redirect), not to the router's local replies (a failed connection here).
    let failing = upstream("failing", 1).await;
    let v2 = upstream("v2", 0).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let edits = "headers: {response: {set: {x-route: r}}}";
    let routes = format!(
        "      - {{match: [{{uri: {{prefix: /old/}}}}], redirect: {{uri: /new}}, {edits}}}\n      - {{match: [{{uri: {{prefix: /dead}}}}], route: [{{cluster: \"{V3}\"}}], {edits}}}\n      - {{route: [{{cluster: \"{V1}\"}}], {edits}}}\n"
    );
    let h = proxy(&reviews_config(failing.addr, v2.addr, dead, &routes)).await;
    let (status, _, headers) = h.get("reviews", "/old/x", &[]).await;
    assert_eq!(
        (status, headers.get("x-route").map(|v| v.to_str().unwrap())),
        (StatusCode::MOVED_PERMANENTLY, Some("r"))
    );
    assert_eq!(headers["location"], "http://reviews/new");
    let (status, body, headers) = h.get("reviews", "/fail", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "failing"), "the upstream's own 503");
    assert_eq!(headers.get("x-route").map(|v| v.to_str().unwrap()), Some("r"));
    let (status, body, headers) = h.get("reviews", "/dead", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.starts_with("upstream connect error"), "{body}");
    assert_eq!(headers.get("x-route"), None, "the proxy's own reply: {headers:?}");
    assert!(h.metrics.render().contains("response_flags=\"UF\""));
}
