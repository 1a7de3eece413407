//! The attack suite: the data-plane hardening issue's attacks, reproduced against the built
//! `skein-proxy` binary on loopback, each bounded in count and time, each with pass/fail
//! criteria (a memory ceiling, descriptors, a normal client's success and latency during the
//! attack). Where an attack applies to HAProxy too, the same attack runs against Debian's
//! HAProxy in the same run and both are reported side by side (RSS and descriptors per idle,
//! TLS and slow connection).
//!
//! `cargo test` (so `make test`) runs the short version; `make attack` the full one
//! (`SKEIN_ATTACK=full`: more connections and streams, the same criteria), with `--nocapture`
//! for the report. Attacks run one at a time, so a latency criterion never measures another
//! attack.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

mod common;
use common::{ca::Ca, free_port};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Requests the upstream received on `/slow`.
static SLOW_SEEN: AtomicUsize = AtomicUsize::new(0);

/// How close to its resident size before an attack the proxy must come back once the attack is
/// over (KiB).
const RETURNED_KIB: u64 = 16 << 10;

/// Attacks run one at a time.
/// (An async mutex: each test has its own runtime, and a failed test must not poison it.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How hard the attacks push: the short version for `make test`, the full one for `make attack`.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// HTTP/2 connections with 100 unfinished 4 MiB bodies each.
    h2_body_conns: usize,
    /// HTTP/1.1 connections with one unfinished 4 MiB body each.
    h1_body_conns: usize,
    /// Idle connections against the caps.
    idle_conns: usize,
    /// Requests whose announced body never comes; clients that never read.
    slow: usize,
    /// Connections per kind measured for RSS and descriptors per connection.
    per_conn_sample: usize,
}

fn scale() -> Scale {
    if std::env::var("SKEIN_ATTACK").as_deref() == Ok("full") {
        Scale { h2_body_conns: 4, h1_body_conns: 100, idle_conns: 5000, slow: 200, per_conn_sample: 2000 }
    } else {
        Scale { h2_body_conns: 1, h1_body_conns: 20, idle_conns: 400, slow: 50, per_conn_sample: 200 }
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("skein-attack-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A process under attack: killed when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Samples a process's RSS every 20 ms until stopped; the peak, in KiB.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl PeakRss {
    fn start(pid: u32) -> Self {
        let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(rss_kib(pid))));
        let (s, p) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, peak }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

/// The upstream every attack's routes lead to: `/echo` drains the request body and answers
/// with its length, `/big` answers 64 MiB, `/slow` answers after 30 s, anything else `ok`.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = match req.uri().path() {
                        "/echo" => {
                            let mut body = req.into_body();
                            let mut n = 0;
                            while let Some(Ok(f)) = body.frame().await {
                                n += f.data_ref().map_or(0, |d| d.len());
                            }
                            Full::new(Bytes::from(n.to_string())).map_err(|e| -> BoxError { match e {} }).boxed()
                        }
                        "/big" => {
                            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
                            let frames = futures::stream::iter(
                                (0..1024).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone()))),
                            );
                            StreamBody::new(frames).boxed()
                        }
                        "/slow" => {
                            SLOW_SEEN.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            Full::new(Bytes::from("late")).map_err(|e| -> BoxError { match e {} }).boxed()
                        }
                        _ => Full::new(Bytes::from("ok")).map_err(|e| -> BoxError { match e {} }).boxed(),
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

/// A skein-proxy under attack: an HTTP listener `a` (attacked), an HTTP listener `b` (the
/// normal client's) and an HTTPS gateway listener, all routing to `up`.
struct Skein {
    proc: Proc,
    a: u16,
    b: u16,
    tls: u16,
    status: u16,
    metrics: u16,
    config: PathBuf,
    ca: Ca,
}

