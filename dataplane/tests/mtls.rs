//! Mesh mTLS between real proxies on loopback: SPIFFE identities, PeerAuthentication modes,
//! and end-to-end mTLS through an east-west gateway that holds no keys.

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use common::{ca::Ca, free_port};
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use skein_proxy::identity::Identity;
use skein_proxy::{http::Proxy, identity::principal, listener::Listeners, metrics::Metrics, store::Store};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The application behind proxy B: answers "app" and records the XFCC header it got.
async fn app() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let xfcc = req.headers().get("x-forwarded-client-cert").map(|v| v.to_str().unwrap().to_string());
                    s.lock().unwrap().push(xfcc);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"app")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(c), svc).await;
            });
        }
    });
    (addr, seen)
}

/// Starts a proxy serving `yaml`; returns it so its listeners stay open.
async fn proxy(yaml: &str) -> (Listeners, Metrics) {
    let store = Store::new(serde_yaml::from_str(yaml).unwrap()).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let metrics = Metrics::default();
    let mut listeners = Listeners::new(Proxy::new(store.clone(), metrics.clone()));
    let errors = listeners.sync(&store.current().config.listeners).await;
    assert!(errors.is_empty(), "{errors:?}");
    (listeners, metrics)
}

async fn get(port: u16, host: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// Proxy B: the destination sidecar, inbound listener with `mode`, forwarding to `app`.
fn server_side(ca: &Ca, dir: &std::path::Path, port: u16, mode: &str, app: SocketAddr) -> String {
    server_side_with(ca, dir, port, mode, app, "[]")
}

/// Proxy B with AuthorizationPolicies (`authz`, a YAML list) on its inbound listener.
fn server_side_with(ca: &Ca, dir: &std::path::Path, port: u16, mode: &str, app: SocketAddr, authz: &str) -> String {
    format!(
        "{}listeners: [{{name: inbound, address: '127.0.0.1:{port}', peerAuthentication: {mode}, authorization: {authz}}}]\nvirtualHosts: [{{name: in, domains: ['*'], routes: [{{route: [{{cluster: app}}]}}]}}]\nclusters: [{{name: app, endpoints: ['{app}']}}]\n",
        ca.identity_files(dir, "default", "reviews")
    )
}

/// Proxy A: the source sidecar, outbound listener, ISTIO_MUTUAL to `dest` under cluster `name`.
fn client_side(ca: &Ca, dir: &std::path::Path, port: u16, name: &str, dest: SocketAddr, extra_tls: &str) -> String {
    format!(
        "{}listeners: [{{name: outbound, address: '127.0.0.1:{port}'}}]\nvirtualHosts: [{{name: reviews, domains: [reviews], routes: [{{route: [{{cluster: '{name}'}}]}}]}}]\nclusters: [{{name: '{name}', endpoints: ['{dest}'], tls: {{mode: ISTIO_MUTUAL{extra_tls}}}}}]\n",
        ca.identity_files(dir, "default", "productpage")
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("skein-mtls-{}-{name}", std::process::id()))
}

/// Caller sidecar A (outbound, ISTIO_MUTUAL) → destination sidecar B (inbound `mode`, with
/// `authz` policies) → app. `san` is appended to A's cluster TLS settings.
struct Pair {
    a_port: u16,
    b_port: u16,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    _proxies: [(Listeners, Metrics); 2],
}

async fn pair(name: &str, mode: &str, san: &str, authz: &str) -> Pair {
    let ca = Ca::new("cluster.local");
    let dir = tmp(name);
    let (app_addr, seen) = app().await;
    let (b_port, a_port) = (free_port(), free_port());
    let b = proxy(&server_side_with(&ca, &dir, b_port, mode, app_addr, authz)).await;
    let dest = ([127, 0, 0, 1], b_port).into();
    let a = proxy(&client_side(&ca, &dir, a_port, "outbound|9080||reviews.default.svc.cluster.local", dest, san)).await;
    Pair { a_port, b_port, seen, _proxies: [a, b] }
}

#[tokio::test]
async fn istio_mutual_carries_the_callers_identity_to_a_strict_server() {
    let p = pair("strict", "STRICT", "", "[]").await;
    assert_eq!(get(p.a_port, "reviews").await, Some((200, "app".into())));
    let xfcc = p.seen.lock().unwrap()[0].clone().expect("XFCC set for an mTLS peer");
    assert_eq!(
        xfcc,
        "By=spiffe://cluster.local/ns/default/sa/reviews;URI=spiffe://cluster.local/ns/default/sa/productpage"
    );
    assert_eq!(
        principal("spiffe://cluster.local/ns/default/sa/productpage"),
        "cluster.local/ns/default/sa/productpage"
    );
}

#[tokio::test]
async fn strict_refuses_plaintext() {
    let p = pair("refuse", "STRICT", "", "[]").await;
    assert_eq!(get(p.b_port, "reviews").await.map(|r| r.0), None, "no HTTP answer to plaintext");
    assert!(p.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_port_level_mode_overrides_the_workload_mode_for_that_port_only() {
    let ca = Ca::new("cluster.local");
    let dir = tmp("portlevel");
    let (app_addr, seen) = app().await;
    let (open, strict) = (free_port(), free_port());
    // PeerAuthentication STRICT with portLevelMtls {open: DISABLE}, on two inbound listeners.
    let cfg = format!(
        "{}listeners:\n- {{name: inbound, address: '127.0.0.1:{open}', peerAuthentication: STRICT, portPeerAuthentication: {{{open}: DISABLE, {strict}: DISABLE}}}}\n- {{name: other, address: '127.0.0.1:{strict}', peerAuthentication: STRICT, portPeerAuthentication: {{{open}: DISABLE}}}}\nvirtualHosts: [{{name: in, domains: ['*'], routes: [{{route: [{{cluster: app}}]}}]}}]\nclusters: [{{name: app, endpoints: ['{app_addr}']}}]\n",
        ca.identity_files(&dir, "default", "reviews")
    );
    let _b = proxy(&cfg).await;
    assert_eq!(get(open, "reviews").await, Some((200, "app".into())), "the DISABLE port takes plaintext");
    assert_eq!(get(strict, "reviews").await.map(|r| r.0), None, "another port keeps STRICT");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn permissive_accepts_mtls_and_plaintext_on_one_port() {
    let p = pair("permissive", "PERMISSIVE", "", "[]").await;
    assert_eq!(get(p.a_port, "reviews").await, Some((200, "app".into())), "mTLS");
    assert_eq!(get(p.b_port, "reviews").await, Some((200, "app".into())), "plaintext");
    let seen = p.seen.lock().unwrap().clone();
    assert!(seen[0].as_deref().is_some_and(|x| x.contains("URI=spiffe://cluster.local/ns/default/sa/productpage")));
    assert_eq!(seen[1], None, "plaintext request carries no identity");
}

#[tokio::test]
async fn caller_refuses_a_server_whose_identity_is_not_the_expected_one() {
    let san = ", subjectAltNames: ['spiffe://cluster.local/ns/default/sa/ratings']";
    let p = pair("san", "STRICT", san, "[]").await;
    assert_eq!(get(p.a_port, "reviews").await.map(|r| r.0), Some(503));
    assert!(p.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn east_west_gateway_passes_end_to_end_mtls_without_holding_keys() {
    let ca = Ca::new("cluster.local");
    let dir = tmp("eastwest");
    let (app, seen) = app().await;
    let (b_port, gw_port, a_port) = (free_port(), free_port(), free_port());
    let _b = proxy(&server_side(&ca, &dir, b_port, "STRICT", app)).await;
    // The gateway as the operator installs it: a mesh identity of its own, and the local
    // cluster with the DestinationRule's ISTIO_MUTUAL (for its own clients). Passthrough must
    // use neither: the caller's TLS goes to the workload untouched.
    let gw = format!(
        "{}listeners: [{{name: tls, address: '127.0.0.1:{gw_port}', protocol: AUTO_PASSTHROUGH, passthroughHosts: [reviews.default.svc.cluster.local]}}]\nclusters: [{{name: 'outbound|9080||reviews.default.svc.cluster.local', endpoints: ['127.0.0.1:{b_port}'], tls: {{mode: ISTIO_MUTUAL}}}}]\n",
        ca.identity_files(&dir.join("gw"), "istio-system", "skein-eastwestgateway")
    );
    let (_gw, gw_metrics) = proxy(&gw).await;
    // The caller in the other cluster sends to the `.global` name via the gateway.
    let _a = proxy(&client_side(
        &ca,
        &dir,
        a_port,
        "outbound|9080||reviews.default.global",
        ([127, 0, 0, 1], gw_port).into(),
        "",
    ))
    .await;

    assert_eq!(get(a_port, "reviews").await, Some((200, "app".into())));
    let xfcc = seen.lock().unwrap()[0].clone().unwrap();
    assert!(
        xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "the server authenticated the caller itself: {xfcc}"
    );
    assert!(
        gw_metrics.render().contains(
            "istio_tcp_connections_opened_total{destination_service=\"reviews.default.svc.cluster.local\"} 1"
        )
    );
}

/// Handshake between two identities over an in-memory pipe; returns the server's view of the
/// client's SPIFFE id.
async fn handshake(server: &Identity, client: &Identity) -> Result<Option<String>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config(true).unwrap());
    let connector = tokio_rustls::TlsConnector::from(client.client_config(vec![]).unwrap());
    let srv = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let peer = s.get_ref().1.peer_certificates().and_then(|c| c.first().and_then(skein_proxy::identity::spiffe_id));
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(b"pong").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let name = ServerName::try_from("outbound_.9080_._.reviews.default.svc.cluster.local").unwrap();
    let cli = async {
        let mut c = connector.connect(name, a).await.map_err(|e| e.to_string())?;
        c.write_all(b"ping").await.map_err(|e| e.to_string())?;
        c.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let (c, s) = tokio::join!(cli, srv);
    c?;
    s.unwrap()
}

#[tokio::test]
async fn peers_under_another_root_are_refused_both_ways() {
    let (ca, other) = (Ca::new("cluster.local"), Ca::new("cluster.local"));
    let (server, stranger) = (ca.identity("default", "reviews"), other.identity("default", "productpage"));
    assert_eq!(
        handshake(&server, &ca.identity("default", "productpage")).await,
        Ok(Some("spiffe://cluster.local/ns/default/sa/productpage".into()))
    );
    assert!(handshake(&server, &stranger).await.is_err(), "server refuses a client from another root");
    assert!(handshake(&stranger, &server).await.is_err(), "client refuses a server from another root");
}

#[test]
fn identity_errors_name_the_input_without_echoing_it() {
    let ca = Ca::new("cluster.local");
    let (chain, _key) = ca.issue("default", "reviews");
    let err =
        Identity::from_pem(chain.as_bytes(), b"SECRET-NOT-A-KEY", ca.root_pem().as_bytes()).unwrap_err().to_string();
    assert!(err.starts_with("privateKey"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
    let err = Identity::from_pem(b"", b"", b"").unwrap_err().to_string();
    assert!(err.starts_with("certChain"), "{err}");
}

#[tokio::test]
async fn authorization_policies_allow_by_principal_and_deny_everyone_else() {
    let allow_productpage = "[{name: default/reviews-viewer, rules: [{from: [{source: {principals: ['cluster.local/ns/default/sa/productpage']}}], to: [{operation: {methods: [GET]}}]}]}]";
    let p = pair("authz", "PERMISSIVE", "", allow_productpage).await;
    assert_eq!(get(p.a_port, "reviews").await, Some((200, "app".into())), "productpage over mTLS is allowed");
    assert_eq!(get(p.b_port, "reviews").await, Some((403, "RBAC: access denied".into())), "plaintext has no principal");
    assert_eq!(p.seen.lock().unwrap().len(), 1);

    // allow-nothing: an ALLOW policy without rules.
    let nothing = pair("nothing", "PERMISSIVE", "", "[{name: default/allow-nothing}]").await;
    assert_eq!(get(nothing.a_port, "reviews").await.map(|r| r.0), Some(403));
    assert!(nothing.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn rotated_certificate_files_are_picked_up_without_a_config_change() {
    let ca = Ca::new("cluster.local");
    let dir = tmp("rotation");
    let identity = ca.identity_files(&dir, "default", "reviews");
    let file = dir.join("proxy.yaml");
    std::fs::write(&file, format!("version: '1'\nlisteners: []\n{identity}")).unwrap();
    let store = Store::new(skein_proxy::config_file::read(&file).unwrap()).unwrap();
    let spiffe = |s: &Store| s.current().identity.as_ref().map(|i| i.spiffe_id.clone()).unwrap_or_default();
    assert_eq!(spiffe(&store), "spiffe://cluster.local/ns/default/sa/reviews");
    tokio::spawn(skein_proxy::config_file::watch(
        file.clone(),
        store.clone(),
        Metrics::default(),
        Duration::from_millis(50),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The CA agent rewrites the same files with a new certificate (here: a new identity, so
    // the change is visible), leaving the config file alone.
    let (chain, key) = ca.issue("default", "reviews-rotated");
    std::fs::write(dir.join("reviews.key"), key).unwrap();
    std::fs::write(dir.join("reviews.crt"), chain).unwrap();
    let start = std::time::Instant::now();
    while spiffe(&store) != "spiffe://cluster.local/ns/default/sa/reviews-rotated" {
        assert!(start.elapsed() < Duration::from_secs(5), "rotation not picked up: {}", spiffe(&store));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.current().config.version, "1", "same config, new certificate");
}

/// A STRICT mesh server (the CA's `reviews` identity) answering "app" over HTTP/1.1 after
/// 200 ms; records the leaf certificate the client presented on each connection.
async fn recording_server(ca: &Ca) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.identity("default", "reviews").server_config(true).unwrap());
    let leaves = Arc::new(Mutex::new(Vec::new()));
    let seen = leaves.clone();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(c).await else { return };
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                seen.lock().unwrap().push(leaf.unwrap_or_default());
                let svc = service_fn(|_req: Request<Incoming>| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"app"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (addr, leaves)
}

fn leaf_der(chain_pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(chain_pem.as_bytes()).next().unwrap().unwrap().to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_keeps_the_cluster_and_reaches_new_connections() {
    let ca = Ca::new("cluster.local");
    let dir = tmp("renewal");
    let (dest, leaves) = recording_server(&ca).await;
    let (a_port, name) = (free_port(), "outbound|9080||reviews.default.svc.cluster.local");
    let yaml = client_side(&ca, &dir, a_port, name, dest, "");
    let first_leaf = leaf_der(&std::fs::read_to_string(dir.join("productpage.crt")).unwrap());
    let store = Store::new(serde_yaml::from_str(&yaml).unwrap()).unwrap();
    let mut listeners = Listeners::new(Proxy::new(store.clone(), Metrics::default()));
    assert!(listeners.sync(&store.current().config.listeners).await.is_empty());
    assert_eq!(get(a_port, "reviews").await, Some((200, "app".into())));
    let seen = |first: &[u8], renewed: &[u8]| -> Vec<&'static str> {
        let l = leaves.lock().unwrap();
        l.iter()
            .map(|c| {
                if c == first {
                    "first"
                } else if c == renewed {
                    "renewed"
                } else {
                    "other"
                }
            })
            .collect()
    };
    assert_eq!(seen(&first_leaf, &[]), ["first"]);
    let cluster = store.current().cluster(name).unwrap().clone();

    // Renewal: a new key and certificate for the same ServiceAccount, same root.
    let (chain, key) = ca.issue("default", "productpage");
    std::fs::write(dir.join("productpage.key"), key).unwrap();
    std::fs::write(dir.join("productpage.crt"), &chain).unwrap();
    store.apply(serde_yaml::from_str(&yaml).unwrap()).unwrap();
    let renewed_leaf = leaf_der(&chain);
    assert_ne!(renewed_leaf, first_leaf);
    assert!(Arc::ptr_eq(&cluster, store.current().cluster(name).unwrap()), "renewal rebuilt the cluster");

    // The kept pool's idle connection carries the next request (no new handshake) ...
    assert_eq!(get(a_port, "reviews").await, Some((200, "app".into())));
    assert_eq!(seen(&first_leaf, &renewed_leaf), ["first"], "the pool did not survive the renewal");
    // ... and a connection made now presents the renewed certificate: two requests at once
    // need a second connection.
    let (r1, r2) = tokio::join!(get(a_port, "reviews"), get(a_port, "reviews"));
    assert_eq!((r1, r2), (Some((200, "app".into())), Some((200, "app".into()))));
    assert_eq!(seen(&first_leaf, &renewed_leaf), ["first", "renewed"]);

    // Another identity (a different ServiceAccount) is not a renewal: the cluster starts afresh.
    let (chain, key) = ca.issue("default", "ratings");
    std::fs::write(dir.join("productpage.key"), key).unwrap();
    std::fs::write(dir.join("productpage.crt"), &chain).unwrap();
    store.apply(serde_yaml::from_str(&yaml).unwrap()).unwrap();
    assert!(!Arc::ptr_eq(&cluster, store.current().cluster(name).unwrap()), "a new identity kept old connections");
}

#[tokio::test]
async fn a_strict_listener_speaks_http2_when_the_peer_negotiates_h2_with_alpn() {
    let ca = Ca::new("cluster.local");
    let (app_addr, seen) = app().await;
    let b_port = free_port();
    let _b = proxy(&server_side(&ca, &tmp("alpn"), b_port, "STRICT", app_addr)).await;
    // A mesh client offering only h2, as a sidecar does towards an HTTP/2 (gRPC) cluster.
    let mut cfg = (*ca.identity("default", "productpage").client_config(vec![]).unwrap()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", b_port)).await.unwrap();
    let name = ServerName::try_from("outbound_.9080_._.reviews.default.svc.cluster.local").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("mTLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server chose h2");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    let req = Request::builder().uri("http://reviews/").body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.expect("an HTTP/2 answer");
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert_eq!(&body[..], b"app");
    assert!(seen.lock().unwrap()[0].as_deref().is_some_and(|x| x.ends_with("sa/productpage")), "caller identity");
}
