//! Validation of Istio resources before they reach any proxy. A resource that fails is
//! rejected with a reason naming the field (written to its status and an Event), and never
//! changes the config of anything: its last accepted version, if any, stays in force.
//!
//! The apiserver's schema already refuses unknown fields and enum values; what is checked here
//! is what a schema cannot say (weights, regexes, durations, percentages, references), and
//! fields Skein does not implement: accepting those silently would route differently from
//! what the user wrote, so they are refused by name instead.

use skein_api::istio::{
    networking::{
        DestinationRuleSpec, GatewaySpec, HttpMatchRequest, HttpRoute, LoadBalancerSettings, LocalityLbSetting,
        ServiceEntrySpec, SidecarSpec, StringMatch, TrafficPolicy, VirtualServiceSpec,
    },
    security::{AuthorizationPolicySpec, AuthzAction, PeerAuthenticationSpec},
};

/// Reasons a resource is invalid, each naming its field path.
pub type Errors = Vec<String>;

fn duration(errs: &mut Errors, path: &str, value: Option<&String>) {
    if let Some(v) = value
        && let Err(e) = skein_api::proxy::duration::parse(v)
    {
        errs.push(format!("{path}: {e}"));
    }
}

fn percent(errs: &mut Errors, path: &str, value: Option<f64>) {
    if let Some(v) = value
        && !(0.0..=100.0).contains(&v)
    {
        errs.push(format!("{path}: {v} is not a percentage in [0, 100]"));
    }
}

fn string_match(errs: &mut Errors, path: &str, m: &StringMatch) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()].iter().filter(|b| **b).count();
    if set > 1 {
        errs.push(format!("{path}: only one of exact, prefix, regex may be set"));
    }
    if let Some(re) = &m.regex
        && let Err(e) = regex::Regex::new(&format!("^(?:{re})$"))
    {
        errs.push(format!("{path}.regex: invalid regular expression: {}", first_line(&e.to_string())));
    }
}

fn first_line(s: &str) -> String {
    s.lines().last().unwrap_or(s).trim().to_string()
}

fn unsupported(errs: &mut Errors, path: &str, present: bool) {
    if present {
        errs.push(format!("{path}: not supported by Skein yet"));
    }
}

fn http_match(errs: &mut Errors, path: &str, m: &HttpMatchRequest) {
    for (field, v) in [("uri", &m.uri), ("method", &m.method)] {
        if let Some(v) = v {
            string_match(errs, &format!("{path}.{field}"), v);
        }
    }
    for (name, v) in &m.headers {
        string_match(errs, &format!("{path}.headers[{name}]"), v);
    }
    unsupported(errs, &format!("{path}.authority"), m.authority.is_some());
    unsupported(errs, &format!("{path}.scheme"), m.scheme.is_some());
    unsupported(errs, &format!("{path}.queryParams"), !m.query_params.is_empty());
    unsupported(errs, &format!("{path}.withoutHeaders"), !m.without_headers.is_empty());
    unsupported(errs, &format!("{path}.ignoreUriCase"), m.ignore_uri_case == Some(true));
    if let Some(p) = m.port
        && !(1..=65535).contains(&p)
    {
        errs.push(format!("{path}.port: {p} is not a port number"));
    }
}

