//! The HTTP request path, by stage: admission and headers ([`headers`]), authorization and
//! routing (here), per-route filters — faults, redirect, rewrite ([`filters`]) — mirroring
//! ([`mirror`]), then circuit breaking, destination choice and forwarding with timeouts and
//! retries ([`forward`]). Why the proxy answered as it did is a [`ResponseFlag`].
//!
//! Bodies stream both ways; a bounded copy of the request body is kept for retries and
//! mirrors ([`body`]).

pub mod body;
mod extended_connect;
mod filters;
mod flags;
mod forward;
mod headers;
mod mirror;
pub mod progress;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    header::{self, HeaderValue},
    http::request::Parts,
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use skein_api::proxy::{Capture, OutboundPolicy, PASSTHROUGH_CLUSTER};
use tracing::debug;

pub use flags::ResponseFlag;
pub use mirror::shadow_authority;

use self::{
    body::{BufferBudget, REPLAY_LIMIT, Replay, RequestBody},
    forward::{Forward, pick_destination},
    headers::{ensure_request_id, entry_for, set_client_cert_header, split_port, strip_for_forwarding},
    progress::{Inbound, Progress},
};
use crate::{
    accesslog::AccessLogger,
    authz,
    connect::MeshConnector,
    drain::Drain,
    identity,
    limits::ConnectionLimits,
    metrics::{Metrics, RequestKey},
    pool::Pool,
    runtime::{RequestView, Routed, Runtime},
    store::Store,
};

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
    /// The Envoy worker the connection belongs to ([`Proxy::assign_worker`]).
    pub worker: usize,
}

impl ConnInfo {
    /// A connection accepted on a plain (not capture) listener.
    pub fn new(listener: Arc<str>, port: u16, peer: SocketAddr, identity: Option<Arc<str>>) -> Self {
        Self { listener, port, peer, identity, captured: None, https: false, worker: 0 }
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
    /// Bytes of request bodies all requests together keep for retries and mirrors.
    budget: Arc<BufferBudget>,
    connections: ConnectionLimits,
    timeouts: Timeouts,
    /// Envoy's worker count (`concurrency`) and the next worker a connection is given to.
    workers: usize,
    next_worker: std::sync::atomic::AtomicUsize,
}

/// What a proxy may hold: connections and buffered request bytes.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connection caps, total and per listener.
    pub connections: ConnectionLimits,
    /// Bytes of request bodies kept for retries and mirrors, all requests together.
    pub buffer_budget: usize,
    /// How long connections and streams may sit without progress.
    pub timeouts: Timeouts,
    /// Envoy's workers (`--concurrency`): downstream connections are spread over this many,
    /// each with its own claim on a cluster's connections (see [`crate::upstream::Upstream::admit`]).
    pub workers: usize,
}

/// Envoy's downstream idle timeouts (same defaults).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    pub idle: Duration,
    /// A request that moves no body data either way for this long is ended: 408 while the
    /// client's body is incomplete, 504 while the upstream has not answered, a reset once the
    /// response has started (a client that stops reading).
    pub stream_idle: Duration,
    /// An HTTP/2 connection quiet for this long is sent a PING (Envoy's
    /// `connection_keepalive.interval`, as Istio sets it for its sidecars' listeners: 60 s)...
    pub h2_keepalive_interval: Duration,
    /// ...and closed when the PING is not answered within this (a peer gone without a FIN or
    /// RST otherwise holds the connection and its memory until the idle timeout).
    pub h2_keepalive_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(3600),
            stream_idle: Duration::from_secs(300),
            h2_keepalive_interval: Duration::from_secs(60),
            h2_keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits::from_fd_limit(crate::limits::fd_limit()),
            buffer_budget: body::DEFAULT_BUFFER_BUDGET,
            timeouts: Timeouts::default(),
            workers: DEFAULT_WORKERS,
        }
    }
}

/// Istio's sidecar `concurrency`.
pub const DEFAULT_WORKERS: usize = 2;

