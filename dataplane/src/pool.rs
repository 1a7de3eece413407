//! Upstream HTTP connections of one cluster (or of passthrough traffic), pooled per endpoint.
//!
//! HTTP/1.1 connections carry one request at a time: a request takes an idle connection (or
//! opens one) and the connection goes back to the pool when the response body has been read to
//! its end. That is all a proxy needs, and it costs less per request than hyper-util's general
//! client did here: no URI to format and parse to find the pool, no pool-key hashing under a
//! global lock, no task spawned per request to wait until the connection is reusable.
//!
//! HTTP/2 clusters share one multiplexed connection per endpoint, replaced when it closes or
//! has carried `maxRequestsPerConnection` requests.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    Request, Response,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioExecutor;

use crate::connect::{MeshConnector, MeshStream};
pub use crate::http::body::RequestBody;

/// Idle HTTP/1.1 connections kept per endpoint; one given back beyond that is closed.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// An idle connection unused this long is closed rather than reused (hyper-util's default
/// was 90 s; upstream servers commonly close idle connections after 60 s or more).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pooled connection may take to be ready for its next request. Normally it is at
/// once; one still sending an earlier request's body (the server answered before reading it
/// all) is left to finish, and the request takes another connection.
const READY_WAIT: Duration = Duration::from_millis(100);

type Hasher = foldhash::fast::RandomState;

/// Why a request got no response.
#[derive(Debug)]
pub enum PoolError {
    /// No connection could be made (refused, unreachable, timeout, TLS handshake).
    Connect(std::io::Error),
    /// The connection failed or closed before the response headers.
    Reset(hyper::Error),
}

/// The connections of one cluster, by endpoint.
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: MeshConnector,
    http2: bool,
    /// `maxRequestsPerConnection`: a connection is retired after this many requests.
    max_requests: Option<u32>,
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, Hasher>>,
    shared: Mutex<HashMap<SocketAddr, Shared, Hasher>>,
}

/// An HTTP/1.1 connection and the requests it has carried.
struct H1 {
    tx: http1::SendRequest<RequestBody>,
    requests: u32,
}

struct Idle {
    conn: H1,
    since: Instant,
}

/// The HTTP/2 connection to one endpoint.
struct Shared {
    tx: http2::SendRequest<RequestBody>,
    requests: u32,
}

