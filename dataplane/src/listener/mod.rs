//! Listeners: the configured listeners opened and closed as the config changes, the accept
//! loop of listeners that may carry HTTP, and the inbound handshake (PeerAuthentication) every
//! listener shares. What a connection then becomes is a sibling's job: [`http`] serves HTTP/1.1
//! and HTTP/2 on it, [`tcp`] proxies it as bytes, [`admin`] serves the admin endpoints (in Envoy's formats from [`envoy_admin`]); the
//! siblings do not import each other, and only this module decides which one gets a
//! connection.

pub mod admin;
mod envoy_admin;
pub mod http;
mod streams;
pub mod tcp;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use skein_api::proxy::{Capture, Listener, ListenerProtocol, PeerAuthMode};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::{debug, info};

use crate::{
    capture,
    drain::StopListeners,
    http::{ConnInfo, Proxy},
    identity,
    limits::{AcceptErrors, Admitted, ConnectionLimits},
    metrics::ListenerLabel,
    runtime::Runtime,
};

/// Time a client has to complete the TLS handshake or send a complete request head.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener that may carry HTTP treats its connections.
#[derive(Debug, Clone)]
pub struct HttpListener {
    /// Listener name (selects its authorization policies and gateway TLS).
    pub name: Arc<str>,
    /// Inbound mTLS (PeerAuthentication). `None`: the listener's mode in the running config,
    /// read per connection so a PeerAuthentication change needs no listener restart.
    pub mode: Option<PeerAuthMode>,
    /// Transparent capture: the original destination decides, and non-HTTP is proxied as TCP.
    pub capture: Option<Capture>,
    /// Terminate TLS with the listener's gateway certificates.
    pub gateway_tls: bool,
}

/// Serves HTTP on `listener` until the task is aborted, terminating mTLS per `mode`.
pub async fn serve_http(listener: TcpListener, proxy: Arc<Proxy>, mode: PeerAuthMode, name: Arc<str>) {
    serve_listener(listener, proxy, HttpListener { name, mode: Some(mode), capture: None, gateway_tls: false }).await
}

/// Serves `listener` as `spec` says until the task is aborted.
pub async fn serve_listener(listener: TcpListener, proxy: Arc<Proxy>, spec: HttpListener) {
    let spec = Arc::new(spec);
    let mut gate = Gate::new(&listener, &proxy);
    loop {
        let Some((stream, peer, admitted)) = gate.accept(&listener).await else { continue };
        let _ = stream.set_nodelay(true);
        let (proxy, spec) = (proxy.clone(), spec.clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            if let Err(e) = accept(stream, peer, proxy, &spec).await {
                debug!(%peer, error = %e, "connection refused");
            }
        });
    }
}

/// The accept step every listener shares: connection caps (a connection over one is closed at
/// once and counted) and accept errors (out of descriptors) reported without flooding the log.
pub(crate) struct Gate {
    limits: ConnectionLimits,
    cap: Arc<tokio::sync::Semaphore>,
    errors: AcceptErrors,
    label: ListenerLabel,
    metrics: crate::metrics::Metrics,
}

impl Gate {
    pub(crate) fn new(listener: &TcpListener, proxy: &Proxy) -> Self {
        let limits = proxy.connection_limits().clone();
        let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        Self {
            cap: limits.listener(),
            limits,
            errors: AcceptErrors::default(),
            label: ListenerLabel { listener_address: address },
            metrics: proxy.metrics().clone(),
        }
    }

    /// The next admitted connection; `None` after an error or a connection over a cap.
    pub(crate) async fn accept(&mut self, listener: &TcpListener) -> Option<(TcpStream, SocketAddr, Admitted)> {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                self.errors.record(&self.label.listener_address, &e);
                // Out of descriptors the socket stays readable: wait before trying again.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        };
        match self.limits.admit(&self.cap) {
            Some(admitted) => Some((stream, peer, admitted)),
            None => {
                self.metrics.cx_overflow.get_or_create(&self.label).inc();
                debug!(%peer, "connection cap reached: closed");
                None
            }
        }
    }
}