fn skein_config(a: u16, b: u16, tls: u16, up: SocketAddr, dir: &Path, ca: &Ca) -> String {
    let (crt, key) = ca.dns_files(dir, "gw", &["gw.example.com"]);
    format!(
        r#"listeners:
  - {{name: a, address: "127.0.0.1:{a}"}}
  - {{name: b, address: "127.0.0.1:{b}"}}
  - name: https
    address: "127.0.0.1:{tls}"
    serverTls:
      credentials: [{{hosts: [gw.example.com], certChain: "{crt}", privateKey: "{key}"}}]
virtualHosts: [{{name: app, domains: ["*"], routes: [{{route: [{{cluster: app}}]}}]}}]
clusters: [{{name: app, endpoints: ["{up}"]}}]
"#
    )
}

async fn skein(name: &str, up: SocketAddr, extra: &[&str]) -> Skein {
    // The attacker's side needs descriptors too.
    skein_proxy::limits::raise_fd_limit();
    let dir = tmp(name);
    let ca = Ca::new("cluster.local");
    let (a, b, tls, admin, status, metrics) =
        (free_port(), free_port(), free_port(), free_port(), free_port(), free_port());
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, skein_config(a, b, tls, up, &dir, &ca)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_skein-proxy"))
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--status-addr", &format!("127.0.0.1:{status}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start skein-proxy");
    let s = Skein { proc: Proc { child }, a, b, tls, status, metrics, config, ca };
    let started = Instant::now();
    while get(s.b, "/").await.map(|r| r.0) != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(10), "skein-proxy never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s
}

impl Skein {
    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    async fn ready(&self) -> bool {
        get(self.status, "/healthz/ready").await.map(|r| r.0) == Some(200)
    }

    async fn metrics(&self) -> String {
        get(self.metrics, "/stats/prometheus").await.map(|r| r.1).unwrap_or_default()
    }
}

/// HAProxy in front of the same upstream, plain and TLS, with timeouts like the proxy's
/// (head 10 s, keep-alive and client 300 s).
fn haproxy(name: &str, up: SocketAddr, ca: &Ca) -> Option<(Proc, u16, u16)> {
    if Command::new("haproxy").arg("-v").stdout(Stdio::null()).status().is_err() {
        return None;
    }
    let dir = tmp(name);
    let (crt, key) = ca.dns_files(&dir, "hap", &["gw.example.com"]);
    let pem = dir.join("hap.pem");
    std::fs::write(&pem, std::fs::read_to_string(crt).unwrap() + &std::fs::read_to_string(key).unwrap()).unwrap();
    let (plain, tls) = (free_port(), free_port());
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format raw local0 emerg\n  maxconn 8000\ndefaults\n  mode http\n  maxconn 8000\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-request 10s\n  timeout http-keep-alive 300s\nfrontend f\n  bind 127.0.0.1:{plain}\n  bind 127.0.0.1:{tls} ssl crt {}\n  default_backend b\nbackend b\n  server s1 {up}\n",
            pem.display()
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .args(["-f", cfg.to_str().unwrap(), "-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some((Proc { child }, plain, tls))
}

/// One HTTP/1.1 request on its own connection: status and body.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.ok()?.ok()?;
    let out = String::from_utf8_lossy(&out).to_string();
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// A normal client during an attack: one request every 20 ms on its own keep-alive
/// connection to `port`, until stopped. Reports successes, failures and latencies.
struct Normal {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize, Vec<Duration>)>,
}

impl Normal {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0, 0, Vec::new());
            let mut conn: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
            // Bounded: at most 6 000 requests (2 minutes).
            for _ in 0..6000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let start = Instant::now();
                let attempt = async {
                    if conn.as_ref().is_none_or(|c| c.is_closed()) {
                        let io = TokioIo::new(TcpStream::connect(("127.0.0.1", port)).await.ok()?);
                        let (send, c) = hyper::client::conn::http1::handshake(io).await.ok()?;
                        tokio::spawn(c);
                        conn = Some(send);
                    }
                    let send = conn.as_mut()?;
                    send.ready().await.ok()?;
                    let req = Request::get("/").header("host", "app").body(Empty::new()).unwrap();
                    let resp = send.send_request(req).await.ok()?;
                    let status = resp.status();
                    resp.into_body().collect().await.ok()?;
                    status.is_success().then_some(())
                };
                match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                    Ok(Some(())) => {
                        ok += 1;
                        lat.push(start.elapsed());
                    }
                    _ => {
                        failed += 1;
                        conn = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed, lat)
        });
        Self { stop, task }
    }

    /// Stops; asserts the normal client was served throughout with p99 under `p99_max`.
    async fn check(self, attack: &str, p99_max: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed, mut lat) = self.task.await.unwrap();
        lat.sort();
        let p99 = lat.get(lat.len().saturating_sub(1) * 99 / 100).copied().unwrap_or_default();
        println!("  {attack}: normal client {ok} ok, {failed} failed, p99 {p99:?}");
        assert!(ok >= 10, "{attack}: the normal client was barely served: {ok} ok");
        assert_eq!(failed, 0, "{attack}: the normal client failed {failed} times");
        assert!(p99 < p99_max, "{attack}: normal client p99 {p99:?} over {p99_max:?}");
    }
}

