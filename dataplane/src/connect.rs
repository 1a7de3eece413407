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

/// A plaintext or TLS connection.
pub enum MeshStream {
    /// Plaintext.
    Plain(TokioIo<TcpStream>),
    /// TLS.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

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
                None => Ok(MeshStream::Plain(TokioIo::new(tcp))),
                Some(tls) => {
                    let connector = tokio_rustls::TlsConnector::from(tls.config);
                    // The handshake counts against the connect timeout too.
                    let stream = tokio::time::timeout(this.connect_timeout, connector.connect(tls.server_name, tcp))
                        .await
                        .map_err(|_| io_err(std::io::ErrorKind::TimedOut, "TLS handshake timeout"))??;
                    Ok(MeshStream::Tls(Box::new(TokioIo::new(stream))))
                }
            }
        })
    }
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for MeshStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for MeshStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
