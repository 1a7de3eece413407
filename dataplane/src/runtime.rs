//! A validated `ProxyConfig` compiled for the request path: regexes built once, domains
//! pre-classified, clusters with their round-robin state. Immutable once built; a new config
//! builds a new `Runtime` and is swapped in whole (see `store`).

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use hyper::{HeaderMap, Method};
use regex::Regex;
use rustls::pki_types::ServerName;
use skein_api::proxy::{
    ClientTlsMode, Cluster, IdentityFiles, InvalidConfig, ProxyConfig, Route, StringMatch, compile_regex,
};

use crate::{authz::Authorizer, connect::ClientTls, identity::Identity, upstream::Upstream};

fn identity_err(e: crate::identity::IdentityError) -> InvalidConfig {
    InvalidConfig { path: "identity".into(), reason: e.to_string() }
}

/// Reads the identity files. Failure is a config error: the last good config stays.
fn load_identity(files: &IdentityFiles) -> Result<Identity, InvalidConfig> {
    let read = |field: &str, p: &std::path::Path| crate::gateway::read(format!("identity.{field}"), p);
    let chain = read("certChain", &files.cert_chain)?;
    let key = read("privateKey", &files.private_key)?;
    let root = read("rootCert", &files.root_cert)?;
    Identity::from_pem(&chain, &key, &root).map_err(identity_err)
}

/// Istio's SNI for a cluster: `outbound|9080|v1|reviews...` → `outbound_.9080_.v1_.reviews...`.
pub fn istio_sni(cluster: &str) -> Option<String> {
    let mut parts = cluster.split('|');
    let (dir, port, subset, host) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(format!("{dir}_.{port}_.{subset}_.{host}"))
}

fn client_tls(c: &Cluster, identity: Option<&Identity>) -> Result<Option<ClientTls>, InvalidConfig> {
    let Some(tls) = c.tls.as_ref().filter(|t| t.mode != ClientTlsMode::Disable) else { return Ok(None) };
    let at = |f: &str| format!("clusters[{}].tls.{f}", c.name);
    let identity =
        identity.ok_or_else(|| InvalidConfig { path: "identity".into(), reason: "required for TLS".into() })?;
    let config = match tls.mode {
        ClientTlsMode::IstioMutual => identity.client_config(tls.subject_alt_names.clone()),
        _ => identity.simple_client_config(),
    }
    .map_err(identity_err)?;
    let sni = tls.sni.clone().or_else(|| istio_sni(&c.name)).unwrap_or_else(|| c.name.clone());
    let server_name = ServerName::try_from(sni.clone())
        .map_err(|_| InvalidConfig { path: at("sni"), reason: format!("{sni:?} is not a valid server name") })?;
    // ALPN must name the protocol the pool will speak over the connection.
    let config = if c.http2 {
        let mut cfg = (*config).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    } else {
        config
    };
    Ok(Some(ClientTls { config, server_name }))
}

/// The compiled configuration.
pub struct Runtime {
    /// The configuration as given (config dump, version).
    pub config: ProxyConfig,
    /// This workload's identity, when configured.
    pub identity: Option<Identity>,
    /// TLS server config requiring a client certificate (STRICT).
    pub strict_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS server config verifying a client certificate when sent (PERMISSIVE).
    pub permissive_tls: Option<Arc<rustls::ServerConfig>>,
    vhosts: Vec<VirtualHost>,
    /// Virtual host index by domain, so a request finds its host in O(1) however large the
    /// mesh: exact names, then wildcard suffixes longest first, then `*` (Envoy's order).
    by_domain: DomainIndex,
    authorizers: HashMap<String, Authorizer>,
    clusters: HashMap<String, Arc<Upstream>>,
    /// Clusters by the service addresses captured TCP is matched on.
    by_service_address: HashMap<SocketAddr, Arc<Upstream>>,
    /// TLS servers of gateway listeners, by listener name.
    gateway_tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// Hosts the DNS proxy answers for (shared with the previous config when unchanged).
    pub names: Arc<crate::dns::NameTable>,
}

