//! HTTP routing: virtual hosts, routes and their matches, destinations, redirects, rewrites,
//! retries and faults.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{InvalidConfig, PASSTHROUGH_CLUSTER, check_percentage, invalid};

/// Routes for a set of domains (one VirtualService host, or a Service's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHost {
    /// Unique name (usually `<host>:<port>`).
    pub name: String,
    /// Host names matched against the request authority, port stripped. `*.example.com`
    /// matches any subdomain; `*` matches everything.
    pub domains: Vec<String>,
    /// Rules, first match wins.
    pub routes: Vec<Route>,
}

/// One VirtualService HTTP rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Name for metrics and logs.
    #[serde(default)]
    pub name: String,
    /// Any of these matches selects the route; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: Vec<RouteMatch>,
    /// Weighted destinations (weights sum to 100 when more than one).
    #[serde(default)]
    pub route: Vec<WeightedDestination>,
    /// Redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Rewrite of path prefix and/or authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Whole-request timeout including retries. Unset: no timeout.
    #[serde(default, with = "crate::proxy::duration::opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy. Unset: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Fault injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Cluster that receives a copy of each request (fire and forget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Percentage of requests mirrored (0–100). Default 100 when `mirror` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<f64>,
    /// Header edits (Istio's `headers`), applied after the chosen destination's own.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub headers: HeaderRules,
}

/// Header edits of a route or destination: the request before it is forwarded, the response
/// before it goes back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Request edits.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request: HeaderOps,
    /// Response edits.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response: HeaderOps,
}

impl HeaderRules {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }

    fn validate(&self, at: &str) -> Result<(), InvalidConfig> {
        self.request.validate(&format!("{at}.request"))?;
        self.response.validate(&format!("{at}.response"))
    }
}

/// Header edits, applied in Envoy's order: `remove`, then `set` (overwrite or add), then `add`
/// (append). Names are lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Overwrite (or add).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn validate(&self, at: &str) -> Result<(), InvalidConfig> {
        let names = self.set.keys().chain(self.add.keys()).chain(&self.remove);
        for name in names {
            if http::HeaderName::from_lowercase(name.as_bytes()).is_err() {
                return Err(invalid(format!("{at}[{name}]"), "not a lower-case HTTP header name"));
            }
        }
        for (name, value) in self.set.iter().chain(&self.add) {
            if http::HeaderValue::from_str(value).is_err() {
                return Err(invalid(format!("{at}[{name}]"), "not a valid header value"));
            }
        }
        Ok(())
    }
}

/// Request match conditions; all set fields must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Path (without query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Request headers (lower-case names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Listener port the request arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Istio's StringMatch: exactly one of exact, prefix, regex (RE2 syntax, full match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StringMatchFields", into = "StringMatchFields")]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole value matches the regular expression.
    Regex(String),
}

/// StringMatch as written: `{exact: v}`, `{prefix: v}` or `{regex: v}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<StringMatchFields> for StringMatch {
    type Error = String;
    fn try_from(f: StringMatchFields) -> Result<Self, String> {
        match (f.exact, f.prefix, f.regex) {
            (Some(v), None, None) => Ok(StringMatch::Exact(v)),
            (None, Some(v), None) => Ok(StringMatch::Prefix(v)),
            (None, None, Some(v)) => Ok(StringMatch::Regex(v)),
            _ => Err("a string match needs exactly one of exact, prefix, regex".into()),
        }
    }
}

impl From<StringMatch> for StringMatchFields {
    fn from(m: StringMatch) -> Self {
        match m {
            StringMatch::Exact(v) => Self { exact: Some(v), ..Default::default() },
            StringMatch::Prefix(v) => Self { prefix: Some(v), ..Default::default() },
            StringMatch::Regex(v) => Self { regex: Some(v), ..Default::default() },
        }
    }
}

/// A destination and its share of traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedDestination {
    /// Cluster name.
    pub cluster: String,
    /// Share in percent; default 100 (a single destination).
    #[serde(default = "hundred")]
    pub weight: u32,
    /// Header edits when this destination is chosen.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub headers: HeaderRules,
}

fn hundred() -> u32 {
    100
}

/// HTTP redirect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// Replacement path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replacement authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Status code; default 301.
    #[serde(default = "default_redirect_code")]
    pub redirect_code: u16,
    /// Replacement scheme (`http` or `https`); unset keeps the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Replacement port; unset keeps the request's (none when the scheme changes: the new
    /// scheme's default port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn default_redirect_code() -> u16 {
    301
}

/// Rewrite before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path for exact/regex matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the Host/authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Istio's HTTPRetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try. Unset: the route timeout.
    #[serde(default, with = "crate::proxy::duration::opt", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated conditions: `5xx`, `gateway-error`, `connect-failure`, `reset`,
    /// `retriable-status-codes` or status codes. Default `connect-failure,reset,503`.
    #[serde(default = "default_retry_on")]
    pub retry_on: String,
}

