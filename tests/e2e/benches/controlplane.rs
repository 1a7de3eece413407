//! Control plane benchmark (not a test): N services (Services + EndpointSlices in a real
//! apiserver, spread over 10 namespaces) and M simulated proxies holding discovery streams.
//! Reports the time until every proxy has its first config, the time to push a change every
//! proxy sees, endpoint change → proxy receipt latency (p50/p99) and the control plane's
//! memory.
//!
//! Baseline, measured in the same run: how long the same endpoint change takes to reach a
//! plain Kubernetes watch (what any controller pays before it can react); "after the watch"
//! is each receipt counted from the moment that watch saw the change: what the control plane
//! adds on top (an apiserver that is slow to deliver a change delays both).
//!
//!   make bench-controlplane      (release build; SKEIN_BENCH_LOG=1 prints the control plane's
//!                                 snapshot phase timings; SKEIN_BENCH_SERVICES=1000,10000
//!                                 SKEIN_BENCH_PROXIES=1000 SKEIN_BENCH_CHANGES=20;
//!                                 SKEIN_BENCH_CP_ARGS="--flag value" adds control plane flags)
//!
//! The simulated proxies speak the discovery protocol directly on HTTP/2 over TLS, decode only
//! each response's version and nonce (a real proxy's cost is not the control plane's), ACK at
//! once, and share one thread.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use prost::Message;
use serde_json::json;
use skein_api::proxy::wire::pb;
use skein_e2e::{Cluster, ControlPlane};

const NAMESPACES: usize = 10;
const STREAMS_PER_CHANNEL: usize = 100;

/// A DiscoveryResponse with the config left undecoded (prost skips unknown fields).
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(string, tag = "2")]
    nonce: String,
    #[prost(bool, tag = "4")]
    more: bool,
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name).unwrap_or_else(|_| default.into()).split(',').filter_map(|v| v.trim().parse().ok()).collect()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// CPU time (user + system) the process has used, from /proc (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn create_services(client: &Client, n: usize, offset: usize) {
    stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let client = client.clone();
            async move {
                let i = i + offset;
                let ns = format!("bench-{}", i % NAMESPACES);
                let name = format!("svc-{i}");
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"ports": [{"name": "http", "port": 8080}]},
                }))
                .unwrap();
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-1"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "bench"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [
                        {"addresses": [format!("10.{}.{}.1", (i / 250) % 250, i % 250)], "conditions": {"ready": true}},
                        {"addresses": [format!("10.{}.{}.2", (i / 250) % 250, i % 250)], "conditions": {"ready": true}},
                    ],
                }))
                .unwrap();
                let pp = PostParams::default();
                Api::<Service>::namespaced(client.clone(), &ns).create(&pp, &svc).await.expect("create Service");
                Api::<EndpointSlice>::namespaced(client, &ns).create(&pp, &slice).await.expect("create EndpointSlice");
            }
        })
        .await;
}

/// When each proxy received each complete config, one list per proxy (a proxy's task is the
/// only writer of its list, so recording a receipt never waits for another proxy or for the
/// scan that checks progress).
type Receipts = Arc<[Mutex<Vec<Instant>>]>;

/// gRPC's message framing: uncompressed flag, big-endian length, message.
fn grpc_frame(msg: &impl prost::Message) -> bytes::Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).expect("message size").to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// The next whole gRPC message in `buf`, if one has arrived.
fn next_message(buf: &mut bytes::BytesMut) -> Option<bytes::Bytes> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    Some(buf.split_to(5 + len).freeze().slice(5..))
}

