//! `skein-proxy request GET stats`: one request to the proxy's own admin endpoint, printed, as
//! Istio's `pilot-agent request GET stats` does inside the sidecar container (the admin address
//! listens on loopback only, so this is how a user reaches it with `kubectl exec`).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// How long the admin endpoint has to connect and to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read: a config dump of a big mesh fits many times over.
const MAX_RESPONSE: u64 = 256 << 20;

/// Why a request to the admin endpoint got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminRequestError {
    /// The method is not an HTTP token.
    #[error("method {0:?}: not an HTTP method")]
    Method(String),
    /// The path holds whitespace or control characters.
    #[error("path {0:?}: must not contain whitespace or control characters")]
    Path(String),
    /// Connecting, writing or reading failed.
    #[error("admin endpoint {addr}: {source}")]
    Io {
        /// The admin address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The answer is not an HTTP/1.1 response.
    #[error("admin endpoint {0}: not an HTTP response")]
    Malformed(SocketAddr),
}

/// Sends `method path` to the admin endpoint at `addr` (`path` with or without its leading
/// `/`, as `pilot-agent request` takes it) and returns the status and body.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, Vec<u8>), AdminRequestError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(AdminRequestError::Method(method.to_string()));
    }
    if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(AdminRequestError::Path(path.to_string()));
    }
    let path = path.trim_start_matches('/');
    let io = |source| AdminRequestError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let method = method.to_ascii_uppercase();
    write!(stream, "{method} /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw).map_err(io)?;
    parse(&raw).ok_or(AdminRequestError::Malformed(addr))
}

/// Status and body of a complete `Connection: close` response (the admin sends a
/// `Content-Length` body, which is all that follows the head).
fn parse(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, raw[head_end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_refused_before_anything_is_sent() {
        let addr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(request(addr, "G ET", "stats"), Err(AdminRequestError::Method(_))));
        assert!(matches!(request(addr, "GET", "stats\r\nX: y"), Err(AdminRequestError::Path(_))));
    }

    #[test]
    fn a_response_is_split_into_status_and_body() {
        assert_eq!(parse(b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nno\n"), Some((404, b"no\n".to_vec())));
        assert_eq!(parse(b"garbage"), None);
        assert_eq!(parse(b"SSH-2.0\r\n\r\n"), None);
    }
}