fn http_route(errs: &mut Errors, path: &str, r: &HttpRoute) {
    for (i, m) in r.matches.iter().enumerate() {
        http_match(errs, &format!("{path}.match[{i}]"), m);
    }
    if r.redirect.is_some() && !r.route.is_empty() {
        errs.push(format!("{path}: redirect and route are mutually exclusive"));
    }
    if r.redirect.is_none() && r.route.is_empty() && r.direct_response.is_none() && r.delegate.is_none() {
        errs.push(format!("{path}: needs a route or a redirect"));
    }
    if let Some(rd) = &r.redirect {
        if let Some(s) = rd.scheme.as_deref().filter(|s| !matches!(*s, "http" | "https")) {
            errs.push(format!("{path}.redirect.scheme: {s:?} is not http or https"));
        }
        if let Some(p) = rd.port.filter(|p| !(1..=65535).contains(p)) {
            errs.push(format!("{path}.redirect.port: {p} is not a port number"));
        }
        if let Some(d) =
            rd.derive_port.as_deref().filter(|d| !matches!(*d, "FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT"))
        {
            errs.push(format!("{path}.redirect.derivePort: {d:?} is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"));
        }
        if let Some(c) = rd.redirect_code.filter(|c| !(300..=399).contains(c)) {
            errs.push(format!("{path}.redirect.redirectCode: {c} is not a 3xx status"));
        }
    }
    for (i, d) in r.route.iter().enumerate() {
        if d.destination.host.is_empty() {
            errs.push(format!("{path}.route[{i}].destination.host: required"));
        }
        if let Some(w) = d.weight
            && !(0..=100).contains(&w)
        {
            errs.push(format!("{path}.route[{i}].weight: {w} is not in [0, 100]"));
        }
        if let Some(h) = &d.headers {
            headers(errs, &format!("{path}.route[{i}].headers"), h);
        }
    }
    if r.route.len() > 1 {
        let sum: i32 = r.route.iter().map(|d| d.weight.unwrap_or(0)).sum();
        if sum != 100 {
            errs.push(format!("{path}.route: weights sum to {sum}, not 100"));
        }
    }
    duration(errs, &format!("{path}.timeout"), r.timeout.as_ref());
    if let Some(retry) = &r.retries {
        if retry.attempts.is_some_and(|a| a < 0) {
            errs.push(format!("{path}.retries.attempts: must not be negative"));
        }
        duration(errs, &format!("{path}.retries.perTryTimeout"), retry.per_try_timeout.as_ref());
    }
    if let Some(f) = &r.fault {
        if let Some(d) = &f.delay {
            match &d.fixed_delay {
                None => errs.push(format!("{path}.fault.delay.fixedDelay: required")),
                Some(v) => duration(errs, &format!("{path}.fault.delay.fixedDelay"), Some(v)),
            }
            unsupported(errs, &format!("{path}.fault.delay.exponentialDelay"), d.exponential_delay.is_some());
            percent(errs, &format!("{path}.fault.delay.percentage.value"), d.percentage.as_ref().map(|p| p.value));
            percent(errs, &format!("{path}.fault.delay.percent"), d.percent.map(f64::from));
        }
        if let Some(a) = &f.abort {
            match a.http_status {
                Some(s) if (200..=599).contains(&s) => {}
                Some(s) => errs.push(format!("{path}.fault.abort.httpStatus: {s} is not an HTTP status")),
                None if a.grpc_status.is_some() => {
                    unsupported(errs, &format!("{path}.fault.abort.grpcStatus"), true);
                }
                None => errs.push(format!("{path}.fault.abort.httpStatus: required")),
            }
            percent(errs, &format!("{path}.fault.abort.percentage.value"), a.percentage.as_ref().map(|p| p.value));
        }
    }
    if let Some(m) = &r.mirror
        && m.host.is_empty()
    {
        errs.push(format!("{path}.mirror.host: required"));
    }
    percent(errs, &format!("{path}.mirrorPercentage.value"), r.mirror_percentage.as_ref().map(|p| p.value));
    if let Some(rw) = &r.rewrite {
        unsupported(errs, &format!("{path}.rewrite.uriRegexRewrite"), rw.uri_regex_rewrite.is_some());
    }
    unsupported(errs, &format!("{path}.delegate"), r.delegate.is_some());
    unsupported(errs, &format!("{path}.directResponse"), r.direct_response.is_some());
    if let Some(h) = &r.headers {
        headers(errs, &format!("{path}.headers"), h);
    }
    unsupported(errs, &format!("{path}.mirrors"), !r.mirrors.is_empty());
}

