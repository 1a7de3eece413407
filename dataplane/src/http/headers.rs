//! Header work of the request path: admission limits, the authority, hop-by-hop headers,
//! `x-forwarded-client-cert`, `x-request-id` and the request half of an access log entry.

use hyper::{
    HeaderMap, Request, StatusCode, Uri,
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
};

use super::{ConnInfo, MAX_HEADER_BYTES, MAX_HEADERS};
use crate::{accesslog::Entry, runtime::Runtime};

/// The request's authority, if its headers are within the limits and it names one; else the
/// status and body of the local answer (431, 400). `added` headers are the proxy's own (an
/// `x-request-id` it created) and do not count against the client's limit.
pub(super) fn admit(parts: &Parts, added: usize) -> Result<String, (StatusCode, &'static str)> {
    let header_bytes: usize = parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if header_bytes > MAX_HEADER_BYTES || parts.headers.len() > MAX_HEADERS + added {
        return Err((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large\n"));
    }
    // Two Host headers could route one way and be read another way upstream (RFC 9112 §3.2).
    if parts.headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err((StatusCode::BAD_REQUEST, "more than one Host header\n"));
    }
    authority_of(&parts.uri, &parts.headers).ok_or((StatusCode::BAD_REQUEST, "missing Host header\n"))
}

/// Hop-by-hop headers are for one connection only and never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names present is cheaper than eight
    // hashed removals on every request and response.
    if !h.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    // `te: trailers` is the one TE value that survives: gRPC needs it end to end.
    let trailers = h.get("te").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // Headers the sender named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        h.remove(name);
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    if trailers {
        h.insert("te", HeaderValue::from_static("trailers"));
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` with `Upgrade`),
/// e.g. `websocket`. HTTP/2 has no such header (RFC 9113 §8.2.2).
pub(super) fn upgrade_of(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| h.get(header::UPGRADE).cloned()).flatten()
}

/// Strips hop-by-hop headers from a message about to be forwarded, except the two an upgrade
/// (`Connection: upgrade`, `Upgrade: <protocol>`) needs on the next hop too: a proxy passes
/// the upgrade request on and the `101` back.
pub(super) fn strip_for_forwarding(h: &mut HeaderMap) {
    let upgrade = upgrade_of(h);
    strip_hop_by_hop(h);
    if let Some(protocol) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol);
    }
}

/// `host:port` → (`host`, port). An authority whose text after the last `:` is not all
/// digits (none, or a bare IPv6 address) has no port; `host:` is `host` without one.
pub(super) fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (h, p.parse().ok())
        }
        _ => (authority, None),
    }
}

pub(super) fn authority_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .filter(|a| !a.is_empty())
}

pub(super) fn authority_with_port(authority: &str) -> String {
    match split_port(authority) {
        (_, Some(_)) => authority.to_string(),
        (host, None) => format!("{host}:80"),
    }
}

/// `x-forwarded-client-cert` the way Istio sets it (SANITIZE_SET): whatever the client sent is
/// dropped, and an mTLS peer's identity is recorded as `By=<us>;URI=<peer>`.
pub(super) fn set_client_cert_header(h: &mut HeaderMap, rt: &Runtime, peer: Option<&str>) {
    h.remove("x-forwarded-client-cert");
    let (Some(peer), Some(me)) = (peer, rt.identity.as_ref()) else { return };
    if let Ok(v) = HeaderValue::from_str(&format!("By={};URI={peer}", me.spiffe_id)) {
        h.insert("x-forwarded-client-cert", v);
    }
}

/// The request half of an access log entry.
pub(super) fn entry_for<B>(req: &Request<B>, conn: &ConnInfo) -> Entry {
    let h = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Entry {
        start_time: jiff::Timestamp::now().to_string(),
        method: req.method().to_string(),
        path: req.uri().path_and_query().map_or_else(|| "/".into(), |p| p.to_string()),
        protocol: match req.version() {
            hyper::Version::HTTP_2 => "HTTP/2",
            hyper::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
        .into(),
        bytes_received: h("content-length").and_then(|v| v.parse().ok()).unwrap_or(0),
        x_forwarded_for: h("x-forwarded-for"),
        user_agent: h("user-agent"),
        request_id: h("x-request-id"),
        authority: authority_of(req.uri(), req.headers()),
        downstream_local_address: conn.captured.map(|(_, dst)| dst),
        downstream_remote_address: Some(conn.peer),
        ..Default::default()
    }
}

/// Keeps an incoming `x-request-id` (trace correlation) or adds one; returns how many headers
/// it added.
pub(super) fn ensure_request_id(h: &mut HeaderMap) -> usize {
    if h.contains_key("x-request-id") {
        return 0;
    }
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    match HeaderValue::from_str(&id) {
        Ok(v) => {
            h.insert("x-request-id", v);
            1
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_of_host_and_port_serves_every_stage() {
        // One reading of `host[:port]` serves routing, mirroring, passthrough and redirects.
        assert_eq!(split_port("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_port("reviews:"), ("reviews", None));
        assert_eq!(split_port("reviews:http"), ("reviews:http", None));
        assert_eq!(split_port("::1"), ("::1", None));
        assert_eq!(authority_with_port("reviews"), "reviews:80");
        assert_eq!(authority_with_port("reviews:9080"), "reviews:9080");
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_and_te_trailers_survives() {
        let mut h = HeaderMap::new();
        for (k, v) in [("connection", "keep-alive"), ("keep-alive", "timeout=5"), ("te", "trailers"), ("x-ok", "1")] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h.insert("proxy-authorization", HeaderValue::from_static("secret"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["te", "x-ok"]);
        let mut clean = HeaderMap::new();
        clean.insert("x-ok", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut clean);
        assert_eq!(clean.len(), 1);
    }

    #[test]
    fn headers_named_in_connection_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Internal-Token ,x-debug"));
        h.append("connection", HeaderValue::from_static("x-more"));
        for k in ["x-internal-token", "x-debug", "x-more", "x-ok"] {
            h.insert(k, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-ok"]);
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_duplicate_host_is_refused_and_the_proxys_own_request_id_does_not_count() {
        let twice = parts(&[("host", "a"), ("host", "b")]);
        assert_eq!(admit(&twice, 0).unwrap_err().0, StatusCode::BAD_REQUEST);
        let names: Vec<String> = (0..MAX_HEADERS - 1).map(|i| format!("x-h{i}")).collect();
        let mut many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        many.push(("host", "a"));
        let mut p = parts(&many);
        assert_eq!(p.headers.len(), MAX_HEADERS);
        let added = ensure_request_id(&mut p.headers);
        assert_eq!(admit(&p, added).unwrap(), "a", "exactly the limit from the client is admitted");
        p.headers.insert("x-one-more", HeaderValue::from_static("1"));
        assert_eq!(admit(&p, added).unwrap_err().0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
