//! Proxy benchmark (not a test): direct connection vs one skein-proxy vs two skein-proxies with
//! mTLS vs HAProxy (Debian's), all on loopback in the same run, against the same upstream.
//!
//! - Fixed rate: 1 000 requests/s with 1 KiB responses over 8 keep-alive connections, latency
//!   measured from each request's scheduled time (no coordinated omission); reports p50/p99
//!   and what each setup adds to the direct connection's, the proxies' CPU (vCPU) and RSS.
//! - Saturation: 32 closed-loop clients for a few seconds; requests/s and requests/s per core
//!   of proxy CPU.
//!
//! Run with `make bench-proxy`; `BENCH_SECONDS` sets the length of each phase (default 5);
//! `BENCH_ONLY` (comma-separated: `skein-1`, `mtls`, `haproxy`) runs only those setups after the
//! direct baseline, e.g. to attach a profiler to one of them; `BENCH_PROXY_BIN` runs another
//! skein-proxy binary (e.g. an earlier commit's release build) for a side-by-side comparison.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;

const RATE: u64 = 1000;
const CONNECTIONS: usize = 8;
const SATURATION_CLIENTS: usize = 32;
const BODY: usize = 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = Bytes::from(vec![b'x'; BODY]);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

struct Proc {
    child: Child,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// (utime + stime) in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        ticks / hz
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

fn skein(dir: &Path, name: &'static str, yaml: &str) -> Proc {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).unwrap();
    // BENCH_PROXY_BIN runs another build (e.g. the previous commit's) against the same baselines.
    let bin = std::env::var("BENCH_PROXY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_skein-proxy").into());
    let child = Command::new(bin)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--status-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--concurrency", &std::env::var("BENCH_CONCURRENCY").unwrap_or_else(|_| "1".into())])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start skein-proxy");
    Proc { child, name }
}