/// Istio's checks of `headers`: request `set`/`add` may name `:authority` (or `host`), which
/// changes the authority; nothing else may start with `:`, and `remove` and response edits may
/// not touch `host`. Values hold no control characters; Envoy's `%VARIABLE%` substitutions are
/// refused by name (skein-proxy sends values as written), `%%` is a literal `%`.
fn headers(errs: &mut Errors, path: &str, h: &skein_api::istio::networking::Headers) {
    let token =
        |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let sides = [("request", h.request.as_ref()), ("response", h.response.as_ref())];
    for (side, ops) in sides {
        let Some(ops) = ops else { continue };
        for (op, name, value) in ops
            .set
            .iter()
            .map(|(n, v)| ("set", n, Some(v)))
            .chain(ops.add.iter().map(|(n, v)| ("add", n, Some(v))))
            .chain(ops.remove.iter().map(|n| ("remove", n, None)))
        {
            let at = format!("{path}.{side}.{op}[{name}]");
            let authority = name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host");
            if side == "request" && op != "remove" && authority {
                // Allowed: sets the authority the upstream sees.
            } else if name.eq_ignore_ascii_case("host") {
                errs.push(format!("{at}: invalid header \"{name}\": cannot set Host header"));
            } else if name.starts_with(':') {
                errs.push(format!("{at}: invalid header \"{name}\": header cannot have \":\" prefix"));
            } else if !token(name) {
                errs.push(format!("{at}: not a valid header name"));
            }
            let Some(v) = value else { continue };
            if v.chars().any(|c| (c.is_control() && c != '\t') || c == '\u{7f}') {
                errs.push(format!("{at}: the value holds control characters"));
            } else if v.replace("%%", "").contains('%') {
                errs.push(format!(
                    "{at}: Envoy's %VARIABLE% substitution in header values is not supported by Skein yet (write %% for a literal %)"
                ));
            }
        }
    }
}

/// A VirtualService on its own.
pub fn virtual_service(spec: &VirtualServiceSpec) -> Errors {
    let mut errs = Errors::new();
    if spec.hosts.is_empty() {
        errs.push("spec.hosts: at least one host is required".into());
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if h.is_empty() {
            errs.push(format!("spec.hosts[{i}]: empty"));
        }
    }
    for (i, r) in spec.http.iter().enumerate() {
        http_route(&mut errs, &format!("spec.http[{i}]"), r);
    }
    for (kind, routes) in [
        ("tcp", spec.tcp.iter().map(|r| &r.route).collect::<Vec<_>>()),
        ("tls", spec.tls.iter().map(|r| &r.route).collect()),
    ] {
        for (i, route) in routes.iter().enumerate() {
            if route.len() > 1 {
                let sum: i32 = route.iter().map(|d| d.weight.unwrap_or(0)).sum();
                if sum != 100 {
                    errs.push(format!("spec.{kind}[{i}].route: weights sum to {sum}, not 100"));
                }
            }
        }
    }
    errs
}

/// Istio's checks of a `localityLbSetting` (DestinationRule or MeshConfig). `distribute`
/// (weighted shares by locality) is refused by name: skein-proxy has no weighted choice yet,
/// and accepting it would spread traffic other than the user wrote.
pub fn locality_lb_setting(errs: &mut Errors, path: &str, lb: &LocalityLbSetting) {
    use crate::locality::{REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL};
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        errs.push(format!("{path}: can not simultaneously specify 'distribute' and 'failover'"));
        return;
    }
    if !lb.failover.is_empty()
        && let Some(l) =
            lb.failover_priority.iter().find(|l| matches!(l.as_str(), REGION_LABEL | ZONE_LABEL | SUBZONE_LABEL))
    {
        errs.push(format!(
            "{path}.failoverPriority: can not simultaneously set 'failover' and topology label '{l}' in 'failover_priority'"
        ));
    }
    unsupported(errs, &format!("{path}.distribute"), !lb.distribute.is_empty());
    for (i, f) in lb.failover.iter().enumerate() {
        let at = format!("{path}.failover[{i}]");
        if f.from == f.to {
            errs.push(format!("{at}: locality lb failover settings must specify different regions"));
        }
        if f.from.contains('/') || f.to.contains('/') {
            errs.push(format!("{at}: locality lb failover only specify region"));
        }
        if f.from.contains('*') || f.to.contains('*') {
            errs.push(format!("{at}: locality lb failover region should not contain '*' wildcard"));
        }
    }
    for (i, l) in lb.failover_priority.iter().enumerate() {
        if l.is_empty() || l.starts_with('=') {
            errs.push(format!("{path}.failoverPriority[{i}]: {l:?} is not a label key or key=value"));
        }
    }
}

fn load_balancer(errs: &mut Errors, path: &str, lb: &LoadBalancerSettings) {
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb_setting(errs, &format!("{path}.localityLbSetting"), l);
    }
}

