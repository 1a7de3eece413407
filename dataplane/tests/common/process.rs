//! `skein-proxy` run as a process, and plain HTTP/1.1 to it, for the tests of the binary.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `skein-proxy run --config config` with admin, status and metrics on these loopback ports,
/// and `extra` arguments.
pub fn start_proxy(config: &Path, [admin, status, metrics]: [u16; 3], extra: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_skein-proxy"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--status-addr", &format!("127.0.0.1:{status}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Status and body of `GET path` with `Host: host` on a loopback `port`, if anything answered.
pub fn get(port: u16, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// Polls `f` every 50 ms until it holds, failing after `limit` with `what`.
pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
