//! TCP listeners: plain TCP proxying to a cluster, and SNI passthrough (the east-west gateway
//! on 15443): the ClientHello's server name picks the cluster and the bytes are forwarded
//! untouched, so the workloads' mTLS runs end to end and the gateway never holds their keys.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use skein_api::proxy::{Capture, OutboundPolicy, PeerAuthMode};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::debug;

use super::{Inbound, inbound_tls};
use crate::{
    accesslog::Entry,
    authz,
    connect::tcp_connect,
    http::{ConnInfo, Proxy, ResponseFlag},
    identity,
    metrics::TcpLabels,
    runtime::Runtime,
    sni::{self, Peek},
    upstream::{self, HashInput, Upstream},
};

/// How long a client has to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Route by the TLS server name (Istio AUTO_PASSTHROUGH), to the listener's
    /// `passthroughHosts` only.
    SniPassthrough {
        /// Listener name.
        listener: Arc<str>,
    },
    /// Route by the TLS server name to the listener's `tlsRoutes` (gateway PASSTHROUGH).
    TlsRoutes {
        /// Listener name.
        listener: Arc<str>,
    },
}

/// Serves `listener` until the task is aborted. `peer_auth` applies to `Mode::Cluster`
/// listeners (inbound mTLS termination; `None`: the listener's mode in the running config,
/// read per connection); passthrough never terminates TLS.
pub async fn serve(listener: TcpListener, mode: Mode, peer_auth: Option<PeerAuthMode>, proxy: Arc<Proxy>) {
    let mut gate = super::Gate::new(&listener, &proxy);
    loop {
        let Some((stream, peer, admitted)) = gate.accept(&listener).await else { continue };
        let (mode, proxy) = (mode.clone(), proxy.clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            if let Err(e) = handle(stream, peer, mode, peer_auth, proxy).await {
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
    proxy: Arc<Proxy>,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let local = client.local_addr().ok();
    let local_port = local.map_or(0, |a| a.port());
    let rt = proxy.current();
    let session = Session::new(&proxy, &rt, peer, local);
    // No route: logged with Envoy's NR flag, then closed.
    let not_found = || {
        session.refused(None, ResponseFlag::NoRoute);
        std::io::Error::new(std::io::ErrorKind::NotFound, "no cluster for connection")
    };
    match mode {
        Mode::Cluster { cluster, listener } => {
            let up = rt.cluster(&cluster).cloned().ok_or_else(not_found)?;
            let peer_auth = peer_auth.unwrap_or_else(|| rt.peer_authentication(&listener, local_port));
            let inbound = inbound_tls(client, peer_auth, &rt).await?;
            let identity = match &inbound {
                Inbound::Plain(_) => None,
                Inbound::Tls(_, id) => id.clone(),
            };
            if let Err(e) = authorize(&rt, &listener, identity.as_deref(), peer, local_port) {
                session.refused(Some(&up.name), ResponseFlag::Rbac);
                return Err(e);
            }
            match inbound {
                Inbound::Plain(s) => proxy_to(s, Vec::new(), &up, &session, Originate::ClusterTls).await,
                Inbound::Tls(s, _) => proxy_to(*s, Vec::new(), &up, &session, Originate::ClusterTls).await,
            }
        }
        Mode::SniPassthrough { listener } => {
            let (sni, first) =
                client_hello(&mut client).await.inspect_err(|_| session.refused(None, ResponseFlag::NoRoute))?;
            // Unknown destination, or a service the Gateway does not open: close. Nothing is
            // forwarded anywhere the config does not name.
            let up = sni
                .as_deref()
                .and_then(sni::cluster_for_sni)
                .and_then(|name| {
                    rt.cluster(&name).or_else(|| sni::local_name_for_imported(&name).and_then(|n| rt.cluster(&n)))
                })
                .filter(|up| rt.passthrough_allowed(&listener, up.service()))
                .cloned()
                .ok_or_else(not_found)?;
            // The client's mTLS goes through untouched, to the workload: the cluster's own TLS
            // (its DestinationRule's ISTIO_MUTUAL) is for this proxy's clients, not for bytes
            // that are TLS already (Istio's sni-dnat clusters carry no TLS either).
            proxy_to(client, first, &up, &session, Originate::Never).await
        }
        Mode::TlsRoutes { listener } => {
            let (sni, first) =
                client_hello(&mut client).await.inspect_err(|_| session.refused(None, ResponseFlag::NoRoute))?;
            let up = sni.as_deref().and_then(|n| rt.tls_route(&listener, n)).cloned().ok_or_else(not_found)?;
            proxy_to(client, first, &up, &session, Originate::ClusterTls).await
        }
    }
}

/// A captured connection that is not HTTP. Outbound: to the cluster whose service address the
/// client dialled, else per `outboundTrafficPolicy` (ALLOW_ANY: to the original destination;
/// REGISTRY_ONLY: closed). Inbound: authorized, then delivered to the original destination.
pub async fn captured<C>(client: C, first: Vec<u8>, conn: &ConnInfo, proxy: &Proxy) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some((capture, dst)) = conn.captured else { return Err(std::io::Error::other("not a captured connection")) };
    let rt = proxy.current();
    let session = Session::new(proxy, &rt, conn.peer, Some(dst));
    match capture {
        Capture::Outbound => {
            if let Some(up) = rt.cluster_for_address(dst) {
                return proxy_to(client, first, up, &session, Originate::ClusterTls).await;
            }
            if rt.config.outbound_traffic_policy == OutboundPolicy::RegistryOnly {
                session.refused(Some("BlackHoleCluster"), ResponseFlag::NoRoute);
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "not in the registry"));
            }
            relay_to(client, first, dst, "PassthroughCluster", "PassthroughCluster", &session).await
        }
        Capture::Inbound => {
            let cluster = skein_api::names::inbound_cluster(dst.port());
            if let Err(e) = authorize(&rt, &conn.listener, conn.identity.as_deref(), conn.peer, dst.port()) {
                session.refused(Some(&cluster), ResponseFlag::Rbac);
                return Err(e);
            }
            relay_to(client, first, dst, &cluster, &cluster, &session).await
        }
    }
}

