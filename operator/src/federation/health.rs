//! Health of the peers' east-west gateways, from probes of their readiness port: which gateway
//! addresses are withdrawn from the `.global` hosts. Pure (time is passed in), table-tested.
//!
//! A gateway is withdrawn only after its probes have failed for a whole lease with no success
//! in between, as seen by this process. Never probed counts as healthy ("keep the last state"):
//! an operator restart withdraws nothing, so it never makes cross-cluster requests fail fast;
//! one success puts a withdrawn gateway back at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

/// Port and path probed on a peer's east-west gateway (the gateway proxy's readiness, Istio's
/// `status-port`, which the gateway's LoadBalancer Service exposes).
pub const PROBE_PORT: u16 = 15021;
/// Readiness path on [`PROBE_PORT`].
pub const PROBE_PATH: &str = "/healthz/ready";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    /// Failing since then, with no success since.
    Down(Instant),
}

/// What the probes said, per gateway address.
#[derive(Debug, Clone)]
pub struct GatewayHealth {
    lease: Duration,
    states: BTreeMap<String, State>,
}

impl GatewayHealth {
    /// Gateways failing for `lease` are withdrawn; a zero lease turns withdrawal off.
    pub fn new(lease: Duration) -> Self {
        Self { lease, states: BTreeMap::new() }
    }

    /// Records a probe of `address` at `now`.
    pub fn record(&mut self, address: &str, ready: bool, now: Instant) {
        let next = match (self.states.get(address), ready) {
            (_, true) => State::Up,
            (Some(State::Down(since)), false) => State::Down(*since),
            (_, false) => State::Down(now),
        };
        self.states.insert(address.to_string(), next);
    }

    /// Forgets addresses no peer has any more.
    pub fn retain(&mut self, addresses: &BTreeSet<String>) {
        self.states.retain(|a, _| addresses.contains(a));
    }

    /// The addresses withdrawn at `now`.
    pub fn withdrawn(&self, now: Instant) -> BTreeSet<String> {
        if self.lease.is_zero() {
            return BTreeSet::new();
        }
        self.states
            .iter()
            .filter(|(_, s)| matches!(s, State::Down(since) if now.duration_since(*since) >= self.lease))
            .map(|(a, _)| a.clone())
            .collect()
    }
}

/// Whether an HTTP response head says ready (a 2xx status line).
pub fn ready_response(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    matches!((parts.next(), parts.next()), (Some(v), Some(code)) if v.starts_with(b"HTTP/1.") && code.len() == 3 && code[0] == b'2')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_is_withdrawn_only_after_failing_for_a_whole_lease_and_returns_on_one_success() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut h = GatewayHealth::new(Duration::from_secs(30));
        let gw = "192.0.2.20";
        // Never probed: kept (a restart withdraws nothing).
        assert!(h.withdrawn(s(1000)).is_empty());
        let steps: &[(u64, bool, u64, bool)] = &[
            // (probe at, ready, check at, withdrawn)
            (0, true, 1, false),
            (10, false, 11, false),
            (20, false, 39, false),
            (30, false, 40, true),
            (45, true, 45, false),
            (50, false, 79, false),
            (80, false, 80, true),
        ];
        for &(at, ready, check, want) in steps {
            h.record(gw, ready, s(at));
            assert_eq!(h.withdrawn(s(check)).contains(gw), want, "probe at {at}s ready={ready}, checked at {check}s");
        }
        // An address no peer has any more is forgotten.
        h.retain(&BTreeSet::new());
        assert!(h.withdrawn(s(1000)).is_empty());
        // Lease 0: never withdrawn.
        let mut off = GatewayHealth::new(Duration::ZERO);
        off.record(gw, false, s(0));
        assert!(off.withdrawn(s(1000)).is_empty());
    }

    #[test]
    fn only_a_2xx_status_line_is_ready() {
        for (head, want) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], true),
            (b"HTTP/1.0 204 No Content\r\n", true),
            (b"HTTP/1.1 503 Service Unavailable\r\n", false),
            (b"HTTP/1.1 20", false),
            (b"", false),
            (b"SSH-2.0-OpenSSH\r\n", false),
        ] {
            assert_eq!(ready_response(head), want, "{:?}", String::from_utf8_lossy(head));
        }
    }
}
