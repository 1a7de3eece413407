//! AuthorizationPolicy evaluation with Istio's semantics: DENY policies first (any match
//! denies), then ALLOW policies (none present: allow; otherwise some rule must match). A policy
//! without rules matches nothing, so an ALLOW policy without rules denies everything
//! ("allow-nothing").
//!
//! Values match exactly, by prefix (`abc*`), by suffix (`*abc`), or by presence (`*`).
//! HTTP-only attributes (hosts, methods, paths, request headers) cannot be judged on TCP: such a
//! rule never matches in an ALLOW policy and always matches in a DENY policy, so a policy
//! meant for HTTP never opens TCP traffic and never lets it slip past a deny.

use std::net::IpAddr;

use skein_api::proxy::{AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzSource, InvalidConfig};

/// The request (or connection) being authorized.
pub struct Request<'a> {
    /// Peer principal (`cluster.local/ns/default/sa/productpage`), when the peer used mTLS.
    pub principal: Option<&'a str>,
    /// Peer IP.
    pub source_ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// HTTP attributes; `None` for TCP.
    pub http: Option<HttpAttrs<'a>>,
}

/// HTTP attributes of a request.
pub struct HttpAttrs<'a> {
    /// Host/authority without the port.
    pub host: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path (without query).
    pub path: &'a str,
    /// Headers.
    pub headers: &'a hyper::HeaderMap,
}

/// Outcome of evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied, by the named policy (or by the absence of a matching ALLOW policy).
    Deny(String),
}

/// Policies of one listener, validated.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    policies: Vec<AuthorizationPolicy>,
}

fn bad(path: String, reason: String) -> InvalidConfig {
    InvalidConfig { path, reason }
}

impl Authorizer {
    /// Validates `policies` (condition keys, IP blocks, ports); `at` prefixes error paths.
    pub fn new(policies: &[AuthorizationPolicy], at: &str) -> Result<Self, InvalidConfig> {
        for (i, p) in policies.iter().enumerate() {
            for (j, r) in p.rules.iter().enumerate() {
                let at = format!("{at}.authorization[{i}].rules[{j}]");
                for (k, f) in r.from.iter().enumerate() {
                    for b in f.source.ip_blocks.iter().chain(&f.source.not_ip_blocks) {
                        parse_cidr(b).ok_or_else(|| {
                            bad(format!("{at}.from[{k}].source.ipBlocks"), format!("{b:?} is not an IP or CIDR"))
                        })?;
                    }
                }
                for (k, t) in r.to.iter().enumerate() {
                    for port in t.operation.ports.iter().chain(&t.operation.not_ports) {
                        port.parse::<u16>().map_err(|_| {
                            bad(format!("{at}.to[{k}].operation.ports"), format!("{port:?} is not a port"))
                        })?;
                    }
                }
                for (k, c) in r.when.iter().enumerate() {
                    if !skein_api::proxy::AuthzCondition::key_supported(&c.key) {
                        return Err(bad(
                            format!("{at}.when[{k}].key"),
                            format!("unsupported condition key {:?}", c.key),
                        ));
                    }
                }
            }
        }
        Ok(Self { policies: policies.to_vec() })
    }

    /// Whether any policy applies (no policies: everything allowed without evaluation).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Istio's evaluation order: DENY, then ALLOW.
    pub fn check(&self, req: &Request<'_>) -> Decision {
        for p in self.policies.iter().filter(|p| p.action == AuthzAction::Deny) {
            if policy_matches(p, req, true) {
                return Decision::Deny(p.name.clone());
            }
        }
        let mut allows = self.policies.iter().filter(|p| p.action == AuthzAction::Allow).peekable();
        if allows.peek().is_none() {
            return Decision::Allow;
        }
        if allows.any(|p| policy_matches(p, req, false)) {
            Decision::Allow
        } else {
            Decision::Deny("no ALLOW policy matched".into())
        }
    }
}

fn policy_matches(p: &AuthorizationPolicy, req: &Request<'_>, deny: bool) -> bool {
    p.rules.iter().any(|r| {
        // For TCP, a rule relying on HTTP attributes matches in DENY and not in ALLOW.
        let http_only =
            r.to.iter().any(|t| uses_http(&t.operation)) || r.when.iter().any(|c| c.key.starts_with("request."));
        if req.http.is_none() && http_only {
            return deny;
        }
        (r.from.is_empty() || r.from.iter().any(|f| source_matches(&f.source, req)))
            && (r.to.is_empty() || r.to.iter().any(|t| operation_matches(&t.operation, req)))
            && r.when.iter().all(|c| condition_matches(c, req))
    })
}

