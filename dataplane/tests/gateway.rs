//! Gateway mode: HTTPS servers terminated with certificates chosen by server name (SIMPLE and
//! MUTUAL), and TLS passthrough routed by server name to upstreams that keep their own TLS.

mod common;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use common::{ca::Ca, free_port};
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use skein_proxy::{http::Proxy, listener::Listeners, metrics::Metrics, store::Store};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("skein-gateway-{}-{name}", std::process::id()))
}

async fn app(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(name.as_bytes()))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(c), svc).await;
            });
        }
    });
    addr
}

async fn gateway(yaml: &str) -> Listeners {
    let store = Store::new(serde_yaml::from_str(yaml).unwrap()).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let metrics = Metrics::default();
    let mut listeners = Listeners::new(Proxy::new(store.clone(), metrics));
    let errors = listeners.sync(&store.current().config.listeners).await;
    assert!(errors.is_empty(), "{errors:?}");
    listeners
}

/// GET over TLS with server name `sni`; Err if the handshake or the exchange fails.
async fn https_get(port: u16, cfg: Arc<rustls::ClientConfig>, sni: &str) -> Result<String, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let req = format!("GET /productpage HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).to_string();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(text);
    }
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[tokio::test]
async fn https_gateway_serves_each_host_with_its_own_certificate() {
    let ca = Ca::new("cluster.local");
    let dir = tmp("https");
    let (bc, bk) = ca.dns_files(&dir, "bookinfo", &["bookinfo.com"]);
    let (wc, wk) = ca.dns_files(&dir, "wild", &["*.example.com"]);
    let app = app("productpage").await;
    let port = free_port();
    let _gw = gateway(&format!(
        r#"
listeners:
  - name: https
    address: "127.0.0.1:{port}"
    serverTls:
      credentials:
        - {{hosts: [bookinfo.com], certChain: "{bc}", privateKey: "{bk}"}}
        - {{hosts: ["*.example.com"], certChain: "{wc}", privateKey: "{wk}"}}
virtualHosts: [{{name: gw, domains: ["*"], routes: [{{route: [{{cluster: app}}]}}]}}]
clusters: [{{name: app, endpoints: ["{app}"]}}]
"#
    ))
    .await;
    let client = ca.client_config(None);
    // The client verifies the certificate against the name it asked for, so each success
    // proves the gateway picked the matching certificate.
    assert_eq!(https_get(port, client.clone(), "bookinfo.com").await.unwrap(), "productpage");
    assert_eq!(https_get(port, client.clone(), "shop.example.com").await.unwrap(), "productpage");
    let e = https_get(port, client, "other.org").await.unwrap_err();
    assert!(e.contains("certificate") || e.contains("NotValidForName"), "{e}");
    // Plaintext to the HTTPS port gets nothing served.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: bookinfo.com\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("productpage"));
}

#[tokio::test]
async fn mutual_gateway_refuses_clients_without_a_certificate_from_its_ca() {
    let ca = Ca::new("cluster.local");
    let other = Ca::new("elsewhere");
    let dir = tmp("mutual");
    let (bc, bk) = ca.dns_files(&dir, "bookinfo", &["bookinfo.com"]);
    std::fs::write(dir.join("ca.crt"), ca.root_pem()).unwrap();
    let app = app("productpage").await;
    let port = free_port();
    let _gw = gateway(&format!(
        r#"
listeners:
  - name: mtls
    address: "127.0.0.1:{port}"
    serverTls:
      credentials: [{{hosts: [bookinfo.com], certChain: "{bc}", privateKey: "{bk}"}}]
      caCertificates: "{}"
virtualHosts: [{{name: gw, domains: ["*"], routes: [{{route: [{{cluster: app}}]}}]}}]
clusters: [{{name: app, endpoints: ["{app}"]}}]
"#,
        dir.join("ca.crt").display()
    ))
    .await;
    assert!(https_get(port, ca.client_config(None), "bookinfo.com").await.is_err(), "no client certificate");
    let foreign = other.issue("default", "x");
    // A certificate from another CA is refused as well.
    let mut cfg = (*ca.client_config(Some(foreign))).clone();
    cfg.alpn_protocols.clear();
    assert!(https_get(port, Arc::new(cfg), "bookinfo.com").await.is_err(), "foreign client certificate");
    let mine = ca.issue("default", "client");
    assert_eq!(https_get(port, ca.client_config(Some(mine)), "bookinfo.com").await.unwrap(), "productpage");
}

/// A TLS server with a certificate for `names` that writes `name` and closes.
async fn tls_upstream(ca: &Ca, names: &[&str], name: &'static str) -> SocketAddr {
    let (chain, key) = ca.issue_dns(names);
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap(),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(c).await {
                    let _ = s.write_all(name.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn tls_read(port: u16, ca: &Ca, sni: &str) -> Result<String, String> {
    tls_read_with(port, ca.client_config(None), sni).await
}

async fn tls_read_with(port: u16, cfg: Arc<rustls::ClientConfig>, sni: &str) -> Result<String, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut out))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test]
async fn tls_passthrough_routes_by_server_name_and_never_terminates() {
    let ca = Ca::new("cluster.local");
    let db = tls_upstream(&ca, &["db.example.com"], "db").await;
    let web = tls_upstream(&ca, &["*.example.com"], "web").await;
    let port = free_port();
    // The gateway has no certificate and no identity: it cannot terminate anything.
    let _gw = gateway(&format!(
        r#"
listeners:
  - name: passthrough
    address: "127.0.0.1:{port}"
    protocol: TLS
    tlsRoutes:
      - {{sniHosts: [db.example.com], cluster: db}}
      - {{sniHosts: ["*.example.com"], cluster: web}}
clusters:
  - {{name: db, endpoints: ["{db}"]}}
  - {{name: web, endpoints: ["{web}"]}}
"#
    ))
    .await;
    assert_eq!(tls_read(port, &ca, "db.example.com").await.unwrap(), "db");
    assert_eq!(tls_read(port, &ca, "www.example.com").await.unwrap(), "web");
    assert!(tls_read(port, &ca, "other.org").await.is_err(), "unrouted server name is closed");
    // A ClientHello split over many TLS records (64-byte fragments) is reassembled and routed.
    let mut fragmenting = (*ca.client_config(None)).clone();
    fragmenting.max_fragment_size = Some(64);
    assert_eq!(tls_read_with(port, Arc::new(fragmenting), "db.example.com").await.unwrap(), "db");
}

#[tokio::test]
async fn an_unreadable_gateway_certificate_is_a_config_error_naming_the_field() {
    let cfg = serde_yaml::from_str(
        "listeners: [{name: https, address: '127.0.0.1:0', serverTls: {credentials: [{hosts: [a], certChain: /nonexistent/c.pem, privateKey: /nonexistent/k.pem}]}}]",
    )
    .unwrap();
    let e = Store::new(cfg).err().expect("config with a missing certificate is refused").to_string();
    assert!(e.starts_with("listeners[https].serverTls.credentials[0].certChain: read /nonexistent/c.pem"), "{e}");
}