fn haproxy(dir: &Path, port: u16, up: SocketAddr) -> Proc {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format raw local0 emerg\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  http-reuse always\n  server s1 {up}\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .args(["-f", cfg.to_str().unwrap(), "-db"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start haproxy (apt-get install haproxy)");
    Proc { child, name: "haproxy" }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(SATURATION_CLIENTS).build(c)
}

async fn once(client: &HttpClient, target: SocketAddr) -> bool {
    let req = Request::get(format!("http://{target}/bench")).header("host", "bench").body(Empty::new()).unwrap();
    match client.request(req).await {
        Ok(r) if r.status().is_success() => r.into_body().collect().await.is_ok_and(|b| b.to_bytes().len() == BODY),
        _ => false,
    }
}

async fn wait_ready(client: &HttpClient, target: SocketAddr) {
    let start = Instant::now();
    while !once(client, target).await {
        assert!(start.elapsed() < Duration::from_secs(10), "{target} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fixed-rate phase; returns per-request latencies in microseconds and the error count.
async fn fixed_rate(target: SocketAddr, seconds: u64) -> (Vec<u64>, u64) {
    let client = client();
    // Warm the pool up to the connection count.
    let warm: Vec<_> = (0..CONNECTIONS).map(|_| once(&client, target)).collect();
    futures::future::join_all(warm).await;
    let total = RATE * seconds;
    let interval = Duration::from_nanos(1_000_000_000 / RATE);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, errors) = (client.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            // Each request is its own task, so a slow one never holds back the next (no
            // coordinated omission); timed from when it starts, since tokio's timer wheel
            // fires up to 1 ms after the scheduled instant.
            let sent = Instant::now();
            if !once(&client, target).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            sent.elapsed().as_micros() as u64
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    lat.sort_unstable();
    if std::env::var("BENCH_VERBOSE").is_ok() {
        eprintln!(
            "  p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            pct(&lat, 1.0)
        );
    }
    (lat, errors.load(Ordering::Relaxed))
}

async fn saturation(target: SocketAddr, seconds: u64) -> f64 {
    let client = client();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..SATURATION_CLIENTS)
        .map(|_| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if once(&client, target).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    futures::future::join_all(workers).await;
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn pct(lat: &[u64], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i] as f64 / 1000.0
}

struct Row {
    name: &'static str,
    p50: f64,
    p99: f64,
    errors: u64,
    vcpu_at_rate: f64,
    rss: f64,
    sat_rps: f64,
    rps_per_core: f64,
}

async fn measure(name: &'static str, target: SocketAddr, procs: &[&Proc], seconds: u64) -> Row {
    wait_ready(&client(), target).await;
    let cpu = |ps: &[&Proc]| ps.iter().map(|p| p.cpu_seconds()).sum::<f64>();
    let (c0, t0) = (cpu(procs), Instant::now());
    let (lat, errors) = fixed_rate(target, seconds).await;
    let vcpu_at_rate = (cpu(procs) - c0) / t0.elapsed().as_secs_f64();
    let rss = procs.iter().map(|p| p.rss_mib()).sum();
    let (c1, t1) = (cpu(procs), Instant::now());
    let sat_rps = saturation(target, seconds).await;
    let sat_cpu = (cpu(procs) - c1) / t1.elapsed().as_secs_f64();
    let rps_per_core = if procs.is_empty() || sat_cpu == 0.0 { f64::NAN } else { sat_rps / sat_cpu };
    Row { name, p50: pct(&lat, 0.5), p99: pct(&lat, 0.99), errors, vcpu_at_rate, rss, sat_rps, rps_per_core }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy-bench");
    std::fs::create_dir_all(&dir).unwrap();
    // The load generator and the upstream share one worker thread, leaving the other cores to
    // the proxies under test.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let report = rt.block_on(async {
        let up = upstream().await;
        let mut rows = Vec::new();
        eprintln!("direct");
        rows.push(measure("direct", up, &[], seconds).await);

        let only = std::env::var("BENCH_ONLY").ok();
        let wanted = |setup: &str| only.as_deref().is_none_or(|o| o.split(',').any(|w| w.trim() == setup));
        if wanted("skein-1") {
            let p1 = free_port();
            let one = skein(
                &dir,
                "skein-1",
                &format!(
                    "listeners: [{{name: http, address: '127.0.0.1:{p1}'}}]\nvirtualHosts: [{{name: b, domains: [bench], routes: [{{route: [{{cluster: up}}]}}]}}]\nclusters: [{{name: up, endpoints: ['{up}']}}]\n"
                ),
            );
            eprintln!("{}", one.name);
            rows.push(measure("1 skein-proxy", addr(p1), &[&one], seconds).await);
            drop(one);
        }

        if wanted("mtls") {
            let (pa, pb) = (free_port(), free_port());
            let (client_id, server_id) = mesh_certs(&dir);
            let server = skein(
                &dir,
                "skein-server",
                &format!(
                    "{server_id}listeners: [{{name: inbound, address: '127.0.0.1:{pb}', peerAuthentication: STRICT}}]\nvirtualHosts: [{{name: b, domains: ['*'], routes: [{{route: [{{cluster: app}}]}}]}}]\nclusters: [{{name: app, endpoints: ['{up}']}}]\n"
                ),
            );
            let client_side = skein(
                &dir,
                "skein-client",
                &format!(
                    "{client_id}listeners: [{{name: outbound, address: '127.0.0.1:{pa}'}}]\nvirtualHosts: [{{name: b, domains: [bench], routes: [{{route: [{{cluster: 'outbound|80||bench'}}]}}]}}]\nclusters: [{{name: 'outbound|80||bench', endpoints: ['127.0.0.1:{pb}'], tls: {{mode: ISTIO_MUTUAL}}}}]\n"
                ),
            );
            eprintln!("2 skein-proxies, mTLS");
            rows.push(measure("2 skein-proxies, mTLS", addr(pa), &[&client_side, &server], seconds).await);
            drop((client_side, server));
        }

        if wanted("haproxy") {
            let ph = free_port();
            let ha = haproxy(&dir, ph, up);
            eprintln!("{}", ha.name);
            rows.push(measure("HAProxy (Debian)", addr(ph), &[&ha], seconds).await);
            drop(ha);
        }
        render(&rows, seconds)
    });
    print!("{report}");
    let out = dir.join("report.md");
    std::fs::write(&out, &report).unwrap();
    eprintln!("report written to {}", out.display());
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A throwaway CA and two workload identities; returns the `identity:` YAML of each side.
fn mesh_certs(dir: &Path) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    std::fs::write(dir.join("root.pem"), root.pem()).unwrap();
    let issue = |sa: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let id = format!("spiffe://cluster.local/ns/bench/sa/{sa}");
        p.subject_alt_names = vec![SanType::URI(id.as_str().try_into().unwrap())];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{sa}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{sa}.key")), key.serialize_pem()).unwrap();
        format!(
            "identity: {{certChain: '{0}/{sa}.pem', privateKey: '{0}/{sa}.key', rootCert: '{0}/root.pem'}}\n",
            dir.display()
        )
    };
    (issue("client"), issue("server"))
}

fn render(rows: &[Row], seconds: u64) -> String {
    let direct = &rows[0];
    let ha = rows.iter().find(|r| r.name.starts_with("HAProxy"));
    let mut s = format!(
        "Fixed rate {RATE} req/s ({BODY} B responses, {CONNECTIONS} keep-alive connections, {seconds} s); saturation with {SATURATION_CLIENTS} closed-loop clients ({seconds} s). Loopback, {} CPUs.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    s += "| setup | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | vCPU @1000 rps | RSS MiB | saturation req/s | req/s per core | per core vs HAProxy |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        let proxy_only = |v: String| if r.name == "direct" { "–".to_string() } else { v };
        let vs = match ha {
            Some(h) if h.rps_per_core > 0.0 && r.rps_per_core.is_finite() => {
                format!("{:.2}×", r.rps_per_core / h.rps_per_core)
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            r.name,
            r.p50,
            r.p99,
            proxy_only(format!("{:.3}", r.p50 - direct.p50)),
            proxy_only(format!("{:.3}", r.p99 - direct.p99)),
            r.errors,
            proxy_only(format!("{:.3}", r.vcpu_at_rate)),
            proxy_only(format!("{:.1}", r.rss)),
            r.sat_rps,
            proxy_only(format!("{:.0}", r.rps_per_core)),
            proxy_only(vs),
        );
    }
    s
}