impl Pool {
    /// A pool connecting with `connector`, speaking HTTP/2 (prior knowledge) when `http2`.
    pub fn new(connector: MeshConnector, http2: bool, max_requests_per_connection: Option<u32>) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                http2,
                max_requests: max_requests_per_connection.filter(|n| *n > 0),
                idle: Mutex::default(),
                shared: Mutex::default(),
            }),
        }
    }

    /// Whether a request could go out at once on a connection already open (to any endpoint):
    /// an idle HTTP/1.1 connection, or an HTTP/2 connection with room for another request.
    pub fn has_ready(&self) -> bool {
        if self.inner.http2 {
            let shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.values().any(|s| !s.tx.is_closed() && self.inner.max_requests.is_none_or(|m| s.requests < m))
        } else {
            let idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.values().any(|list| list.iter().any(|i| !i.conn.tx.is_closed()))
        }
    }

    /// Sends `req` (origin-form URI: path and query) to `addr`. An HTTP/1.1 request without a
    /// `Host` header gets the endpoint's address, as a client addressing it directly would.
    pub async fn send(&self, addr: SocketAddr, req: Request<RequestBody>) -> Result<Response<PooledBody>, PoolError> {
        self.send_waiting(addr, req, None::<()>).await
    }

    /// [`Pool::send`], holding `waiting` (the request's place in its cluster's pending queue)
    /// until the request has a connection: an open one, or a new one once established.
    pub async fn send_waiting<W: Send>(
        &self,
        addr: SocketAddr,
        req: Request<RequestBody>,
        waiting: Option<W>,
    ) -> Result<Response<PooledBody>, PoolError> {
        if self.inner.http2 { self.send_h2(addr, req, waiting).await } else { self.send_h1(addr, req, waiting).await }
    }

    async fn send_h1<W: Send>(
        &self,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
        mut waiting: Option<W>,
    ) -> Result<Response<PooledBody>, PoolError> {
        default_host(&mut req, addr);
        // A pooled connection may have been closed by the server while idle; that shows when
        // it is used. A request not yet written goes to the next one, and at the latest to a
        // new connection, so this loop ends.
        loop {
            let (mut conn, reused) = match self.inner.checkout(addr) {
                Some(conn) => (conn, true),
                None => (self.inner.connect_h1(addr).await?, false),
            };
            waiting.take();
            if reused && !matches!(tokio::time::timeout(READY_WAIT, conn.tx.ready()).await, Ok(Ok(()))) {
                continue;
            }
            match conn.tx.try_send_request(req).await {
                Ok(resp) => {
                    conn.requests += 1;
                    let back = Giveback { conn, addr, pool: Arc::downgrade(&self.inner) };
                    return Ok(resp.map(|body| PooledBody::new(body, Some(back))));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(PoolError::Reset(e.into_error())),
                },
            }
        }
    }

    /// Sends an HTTP/1.1 `Upgrade` request (WebSocket and the like) on a connection of its
    /// own: after a `101` the connection belongs to the upgraded protocol and never returns to
    /// the pool. The response keeps hyper's upgrade handle in its extensions.
    pub async fn send_upgrade<W: Send>(
        &self,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
        waiting: Option<W>,
    ) -> Result<Response<PooledBody>, PoolError> {
        default_host(&mut req, addr);
        let io = self.inner.connect(addr).await?;
        let (mut tx, conn) = http1::handshake(io).await.map_err(PoolError::Reset)?;
        drop(waiting);
        drive(addr, conn.with_upgrades());
        let resp = tx.send_request(req).await.map_err(PoolError::Reset)?;
        Ok(resp.map(|body| PooledBody::new(body, None)))
    }

    async fn send_h2<W: Send>(
        &self,
        addr: SocketAddr,
        req: Request<RequestBody>,
        waiting: Option<W>,
    ) -> Result<Response<PooledBody>, PoolError> {
        // HTTP/2 needs the scheme and authority pseudo-headers: the endpoint, as before.
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{addr}{pq}").parse().map_err(|_| PoolError::Connect(invalid("request path")))?;
        let req = Request::from_parts(parts, body);
        let tx = match self.inner.shared_h2(addr) {
            Some(tx) => tx,
            None => {
                let tx = self.inner.connect_h2(addr).await?;
                self.inner
                    .shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(addr, Shared { tx: tx.clone(), requests: 1 });
                tx
            }
        };
        drop(waiting);
        let mut tx = tx;
        match tx.send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| PooledBody::new(body, None))),
            Err(e) => Err(PoolError::Reset(e)),
        }
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("invalid {what}"))
}

impl Inner {
    /// The most recently used idle connection to `addr` that is still open and not too old.
    fn checkout(&self, addr: SocketAddr) -> Option<H1> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(i) = list.pop() {
            if !i.conn.tx.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT {
                return Some(i.conn);
            }
        }
        None
    }

    /// Puts a connection whose response is complete back for the next request.
    fn give_back(&self, addr: SocketAddr, conn: H1) {
        if conn.tx.is_closed() || self.max_requests.is_some_and(|m| conn.requests >= m) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        // The oldest are at the front: drop the expired ones while here.
        let now = Instant::now();
        let expired = list.iter().take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT).count();
        list.drain(..expired);
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { conn, since: now });
        }
    }

    /// The open HTTP/2 connection to `addr`, counting the request against its limit.
    fn shared_h2(&self, addr: SocketAddr) -> Option<http2::SendRequest<RequestBody>> {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let s = shared.get_mut(&addr)?;
        if s.tx.is_closed() || self.max_requests.is_some_and(|m| s.requests >= m) {
            // Streams already open on it finish; new ones go to a new connection.
            shared.remove(&addr);
            return None;
        }
        s.requests += 1;
        Some(s.tx.clone())
    }

    async fn connect(&self, addr: SocketAddr) -> Result<MeshStream, PoolError> {
        self.connector.connect(addr).await.map_err(PoolError::Connect)
    }

    async fn connect_h1(&self, addr: SocketAddr) -> Result<H1, PoolError> {
        let io = self.connect(addr).await?;
        let (tx, conn) = http1::handshake(io).await.map_err(PoolError::Reset)?;
        drive(addr, conn);
        Ok(H1 { tx, requests: 0 })
    }

    async fn connect_h2(&self, addr: SocketAddr) -> Result<http2::SendRequest<RequestBody>, PoolError> {
        let io = self.connect(addr).await?;
        let (tx, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(PoolError::Reset)?;
        drive(addr, conn);
        Ok(tx)
    }
}

