//! Timeouts on every phase after the request head (Envoy's `idle_timeout` and
//! `stream_idle_timeout`): an announced body that never comes (408), an upstream that never
//! answers (504), a client that stops reading its response (cut off), and a keep-alive
//! connection left idle (closed) — while a body that keeps moving, however slowly, is never
//! cut; and an HTTP/2 peer that stops answering keepalive PINGs (closed). In process, on
//! loopback, with the timeouts set to 1 s (the keepalive to 200/300 ms).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skein_api::proxy::PeerAuthMode;
use skein_proxy::{
    http::{Limits, Proxy, Timeouts},
    listener,
    metrics::Metrics,
    store::Store,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const BIG: usize = 64 << 20;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream: `/echo` answers with the length of the whole request body, `/slow` after 30 s,
/// `/big` with a 64 MiB body.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = match req.uri().path() {
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            Full::new(Bytes::from("late")).map_err(|e| -> BoxError { match e {} }).boxed()
                        }
                        "/big" => {
                            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
                            let frames = futures::stream::iter(
                                (0..BIG / chunk.len()).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone()))),
                            );
                            StreamBody::new(frames).boxed()
                        }
                        _ => {
                            let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                            Full::new(Bytes::from(n.to_string())).map_err(|e| -> BoxError { match e {} }).boxed()
                        }
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

async fn proxy() -> (SocketAddr, Metrics, Arc<Proxy>) {
    let up = upstream().await;
    let yaml = format!(
        "listeners: []\nvirtualHosts:\n  - {{name: app, domains: [app], routes: [{{route: [{{cluster: app}}]}}]}}\nclusters:\n  - {{name: app, endpoints: ['{up}']}}\n"
    );
    let store = Store::new(serde_yaml::from_str(&yaml).unwrap()).unwrap();
    let metrics = Metrics::default();
    let timeouts =
        Timeouts { idle: Duration::from_secs(1), stream_idle: Duration::from_secs(1), ..Timeouts::default() };
    let proxy = Proxy::with_limits(store, metrics.clone(), Limits { timeouts, ..Limits::default() });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener::serve_http(listener, proxy.clone(), PeerAuthMode::Disable, "test".into()));
    (addr, metrics, proxy)
}

/// Reads until the proxy closes `s` (EOF or reset) or `within` passes; the bytes read, and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0) | Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response head and its `Content-Length` body.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await.expect("a response").unwrap();
        assert_eq!(n, 1, "closed before a response: {}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn an_announced_body_that_never_comes_is_answered_408_and_the_connection_closed() {
    let (addr, metrics, proxy) = proxy().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
    let response = read_response(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());
    assert!(read_until_closed(&mut s, Duration::from_secs(3)).await.1, "the body's framing is lost: closed");
    let exported = metrics.render();
    assert!(
        exported.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"408\"")
            && l.contains("response_flags=\"SI\"")),
        "{exported}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.connection_limits().in_use(), 0);
}

#[tokio::test]
async fn a_body_that_keeps_moving_is_never_cut_however_slow() {
    let (addr, _, _) = proxy().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\n").await.unwrap();
    // Ten bytes over 3 s, three times the stream idle timeout, each within it.
    for b in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let response = read_response(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("\r\n\r\n10"), "{response}");
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504_at_the_stream_idle_timeout() {
    let (addr, metrics, _) = proxy().await;
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let req = Request::get("http://app/slow").body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() >= Duration::from_millis(900) && started.elapsed() < Duration::from_secs(5));
    assert!(
        metrics.render().lines().any(|l| l.contains("response_code=\"504\"") && l.contains("response_flags=\"SI\""))
    );
    // The connection itself is fine: another request on it is served.
    let req = Request::post("http://app/echo").body(Full::new(Bytes::from("abc"))).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "3");
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_off() {
    let (addr, _, proxy) = proxy().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Stop reading: the socket buffers fill and the response stops moving.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "the connection was closed");
    assert!(rest.len() < BIG / 2, "cut off well before the end: {} bytes", rest.len());
    assert_eq!(proxy.connection_limits().in_use(), 0);
}

#[tokio::test]
async fn idle_connections_are_closed_at_the_idle_timeout_http1_and_http2() {
    let (addr, _, _) = proxy().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n").await.unwrap();
    let response = read_response(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let answered = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed && answered.elapsed() >= Duration::from_millis(900), "closed after {:?}", answered.elapsed());

    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://app/echo").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn).await.expect("GOAWAY and close").unwrap().unwrap();
    assert!(answered.elapsed() >= Duration::from_millis(900));
}

/// HTTP/2 frame types and flags the keepalive test reads and writes (RFC 9113 §6).
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// An HTTP/2 client that sends the preface and then only reads frames, acknowledging the
/// server's SETTINGS and PINGs when `answer`; returns when the proxy closes the connection or
/// `within` passes: the PINGs it saw, and how long after the first one the connection closed.
async fn h2_peer(addr: SocketAddr, answer: bool, within: Duration) -> (usize, Option<Duration>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    let deadline = tokio::time::Instant::now() + within;
    let (mut pings, mut first_ping) = (0, None);
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, s.read_exact(&mut head)).await {
            Err(_) => return (pings, None),
            Ok(Err(_)) => return (pings, first_ping.map(|t: Instant| t.elapsed())),
            Ok(Ok(_)) => {}
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if tokio::time::timeout_at(deadline, s.read_exact(&mut payload)).await.map_or(true, |r| r.is_err()) {
            return (pings, first_ping.map(|t: Instant| t.elapsed()));
        }
        let (kind, flags) = (head[3], head[4]);
        if kind == PING && flags & ACK == 0 {
            pings += 1;
            first_ping.get_or_insert_with(Instant::now);
            if answer {
                s.write_all(&frame(PING, ACK, &payload)).await.unwrap();
            }
        }
        if kind == SETTINGS && flags & ACK == 0 && answer {
            s.write_all(&frame(SETTINGS, ACK, &[])).await.unwrap();
        }
    }
}

#[tokio::test]
async fn an_http2_peer_that_stops_answering_pings_is_closed_and_one_that_answers_is_kept() {
    let up = upstream().await;
    let yaml = format!(
        "listeners: []\nvirtualHosts:\n  - {{name: app, domains: [app], routes: [{{route: [{{cluster: app}}]}}]}}\nclusters:\n  - {{name: app, endpoints: ['{up}']}}\n"
    );
    let store = Store::new(serde_yaml::from_str(&yaml).unwrap()).unwrap();
    // The idle timeout far off, so only the keepalive can close a connection here.
    let timeouts = Timeouts {
        h2_keepalive_interval: Duration::from_millis(200),
        h2_keepalive_timeout: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let proxy = Proxy::with_limits(store, Metrics::default(), Limits { timeouts, ..Limits::default() });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener::serve_http(listener, proxy, PeerAuthMode::Disable, "test".into()));

    let (silent, answering) =
        tokio::join!(h2_peer(addr, false, Duration::from_secs(5)), h2_peer(addr, true, Duration::from_secs(3)));
    let (pings, closed_after) = silent;
    assert!(pings >= 1, "the proxy pinged the quiet peer");
    let closed_after = closed_after.expect("a peer that never answers a PING is closed");
    assert!(closed_after < Duration::from_secs(2), "closed {closed_after:?} after the first PING (timeout 300 ms)");
    let (pings, closed) = answering;
    assert!(pings >= 3, "pinged every interval while quiet: {pings}");
    assert_eq!(closed, None, "a peer that answers its PINGs keeps its connection");
}
