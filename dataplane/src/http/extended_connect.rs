//! HTTP/2 extended CONNECT (RFC 8441: WebSocket and other protocols over an HTTP/2 stream)
//! as the HTTP/1.1 upgrade it stands for, so it reaches any upstream: the request becomes
//! `GET` with `Connection: upgrade` and `Upgrade: <protocol>`, and the upstream's `101` becomes
//! the `200` the HTTP/2 client waits for. Envoy converts the same way.

use base64::Engine as _;
use hyper::{
    Method, Request, Response, StatusCode, Version,
    ext::Protocol,
    header::{self, HeaderValue},
};

/// Turns an extended CONNECT into an HTTP/1.1 upgrade request; whether it was one.
pub(super) fn into_upgrade<B>(req: &mut Request<B>) -> bool {
    if req.method() != Method::CONNECT {
        return false;
    }
    let Some(protocol) = req.extensions_mut().remove::<Protocol>() else { return false };
    let Ok(value) = HeaderValue::from_str(protocol.as_str()) else { return false };
    let websocket = protocol.as_str().eq_ignore_ascii_case("websocket");
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, value);
    // RFC 8441 §5 drops the key over HTTP/2; an HTTP/1.1 WebSocket server requires one
    // (RFC 6455 §4.1: 16 random bytes, base64).
    if websocket && !h.contains_key(header::SEC_WEBSOCKET_KEY) {
        let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        if let Ok(v) = HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(key)) {
            h.insert(header::SEC_WEBSOCKET_KEY, v);
        }
    }
    true
}

/// The upstream's answer as the HTTP/2 client expects it: `101` → `200` without the
/// upgrade's headers (which HTTP/2 forbids or does not use).
pub(super) fn into_connect_response<B>(resp: &mut Response<B>) {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    for name in [header::CONNECTION, header::UPGRADE, header::SEC_WEBSOCKET_ACCEPT, header::CONTENT_LENGTH] {
        h.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extended_connect_becomes_an_upgrade_and_its_101_a_200() {
        let mut req = Request::connect("http://chat.example/ws").body(()).unwrap();
        req.extensions_mut().insert(Protocol::from_static("websocket"));
        assert!(into_upgrade(&mut req));
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
        let key = req.headers()["sec-websocket-key"].to_str().unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).unwrap().len(), 16);
        let mut resp = Response::builder().status(101).header("upgrade", "websocket").body(()).unwrap();
        into_connect_response(&mut resp);
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("upgrade").is_none());
        // A plain CONNECT (a TCP tunnel) is not an upgrade.
        let mut plain = Request::connect("example.com:443").body(()).unwrap();
        assert!(!into_upgrade(&mut plain));
        assert_eq!(plain.method(), Method::CONNECT);
    }
}
