//! TCP listeners: plain TCP proxying to a cluster, and SNI passthrough (the east-west gateway
//! on 15443): the ClientHello's server name picks the cluster and the bytes are forwarded
//! untouched, so the workloads' mTLS runs end to end and the gateway never holds their keys.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use skein_api::proxy::{Capture, OutboundPolicy, PeerAuthMode};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::debug;

use crate::{
    authz,
    http::ConnInfo,
    identity,
    metrics::{Metrics, TcpLabels},
    runtime::Runtime,
    server::{Inbound, inbound_tls},
    sni::{self, Peek},
    store::Store,
    upstream::{self, HashInput, Upstream},
};

/// How long a client has to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no traffic either way for this long is closed (Envoy's default 1 h).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a TCP listener does with a connection.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Forward to `cluster`, under `listener`'s authorization policies.
    Cluster {
        /// Destination cluster.
        cluster: String,
        /// Listener name.
        listener: Arc<str>,
    },
    /// Route by the TLS server name (Istio AUTO_PASSTHROUGH).
    SniPassthrough,
    /// Route by the TLS server name to the listener's `tlsRoutes` (gateway PASSTHROUGH).
    TlsRoutes {
        /// Listener name.
        listener: Arc<str>,
    },
}

/// Serves `listener` until the task is aborted. `peer_auth` applies to `Mode::Cluster`
/// listeners (inbound mTLS termination; `None`: the listener's mode in the running config,
/// read per connection); passthrough never terminates TLS.
pub async fn serve(listener: TcpListener, mode: Mode, peer_auth: Option<PeerAuthMode>, store: Store, metrics: Metrics) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mode, store, metrics) = (mode.clone(), store.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, peer, mode, peer_auth, store, metrics).await {
                debug!(%peer, error = %e, "tcp connection closed");
            }
        });
    }
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    mode: Mode,
    peer_auth: Option<PeerAuthMode>,
    store: Store,
    metrics: Metrics,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let local_port = client.local_addr().map(|a| a.port()).unwrap_or(0);
    let rt = store.current();
    let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, "no cluster for connection");
    match mode {
        Mode::Cluster { cluster, listener } => {
            let up = rt.cluster(&cluster).cloned().ok_or_else(not_found)?;
            let peer_auth = peer_auth.unwrap_or_else(|| rt.peer_authentication(&listener, local_port));
            let inbound = inbound_tls(client, peer_auth, &rt).await?;
            let identity = match &inbound {
                Inbound::Plain(_) => None,
                Inbound::Tls(_, id) => id.clone(),
            };
            authorize(&rt, &listener, identity.as_deref(), peer, local_port)?;
            match inbound {
                Inbound::Plain(s) => proxy_to(s, Vec::new(), &up, peer, &metrics).await,
                Inbound::Tls(s, _) => proxy_to(*s, Vec::new(), &up, peer, &metrics).await,
            }
        }
        Mode::SniPassthrough => {
            let (sni, first) = client_hello(&mut client).await?;
            // Unknown destination: close. Nothing is forwarded anywhere the config does not name.
            let up = sni
                .as_deref()
                .and_then(sni::cluster_for_sni)
                .and_then(|name| {
                    rt.cluster(&name).or_else(|| sni::local_name_for_global(&name).and_then(|n| rt.cluster(&n)))
                })
                .cloned()
                .ok_or_else(not_found)?;
            proxy_to(client, first, &up, peer, &metrics).await
        }
        Mode::TlsRoutes { listener } => {
            let (sni, first) = client_hello(&mut client).await?;
            let up = sni.as_deref().and_then(|n| rt.tls_route(&listener, n)).cloned().ok_or_else(not_found)?;
            proxy_to(client, first, &up, peer, &metrics).await
        }
    }
}

/// A captured connection that is not HTTP. Outbound: to the cluster whose service address the
/// client dialled, else per `outboundTrafficPolicy` (ALLOW_ANY: to the original destination;
/// REGISTRY_ONLY: closed). Inbound: authorized, then delivered to the original destination.
pub async fn captured<C>(
    client: C,
    first: Vec<u8>,
    conn: &ConnInfo,
    rt: &Runtime,
    metrics: &Metrics,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some((capture, dst)) = conn.captured else { return Err(std::io::Error::other("not a captured connection")) };
    match capture {
        Capture::Outbound => {
            if let Some(up) = rt.cluster_for_address(dst) {
                return proxy_to(client, first, up, conn.peer, metrics).await;
            }
            if rt.config.outbound_traffic_policy == OutboundPolicy::RegistryOnly {
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "not in the registry"));
            }
            relay_to(client, first, dst, "PassthroughCluster", metrics).await
        }
        Capture::Inbound => {
            authorize(rt, &conn.listener, conn.identity.as_deref(), conn.peer, dst.port())?;
            relay_to(client, first, dst, &format!("inbound|{}||", dst.port()), metrics).await
        }
    }
}

/// Plain TCP to one address (passthrough and inbound delivery).
async fn relay_to<C>(
    mut client: C,
    first: Vec<u8>,
    dst: SocketAddr,
    service: &str,
    metrics: &Metrics,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let tcp = tokio::time::timeout(crate::http::PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(dst))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    let _ = tcp.set_nodelay(true);
    counted(metrics, service, relay(&mut client, tcp, &first)).await
}