fn full(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

/// Outcome of the request path, before it becomes a response.
struct Outcome {
    response: Response<Body>,
    flag: ResponseFlag,
    /// Endpoint that answered, if the request was sent anywhere.
    upstream: Option<SocketAddr>,
}

impl Outcome {
    fn local(status: StatusCode, body: &'static str, flag: ResponseFlag) -> Self {
        Self { response: full(status, body), flag, upstream: None }
    }

    fn upstream(response: Response<Body>, addr: SocketAddr) -> Self {
        Self { response, flag: ResponseFlag::None, upstream: Some(addr) }
    }

    /// 504 `UT`: the route timeout passed.
    fn timeout() -> Self {
        Self::local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", ResponseFlag::UpstreamTimeout)
    }

    /// 503 `UH`: no endpoint to send to.
    fn no_healthy_upstream() -> Self {
        Self::local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n", ResponseFlag::NoHealthyUpstream)
    }

    /// 503 `UO`: refused by the circuit breaker, with what Envoy sends (`x-envoy-overloaded`,
    /// its body), which clients and dashboards key on.
    fn overflow() -> Self {
        let mut o = Self::local(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ResponseFlag::UpstreamOverflow,
        );
        o.response.headers_mut().insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        o
    }

    /// 503 with Envoy's body for a failed (`UF`) or reset (`UR`) upstream connection.
    fn connect_error(flag: ResponseFlag) -> Self {
        Self::local(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers\n",
            flag,
        )
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

    /// A proxy serving the configuration in `store` with the default limits (connection caps
    /// from the descriptor limit as it is, the default body budget).
    pub fn new(store: Store, metrics: Metrics) -> Arc<Self> {
        Self::with_limits(store, metrics, Limits::default())
    }

    /// A proxy with these limits.
    pub fn with_limits(store: Store, metrics: Metrics, limits: Limits) -> Arc<Self> {
        let passthrough =
            Pool::new(MeshConnector { tls: None, connect_timeout: PASSTHROUGH_CONNECT_TIMEOUT }, false, None);
        let access_log = AccessLogger::start(metrics.clone());
        let budget = BufferBudget::new(limits.buffer_budget);
        let connections = limits.connections;
        let timeouts = limits.timeouts;
        let workers = limits.workers.max(1);
        Arc::new(Self {
            store,
            metrics,
            passthrough,
            access_log,
            drain: Drain::default(),
            budget,
            connections,
            timeouts,
            workers,
            next_worker: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The Envoy worker a new downstream connection belongs to: each in turn, as Envoy's
    /// listeners spread connections over its workers.
    pub fn assign_worker(&self) -> usize {
        self.next_worker.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.workers
    }

    /// The idle timeouts every HTTP connection applies.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The connection caps every listener applies.
    pub fn connection_limits(&self) -> &ConnectionLimits {
        &self.connections
    }

    /// Bytes of request bodies held for retries and mirrors now.
    pub fn buffered_bytes(&self) -> usize {
        self.budget.used()
    }

    /// Handles one request that arrived on a listener bound to `port`; `progress` follows it
    /// for the stream idle timeout (see [`progress`]).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Inbound>,
        conn: Arc<ConnInfo>,
        progress: Arc<Progress>,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let mut req = req;
        // Trace context: traceparent/tracestate and b3 headers pass through untouched (they are
        // not hop-by-hop); x-request-id is kept or created here so every hop, retry and mirror
        // of this request carries the same one.
        let added = ensure_request_id(req.headers_mut());
        let rt = self.store.current();
        let log = rt.config.access_log.clone().map(|cfg| (cfg, entry_for(&req, &conn)));
        let reporter = match conn.captured {
            Some((Capture::Inbound, _)) => "destination",
            _ => "source",
        };
        // Present only on an HTTP/1.1 upgrade request or an HTTP/2 CONNECT: the client's side
        // of the tunnel.
        let client_upgrade = req.extensions_mut().remove::<OnUpgrade>();
        let extended_connect = extended_connect::into_upgrade(&mut req);
        // Only for attributing a timed-out request (HTTP/2 carries it in the URI); both are
        // reference-counted, so keeping them costs no copy.
        let authority = (req.uri().authority().cloned(), req.headers().get(header::HOST).cloned());
        let (mut outcome, attribution) = tokio::select! {
            routed = self.route_request(&rt, req, &conn, added) => routed,
            // No body data either way for the stream idle timeout: Envoy's 408 while the
            // client's body is incomplete, 504 while the upstream keeps the answer.
            () = progress.timed_out() => {
                let status = if progress.request_ended() { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::REQUEST_TIMEOUT };
                let host = match &authority {
                    (Some(a), _) => Some(a.host().to_string()),
                    (None, Some(h)) => h.to_str().ok().map(|h| split_port(h).0.to_string()),
                    (None, None) => None,
                };
                let service = host.unwrap_or_else(|| "unknown".into());
                (Outcome::local(status, "stream timeout\n", ResponseFlag::StreamIdleTimeout), Attribution::service(service))
            }
        };
        if outcome.response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = outcome.response.extensions_mut().remove::<OnUpgrade>();
            match (client_upgrade, upstream_upgrade) {
                (Some(client), Some(upstream)) => {
                    tokio::spawn(tunnel(client, upstream, conn.peer));
                }
                // A 101 the client did not ask for cannot be honoured.
                _ => outcome = Outcome::connect_error(ResponseFlag::UpstreamReset),
            }
        }
        if extended_connect {
            extended_connect::into_connect_response(&mut outcome.response);
        }
        let service = attribution.service;
        let elapsed = start.elapsed();
        if let Some((cfg, mut entry)) = log {
            entry.response_code = outcome.response.status().as_u16();
            entry.response_flags = outcome.flag.as_str().to_string();
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
            response_flags: outcome.flag.as_str(),
        };
        self.metrics.record(key, elapsed.as_secs_f64() * 1000.0);
        Ok(outcome.response)
    }

    /// The request path, stage by stage; returns the outcome and where it was attributed.
    async fn route_request(
        &self,
        rt: &Runtime,
        req: Request<Inbound>,
        conn: &ConnInfo,
        added_headers: usize,
    ) -> (Outcome, Attribution) {
        let (mut parts, body) = req.into_parts();
        // Admission: header limits and an authority.
        let authority = match headers::admit(&parts, added_headers) {
            Ok(a) => a,
            Err((status, why)) => {
                return (Outcome::local(status, why, ResponseFlag::None), Attribution::service("unknown"));
            }
        };
        let host = split_port(&authority).0;
        // Authorization, for every request whatever happens next.
        if let Some(denied) = authorize(rt, conn, &parts, host) {
            return (denied, Attribution::service(host));
        }
        // Inbound capture delivers to the workload the client addressed; outbound routing rules
        // are the caller's business and do not apply here.
        if let Some((Capture::Inbound, dst)) = conn.captured {
            let body = RequestBody::Direct(body);
            strip_for_forwarding(&mut parts.headers);
            set_client_cert_header(&mut parts.headers, rt, conn.identity.as_deref());
            let cluster = skein_api::names::inbound_cluster(dst.port());
            let outcome = self.deliver(dst, parts, body).await;
            return (outcome, Attribution { service: host.to_string(), cluster: Some(cluster), route: None });
        }
        // Routing: the virtual host and the first matching rule.
        let view =
            RequestView { path: parts.uri.path(), method: &parts.method, headers: &parts.headers, port: conn.port };
        let (route, prefix) = match rt.route(host, &view) {
            Routed::Route(r, prefix) => (r, prefix.map(str::to_string)),
            Routed::NoRoute => {
                let o = Outcome::local(StatusCode::NOT_FOUND, "no route\n", ResponseFlag::NoRoute);
                return (o, Attribution::service(host));
            }
            Routed::UnknownHost => return self.unknown_host(rt, conn, &authority, parts, body).await,
        };
        let r = &route.route;
        if r.route.first().is_some_and(|d| d.cluster == PASSTHROUGH_CLUSTER) {
            // A registered host without endpoints of its own (ServiceEntry resolution NONE).
            let attribution = Attribution {
                service: host.to_string(),
                cluster: Some(PASSTHROUGH_CLUSTER.into()),
                route: Some(r.name.clone()),
            };
            strip_for_forwarding(&mut parts.headers);
            return (self.passthrough(&authority, conn, parts, RequestBody::Direct(body)).await, attribution);
        }
        let service = r
            .route
            .first()
            .and_then(|d| rt.cluster(&d.cluster))
            .map_or_else(|| host.to_string(), |c| c.service().to_string());
        let mut attribution = Attribution { service, cluster: None, route: Some(r.name.clone()) };
        // Streamed; a bounded copy is kept in case a retry or the mirror needs it.
        let body =
            (!hyper::body::Body::is_end_stream(&body)).then(|| Replay::new(body, REPLAY_LIMIT, self.budget.clone()));
        strip_for_forwarding(&mut parts.headers);
        set_client_cert_header(&mut parts.headers, rt, conn.identity.as_deref());
        let deadline = r.timeout.map(|t| Instant::now() + t);

        // Filters: faults, then a redirect answers here.
        if let Some(o) = filters::fault(r, deadline).await {
            return (o, attribution);
        }
        if let Some(redirect) = &r.redirect {
            // A redirect is Envoy's direct response: the route's response edits apply to it.
            let mut o = filters::redirect_to(redirect, &authority, &parts.uri, conn.https);
            filters::edit_headers(o.response.headers_mut(), &r.headers.response);
            return (o, attribution);
        }
        let (path_and_query, authority) = filters::rewrite(r, &parts.uri, prefix.as_deref(), authority);

        // Forwarding: a weighted destination, circuit breaking, retries.
        let Some((dest, upstream)) = pick_destination(r, rt) else {
            return (Outcome::no_healthy_upstream(), attribution);
        };
        attribution.cluster = Some(upstream.name.to_string());
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
        // Header edits: the destination's, then the route's (which wins, as in Envoy).
        filters::edit_headers(&mut parts.headers, &dest.headers.request);
        filters::edit_headers(&mut parts.headers, &r.headers.request);
        // The mirror copies the request as the primary sends it (rewritten and edited), as
        // Envoy copies the shadow's headers after the route finalized them.
        let mirrored = mirror::spawn(rt, r, &parts, &path_and_query, body.as_ref(), conn.peer, &self.metrics);
        let replay = body.clone();
        let fwd = Forward { method: parts.method, path_and_query, headers: parts.headers, body, peer: conn.peer };
        let mut outcome = self.admit_and_forward(&upstream, fwd, r.retries.as_ref(), deadline, conn.worker).await;
        // Response edits apply to what the upstream answered; the proxy's own replies (timeout,
        // overflow, connect failure) go out as Envoy's router sends them, without the route's.
        if outcome.upstream.is_some() {
            filters::edit_headers(outcome.response.headers_mut(), &dest.headers.response);
            filters::edit_headers(outcome.response.headers_mut(), &r.headers.response);
        }
        // Nothing will resend the body now, unless a mirror still waits for it: free the copy
        // (the rest of a long stream is not recorded).
        if let Some(replay) = replay.filter(|_| !mirrored) {
            replay.release();
        }
        (outcome, attribution)
    }

    /// A host no virtual host serves: refused under REGISTRY_ONLY (502 `NR`), passed through
    /// under ALLOW_ANY.
    async fn unknown_host(
        &self,
        rt: &Runtime,
        conn: &ConnInfo,
        authority: &str,
        mut parts: Parts,
        body: Inbound,
    ) -> (Outcome, Attribution) {
        match rt.config.outbound_traffic_policy {
            OutboundPolicy::RegistryOnly => (
                Outcome::local(StatusCode::BAD_GATEWAY, "host is not in the mesh registry\n", ResponseFlag::NoRoute),
                Attribution::service("BlackHoleCluster"),
            ),
            OutboundPolicy::AllowAny => {
                strip_for_forwarding(&mut parts.headers);
                let body = RequestBody::Direct(body);
                (self.passthrough(authority, conn, parts, body).await, Attribution::service("PassthroughCluster"))
            }
        }
    }
}

/// Joins an upgraded client connection (WebSocket and the like) to the upstream's once both
/// sides have switched, and copies bytes both ways until both close or the connection idles
/// out, like a TCP connection through the proxy.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, peer: SocketAddr) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        debug!(%peer, "upgrade did not complete");
        return;
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = crate::splice::copy_with_idle_timeout(&mut client, &mut upstream).await {
        debug!(%peer, error = %e, "upgraded connection ended");
    }
}

/// The listener's authorization policies for this request; `Some` is the 403 `RBAC` answer.
fn authorize(rt: &Runtime, conn: &ConnInfo, parts: &Parts, host: &str) -> Option<Outcome> {
    let az = rt.authorizer(&conn.listener)?;
    let req = authz::Request {
        principal: conn.identity.as_deref().map(identity::principal),
        source_ip: conn.peer.ip(),
        port: conn.port,
        http: Some(authz::HttpAttrs {
            host,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            headers: &parts.headers,
        }),
    };
    match az.check(&req) {
        authz::Decision::Deny(policy) => {
            debug!(peer = %conn.peer, policy, "denied by authorization policy");
            Some(Outcome::local(StatusCode::FORBIDDEN, "RBAC: access denied", ResponseFlag::Rbac))
        }
        _ => None,
    }
}
