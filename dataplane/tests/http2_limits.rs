//! HTTP/2 hardening on the wire: the advertised concurrent-stream limit and the rapid-reset
//! (CVE-2023-44487) defence, driven with raw frames so nothing in a client library hides them.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use skein_api::proxy::PeerAuthMode;
use skein_proxy::{http::Proxy, listener, metrics::Metrics, store::Store};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://rr.example/`: indexed :method GET, :scheme http, :path /, and a
/// literal :authority (indexed name 1).
fn request_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x41, 10];
    b.extend_from_slice(b"rr.example");
    b
}

/// Reads one frame: (type, flags, stream, payload). None on EOF.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, count)
}

async fn proxy_to(upstream: SocketAddr) -> SocketAddr {
    let yaml = format!(
        "virtualHosts: [{{name: rr, domains: [rr.example], routes: [{{route: [{{cluster: up}}]}}]}}]\nclusters: [{{name: up, endpoints: ['{upstream}']}}]"
    );
    let store = Store::new(serde_yaml::from_str(&yaml).unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Proxy::new(store, Metrics::default());
    tokio::spawn(listener::serve_http(listener, proxy, PeerAuthMode::Disable, "h2".into()));
    addr
}

#[tokio::test]
async fn the_server_advertises_a_bounded_concurrent_stream_limit() {
    let (up, _) = counting_upstream().await;
    let mut s = TcpStream::connect(proxy_to(up).await).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let (kind, _, _, payload) =
        tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s)).await.unwrap().unwrap();
    assert_eq!(kind, SETTINGS, "the server's first frame is SETTINGS");
    let max_streams = payload
        .chunks_exact(6)
        .find(|e| u16::from_be_bytes([e[0], e[1]]) == 0x3)
        .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
    assert_eq!(max_streams, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_goaway_enhance_your_calm_and_reaches_few_upstream() {
    let (up, upstream_requests) = counting_upstream().await;
    let mut s = TcpStream::connect(proxy_to(up).await).await.unwrap();
    let mut flood = PREFACE.to_vec();
    flood.extend(frame(SETTINGS, 0, 0, &[]));
    const STREAMS: u32 = 1000;
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        // END_STREAM | END_HEADERS, then cancel it at once.
        flood.extend(frame(HEADERS, 0x5, id, &request_block()));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    // The server may close mid-write once it has seen enough; that is the point.
    let _ = s.write_all(&flood).await;
    let (mut goaway, mut last_stream) = (None, u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((kind, _, _, payload)) = read_frame(&mut s).await {
            if kind == GOAWAY && payload.len() >= 8 {
                goaway = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
                last_stream = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                break;
            }
        }
    })
    .await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "GOAWAY error code");
    // Skein allows 10 streams reset before they are accepted (h2's default is 20): the 11th
    // closes the connection, so the last stream processed is the 11th client stream (id 21).
    // Dropping Skein's setting makes this 41.
    assert_eq!(last_stream, 21, "last stream id in GOAWAY");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reached = upstream_requests.load(Ordering::SeqCst);
    assert!(reached < (STREAMS as usize) / 4, "{reached} of {STREAMS} reset streams still reached the upstream");
}

/// An HTTP/1.1 upstream that answers `slow` after `delay`.
async fn slow_upstream(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slow"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn draining_sends_goaway_and_still_answers_the_stream_in_flight() {
    const DATA: u8 = 0x0;
    const PING: u8 = 0x6;
    let up = slow_upstream(Duration::from_millis(500)).await;
    let yaml = format!(
        "virtualHosts: [{{name: rr, domains: [rr.example], routes: [{{route: [{{cluster: up}}]}}]}}]\nclusters: [{{name: up, endpoints: ['{up}']}}]"
    );
    let store = Store::new(serde_yaml::from_str(&yaml).unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Proxy::new(store, Metrics::default());
    tokio::spawn(listener::serve_http(listener, proxy.clone(), PeerAuthMode::Disable, "h2".into()));

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s.write_all(&frame(HEADERS, 0x5, 1, &request_block())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.drain().start();
    // Frames in order: GOAWAY (NO_ERROR) while stream 1 is still open, then its answer.
    let (mut goaway, mut answered, mut body) = (None, false, Vec::new());
    let read = async {
        while let Some((kind, flags, stream, payload)) = read_frame(&mut s).await {
            match kind {
                SETTINGS if flags & 0x1 == 0 => s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap(),
                PING if flags & 0x1 == 0 => s.write_all(&frame(PING, 0x1, 0, &payload)).await.unwrap(),
                GOAWAY if goaway.is_none() => {
                    assert!(!answered, "GOAWAY must come while the request is in flight");
                    goaway = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
                }
                HEADERS if stream == 1 => answered = true,
                DATA if stream == 1 => {
                    body.extend_from_slice(&payload);
                    if flags & 0x1 != 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("the drained connection answers in time");
    assert_eq!(goaway, Some(0), "GOAWAY with NO_ERROR on drain");
    assert!(answered, "the request in flight is answered");
    assert_eq!(body, b"slow");
}