fn traffic_policy(errs: &mut Errors, path: &str, p: &TrafficPolicy) {
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        if let Some(lb) = &pl.load_balancer {
            load_balancer(errs, &format!("{path}.portLevelSettings[{i}].loadBalancer"), lb);
        }
    }
    if let Some(lb) = &p.load_balancer {
        load_balancer(errs, &format!("{path}.loadBalancer"), lb);
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            errs.push(format!("{path}.loadBalancer: simple and consistentHash are mutually exclusive"));
        }
        if let Some(h) = &lb.consistent_hash {
            let set = [h.http_header_name.is_some(), h.http_cookie.is_some(), h.use_source_ip == Some(true)]
                .iter()
                .filter(|b| **b)
                .count();
            if set != 1 {
                errs.push(format!(
                    "{path}.loadBalancer.consistentHash: exactly one of httpHeaderName, httpCookie, useSourceIp is supported"
                ));
            }
        }
    }
    if let Some(cp) = &p.connection_pool {
        if let Some(tcp) = &cp.tcp {
            duration(errs, &format!("{path}.connectionPool.tcp.connectTimeout"), tcp.connect_timeout.as_ref());
        }
        if let Some(http) = &cp.http {
            for (f, v) in [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
            ] {
                if v.is_some_and(|v| v < 0) {
                    errs.push(format!("{path}.connectionPool.http.{f}: must not be negative"));
                }
            }
        }
    }
    if let Some(od) = &p.outlier_detection {
        duration(errs, &format!("{path}.outlierDetection.interval"), od.interval.as_ref());
        duration(errs, &format!("{path}.outlierDetection.baseEjectionTime"), od.base_ejection_time.as_ref());
        if od.max_ejection_percent.is_some_and(|v| !(0..=100).contains(&v)) {
            errs.push(format!("{path}.outlierDetection.maxEjectionPercent: not in [0, 100]"));
        }
    }
    if let Some(tls) = &p.tls
        && tls.mode == Some(skein_api::istio::networking::ClientTlsMode::MUTUAL)
    {
        errs.push(format!("{path}.tls.mode: MUTUAL (client certificate files) is not supported by Skein yet"));
    }
    unsupported(errs, &format!("{path}.tunnel"), p.tunnel.is_some());
    unsupported(errs, &format!("{path}.proxyProtocol"), p.proxy_protocol.is_some());
}

/// A DestinationRule on its own.
pub fn destination_rule(spec: &DestinationRuleSpec) -> Errors {
    let mut errs = Errors::new();
    if spec.host.is_empty() {
        errs.push("spec.host: required".into());
    }
    if let Some(p) = &spec.traffic_policy {
        traffic_policy(&mut errs, "spec.trafficPolicy", p);
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if s.name.is_empty() {
            errs.push(format!("spec.subsets[{i}].name: required"));
        } else if !names.insert(s.name.as_str()) {
            errs.push(format!("spec.subsets[{i}].name: duplicate subset {:?}", s.name));
        }
        if let Some(p) = &s.traffic_policy {
            traffic_policy(&mut errs, &format!("spec.subsets[{i}].trafficPolicy"), p);
        }
    }
    errs
}

/// Istio's warning for the deprecated `outlierDetection.consecutiveErrors`, word for word.
pub const CONSECUTIVE_ERRORS_DEPRECATED: &str =
    "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead";

/// Istio's warning for locality failover without outlier detection, word for word.
pub const FAILOVER_NEEDS_OUTLIER_DETECTION: &str = "outlier detection policy must be provided for failover";