fn uses_http(o: &AuthzOperation) -> bool {
    [&o.hosts, &o.not_hosts, &o.methods, &o.not_methods, &o.paths, &o.not_paths].iter().any(|v| !v.is_empty())
}

/// Istio string match: `*` presence, `abc*` prefix, `*abc` suffix, else exact.
pub fn value_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// A positive list (empty: no constraint) and a negative list (empty: no constraint).
fn field(values: &[String], not_values: &[String], actual: Option<&str>) -> bool {
    let pos = values.is_empty() || actual.is_some_and(|a| values.iter().any(|v| value_matches(v, a)));
    // A negated field on an absent attribute holds (nothing to exclude), as in Istio.
    let neg = not_values.is_empty() || !actual.is_some_and(|a| not_values.iter().any(|v| value_matches(v, a)));
    pos && neg
}

fn namespace_of(principal: &str) -> Option<&str> {
    let rest = principal.split("/ns/").nth(1)?;
    rest.split('/').next()
}

fn source_matches(s: &AuthzSource, req: &Request<'_>) -> bool {
    let ns = req.principal.and_then(namespace_of);
    field(&s.principals, &s.not_principals, req.principal)
        && field(&s.namespaces, &s.not_namespaces, ns)
        && (s.ip_blocks.is_empty() || s.ip_blocks.iter().any(|b| in_block(b, req.source_ip)))
        && !s.not_ip_blocks.iter().any(|b| in_block(b, req.source_ip))
}

fn operation_matches(o: &AuthzOperation, req: &Request<'_>) -> bool {
    let port = req.port.to_string();
    let (host, method, path) = match &req.http {
        Some(h) => (Some(h.host), Some(h.method), Some(h.path)),
        None => (None, None, None),
    };
    field(&o.ports, &o.not_ports, Some(&port))
        && field(&o.hosts, &o.not_hosts, host)
        && field(&o.methods, &o.not_methods, method)
        && field(&o.paths, &o.not_paths, path)
}

