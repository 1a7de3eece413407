//! Mirroring: a copy of the request to the route's mirror cluster, fire and forget.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    header::{self, HeaderValue},
    http::request::Parts,
};
use skein_api::proxy::Route;

use super::{filters::hit, forward::send, headers::split_port};
use crate::{runtime::Runtime, upstream::HashInput};

/// `reviews:9080` → `reviews-shadow:9080`, as Envoy names mirrored requests.
pub fn shadow_authority(authority: &str) -> String {
    match split_port(authority) {
        (host, Some(port)) => format!("{host}-shadow:{port}"),
        (host, None) => format!("{host}-shadow"),
    }
}

/// Sends a copy of the request to `r`'s mirror (for its share of requests), with the
/// authority suffixed `-shadow` as Envoy does. The caller never waits for or sees the answer.
pub(super) fn spawn(
    rt: &Runtime,
    r: &Route,
    parts: &Parts,
    path_and_query: &str,
    authority: &str,
    body: &Bytes,
    peer: SocketAddr,
) {
    let Some(up) = r.mirror.as_ref().and_then(|m| rt.cluster(m)).filter(|_| hit(r.mirror_percentage.unwrap_or(100.0)))
    else {
        return;
    };
    let mut headers = parts.headers.clone();
    if let Ok(v) = HeaderValue::from_str(&shadow_authority(authority)) {
        headers.insert(header::HOST, v);
    }
    let (method, pq, body, up) = (parts.method.clone(), path_and_query.to_string(), body.clone(), up.clone());
    tokio::spawn(async move {
        let addr = up.pick(&HashInput { headers: &headers, source: Some(peer) }).map(|g| g.addr);
        if let Some(addr) = addr
            && let Ok(resp) = send(&up.pool, addr, &method, &pq, headers, body, None).await
        {
            // Read (and discard) the answer to its end so the connection is reused.
            let mut body = resp.into_body();
            while let Some(Ok(_)) = body.frame().await {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_is_suffixed_before_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }
}
