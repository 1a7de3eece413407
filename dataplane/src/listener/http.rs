//! HTTP/1.1 and HTTP/2 on an accepted connection: hyper's server with the proxy's limits,
//! handing each request to the request path ([`Proxy::handle`]).

use std::{sync::Arc, time::Duration};

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::debug;

use super::{
    HEAD_TIMEOUT,
    streams::{Ending, Streams},
};
use crate::http::{
    ConnInfo, Proxy,
    progress::{Inbound, Sending},
};

/// Largest request head (request line and headers) accepted; a larger one gets 431.
const MAX_HEAD: usize = 64 * 1024;
/// Most concurrent HTTP/2 streams per connection (Envoy's default is 2^31; 100 bounds memory).
const MAX_STREAMS: u32 = 100;
/// HTTP/2 streams a client may reset before the server accepted them, before the connection is
/// closed with GOAWAY ENHANCE_YOUR_CALM (rapid-reset defence, CVE-2023-44487). Half h2's default
/// of 20: a legitimate client cancels streams it has seen answered, not ones still queued.
/// This catches bursts; [`Streams`] catches resets spread over time.
const MAX_PENDING_RESETS: usize = 10;
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
    let timeouts = proxy.timeouts();
    let streams = Arc::new(Streams::default());
    let watched = streams.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let (mut stream, progress) = streams.start();
        let req = req.map(|body| Inbound::new(body, progress.clone()));
        let answer = proxy.clone().handle(req, conn.clone(), progress.clone());
        async move {
            let response = answer.await?;
            stream.answered();
            // The request stays in flight, and its progress followed, until the client has
            // the whole response.
            Ok::<_, std::convert::Infallible>(response.map(|body| Sending::new(body, progress, stream)))
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
        // RFC 8441: WebSocket (and other upgrades) over an HTTP/2 stream.
        .enable_connect_protocol()
        .keep_alive_interval(timeouts.h2_keepalive_interval)
        .keep_alive_timeout(timeouts.h2_keepalive_timeout);
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
        () = watched.abusive.notified() => {
            debug!(%peer, "requests reset prematurely: closing the connection");
            conn.as_mut().graceful_shutdown();
            // What is still in flight gets a moment; the client is not trusted with more.
            tokio::time::timeout(Duration::from_secs(1), conn).await.unwrap_or(Ok(()))
        }
        ending = watched.watchdog(timeouts) => match ending {
            Ending::Idle => {
                debug!(%peer, "idle timeout: closing the connection");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            Ending::Stuck => {
                debug!(%peer, "a timed-out request did not end: closing the connection");
                Ok(())
            }
        },
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
    use super::*;

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
