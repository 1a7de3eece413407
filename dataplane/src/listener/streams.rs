//! The requests of one HTTP connection as the connection sees them: how they end (Envoy's
//! premature-reset rule against rapid reset spread over time) and whether they move (the idle
//! and stream idle timeouts).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::http::{Timeouts, progress::Progress};

/// A request the client abandons within this time of starting it was reset prematurely
/// (Envoy's `premature_reset_min_stream_lifetime_seconds`).
const PREMATURE_LIFETIME: Duration = Duration::from_secs(1);
/// Envoy's `premature_reset_total_stream_count`.
const PREMATURE_TOTAL: u64 = 500;
/// After a stream was timed out, how long it may take to end before the connection is closed
/// under it (a response the client never reads is never polled again, so cannot fail itself).
const END_GRACE: Duration = Duration::from_secs(1);

/// One connection's requests.
pub(super) struct Streams {
    closed: AtomicU64,
    premature: AtomicU64,
    /// Signalled when the connection breaks the premature-reset rule.
    pub(super) abusive: Notify,
    live: Mutex<Live>,
}

struct Live {
    /// At most the connection's stream limit (one for HTTP/1.1): a list is cheaper than hashing.
    streams: Vec<(u64, Arc<Progress>)>,
    next: u64,
    /// When the last request in flight ended (or the connection started).
    idle_since: Instant,
}

/// Why the watchdog ends a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// No request in flight for the idle timeout: closed gracefully.
    Idle,
    /// A timed-out request did not end: closed at once.
    Stuck,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            closed: AtomicU64::new(0),
            premature: AtomicU64::new(0),
            abusive: Notify::new(),
            live: Mutex::new(Live { streams: Vec::new(), next: 0, idle_since: Instant::now() }),
        }
    }
}

impl Streams {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request starts; the guard follows it until its response is sent or abandoned.
    pub(super) fn start(self: &Arc<Self>) -> (Stream, Arc<Progress>) {
        let progress = Progress::new();
        let id = {
            let mut live = self.live();
            let id = live.next;
            live.next += 1;
            live.streams.push((id, progress.clone()));
            id
        };
        (Stream { streams: self.clone(), id, progress: progress.clone(), answered: false }, progress)
    }

    /// Rapid reset spread over time (one request and its cancel per write, never a burst):
    /// Envoy's rule. Once a connection has closed `PREMATURE_TOTAL` requests, or half as many
    /// were reset prematurely, and at least half of its closed requests were premature resets,
    /// it is closed with GOAWAY.
    fn closed(&self, premature: bool) {
        let closed = self.closed.fetch_add(1, Ordering::Relaxed) + 1;
        let resets = self.premature.fetch_add(u64::from(premature), Ordering::Relaxed) + u64::from(premature);
        if premature && resets * 2 >= closed && (closed >= PREMATURE_TOTAL || resets >= PREMATURE_TOTAL / 2) {
            self.abusive.notify_one();
        }
    }

    /// One look at the connection: times out requests that have not moved for the stream idle
    /// timeout, and says whether the connection should end.
    fn check(&self, t: Timeouts) -> Option<Ending> {
        let live = self.live();
        if live.streams.is_empty() {
            return (!t.idle.is_zero() && live.idle_since.elapsed() >= t.idle).then_some(Ending::Idle);
        }
        if t.stream_idle.is_zero() {
            return None;
        }
        for (_, p) in &live.streams {
            let idle = p.idle();
            if p.is_timed_out() && idle >= t.stream_idle + END_GRACE {
                return Some(Ending::Stuck);
            }
            if idle >= t.stream_idle && !p.is_timed_out() {
                p.time_out();
            }
        }
        None
    }

    /// Resolves when the connection should end by its timeouts; never when both are off.
    pub(super) async fn watchdog(&self, t: Timeouts) -> Ending {
        let shortest = [t.idle, t.stream_idle].into_iter().filter(|d| !d.is_zero()).min();
        let Some(shortest) = shortest else {
            return std::future::pending().await;
        };
        let tick = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            if let Some(ending) = self.check(t) {
                return ending;
            }
        }
    }
}

/// One request's life: reported when it ends, and kept in the connection's live set until
/// then. Moved into the response body once the request path has answered, so a response the
/// client is still reading counts as in flight.
pub(super) struct Stream {
    streams: Arc<Streams>,
    id: u64,
    progress: Arc<Progress>,
    answered: bool,
}

impl Stream {
    /// The request path answered: what follows is the response being sent.
    pub(super) fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Dropped unanswered: abandoned by the client (HTTP/2 RST_STREAM, or the connection).
        self.streams.closed(!self.answered && self.progress.age() < PREMATURE_LIFETIME);
        let mut live = self.streams.live();
        if let Some(i) = live.streams.iter().position(|(id, _)| *id == self.id) {
            live.streams.swap_remove(i);
        }
        if live.streams.is_empty() {
            live.idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    /// Whether the connection was found abusive (consumes the signal).
    fn abusive(s: &Streams) -> bool {
        let n = s.abusive.notified();
        tokio::pin!(n);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        n.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn premature_resets_close_the_connection_by_envoys_rule() {
        let s = Streams::default();
        // Requests answered normally never trip it.
        (0..10_000).for_each(|_| s.closed(false));
        assert!(!abusive(&s));
        let s = Streams::default();
        // Resets spread over time: the 250th premature reset, at least half of all, trips it.
        for _ in 1..PREMATURE_TOTAL / 2 {
            s.closed(true);
            s.closed(false);
        }
        assert!(!abusive(&s), "not yet");
        s.closed(true);
        assert!(abusive(&s), "half premature and 250 of them");
        // Mostly healthy traffic with some cancels (under half) does not.
        let s = Streams::default();
        for i in 0..5_000 {
            s.closed(i % 3 == 0);
        }
        assert!(!abusive(&s));
    }

    #[test]
    fn a_request_without_progress_is_timed_out_then_the_connection_if_it_does_not_end() {
        let t =
            Timeouts { idle: Duration::from_secs(3600), stream_idle: Duration::from_millis(50), ..Timeouts::default() };
        let s = Arc::new(Streams::default());
        let (stream, progress) = s.start();
        assert_eq!(s.check(t), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.check(t), None, "first the request is ended");
        assert!(progress.is_timed_out());
        std::thread::sleep(END_GRACE);
        assert_eq!(s.check(t), Some(Ending::Stuck), "then, if it does not end, the connection");
        drop(stream);
        assert_eq!(s.check(t), None, "nothing in flight and not idle for long");
    }

    #[test]
    fn a_connection_is_idle_only_with_nothing_in_flight() {
        let t = Timeouts { idle: Duration::from_millis(30), stream_idle: Duration::ZERO, ..Timeouts::default() };
        let s = Arc::new(Streams::default());
        let (mut stream, _) = s.start();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.check(t), None, "a request in flight (stream idle off)");
        stream.answered();
        drop(stream);
        assert_eq!(s.check(t), None, "the idle time starts when the last request ends");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.check(t), Some(Ending::Idle));
        // Zero turns the idle timeout off.
        let off = Timeouts { idle: Duration::ZERO, stream_idle: Duration::ZERO, ..Timeouts::default() };
        assert_eq!(s.check(off), None);
    }
}
