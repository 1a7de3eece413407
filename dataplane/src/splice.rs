//! Joining two byte streams: TCP proxying and upgraded HTTP connections (WebSocket) alike.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A connection with no traffic either way for this long is closed (Envoy's default 1 h).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Copies both ways until both sides close, or nothing moves for `IDLE_TIMEOUT`. Returns bytes
/// (client→upstream, upstream→client).
pub async fn copy_with_idle_timeout<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
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
