//! The `skein-proxy run --config FILE` binary: serves the file, reloads it on change and on
//! SIGHUP, and keeps the last good config when a new one is invalid.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{
    free_port,
    process::{Proc, start_proxy},
};

/// Upstream answering every request with `name`, on a thread; runs for the test's lifetime.
fn upstream(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}", name.len());
        }
    });
    addr
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    common::process::get(port, "svc", path)
}

fn config(listen: u16, weights: (u32, u32), a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "version: '{}-{}'\nlisteners: [{{name: http, address: '127.0.0.1:{listen}'}}]\nvirtualHosts:\n  - {{name: svc, domains: [svc], routes: [{{route: [{{cluster: a, weight: {}}}, {{cluster: b, weight: {}}}]}}]}}\nclusters:\n  - {{name: a, endpoints: ['{a}']}}\n  - {{name: b, endpoints: ['{b}']}}\n",
        weights.0, weights.1, weights.0, weights.1
    )
}

/// Waits up to 20 s: the six tests start a debug-built proxy each at once, and a loaded
/// 2-core machine once needed more than 10 s for the first one to serve.
fn eventually(what: &str, f: impl FnMut() -> bool) {
    common::process::eventually(what, Duration::from_secs(20), f)
}

#[test]
fn config_file_reloads_on_change_and_keeps_the_last_good_config() {
    let (a, b) = (upstream("a"), upstream("b"));
    let dir = std::env::temp_dir().join(format!("skein-proxy-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.yaml");
    let (listen, admin, status, metrics) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(&path, config(listen, (100, 0), a, b)).unwrap();
    let _proxy = start_proxy(&path, [admin, status, metrics], &[]);
    eventually("proxy serving a", || get(listen, "/").is_some_and(|r| r.1 == "a"));
    assert_eq!(get(status, "/healthz/ready").map(|r| r.0), Some(200));
    // The config dump is served on the loopback admin address only.
    assert_eq!(get(status, "/config_dump").map(|r| r.0), Some(404));
    assert_eq!(get(metrics, "/config_dump").map(|r| r.0), Some(404));

    // Invalid: weights sum to 150. Rejected, counted, and `a` keeps serving.
    std::fs::write(&path, config(listen, (100, 50), a, b)).unwrap();
    eventually("rejection counted", || {
        get(metrics, "/stats/prometheus").is_some_and(|r| r.1.contains("skein_proxy_config_rejected_total 1"))
    });
    assert_eq!(get(listen, "/").map(|r| r.1).as_deref(), Some("a"));
    assert!(get(admin, "/config_dump").unwrap().1.contains("\"version\": \"100-0\""));

    // Empty (a truncated write), then `{}`: refused like any invalid config. The listener
    // stays open, readiness stays 200, and each refusal is counted.
    for (n, text) in [(2, ""), (3, "{}\n")] {
        std::fs::write(&path, text).unwrap();
        eventually("empty config refused", || {
            get(metrics, "/stats/prometheus")
                .is_some_and(|r| r.1.contains(&format!("skein_proxy_config_rejected_total {n}")))
        });
        assert_eq!(get(listen, "/").map(|r| r.1).as_deref(), Some("a"), "{text:?} took the listener away");
        assert_eq!(get(status, "/healthz/ready").map(|r| r.0), Some(200));
    }

    // Valid again: all traffic to `b`.
    std::fs::write(&path, config(listen, (0, 100), a, b)).unwrap();
    eventually("proxy serving b", || get(listen, "/").is_some_and(|r| r.1 == "b"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_a_change_the_file_watch_cannot_see() {
    let (a, b) = (upstream("a"), upstream("b"));
    let dir = std::env::temp_dir().join(format!("skein-proxy-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.yaml");
    let (listen, admin, status, metrics) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(&path, config(listen, (100, 0), a, b)).unwrap();
    let proxy = start_proxy(&path, [admin, status, metrics], &[]);
    eventually("proxy serving a", || get(listen, "/").is_some_and(|r| r.1 == "a"));

    // New content under the old modification time: the periodic check sees no change.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, config(listen, (0, 100), a, b)).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get(listen, "/").map(|r| r.1).as_deref(), Some("a"), "reloaded without a signal");

    // SIGHUP: read now.
    let pid = proxy.0.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    eventually("proxy serving b after SIGHUP", || get(listen, "/").is_some_and(|r| r.1 == "b"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_listener_whose_port_is_taken_at_start_binds_once_the_port_is_free() {
    let a = upstream("a");
    let dir = std::env::temp_dir().join(format!("skein-proxy-taken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.yaml");
    // Someone else listens on the port when the proxy starts.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = holder.local_addr().unwrap().port();
    let (admin, status, metrics) = (free_port(), free_port(), free_port());
    std::fs::write(&path, config(listen, (100, 0), a, a)).unwrap();
    let mut proxy = start_proxy(&path, [admin, status, metrics], &[]);
    eventually("status port up", || get(status, "/healthz/ready").is_some());
    // The proxy tried and failed: the port is still the holder's (it accepts our connection).
    std::thread::sleep(Duration::from_secs(1));
    let probe = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    holder.set_nonblocking(true).unwrap();
    assert!(holder.accept().is_ok(), "the connection reached the holder, not the proxy");
    drop((probe, holder));
    // Freed: the proxy binds it without a config change or a restart.
    eventually("proxy serving once the port is free", || get(listen, "/").is_some_and(|r| r.1 == "a"));
    assert!(proxy.0.try_wait().unwrap().is_none(), "the proxy exited");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sighup_as_the_proxy_starts_does_not_end_it() {
    let a = upstream("a");
    let dir = std::env::temp_dir().join(format!("skein-proxy-early-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.yaml");
    let (listen, admin, status, metrics) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(&path, config(listen, (100, 0), a, a)).unwrap();
    let mut proxy = start_proxy(&path, [admin, status, metrics], &[]);
    // Right after start, while the proxy reads its config and opens its listeners (a deploy
    // tool that signals every process on a config change does this).
    let pid = proxy.0.id().to_string();
    std::thread::sleep(Duration::from_millis(20));
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    eventually("proxy serving after an early SIGHUP", || get(listen, "/").is_some_and(|r| r.1 == "a"));
    assert!(proxy.0.try_wait().unwrap().is_none(), "the proxy exited on SIGHUP");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readiness_fails_until_the_control_plane_has_sent_a_config() {
    // A control plane that never answers: the sidecar must not report ready with no config.
    let dir = std::env::temp_dir().join(format!("skein-proxy-unready-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (root, token) = (dir.join("root-cert.pem"), dir.join("token"));
    let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
    std::fs::write(&root, ca.cert.pem()).unwrap();
    std::fs::write(&token, "t").unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (admin, status, metrics) = (free_port(), free_port(), free_port());
    let _proxy = Proc(
        Command::new(env!("CARGO_BIN_EXE_skein-proxy"))
            .args(["run", "--discovery-address", &silent.local_addr().unwrap().to_string()])
            .args(["--discovery-root-cert", root.to_str().unwrap(), "--token-file", token.to_str().unwrap()])
            .args(["--cert-dir", dir.join("certs").to_str().unwrap()])
            .args(["--node-id", "sidecar~127.0.0.1~p.ns~ns.svc.cluster.local"])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--status-addr", &format!("127.0.0.1:{status}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("status port up", || get(status, "/healthz/ready").is_some());
    for _ in 0..10 {
        let (code, body) = get(status, "/healthz/ready").unwrap();
        assert_eq!((code, body.as_str()), (503, "no configuration yet\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Upstream that answers after `delay`.
fn slow_upstream(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow");
            });
        }
    });
    addr
}

/// A request on its way, on a thread of its own: its answer, if any.
type InFlight = std::thread::JoinHandle<Option<(u16, String)>>;

/// A proxy serving one request in flight to an upstream that answers after `delay`, with
/// `--drain-timeout drain`: (proxy, the request, status port, listener port, scratch dir).
fn one_request_in_flight(tag: &str, delay: Duration, drain: &str) -> (Proc, InFlight, u16, u16, std::path::PathBuf) {
    let slow = slow_upstream(delay);
    let dir = std::env::temp_dir().join(format!("skein-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.yaml");
    let (listen, admin, status, metrics) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(&file, config(listen, (100, 0), slow, slow)).unwrap();
    let proxy = start_proxy(&file, [admin, status, metrics], &["--drain-timeout", drain]);
    eventually("readiness", || get(status, "/healthz/ready").is_some_and(|r| r.0 == 200));
    let in_flight = std::thread::spawn(move || get(listen, "/"));
    std::thread::sleep(Duration::from_millis(300));
    (proxy, in_flight, status, listen, dir)
}

/// Sends SIGTERM.
fn sigterm(proxy: &Proc) {
    let pid = proxy.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

/// Waits at most `limit` for the proxy to exit: its status and how long that took.
fn wait_exit(proxy: &mut Proc, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = proxy.0.try_wait().unwrap() {
            return (s, start.elapsed());
        }
        assert!(start.elapsed() < limit, "proxy still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_in_flight_requests_fails_readiness_and_exits() {
    let (mut proxy, in_flight, status, listen, dir) = one_request_in_flight("drain", Duration::from_millis(1500), "5s");
    sigterm(&proxy);
    eventually("readiness to fail while draining", || get(status, "/healthz/ready").is_some_and(|r| r.0 == 503));
    assert!(TcpStream::connect(("127.0.0.1", listen)).is_err(), "no new connections while draining");
    assert_eq!(in_flight.join().unwrap(), Some((200, "slow".into())), "the in-flight request completes");
    let (exit, took) = wait_exit(&mut proxy, Duration::from_secs(5));
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(2), "exits once idle, not at the drain timeout");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_drain_timeout_bounds_how_long_a_stuck_request_holds_the_exit() {
    let (mut proxy, in_flight, _, _, dir) = one_request_in_flight("drain-timeout", Duration::from_secs(20), "1s");
    let start = Instant::now();
    sigterm(&proxy);
    let (exit, _) = wait_exit(&mut proxy, Duration::from_secs(5));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "exited before the drain timeout: {took:?}");
    assert!(exit.success(), "{exit}");
    assert_ne!(in_flight.join().unwrap().map(|r| r.0), Some(200), "the stuck request cannot have completed");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_termination_drain_keeps_serving_new_connections_while_readiness_fails() {
    // Istio's terminationDrainDuration: endpoints still name a terminating pod for a moment;
    // a client sent there meanwhile must be served, not refused.
    let upstream = slow_upstream(Duration::from_millis(10));
    let dir = std::env::temp_dir().join(format!("skein-termination-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.yaml");
    let (listen, admin, status, metrics) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(&file, config(listen, (100, 0), upstream, upstream)).unwrap();
    let mut proxy = start_proxy(&file, [admin, status, metrics], &["--termination-drain-duration", "2s"]);
    eventually("readiness", || get(status, "/healthz/ready").is_some_and(|r| r.0 == 200));
    let start = Instant::now();
    sigterm(&proxy);
    eventually("readiness to fail", || get(status, "/healthz/ready").is_some_and(|r| r.0 == 503));
    assert_eq!(get(listen, "/"), Some((200, "slow".into())), "a new connection during the termination drain is served");
    assert!(start.elapsed() < Duration::from_secs(2));
    let (exit, _) = wait_exit(&mut proxy, Duration::from_secs(5));
    assert!(start.elapsed() >= Duration::from_millis(1900), "exited before the termination drain ended");
    assert!(exit.success(), "{exit}");
    assert!(TcpStream::connect(("127.0.0.1", listen)).is_err(), "closed after it");
    std::fs::remove_dir_all(&dir).ok();
}