/// Plain TCP to one address (passthrough and inbound delivery).
async fn relay_to<C>(
    mut client: C,
    first: Vec<u8>,
    dst: SocketAddr,
    service: &str,
    cluster: &str,
    session: &Session<'_>,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let tcp = match tcp_connect(dst, crate::http::PASSTHROUGH_CONNECT_TIMEOUT).await {
        Ok(tcp) => tcp,
        Err(e) => {
            session.failed(cluster, Some(dst));
            return Err(e);
        }
    };
    session.relayed(service, cluster, dst, relay(&mut client, tcp, &first)).await
}

/// One proxied TCP connection's telemetry: Istio's TCP metrics, and an access log line in
/// Envoy's TCP form (`"- - -"`, response code 0) when the access log is on.
struct Session<'a> {
    proxy: &'a Proxy,
    rt: &'a Runtime,
    peer: SocketAddr,
    /// The address the client connected to (the original destination when captured).
    local: Option<SocketAddr>,
    start: Instant,
    start_time: jiff::Timestamp,
    /// The Envoy worker the connection belongs to.
    worker: usize,
}

impl<'a> Session<'a> {
    fn new(proxy: &'a Proxy, rt: &'a Runtime, peer: SocketAddr, local: Option<SocketAddr>) -> Self {
        let worker = proxy.assign_worker();
        Self { proxy, rt, peer, local, start: Instant::now(), start_time: jiff::Timestamp::now(), worker }
    }

    /// Runs `relay` counted under `service`. Istio's `sent` bytes are those sent to the client
    /// (the response direction), `received` those received from it.
    async fn relayed(
        &self,
        service: &str,
        cluster: &str,
        upstream: SocketAddr,
        relay: impl std::future::Future<Output = std::io::Result<(u64, u64)>>,
    ) -> std::io::Result<()> {
        let metrics = self.proxy.metrics();
        let labels = TcpLabels { destination_service: service.to_string() };
        metrics.tcp_opened.get_or_create(&labels).inc();
        let result = relay.await;
        let (from_client, to_client) = *result.as_ref().unwrap_or(&(0, 0));
        metrics.tcp_received.get_or_create(&labels).inc_by(from_client);
        metrics.tcp_sent.get_or_create(&labels).inc_by(to_client);
        metrics.tcp_closed.get_or_create(&labels).inc();
        self.log(Some(cluster), Some(upstream), ResponseFlag::None, (from_client, to_client));
        result.map(|_| ())
    }