/// What Istio's validation warns about in a DestinationRule without rejecting it: the
/// deprecated `consecutiveErrors` (still applied, as Istio applies it), with where it is.
pub fn destination_rule_warnings(spec: &DestinationRuleSpec) -> Vec<String> {
    let mut policies: Vec<(String, &TrafficPolicy)> = Vec::new();
    if let Some(p) = &spec.traffic_policy {
        policies.push(("spec.trafficPolicy".into(), p));
    }
    for (i, s) in spec.subsets.iter().enumerate() {
        if let Some(p) = &s.traffic_policy {
            policies.push((format!("spec.subsets[{i}].trafficPolicy"), p));
        }
    }
    let mut warnings = Vec::new();
    for (path, p) in policies {
        let mut outliers = vec![(path.clone(), p.outlier_detection.as_ref())];
        outliers.extend(
            p.port_level_settings
                .iter()
                .enumerate()
                .map(|(j, pl)| (format!("{path}.portLevelSettings[{j}]"), pl.outlier_detection.as_ref())),
        );
        for (at, od) in outliers {
            if od.and_then(|o| o.consecutive_errors).is_some_and(|n| n != 0) {
                warnings.push(format!("{at}.outlierDetection.consecutiveErrors: {CONSECUTIVE_ERRORS_DEPRECATED}"));
            }
        }
        // Istio's warning: failover never happens without outlier detection to eject endpoints.
        let locality = p.load_balancer.as_ref().and_then(|lb| lb.locality_lb_setting.as_ref());
        if locality.is_some_and(|l| !l.failover.is_empty() || !l.failover_priority.is_empty())
            && p.outlier_detection.is_none()
        {
            warnings.push(format!("{path}.loadBalancer.localityLbSetting: {FAILOVER_NEEDS_OUTLIER_DETECTION}"));
        }
    }
    warnings
}

/// A ServiceEntry on its own.
pub fn service_entry(spec: &ServiceEntrySpec) -> Errors {
    let mut errs = Errors::new();
    if spec.hosts.is_empty() {
        errs.push("spec.hosts: at least one host is required".into());
    }
    let mut numbers = std::collections::BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if !(1..=65535).contains(&p.number) {
            errs.push(format!("spec.ports[{i}].number: {} is not a port number", p.number));
        } else if !numbers.insert(p.number) {
            errs.push(format!("spec.ports[{i}].number: duplicate port {}", p.number));
        }
    }
    match spec.resolution.as_deref() {
        None | Some("NONE" | "DNS" | "DNS_ROUND_ROBIN") => {}
        Some("STATIC") => {
            for (i, e) in spec.endpoints.iter().enumerate() {
                if e.address.as_deref().and_then(|a| a.parse::<std::net::IpAddr>().ok()).is_none() {
                    errs.push(format!("spec.endpoints[{i}].address: resolution STATIC needs an IP address"));
                }
            }
        }
        Some(other) => errs.push(format!("spec.resolution: {other:?} is not NONE, STATIC, DNS or DNS_ROUND_ROBIN")),
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        if a.split('/').next().and_then(|a| a.parse::<std::net::IpAddr>().ok()).is_none() {
            errs.push(format!("spec.addresses[{i}]: {a:?} is not an IP address or CIDR"));
        }
    }
    unsupported(&mut errs, "spec.workloadSelector", spec.workload_selector.is_some());
    errs
}

/// A Gateway on its own.
pub fn gateway(spec: &GatewaySpec) -> Errors {
    let mut errs = Errors::new();
    for (i, s) in spec.servers.iter().enumerate() {
        if s.hosts.is_empty() {
            errs.push(format!("spec.servers[{i}].hosts: at least one host is required"));
        }
        if !(1..=65535).contains(&s.port.number) {
            errs.push(format!("spec.servers[{i}].port.number: {} is not a port number", s.port.number));
        }
    }
    errs
}

/// A PeerAuthentication on its own.
pub fn peer_authentication(spec: &PeerAuthenticationSpec) -> Errors {
    let mut errs = Errors::new();
    if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
        errs.push("spec.portLevelMtls: requires a workload selector (as in Istio)".into());
    }
    for port in spec.port_level_mtls.keys() {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            errs.push(format!("spec.portLevelMtls[{port}]: not a port number"));
        }
    }
    errs
}

