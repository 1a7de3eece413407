//! Raw bytes from a client, served as one connection through the whole request path (HTTP/1.1
//! or HTTP/2 prior knowledge, authorization, routing, faults, redirect, forwarding): the proxy
//! answers or closes, and never panics.
#![no_main]

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use skein_proxy::{
    http::{ConnInfo, Proxy},
    listener,
    metrics::Metrics,
    store::Store,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// REGISTRY_ONLY keeps unknown hosts off DNS and the network.
const CONFIG: &str = r#"
outboundTrafficPolicy: REGISTRY_ONLY
listeners:
  - name: fuzz
    address: "127.0.0.1:0"
    authorization:
      - name: default/deny-admin
        action: DENY
        rules: [{to: [{operation: {paths: ["/admin*"], methods: ["DELETE"]}}], when: [{key: "request.headers[x-user]", values: ["evil*"]}]}]
virtualHosts:
  - name: reviews
    domains: [reviews, "*.example.com"]
    routes:
      - name: abort
        match: [{uri: {prefix: /abort}, headers: {end-user: {regex: "j.*n"}}}]
        route: [{cluster: down}]
        fault: {abort: {httpStatus: 500, percentage: 50}}
      - name: moved
        match: [{uri: {exact: /old}}]
        redirect: {uri: /new, redirectCode: 302}
      - name: default
        route: [{cluster: down, weight: 50}, {cluster: down2, weight: 50}]
        rewrite: {uri: /x}
        timeout: 100ms
        retries: {attempts: 1, perTryTimeout: 50ms}
clusters:
  - {name: down, endpoints: ["127.0.0.1:9"], connectTimeout: 50ms}
  - {name: down2, endpoints: [], loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

fn proxy() -> Arc<Proxy> {
    static PROXY: OnceLock<Arc<Proxy>> = OnceLock::new();
    PROXY
        .get_or_init(|| {
            let _guard = runtime().enter();
            let store = Store::new(serde_yaml::from_str(CONFIG).unwrap()).unwrap();
            Proxy::new(store, Metrics::default())
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let proxy = proxy();
    runtime().block_on(async move {
        let (mut client, server_io) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let conn = Arc::new(ConnInfo::new("fuzz".into(), 9080, peer, None));
        let served = tokio::spawn(listener::http::serve_conn(server_io, proxy, conn));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut out)).await;
        drop(client);
        // With the client gone the connection must end: a task still running here would be a
        // connection the proxy never releases.
        let finished = tokio::time::timeout(Duration::from_secs(2), served).await;
        assert!(finished.is_ok(), "connection still open 2 s after the client went away");
        if out.starts_with(b"HTTP/1.") {
            // A response always has a 3-digit status.
            assert!(
                out.len() >= 12 && out[9..12].iter().all(u8::is_ascii_digit),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    });
});
