//! An upstream cluster at run time: endpoint choice (load balancing), circuit breaking and
//! outlier detection. Lock-free on the request path except the ejection bookkeeping, which
//! takes a short mutex only when an endpoint crosses its error threshold.

use std::{
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use skein_api::proxy::{Cluster, ConnectionPool, HashKey, LoadBalancer, OutlierDetection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    connect::{ClientTls, MeshConnector, TlsSlot},
    pool::Pool,
};

/// Istio's default connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default base ejection time.
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Istio's default maximum ejection percentage.
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// One endpoint and what the proxy knows about it.
struct Endpoint {
    addr: SocketAddr,
    active: AtomicUsize,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| t > now)
    }
}

/// How a request went, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// Could not connect, or the connection was reset before a response.
    ConnectFailure,
}

/// A cluster at run time.
pub struct Upstream {
    /// Cluster name.
    pub name: String,
    /// This cluster's HTTP connections (TLS per the cluster's policy).
    pub pool: Pool,
    /// TLS towards the endpoints, if any (TCP proxying uses it too); shared with the pool.
    pub tls: Option<Arc<TlsSlot>>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// The cluster's endpoints, then those of each failover level.
    endpoints: Vec<Endpoint>,
    /// Where each priority level ends in `endpoints` (the first level starts at 0).
    level_ends: Vec<usize>,
    lb: LoadBalancer,
    next: AtomicUsize,
    /// Connection slots (`maxConnections`; Istio's default, 2^32-1, when unset), HTTP/1.1 only:
    /// a request holds one while it has a connection, which carries one request at a time.
    connections: Option<Arc<Semaphore>>,
    max_connections: Option<usize>,
    max_pending: Option<usize>,
    pending: AtomicUsize,
    max_requests: Option<usize>,
    requests: AtomicUsize,
    max_retries: Option<usize>,
    retries: AtomicUsize,
    outlier: Option<OutlierDetection>,
    /// Requests that waited in the pending queue (`upstream_rq_pending_total`).
    pending_total: AtomicUsize,
    /// Requests refused because the pending queue was full (`upstream_rq_pending_overflow`).
    pub pending_overflow: AtomicUsize,
    /// Endpoint ejections so far (`outlier_detection.ejections_total`).
    pub ejections: AtomicUsize,
    /// HTTP/1.1 connections each Envoy worker holds (carrying a request or being established),
    /// by worker modulo [`WORKER_SLOTS`].
    worker_connections: [AtomicUsize; WORKER_SLOTS],
}

/// Workers told apart in [`Upstream::admit`]; more share slots (Envoy runs one per CPU).
const WORKER_SLOTS: usize = 64;

/// Istio's value for a circuit breaker the DestinationRule leaves unset (2^32-1): effectively
/// no limit, and what Envoy's admin shows for it.
pub const UNLIMITED: usize = u32::MAX as usize;

/// A cluster's circuit breakers: each limit (`None`: unset) and what is held against it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakers {
    /// `maxConnections`.
    pub max_connections: Option<usize>,
    /// Connections carrying a request or being established now (HTTP/1.1 clusters; `None`
    /// over HTTP/2). May exceed `max_connections` by Envoy's one-per-worker rule.
    pub connections: Option<usize>,
    /// `http1MaxPendingRequests`.
    pub max_pending: Option<usize>,
    /// Requests waiting for a connection now.
    pub pending: usize,
    /// `http2MaxRequests`.
    pub max_requests: Option<usize>,
    /// Requests in flight now.
    pub requests: usize,
    /// `maxRetries`.
    pub max_retries: Option<usize>,
    /// Retries in flight now.
    pub retries: usize,
    /// Requests that have waited for a connection, in all.
    pub pending_total: usize,
    /// Requests refused by a full queue or the request limit, in all.
    pub pending_overflow: usize,
}

/// Holds a cluster's request slot while a request is in flight.
pub struct Admission {
    _conn: Option<OwnedSemaphorePermit>,
    up: Arc<Upstream>,
    pending: Option<Pending>,
    /// The worker slot whose connection count this request adds to.
    worker: Option<usize>,
}

impl Admission {
    /// The request's place in the pending queue, if it has one: it stays pending until it is
    /// bound to an upstream connection, so whoever establishes that connection drops it then.
    pub fn take_pending(&mut self) -> Option<Pending> {
        self.pending.take()
    }
}