/// Runs a relay under Istio's TCP metrics for `service`.
async fn counted(
    metrics: &Metrics,
    service: &str,
    relay: impl std::future::Future<Output = std::io::Result<(u64, u64)>>,
) -> std::io::Result<()> {
    let labels = TcpLabels { destination_service: service.to_string() };
    metrics.tcp_opened.get_or_create(&labels).inc();
    let result = relay.await;
    if let Ok((sent, received)) = result {
        metrics.tcp_sent.get_or_create(&labels).inc_by(sent);
        metrics.tcp_received.get_or_create(&labels).inc_by(received);
    }
    metrics.tcp_closed.get_or_create(&labels).inc();
    result.map(|_| ())
}

/// Istio's RBAC for a TCP connection: a denied one is closed, as Envoy's RBAC filter does.
fn authorize(rt: &Runtime, listener: &str, identity: Option<&str>, peer: SocketAddr, port: u16) -> std::io::Result<()> {
    let Some(az) = rt.authorizer(listener) else { return Ok(()) };
    let req = authz::Request { principal: identity.map(identity::principal), source_ip: peer.ip(), port, http: None };
    match az.check(&req) {
        authz::Decision::Deny(policy) => {
            Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("denied by {policy}")))
        }
        _ => Ok(()),
    }
}

/// Connects to `up` (with its client TLS, if any), sends `first`, then relays both ways.
async fn proxy_to<C>(
    mut client: C,
    first: Vec<u8>,
    up: &Arc<Upstream>,
    peer: SocketAddr,
    metrics: &Metrics,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some(_admission) = up.admit().await else {
        return Err(std::io::Error::other("cluster overflow"));
    };
    let tcp = connect(up, peer).await?;
    let relay = async {
        match &up.tls {
            None => relay(&mut client, tcp, &first).await,
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = tokio::time::timeout(up.connect_timeout, connector.connect(tls.server_name.clone(), tcp))
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout"))??;
                relay(&mut client, stream, &first).await
            }
        }
    };
    counted(metrics, up.service(), relay).await
}

async fn relay<C, U>(client: &mut C, mut upstream: U, first: &[u8]) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !first.is_empty() {
        upstream.write_all(first).await?;
    }
    let (sent, received) = copy_with_idle_timeout(client, &mut upstream).await?;
    Ok((sent + first.len() as u64, received))
}

async fn connect(up: &Arc<Upstream>, peer: SocketAddr) -> std::io::Result<TcpStream> {
    let headers = hyper::HeaderMap::new();
    let guard = up
        .pick(&HashInput { headers: &headers, source: Some(peer) })
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "cluster has no endpoints"))?;
    match tokio::time::timeout(up.connect_timeout, TcpStream::connect(guard.addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => {
            up.report(guard.addr, upstream::Outcome::ConnectFailure);
            Err(e)
        }
        Err(_) => {
            up.report(guard.addr, upstream::Outcome::ConnectFailure);
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))
        }
    }
}

/// Reads the ClientHello within `HELLO_TIMEOUT`; returns its SNI and the bytes read, to be
/// forwarded first.
async fn client_hello(client: &mut TcpStream) -> std::io::Result<(Option<String>, Vec<u8>)> {
    let mut first = Vec::new();
    let sni = tokio::time::timeout(HELLO_TIMEOUT, read_client_hello(client, &mut first))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no ClientHello"))??;
    Ok((sni, first))
}

/// Reads until the ClientHello is complete; returns its SNI. Bytes read stay in `buf` to be
/// forwarded first.
async fn read_client_hello(client: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    let mut chunk = [0u8; 2048];
    loop {
        match sni::peek(buf) {
            Peek::ClientHello(name) => return Ok(name),
            Peek::NotTls => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a TLS ClientHello")),
            Peek::NeedMore if buf.len() >= sni::MAX_CLIENT_HELLO => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "ClientHello too large"));
            }
            Peek::NeedMore => {}
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before ClientHello"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Copies both ways until both sides close, or nothing moves for `IDLE_TIMEOUT`. Returns bytes
/// (client→upstream, upstream→client).
async fn copy_with_idle_timeout<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut up, mut down) = (0u64, 0u64);
    let (mut a_open, mut b_open) = (true, true);
    let mut abuf = vec![0u8; 16 * 1024];
    let mut bbuf = vec![0u8; 16 * 1024];
    while a_open || b_open {
        tokio::select! {
            r = ar.read(&mut abuf), if a_open => {
                let n = r?;
                if n == 0 { a_open = false; bw.shutdown().await?; } else { bw.write_all(&abuf[..n]).await?; up += n as u64; }
            }
            r = br.read(&mut bbuf), if b_open => {
                let n = r?;
                if n == 0 { b_open = false; aw.shutdown().await?; } else { aw.write_all(&bbuf[..n]).await?; down += n as u64; }
            }
            _ = tokio::time::sleep(IDLE_TIMEOUT) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"));
            }
        }
    }
    Ok((up, down))
}
