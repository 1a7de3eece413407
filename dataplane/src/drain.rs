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
    /// Listeners closed on request (Envoy's admin `POST /drain_listeners`), `None` until then.
    stopped: Arc<watch::Sender<Option<StopListeners>>>,
}

/// Which listeners `POST /drain_listeners` closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopListeners {
    /// Every listener.
    All,
    /// Inbound ones only (`?inboundonly`): the workload gets no new connections, its own
    /// outbound calls still work.
    InboundOnly,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: Arc::new(watch::channel(false).0),
            unready: Arc::default(),
            active: Arc::default(),
            stopped: Arc::new(watch::channel(None).0),
        }
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

    /// Whether readiness must fail (terminating, draining, or every listener closed on
    /// request: in Istio the readiness port is itself an Envoy listener that `drain_listeners`
    /// closes, so the pod goes unready and leaves its Service's endpoints).
    pub fn is_draining(&self) -> bool {
        self.unready.load(Ordering::Acquire)
            || *self.draining.borrow()
            || *self.stopped.borrow() == Some(StopListeners::All)
    }

    /// Resolves once draining starts.
    pub async fn signaled(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Closes listeners and keeps them closed whatever config comes next, as Envoy's
    /// `drain_listeners` does: new connections are refused while open ones go on. Closing all
    /// of them also fails readiness (see [`Drain::is_draining`]); until the endpoint is
    /// withdrawn, clients see it refuse connections. A wider request wins over a narrower
    /// one; nothing reopens them but a restart.
    pub fn stop_listeners(&self, which: StopListeners) {
        self.stopped.send_if_modified(|s| {
            let wider = match *s {
                None => true,
                Some(StopListeners::InboundOnly) => which == StopListeners::All,
                Some(StopListeners::All) => false,
            };
            if wider {
                *s = Some(which);
            }
            wider
        });
    }

    /// Which listeners are closed on request, if any.
    pub fn stopped_listeners(&self) -> watch::Receiver<Option<StopListeners>> {
        self.stopped.subscribe()
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
