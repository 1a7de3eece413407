//! Upstream connections: TCP, optionally wrapped in (m)TLS, as a connector for hyper's pooled
//! client. One connector per cluster, so pooled connections never mix TLS settings.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::{Uri, rt::ReadBufCursor};
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
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

/// Connects to the endpoint named by the request URI's authority.
#[derive(Clone)]
pub struct MeshConnector {
    /// TLS, if the cluster uses it.
    pub tls: Option<ClientTls>,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

/// A plaintext or TLS connection, with the count of requests sent over it.
pub struct MeshStream {
    io: MeshIo,
    requests: RequestCount,
}

enum MeshIo {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// Requests sent over one pooled connection; hyper copies it into every response's
/// extensions, which is how `maxRequestsPerConnection` finds the connection's count.
#[derive(Clone, Default, Debug)]
pub struct RequestCount(pub Arc<std::sync::atomic::AtomicU32>);

fn io_err(kind: std::io::ErrorKind, msg: &str) -> std::io::Error {
    std::io::Error::new(kind, msg.to_string())
}

impl tower_service::Service<Uri> for MeshConnector {
    type Response = MeshStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<MeshStream, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| io_err(std::io::ErrorKind::InvalidInput, "no authority"))?;
            let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
            let tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| io_err(std::io::ErrorKind::TimedOut, "connect timeout"))??;
            let _ = tcp.set_nodelay(true);
            match this.tls {
                None => Ok(MeshStream { io: MeshIo::Plain(TokioIo::new(tcp)), requests: RequestCount::default() }),
                Some(tls) => {
                    let connector = tokio_rustls::TlsConnector::from(tls.config);
                    // The handshake counts against the connect timeout too.
                    let stream = tokio::time::timeout(this.connect_timeout, connector.connect(tls.server_name, tcp))
                        .await
                        .map_err(|_| io_err(std::io::ErrorKind::TimedOut, "TLS handshake timeout"))??;
                    let io = MeshIo::Tls(Box::new(TokioIo::new(stream)));
                    Ok(MeshStream { io, requests: RequestCount::default() })
                }
            }
        })
    }
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.requests.clone())
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