/// Attack 1: unfinished bodies. HTTP/2 connections with 100 streams each sending 1 byte short
/// of an announced 4 MiB, and HTTP/1.1 connections doing the same once each. The proxy streams
/// them to the upstream and keeps at most its buffer budget, so its memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_unfinished_bodies_hold_no_memory() {
    let _serial = SERIAL.lock().await;
    let sc = scale();
    let up = upstream().await;
    let proxy = skein("bodies", up, &["--stream-idle-timeout", "3s"]).await;
    let base = rss_kib(proxy.pid());
    let peak = PeakRss::start(proxy.pid());
    let normal = Normal::start(proxy.b);
    const ANNOUNCED: usize = 4 << 20;
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..sc.h2_body_conns {
        let io = TokioIo::new(TcpStream::connect(("127.0.0.1", proxy.a)).await.unwrap());
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        clients.push(tokio::spawn(async move {
            let _ = conn.await;
        }));
        for _ in 0..100 {
            let mut send = send.clone();
            clients.push(tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 << 10]);
                let mut frames: Vec<Bytes> = (0..ANNOUNCED / chunk.len() - 1).map(|_| chunk.clone()).collect();
                frames.push(chunk.slice(1..));
                let body = StreamBody::new(futures::StreamExt::chain(
                    futures::stream::iter(frames.into_iter().map(|b| Ok::<_, Infallible>(Frame::data(b)))),
                    futures::stream::pending(),
                ));
                let req = Request::post("http://app/echo").header("content-length", ANNOUNCED).body(body).unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(20), send.send_request(req)).await;
            }));
        }
    }
    for _ in 0..sc.h1_body_conns {
        let port = proxy.a;
        clients.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else { return };
            let head = format!("POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: {ANNOUNCED}\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 << 10];
            let mut left = ANNOUNCED - 1;
            while left > 0 {
                let n = left.min(chunk.len());
                if tokio::time::timeout(Duration::from_secs(20), s.write_all(&chunk[..n])).await.is_err() {
                    return;
                }
                left -= n;
            }
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut sink)).await;
        }));
    }
    // Every attacking request ends by the stream idle timeout (3 s after its last byte).
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(30), c).await;
    }
    let took = started.elapsed();
    let peak = peak.stop();
    normal.check("unfinished bodies", Duration::from_millis(500)).await;
    // The memory comes back: the proxy trims its heap every 10 s (without that, glibc's malloc
    // kept 133 MiB of a 146 MiB peak resident for good).
    let ended = Instant::now();
    let returned = loop {
        let rss = rss_kib(proxy.pid());
        if rss < base + RETURNED_KIB || ended.elapsed() > Duration::from_secs(30) {
            break rss;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("  unfinished bodies: RSS {} MiB {:?} after the attack ended", returned / 1024, ended.elapsed());
    let sent_mib = (sc.h2_body_conns * 100 + sc.h1_body_conns) * 4;
    println!(
        "  unfinished bodies: {sent_mib} MiB announced, peak RSS {} -> {} MiB, ended in {took:?}",
        base / 1024,
        peak / 1024
    );
    // The buffer budget (64 MiB, all requests together) and at most 256 KiB of buffers per
    // request in flight (its connections' read and write buffers, a frame in transit), against
    // the 4 MiB each of the proxy that buffered bodies (425 MiB for one HTTP/2 connection).
    let requests = (sc.h2_body_conns * 100 + sc.h1_body_conns) as u64;
    let ceiling = (64 << 10) + requests * 256;
    println!("  unfinished bodies: ceiling {} MiB for {requests} requests", ceiling / 1024);
    assert!(peak - base < ceiling, "RSS grew {} MiB under {sent_mib} MiB of unfinished bodies", (peak - base) / 1024);
    assert!(took < Duration::from_secs(30), "the unfinished requests were not ended: {took:?}");
    assert!(
        returned < base + RETURNED_KIB,
        "{} MiB still resident 30 s after the attack (base {} MiB)",
        returned / 1024,
        base / 1024
    );
    assert!(proxy.ready().await);
}

/// Attack 2: connections that never start a request (silent, 23 of the 24 preface bytes, a
/// completed TLS handshake then silence) against the connection caps: over the cap they are
/// closed at accept and counted, the other listener and readiness stay up, descriptors stay
/// under the cap, and all of them are closed at the 10 s head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_connections_without_requests_are_capped_and_closed() {
    let _serial = SERIAL.lock().await;
    let sc = scale();
    let up = upstream().await;
    let cap = sc.idle_conns / 2;
    let proxy = skein(
        "idle",
        up,
        &["--max-connections", &(cap + 50).to_string(), "--max-connections-per-listener", &cap.to_string()],
    )
    .await;
    let normal = Normal::start(proxy.b);
    let fds_before = fds(proxy.pid());
    let mut held = Vec::new();
    for i in 0..sc.idle_conns {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", proxy.a)).await else { continue };
        if i % 2 == 1 {
            let _ = s.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..23]).await;
        }
        held.push(s);
    }
    // TLS: handshakes completed on the gateway listener, then nothing.
    let tls = proxy.ca.client_config(None);
    let mut tls_held = Vec::new();
    for _ in 0..20 {
        let tcp = TcpStream::connect(("127.0.0.1", proxy.tls)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("gw.example.com").unwrap();
        if let Ok(s) = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await {
            tls_held.push(s);
        }
    }
    // And the status port: its own cap (64), so it cannot take descriptors without bound.
    let mut status_held = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", proxy.status)).await {
            status_held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_during = fds(proxy.pid());
    drop(status_held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(proxy.ready().await, "readiness answers under the attack");
    assert_eq!(get(proxy.b, "/").await.map(|r| r.0), Some(200), "the other listener serves");
    assert!(
        fds_during <= fds_before + cap + 50 + 64 + 10,
        "descriptors {fds_before} -> {fds_during} with caps {cap} per listener, {} total, 64 on the status port",
        cap + 50
    );
    let exported = proxy.metrics().await;
    assert!(
        exported.lines().any(|l| l.starts_with("envoy_listener_downstream_cx_overflow") && !l.ends_with(" 0")),
        "overflow counted: {exported}"
    );
    assert_eq!(tls_held.len(), 20, "TLS handshakes complete (the TLS listener has places)");
    // All closed by the head timeout (10 s) after they connected: the proxy's descriptors
    // fall back to where they were.
    let started = Instant::now();
    while fds(proxy.pid()) > fds_before + 5 && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("  idle connections: {} held, fds {fds_before} -> {fds_during} -> {}", held.len() + 20, fds(proxy.pid()));
    assert!(fds(proxy.pid()) <= fds_before + 5, "the silent connections were closed by the head timeout");
    normal.check("idle connections", Duration::from_millis(500)).await;
    assert_eq!(get(proxy.a, "/").await.map(|r| r.0), Some(200), "the attacked listener serves again");
}

/// Attack 3: requests whose announced body never comes, and clients that never read their
/// response. Each is ended by the stream idle timeout (here 2 s): the body-less ones answered
/// 408 and closed, the non-readers cut off; memory stays bounded while they last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_slow_bodies_and_slow_readers_are_ended_by_the_stream_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let sc = scale();
    let up = upstream().await;
    let proxy = skein("slow", up, &["--stream-idle-timeout", "2s"]).await;
    let normal = Normal::start(proxy.b);
    let base = rss_kib(proxy.pid());
    let peak = PeakRss::start(proxy.pid());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..sc.slow * 2 {
        let port = proxy.a;
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            if i % 2 == 0 {
                // Ten bytes of an announced hundred, then nothing: 408, then closed.
                s.write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789").await.ok()?;
                let mut out = Vec::new();
                tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await.ok()?.ok()?;
                Some(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"))
            } else {
                // 64 MiB asked for, the head read, then nothing read: cut off (the socket
                // buffers on both sides hold a few MiB of it).
                s.write_all(b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n").await.ok()?;
                let mut head = [0u8; 12];
                s.read_exact(&mut head).await.ok()?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                let mut rest = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await.ok()?;
                // A reset or an early EOF: either way far less than was asked for.
                Some(read.is_ok() && rest.len() < 32 << 20)
            }
        }));
    }
    let mut ended = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Some(true) => ended += 1,
            other => println!("  slow request {i} ({}): {other:?}", if i % 2 == 0 { "body" } else { "reader" }),
        }
    }
    let took = started.elapsed();
    let peak = peak.stop();
    normal.check("slow bodies and readers", Duration::from_millis(500)).await;
    let per_conn = (peak.saturating_sub(base)) / (sc.slow as u64 * 2);
    println!(
        "  slow bodies and readers: {ended}/{} ended as expected in {took:?}, peak RSS {} -> {} MiB ({per_conn} KiB per connection)",
        sc.slow * 2,
        base / 1024,
        peak / 1024
    );
    assert_eq!(ended, sc.slow * 2, "every slow request was ended by the stream idle timeout");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(per_conn < 1024, "{per_conn} KiB held per slow connection");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exported = proxy.metrics().await;
    assert!(
        exported.lines().any(|l| l.contains("response_code=\"408\"") && l.contains("response_flags=\"SI\"")),
        "{exported}"
    );
}