/// A request counted in its cluster's pending queue (`http1MaxPendingRequests`) until dropped.
///
/// Envoy counts a request as pending from the moment it finds no ready connection until a
/// connection is ready for it, which includes the time a new connection takes to be
/// established (TCP and mesh TLS). That is what makes Istio's circuit-breaking task trip as
/// often as it does: with `maxRequestsPerConnection: 1` every request waits for a new
/// connection, so a second request arriving meanwhile finds the queue full.
pub struct Pending(Arc<Upstream>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.up.requests.fetch_sub(1, Ordering::Relaxed);
        if let Some(slot) = self.worker {
            self.up.worker_connections[slot].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Holds an endpoint's active-request count (least-request balancing).
pub struct EndpointGuard<'a> {
    ep: &'a Endpoint,
    /// The endpoint's address.
    pub addr: SocketAddr,
}

impl Drop for EndpointGuard<'_> {
    fn drop(&mut self) {
        self.ep.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retry budget slot.
pub struct RetrySlot<'a>(&'a AtomicUsize);

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection slots for `maxConnections` (at least one; a semaphore holds no more than
/// `MAX_PERMITS`, which only a 32-bit target could reach).
fn slots(max_connections: Option<usize>) -> usize {
    max_connections.unwrap_or(UNLIMITED).clamp(1, UNLIMITED.min(Semaphore::MAX_PERMITS))
}

fn limit(v: Option<u32>) -> Option<usize> {
    v.map(|v| v as usize)
}

/// What a consistent hash is taken over, extracted from the request by the caller.
pub struct HashInput<'a> {
    /// Request headers.
    pub headers: &'a hyper::HeaderMap,
    /// Client address.
    pub source: Option<SocketAddr>,
}

impl Upstream {
    /// Builds the run-time state of `c`; `tls` carries the cluster's client TLS, if any.
    pub fn new(c: &Cluster, tls: Option<ClientTls>) -> Self {
        let connect_timeout = c.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let pool = c.connection_pool.clone().unwrap_or_default();
        let ConnectionPool {
            max_connections,
            http1_max_pending_requests,
            http2_max_requests,
            max_retries,
            max_requests_per_connection,
        } = pool;
        let tls = tls.map(TlsSlot::new);
        Self {
            name: c.name.clone(),
            pool: Pool::new(MeshConnector { tls: tls.clone(), connect_timeout }, c.http2, max_requests_per_connection),
            tls,
            connect_timeout,
            level_ends: std::iter::once(&c.endpoints)
                .chain(&c.failover)
                .scan(0, |end, level| {
                    *end += level.len();
                    Some(*end)
                })
                .collect(),
            endpoints: c
                .endpoints
                .iter()
                .chain(c.failover.iter().flatten())
                .map(|&addr| Endpoint {
                    addr,
                    active: AtomicUsize::new(0),
                    consecutive_5xx: AtomicU32::new(0),
                    consecutive_gateway: AtomicU32::new(0),
                    ejections: AtomicU32::new(0),
                    ejected_until: Mutex::new(None),
                })
                .collect(),
            lb: c.load_balancer.clone(),
            next: AtomicUsize::new(0),
            // Over HTTP/2 one connection per endpoint carries every request (bounded by
            // `http2MaxRequests`), so `maxConnections` cannot bind a request count there. Without
            // a limit the slots are Istio's default so that the admin can report them in use.
            connections: (!c.http2).then(|| Arc::new(Semaphore::new(slots(limit(max_connections))))),
            max_connections: limit(max_connections),
            max_pending: limit(http1_max_pending_requests),
            pending: AtomicUsize::new(0),
            max_requests: limit(http2_max_requests),
            requests: AtomicUsize::new(0),
            max_retries: limit(max_retries),
            retries: AtomicUsize::new(0),
            outlier: c.outlier_detection.clone(),
            pending_total: AtomicUsize::new(0),
            pending_overflow: AtomicUsize::new(0),
            ejections: AtomicUsize::new(0),
            worker_connections: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// The Istio service name in the cluster name (`outbound|80|v1|reviews` → `reviews`).
    pub fn service(&self) -> &str {
        self.name.rsplit('|').next().unwrap_or(&self.name)
    }

    /// Admits a request of Envoy worker `worker` (the downstream connection's) under the
    /// circuit breakers, as Envoy's connection pool does. A request that finds a ready
    /// connection goes straight on. Any other waits, counted as pending (until [`Pending`] is
    /// dropped, once it has a connection), for a connection slot (`maxConnections`) and then
    /// for its connection; if the pending queue is already full it is refused (`None`: answer
    /// 503, flag `UO`).
    ///
    /// Envoy keeps a connection pool per worker, and a worker whose pool holds no connection
    /// to the host opens one even when `maxConnections` is reached ("always create one, to
    /// prevent pending streams being queued to this upstream with no way to be processed"), so
    /// with Istio's two sidecar workers `maxConnections: 1` allows a connection per worker.
    /// Skein keeps one pool, and counts each worker's connections to apply the same rule.
    pub async fn admit(self: &Arc<Self>, worker: usize) -> Option<Admission> {
        let prev = self.requests.fetch_add(1, Ordering::Relaxed);
        let admission = |conn, pending, worker| Admission { _conn: conn, up: self.clone(), pending, worker };
        if self.max_requests.is_some_and(|m| prev >= m) {
            drop(admission(None, None, None));
            self.pending_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let slot = worker % WORKER_SLOTS;
        let held = &self.worker_connections[slot];
        // A ready connection takes the request at once. Envoy keeps ready connections per host
        // and this looks at the cluster's; with one endpoint, as in Istio's task, they agree.
        if self.pool.has_ready() {
            match &self.connections {
                None => return Some(admission(None, None, None)),
                Some(sem) => {
                    if let Ok(p) = sem.clone().try_acquire_owned() {
                        held.fetch_add(1, Ordering::Relaxed);
                        return Some(admission(Some(p), None, Some(slot)));
                    }
                }
            }
        }
        // Envoy's default pending limit is effectively unbounded (Istio's is 2^32-1).
        let queued = self.pending.fetch_add(1, Ordering::Relaxed);
        let pending = Pending(self.clone());
        if self.max_pending.is_some_and(|m| queued >= m) {
            drop((pending, admission(None, None, None)));
            self.pending_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.pending_total.fetch_add(1, Ordering::Relaxed);
        let Some(sem) = &self.connections else { return Some(admission(None, Some(pending), None)) };
        let permit = match sem.clone().try_acquire_owned() {
            Ok(p) => {
                held.fetch_add(1, Ordering::Relaxed);
                Some(p)
            }
            // This worker holds no connection: it opens one over the limit (claimed atomically,
            // so two of its requests cannot both take the exemption).
            Err(_) if held.compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed).is_ok() => None,
            Err(_) => {
                let p = sem.clone().acquire_owned().await.ok()?;
                held.fetch_add(1, Ordering::Relaxed);
                Some(p)
            }
        };
        Some(admission(permit, Some(pending), Some(slot)))
    }

    /// The circuit breakers' limits and what is held against them now (Envoy's
    /// `circuit_breakers.default.*` and `default_priority::max_*`).
    pub fn breakers(&self) -> Breakers {
        Breakers {
            max_connections: self.max_connections,
            connections: self
                .connections
                .as_ref()
                .map(|_| self.worker_connections.iter().map(|c| c.load(Ordering::Relaxed)).sum()),
            max_pending: self.max_pending,
            pending: self.pending.load(Ordering::Relaxed),
            max_requests: self.max_requests,
            requests: self.requests.load(Ordering::Relaxed),
            max_retries: self.max_retries,
            retries: self.retries.load(Ordering::Relaxed),
            pending_total: self.pending_total.load(Ordering::Relaxed),
            pending_overflow: self.pending_overflow.load(Ordering::Relaxed),
        }
    }

    /// Each endpoint: its address, requests in flight to it, and whether outlier detection
    /// has ejected it now (Envoy's `/clusters` `rq_active` and `health_flags`).
    pub fn endpoint_states(&self) -> Vec<(SocketAddr, usize, bool)> {
        let now = Instant::now();
        self.endpoints.iter().map(|e| (e.addr, e.active.load(Ordering::Relaxed), e.ejected(now))).collect()
    }

    /// A retry slot, if `maxRetries` allows another concurrent retry.
    pub fn retry_slot(&self) -> Option<RetrySlot<'_>> {
        let prev = self.retries.fetch_add(1, Ordering::Relaxed);
        let slot = RetrySlot(&self.retries);
        if self.max_retries.is_some_and(|m| prev >= m) {
            drop(slot);
            return None;
        }
        Some(slot)
    }

    /// Picks an endpoint by the cluster's load-balancing policy, skipping ejected endpoints.
    /// Below the panic threshold (`min_health_percent`) every endpoint is a candidate again, as
    /// in Envoy; with no threshold (Istio's default) and every endpoint ejected there is none.
    /// Failover endpoints are candidates only while no first-priority endpoint is (none, or
    /// all ejected): Envoy's priority levels, two of them.
    pub fn pick(&self, input: &HashInput<'_>) -> Option<EndpointGuard<'_>> {
        let mut levels = self.levels();
        let ep = if self.outlier.is_none() {
            // Without outlier detection nothing is ever ejected: choose among the first listed
            // level's endpoints without building a candidate list (this runs on every request).
            let level = levels.find(|l| !l.is_empty()).unwrap_or_default();
            self.choose(level.len(), |i| &level[i], input)?
        } else {
            let now = Instant::now();
            // The first level with an endpoint not ejected; with none anywhere, the first
            // listed level (where the panic threshold decides).
            let level = levels
                .clone()
                .find(|l| l.iter().any(|e| !e.ejected(now)))
                .or_else(|| levels.find(|l| !l.is_empty()))
                .unwrap_or_default();
            let healthy: Vec<&Endpoint> = level.iter().filter(|e| !e.ejected(now)).collect();
            let threshold = self.outlier.as_ref().and_then(|o| o.min_health_percent).unwrap_or(0) as usize;
            let panic = healthy.len() * 100 < level.len() * threshold;
            let pool: Vec<&Endpoint> = if panic { level.iter().collect() } else { healthy };
            self.choose(pool.len(), |i| pool[i], input)?
        };
        ep.active.fetch_add(1, Ordering::Relaxed);
        Some(EndpointGuard { ep, addr: ep.addr })
    }

    /// The endpoints of each priority level, highest first.
    fn levels(&self) -> impl Iterator<Item = &[Endpoint]> + Clone {
        let starts = std::iter::once(0).chain(self.level_ends.iter().copied());
        starts.zip(self.level_ends.iter().copied()).map(|(a, b)| &self.endpoints[a..b])
    }

    /// The load balancer's choice among `len` candidates (`at(i)` is the i-th).
    fn choose<'a>(
        &self,
        len: usize,
        at: impl Fn(usize) -> &'a Endpoint,
        input: &HashInput<'_>,
    ) -> Option<&'a Endpoint> {
        if len == 0 {
            return None;
        }
        Some(match &self.lb {
            LoadBalancer::RoundRobin => at(self.next.fetch_add(1, Ordering::Relaxed) % len),
            LoadBalancer::Random => at(fastrand::usize(..len)),
            LoadBalancer::LeastRequest => {
                // Power of two choices: near-optimal spread without scanning every endpoint.
                let (a, b) = (at(fastrand::usize(..len)), at(fastrand::usize(..len)));
                if b.active.load(Ordering::Relaxed) < a.active.load(Ordering::Relaxed) { b } else { a }
            }
            LoadBalancer::ConsistentHash(key) => match hash_key(key, input) {
                // Rendezvous hashing: each endpoint scores the key; highest wins. Removing an
                // endpoint moves only the keys it owned.
                Some(k) => (0..len).map(&at).max_by_key(|e| hash_of(&(k, e.addr))).unwrap_or_else(|| at(0)),
                None => at(self.next.fetch_add(1, Ordering::Relaxed) % len),
            },
        })
    }

    /// Outlier ejections in force now and so far, when the cluster has outlier detection
    /// (`envoy_cluster_outlier_detection_ejections_active` / `_enforced_total`).
    pub fn ejection_stats(&self) -> Option<(usize, usize)> {
        self.outlier.as_ref()?;
        let now = Instant::now();
        let active = self.endpoints.iter().filter(|e| e.ejected(now)).count();
        Some((active, self.ejections.load(Ordering::Relaxed)))
    }

    /// Records how a request to `addr` went and ejects the endpoint if it crossed a threshold.
    pub fn report(&self, addr: SocketAddr, outcome: Outcome) {
        let Some(od) = &self.outlier else { return };
        let Some(ep) = self.endpoints.iter().find(|e| e.addr == addr) else { return };
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::ConnectFailure => (true, true),
        };
        let bump = |c: &AtomicU32, bad: bool| {
            if bad {
                c.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                c.store(0, Ordering::Relaxed);
                0
            }
        };
        let n5 = bump(&ep.consecutive_5xx, is_5xx);
        let ngw = bump(&ep.consecutive_gateway, is_gateway);
        let over = |threshold: Option<u32>, n: u32| threshold.is_some_and(|t| t > 0 && n >= t);
        if !(over(od.consecutive_5xx_errors, n5) || over(od.consecutive_gateway_errors, ngw)) {
            return;
        }
        let now = Instant::now();
        let max_pct = od.max_ejection_percent.unwrap_or(DEFAULT_MAX_EJECTION_PERCENT) as usize;
        let ejected = self.endpoints.iter().filter(|e| e.ejected(now)).count();
        // Envoy always allows ejecting at least one host, whatever the percentage.
        let allowed = (self.endpoints.len() * max_pct / 100).max(1);
        if ejected >= allowed || ep.ejected(now) {
            return;
        }
        let times = ep.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let base = od.base_ejection_time.unwrap_or(DEFAULT_BASE_EJECTION);
        *ep.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + base * times);
        ep.consecutive_5xx.store(0, Ordering::Relaxed);
        ep.consecutive_gateway.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %self.name, endpoint = %addr, "outlier ejected");
    }
}

