//! Connection limits, in the spirit of Envoy's overload manager: a proxy-wide cap and a cap
//! per listener. A connection over either is closed as soon as it is accepted (counted as
//! `envoy_listener_downstream_cx_overflow`), so the proxy never runs out of descriptors: the
//! admin, readiness and metrics endpoints, outside these caps (each has a small cap of its
//! own within the reserve), stay reachable under any data-plane load.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// Descriptors kept out of the connection budget: admin endpoints, the control-plane stream,
/// config and certificate files, DNS, logs.
const RESERVED_FDS: u64 = 256;
/// Largest default cap, whatever the descriptor limit.
const MAX_DEFAULT: u64 = 1 << 20;

/// The caps every listener of a proxy applies.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    limit: usize,
    per_listener: usize,
}

impl ConnectionLimits {
    /// At most `total` downstream connections in all, and `per_listener` on any one listener.
    pub fn new(total: usize, per_listener: usize) -> Self {
        let limit = total.min(Semaphore::MAX_PERMITS);
        Self { total: Arc::new(Semaphore::new(limit)), limit, per_listener }
    }

    /// Caps derived from the process's descriptor limit: every proxied connection needs two
    /// descriptors (downstream and upstream), and some are reserved for the proxy itself.
    pub fn from_fd_limit(fd_limit: u64) -> Self {
        let n = (fd_limit.saturating_sub(RESERVED_FDS) / 2).clamp(1, MAX_DEFAULT) as usize;
        Self::new(n, n)
    }

    /// The proxy-wide cap.
    pub fn total(&self) -> usize {
        self.limit
    }

    /// The cap of one listener, to pass to [`ConnectionLimits::admit`].
    pub fn listener(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.per_listener.min(Semaphore::MAX_PERMITS)))
    }

    /// A place for one more connection on `listener`, or `None` when either cap is reached.
    /// The connection holds the returned permits until it closes.
    pub fn admit(&self, listener: &Arc<Semaphore>) -> Option<Admitted> {
        let own = listener.clone().try_acquire_owned().ok()?;
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(Admitted { _listener: own, _total: total })
    }

    /// Connections open now, all listeners together.
    pub fn in_use(&self) -> usize {
        self.limit.saturating_sub(self.total.available_permits())
    }
}

/// Held by an admitted connection until it closes.
#[derive(Debug)]
pub struct Admitted {
    _listener: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// The soft limit on open descriptors, raised to the hard limit first (as the Go runtime does
/// for every program): a proxy's connections are its descriptors.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// The soft limit on open descriptors as it is.
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Accept errors (out of descriptors, above all) are reported once per interval with the
/// number seen, not once per retry: a full table must not also flood the log.
#[derive(Debug)]
pub struct AcceptErrors {
    last: Mutex<Option<Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

/// Between two accept-error log lines.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Default for AcceptErrors {
    fn default() -> Self {
        Self { last: Mutex::new(None), suppressed: 0.into() }
    }
}

impl AcceptErrors {
    /// Records an accept error; logs it unless one was logged within the interval.
    pub fn record(&self, listener: &str, error: &std::io::Error) -> bool {
        use std::sync::atomic::Ordering;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < ACCEPT_LOG_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *last = Some(now);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        warn!(listener, error = %error, suppressed, "accept failed");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_caps_hold_and_a_closed_connection_frees_its_place() {
        let limits = ConnectionLimits::new(3, 2);
        let (a, b) = (limits.listener(), limits.listener());
        let a1 = limits.admit(&a).unwrap();
        let _a2 = limits.admit(&a).unwrap();
        assert!(limits.admit(&a).is_none(), "per-listener cap");
        let _b1 = limits.admit(&b).unwrap();
        assert!(limits.admit(&b).is_none(), "total cap");
        assert_eq!(limits.in_use(), 3);
        drop(a1);
        assert!(limits.admit(&b).is_some(), "a closed connection frees its place");
    }

    #[test]
    fn defaults_leave_room_for_the_proxy_itself() {
        let l = ConnectionLimits::from_fd_limit(1024);
        assert_eq!(l.per_listener, 384);
        assert_eq!(l.total.available_permits(), 384);
        assert_eq!(ConnectionLimits::from_fd_limit(10).per_listener, 1);
    }

    #[test]
    fn accept_errors_are_logged_once_per_interval() {
        let e = AcceptErrors::default();
        let err = std::io::Error::other("too many open files");
        assert!(e.record("l", &err));
        assert!(!e.record("l", &err));
        assert!(!e.record("l", &err));
        assert_eq!(e.suppressed.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