    /// No connection to the upstream could be made (Envoy's `UF`).
    fn failed(&self, cluster: &str, upstream: Option<SocketAddr>) {
        self.log(Some(cluster), upstream, ResponseFlag::UpstreamConnectFailure, (0, 0));
    }

    /// Closed before any upstream was chosen (`NR` no route, `RBAC`, `UO` overflow).
    fn refused(&self, cluster: Option<&str>, flags: ResponseFlag) {
        self.log(cluster, None, flags, (0, 0));
    }

    fn log(
        &self,
        cluster: Option<&str>,
        upstream: Option<SocketAddr>,
        flags: ResponseFlag,
        (received, sent): (u64, u64),
    ) {
        let Some(cfg) = &self.rt.config.access_log else { return };
        let entry = Entry {
            start_time: self.start_time.to_string(),
            method: "-".into(),
            path: "-".into(),
            protocol: "-".into(),
            response_code: 0,
            response_flags: flags.as_str().into(),
            bytes_received: received,
            bytes_sent: sent,
            duration: self.start.elapsed().as_millis() as u64,
            upstream_host: upstream,
            upstream_cluster: cluster.map(str::to_string),
            downstream_local_address: self.local,
            downstream_remote_address: Some(self.peer),
            ..Default::default()
        };
        self.proxy.access_log().log(cfg, &entry);
    }
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

/// Whether the upstream connection gets the cluster's client TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Originate {
    /// As the cluster says (its DestinationRule's TLS).
    ClusterTls,
    /// Never: the bytes relayed are a TLS session already (AUTO_PASSTHROUGH).
    Never,
}

/// Connects to `up` (with its client TLS when `originate` allows), sends `first`, then relays
/// both ways.
async fn proxy_to<C>(
    mut client: C,
    first: Vec<u8>,
    up: &Arc<Upstream>,
    session: &Session<'_>,
    originate: Originate,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut admission) = up.admit(session.worker).await else {
        session.refused(Some(&up.name), ResponseFlag::UpstreamOverflow);
        return Err(std::io::Error::other("cluster overflow"));
    };
    let pending = admission.take_pending();
    let (tcp, addr) = match connect(up, session.peer).await {
        Ok(c) => c,
        Err((e, addr)) => {
            session.failed(&up.name, addr);
            return Err(e);
        }
    };
    drop(pending);
    let relay = async {
        match (&up.tls, originate) {
            (Some(slot), Originate::ClusterTls) => {
                relay(&mut client, slot.handshake(tcp, up.connect_timeout).await?, &first).await
            }
            _ => relay(&mut client, tcp, &first).await,
        }
    };
    session.relayed(up.service(), &up.name, addr, relay).await
}

async fn relay<C, U>(client: &mut C, mut upstream: U, first: &[u8]) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !first.is_empty() {
        upstream.write_all(first).await?;
    }
    let (sent, received) = crate::splice::copy_with_idle_timeout(client, &mut upstream).await?;
    Ok((sent + first.len() as u64, received))
}

/// A TCP connection to an endpoint of `up`, and the endpoint; on failure, the endpoint tried.
async fn connect(
    up: &Arc<Upstream>,
    peer: SocketAddr,
) -> Result<(TcpStream, SocketAddr), (std::io::Error, Option<SocketAddr>)> {
    let headers = hyper::HeaderMap::new();
    let Some(guard) = up.pick(&HashInput { headers: &headers, source: Some(peer) }) else {
        return Err((std::io::Error::new(std::io::ErrorKind::NotFound, "cluster has no endpoints"), None));
    };
    let addr = guard.addr;
    match tcp_connect(addr, up.connect_timeout).await {
        Ok(s) => Ok((s, addr)),
        Err(e) => {
            up.report(addr, upstream::Outcome::ConnectFailure);
            Err((e, Some(addr)))
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
