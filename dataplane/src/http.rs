//! The HTTP request path: virtual host and route selection, fault injection, redirect, mirror,
//! weighted destinations, rewrite, and forwarding with timeouts and retries.
//!
//! Request bodies are buffered up to `MAX_BODY` so a retry or a mirror can resend them (Envoy
//! buffers for the same reason); a larger body is refused with 413 rather than held unbounded.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{self, HeaderValue},
};
use skein_api::proxy::{Capture, OutboundPolicy, PASSTHROUGH_CLUSTER, RetryPolicy, Route};
use tracing::debug;

use crate::{
    accesslog::{AccessLogger, Entry},
    authz,
    connect::MeshConnector,
    drain::Drain,
    identity,
    metrics::{ClusterLabel, Metrics, RequestKey},
    pool::{Pool, PoolError},
    runtime::{RequestView, Routed, Runtime},
    store::Store,
    upstream::{self, HashInput, Upstream},
};

/// Largest request body the proxy buffers.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Largest total size of request header names and values (Envoy's default, 60 KiB).
pub const MAX_HEADER_BYTES: usize = 60 * 1024;
/// Most request headers accepted (Envoy's default).
pub const MAX_HEADERS: usize = 100;

/// Response body type of the proxy.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Connect timeout of passthrough traffic and inbound delivery, HTTP and TCP (Istio's default
/// cluster connect timeout).
pub(crate) const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the proxy knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Name of the listener that accepted it (selects its authorization policies).
    pub listener: Arc<str>,
    /// Listener port.
    pub port: u16,
    /// Peer address.
    pub peer: SocketAddr,
    /// Peer SPIFFE id, when the peer authenticated with mTLS.
    pub identity: Option<Arc<str>>,
    /// Set on connections redirected by iptables: which capture, and where the client was
    /// really going (`SO_ORIGINAL_DST`).
    pub captured: Option<(Capture, SocketAddr)>,
    /// The client spoke HTTPS to this proxy (a gateway terminating TLS; mesh mTLS does not
    /// count: the application's scheme under it is http). Redirects keep the scheme.
    pub https: bool,
}

impl ConnInfo {
    /// A connection accepted on a plain (not capture) listener.
    pub fn new(listener: Arc<str>, port: u16, peer: SocketAddr, identity: Option<Arc<str>>) -> Self {
        Self { listener, port, peer, identity, captured: None, https: false }
    }
}

/// Everything a request handler needs; shared by all connections.
pub struct Proxy {
    store: Store,
    metrics: Metrics,
    /// Connections for ALLOW_ANY passthrough and inbound delivery (clusters have their own).
    passthrough: Pool,
    access_log: AccessLogger,
    drain: Drain,
}

