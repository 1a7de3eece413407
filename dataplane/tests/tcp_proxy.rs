//! TCP listeners and the east-west SNI passthrough listener, in process on loopback.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use skein_proxy::{http::Proxy, listener::tcp, metrics::Metrics, sni::testing::client_hello, store::Store};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

/// An upstream that records every byte it receives and answers `<name>:` followed by them.
async fn echo(name: &'static str) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    s.lock().await.extend_from_slice(&buf[..n]);
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    if c.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn start(yaml: &str, mode: tcp::Mode) -> (SocketAddr, Metrics) {
    let store = Store::new(serde_yaml::from_str(yaml).unwrap()).unwrap();
    let metrics = Metrics::default();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let proxy = Proxy::new(store, metrics.clone());
    tokio::spawn(tcp::serve(l, mode, Some(skein_api::proxy::PeerAuthMode::Disable), proxy));
    (addr, metrics)
}

async fn read_some(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn tcp_listener_forwards_bytes_both_ways_counts_and_logs_them() {
    let (db, _) = echo("db").await;
    let log = std::env::temp_dir().join(format!("skein-tcp-accesslog-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let cfg = format!(
        "clusters: [{{name: 'outbound|3306||mysqldb.prod.svc.cluster.local', endpoints: ['{db}']}}]\naccessLog: {{path: '{}'}}\n",
        log.display()
    );
    let (addr, metrics) = start(
        &cfg,
        tcp::Mode::Cluster { cluster: "outbound|3306||mysqldb.prod.svc.cluster.local".into(), listener: "db".into() },
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let client = c.local_addr().unwrap();
    c.write_all(b"hello").await.unwrap();
    assert_eq!(read_some(&mut c).await, b"db:hello");
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics.render();
    // Istio: "sent" is what went to the client (the response), "received" what came from it.
    assert!(m.contains("istio_tcp_sent_bytes_total{destination_service=\"mysqldb.prod.svc.cluster.local\"} 8"), "{m}");
    assert!(
        m.contains("istio_tcp_received_bytes_total{destination_service=\"mysqldb.prod.svc.cluster.local\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("istio_tcp_connections_closed_total{destination_service=\"mysqldb.prod.svc.cluster.local\"} 1"),
        "{m}"
    );
    // Envoy's TCP access log line: no request line, code 0, bytes received then sent.
    let mut line = String::new();
    for _ in 0..50 {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(line.contains("\"- - -\" 0 - 5 8 "), "{line}");
    assert!(
        line.contains(&format!("\"{db}\" outbound|3306||mysqldb.prod.svc.cluster.local {addr} {client} -")),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
    std::fs::remove_file(&log).ok();
}

#[tokio::test]
async fn east_west_passthrough_routes_by_sni_and_forwards_the_client_hello_untouched() {
    let (reviews, reviews_seen) = echo("reviews").await;
    let (ratings, _) = echo("ratings").await;
    // The gateway knows only local names; `.global` SNI resolves to the local service.
    let cfg = format!(
        "listeners: [{{name: ew, address: '127.0.0.1:1', protocol: AUTO_PASSTHROUGH, passthroughHosts: ['*.local']}}]\nclusters:\n  - {{name: 'outbound|9080||reviews.default.svc.cluster.local', endpoints: ['{reviews}']}}\n  - {{name: 'outbound|9080|v1|ratings.default.svc.cluster.local', endpoints: ['{ratings}']}}\n"
    );
    let (gw, _) = start(&cfg, tcp::Mode::SniPassthrough { listener: "ew".into() }).await;

    let hello = client_hello(Some("outbound_.9080_._.reviews.default.global"));
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(&hello).await.unwrap();
    let reply = read_some(&mut c).await;
    assert!(reply.starts_with(b"reviews:"), "{:?}", String::from_utf8_lossy(&reply[..20.min(reply.len())]));
    assert_eq!(*reviews_seen.lock().await, hello, "upstream saw the exact ClientHello: TLS not terminated");

    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(&client_hello(Some("outbound_.9080_.v1_.ratings.default.svc.cluster.local"))).await.unwrap();
    assert!(read_some(&mut c).await.starts_with(b"ratings:"));
}

#[tokio::test]
async fn east_west_closes_unknown_names_unexported_services_and_non_tls() {
    let (reviews, seen) = echo("reviews").await;
    let (ratings, ratings_seen) = echo("ratings").await;
    let log = std::env::temp_dir().join(format!("skein-ew-accesslog-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    // ratings is a local service, but the Gateway opens only reviews.
    let cfg = format!(
        "listeners: [{{name: ew, address: '127.0.0.1:1', protocol: AUTO_PASSTHROUGH, passthroughHosts: [reviews.default.svc.cluster.local]}}]\nclusters:\n  - {{name: 'outbound|9080||reviews.default.svc.cluster.local', endpoints: ['{reviews}']}}\n  - {{name: 'outbound|9080||ratings.default.svc.cluster.local', endpoints: ['{ratings}']}}\naccessLog: {{path: '{}'}}\n",
        log.display()
    );
    let (gw, _) = start(&cfg, tcp::Mode::SniPassthrough { listener: "ew".into() }).await;
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(&client_hello(Some("outbound_.9080_._.reviews.default.global"))).await.unwrap();
    assert!(read_some(&mut c).await.starts_with(b"reviews:"), "the opened service is served");
    seen.lock().await.clear();
    let refused = [
        client_hello(Some("outbound_.9080_._.unknown.default.global")),
        client_hello(Some("outbound_.9080_._.ratings.default.global")),
        client_hello(Some("outbound_.9080_._.ratings.default.svc.cluster.local")),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    for first in refused {
        let mut c = TcpStream::connect(gw).await.unwrap();
        c.write_all(&first).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "connection closed without an answer");
    }
    assert!(seen.lock().await.is_empty());
    assert!(ratings_seen.lock().await.is_empty(), "a service the Gateway does not name is never reached");
    // The refusals are logged as Envoy does: no route (NR), nothing relayed.
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().filter(|l| l.contains(" NR ")).count() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(text.lines().filter(|l| l.contains("\"- - -\" 0 NR 0 0 ")).count(), 4, "{text}");
    std::fs::remove_file(&log).ok();
}