/// Attack 4: rapid reset spread over time on one HTTP/2 connection (each request cancelled
/// once it reached the upstream, one pair at a time): the connection is closed within Envoy's
/// rule (before 700 pairs), while a normal client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_rapid_reset_spread_over_time_closes_the_connection() {
    let _serial = SERIAL.lock().await;
    let up = upstream().await;
    let proxy = skein("reset", up, &[]).await;
    let normal = Normal::start(proxy.b);
    let io = TokioIo::new(TcpStream::connect(("127.0.0.1", proxy.a)).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    let mut sent = 0;
    // Bounded: 2 000 pairs and 60 s.
    while sent < 2000 && started.elapsed() < Duration::from_secs(60) {
        if !matches!(tokio::time::timeout(Duration::from_secs(2), send.ready()).await, Ok(Ok(()))) {
            break;
        }
        let req = Request::get("http://app/slow").body(Empty::<Bytes>::new()).unwrap();
        let mut answer = Box::pin(send.send_request(req));
        // Cancelled once it reached the upstream (which sleeps 30 s on it), so the proxy had
        // accepted and forwarded it: an earlier cancel is a burst, caught by another limit.
        let before = SLOW_SEEN.load(Ordering::SeqCst);
        let waited = Instant::now();
        while SLOW_SEEN.load(Ordering::SeqCst) == before && waited.elapsed() < Duration::from_secs(1) {
            if tokio::time::timeout(Duration::from_micros(200), answer.as_mut()).await.is_ok() {
                break;
            }
        }
        drop(answer);
        sent += 1;
    }
    println!("  rapid reset: connection closed after {sent} pairs in {:?}", started.elapsed());
    assert!(sent < 700, "the connection survived {sent} premature resets");
    assert!(sent >= 250, "closed after {sent}: Envoy's rule allows 250");
    assert!(tokio::time::timeout(Duration::from_secs(5), conn).await.is_ok(), "the connection was closed");
    normal.check("rapid reset", Duration::from_millis(500)).await;
}