fn full(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

/// Outcome of forwarding, before it becomes a response.
struct Outcome {
    response: Response<Body>,
    flags: &'static str,
    /// Endpoint that answered, if the request was sent anywhere.
    upstream: Option<SocketAddr>,
}

impl Outcome {
    fn local(status: StatusCode, body: &'static str, flags: &'static str) -> Self {
        Self { response: full(status, body), flags, upstream: None }
    }

    fn upstream(response: Response<Body>, addr: SocketAddr) -> Self {
        Self { response, flags: "-", upstream: Some(addr) }
    }
}

/// Where a request was attributed, for metrics and the access log.
#[derive(Default)]
struct Attribution {
    service: String,
    cluster: Option<String>,
    route: Option<String>,
}

impl Attribution {
    fn service(service: impl Into<String>) -> Self {
        Self { service: service.into(), ..Default::default() }
    }
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

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names present is cheaper than eight
    // hashed removals on every request and response.
    if !h.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    // `te: trailers` is the one TE value that survives: gRPC needs it end to end.
    let trailers = h.get("te").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    if trailers {
        h.insert("te", HeaderValue::from_static("trailers"));
    }
}

fn hit(percentage: f64) -> bool {
    percentage >= 100.0 || fastrand::f64() * 100.0 < percentage
}

/// `reviews:9080` → `reviews-shadow:9080`, as Envoy names mirrored requests.
pub fn shadow_authority(authority: &str) -> String {
    match split_port(authority) {
        (host, Some(port)) => format!("{host}-shadow:{port}"),
        (host, None) => format!("{host}-shadow"),
    }
}

impl Proxy {
    /// The active configuration.
    pub fn current(&self) -> Arc<Runtime> {
        self.store.current()
    }

    /// Drain state shared by all of this proxy's connections.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The metrics this proxy records to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The access log writer (TCP connections are logged there too).
    pub fn access_log(&self) -> &AccessLogger {
        &self.access_log
    }

    /// A proxy serving the configuration in `store`.
    pub fn new(store: Store, metrics: Metrics) -> Arc<Self> {
        let passthrough =
            Pool::new(MeshConnector { tls: None, connect_timeout: PASSTHROUGH_CONNECT_TIMEOUT }, false, None);
        let access_log = AccessLogger::start(metrics.clone());
        Arc::new(Self { store, metrics, passthrough, access_log, drain: Drain::default() })
    }

    /// Handles one request that arrived on a listener bound to `port`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let mut req = req;
        // Trace context: traceparent/tracestate and b3 headers pass through untouched (they are
        // not hop-by-hop); x-request-id is kept or created here so every hop, retry and mirror
        // of this request carries the same one.
        ensure_request_id(req.headers_mut());
        let rt = self.store.current();
        let log = rt.config.access_log.clone().map(|cfg| (cfg, entry_for(&req, &conn)));
        let reporter = match conn.captured {
            Some((Capture::Inbound, _)) => "destination",
            _ => "source",
        };
        let (outcome, attribution) = self.route_request(&rt, req, &conn).await;
        let service = attribution.service;
        let elapsed = start.elapsed();
        if let Some((cfg, mut entry)) = log {
            entry.response_code = outcome.response.status().as_u16();
            entry.response_flags = outcome.flags.to_string();
            entry.bytes_sent = hyper::body::Body::size_hint(outcome.response.body()).exact().unwrap_or(0);
            entry.duration = elapsed.as_millis() as u64;
            entry.upstream_host = outcome.upstream;
            entry.upstream_cluster = attribution.cluster;
            entry.route_name = attribution.route;
            self.access_log.log(&cfg, &entry);
        }
        let key = RequestKey {
            reporter,
            destination_service: &service,
            response_code: outcome.response.status().as_u16(),
            response_flags: outcome.flags,
        };
        self.metrics.record(key, elapsed.as_secs_f64() * 1000.0);
        Ok(outcome.response)
    }

    /// Returns the outcome and where it was attributed.
    async fn route_request(&self, rt: &Runtime, req: Request<Incoming>, conn: &ConnInfo) -> (Outcome, Attribution) {
        let (port, peer, peer_identity) = (conn.port, conn.peer, conn.identity.clone());
        let (mut parts, body) = req.into_parts();
        let header_bytes: usize = parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        if header_bytes > MAX_HEADER_BYTES || parts.headers.len() > MAX_HEADERS {
            return (
                Outcome::local(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large\n", "-"),
                Attribution::service("unknown"),
            );
        }
        let Some(authority) = authority_of(&parts.uri, &parts.headers) else {
            return (
                Outcome::local(StatusCode::BAD_REQUEST, "missing Host header\n", "-"),
                Attribution::service("unknown"),
            );
        };
        let host = split_port(&authority).0;
        let path = parts.uri.path().to_string();
        if let Some(az) = rt.authorizer(&conn.listener) {
            let req = authz::Request {
                principal: peer_identity.as_deref().map(identity::principal),
                source_ip: peer.ip(),
                port,
                http: Some(authz::HttpAttrs {
                    host,
                    method: parts.method.as_str(),
                    path: &path,
                    headers: &parts.headers,
                }),
            };
            if let authz::Decision::Deny(policy) = az.check(&req) {
                debug!(%peer, policy, "denied by authorization policy");
                return (
                    Outcome::local(StatusCode::FORBIDDEN, "RBAC: access denied", "RBAC"),
                    Attribution::service(host),
                );
            }
        }
        if let Some((Capture::Inbound, dst)) = conn.captured {
            // Inbound capture delivers to the workload the client addressed; outbound routing
            // rules are the caller's business and do not apply here.
            let body = match read_body(body).await {
                Ok(b) => b,
                Err(o) => return (o, Attribution::service(host)),
            };
            strip_hop_by_hop(&mut parts.headers);
            set_client_cert_header(&mut parts.headers, rt, peer_identity.as_deref());
            let cluster = skein_api::names::inbound_cluster(dst.port());
            let outcome = self.deliver(dst, parts, body).await;
            return (outcome, Attribution { service: host.to_string(), cluster: Some(cluster), route: None });
        }
        let view = RequestView { path: &path, method: &parts.method, headers: &parts.headers, port };
        let (route, prefix) = match rt.route(host, &view) {
            Routed::Route(r, prefix) => (r, prefix.map(str::to_string)),
            Routed::NoRoute => {
                return (Outcome::local(StatusCode::NOT_FOUND, "no route\n", "NR"), Attribution::service(host));
            }
            Routed::UnknownHost => {
                return match rt.config.outbound_traffic_policy {
                    OutboundPolicy::RegistryOnly => (
                        Outcome::local(StatusCode::BAD_GATEWAY, "host is not in the mesh registry\n", "NR"),
                        Attribution::service("BlackHoleCluster"),
                    ),
                    OutboundPolicy::AllowAny => {
                        let body = match read_body(body).await {
                            Ok(b) => b,
                            Err(o) => return (o, Attribution::service("PassthroughCluster")),
                        };
                        strip_hop_by_hop(&mut parts.headers);
                        (
                            self.passthrough(&authority, conn, parts, body).await,
                            Attribution::service("PassthroughCluster"),
                        )
                    }
                };
            }
        };
        if route.route.route.first().is_some_and(|d| d.cluster == PASSTHROUGH_CLUSTER) {
            // A registered host without endpoints of its own (ServiceEntry resolution NONE).
            let body = match read_body(body).await {
                Ok(b) => b,
                Err(o) => return (o, Attribution::service(host)),
            };
            strip_hop_by_hop(&mut parts.headers);
            let attribution = Attribution {
                service: host.to_string(),
                cluster: Some(PASSTHROUGH_CLUSTER.into()),
                route: Some(route.route.name.clone()),
            };
            return (self.passthrough(&authority, conn, parts, body).await, attribution);
        }
        let service = route
            .route
            .route
            .first()
            .and_then(|d| rt.cluster(&d.cluster))
            .map_or_else(|| host.to_string(), |c| c.service().to_string());
        let mut service = Attribution { service, cluster: None, route: Some(route.route.name.clone()) };

        let body = match read_body(body).await {
            Ok(b) => b,
            Err(o) => return (o, service),
        };
        strip_hop_by_hop(&mut parts.headers);
        set_client_cert_header(&mut parts.headers, rt, peer_identity.as_deref());
        let r = &route.route;
        let deadline = r.timeout.map(|t| Instant::now() + t);

        // Faults: delay first, then abort, as Envoy's fault filter does. The delay counts
        // against the route timeout.
        if let Some(f) = &r.fault {
            if let Some(d) = f.delay.as_ref().filter(|d| hit(d.percentage)) {
                match deadline {
                    Some(dl) if Instant::now() + d.fixed_delay > dl => {
                        tokio::time::sleep_until(dl.into()).await;
                        return (
                            Outcome::local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", "UT"),
                            service,
                        );
                    }
                    _ => tokio::time::sleep(d.fixed_delay).await,
                }
            }
            if let Some(a) = f.abort.as_ref().filter(|a| hit(a.percentage)) {
                let status = StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (Outcome::local(status, "fault filter abort\n", "FI"), service);
            }
        }
        if let Some(redirect) = &r.redirect {
            return (redirect_to(redirect, &authority, &parts.uri, conn.https), service);
        }

        // Rewrite before mirroring, so the shadow sees what the primary sees.
        let (path_and_query, authority) = rewrite(r, &parts.uri, prefix.as_deref(), authority);
        let mirror =
            r.mirror.as_ref().and_then(|m| rt.cluster(m)).filter(|_| hit(r.mirror_percentage.unwrap_or(100.0)));
        if let Some(mirror) = mirror {
            {
                let mut headers = parts.headers.clone();
                if let Ok(v) = HeaderValue::from_str(&shadow_authority(&authority)) {
                    headers.insert(header::HOST, v);
                }
                let req = (parts.method.clone(), path_and_query.clone(), headers, body.clone());
                let up = mirror.clone();
                // Fire and forget: the caller never waits for or sees the shadow's answer.
                tokio::spawn(async move {
                    let addr = up.pick(&HashInput { headers: &req.2, source: Some(peer) }).map(|g| g.addr);
                    if let Some(addr) = addr
                        && let Ok(resp) = send(&up.pool, addr, &req.0, &req.1, req.2, req.3, None).await
                    {
                        // Read (and discard) the answer to its end so the connection is reused.
                        let mut body = resp.into_body();
                        while let Some(Ok(_)) = body.frame().await {}
                    }
                });
            }
        }

        let Some(upstream) = pick_destination(r, rt) else {
            return (Outcome::local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n", "UH"), service);
        };
        service.cluster = Some(upstream.name.to_string());
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
        let fwd = Forward { method: parts.method, path_and_query, headers: parts.headers, body, peer };
        // Circuit breaking: an admitted request holds its slot until the response head is back.
        // A request still queued for a connection when the route timeout passes times out (504
        // UT); one refused by a full queue overflows (503 UO).
        let admission = match deadline {
            Some(dl) => match tokio::time::timeout_at(dl.into(), upstream.admit()).await {
                Ok(a) => a,
                Err(_) => {
                    return (Outcome::local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", "UT"), service);
                }
            },
            None => upstream.admit().await,
        };
        let Some(_admission) = admission else {
            let label = ClusterLabel { cluster_name: upstream.name.clone() };
            self.metrics.pending_overflow.get_or_create(&label).inc();
            return (Outcome::local(StatusCode::SERVICE_UNAVAILABLE, "upstream overflow\n", "UO"), service);
        };
        let outcome = self.forward(&upstream, fwd, r.retries.as_ref(), deadline).await;
        (outcome, service)
    }

    /// ALLOW_ANY: a captured request goes where the client was sending it; a request to an
    /// explicit listener goes to the address its authority names.
    async fn passthrough(
        &self,
        authority: &str,
        conn: &ConnInfo,
        parts: hyper::http::request::Parts,
        body: Bytes,
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
            return Outcome::local(StatusCode::BAD_GATEWAY, "cannot resolve host\n", "UF");
        };
        self.deliver(addr, parts, body).await
    }

    /// Sends a request as it is to `addr`, plaintext.
    async fn deliver(&self, addr: SocketAddr, parts: hyper::http::request::Parts, body: Bytes) -> Outcome {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let client = &self.passthrough;
        match send(client, addr, &parts.method, &pq, parts.headers, body, None).await {
            Ok(r) => Outcome::upstream(r, addr),
            Err(_) => Outcome::local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers\n",
                "UF",
            ),
        }
    }

    /// Sends with retries. Each try picks an endpoint afresh, so a retry can land elsewhere;
    /// every answer feeds outlier detection.
    async fn forward(
        &self,
        up: &Upstream,
        mut fwd: Forward,
        retry: Option<&RetryPolicy>,
        deadline: Option<Instant>,
    ) -> Outcome {
        let tries = 1 + retry.map_or(0, |r| r.attempts);
        let per_try = retry.and_then(|r| r.per_try_timeout);
        let mut last = Outcome::local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n", "UH");
        let mut _retry_slot = None;
        for attempt in 0..tries {
            let hash = HashInput { headers: &fwd.headers, source: Some(fwd.peer) };
            let Some(endpoint) = up.pick(&hash) else { return last };
            let budget = match (deadline, per_try) {
                (Some(dl), Some(t)) => Some(t.min(dl.saturating_duration_since(Instant::now()))),
                (Some(dl), None) => Some(dl.saturating_duration_since(Instant::now())),
                (None, t) => t,
            };
            let (method, pq, body) = (&fwd.method, &fwd.path_and_query, fwd.body.clone());
            // The last try takes the headers; earlier ones copy them for the next.
            let headers = if attempt + 1 == tries { std::mem::take(&mut fwd.headers) } else { fwd.headers.clone() };
            let result = send(&up.pool, endpoint.addr, method, pq, headers, body, budget).await;
            let (outcome, retriable) = match result {
                Ok(resp) => {
                    up.report(endpoint.addr, upstream::Outcome::Status(resp.status().as_u16()));
                    let retriable = retry.is_some_and(|r| retry_on_status(&r.retry_on, resp.status()));
                    (Outcome::upstream(resp, endpoint.addr), retriable)
                }
                Err(SendError::Timeout) => {
                    (Outcome::local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", "UT"), false)
                }
                Err(SendError::Connect) => {
                    up.report(endpoint.addr, upstream::Outcome::ConnectFailure);
                    (
                        Outcome::local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "upstream connect error or disconnect/reset before headers\n",
                            "UF",
                        ),
                        retry.is_some_and(|r| {
                            has_condition(&r.retry_on, &["connect-failure", "reset", "5xx", "gateway-error"])
                        }),
                    )
                }
                Err(SendError::Reset) => {
                    up.report(endpoint.addr, upstream::Outcome::ConnectFailure);
                    (
                        Outcome::local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "upstream connect error or disconnect/reset before headers\n",
                            "UR",
                        ),
                        retry.is_some_and(|r| has_condition(&r.retry_on, &["reset", "5xx", "gateway-error"])),
                    )
                }
            };
            drop(endpoint);
            let out_of_time = deadline.is_some_and(|dl| Instant::now() >= dl);
            if !retriable || attempt + 1 == tries || out_of_time {
                if out_of_time && outcome.flags != "-" {
                    return Outcome::local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", "UT");
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

struct Forward {
    method: hyper::Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
    peer: SocketAddr,
}

enum SendError {
    Connect,
    Reset,
    Timeout,
}

/// Sends one request to `addr` over `pool`, within `timeout` (until the response headers).
async fn send(
    pool: &Pool,
    addr: SocketAddr,
    method: &hyper::Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: Bytes,
    timeout: Option<Duration>,
) -> Result<Response<Body>, SendError> {
    let uri = Uri::try_from(path_and_query).map_err(|_| SendError::Connect)?;
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let fut = pool.send(addr, req);
    let resp = match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| SendError::Timeout)?,
        None => fut.await,
    };
    match resp {
        Ok(r) => {
            let (mut parts, body) = r.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body.map_err(|e| Box::new(e) as _).boxed()))
        }
        Err(PoolError::Connect(_)) => Err(SendError::Connect),
        Err(PoolError::Reset(_)) => Err(SendError::Reset),
    }
}

fn redirect_to(redirect: &skein_api::proxy::Redirect, authority: &str, uri: &Uri, https: bool) -> Outcome {
    let mut r = full(StatusCode::from_u16(redirect.redirect_code).unwrap_or(StatusCode::MOVED_PERMANENTLY), "");
    if let Ok(v) = HeaderValue::from_str(&location(redirect, authority, uri, https)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Outcome { response: r, flags: "-", upstream: None }
}

/// `host:port` → (`host`, port). An authority whose text after the last `:` is not all
/// digits (none, or a bare IPv6 address) has no port; `host:` is `host` without one.
fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (h, p.parse().ok())
        }
        _ => (authority, None),
    }
}

