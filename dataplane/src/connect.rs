//! Upstream connections: TCP, optionally wrapped in (m)TLS. One connector per cluster, so
//! pooled connections never mix TLS settings.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use hyper::rt::ReadBufCursor;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;

/// TLS settings of a cluster's connections.
#[derive(Clone)]
pub struct ClientTls {
    /// rustls client configuration (identity, verifier).
    pub config: Arc<ClientConfig>,
    /// Server name sent in the ClientHello.
    pub server_name: ServerName<'static>,
}

/// A cluster's client TLS, replaceable in place. A renewed workload certificate (same identity,
/// same root) reaches the cluster's new connections through it, so the cluster keeps its pool,
/// balancer position, outlier ejections and breaker counters; connections already open keep
/// the certificate they were made with, as Envoy's do.
pub struct TlsSlot(RwLock<ClientTls>);

impl TlsSlot {
    /// A slot holding `tls`.
    pub fn new(tls: ClientTls) -> Arc<Self> {
        Arc::new(Self(RwLock::new(tls)))
    }

    /// The TLS handshake over `tcp` with the settings current now (read once per connection,
    /// not per request), within `timeout`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tls = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        let connector = tokio_rustls::TlsConnector::from(tls.config);
        tokio::time::timeout(timeout, connector.connect(tls.server_name, tcp))
            .await
            .map_err(|_| io_err(std::io::ErrorKind::TimedOut, "TLS handshake timeout"))?
    }

    /// Replaces the settings for connections made from now on.
    pub fn set(&self, tls: ClientTls) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }
}

/// Connects to the endpoint named by the request URI's authority.
#[derive(Clone)]
pub struct MeshConnector {
    /// TLS, if the cluster uses it.
    pub tls: Option<Arc<TlsSlot>>,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

/// A plaintext or TLS connection.
pub struct MeshStream {
    io: MeshIo,
}

enum MeshIo {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

fn io_err(kind: std::io::ErrorKind, msg: &str) -> std::io::Error {
    std::io::Error::new(kind, msg.to_string())
}

/// A TCP connection to `addr` (Nagle off: the proxy writes whole messages), within `timeout`.
pub async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io_err(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

impl MeshConnector {
    /// Connects to `addr`, with the cluster's TLS if it has one; the TCP connect and the TLS
    /// handshake each have the connect timeout.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<MeshStream> {
        let tcp = tcp_connect(addr, self.connect_timeout).await?;
        let io = match &self.tls {
            None => MeshIo::Plain(TokioIo::new(tcp)),
            Some(slot) => MeshIo::Tls(Box::new(TokioIo::new(slot.handshake(tcp, self.connect_timeout).await?))),
        };
        Ok(MeshStream { io })
    }
}

impl hyper::rt::Read for MeshStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            MeshIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MeshIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for MeshStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            MeshIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MeshIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            MeshIo::Plain(s) => Pin::new(s).poll_flush(cx),
            MeshIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            MeshIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MeshIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
