//! Reads the server name (SNI) from a TLS ClientHello without terminating TLS, and maps
//! Istio's passthrough names (`outbound_.<port>_.<subset>_.<host>`) to clusters.
//!
//! Input is untrusted bytes from the network: every length is checked against what is there,
//! nothing is allocated beyond the name itself, and the parser is fuzzed (fuzz/).

/// Most bytes the proxy reads waiting for a ClientHello, record headers included. A
/// ClientHello may span several TLS records (RFC 8446 §5.1: handshake messages may be
/// fragmented; large post-quantum key shares make that common), each with 5 bytes of header.
pub const MAX_CLIENT_HELLO: usize = 32 * 1024;
/// Largest ClientHello message accepted once reassembled from its records.
const MAX_HELLO_MESSAGE: usize = 16 * 1024;

/// Result of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// More bytes are needed to decide.
    NeedMore,
    /// A ClientHello, with its server name if it carried one.
    ClientHello(Option<String>),
    /// Not a TLS ClientHello.
    NotTls,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// Inspects `buf`, the first bytes a client sent.
pub fn peek(buf: &[u8]) -> Peek {
    // The ClientHello handshake message, reassembled when it spans records; copied only then.
    let mut message: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        // TLS record header: content type 22 (handshake), version 3.x, length.
        let Some(&kind) = buf.get(pos) else { return Peek::NeedMore };
        if kind != 0x16 {
            return Peek::NotTls;
        }
        let Some(header) = buf.get(pos..pos + 5) else { return Peek::NeedMore };
        if header[1] != 0x03 {
            return Peek::NotTls;
        }
        let record_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if record_len == 0 || record_len > 16 * 1024 + 256 {
            return Peek::NotTls;
        }
        let Some(record) = buf.get(pos + 5..pos + 5 + record_len) else { return Peek::NeedMore };
        pos += 5 + record_len;
        let whole = if message.is_empty() && hello_len(record).is_some_and(|n| n <= record.len()) {
            // The usual case: the whole message in the first record.
            record
        } else {
            message.extend_from_slice(record);
            match hello_len(&message) {
                Some(n) if n > MAX_HELLO_MESSAGE => return Peek::NotTls,
                Some(n) if n <= message.len() => &message[..n],
                _ => continue,
            }
        };
        return match client_hello_sni(whole) {
            Some(sni) => Peek::ClientHello(sni),
            None => Peek::NotTls,
        };
    }
}

/// The length of the handshake message starting `msg` (type and length header included),
/// once its 4-byte header is there.
fn hello_len(msg: &[u8]) -> Option<usize> {
    let h = msg.get(..4)?;
    Some(4 + ((usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3])))
}