/// Attack 5: config faults. An empty file, `{}` and a truncated write are refused and counted
/// while the last good config keeps serving and readiness stays up; a SIGHUP storm changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_config_faults_keep_the_last_good_config() {
    let _serial = SERIAL.lock().await;
    let up = upstream().await;
    let proxy = skein("config", up, &[]).await;
    let good = std::fs::read_to_string(&proxy.config).unwrap();
    let faults = ["", "{}", &good[..good.len() / 2]];
    for (i, fault) in faults.iter().enumerate() {
        std::fs::write(&proxy.config, fault).unwrap();
        for _ in 0..20 {
            let _ = Command::new("kill").args(["-HUP", &proxy.pid().to_string()]).status();
        }
        let started = Instant::now();
        let rejected = loop {
            let exported = proxy.metrics().await;
            let n = exported
                .lines()
                .find(|l| l.starts_with("skein_proxy_config_rejected"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            if n as usize > i || started.elapsed() > Duration::from_secs(5) {
                break n as usize;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(rejected > i, "fault {i} ({fault:?}) counted as a rejection");
        assert_eq!(get(proxy.a, "/").await.map(|r| r.0), Some(200), "fault {i}: the last good config serves");
        assert!(proxy.ready().await, "fault {i}: readiness stays up");
    }
    println!("  config faults: empty, {{}} and truncated refused; serving throughout");
}

/// Attack 6: malformed and smuggling-shaped requests get a 4xx (or a closed connection),
/// never a second request smuggled through; exactly 100 headers are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_malformed_requests_are_refused() {
    let _serial = SERIAL.lock().await;
    let up = upstream().await;
    let proxy = skein("malformed", up, &[]).await;
    let port = proxy.a;
    let headers = |n: usize| (0..n).map(|i| format!("x-h{i}: v\r\n")).collect::<String>();
    // The proxy adds x-request-id; that is not the client's to pay for.
    let ninety_nine = format!("GET / HTTP/1.1\r\nHost: app\r\n{}Connection: close\r\n\r\n", headers(97));
    assert!(raw(port, ninety_nine).await.starts_with("HTTP/1.1 200"), "100 headers are accepted");
    let over = format!("GET / HTTP/1.1\r\nHost: app\r\n{}Connection: close\r\n\r\n", headers(120));
    assert!(raw(port, over).await.starts_with("HTTP/1.1 431"), "over 100 headers: 431");
    let dup_host = "GET / HTTP/1.1\r\nHost: app\r\nHost: other\r\nConnection: close\r\n\r\n".to_string();
    assert!(raw(port, dup_host).await.starts_with("HTTP/1.1 400"), "a duplicate Host: 400");
    // CL.TE: framed by Transfer-Encoding alone and the connection closed after the response
    // (RFC 9112 §6.1; hyper does this and removes Content-Length before the proxy sees the
    // request), so the smuggled second request is never read, let alone answered.
    let smuggle = "POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n".to_string();
    let out = raw(port, smuggle).await;
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "CL+TE: one response, then closed: {out}");
    let bad = [
        "GET / HTTP/1.1\r\nHost: app\r\nContent-Length: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHo st: app\r\n\r\n",
        "\x16\x03\x01garbage\r\n\r\n",
    ];
    for b in bad {
        let out = raw(port, b.to_string()).await;
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 4"), "{b:?} -> {out:?}");
    }
    assert!(proxy.ready().await);
}

/// Sends `req` as is on a new connection; what came back before the close (or 5 s).
async fn raw(port: u16, req: String) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// One kind of connection an attacker holds open.
#[derive(Clone, Copy, Debug)]
enum Held {
    /// Connected, nothing sent.
    Idle,
    /// TLS handshake completed, nothing sent.
    Tls,
    /// Half a request head, then nothing (slowloris).
    Slow,
}

/// Opens `n` connections of `kind`; what is open.
async fn hold(kind: Held, plain: u16, tls: u16, n: usize, ca: &Ca) -> Vec<Box<dyn std::any::Any + Send>> {
    let client = ca.client_config(None);
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for _ in 0..n {
        match kind {
            Held::Idle => {
                if let Ok(s) = TcpStream::connect(("127.0.0.1", plain)).await {
                    held.push(Box::new(s));
                }
            }
            Held::Slow => {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", plain)).await {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Slow: ").await;
                    held.push(Box::new(s));
                }
            }
            Held::Tls => {
                let Ok(tcp) = TcpStream::connect(("127.0.0.1", tls)).await else { continue };
                let name = rustls::pki_types::ServerName::try_from("gw.example.com").unwrap();
                if let Ok(s) = tokio_rustls::TlsConnector::from(client.clone()).connect(name, tcp).await {
                    held.push(Box::new(s));
                }
            }
        }
    }
    held
}