/// The `Location` of a redirect, as Envoy builds it: the scheme, host, port and path the
/// redirect names replace the request's. A scheme change without a port drops the request's
/// port (the new scheme's default); a default port is not written. A path without a query
/// keeps the request's query.
fn location(redirect: &skein_api::proxy::Redirect, authority: &str, uri: &Uri, https: bool) -> String {
    let from = if https { "https" } else { "http" };
    let scheme = redirect.scheme.as_deref().unwrap_or(from);
    let (req_host, req_port) = split_port(authority);
    let (host, authority_port) = match redirect.authority.as_deref() {
        Some(a) => split_port(a),
        None => (req_host, None),
    };
    let port = redirect.port.or(authority_port).or(if scheme == from { req_port } else { None });
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = match &redirect.uri {
        Some(p) if p.contains('?') => p.clone(),
        Some(p) => uri.query().map_or_else(|| p.clone(), |q| format!("{p}?{q}")),
        None => uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    };
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
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

fn pick_destination(r: &Route, rt: &Runtime) -> Option<Arc<Upstream>> {
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
    rt.cluster(&dest.cluster).cloned()
}

/// Applies the route's rewrite: the matched prefix (or the whole path) and the authority.
fn rewrite(r: &Route, uri: &Uri, matched_prefix: Option<&str>, authority: String) -> (String, String) {
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let Some(rw) = &r.rewrite else {
        return (format!("{path}{query}"), authority);
    };
    let new_path = match (&rw.uri, matched_prefix) {
        (Some(to), Some(prefix)) => format!("{to}{}", &path[prefix.len().min(path.len())..]),
        (Some(to), None) => to.clone(),
        (None, _) => path.to_string(),
    };
    (format!("{new_path}{query}"), rw.authority.clone().unwrap_or(authority))
}

fn authority_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .filter(|a| !a.is_empty())
}