struct VirtualHost {
    routes: Vec<CompiledRoute>,
}

/// Where each domain's virtual host is. The first virtual host naming a domain wins.
#[derive(Default)]
struct DomainIndex {
    exact: HashMap<String, usize>,
    /// `(".example.com", index)`, longest suffix first.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl DomainIndex {
    fn add(&mut self, domain: Domain, index: usize) {
        match domain {
            Domain::Exact(d) => {
                self.exact.entry(d).or_insert(index);
            }
            Domain::Suffix(s) => self.suffixes.push((s, index)),
            Domain::Any => {
                self.any.get_or_insert(index);
            }
        }
    }

    fn finish(&mut self) {
        // Stable: among equal lengths the earlier virtual host stays first.
        self.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    }

    fn find(&self, host: &str) -> Option<usize> {
        self.exact
            .get(host)
            .copied()
            .or_else(|| self.suffixes.iter().find(|(s, _)| host.ends_with(s.as_str())).map(|(_, i)| *i))
            .or(self.any)
    }
}

enum Domain {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
    Any,
}

/// A route with compiled matchers.
pub struct CompiledRoute {
    /// The route as configured.
    pub route: Route,
    matches: Vec<CompiledMatch>,
}

struct CompiledMatch {
    uri: Option<Matcher>,
    method: Option<Matcher>,
    headers: Vec<(String, Matcher)>,
    port: Option<u16>,
}

enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    fn compile(m: &StringMatch, path: &str) -> Result<Self, InvalidConfig> {
        Ok(match m {
            StringMatch::Exact(v) => Matcher::Exact(v.clone()),
            StringMatch::Prefix(v) => Matcher::Prefix(v.clone()),
            StringMatch::Regex(r) => {
                Matcher::Regex(compile_regex(r).map_err(|e| InvalidConfig {
                    path: path.to_string(),
                    reason: format!("invalid regex {r:?}: {e}"),
                })?)
            }
        })
    }

    fn is_match(&self, v: &str) -> bool {
        match self {
            Matcher::Exact(e) => v == e,
            Matcher::Prefix(p) => v.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(v),
        }
    }
}

/// The parts of a request routing looks at.
pub struct RequestView<'a> {
    /// Path without the query.
    pub path: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Port of the listener it arrived on.
    pub port: u16,
}

impl CompiledRoute {
    /// `None` if the request does not match; otherwise the uri prefix the matching entry used,
    /// if any (rewrite replaces exactly that part, as Istio does).
    fn match_request(&self, req: &RequestView<'_>) -> Option<Option<&str>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(req)).map(|m| match &m.uri {
            Some(Matcher::Prefix(p)) => Some(p.as_str()),
            _ => None,
        })
    }
}

impl CompiledMatch {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        self.port.is_none_or(|p| p == req.port)
            && self.uri.as_ref().is_none_or(|m| m.is_match(req.path))
            && self.method.as_ref().is_none_or(|m| m.is_match(req.method.as_str()))
            && self.headers.iter().all(|(name, m)| {
                req.headers.get(name.as_str()).and_then(|v| v.to_str().ok()).is_some_and(|v| m.is_match(v))
            })
    }
}

/// Result of route selection.
pub enum Routed<'a> {
    /// No virtual host serves the host: not in the registry.
    UnknownHost,
    /// The host is known but no rule matches the request.
    NoRoute,
    /// The matching rule, and the uri prefix it matched on (for rewrites).
    Route(&'a CompiledRoute, Option<&'a str>),
}

impl Runtime {
    /// Validates and compiles `config`.
    pub fn compile(config: ProxyConfig) -> Result<Self, InvalidConfig> {
        Self::compile_from(config, None)
    }