pub(crate) fn default_retry_on() -> String {
    "connect-failure,reset,503".into()
}

/// Istio's HTTPFaultInjection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Delay before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Answer with an error instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// Injected delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// How long.
    #[serde(with = "crate::proxy::duration")]
    pub fixed_delay: Duration,
    /// Share of requests delayed, 0–100; default 100.
    #[serde(default = "hundred_f")]
    pub percentage: f64,
}

/// Injected error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// HTTP status returned.
    pub http_status: u16,
    /// Share of requests aborted, 0–100; default 100.
    #[serde(default = "hundred_f")]
    pub percentage: f64,
}

fn hundred_f() -> f64 {
    100.0
}

impl StringMatch {
    fn validate(&self, path: String) -> Result<(), InvalidConfig> {
        if let StringMatch::Regex(r) = self {
            compile_regex(r).map_err(|e| invalid(path, format!("invalid regex {r:?}: {e}")))?;
        }
        Ok(())
    }
}

/// Compiles an Istio regex (RE2 syntax) anchored to the whole value, with bounded size so a
/// config cannot make the proxy build a huge automaton.
pub fn compile_regex(r: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{r})$")).size_limit(1 << 20).build()
}

impl Route {
    pub(crate) fn validate(&self, at: &str, clusters: &BTreeSet<&str>) -> Result<(), InvalidConfig> {
        for (i, m) in self.matches.iter().enumerate() {
            let mat = format!("{at}.match[{i}]");
            if let Some(u) = &m.uri {
                u.validate(format!("{mat}.uri"))?;
            }
            if let Some(u) = &m.method {
                u.validate(format!("{mat}.method"))?;
            }
            for (h, v) in &m.headers {
                if h.chars().any(|c| c.is_ascii_uppercase()) {
                    return Err(invalid(format!("{mat}.headers[{h}]"), "header names must be lower-case"));
                }
                v.validate(format!("{mat}.headers[{h}]"))?;
            }
        }
        match (&self.redirect, self.route.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(at, "route and redirect are mutually exclusive"));
            }
            (None, true) => {
                return Err(invalid(format!("{at}.route"), "a route needs at least one destination or a redirect"));
            }
            _ => {}
        }
        if let Some(r) = self.redirect.as_ref().filter(|r| !(300..=399).contains(&r.redirect_code)) {
            return Err(invalid(
                format!("{at}.redirect.redirectCode"),
                format!("{} is not a 3xx status", r.redirect_code),
            ));
        }
        if let Some(s) =
            self.redirect.as_ref().and_then(|r| r.scheme.as_deref()).filter(|s| !matches!(*s, "http" | "https"))
        {
            return Err(invalid(format!("{at}.redirect.scheme"), format!("{s:?} is not http or https")));
        }
        if self.redirect.as_ref().is_some_and(|r| r.port == Some(0)) {
            return Err(invalid(format!("{at}.redirect.port"), "0 is not a port"));
        }
        for (i, d) in self.route.iter().enumerate() {
            if d.cluster == PASSTHROUGH_CLUSTER && self.route.len() > 1 {
                return Err(invalid(
                    format!("{at}.route[{i}].cluster"),
                    "PassthroughCluster is a route's only destination",
                ));
            }
            if !clusters.contains(d.cluster.as_str()) && d.cluster != PASSTHROUGH_CLUSTER {
                return Err(invalid(format!("{at}.route[{i}].cluster"), format!("unknown cluster {:?}", d.cluster)));
            }
        }
        if self.route.len() > 1 {
            let total: u32 = self.route.iter().map(|d| d.weight).sum();
            if total != 100 {
                return Err(invalid(format!("{at}.route"), format!("weights sum to {total}, not 100")));
            }
        }
        self.headers.validate(&format!("{at}.headers"))?;
        for (i, d) in self.route.iter().enumerate() {
            d.headers.validate(&format!("{at}.route[{i}].headers"))?;
        }
        if let Some(m) = self.mirror.as_ref().filter(|m| !clusters.contains(m.as_str())) {
            return Err(invalid(format!("{at}.mirror"), format!("unknown cluster {m:?}")));
        }
        if let Some(p) = self.mirror_percentage {
            check_percentage(format!("{at}.mirrorPercentage"), p)?;
        }
        if let Some(f) = &self.fault {
            if let Some(d) = &f.delay {
                check_percentage(format!("{at}.fault.delay.percentage"), d.percentage)?;
            }
            if let Some(a) = &f.abort {
                check_percentage(format!("{at}.fault.abort.percentage"), a.percentage)?;
                if !(200..=599).contains(&a.http_status) {
                    return Err(invalid(
                        format!("{at}.fault.abort.httpStatus"),
                        format!("{} is not an HTTP status", a.http_status),
                    ));
                }
            }
        }
        Ok(())
    }
}
