//! Bodies stream through the proxy: a message reaches the upstream, and its answer reaches the
//! client, before the client has finished its request (gRPC client and bidirectional streams,
//! HTTP/1.1 chunked uploads); retries and mirrors resend a bounded copy and give up, counted,
//! when the body outgrew it. In process, on loopback, with real hyper clients and servers.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skein_api::proxy::PeerAuthMode;
use skein_proxy::{http::Proxy, listener, metrics::Metrics, store::Store};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(10);

type Chunks = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// An upstream that streams each request's body straight back (HTTP/2 when `h2`), then a
/// `grpc-status: 0` trailer on HTTP/2, as a gRPC echo server does.
async fn echo_upstream(h2: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                    let mut body = req.into_body();
                    tokio::spawn(async move {
                        while let Some(Ok(f)) = body.frame().await {
                            if let Ok(d) = f.into_data()
                                && tx.send(Ok(Frame::data(d))).await.is_err()
                            {
                                return;
                            }
                        }
                        if h2 {
                            let mut t = HeaderMap::new();
                            t.insert("grpc-status", "0".parse().unwrap());
                            let _ = tx.send(Ok(Frame::trailers(t))).await;
                        }
                    });
                    Ok::<_, Infallible>(Response::new(StreamBody::new(ReceiverStream::new(rx))))
                });
                let io = TokioIo::new(stream);
                if h2 {
                    let _ =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                }
            });
        }
    });
    addr
}

/// An upstream that reads each body to its end and answers with its length; the first
/// `fail_first` requests get 503 (after the body was read).
async fn counting_upstream(fail_first: usize) -> (SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (s, count) = (s.clone(), count.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (s, count) = (s.clone(), count.clone());
                    async move {
                        let mut body = req.into_body();
                        let mut n = 0;
                        while let Some(Ok(f)) = body.frame().await {
                            n += f.data_ref().map_or(0, Bytes::len);
                        }
                        s.lock().unwrap().push(n);
                        let mut r = Response::new(Full::new(Bytes::from(n.to_string())));
                        if count.fetch_add(1, Ordering::SeqCst) < fail_first {
                            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, seen)
}

async fn proxy(yaml: &str) -> (SocketAddr, Metrics, Arc<Proxy>) {
    let store = Store::new(serde_yaml::from_str(yaml).expect("test config parses")).expect("test config is valid");
    let metrics = Metrics::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Proxy::new(store, metrics.clone());
    tokio::spawn(listener::serve_http(listener, proxy.clone(), PeerAuthMode::Disable, "test".into()));
    (addr, metrics, proxy)
}

fn one_route(cluster: SocketAddr, http2: bool, extra: &str) -> String {
    format!(
        "virtualHosts: [{{name: s, domains: [svc], routes: [{{route: [{{cluster: c}}]{extra}}}]}}]\nclusters: [{{name: c, endpoints: ['{cluster}'], http2: {http2}}}]\n"
    )
}

/// Sends a request whose body the test writes chunk by chunk; returns the writer and the
/// response. HTTP/2 with prior knowledge when `h2`.
async fn streaming_request(proxy: SocketAddr, h2: bool) -> (Chunks, Response<Incoming>) {
    let io = TokioIo::new(tokio::net::TcpStream::connect(proxy).await.unwrap());
    let (tx, rx) = mpsc::channel(4);
    let body = StreamBody::new(ReceiverStream::new(rx));
    let req = Request::post("http://svc/echo").header("host", "svc").header("te", "trailers");
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        tokio::spawn(async move { send.send_request(req.body(body).unwrap()).await })
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = req.header("transfer-encoding", "chunked");
        tokio::spawn(async move { send.send_request(req.body(body).unwrap()).await })
    };
    // The first chunk must get the request going (a proxy that waits for the end never answers).
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello-1")))).await.unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.expect("response head before the body ended").unwrap().unwrap();
    (tx, resp)
}

async fn next_data(body: &mut Incoming) -> Bytes {
    loop {
        let f = tokio::time::timeout(WAIT, body.frame()).await.expect("a frame before the client finished");
        let f = f.expect("the stream is still open").unwrap();
        if let Ok(d) = f.into_data() {
            return d;
        }
    }
}

/// Messages go back and forth over one open request, with and without retries configured
/// (retries record the body; the stream must not wait for it).
async fn messages_cross_before_either_side_closes(h2: bool, retries: &str) {
    let up = echo_upstream(h2).await;
    let (addr, _, proxy) = proxy(&one_route(up, h2, retries)).await;
    let (tx, resp) = streaming_request(addr, h2).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    assert_eq!(next_data(&mut body).await, "hello-1");
    for i in 2..=5 {
        let msg = Bytes::from(format!("hello-{i}"));
        tx.send(Ok(Frame::data(msg.clone()))).await.unwrap();
        assert_eq!(next_data(&mut body).await, msg, "message {i} echoed while the request is open");
    }
    drop(tx);
    let rest = tokio::time::timeout(WAIT, body.collect()).await.unwrap().unwrap();
    if h2 {
        assert_eq!(rest.trailers().expect("trailers pass through")["grpc-status"], "0");
    }
    // The response head came back: the copy kept for retries is given up.
    assert_eq!(proxy.buffered_bytes(), 0);
}

#[tokio::test]
async fn a_bidirectional_grpc_stream_exchanges_messages_before_either_side_closes() {
    messages_cross_before_either_side_closes(true, "").await;
    messages_cross_before_either_side_closes(true, ", retries: {attempts: 2, retryOn: 'connect-failure,reset'}").await;
}

#[tokio::test]
async fn an_http1_chunked_request_streams_both_ways() {
    messages_cross_before_either_side_closes(false, "").await;
    messages_cross_before_either_side_closes(false, ", retries: {attempts: 2, retryOn: '5xx'}").await;
}

async fn post(proxy: SocketAddr, body: Bytes) -> (StatusCode, String) {
    let io = TokioIo::new(tokio::net::TcpStream::connect(proxy).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload").header("host", "svc").body(Full::new(body)).unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req)).await.unwrap().unwrap();
    let status = resp.status();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(text.to_vec()).unwrap())
}

#[tokio::test]
async fn a_retry_resends_the_whole_body_and_a_body_past_the_limit_is_not_retried_but_counted() {
    let retries = ", retries: {attempts: 2, retryOn: '5xx'}";
    // 300 KiB fits the 1 MiB copy: the second try gets every byte again.
    let (up, seen) = counting_upstream(1).await;
    let (addr, metrics, _) = proxy(&one_route(up, false, retries)).await;
    let (status, text) = post(addr, Bytes::from(vec![7u8; 300 * 1024])).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "307200"));
    assert_eq!(*seen.lock().unwrap(), vec![300 * 1024, 300 * 1024]);

    // 3 MiB: larger than any copy the proxy keeps, so it streams (no 413 as when bodies were
    // buffered) and the 503 is the answer, not retried.
    let (up, seen) = counting_upstream(1).await;
    let (addr, metrics2, _) = proxy(&one_route(up, false, retries)).await;
    let (status, text) = post(addr, Bytes::from(vec![7u8; 3 << 20])).await;
    assert_eq!((status, text), (StatusCode::SERVICE_UNAVAILABLE, (3usize << 20).to_string()));
    assert_eq!(*seen.lock().unwrap(), vec![3 << 20], "a body that was not kept is not resent");
    let exported = metrics2.render();
    assert!(exported.contains("envoy_cluster_retry_or_shadow_abandoned_total{cluster_name=\"c\"} 1"), "{exported}");
    assert!(
        !metrics.render().contains("envoy_cluster_retry_or_shadow_abandoned_total{"),
        "nothing abandoned at 300 KiB"
    );
}

