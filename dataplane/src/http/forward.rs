//! Forwarding: circuit breaking, destination choice, retries with per-try timeouts, and the
//! passthrough and inbound delivery paths that send a request as it is.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::BodyExt;
use hyper::{HeaderMap, Request, Response, StatusCode, Uri};
use skein_api::proxy::{RetryPolicy, Route, WeightedDestination};
use tracing::debug;

use super::{
    Body, ConnInfo, Outcome, PASSTHROUGH_CONNECT_TIMEOUT, Proxy, ResponseFlag,
    body::{Replay, RequestBody},
    headers::{authority_with_port, strip_for_forwarding, strip_hop_by_hop, upgrade_of},
};
use crate::{
    metrics::ClusterLabel,
    pool::{Pool, PoolError},
    runtime::Runtime,
    upstream::{self, HashInput, Pending, Upstream},
};

impl Proxy {
    /// Circuit breaking, then forwarding with retries. An admitted request holds its slot until
    /// the response head is back. A request still queued for a connection when the route
    /// timeout passes times out (504 UT); one refused by a full queue overflows (503 UO).
    pub(super) async fn admit_and_forward(
        &self,
        upstream: &Arc<Upstream>,
        fwd: Forward,
        retry: Option<&RetryPolicy>,
        deadline: Option<Instant>,
        worker: usize,
    ) -> Outcome {
        let admission = match deadline {
            Some(dl) => match tokio::time::timeout_at(dl.into(), upstream.admit(worker)).await {
                Ok(a) => a,
                Err(_) => return Outcome::timeout(),
            },
            None => upstream.admit(worker).await,
        };
        let Some(mut admission) = admission else {
            let label = ClusterLabel { cluster_name: upstream.name.clone() };
            self.metrics.pending_overflow.get_or_create(&label).inc();
            return Outcome::overflow();
        };
        let pending = admission.take_pending();
        self.forward(upstream, fwd, retry, deadline, pending).await
    }

    /// ALLOW_ANY: a captured request goes where the client was sending it; a request to an
    /// explicit listener goes to the address its authority names.
    pub(super) async fn passthrough(
        &self,
        authority: &str,
        conn: &ConnInfo,
        parts: hyper::http::request::Parts,
        body: RequestBody,
    ) -> Outcome {
        let target = match conn.captured {
            Some((_, dst)) => Some(dst),
            // Name resolution is bounded like a connect: a hung resolver must not hold the request.
            None => tokio::time::timeout(
                PASSTHROUGH_CONNECT_TIMEOUT,
                tokio::net::lookup_host(authority_with_port(authority)),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|mut a| a.next()),
        };
        let Some(addr) = target else {
            return Outcome::local(
                StatusCode::BAD_GATEWAY,
                "cannot resolve host\n",
                ResponseFlag::UpstreamConnectFailure,
            );
        };
        self.deliver(addr, parts, body).await
    }

    /// Sends a request as it is to `addr`, plaintext.
    pub(super) async fn deliver(
        &self,
        addr: SocketAddr,
        parts: hyper::http::request::Parts,
        body: RequestBody,
    ) -> Outcome {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let client = &self.passthrough;
        match send(client, addr, &parts.method, &pq, parts.headers, body, None, None).await {
            Ok(r) => Outcome::upstream(r, addr),
            Err(_) => Outcome::connect_error(ResponseFlag::UpstreamConnectFailure),
        }
    }

    /// Sends with retries. Each try picks an endpoint afresh, so a retry can land elsewhere;
    /// every answer feeds outlier detection. A retry resends the recorded body and then the
    /// rest of the client's; a body too large to have been kept ends the retries (counted).
    async fn forward(
        &self,
        up: &Upstream,
        mut fwd: Forward,
        retry: Option<&RetryPolicy>,
        deadline: Option<Instant>,
        mut pending: Option<Pending>,
    ) -> Outcome {
        let tries = 1 + retry.map_or(0, |r| r.attempts);
        let per_try = retry.and_then(|r| r.per_try_timeout);
        let mut last = Outcome::no_healthy_upstream();
        let mut _retry_slot = None;
        for attempt in 0..tries {
            let hash = HashInput { headers: &fwd.headers, source: Some(fwd.peer) };
            let Some(endpoint) = up.pick(&hash) else { return last };
            let budget = match (deadline, per_try) {
                (Some(dl), Some(t)) => Some(t.min(dl.saturating_duration_since(Instant::now()))),
                (Some(dl), None) => Some(dl.saturating_duration_since(Instant::now())),
                (None, t) => t,
            };
            let body = match fwd.body.as_ref().map(Replay::reader) {
                None => RequestBody::empty(),
                Some(Ok(reader)) => RequestBody::Replay(reader),
                Some(Err(e)) => {
                    debug!(cluster = %up.name, error = %e, "not retried");
                    if e == super::body::ReplayError::Abandoned {
                        let label = ClusterLabel { cluster_name: up.name.clone() };
                        self.metrics.retry_or_shadow_abandoned.get_or_create(&label).inc();
                    }
                    return last;
                }
            };
            let (method, pq) = (&fwd.method, &fwd.path_and_query);
            // The last try takes the headers; earlier ones copy them for the next.
            let headers = if attempt + 1 == tries { std::mem::take(&mut fwd.headers) } else { fwd.headers.clone() };
            // The first try leaves the pending queue once it has a connection; retries come
            // after the request already had one.
            let result = send(&up.pool, endpoint.addr, method, pq, headers, body, budget, pending.take()).await;
            let (outcome, retriable) = match result {
                Ok(resp) => {
                    up.report(endpoint.addr, upstream::Outcome::Status(resp.status().as_u16()));
                    let retriable = retry.is_some_and(|r| retry_on_status(&r.retry_on, resp.status()));
                    (Outcome::upstream(resp, endpoint.addr), retriable)
                }
                Err(SendError::Timeout) => (Outcome::timeout(), false),
                Err(SendError::Connect) => {
                    up.report(endpoint.addr, upstream::Outcome::ConnectFailure);
                    (
                        Outcome::connect_error(ResponseFlag::UpstreamConnectFailure),
                        retry.is_some_and(|r| {
                            has_condition(&r.retry_on, &["connect-failure", "reset", "5xx", "gateway-error"])
                        }),
                    )
                }
                Err(SendError::Reset) => {
                    up.report(endpoint.addr, upstream::Outcome::ConnectFailure);
                    (
                        Outcome::connect_error(ResponseFlag::UpstreamReset),
                        retry.is_some_and(|r| has_condition(&r.retry_on, &["reset", "5xx", "gateway-error"])),
                    )
                }
            };
            drop(endpoint);
            let out_of_time = deadline.is_some_and(|dl| Instant::now() >= dl);
            if !retriable || attempt + 1 == tries || out_of_time {
                if out_of_time && outcome.flag != ResponseFlag::None {
                    return Outcome::timeout();
                }
                return outcome;
            }
            // maxRetries bounds retries in flight across the cluster, not per request.
            if _retry_slot.is_none() {
                match up.retry_slot() {
                    Some(slot) => _retry_slot = Some(slot),
                    None => return outcome,
                }
            }
            debug!(cluster = %up.name, attempt, "retrying");
            last = outcome;
            // Envoy's default base interval is 25 ms with jitter; keep retries from hammering.
            tokio::time::sleep(Duration::from_millis(25 + fastrand::u64(0..25))).await;
        }
        last
    }
}