    /// Validates and compiles `config`, keeping from `prev` every cluster whose settings are
    /// unchanged and whose TLS identity is the same or renewed: its connection pool,
    /// load-balancing position, outlier ejections and circuit-breaker counters carry over (an
    /// endpoint change elsewhere in the mesh or a certificate renewal does not reset them).
    pub fn compile_from(config: ProxyConfig, prev: Option<&Runtime>) -> Result<Self, InvalidConfig> {
        config.validate()?;
        let mut vhosts = Vec::with_capacity(config.virtual_hosts.len());
        let mut by_domain = DomainIndex::default();
        for (index, vh) in config.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                by_domain.add(
                    match d.as_str() {
                        "*" => Domain::Any,
                        d if d.starts_with("*.") => Domain::Suffix(d[1..].to_ascii_lowercase()),
                        d => Domain::Exact(d.to_ascii_lowercase()),
                    },
                    index,
                );
            }
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (i, r) in vh.routes.iter().enumerate() {
                let at = format!("virtualHosts[{}].routes[{i}]", vh.name);
                let mut matches = Vec::new();
                for (j, m) in r.matches.iter().enumerate() {
                    let at = format!("{at}.match[{j}]");
                    matches.push(CompiledMatch {
                        uri: m.uri.as_ref().map(|u| Matcher::compile(u, &format!("{at}.uri"))).transpose()?,
                        method: m.method.as_ref().map(|u| Matcher::compile(u, &format!("{at}.method"))).transpose()?,
                        headers: m
                            .headers
                            .iter()
                            .map(|(h, v)| Ok((h.clone(), Matcher::compile(v, &format!("{at}.headers[{h}]"))?)))
                            .collect::<Result<_, InvalidConfig>>()?,
                        port: m.port,
                    });
                }
                routes.push(CompiledRoute { route: r.clone(), matches });
            }
            vhosts.push(VirtualHost { routes });
        }
        by_domain.finish();
        let identity = config.identity.as_ref().map(load_identity).transpose()?;
        // Clusters carry over when the identity is unchanged or renewed (same SPIFFE id, same
        // roots). A renewal reaches the kept clusters' new connections through their TLS
        // slots, set only once this config is known to be good.
        let renewed = match (prev.and_then(|p| p.identity.as_ref()), &identity) {
            (Some(a), Some(b)) => !a.same_as(b),
            _ => false,
        };
        let mut renewals = Vec::new();
        let reusable: HashMap<&str, (&Cluster, &Arc<Upstream>)> = match prev {
            Some(p)
                if match (&p.identity, &identity) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a.renewal_of(b),
                    _ => false,
                } =>
            {
                p.config
                    .clusters
                    .iter()
                    .filter_map(|c| Some((c.name.as_str(), (c, p.clusters.get(&c.name)?))))
                    .collect()
            }
            _ => HashMap::new(),
        };
        let mut clusters = HashMap::with_capacity(config.clusters.len());
        let mut by_service_address = HashMap::new();
        for c in &config.clusters {
            let up = match reusable.get(c.name.as_str()) {
                Some((old, up)) if *old == c => {
                    if renewed && let (Some(slot), Some(tls)) = (&up.tls, client_tls(c, identity.as_ref())?) {
                        renewals.push((Arc::clone(slot), tls));
                    }
                    Arc::clone(up)
                }
                _ => Arc::new(Upstream::new(c, client_tls(c, identity.as_ref())?)),
            };
            for a in &c.service_addresses {
                if by_service_address.insert(*a, up.clone()).is_some() {
                    return Err(InvalidConfig {
                        path: format!("clusters[{}].serviceAddresses", c.name),
                        reason: format!("{a} is claimed by another cluster"),
                    });
                }
            }
            clusters.insert(c.name.clone(), up);
        }
        let mut gateway_tls = HashMap::new();
        for l in &config.listeners {
            if let Some(tls) = &l.server_tls {
                gateway_tls.insert(l.name.clone(), crate::gateway::server_config(&l.name, tls)?);
            }
        }
        let strict = identity.as_ref().map(|i| i.server_config(true)).transpose().map_err(identity_err)?;
        let permissive = identity.as_ref().map(|i| i.server_config(false)).transpose().map_err(identity_err)?;
        let mut authorizers = HashMap::new();
        for l in config.listeners.iter().filter(|l| !l.authorization.is_empty()) {
            authorizers.insert(l.name.clone(), Authorizer::new(&l.authorization, &format!("listeners[{}]", l.name))?);
        }
        for (slot, tls) in renewals {
            slot.set(tls);
        }
        let names = match prev {
            Some(p) if p.config.name_table == config.name_table => p.names.clone(),
            _ => Arc::new(crate::dns::NameTable::new(&config.name_table)),
        };
        Ok(Self {
            names,
            config,
            identity,
            strict_tls: strict,
            permissive_tls: permissive,
            vhosts,
            by_domain,
            authorizers,
            clusters,
            by_service_address,
            gateway_tls,
        })
    }

    /// The first route of the virtual host serving `host` (port stripped) that matches.
    pub fn route(&self, host: &str, req: &RequestView<'_>) -> Routed<'_> {
        let host = host.to_ascii_lowercase();
        match self.find_vhost(&host) {
            None => Routed::UnknownHost,
            Some(vh) => vh
                .routes
                .iter()
                .find_map(|r| r.match_request(req).map(|prefix| Routed::Route(r, prefix)))
                .unwrap_or(Routed::NoRoute),
        }
    }

    fn find_vhost(&self, host: &str) -> Option<&VirtualHost> {
        self.by_domain.find(host).map(|i| &self.vhosts[i])
    }

    /// The PeerAuthentication mode of a listener for connections to `port` (its port-level
    /// mode if it has one; DISABLE for a listener not in the config).
    pub fn peer_authentication(&self, listener: &str, port: u16) -> skein_api::proxy::PeerAuthMode {
        self.config
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .map(|l| l.port_peer_authentication.get(&port).copied().unwrap_or(l.peer_authentication))
            .unwrap_or_default()
    }

    /// The authorization policies of a listener, if it has any.
    pub fn authorizer(&self, listener: &str) -> Option<&Authorizer> {
        self.authorizers.get(listener)
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.clusters.get(name)
    }

    /// Every cluster.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.clusters.values()
    }

    /// The cluster a captured connection to `addr` (a service VIP:port) belongs to.
    pub fn cluster_for_address(&self, addr: SocketAddr) -> Option<&Arc<Upstream>> {
        self.by_service_address.get(&addr)
    }

    /// The TLS server of a gateway listener.
    pub fn gateway_tls(&self, listener: &str) -> Option<&Arc<rustls::ServerConfig>> {
        self.gateway_tls.get(listener)
    }

    /// Whether AUTO_PASSTHROUGH listener `listener` serves service `host` (one of its
    /// `passthroughHosts` matches).
    pub fn passthrough_allowed(&self, listener: &str, host: &str) -> bool {
        self.config
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .is_some_and(|l| l.passthrough_hosts.iter().any(|p| crate::gateway::host_matches(p, host)))
    }

    /// The cluster a passthrough listener sends a connection with server name `sni` to:
    /// the first route with a matching host.
    pub fn tls_route(&self, listener: &str, sni: &str) -> Option<&Arc<Upstream>> {
        let l = self.config.listeners.iter().find(|l| l.name == listener)?;
        let route = l.tls_routes.iter().find(|r| r.sni_hosts.iter().any(|h| crate::gateway::host_matches(h, sni)))?;
        self.clusters.get(&route.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(yaml: &str) -> Runtime {
        Runtime::compile(serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    const CFG: &str = r#"
virtualHosts:
  - name: exact
    domains: [reviews, reviews.default.svc.cluster.local]
    routes:
      - name: jason
        match: [{headers: {end-user: {exact: jason}}}]
        route: [{cluster: v2}]
      - name: api
        match: [{uri: {prefix: /api/}, method: {exact: POST}}, {uri: {regex: "/v[0-9]+/.*"}}]
        route: [{cluster: v2}]
      - name: port
        match: [{port: 9999}]
        route: [{cluster: v2}]
      - name: default
        route: [{cluster: v1}]
  - name: wild
    domains: ["*.example.com"]
    routes: [{name: wild, route: [{cluster: v1}]}]
  - name: deeper
    domains: ["*.api.example.com"]
    routes: [{name: deeper, route: [{cluster: v2}]}]
  - name: any
    domains: ["*"]
    routes: [{name: any, route: [{cluster: v1}]}]
clusters:
  - {name: v1, endpoints: ["127.0.0.1:1", "127.0.0.1:2"]}
  - {name: v2}
"#;

    fn name<'a>(
        rt: &'a Runtime,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&'static str, &str)],
        port: u16,
    ) -> Option<&'a str> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        let m: Method = method.parse().unwrap();
        let req = RequestView { path, method: &m, headers: &h, port };
        match rt.route(host, &req) {
            Routed::Route(r, _) => Some(r.route.name.as_str()),
            _ => None,
        }
    }

    #[test]
    fn rules_apply_in_order_and_headers_match_exactly() {
        let rt = rt(CFG);
        assert_eq!(name(&rt, "reviews", "GET", "/", &[("end-user", "jason")], 80), Some("jason"));
        assert_eq!(name(&rt, "reviews", "GET", "/", &[("end-user", "jasonx")], 80), Some("default"));
        assert_eq!(name(&rt, "REVIEWS", "GET", "/", &[], 80), Some("default"), "host is case-insensitive");
    }

    #[test]
    fn uri_method_and_port_matches() {
        let rt = rt(CFG);
        assert_eq!(name(&rt, "reviews", "POST", "/api/x", &[], 80), Some("api"));
        assert_eq!(name(&rt, "reviews", "GET", "/api/x", &[], 80), Some("default"), "method must match too");
        assert_eq!(name(&rt, "reviews", "GET", "/v2/ratings", &[], 80), Some("api"), "second match entry (regex)");
        assert_eq!(name(&rt, "reviews", "GET", "/x/v2/ratings", &[], 80), Some("default"), "regex is anchored");
        assert_eq!(name(&rt, "reviews", "GET", "/", &[], 9999), Some("port"));
    }

    #[test]
    fn exact_domains_beat_the_longest_wildcard_which_beats_any() {
        let rt = rt(CFG);
        assert_eq!(name(&rt, "a.api.example.com", "GET", "/", &[], 80), Some("deeper"));
        assert_eq!(name(&rt, "a.example.com", "GET", "/", &[], 80), Some("wild"));
        assert_eq!(name(&rt, "elsewhere.org", "GET", "/", &[], 80), Some("any"));
    }

    #[test]
    fn clusters_are_compiled_by_name() {
        let rt = rt(CFG);
        assert_eq!(rt.cluster("v1").unwrap().service(), "v1");
        assert!(rt.cluster("v3").is_none());
    }

    #[test]
    fn a_new_config_keeps_the_state_of_unchanged_clusters() {
        let two = "clusters: [{name: a, endpoints: ['127.0.0.1:1']}, {name: b, endpoints: ['127.0.0.1:2']}]\n";
        let old = rt(two);
        let changed = two.replace("127.0.0.1:2", "127.0.0.1:3");
        let new = Runtime::compile_from(serde_yaml::from_str(&changed).unwrap(), Some(&old)).unwrap();
        assert!(Arc::ptr_eq(old.cluster("a").unwrap(), new.cluster("a").unwrap()), "unchanged cluster rebuilt");
        assert!(!Arc::ptr_eq(old.cluster("b").unwrap(), new.cluster("b").unwrap()), "changed cluster kept");
        // Without a previous runtime every cluster is new.
        let fresh = Runtime::compile_from(serde_yaml::from_str(two).unwrap(), None).unwrap();
        assert!(!Arc::ptr_eq(old.cluster("a").unwrap(), fresh.cluster("a").unwrap()));
    }
}