/// `None`: malformed. `Some(None)`: a ClientHello without SNI.
fn client_hello_sni(record: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { buf: record, pos: 0 };
    if r.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let body = r.take(len)?;
    let mut r = Reader { buf: body, pos: 0 };
    r.take(2 + 32)?; // legacy_version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.pos == body.len() {
        return Some(None); // no extensions
    }
    let ext_len = r.u16()?;
    let mut exts = Reader { buf: r.take(ext_len)?, pos: 0 };
    while exts.pos < exts.buf.len() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut d = Reader { buf: data, pos: 0 };
        let list_len = d.u16()?;
        let mut list = Reader { buf: d.take(list_len)?, pos: 0 };
        while list.pos < list.buf.len() {
            let name_type = list.u8()?;
            let name_len = list.u16()?;
            let name = list.take(name_len)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                // A DNS name: no control characters or spaces that could confuse logs or lookups.
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return None;
                }
                return Some(Some(name.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// Istio's passthrough SNI, `outbound_.9080_.v1_.reviews.default.svc.cluster.local`, as the
/// cluster name `outbound|9080|v1|reviews.default.svc.cluster.local`.
pub fn cluster_for_sni(sni: &str) -> Option<String> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (port, rest) = rest.split_once("_.")?;
    let (subset, host) = rest.split_once("_.")?;
    let Ok(port) = port.parse::<u16>() else { return None };
    if host.is_empty() {
        return None;
    }
    Some(skein_api::names::outbound_cluster(port, subset, host))
}

/// Where an imported name lives in the cluster that serves it: `reviews.default.global` →
/// `reviews.default.svc.cluster.local`. Any one-label suffix, because each importing cluster
/// picks its own (`multiCluster.globalDomainSuffix`, `global` by default) and the exporting
/// gateway cannot know them all; what may be reached is still only what the gateway's
/// `passthroughHosts` export.
pub fn local_name_for_imported(cluster: &str) -> Option<String> {
    let (prefix, host) = cluster.rsplit_once('|')?;
    let mut labels = host.split('.');
    let (Some(name), Some(ns), Some(suffix), None) = (labels.next(), labels.next(), labels.next(), labels.next())
    else {
        return None;
    };
    if name.is_empty() || ns.is_empty() || suffix.is_empty() || suffix == "svc" {
        return None;
    }
    Some(format!("{prefix}|{name}.{ns}.svc.cluster.local"))
}

/// Builders for tests and fuzz seeds.
#[doc(hidden)]
pub mod testing {
    /// A minimal, well-formed ClientHello record carrying `sni`.
    pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let mut list = vec![0u8];
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(n);
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            exts.extend(0u16.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]); // TLS_AES_128_GCM_SHA256
        body.extend([1, 0]); // null compression
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![0x01];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sni::testing::client_hello;

    #[test]
    fn reads_the_server_name() {
        let hello = client_hello(Some("outbound_.9080_._.Reviews.default.global"));
        assert_eq!(peek(&hello), Peek::ClientHello(Some("outbound_.9080_._.reviews.default.global".into())));
        assert_eq!(peek(&client_hello(None)), Peek::ClientHello(None));
    }

    #[test]
    fn asks_for_more_until_the_record_is_complete() {
        let hello = client_hello(Some("a.example"));
        for cut in [0, 1, 4, 5, hello.len() - 1] {
            assert_eq!(peek(&hello[..cut]), Peek::NeedMore, "cut at {cut}");
        }
    }

    /// `hello` (one record) re-split into records of at most `size` bytes of message each.
    fn fragmented(hello: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in hello[5..].chunks(size) {
            out.extend([0x16, 0x03, 0x01]);
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    #[test]
    fn a_client_hello_split_over_records_is_reassembled() {
        let hello = client_hello(Some("outbound_.9080_._.reviews.default.global"));
        for size in [1, 3, 40, hello.len() - 6] {
            let split = fragmented(&hello, size);
            assert_eq!(
                peek(&split),
                Peek::ClientHello(Some("outbound_.9080_._.reviews.default.global".into())),
                "records of {size}"
            );
            // Incomplete until the last record is whole.
            assert_eq!(peek(&split[..split.len() - 1]), Peek::NeedMore, "records of {size}");
        }
        // A record that is not a handshake in the middle: not TLS as expected.
        let mut split = fragmented(&hello, 40);
        split[45] = 0x17;
        assert_eq!(peek(&split), Peek::NotTls);
    }

    #[test]
    fn plaintext_and_garbage_are_not_tls() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        let mut hello = client_hello(Some("a.example"));
        hello[5] = 0x02; // ServerHello, not ClientHello
        assert_eq!(peek(&hello), Peek::NotTls);
        let mut hello = client_hello(Some("a.example"));
        let n = hello.len();
        hello[n - 10] = 0xff; // corrupt a length inside the extension
        assert_ne!(peek(&hello), Peek::ClientHello(Some("a.example".into())));
    }

    #[test]
    fn maps_istio_passthrough_names_to_clusters() {
        assert_eq!(
            cluster_for_sni("outbound_.9080_.v1_.reviews.default.svc.cluster.local").as_deref(),
            Some("outbound|9080|v1|reviews.default.svc.cluster.local")
        );
        assert_eq!(
            cluster_for_sni("outbound_.9080_._.reviews.default.global").as_deref(),
            Some("outbound|9080||reviews.default.global")
        );
        assert_eq!(cluster_for_sni("reviews.default.svc"), None);
        assert_eq!(cluster_for_sni("outbound_.http_._.x"), None);
        assert_eq!(
            local_name_for_imported("outbound|9080||reviews.default.global").as_deref(),
            Some("outbound|9080||reviews.default.svc.cluster.local")
        );
        // Another importer's suffix (`globalDomainSuffix: mesh`) reaches the same service.
        assert_eq!(
            local_name_for_imported("outbound|9080|v2|reviews.default.mesh").as_deref(),
            Some("outbound|9080|v2|reviews.default.svc.cluster.local")
        );
        for not_imported in
            ["outbound|443||httpbin.org", "outbound|9080||reviews.default.svc", "outbound|9080||a.b.c.d", "x|..global"]
        {
            assert_eq!(local_name_for_imported(not_imported), None, "{not_imported}");
        }
    }
}
