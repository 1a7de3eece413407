//! The DNS proxy's sockets: UDP and TCP on one address (`127.0.0.1:15053` in a pod, where the
//! capture rules send port 53), answers from the active config's name table, forwarding to the
//! pod's nameservers otherwise. Every resource is bounded: queries in flight, TCP connections,
//! message sizes and the time of each phase.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tracing::{debug, warn};

use super::{Decision, answer, server_failure};
use crate::store::Store;

/// Largest UDP message read or relayed: an EDNS client's usual buffer. Queries are far
/// smaller; a larger answer comes over TCP after the truncated UDP one.
const MAX_UDP: usize = 4096;
/// Forwarded queries in flight at once; more get SERVFAIL at once instead of queueing.
const MAX_IN_FLIGHT: usize = 256;
/// TCP clients at once; more are closed.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Time a nameserver has to answer one forwarded query before the next one is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a TCP client may stay idle between queries, or take to send one.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Where queries that are not for mesh hosts go, and the search suffixes the pod's resolver
/// appends: both from the pod's `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Nameservers, port 53, in the file's order.
    pub nameservers: Vec<SocketAddr>,
    /// Search suffixes.
    pub search: Vec<String>,
}

impl Upstream {
    /// Parses resolv.conf text. No nameserver is an error: nothing could be forwarded.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let conf = resolv_conf::Config::parse(text).map_err(|e| format!("resolv.conf: {e}"))?;
        let nameservers: Vec<SocketAddr> =
            conf.nameservers.iter().map(|ns| SocketAddr::new(IpAddr::from(ns), 53)).collect();
        if nameservers.is_empty() {
            return Err("resolv.conf: no nameserver".into());
        }
        Ok(Self { nameservers, search: conf.get_search().cloned().unwrap_or_default() })
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The DNS proxy's bound sockets.
pub struct Server {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    upstream: Arc<Upstream>,
}

impl Server {
    /// Binds UDP and TCP on `addr` (port 0: the port UDP got, for both).
    pub async fn bind(addr: SocketAddr, upstream: Upstream) -> io::Result<Self> {
        let udp = Arc::new(UdpSocket::bind(addr).await?);
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        Ok(Self { udp, tcp, upstream: Arc::new(upstream) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until the process ends, answering from `store`'s active name table.
    pub async fn serve(self, store: Store) {
        tokio::spawn(serve_tcp(self.tcp, store.clone(), self.upstream.clone()));
        if let Err(e) = serve_udp(self.udp, store, self.upstream).await {
            warn!(error = %e, "DNS proxy stopped");
        }
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, store: Store, upstream: Arc<Upstream>) -> io::Result<()> {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // A previous reply's ICMP error can surface here; the socket itself is fine.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let query = &buf[..n];
        match answer(query, &store.current().names, &upstream.search) {
            Decision::Reply(reply) => {
                let _ = sock.send_to(&reply, client).await;
            }
            Decision::Drop => {}
            Decision::Forward => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    if let Some(fail) = server_failure(query) {
                        let _ = sock.send_to(&fail, client).await;
                    }
                    continue;
                };
                let (sock, upstream, query) = (sock.clone(), upstream.clone(), query.to_vec());
                tokio::spawn(async move {
                    let reply = match forward_udp(&upstream.nameservers, &query).await {
                        Some(r) => r,
                        None => match server_failure(&query) {
                            Some(f) => f,
                            None => return,
                        },
                    };
                    let _ = sock.send_to(&reply, client).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Sends `query` to each nameserver in turn until one answers it (same id) in time.
async fn forward_udp(nameservers: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for ns in nameservers {
        let attempt = async {
            let local: SocketAddr = if ns.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            let sock = UdpSocket::bind(local).await.ok()?;
            sock.connect(ns).await.ok()?;
            sock.send(query).await.ok()?;
            let mut buf = vec![0u8; MAX_UDP];
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                // Only the answer to this query: a stray datagram with another id is ignored.
                if n >= 2 && buf[..2] == query[..2] {
                    buf.truncate(n);
                    return Some(buf);
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Some(reply)) => return Some(reply),
            _ => debug!(nameserver = %ns, "DNS query not answered"),
        }
    }
    None
}

async fn serve_tcp(listener: TcpListener, store: Store, upstream: Arc<Upstream>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "DNS over TCP: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let (store, upstream) = (store.clone(), upstream.clone());
        tokio::spawn(async move {
            let _ = tcp_client(conn, &store, &upstream).await;
            drop(permit);
        });
    }
}

/// Answers the length-prefixed queries of one TCP client until it closes or idles.
async fn tcp_client(mut conn: TcpStream, store: &Store, upstream: &Upstream) -> io::Result<()> {
    loop {
        let Ok(query) = tokio::time::timeout(TCP_IDLE, read_framed(&mut conn)).await else { return Ok(()) };
        let query = query?;
        let reply = match answer(&query, &store.current().names, &upstream.search) {
            Decision::Reply(r) => r,
            Decision::Drop => return Ok(()),
            Decision::Forward => match forward_tcp(&upstream.nameservers, &query).await {
                Some(r) => r,
                None => match server_failure(&query) {
                    Some(f) => f,
                    None => return Ok(()),
                },
            },
        };
        write_framed(&mut conn, &reply).await?;
    }
}

async fn forward_tcp(nameservers: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for ns in nameservers {
        let attempt = async {
            let mut s = TcpStream::connect(ns).await.ok()?;
            write_framed(&mut s, query).await.ok()?;
            read_framed(&mut s).await.ok()
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Some(reply)) => return Some(reply),
            _ => debug!(nameserver = %ns, "DNS query over TCP not answered"),
        }
    }
    None
}

/// One DNS-over-TCP message: a two-byte length, then that many bytes (at most 64 KiB by
/// construction).
async fn read_framed(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = s.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_framed(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message over 64 KiB"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

/// [`forward_udp`] for the module's tests.
#[cfg(test)]
pub(super) async fn forward_udp_for_test(nameservers: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    forward_udp(nameservers, query).await
}