fn hash_of<T: Hash>(v: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

fn hash_key(key: &HashKey, input: &HashInput<'_>) -> Option<u64> {
    match key {
        HashKey::HttpHeaderName(name) => input.headers.get(name.as_str()).map(|v| hash_of(&v.as_bytes())),
        HashKey::HttpCookie(name) => input
            .headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_of(&v)),
        HashKey::UseSourceIp => input.source.map(|s| hash_of(&s.ip())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Arc<Upstream> {
        let c: Cluster = serde_yaml::from_str(yaml).unwrap();
        Arc::new(Upstream::new(&c, None))
    }

    fn none() -> HashInput<'static> {
        static EMPTY: std::sync::OnceLock<hyper::HeaderMap> = std::sync::OnceLock::new();
        HashInput { headers: EMPTY.get_or_init(hyper::HeaderMap::new), source: None }
    }

    const EPS: &str = "endpoints: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3', '127.0.0.1:4']";

    #[test]
    fn round_robin_visits_each_endpoint_in_turn() {
        let up = cluster(&format!("{{name: c, {EPS}}}"));
        let ports: Vec<u16> = (0..8).map(|_| up.pick(&none()).unwrap().addr.port()).collect();
        assert_eq!(ports, [1, 2, 3, 4, 1, 2, 3, 4]);
    }

    #[test]
    fn least_request_avoids_a_busy_endpoint() {
        let up = cluster("{name: c, loadBalancer: {simple: LEAST_REQUEST}, endpoints: ['127.0.0.1:1', '127.0.0.1:2']}");
        let busy: Vec<_> = (0..50).map(|_| up.pick(&none()).unwrap()).filter(|g| g.addr.port() == 1).take(1).collect();
        assert_eq!(busy.len(), 1, "port 1 picked at least once");
        // Port 1 now has one request in flight: whenever both candidates differ, 2 wins, so port
        // 1 is picked only when both draws are 1: p = 1/4 (a random picker: 1/2). Binomial(400):
        // mean 100, sd 8.7 vs mean 200, sd 10; the cut at 150 is over 5 sd from both.
        let picks: Vec<u16> = (0..400).map(|_| up.pick(&none()).unwrap().addr.port()).collect();
        let ones = picks.iter().filter(|p| **p == 1).count();
        assert!((50..150).contains(&ones), "busy endpoint got {ones} of 400");
    }

    #[test]
    fn consistent_hash_on_a_header_is_sticky_and_spreads_keys() {
        let up = cluster(&format!("{{name: c, loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}, {EPS}}}"));
        let pick = |user: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert("x-user", user.parse().unwrap());
            up.pick(&HashInput { headers: &h, source: None }).unwrap().addr.port()
        };
        let first = pick("alice");
        assert!((0..20).all(|_| pick("alice") == first), "same key, same endpoint");
        let distinct: std::collections::BTreeSet<u16> = (0..40).map(|i| pick(&format!("user{i}"))).collect();
        assert!(distinct.len() >= 3, "keys spread over endpoints: {distinct:?}");
    }

    #[test]
    fn consistent_hash_on_source_ip_and_cookie() {
        let up = cluster(&format!("{{name: c, loadBalancer: {{consistentHash: {{useSourceIp: true}}}}, {EPS}}}"));
        let h = hyper::HeaderMap::new();
        let from = |ip: &str| {
            up.pick(&HashInput { headers: &h, source: Some(format!("{ip}:5000").parse().unwrap()) })
                .unwrap()
                .addr
                .port()
        };
        assert_eq!(from("127.0.0.9"), from("127.0.0.9"));
        // The source port does not count (every new connection has another one); the IP does.
        let at =
            |addr: &str| up.pick(&HashInput { headers: &h, source: Some(addr.parse().unwrap()) }).unwrap().addr.port();
        let first = at("127.0.0.9:5000");
        assert!((5001..5050).all(|port| at(&format!("127.0.0.9:{port}")) == first), "source port changed the endpoint");
        let ips: std::collections::BTreeSet<u16> = (1..60).map(|i| at(&format!("127.0.1.{i}:5000"))).collect();
        assert!(ips.len() >= 3, "source IPs spread over endpoints: {ips:?}");
        let up = cluster(&format!(
            "{{name: c, loadBalancer: {{consistentHash: {{httpCookie: {{name: session}}}}}}, {EPS}}}"
        ));
        let with_cookie = |cookie: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert("cookie", cookie.parse().unwrap());
            up.pick(&HashInput { headers: &h, source: None }).unwrap().addr.port()
        };
        let p = with_cookie("a=1; session=xyz");
        assert!((0..10).all(|_| with_cookie("a=1; session=xyz") == p));
        // Only the named cookie counts: other cookies may change freely.
        assert!((0..30).all(|i| with_cookie(&format!("a={i}; session=xyz; b={i}")) == p), "another cookie moved it");
        let sessions: std::collections::BTreeSet<u16> =
            (0..60).map(|i| with_cookie(&format!("session=s{i}"))).collect();
        assert!(sessions.len() >= 3, "sessions spread over endpoints: {sessions:?}");
    }

    #[test]
    fn consecutive_5xx_eject_an_endpoint_within_the_percentage_cap() {
        let up = cluster(&format!(
            "{{name: c, {EPS}, outlierDetection: {{consecutive5xxErrors: 3, baseEjectionTime: 60s, maxEjectionPercent: 50}}}}"
        ));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        up.report(a, Outcome::Status(500));
        up.report(a, Outcome::Status(500));
        up.report(a, Outcome::Status(200)); // a success resets the count
        up.report(a, Outcome::Status(500));
        up.report(a, Outcome::Status(503));
        assert_eq!(up.ejections.load(Ordering::Relaxed), 0);
        up.report(a, Outcome::Status(500));
        assert_eq!(up.ejections.load(Ordering::Relaxed), 1);
        assert!((0..12).all(|_| up.pick(&none()).unwrap().addr != a), "ejected endpoint not picked");
        // 50% of 4 = 2 may be ejected; a third is not.
        for port in [2, 3] {
            let e: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            for _ in 0..3 {
                up.report(e, Outcome::ConnectFailure);
            }
        }
        assert_eq!(up.ejections.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn failover_levels_are_used_only_while_no_endpoint_of_a_higher_priority_is_available() {
        let ports = |up: &Upstream| -> std::collections::BTreeSet<u16> {
            (0..12).map(|_| up.pick(&none()).unwrap().addr.port()).collect()
        };
        // Without outlier detection: the first priority always, the failover only without it.
        let up = cluster("{name: c, endpoints: ['127.0.0.1:1', '127.0.0.1:2'], failover: [['127.0.0.1:9']]}");
        assert_eq!(ports(&up), [1, 2].into());
        let up = cluster("{name: c, endpoints: [], failover: [['127.0.0.1:9']]}");
        assert_eq!(ports(&up), [9].into());
        // With it: the local endpoint ejected moves traffic to the failover, and back once the
        // ejection ends (the admiral#134 case: failover that actually happens).
        let up = cluster(
            "{name: c, endpoints: ['127.0.0.1:1'], failover: [['127.0.0.1:9']], outlierDetection: {consecutiveGatewayErrors: 2, baseEjectionTime: 200ms, maxEjectionPercent: 100}}",
        );
        assert_eq!(ports(&up), [1].into());
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        up.report(local, Outcome::ConnectFailure);
        assert_eq!(ports(&up), [1].into(), "one failure is not an ejection");
        up.report(local, Outcome::ConnectFailure);
        // Ejected for 200 ms: the failover answers meanwhile, the local endpoint after.
        assert_eq!(ports(&up), [9].into());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(ports(&up), [1].into());
    }

    #[test]
    fn locality_failover_walks_down_every_level_in_order_and_back() {
        let ports = |up: &Upstream| -> std::collections::BTreeSet<u16> {
            (0..12).map(|_| up.pick(&none()).unwrap().addr.port()).collect()
        };
        // Same zone, same region, another region (Istio's priorities 0, 2, 3).
        let up = cluster(
            "{name: c, endpoints: ['127.0.0.1:1'], failover: [['127.0.0.1:2', '127.0.0.1:3'], ['127.0.0.1:4']], outlierDetection: {consecutiveGatewayErrors: 1, baseEjectionTime: 300ms, maxEjectionPercent: 100}}",
        );
        let fail = |port: u16| up.report(SocketAddr::from(([127, 0, 0, 1], port)), Outcome::ConnectFailure);
        assert_eq!(ports(&up), [1].into());
        fail(1);
        assert_eq!(ports(&up), [2, 3].into(), "the next level, all of it");
        fail(2);
        assert_eq!(ports(&up), [3].into(), "what is left of the second level before the third");
        fail(3);
        assert_eq!(ports(&up), [4].into());
        fail(4);
        // Nothing left anywhere: the first level, where Istio's panic threshold (0) gives none.
        assert!(up.pick(&none()).is_none(), "no healthy upstream");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(ports(&up), [1].into(), "back to the nearest once its ejection ends");
    }

    #[test]
    fn with_its_only_endpoint_ejected_a_cluster_has_no_healthy_upstream_unless_below_the_panic_threshold() {
        // Istio's default: minHealthPercent 0, Envoy's panic mode off: no endpoint at all.
        let one = "endpoints: ['127.0.0.1:1']";
        let up = cluster(&format!(
            "{{name: c, {one}, outlierDetection: {{consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100, minHealthPercent: 0}}}}"
        ));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(up.pick(&none()).is_some());
        up.report(a, Outcome::Status(503));
        assert_eq!(up.ejections.load(Ordering::Relaxed), 1);
        assert!(up.pick(&none()).is_none(), "the ejected endpoint is not used: 503 UH");
        // minHealthPercent 50: 0 % healthy is below it, so Envoy's panic mode uses every endpoint.
        let up = cluster(&format!(
            "{{name: c, {EPS}, outlierDetection: {{consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100, minHealthPercent: 50}}}}"
        ));
        for port in 1..=2 {
            up.report(format!("127.0.0.1:{port}").parse().unwrap(), Outcome::Status(500));
        }
        // 2 of 4 healthy = 50 %: not below the threshold, only the healthy ones are picked.
        assert!((0..12).all(|_| up.pick(&none()).unwrap().addr.port() > 2));
        up.report("127.0.0.1:3".parse().unwrap(), Outcome::Status(500));
        // 1 of 4 = 25 % < 50 %: panic, all four again.
        let seen: std::collections::BTreeSet<u16> = (0..12).map(|_| up.pick(&none()).unwrap().addr.port()).collect();
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn consecutive_gateway_errors_eject_on_502_to_504_only() {
        let up = cluster(&format!(
            "{{name: c, {EPS}, outlierDetection: {{consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, baseEjectionTime: 60s}}}}"
        ));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..5 {
            up.report(a, Outcome::Status(500)); // a 5xx, but not a gateway error
        }
        assert_eq!(up.ejections.load(Ordering::Relaxed), 0, "500s do not count (consecutive5xxErrors is off)");
        up.report(a, Outcome::Status(502));
        up.report(a, Outcome::Status(500)); // breaks the run of gateway errors
        up.report(a, Outcome::Status(503));
        assert_eq!(up.ejections.load(Ordering::Relaxed), 0, "not consecutive");
        up.report(a, Outcome::Status(504));
        assert_eq!(up.ejections.load(Ordering::Relaxed), 1, "503 then 504: two gateway errors in a row");
        assert!((0..12).all(|_| up.pick(&none()).unwrap().addr != a));
    }

    #[tokio::test]
    async fn http2_max_requests_bounds_concurrent_requests_and_frees_on_completion() {
        let up = cluster("{name: c, http2: true, endpoints: ['127.0.0.1:1'], connectionPool: {http2MaxRequests: 2}}");
        let (first, second) = (up.admit(0).await.expect("first"), up.admit(0).await.expect("second"));
        assert!(up.admit(0).await.is_none(), "a third concurrent request overflows");
        assert_eq!(up.pending_overflow.load(Ordering::Relaxed), 1);
        drop(first);
        let third = up.admit(0).await;
        assert!(third.is_some(), "a finished request frees its slot");
        drop((second, third));
    }

    #[tokio::test(start_paused = true)]
    async fn max_connections_one_and_one_pending_overflows_the_third_request() {
        let up = cluster(
            "{name: c, endpoints: ['127.0.0.1:1'], connectionPool: {maxConnections: 1, http1MaxPendingRequests: 1}}",
        );
        let mut first = up.admit(0).await.expect("first admitted");
        drop(first.take_pending()); // its connection is established
        let up2 = up.clone();
        let second = tokio::spawn(async move { up2.admit(0).await.is_some() });
        tokio::time::sleep(Duration::from_millis(50)).await; // second is now queued
        assert!(up.admit(0).await.is_none(), "third overflows");
        assert_eq!(up.pending_overflow.load(Ordering::Relaxed), 1);
        drop(first);
        assert!(second.await.unwrap(), "queued request proceeds when a slot frees");
    }

    #[tokio::test]
    async fn a_request_waiting_for_its_new_connection_is_pending() {
        // Envoy's rule, which Istio's circuit-breaking task shows: the first request holds the
        // only connection slot but is still pending while that connection is established, so
        // a second request finds the queue (1) full and overflows at once.
        let up = cluster(
            "{name: c, endpoints: ['127.0.0.1:1'], connectionPool: {maxConnections: 1, http1MaxPendingRequests: 1}}",
        );
        let mut first = up.admit(0).await.expect("first admitted");
        assert!(up.admit(0).await.is_none(), "second overflows while the first connects");
        let pending = first.take_pending().expect("the first had no ready connection");
        drop(pending);
        let up2 = up.clone();
        let second = tokio::spawn(async move { up2.admit(0).await.map(|mut a| a.take_pending().is_some()) });
        tokio::task::yield_now().await;
        drop(first); // the slot frees; the second still waits for its own connection
        assert_eq!(second.await.unwrap(), Some(true));
        assert_eq!(up.pending_overflow.load(Ordering::Relaxed), 1);
        assert_eq!(up.pending.load(Ordering::Relaxed), 0, "every pending place was given back");
    }

    #[tokio::test]
    async fn without_limits_nothing_overflows_and_nothing_stays_pending() {
        let up = cluster("{name: c, endpoints: ['127.0.0.1:1']}");
        let admitted: Vec<_> = futures::future::join_all((0..100).map(|_| up.admit(0))).await;
        assert!(admitted.iter().all(Option::is_some));
        drop(admitted);
        assert_eq!(up.pending.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_worker_without_a_connection_opens_one_over_max_connections_as_in_envoy() {
        let up = cluster(
            "{name: c, endpoints: ['127.0.0.1:1'], connectionPool: {maxConnections: 1, http1MaxPendingRequests: 1}}",
        );
        // Worker 0 takes the one connection slot; its request is connected.
        let mut a = up.admit(0).await.expect("worker 0");
        drop(a.take_pending());
        // Worker 1 holds no connection: Envoy's pool for it opens one anyway.
        let mut b = tokio::time::timeout(Duration::from_secs(1), up.admit(1))
            .await
            .expect("worker 1 does not queue behind worker 0")
            .expect("admitted");
        assert_eq!(up.breakers().connections, Some(2));
        // Worker 1's request is pending until its connection is up: the queue is full.
        assert!(up.admit(0).await.is_none(), "overflow while worker 1 connects");
        drop(b.take_pending());
        // Worker 0 already has a connection: its next request waits for the slot, as before.
        let up2 = up.clone();
        let waiting = tokio::spawn(async move { up2.admit(0).await.is_some() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "worker 0 is held to maxConnections");
        drop(a);
        assert!(waiting.await.unwrap(), "admitted once worker 0's connection is done");
        drop(b);
        assert_eq!(up.breakers().connections, Some(0));
    }

    #[tokio::test]
    async fn breakers_report_the_limits_and_what_is_held_against_them() {
        let up = cluster(
            "{name: c, endpoints: ['127.0.0.1:1'], connectionPool: {maxConnections: 1, http1MaxPendingRequests: 1}}",
        );
        let idle = up.breakers();
        assert_eq!(
            (idle.max_connections, idle.connections, idle.max_pending, idle.pending, idle.max_requests),
            (Some(1), Some(0), Some(1), 0, None)
        );
        // No connection is open: the request holds the one slot and waits, pending.
        let mut first = up.admit(0).await.unwrap();
        let b = up.breakers();
        assert_eq!((b.connections, b.pending, b.requests, b.pending_total), (Some(1), 1, 1, 1));
        assert!(up.admit(0).await.is_none(), "the queue is full");
        // Its connection is up: no longer pending, still holding the slot.
        drop(first.take_pending());
        let b = up.breakers();
        assert_eq!((b.connections, b.pending, b.pending_total, b.pending_overflow), (Some(1), 0, 1, 1));
        drop(first);
        assert_eq!((up.breakers().connections, up.breakers().requests), (Some(0), 0));
        // HTTP/2 has no connection slots to report.
        assert_eq!(cluster("{name: c, http2: true}").breakers().connections, None);
    }

    #[test]
    fn retry_budget_caps_concurrent_retries() {
        let up = cluster("{name: c, connectionPool: {maxRetries: 1}}");
        let slot = up.retry_slot();
        assert!(slot.is_some());
        assert!(up.retry_slot().is_none());
        drop(slot);
        assert!(up.retry_slot().is_some());
    }
}
