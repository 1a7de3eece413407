//! HTTP/1.1 and HTTP/2 on an accepted connection: hyper's server with the proxy's limits,
//! handing each request to the request path ([`Proxy::handle`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;
use tracing::debug;

use super::HEAD_TIMEOUT;
use crate::http::{ConnInfo, Proxy};

/// Largest request head (request line and headers) accepted; a larger one gets 431.
const MAX_HEAD: usize = 64 * 1024;
/// Most concurrent HTTP/2 streams per connection (Envoy's default is 2^31; 100 bounds memory).
const MAX_STREAMS: u32 = 100;
/// HTTP/2 streams a client may reset before the server accepted them, before the connection is
/// closed with GOAWAY ENHANCE_YOUR_CALM (rapid-reset defence, CVE-2023-44487). Half h2's default
/// of 20: a legitimate client cancels streams it has seen answered, not ones still queued.
/// This catches bursts; [`ResetWatch`] catches resets spread over time.
const MAX_PENDING_RESETS: usize = 10;
/// A request the client abandons within this time of starting it was reset prematurely
/// (Envoy's `premature_reset_min_stream_lifetime_seconds`).
const PREMATURE_LIFETIME: Duration = Duration::from_secs(1);
/// Envoy's `premature_reset_total_stream_count`.
const PREMATURE_TOTAL: u64 = 500;

/// Rapid reset spread over time (one request and its cancel per write, never a burst): Envoy's
/// rule. Once a connection has closed `PREMATURE_TOTAL` requests, or half as many were reset
/// prematurely, and at least half of its closed requests were premature resets, it is closed
/// with GOAWAY.
#[derive(Default)]
struct ResetWatch {
    closed: AtomicU64,
    premature: AtomicU64,
    abusive: Notify,
}

impl ResetWatch {
    fn closed(&self, premature: bool) {
        let closed = self.closed.fetch_add(1, Ordering::Relaxed) + 1;
        let resets = self.premature.fetch_add(u64::from(premature), Ordering::Relaxed) + u64::from(premature);
        if premature && resets * 2 >= closed && (closed >= PREMATURE_TOTAL || resets >= PREMATURE_TOTAL / 2) {
            self.abusive.notify_one();
        }
    }
}

/// One request's life, reported to its connection's [`ResetWatch`] when it ends: a request
/// dropped before its handler finished was abandoned by the client (HTTP/2 RST_STREAM).
struct Stream {
    watch: Arc<ResetWatch>,
    start: Instant,
    answered: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.watch.closed(!self.answered && self.start.elapsed() < PREMATURE_LIFETIME);
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN `h2` under TLS) on one connection.
/// Public so the request path can be fuzzed over an in-memory stream.
pub async fn serve_conn<I>(mut io: I, proxy: Arc<Proxy>, conn: Arc<ConnInfo>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    // Protocol detection is bounded like the request head: a client that connects and sends
    // nothing, or part of the HTTP/2 preface, is closed at the head timeout.
    let first = match tokio::time::timeout(HEAD_TIMEOUT, detect(&mut io)).await {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "connection closed before a request");
            return;
        }
        Err(_) => {
            debug!(%peer, "no request within the head timeout: closed");
            return;
        }
    };
    let io = crate::capture::Rewind::new(first, io);
    let drain = proxy.drain().clone();
    let watch = Arc::new(ResetWatch::default());
    let abuse = watch.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let stream = Stream { watch: watch.clone(), start: Instant::now(), answered: false };
        let answer = proxy.clone().handle(req, conn.clone());
        async move {
            // Bound to a local so the future owns the guard (a closure would capture only the
            // `answered` flag, a copy, and drop the guard at once).
            let mut stream = stream;
            let r = answer.await;
            stream.answered = true;
            r
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_header_list_size(MAX_HEAD as u32)
        .keep_alive_interval(Duration::from_secs(60));
    // With upgrades: a WebSocket (or any HTTP/1.1 `Upgrade`) switches after its 101.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = drain.signaled() => {
            // Finish what is in flight, then close (HTTP/2: GOAWAY).
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = abuse.abusive.notified() => {
            debug!(%peer, "requests reset prematurely: closing the connection");
            conn.as_mut().graceful_shutdown();
            // What is still in flight gets a moment; the client is not trusted with more.
            tokio::time::timeout(Duration::from_secs(1), conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended");
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the protocol is known: the whole HTTP/2 preface, or the first byte that
/// differs from it (HTTP/1.x). Returns what was read, to be put back in front of the stream.
async fn detect<I: tokio::io::AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; H2_PREFACE.len()];
    let mut got = 0;
    loop {
        let n = io.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed during protocol detection"));
        }
        got += n;
        if got == H2_PREFACE.len() || buf[..got] != H2_PREFACE[..got] {
            buf.truncate(got);
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[test]
    fn premature_resets_close_the_connection_by_envoys_rule() {
        let w = ResetWatch::default();
        // Requests answered normally never trip it.
        (0..10_000).for_each(|_| w.closed(false));
        assert!(tokio_test_notified(&w).is_none());
        let w = ResetWatch::default();
        // Resets spread over time: the 250th premature reset, at least half of all, trips it.
        for _ in 1..PREMATURE_TOTAL / 2 {
            w.closed(true);
            w.closed(false);
        }
        assert!(tokio_test_notified(&w).is_none(), "not yet");
        w.closed(true);
        assert!(tokio_test_notified(&w).is_some(), "half premature and 250 of them");
        // Mostly healthy traffic with some cancels (under half) does not.
        let w = ResetWatch::default();
        for i in 0..5_000 {
            w.closed(i % 3 == 0);
        }
        assert!(tokio_test_notified(&w).is_none());
    }

    /// Whether the watch has signalled (consumes the signal).
    fn tokio_test_notified(w: &ResetWatch) -> Option<()> {
        let n = w.abusive.notified();
        tokio::pin!(n);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        n.as_mut().poll(&mut cx).is_ready().then_some(())
    }

    #[tokio::test]
    async fn detection_ends_at_the_first_difference_or_the_whole_preface() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n").await.unwrap();
        let got = detect(&mut b).await.unwrap();
        assert!(!got.is_empty() && b"GET / HTTP/1.1\r\n".starts_with(&got));
        let (mut a, mut b) = tokio::io::duplex(64);
        // The preface in pieces: detection waits for all of it.
        tokio::io::AsyncWriteExt::write_all(&mut a, &H2_PREFACE[..23]).await.unwrap();
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), detect(&mut b)).await;
        assert!(pending.is_err(), "23 of 24 preface bytes are not a protocol yet");
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, H2_PREFACE).await.unwrap();
        assert_eq!(detect(&mut b).await.unwrap(), H2_PREFACE);
    }
}