/// A request on its way to a cluster.
pub(super) struct Forward {
    pub(super) method: hyper::Method,
    pub(super) path_and_query: String,
    pub(super) headers: HeaderMap,
    /// The client's body (`None`: empty).
    pub(super) body: Option<Replay>,
    pub(super) peer: SocketAddr,
}

/// Why a request got no response head.
pub(super) enum SendError {
    Connect,
    Reset,
    Timeout,
}

/// Sends one request to `addr` over `pool`, within `timeout` (until the response headers),
/// holding `pending` until it has a connection.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send(
    pool: &Pool,
    addr: SocketAddr,
    method: &hyper::Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: RequestBody,
    timeout: Option<Duration>,
    pending: Option<Pending>,
) -> Result<Response<Body>, SendError> {
    let uri = Uri::try_from(path_and_query).map_err(|_| SendError::Connect)?;
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let fut = async {
        if upgrade_of(req.headers()).is_some() {
            pool.send_upgrade(addr, req, pending).await
        } else {
            pool.send_waiting(addr, req, pending).await
        }
    };
    let resp = match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| SendError::Timeout)?,
        None => fut.await,
    };
    match resp {
        Ok(r) => {
            let (mut parts, body) = r.into_parts();
            // A `101` keeps its Upgrade headers, and hyper's upgrade handle in the extensions
            // for the request path to join the two connections.
            if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                strip_for_forwarding(&mut parts.headers);
            } else {
                strip_hop_by_hop(&mut parts.headers);
            }
            Ok(Response::from_parts(parts, body.map_err(|e| Box::new(e) as _).boxed()))
        }
        Err(PoolError::Connect(e)) => {
            // The cause (refused, TLS: unknown issuer, wrong identity) only here: the response
            // says UF for all of them.
            debug!(endpoint = %addr, error = %e, "upstream connect failed");
            Err(SendError::Connect)
        }
        Err(PoolError::Reset(e)) => {
            debug!(endpoint = %addr, error = %e, "upstream reset");
            Err(SendError::Reset)
        }
    }
}

fn has_condition(retry_on: &str, any: &[&str]) -> bool {
    retry_on.split(',').map(str::trim).any(|c| any.contains(&c))
}

fn retry_on_status(retry_on: &str, status: StatusCode) -> bool {
    let code = status.as_u16();
    retry_on.split(',').map(str::trim).any(|c| match c {
        "5xx" => status.is_server_error(),
        "gateway-error" => matches!(code, 502..=504),
        "retriable-4xx" => code == 409,
        c => c.parse::<u16>().is_ok_and(|n| n == code),
    })
}

/// The weighted choice among the route's destinations, and its cluster.
pub(super) fn pick_destination<'r>(r: &'r Route, rt: &Runtime) -> Option<(&'r WeightedDestination, Arc<Upstream>)> {
    let total: u32 = r.route.iter().map(|d| d.weight).sum();
    let dest = if r.route.len() == 1 || total == 0 {
        r.route.first()?
    } else {
        let mut x = fastrand::u32(0..total);
        r.route.iter().find(|d| {
            if x < d.weight {
                true
            } else {
                x -= d.weight;
                false
            }
        })?
    };
    Some((dest, rt.cluster(&dest.cluster).cloned()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions_follow_envoy_names() {
        assert!(retry_on_status("5xx", StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retry_on_status("gateway-error", StatusCode::BAD_GATEWAY));
        assert!(!retry_on_status("gateway-error", StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retry_on_status("connect-failure,503", StatusCode::SERVICE_UNAVAILABLE));
        assert!(!retry_on_status("connect-failure", StatusCode::SERVICE_UNAVAILABLE));
    }
}