fn authority_with_port(authority: &str) -> String {
    match split_port(authority) {
        (_, Some(_)) => authority.to_string(),
        (host, None) => format!("{host}:80"),
    }
}

/// `x-forwarded-client-cert` the way Istio sets it (SANITIZE_SET): whatever the client sent is
/// dropped, and an mTLS peer's identity is recorded as `By=<us>;URI=<peer>`.
fn set_client_cert_header(h: &mut HeaderMap, rt: &Runtime, peer: Option<&str>) {
    h.remove("x-forwarded-client-cert");
    let (Some(peer), Some(me)) = (peer, rt.identity.as_ref()) else { return };
    if let Ok(v) = HeaderValue::from_str(&format!("By={};URI={peer}", me.spiffe_id)) {
        h.insert("x-forwarded-client-cert", v);
    }
}

/// The request half of an access log entry.
fn entry_for(req: &Request<Incoming>, conn: &ConnInfo) -> Entry {
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

/// Keeps an incoming `x-request-id` (trace correlation) or adds one.
fn ensure_request_id(h: &mut HeaderMap) {
    if !h.contains_key("x-request-id") {
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        if let Ok(v) = HeaderValue::from_str(&id) {
            h.insert("x-request-id", v);
        }
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Outcome> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(Outcome::local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n", "-"))
        }
        Err(_) => Err(Outcome::local(StatusCode::BAD_REQUEST, "malformed request body\n", "-")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_is_suffixed_before_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
        // One reading of `host[:port]` serves routing, mirroring, passthrough and redirects.
        assert_eq!(split_port("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_port("reviews:"), ("reviews", None));
        assert_eq!(split_port("reviews:http"), ("reviews:http", None));
        assert_eq!(split_port("::1"), ("::1", None));
        assert_eq!(authority_with_port("reviews"), "reviews:80");
        assert_eq!(authority_with_port("reviews:9080"), "reviews:9080");
    }

    #[test]
    fn redirects_replace_scheme_host_port_and_path_as_envoy_does() {
        use skein_api::proxy::Redirect;
        let uri: Uri = "/a?x=1".parse().unwrap();
        let r = |scheme: Option<&str>, authority: Option<&str>, port: Option<u16>, path: Option<&str>| Redirect {
            scheme: scheme.map(Into::into),
            authority: authority.map(Into::into),
            port,
            uri: path.map(Into::into),
            redirect_code: 301,
        };
        // httpsRedirect: the scheme changes, the request's port goes, path and query stay.
        assert_eq!(location(&r(Some("https"), None, None, None), "shop:8080", &uri, false), "https://shop/a?x=1");
        assert_eq!(location(&r(None, None, None, None), "shop:8080", &uri, false), "http://shop:8080/a?x=1");
        assert_eq!(location(&r(None, None, None, None), "shop", &uri, true), "https://shop/a?x=1");
        assert_eq!(
            location(&r(None, Some("new"), None, Some("/b")), "shop:8080", &uri, false),
            "http://new:8080/b?x=1"
        );
        assert_eq!(location(&r(None, None, Some(9443), Some("/b?y")), "shop", &uri, false), "http://shop:9443/b?y");
        assert_eq!(location(&r(Some("https"), None, Some(443), None), "shop", &uri, false), "https://shop/a?x=1");
        assert_eq!(location(&r(Some("http"), None, None, None), "[::1]:8443", &uri, true), "http://[::1]/a?x=1");
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
    fn retry_conditions_follow_envoy_names() {
        assert!(retry_on_status("5xx", StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retry_on_status("gateway-error", StatusCode::BAD_GATEWAY));
        assert!(!retry_on_status("gateway-error", StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retry_on_status("connect-failure,503", StatusCode::SERVICE_UNAVAILABLE));
        assert!(!retry_on_status("connect-failure", StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
        let route = Route {
            rewrite: Some(skein_api::proxy::Rewrite { uri: Some("/v2/".into()), authority: Some("new".into()) }),
            ..Default::default()
        };
        let uri: Uri = "/api/items?x=1".parse().unwrap();
        assert_eq!(rewrite(&route, &uri, Some("/api/"), "old".into()), ("/v2/items?x=1".into(), "new".into()));
        assert_eq!(rewrite(&route, &uri, None, "old".into()).0, "/v2/?x=1");
    }
}
