//! Connections the proxy must not keep: over the connection caps (closed at accept and
//! counted, a freed place is taken again), and connections that never start a request (closed
//! at the head timeout, also mid HTTP/2 preface). In process, on loopback.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use skein_api::proxy::PeerAuthMode;
use skein_proxy::{
    http::{Limits, Proxy},
    limits::ConnectionLimits,
    listener,
    metrics::Metrics,
    store::Store,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

async fn proxy(total: usize, per_listener: usize) -> (SocketAddr, Metrics, Arc<Proxy>) {
    let store = Store::new(serde_yaml::from_str("listeners: []").unwrap()).unwrap();
    let metrics = Metrics::default();
    let limits =
        Limits { connections: ConnectionLimits::new(total, per_listener), buffer_budget: 1 << 20, ..Limits::default() };
    let proxy = Proxy::with_limits(store, metrics.clone(), limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener::serve_http(listener, proxy.clone(), PeerAuthMode::Disable, "test".into()));
    (addr, metrics, proxy)
}

/// Whether the proxy closed `s` within `within` (EOF or reset), reading whatever it sent.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_connection_over_the_cap_is_closed_at_accept_counted_and_a_freed_place_is_taken_again() {
    let (addr, metrics, proxy) = proxy(2, 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the accept loop take both.
    for _ in 0..100 {
        if proxy.connection_limits().in_use() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.connection_limits().in_use(), 2);
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(5)).await, "the third connection must be closed");
    let exported = metrics.render();
    assert!(
        exported.contains(&format!("envoy_listener_downstream_cx_overflow_total{{listener_address=\"{addr}\"}} 1")),
        "{exported}"
    );
    // One held connection closes: its place is free for a client that sends a request.
    drop(held.pop());
    for _ in 0..100 {
        if proxy.connection_limits().in_use() < 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut next = TcpStream::connect(addr).await.unwrap();
    next.write_all(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), next.read_exact(&mut head)).await.unwrap().unwrap();
    assert!(head.starts_with(b"HTTP/1.1 "), "served once a place was free: {}", String::from_utf8_lossy(&head));
}

#[tokio::test]
async fn silent_and_half_preface_connections_are_closed_at_the_head_timeout() {
    let (addr, _, proxy) = proxy(100, 100).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..23]).await.unwrap();
    let mut partial_head = TcpStream::connect(addr).await.unwrap();
    partial_head.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // The head timeout is 10 s; well before it they are still open, by 13 s all are closed.
    assert!(!closed_within(&mut silent, Duration::from_secs(3)).await, "closed too early");
    for (what, s) in
        [("silent", &mut silent), ("23 of 24 preface bytes", &mut half), ("partial head", &mut partial_head)]
    {
        assert!(closed_within(s, Duration::from_secs(10)).await, "{what}: still open after the head timeout");
    }
    for _ in 0..100 {
        if proxy.connection_limits().in_use() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.connection_limits().in_use(), 0, "their places are free again");
}

/// An HTTP/1.1 upstream that answers `ok` after `delay`, counting the requests it receives.
async fn upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    use std::convert::Infallible;

    use hyper::{Request, Response, body::Incoming, service::service_fn};
    use hyper_util::rt::TokioIo;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(Response::new(String::from("ok")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, seen)
}

// Each request is cancelled once it has reached the upstream, so the proxy has accepted and
// forwarded it: a cancel before that is a stream h2 still queues, which the burst limit
// (MAX_PENDING_RESETS) catches on its own and would hide the rule under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_spread_over_time_closes_the_connection_while_others_are_served() {
    use http_body_util::{BodyExt, Empty};
    use hyper::Request;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let ((slow, reached), (fast, _)) = (upstream(Duration::from_secs(5)).await, upstream(Duration::ZERO).await);
    let yaml = format!(
        "listeners: []\nvirtualHosts:\n  - {{name: slow, domains: [slow], routes: [{{route: [{{cluster: slow}}]}}]}}\n  - {{name: fast, domains: [fast], routes: [{{route: [{{cluster: fast}}]}}]}}\nclusters:\n  - {{name: slow, endpoints: ['{slow}']}}\n  - {{name: fast, endpoints: ['{fast}']}}\n"
    );
    let store = Store::new(serde_yaml::from_str(&yaml).unwrap()).unwrap();
    let proxy = Proxy::new(store, Metrics::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener::serve_http(listener, proxy, PeerAuthMode::Disable, "test".into()));

    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    // One request and its cancel at a time: never a burst. Bounded: at most 2 000 pairs, 60 s.
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    while sent < 2000 && started.elapsed() < Duration::from_secs(60) {
        match tokio::time::timeout(Duration::from_secs(2), send.ready()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
        let req = Request::get("http://slow/").body(Empty::<bytes::Bytes>::new()).unwrap();
        let mut answer = Box::pin(send.send_request(req));
        // Let the request reach the upstream through the proxy, then give up on it
        // (RST_STREAM CANCEL). A connection closed meanwhile ends the answer at once.
        let before = reached.load(Ordering::SeqCst);
        let waited = tokio::time::Instant::now();
        while reached.load(Ordering::SeqCst) == before && waited.elapsed() < Duration::from_secs(1) {
            if tokio::time::timeout(Duration::from_micros(200), answer.as_mut()).await.is_ok() {
                break;
            }
        }
        drop(answer);
        sent += 1;
        // A normal client on its own connection is served during the attack.
        if sent == 100 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: fast\r\n\r\n").await.unwrap();
            let mut head = [0u8; 12];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head)).await.unwrap().unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
        }
    }
    assert!(sent < 700, "the connection survived {sent} premature resets");
    assert!(sent >= 250, "closed after {sent}: before the 250 premature resets Envoy's rule allows");
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the connection was closed");
    // And the proxy still answers a well-behaved HTTP/2 client.
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    // Many more requests than the rule's 500 on one connection, all answered: only premature
    // resets count against a connection.
    for _ in 0..600 {
        let req = Request::get("http://fast/").body(Empty::<bytes::Bytes>::new()).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
}