#[tokio::test]
async fn a_mirror_gets_the_whole_streamed_body() {
    let (primary, primary_seen) = counting_upstream(0).await;
    let (shadow, shadow_seen) = counting_upstream(0).await;
    let yaml = format!(
        "virtualHosts: [{{name: s, domains: [svc], routes: [{{route: [{{cluster: p}}], mirror: m, mirrorPercentage: 100}}]}}]\nclusters:\n  - {{name: p, endpoints: ['{primary}']}}\n  - {{name: m, endpoints: ['{shadow}']}}\n"
    );
    let (addr, _, proxy) = proxy(&yaml).await;
    let (status, _) = post(addr, Bytes::from(vec![1u8; 200 * 1024])).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..100 {
        if !shadow_seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*shadow_seen.lock().unwrap(), vec![200 * 1024], "the shadow gets the same body");
    assert_eq!(*primary_seen.lock().unwrap(), vec![200 * 1024]);
    for _ in 0..100 {
        if proxy.buffered_bytes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.buffered_bytes(), 0, "the copy is freed once the mirror has it");
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_1_gib_upload_passes_the_proxy_binary_with_flat_memory() {
    let (up, seen) = counting_upstream(0).await;
    let dir = std::env::temp_dir().join(format!("skein-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = dir.join("proxy.yaml");
    // Retries on, as Istio's default route has them: the body is recorded until it outgrows the
    // copy, then streams on.
    let yaml = format!(
        "listeners: [{{name: http, address: '{listen}'}}]\n{}",
        one_route(up, false, ", retries: {attempts: 2, retryOn: 'connect-failure,reset,503'}")
    );
    std::fs::write(&config, yaml).unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_skein-proxy"))
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--admin-addr", &free(), "--status-addr", &free(), "--metrics-addr", &free()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut connected = None;
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(listen).await {
            connected = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stream = connected.expect("the proxy listens");
    let before = peak_rss_kib(pid);

    const TOTAL: usize = 1 << 30;
    const CHUNK: usize = 256 * 1024;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    tokio::spawn(async move {
        for _ in 0..TOTAL / CHUNK {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
    });
    let req = Request::post("/upload")
        .header("host", "svc")
        .header("content-length", TOTAL.to_string())
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(240), async {
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    })
    .await
    .expect("1 GiB through the proxy within 4 minutes");
    let peak = peak_rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(resp, (StatusCode::OK, Bytes::from(TOTAL.to_string())));
    assert_eq!(*seen.lock().unwrap(), vec![TOTAL]);
    // Flat: the proxy's peak grew by far less than the body (when bodies were buffered whole,
    // 4 MiB was the limit and a body held its full size).
    assert!(peak < before + 24 * 1024, "peak RSS {peak} KiB, {before} KiB before the upload");
    eprintln!("proxy peak RSS: {before} KiB before, {peak} KiB after a 1 GiB upload");
}

/// An HTTP/1.1 upstream that switches every `Upgrade` request to a byte echo after a `101`,
/// as a WebSocket server switches to frames.
async fn upgrade_echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<Incoming>| async move {
                    let protocol = req.headers().get("upgrade").cloned();
                    let Some(protocol) = protocol else {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"no upgrade"))));
                    };
                    // An HTTP/1.1 WebSocket server refuses an upgrade without a key (RFC 6455).
                    if protocol == "websocket" && !req.headers().contains_key("sec-websocket-key") {
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"no key")));
                        *resp.status_mut() = StatusCode::BAD_REQUEST;
                        return Ok(resp);
                    }
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut().insert("connection", "upgrade".parse().unwrap());
                    resp.headers_mut().insert("upgrade", protocol);
                    Ok(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Reads a response head from a raw connection.
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte)).await.expect("a response head in time").unwrap();
        assert_eq!(n, 1, "connection closed inside a head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

#[tokio::test]
async fn a_websocket_upgrade_switches_and_carries_bytes_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upgrade_echo_upstream().await;
    let (addr, metrics, _) = proxy(&one_route(up, false, ", retries: {attempts: 2, retryOn: 'connect-failure'}")).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"first frame"[..], b"second frame"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut got)).await.expect("echo through the tunnel").unwrap();
        assert_eq!(got, msg);
    }
    assert!(metrics.render().contains("response_code=\"101\""));
    // A plain request on the same route is not upgraded.
    let (status, text) = post(addr, Bytes::new()).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "no upgrade"));
}