/// An AuthorizationPolicy on its own.
pub fn authorization_policy(spec: &AuthorizationPolicySpec) -> Errors {
    let mut errs = Errors::new();
    match spec.action {
        None | Some(AuthzAction::ALLOW | AuthzAction::DENY) => {}
        Some(a) => errs.push(format!("spec.action: {a:?} is not supported by Skein yet")),
    }
    unsupported(&mut errs, "spec.targetRef", spec.target_ref.is_some());
    unsupported(&mut errs, "spec.targetRefs", !spec.target_refs.is_empty());
    for (i, r) in spec.rules.iter().enumerate() {
        for (j, f) in r.from.iter().enumerate() {
            let s = &f.source;
            let path = format!("spec.rules[{i}].from[{j}].source");
            unsupported(
                &mut errs,
                &format!("{path}.requestPrincipals"),
                !s.request_principals.is_empty() || !s.not_request_principals.is_empty(),
            );
            unsupported(
                &mut errs,
                &format!("{path}.remoteIpBlocks"),
                !s.remote_ip_blocks.is_empty() || !s.not_remote_ip_blocks.is_empty(),
            );
        }
        for (j, f) in r.from.iter().enumerate() {
            for b in f.source.ip_blocks.iter().chain(&f.source.not_ip_blocks) {
                if b.split('/').next().and_then(|a| a.parse::<std::net::IpAddr>().ok()).is_none() {
                    errs.push(format!("spec.rules[{i}].from[{j}].source.ipBlocks: {b:?} is not an IP or CIDR"));
                }
            }
        }
        for (j, t) in r.to.iter().enumerate() {
            for p in t.operation.ports.iter().chain(&t.operation.not_ports) {
                if p.parse::<u16>().is_err() {
                    errs.push(format!("spec.rules[{i}].to[{j}].operation.ports: {p:?} is not a port"));
                }
            }
        }
        for (j, c) in r.when.iter().enumerate() {
            if !skein_api::proxy::AuthzCondition::key_supported(&c.key) {
                errs.push(format!("spec.rules[{i}].when[{j}].key: {:?} is not supported by Skein yet", c.key));
            }
        }
    }
    errs
}

/// A Sidecar on its own. Skein applies its catch-all egress listener's `hosts` and its
/// `outboundTrafficPolicy.mode`; everything else is refused by name rather than ignored.
pub fn sidecar(spec: &SidecarSpec) -> Errors {
    let mut errs = Errors::new();
    unsupported(&mut errs, "spec.ingress", !spec.ingress.is_empty());
    unsupported(&mut errs, "spec.inboundConnectionPool", spec.inbound_connection_pool.is_some());
    if let Some(policy) = &spec.outbound_traffic_policy {
        match policy.mode.as_deref() {
            None | Some("REGISTRY_ONLY" | "ALLOW_ANY") => {}
            Some(m) => errs.push(format!("spec.outboundTrafficPolicy.mode: {m:?} is not REGISTRY_ONLY or ALLOW_ANY")),
        }
        unsupported(&mut errs, "spec.outboundTrafficPolicy.egressProxy", policy.egress_proxy.is_some());
    }
    if spec.egress.len() > 1 {
        errs.push("spec.egress: Skein supports one egress listener (the catch-all, without a port) yet".into());
    }
    for (i, l) in spec.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        unsupported(&mut errs, &format!("{path}.port"), l.port.is_some());
        unsupported(&mut errs, &format!("{path}.bind"), l.bind.is_some());
        unsupported(
            &mut errs,
            &format!("{path}.captureMode"),
            l.capture_mode.as_deref().is_some_and(|m| m != "DEFAULT"),
        );
        if l.hosts.is_empty() {
            errs.push(format!("{path}.hosts: at least one host is required (as in Istio)"));
        }
        for (j, h) in l.hosts.iter().enumerate() {
            if let Err(why) = egress_host(h) {
                errs.push(format!("{path}.hosts[{j}]: {h:?} {why}"));
            }
        }
    }
    errs
}

/// An egress host as Istio writes it: `<namespace>/<dnsName>`, namespace `*`, `.`, `~` or a
/// name, dnsName `*`, `*.<suffix>` or a name without wildcards elsewhere.
fn egress_host(h: &str) -> Result<(), &'static str> {
    let Some((ns, dns)) = h.split_once('/') else {
        return Err("is not <namespace>/<dnsName>");
    };
    if ns.is_empty() || (ns.contains('*') && ns != "*") || dns.contains('/') {
        return Err("has an invalid namespace (`*`, `.`, `~` or a namespace name)");
    }
    let name = dns.strip_prefix("*.").unwrap_or(dns);
    if dns.is_empty() || (dns != "*" && (name.is_empty() || name.contains('*'))) {
        return Err("has an invalid dnsName (`*`, `*.<suffix>` or a host name)");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
