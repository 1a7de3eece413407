//! Mirroring: a copy of the request to the route's mirror cluster, fire and forget. As in
//! Envoy, the copy goes once the client's whole body is in (a body too large to keep is not
//! mirrored, and that is counted as `retry_or_shadow_abandoned`).

use std::{net::SocketAddr, time::Duration};

use http_body_util::BodyExt;
use hyper::{
    header::{self, HeaderValue},
    http::request::Parts,
};
use skein_api::proxy::Route;

use super::{
    body::{Replay, RequestBody},
    filters::hit,
    forward::send,
    headers::split_port,
};
use crate::{
    metrics::{ClusterLabel, Metrics},
    runtime::Runtime,
    upstream::HashInput,
};

/// How long a mirror waits for the client to finish its body; after that it gives up (and the
/// recording is freed).
const BODY_WAIT: Duration = Duration::from_secs(30);

/// `reviews:9080` → `reviews-shadow:9080`, as Envoy names mirrored requests.
pub fn shadow_authority(authority: &str) -> String {
    match split_port(authority) {
        (host, Some(port)) => format!("{host}-shadow:{port}"),
        (host, None) => format!("{host}-shadow"),
    }
}

/// Sends a copy of the request to `r`'s mirror (for its share of requests), with the
/// authority (the `Host` the primary is sent with) suffixed `-shadow` as Envoy does. The
/// caller never waits for or sees the answer. Returns whether a copy was started (it then
/// owns the recording's release).
pub(super) fn spawn(
    rt: &Runtime,
    r: &Route,
    parts: &Parts,
    path_and_query: &str,
    body: Option<&Replay>,
    peer: SocketAddr,
    metrics: &Metrics,
) -> bool {
    let Some(up) = r.mirror.as_ref().and_then(|m| rt.cluster(m)).filter(|_| hit(r.mirror_percentage.unwrap_or(100.0)))
    else {
        return false;
    };
    let mut headers = parts.headers.clone();
    let shadow = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(shadow_authority);
    if let Some(v) = shadow.and_then(|s| HeaderValue::from_str(&s).ok()) {
        headers.insert(header::HOST, v);
    }
    let (method, pq, replay, up) = (parts.method.clone(), path_and_query.to_string(), body.cloned(), up.clone());
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let body = match replay {
            None => RequestBody::empty(),
            Some(replay) => match tokio::time::timeout(BODY_WAIT, replay.complete()).await {
                Ok(Ok((data, trailers))) => RequestBody::Bytes(Some(data).filter(|d| !d.is_empty()), trailers),
                other => {
                    replay.release();
                    if matches!(other, Ok(Err(super::body::ReplayError::Abandoned))) {
                        let label = ClusterLabel { cluster_name: up.name.clone() };
                        metrics.retry_or_shadow_abandoned.get_or_create(&label).inc();
                    }
                    return;
                }
            },
        };
        let addr = up.pick(&HashInput { headers: &headers, source: Some(peer) }).map(|g| g.addr);
        if let Some(addr) = addr
            && let Ok(resp) = send(&up.pool, addr, &method, &pq, headers, body, None, None).await
        {
            // Read (and discard) the answer to its end so the connection is reused.
            let mut body = resp.into_body();
            while let Some(Ok(_)) = body.frame().await {}
        }
    });
    true
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