fn condition_matches(c: &AuthzCondition, req: &Request<'_>) -> bool {
    let port = req.port.to_string();
    if c.key == "source.ip" {
        let pos = c.values.is_empty() || c.values.iter().any(|b| in_block(b, req.source_ip));
        return pos && !c.not_values.iter().any(|b| in_block(b, req.source_ip));
    }
    let actual: Option<&str> = match c.key.as_str() {
        "source.namespace" => req.principal.and_then(namespace_of),
        "source.principal" => req.principal,
        "destination.port" => Some(&port),
        k => k
            .strip_prefix("request.headers[")
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| req.http.as_ref()?.headers.get(h)?.to_str().ok()),
    };
    field(&c.values, &c.not_values, actual)
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
        None => {
            let ip: IpAddr = s.parse().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn in_block(block: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = parse_cidr(block) else { return false };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Authorizer {
        Authorizer::new(&serde_yaml::from_str::<Vec<AuthorizationPolicy>>(yaml).unwrap(), "listeners[in]").unwrap()
    }

    fn http<'a>(
        principal: Option<&'a str>,
        method: &'a str,
        path: &'a str,
        headers: &'a hyper::HeaderMap,
    ) -> Request<'a> {
        Request {
            principal,
            source_ip: "10.1.2.3".parse().unwrap(),
            port: 9080,
            http: Some(HttpAttrs { host: "reviews", method, path, headers }),
        }
    }

    const PRODUCTPAGE: &str = "cluster.local/ns/default/sa/bookinfo-productpage";

    #[test]
    fn no_policies_allow_everything_and_allow_nothing_denies_everything() {
        let h = hyper::HeaderMap::new();
        assert_eq!(policies("[]").check(&http(None, "GET", "/", &h)), Decision::Allow);
        let nothing = policies("[{name: default/allow-nothing}]");
        assert!(matches!(nothing.check(&http(Some(PRODUCTPAGE), "GET", "/", &h)), Decision::Deny(_)));
    }

    #[test]
    fn allow_by_principal_and_method_like_bookinfo() {
        let h = hyper::HeaderMap::new();
        let p = policies(&format!(
            "[{{name: default/reviews-viewer, rules: [{{from: [{{source: {{principals: ['{PRODUCTPAGE}']}}}}], to: [{{operation: {{methods: [GET]}}}}]}}]}}]"
        ));
        assert_eq!(p.check(&http(Some(PRODUCTPAGE), "GET", "/reviews/1", &h)), Decision::Allow);
        assert!(matches!(p.check(&http(Some(PRODUCTPAGE), "POST", "/reviews/1", &h)), Decision::Deny(_)));
        assert!(matches!(p.check(&http(Some("cluster.local/ns/default/sa/other"), "GET", "/", &h)), Decision::Deny(_)));
        assert!(matches!(p.check(&http(None, "GET", "/", &h)), Decision::Deny(_)), "no mTLS, no principal");
    }

    #[test]
    fn deny_wins_over_allow() {
        let h = hyper::HeaderMap::new();
        let p = policies(
            "[{name: a, rules: [{}]}, {name: d, action: DENY, rules: [{to: [{operation: {paths: ['/admin*']}}]}]}]",
        );
        assert_eq!(p.check(&http(None, "GET", "/reviews", &h)), Decision::Allow);
        assert_eq!(p.check(&http(None, "GET", "/admin/x", &h)), Decision::Deny("d".into()));
    }

    #[test]
    fn namespaces_ip_blocks_and_negations() {
        let h = hyper::HeaderMap::new();
        let p = policies(
            "[{rules: [{from: [{source: {namespaces: [default], notIpBlocks: ['10.1.0.0/16']}}, {source: {ipBlocks: ['192.168.0.0/24']}}]}]}]",
        );
        // From default, but inside the excluded block.
        assert!(matches!(p.check(&http(Some(PRODUCTPAGE), "GET", "/", &h)), Decision::Deny(_)));
        let mut r = http(Some(PRODUCTPAGE), "GET", "/", &h);
        r.source_ip = "10.9.9.9".parse().unwrap();
        assert_eq!(p.check(&r), Decision::Allow);
        r.principal = None;
        r.source_ip = "192.168.0.7".parse().unwrap();
        assert_eq!(p.check(&r), Decision::Allow, "second source by IP");
    }

    #[test]
    fn when_conditions_on_headers_and_wildcards() {
        let mut h = hyper::HeaderMap::new();
        h.insert("end-user", "jason".parse().unwrap());
        let p = policies(
            "[{rules: [{when: [{key: 'request.headers[end-user]', values: ['jas*']}], to: [{operation: {hosts: ['*views']}}]}]}]",
        );
        assert_eq!(p.check(&http(None, "GET", "/", &h)), Decision::Allow);
        let none = hyper::HeaderMap::new();
        assert!(matches!(p.check(&http(None, "GET", "/", &none)), Decision::Deny(_)));
    }

    #[test]
    fn http_only_rules_never_open_tcp_and_always_close_it() {
        let tcp =
            Request { principal: Some(PRODUCTPAGE), source_ip: "10.0.0.1".parse().unwrap(), port: 3306, http: None };
        let allow = policies("[{rules: [{to: [{operation: {methods: [GET]}}]}]}]");
        assert!(matches!(allow.check(&tcp), Decision::Deny(_)));
        let deny = policies("[{action: DENY, rules: [{to: [{operation: {paths: ['/x']}}]}]}]");
        assert!(matches!(deny.check(&tcp), Decision::Deny(_)));
        let by_port = policies("[{rules: [{to: [{operation: {ports: ['3306']}}]}]}]");
        assert_eq!(by_port.check(&tcp), Decision::Allow);
    }

    #[test]
    fn invalid_policies_are_rejected_with_a_path() {
        let bad = |yaml: &str| {
            Authorizer::new(&serde_yaml::from_str::<Vec<AuthorizationPolicy>>(yaml).unwrap(), "listeners[in]")
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad("[{rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]}]")
                .starts_with("listeners[in].authorization[0].rules[0].from[0].source.ipBlocks")
        );
        assert!(
            bad("[{rules: [{when: [{key: request.auth.claims, values: [x]}]}]}]").contains("unsupported condition key")
        );
        assert!(bad("[{rules: [{to: [{operation: {ports: [http]}}]}]}]").contains("is not a port"));
    }
}