async fn accept(stream: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>, spec: &HttpListener) -> std::io::Result<()> {
    // Counted until closed, so a draining proxy waits for it (captured TCP included).
    let _open = proxy.drain().track();
    let rt = proxy.current();
    let local = stream.local_addr()?;
    let captured = spec.capture.map(|c| (c, capture::original_dst(&stream).unwrap_or(local)));
    // Route and policy matching use the port the client addressed.
    let port = captured.map_or(local.port(), |(_, dst)| dst.port());
    let https = spec.gateway_tls;
    let worker = proxy.assign_worker();
    let conn = |identity| ConnInfo { listener: spec.name.clone(), port, peer, identity, captured, https, worker };
    if spec.gateway_tls {
        let cfg = rt.gateway_tls(&spec.name).cloned().ok_or_else(|| std::io::Error::other("no gateway TLS"))?;
        let tls = tokio::time::timeout(HEAD_TIMEOUT, tokio_rustls::TlsAcceptor::from(cfg).accept(stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout"))??;
        http::serve_conn(tls, proxy, Arc::new(conn(None))).await;
        return Ok(());
    }
    let mode = spec.mode.unwrap_or_else(|| rt.peer_authentication(&spec.name, port));
    match inbound_tls(stream, mode, &rt).await? {
        Inbound::Plain(s) => dispatch(s, proxy, conn(None)).await,
        Inbound::Tls(s, identity) => dispatch(s, proxy, conn(identity)).await,
    }
}

/// Plain listeners speak HTTP; capture listeners sniff and hand non-HTTP to the TCP path.
async fn dispatch<S>(mut io: S, proxy: Arc<Proxy>, conn: ConnInfo) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if conn.captured.is_none() {
        http::serve_conn(io, proxy, Arc::new(conn)).await;
        return Ok(());
    }
    let (kind, first) = capture::sniff(&mut io).await?;
    match kind {
        capture::Sniffed::Http => {
            http::serve_conn(capture::Rewind::new(first, io), proxy, Arc::new(conn)).await;
            Ok(())
        }
        capture::Sniffed::Tcp => tcp::captured(io, first, &conn, &proxy).await,
    }
}

/// An accepted connection after the PeerAuthentication decision.
pub enum Inbound {
    /// Plaintext (DISABLE, or PERMISSIVE with a plaintext client).
    Plain(TcpStream),
    /// mTLS terminated, with the peer's SPIFFE id if it presented a certificate.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Option<Arc<str>>),
}

/// Applies the listener's PeerAuthentication mode: STRICT requires mTLS, PERMISSIVE tells
/// TLS from plaintext by the first byte (a TLS handshake record starts with 0x16), DISABLE
/// takes the connection as it is.
pub async fn inbound_tls(stream: TcpStream, mode: PeerAuthMode, rt: &Runtime) -> std::io::Result<Inbound> {
    let config = match mode {
        PeerAuthMode::Disable => return Ok(Inbound::Plain(stream)),
        PeerAuthMode::Strict => rt.strict_tls.clone(),
        PeerAuthMode::Permissive => {
            let mut first = [0u8; 1];
            let n = tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no data"))??;
            if n == 0 || first[0] != 0x16 {
                return Ok(Inbound::Plain(stream));
            }
            rt.permissive_tls.clone()
        }
    };
    let config = config.ok_or_else(|| std::io::Error::other("mTLS configured without an identity"))?;
    let tls = tokio::time::timeout(HEAD_TIMEOUT, tokio_rustls::TlsAcceptor::from(config).accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout"))??;
    let identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(identity::spiffe_id);
    Ok(Inbound::Tls(Box::new(tls), identity.map(Arc::from)))
}

/// The configured listeners that stay open once `stopped` ones were closed on request.
pub fn serving(wanted: &[Listener], stopped: Option<StopListeners>) -> Vec<Listener> {
    match stopped {
        None => wanted.to_vec(),
        Some(StopListeners::All) => Vec::new(),
        Some(StopListeners::InboundOnly) => {
            wanted.iter().filter(|l| l.capture != Some(Capture::Inbound)).cloned().collect()
        }
    }
}

/// Keeps the open listeners equal to the configured ones.
pub struct Listeners {
    proxy: Arc<Proxy>,
    /// Open listeners by name: the spec they were opened with, the bound address, the task.
    open: HashMap<String, (Listener, SocketAddr, JoinHandle<()>)>,
}

impl Listeners {
    /// No listeners yet.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy, open: HashMap::new() }
    }

    /// Opens new listeners and closes removed or moved ones. A listener that cannot bind is
    /// reported and skipped; the others still serve. Policy (PeerAuthentication,
    /// authorization, TLS routes, certificates) is read per connection from the running
    /// config, so changing it keeps the socket open: no connection is refused meanwhile.
    pub async fn sync(&mut self, wanted: &[Listener]) -> Vec<String> {
        let mut errors = Vec::new();
        let stale: Vec<String> = self
            .open
            .iter()
            .filter(|(_, (opened, _, _))| !wanted.iter().any(|l| same_socket(l, opened)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((_, _, task)) = self.open.remove(&name) {
                task.abort();
                // A reopened address can only be bound once the old socket is gone.
                let _ = task.await;
                info!(listener = %name, "closed listener");
            }
        }
        for l in wanted {
            if self.open.contains_key(&l.name) {
                continue;
            }
            match TcpListener::bind(l.address).await {
                Ok(sock) => {
                    let addr = sock.local_addr().unwrap_or(l.address);
                    info!(listener = %l.name, %addr, "listening");
                    let task = match (l.protocol, &l.cluster) {
                        (ListenerProtocol::Tcp, Some(c)) => tokio::spawn(tcp::serve(
                            sock,
                            tcp::Mode::Cluster { cluster: c.clone(), listener: l.name.as_str().into() },
                            None,
                            self.proxy.clone(),
                        )),
                        (ListenerProtocol::AutoPassthrough, _) => tokio::spawn(tcp::serve(
                            sock,
                            tcp::Mode::SniPassthrough { listener: l.name.as_str().into() },
                            Some(PeerAuthMode::Disable),
                            self.proxy.clone(),
                        )),
                        (ListenerProtocol::Tls, _) => tokio::spawn(tcp::serve(
                            sock,
                            tcp::Mode::TlsRoutes { listener: l.name.as_str().into() },
                            Some(PeerAuthMode::Disable),
                            self.proxy.clone(),
                        )),
                        _ => tokio::spawn(serve_listener(
                            sock,
                            self.proxy.clone(),
                            HttpListener {
                                name: l.name.as_str().into(),
                                mode: None,
                                capture: l.capture,
                                gateway_tls: l.server_tls.is_some(),
                            },
                        )),
                    };
                    self.open.insert(l.name.clone(), (l.clone(), addr, task));
                }
                Err(e) => errors.push(format!("listeners[{}]: bind {}: {e}", l.name, l.address)),
            }
        }
        errors
    }
}

impl Listeners {
    /// The address a listener is bound to (its port when the config asked for port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.open.get(name).map(|(_, addr, _)| *addr)
    }
}

/// Whether two listener specs can share one open socket and accept loop: everything the
/// loop was started with is equal; the rest is read per connection.
fn same_socket(a: &Listener, b: &Listener) -> bool {
    a.name == b.name
        && a.address == b.address
        && a.protocol == b.protocol
        && a.cluster == b.cluster
        && a.capture == b.capture
        && a.server_tls.is_some() == b.server_tls.is_some()
}

impl Listeners {
    /// Closes every listener and returns once their sockets are gone (an aborted task drops
    /// its socket only when the runtime next polls it): nothing is accepted after this.
    pub async fn close(mut self) {
        for (_, (_, _, task)) in self.open.drain() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for (_, (_, _, task)) in self.open.drain() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::Metrics, store::Store};

    fn config(extra: &str) -> skein_api::proxy::ProxyConfig {
        serde_yaml::from_str(&format!(
            "listeners: [{{name: web, address: '127.0.0.1:0'{extra}}}]\nvirtualHosts: [{{name: a, domains: ['*'], routes: [{{redirect: {{uri: /x}}}}]}}]\n"
        ))
        .unwrap()
    }

    async fn status(addr: SocketAddr) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out[9..12].parse().unwrap()
    }

    #[tokio::test]
    async fn a_policy_change_applies_without_reopening_the_listener() {
        let store = Store::new(config("")).unwrap();
        let metrics = Metrics::default();
        let proxy = crate::http::Proxy::new(store.clone(), metrics.clone());
        let mut listeners = Listeners::new(proxy);
        assert!(listeners.sync(&store.current().config.listeners).await.is_empty());
        let addr = listeners.local_addr("web").unwrap();
        assert_eq!(status(addr).await, 301);

        // allow-nothing: same socket (same port, bound to port 0), and the policy is in force.
        store.apply(config(", authorization: [{name: deny-all, action: ALLOW}]")).unwrap();
        assert!(listeners.sync(&store.current().config.listeners).await.is_empty());
        assert_eq!(listeners.local_addr("web"), Some(addr), "the listener was reopened");
        assert_eq!(status(addr).await, 403);

        // A protocol change does reopen it, and the new socket binds (the old one is gone first).
        let mut tcp = config("");
        tcp.listeners[0].address = addr;
        store.apply(tcp.clone()).unwrap();
        assert!(listeners.sync(&store.current().config.listeners).await.is_empty());
        // The new socket proxies TCP to an upstream that answers with a banner.
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = upstream.accept().await {
                let _ = s.write_all(b"tcp-upstream\n").await;
            }
        });
        tcp.listeners[0].protocol = skein_api::proxy::ListenerProtocol::Tcp;
        tcp.listeners[0].cluster = Some("c".into());
        tcp.clusters.push(serde_yaml::from_str(&format!("{{name: c, endpoints: ['{up_addr}']}}")).unwrap());
        store.apply(tcp).unwrap();
        let errors = listeners.sync(&store.current().config.listeners).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(listeners.local_addr("web"), Some(addr));
        // Traffic proves the socket was reopened as TCP: the HTTP listener would answer 301.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut banner = vec![0u8; 13];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut banner),
        )
        .await
        .expect("banner in time")
        .unwrap();
        assert_eq!(banner, b"tcp-upstream\n");
    }
}