/// RFC 8441: a WebSocket over an HTTP/2 stream (extended CONNECT with `:protocol`) reaches an
/// HTTP/1.1 WebSocket upstream as an upgrade (with the Sec-WebSocket-Key HTTP/1.1 needs), and
/// the stream carries bytes both ways after the 200.
#[tokio::test]
async fn an_http2_extended_connect_websocket_reaches_an_http1_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upgrade_echo_upstream().await;
    let (addr, metrics, _) = proxy(&one_route(up, false, "")).await;
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrive with the first exchange.
    let plain = Request::get("http://svc/").body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(plain)).await.unwrap().unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "no upgrade");
    let mut req = Request::connect("http://svc/chat")
        .header("sec-websocket-version", "13")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = tokio::time::timeout(WAIT, send.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
    let upgraded = tokio::time::timeout(WAIT, hyper::upgrade::on(resp)).await.unwrap().unwrap();
    let mut ws = TokioIo::new(upgraded);
    for msg in [&b"first frame"[..], b"second frame"] {
        ws.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, ws.read_exact(&mut got)).await.expect("echo through the stream").unwrap();
        assert_eq!(got, msg);
    }
    assert!(metrics.render().contains("response_code=\"200\""));
}

#[tokio::test]
async fn expect_100_continue_gets_its_interim_answer_before_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, seen) = counting_upstream(0).await;
    let (addr, _, _) = proxy(&one_route(up, false, "")).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // The client waits for the 100 before it sends the body, as curl does for large uploads.
    let interim = read_head(&mut s).await;
    assert!(interim.starts_with("http/1.1 100"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut body = [0u8; 1];
    tokio::time::timeout(WAIT, s.read_exact(&mut body)).await.unwrap().unwrap();
    assert_eq!(&body, b"5");
    assert_eq!(*seen.lock().unwrap(), vec![5]);
}