/// One TLS + HTTP/2 connection to the control plane's discovery port.
async fn dial(cp: &ControlPlane, tls: &tokio_rustls::TlsConnector) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", cp.grpc_port)).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tls.connect(name, tcp).await.expect("TLS handshake");
    // hyper's client defaults (what tonic would use).
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .handshake(tls)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// M simulated proxies, each a discovery stream that records when a whole config arrived and
/// ACKs it (gRPC framing by hand: every cycle they spend is taken from the control plane
/// measured on the same cores).
async fn connect_proxies(cp: &ControlPlane, m: usize, receipts: Receipts) -> Vec<tokio::task::JoinHandle<()>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cp.ca.root_cert_pem.as_bytes()) {
        roots.add(cert.expect("root PEM")).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut channels = Vec::new();
    for _ in 0..m.div_ceil(STREAMS_PER_CHANNEL) {
        channels.push(dial(cp, &tls).await);
    }
    let mut tasks = Vec::new();
    for i in 0..m {
        let ch = channels[i / STREAMS_PER_CHANNEL].clone();
        let receipts = receipts.clone();
        tasks.push(tokio::spawn(async move {
            let node = format!(
                "sidecar~10.200.{}.{}~proxy-{i}.bench-{}~bench-{}.svc.cluster.local",
                i / 250,
                i % 250,
                i % NAMESPACES,
                i % NAMESPACES
            );
            let hello =
                pb::DiscoveryRequest { node: Some(pb::Node { id: node, ..Default::default() }), ..Default::default() };
            let request = hyper::Request::post("https://127.0.0.1/skein.proxy.v1.ProxyDiscovery/StreamConfig")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let mut ch = ch.ready().await.expect("connection ready");
            let (response, mut send) = ch.send_request(request, false).expect("stream");
            send.send_data(grpc_frame(&hello), false).expect("hello");
            let response = response.await.expect("response headers");
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut buf = bytes::BytesMut::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                while let Some(msg) = next_message(&mut buf) {
                    let r = ResponseHeader::decode(msg).expect("DiscoveryResponse");
                    if r.more {
                        continue;
                    }
                    receipts[i].lock().unwrap().push(Instant::now());
                    let ack = pb::DiscoveryRequest {
                        version_info: r.version_info,
                        response_nonce: r.nonce,
                        ..Default::default()
                    };
                    if send.send_data(grpc_frame(&ack), false).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    tasks
}

/// Each proxy's first receipt at or after `since`.
fn first_receipts(receipts: &Receipts, since: Instant) -> Vec<Option<Instant>> {
    receipts.iter().map(|r| r.lock().unwrap().iter().copied().find(|t| *t >= since)).collect()
}

/// Waits until every proxy has received something after `since`; returns when the last did.
async fn all_received_after(receipts: &Receipts, since: Instant, limit: Duration) -> Option<Instant> {
    let start = Instant::now();
    loop {
        let first = first_receipts(receipts, since);
        if first.iter().all(Option::is_some) {
            return first.into_iter().flatten().max();
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Row {
    services: usize,
    proxies: usize,
    first_config: Duration,
    full_push: Option<Duration>,
    change_p50: Duration,
    change_p99: Duration,
    watch_p50: Duration,
    watch_p99: Duration,
    added_p50: Duration,
    added_p99: Duration,
    snapshot_mean: Duration,
    cpu_per_change: Duration,
    rss_mib: u64,
    peak_mib: u64,
}

async fn run(n: usize, m: usize, changes: usize) -> Row {
    let cluster = Cluster::start("cpbench").await.unwrap();
    let extra = std::env::var("SKEIN_BENCH_CP_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let cp = ControlPlane::start_with(&cluster, "127.0.0.1", "", &extra).await.unwrap();
    let client = cluster.client.clone();
    for i in 0..NAMESPACES {
        cluster.apply(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench-{i}}}\n"));
    }
    let created = Instant::now();
    create_services(&client, n, 0).await;
    eprintln!("  {n} Services + EndpointSlices created in {:.1}s", created.elapsed().as_secs_f64());
    // Let the control plane take them all in before proxies connect.
    let start = Instant::now();
    while cp.metric("skein_snapshots_total").await.unwrap_or(0.0) < 2.0 || start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let receipts: Receipts = (0..m).map(|_| Mutex::default()).collect();
    let connected = Instant::now();
    let _tasks = connect_proxies(&cp, m, receipts.clone()).await;
    let first =
        all_received_after(&receipts, connected, Duration::from_secs(600)).await.expect("every proxy configured");
    let first_config = first - connected;
    eprintln!("  {m} proxies configured in {:.2}s", first_config.as_secs_f64());

    // A change every proxy sees: one more Service, exported mesh-wide.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    create_services(&client, 1, n).await;
    let full_push = all_received_after(&receipts, t0, Duration::from_secs(600)).await.map(|t| t - t0);

    // Endpoint changes: each proxy's receipt vs a plain watch seeing the same change.
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let watch_task = {
        let (api, seen) = (Api::<EndpointSlice>::namespaced(client.clone(), "bench-0"), seen.clone());
        tokio::spawn(async move {
            let s = watcher(api, watcher::Config::default()).applied_objects();
            let mut s = std::pin::pin!(s);
            while let Some(Ok(es)) = s.next().await {
                let rv = es.metadata.resource_version.clone().unwrap_or_default();
                seen.lock().unwrap().push((rv, Instant::now()));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "bench-0");
    let (mut latencies, mut watch, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let snapshot_sum = || cp.metric("skein_snapshot_build_seconds_sum");
    let snapshot_count = || cp.metric("skein_snapshot_build_seconds_count");
    let (sum0, count0) = (snapshot_sum().await.unwrap_or(0.0), snapshot_count().await.unwrap_or(0.0));
    let cpu0 = cpu_time(cp.pid());
    for c in 0..changes {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let patch = json!({"endpoints": [
            {"addresses": [format!("10.250.{}.1", c % 250)], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
        ]});
        let t0 = Instant::now();
        let written = slices.patch("svc-0-1", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
        let rv = written.metadata.resource_version.unwrap_or_default();
        let Some(_) = all_received_after(&receipts, t0, Duration::from_secs(120)).await else {
            eprintln!("  change {c}: not every proxy got it within 120 s");
            continue;
        };
        let mut these: Vec<Duration> = first_receipts(&receipts, t0).into_iter().flatten().map(|t| t - t0).collect();
        these.sort();
        if std::env::var_os("SKEIN_BENCH_LOG").is_some() {
            let (first, mid, last) = (these[0], percentile(&these, 0.5), these[these.len() - 1]);
            eprintln!("  change {c}: first {:.1} p50 {:.1} last {:.1} ms", ms(first), ms(mid), ms(last));
        }
        // What the control plane adds: each receipt after the moment a plain watch saw the
        // write (the apiserver's own delivery delay, which both pay, taken out).
        if let Some((_, t)) = seen.lock().unwrap().iter().find(|(v, _)| *v == rv) {
            let w = *t - t0;
            watch.push(w);
            added.extend(these.iter().map(|d| d.saturating_sub(w)));
        }
        latencies.extend(these);
    }
    let cpu_per_change = (cpu_time(cp.pid()) - cpu0) / changes.max(1) as u32;
    watch_task.abort();
    let builds = snapshot_count().await.unwrap_or(0.0) - count0;
    let snapshot_mean = Duration::from_secs_f64((snapshot_sum().await.unwrap_or(0.0) - sum0) / builds.max(1.0));
    latencies.sort();
    watch.sort();
    added.sort();
    if std::env::var_os("SKEIN_BENCH_LOG").is_some() {
        for l in cp.log().lines().filter(|l| l.contains("snapshot built")).rev().take(changes + 4) {
            eprintln!("{l}");
        }
    }
    let pid = cp.pid();
    Row {
        services: n,
        proxies: m,
        first_config,
        full_push,
        change_p50: percentile(&latencies, 0.50),
        change_p99: percentile(&latencies, 0.99),
        watch_p50: percentile(&watch, 0.50),
        watch_p99: percentile(&watch, 0.99),
        added_p50: percentile(&added, 0.50),
        added_p99: percentile(&added, 0.99),
        snapshot_mean,
        cpu_per_change,
        rss_mib: status_kib(pid, "VmRSS:") / 1024,
        peak_mib: status_kib(pid, "VmHWM:") / 1024,
    }
}

fn main() {
    let services = env_list("SKEIN_BENCH_SERVICES", "1000,10000");
    let proxies = env_list("SKEIN_BENCH_PROXIES", "1000");
    let changes = env_list("SKEIN_BENCH_CHANGES", "20").first().copied().unwrap_or(20);
    // The simulated proxies (and the apiserver calls) get one thread: on a small machine they
    // would otherwise take as much CPU as the control plane they are measuring.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut rows = Vec::new();
    for &n in &services {
        for &m in &proxies {
            eprintln!("services={n} proxies={m}");
            rows.push(rt.block_on(run(n, m, changes)));
        }
    }
    println!(
        "| services | proxies | all configured | full push | endpoint change → proxy p50 / p99 | watch baseline p50 / p99 | after the watch p50 / p99 | snapshot build (mean) | CPU per change | RSS | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} s | {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} ms | {:.0} ms | {} MiB | {} MiB |",
            r.services,
            r.proxies,
            r.first_config.as_secs_f64(),
            r.full_push.map_or("timeout".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            ms(r.change_p50),
            ms(r.change_p99),
            ms(r.watch_p50),
            ms(r.watch_p99),
            ms(r.added_p50),
            ms(r.added_p99),
            ms(r.snapshot_mean),
            ms(r.cpu_per_change),
            r.rss_mib,
            r.peak_mib,
        );
    }
}