/// RSS (KiB) and descriptors per held connection of `kind` in process `pid`.
async fn per_connection(pid: u32, kind: Held, plain: u16, tls: u16, n: usize, ca: &Ca) -> (f64, f64) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, fd0) = (rss_kib(pid), fds(pid));
    let held = hold(kind, plain, tls, n, ca).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, fd1) = (rss_kib(pid), fds(pid));
    let count = held.len().max(1) as f64;
    drop(held);
    (rss1.saturating_sub(rss0) as f64 / count, fd1.saturating_sub(fd0) as f64 / count)
}

/// Attack 7: what an idle, a TLS and a slowloris connection cost, skein-proxy against HAProxy
/// under the same connections in the same run. Pass/fail on skein-proxy's own ceilings (one
/// descriptor per connection, no upstream connection for a client that sent no request, tens
/// of KiB of memory); HAProxy's numbers are reported beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_held_connections_cost_little_against_haproxy() {
    let _serial = SERIAL.lock().await;
    skein_proxy::limits::raise_fd_limit();
    let n = scale().per_conn_sample;
    let up = upstream().await;
    let proxy = skein("held", up, &[]).await;
    let hap = haproxy("held-haproxy", up, &proxy.ca);
    if hap.is_none() {
        assert!(
            std::env::var("SKEIN_ATTACK").as_deref() != Ok("full"),
            "make attack compares with HAProxy: install it"
        );
        println!("  NOTE: haproxy is not installed: its column is not measured (make attack installs it)");
    }
    println!("  per held connection ({n} of each): RSS KiB / descriptors");
    for kind in [Held::Idle, Held::Tls, Held::Slow] {
        let (rss, fd) = per_connection(proxy.pid(), kind, proxy.a, proxy.tls, n, &proxy.ca).await;
        let theirs = match &hap {
            Some((p, plain, tls)) => {
                let (r, f) = per_connection(p.pid(), kind, *plain, *tls, n, &proxy.ca).await;
                format!("{r:.1} KiB / {f:.2}")
            }
            None => "not measured".into(),
        };
        println!("    {kind:?}: skein-proxy {rss:.1} KiB / {fd:.2}, haproxy {theirs}");
        assert!(fd <= 1.05, "{kind:?}: {fd:.2} descriptors per connection");
        let ceiling = match kind {
            Held::Tls => 96.0,
            _ => 48.0,
        };
        assert!(rss <= ceiling, "{kind:?}: {rss:.1} KiB per connection, over {ceiling} KiB");
    }
    assert!(proxy.ready().await);
}