/// Runs a connection's I/O task until the connection closes.
fn drive(addr: SocketAddr, conn: impl std::future::Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
}

/// Returns an HTTP/1.1 connection to its pool (if the pool still exists: a new config may
/// have replaced the cluster while the response was read).
struct Giveback {
    conn: H1,
    addr: SocketAddr,
    pool: Weak<Inner>,
}

impl Giveback {
    fn give(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(self.addr, self.conn);
        }
    }
}

/// A response body from the pool. When it has been read to its end, its HTTP/1.1 connection
/// is free for the next request; dropped before that, the connection closes with it (it would
/// otherwise still be receiving this response).
pub struct PooledBody {
    inner: Incoming,
    giveback: Option<Giveback>,
}

impl PooledBody {
    fn new(inner: Incoming, giveback: Option<Giveback>) -> Self {
        let mut body = Self { inner, giveback };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(g) = self.giveback.take() {
            g.give();
        }
    }
}

/// A request without a `Host` gets the endpoint's address, as a client addressing it
/// directly would send.
fn default_host(req: &mut Request<RequestBody>, addr: SocketAddr) {
    if !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&addr.to_string())
    {
        req.headers_mut().insert(header::HOST, v);
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            // An error ends the connection too: drop it.
            Poll::Ready(Some(Err(_))) => self.giveback = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    fn pool(max: Option<u32>) -> Pool {
        Pool::new(MeshConnector { tls: None, connect_timeout: Duration::from_secs(5) }, false, max)
    }

    fn get(path: &str) -> Request<RequestBody> {
        Request::get(path).body(RequestBody::empty()).unwrap()
    }

    /// An HTTP/1.1 server answering each request on a connection with `body`, counting
    /// connections; it closes a connection after `close_after` requests when set.
    async fn server(body: &'static str, close_after: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    loop {
                        let mut chunk = [0u8; 1024];
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                            served += 1;
                            if close_after.is_some_and(|n| served >= n) {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    async fn text(resp: Response<PooledBody>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read_and_not_before() {
        let (addr, connections) = server("hello", None).await;
        let pool = pool(None);
        for _ in 0..3 {
            assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "hello");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "sequential requests share one connection");
        // A response dropped unread takes its connection with it: the next request needs a new one.
        drop(pool.send(addr, get("/")).await.unwrap());
        assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "hello");
        assert_eq!(connections.load(Ordering::SeqCst), 2, "a connection with an unread response was reused");
        // Two responses outstanding at once: one takes the idle connection, the other a new one.
        let a = pool.send(addr, get("/")).await.unwrap();
        let b = pool.send(addr, get("/")).await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        assert_eq!((text(a).await, text(b).await), ("hello".to_string(), "hello".to_string()));
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced_without_an_error() {
        let (addr, connections) = server("ok", Some(1)).await;
        let pool = pool(None);
        for _ in 0..4 {
            assert_eq!(text(pool.send(addr, get("/")).await.unwrap()).await, "ok");
            // Let the close reach the client's connection task.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn max_requests_per_connection_retires_a_connection() {
        let (addr, connections) = server("x", None).await;
        let pool = pool(Some(2));
        for _ in 0..6 {
            let _ = text(pool.send(addr, get("/")).await.unwrap()).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3, "2 requests per connection");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let result = pool(None).send(addr, get("/")).await;
        assert!(matches!(result, Err(PoolError::Connect(_))), "{:?}", result.err());
    }
}
