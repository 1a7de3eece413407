//! HTTP/1.1 and HTTP/2 on an accepted connection: hyper's server with the proxy's limits,
//! handing each request to the request path ([`Proxy::handle`]).

use std::{sync::Arc, time::Duration};

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::debug;

use super::HEAD_TIMEOUT;
use crate::http::{ConnInfo, Proxy};

/// Largest request head (request line and headers) accepted; a larger one gets 431.
const MAX_HEAD: usize = 64 * 1024;
/// Most concurrent HTTP/2 streams per connection (Envoy's default is 2^31; 100 bounds memory).
const MAX_STREAMS: u32 = 100;
/// HTTP/2 streams a client may reset before the server accepted them, before the connection is
/// closed with GOAWAY ENHANCE_YOUR_CALM (rapid-reset defence, CVE-2023-44487). Half h2's default
/// of 20: a legitimate client cancels streams it has seen answered, not ones still queued. (A
/// flood spread over time is the data-plane hardening issue's: this bounds bursts only.)
const MAX_PENDING_RESETS: usize = 10;

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN `h2` under TLS) on one connection.
/// Public so the request path can be fuzzed over an in-memory stream.
pub async fn serve_conn<I>(io: I, proxy: Arc<Proxy>, conn: Arc<ConnInfo>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let drain = proxy.drain().clone();
    let svc = service_fn(move |req: Request<Incoming>| proxy.clone().handle(req, conn.clone()));
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
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended");
    }
}
