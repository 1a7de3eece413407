//! Transparent capture: connections iptables redirected to 15001 (outbound) or 15006 (inbound).
//! The original destination comes from conntrack (`SO_ORIGINAL_DST`); the protocol is detected
//! from the first bytes the client sends, as Istio's protocol sniffing does.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use nix::sys::socket::{
    SockaddrIn, SockaddrIn6, getsockopt,
    sockopt::{Ip6tOriginalDst, OriginalDst},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The address the client connected to before iptables redirected it. A connection that was
/// not redirected (no conntrack NAT entry) reports the address it was accepted on.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let got = if local.is_ipv4() {
        getsockopt(stream, OriginalDst).map(|a| SocketAddr::V4(SockaddrIn::from(a).into()))
    } else {
        getsockopt(stream, Ip6tOriginalDst).map(|a| SocketAddr::V6(SockaddrIn6::from(a).into()))
    };
    Ok(got.unwrap_or(local))
}

/// Istio waits this long for a client's first bytes before treating the connection as
/// server-first TCP (MySQL, SMTP).
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// HTTP/1.x request line or the HTTP/2 connection preface.
    Http,
    /// Anything else (including silence).
    Tcp,
}

const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"TRACE ", b"CONNECT "];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Classifies a prefix; `None` while more bytes could change the answer.
pub fn classify(buf: &[u8]) -> Option<Sniffed> {
    let candidates = METHODS.iter().chain(std::iter::once(&H2_PREFACE));
    let mut undecided = false;
    for c in candidates {
        let n = buf.len().min(c.len());
        if buf[..n] == c[..n] {
            if buf.len() >= c.len() {
                return Some(Sniffed::Http);
            }
            undecided = true;
        }
    }
    if undecided { None } else { Some(Sniffed::Tcp) }
}

/// Reads the client's first bytes (at most 16, within `SNIFF_TIMEOUT`) and classifies them.
/// The bytes read are returned so they can be replayed in front of the stream.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(Sniffed, Vec<u8>)> {
    let mut buf = Vec::with_capacity(16);
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        if let Some(s) = classify(&buf) {
            return Ok((s, buf));
        }
        let mut chunk = [0u8; 16];
        let want = 16 - buf.len();
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Err(_) => return Ok((Sniffed::Tcp, buf)),
            Ok(Ok(0)) => return Ok((Sniffed::Tcp, buf)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
        if buf.len() >= 16 {
            return Ok((classify(&buf).unwrap_or(Sniffed::Tcp), buf));
        }
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `prefix` is read first, then `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix: Bytes::from(prefix), inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_h2_preface_are_http_and_other_bytes_are_tcp() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM"), Some(Sniffed::Http));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Sniffed::Tcp));
        assert_eq!(classify(b"hello\n"), Some(Sniffed::Tcp));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GETX"), Some(Sniffed::Tcp));
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed_in_front_of_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let mut b = b;
        let (kind, first) = sniff(&mut b).await.unwrap();
        assert_eq!(kind, Sniffed::Http);
        let mut all = String::new();
        drop(a);
        Rewind::new(first, b).read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[tokio::test]
    async fn a_silent_client_is_tcp_after_the_sniff_timeout() {
        let (_a, mut b) = tokio::io::duplex(64);
        let start = std::time::Instant::now();
        assert_eq!(sniff(&mut b).await.unwrap().0, Sniffed::Tcp);
        assert!(start.elapsed() >= SNIFF_TIMEOUT);
    }
}
