//! Graceful drain: on SIGTERM the proxy reports not-ready, stops accepting, lets each HTTP
//! connection finish its in-flight requests (HTTP/1.1 closes after the current response,
//! HTTP/2 sends GOAWAY), and exits when no connection is left or the drain timeout passes.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::watch;

/// Shared drain state; cheap to clone.
#[derive(Clone)]
pub struct Drain {
    draining: Arc<watch::Sender<bool>>,
    /// Terminating: readiness fails, connections are still served as usual.
    unready: Arc<std::sync::atomic::AtomicBool>,
    active: Arc<AtomicUsize>,
}

impl Default for Drain {
    fn default() -> Self {
        Self { draining: Arc::new(watch::channel(false).0), unready: Arc::default(), active: Arc::default() }
    }
}

/// Held by a connection while it is open.
pub struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    /// Starts draining.
    pub fn start(&self) {
        self.draining.send_replace(true);
    }

    /// Fails readiness without touching connections: the termination drain, while the
    /// endpoints still send traffic here.
    pub fn stop_ready(&self) {
        self.unready.store(true, Ordering::Release);
    }

    /// Whether readiness must fail (terminating or draining).
    pub fn is_draining(&self) -> bool {
        self.unready.load(Ordering::Acquire) || *self.draining.borrow()
    }

    /// Resolves once draining starts.
    pub async fn signaled(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a connection as open until the guard drops.
    pub fn track(&self) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.active.clone())
    }

    /// Open connections.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is open (polled; drain is a once-per-process event).
    pub async fn idle(&self) {
        while self.active() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
