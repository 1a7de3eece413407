//! VirtualService HTTP rules → routes, decided per client (`sourceLabels`,
//! `sourceNamespace`) and per scope (sidecars, or one gateway). Shared by sidecar and gateway
//! translation; the clusters routes name are made by [`Clusters`].

use kube::ResourceExt;
use skein_api::{
    istio::networking::{self as istio, HttpRoute, VirtualService},
    proxy::{self, Route, RouteMatch, WeightedDestination},
};

use super::{OutboundKey, clusters::Clusters, dur};
use crate::{registry::ServicePort, snapshot::selects};

/// Whose routes are built: a sidecar's (rules bound to `mesh`) or a gateway's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// Sidecars: VirtualServices and match rules bound to `mesh` (the default).
    Mesh,
    /// One gateway, as `<namespace>/<name>`.
    Gateway(String),
}

impl Scope {
    /// Whether a `gateways` list written in namespace `vs_ns` names this scope (empty: `mesh`).
    pub(super) fn named_by(&self, gateways: &[String], vs_ns: &str) -> bool {
        match self {
            Scope::Mesh => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
            Scope::Gateway(full) => gateways.iter().any(|g| match g.split_once('/') {
                Some(_) => g == full,
                None => format!("{vs_ns}/{g}") == *full,
            }),
        }
    }
}

/// Routes of one client in one scope, and the clusters they name.
pub(super) struct Routes<'a> {
    /// The clusters routes name.
    pub(super) clusters: Clusters<'a>,
    /// The client (namespace and the labels routes match on).
    pub(super) client: &'a OutboundKey,
    /// Which rules apply.
    pub(super) scope: Scope,
}

impl<'a> Routes<'a> {
    /// Routes for `client` in `scope`, with their clusters in `clusters`.
    pub(super) fn new(clusters: Clusters<'a>, client: &'a OutboundKey, scope: Scope) -> Self {
        Self { clusters, client, scope }
    }

    /// The rules of `vs` that apply to `port` of `svc`, in order. A VirtualService replaces
    /// the default route: requests matching none of its rules get 404, as in Istio.
    pub(super) fn vs_routes(&mut self, vs: &VirtualService, port: &ServicePort) -> Vec<Route> {
        let vs_ns = vs.namespace().unwrap_or_default();
        let mut routes = Vec::new();
        for (i, rule) in vs.spec.http.iter().enumerate() {
            let Some(matches) = self.matches(rule, port.number, &vs_ns) else { continue };
            let name = rule.name.clone().unwrap_or_else(|| format!("{vs_ns}/{}[{i}]", vs.name_any()));
            let route = rule
                .route
                .iter()
                .map(|d| WeightedDestination {
                    cluster: self.clusters.destination(&d.destination, &vs_ns, port.number),
                    weight: match rule.route.len() {
                        1 => 100,
                        _ => d.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(0),
                    },
                    headers: header_rules(d.headers.as_ref()),
                })
                .collect();
            let mirror = rule.mirror.as_ref().map(|m| self.clusters.destination(m, &vs_ns, port.number));
            let mirror_percentage = mirror.as_ref().map(|_| {
                rule.mirror_percentage.as_ref().map(|p| p.value).or(rule.mirror_percent.map(f64::from)).unwrap_or(100.0)
            });
            routes.push(Route {
                name,
                matches,
                route,
                redirect: rule.redirect.as_ref().map(redirect),
                rewrite: rule
                    .rewrite
                    .as_ref()
                    .map(|r| proxy::Rewrite { uri: r.uri.clone(), authority: r.authority.clone() }),
                // "0s" disables the timeout in Istio.
                timeout: dur(rule.timeout.as_ref()).filter(|d| !d.is_zero()),
                retries: retries(rule),
                fault: fault(rule),
                mirror,
                mirror_percentage,
                headers: header_rules(rule.headers.as_ref()),
            });
        }
        routes
    }

    /// The rule's matches narrowed to `port` and to this client; `None` when none can match.
    /// `sourceLabels`, `sourceNamespace` and `gateways` are decided here, per client, as Istio
    /// does when it builds a sidecar's routes.
    fn matches(&self, rule: &HttpRoute, port: u16, vs_ns: &str) -> Option<Vec<RouteMatch>> {
        if rule.matches.is_empty() {
            return Some(vec![RouteMatch { port: Some(port), ..Default::default() }]);
        }
        let out: Vec<RouteMatch> = rule
            .matches
            .iter()
            .filter(|m| m.port.is_none_or(|p| p == u32::from(port)))
            .filter(|m| selects(&m.source_labels, &self.client.labels))
            .filter(|m| m.source_namespace.as_ref().is_none_or(|ns| *ns == self.client.namespace))
            // A match without `gateways` applies wherever its VirtualService does.
            .filter(|m| m.gateways.is_empty() || self.scope.named_by(&m.gateways, vs_ns))
            .map(|m| RouteMatch {
                uri: m.uri.as_ref().and_then(string_match),
                method: m.method.as_ref().and_then(string_match),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), string_match(v)?)))
                    .collect(),
                port: Some(port),
            })
            .collect();
        (!out.is_empty()).then_some(out)
    }
}

/// Istio's `headers` as the proxy applies them: names lower-case (as HTTP/2 carries them),
/// `:authority` as `host`, Envoy's `%%` as the `%` it stands for (validation refused the rest
/// of Envoy's `%` syntax).
pub(super) fn header_rules(h: Option<&istio::Headers>) -> proxy::HeaderRules {
    let name = |k: &str| match k.to_ascii_lowercase() {
        a if a == ":authority" => "host".to_string(),
        a => a,
    };
    let ops = |o: Option<&istio::HeaderOperations>| {
        let lower = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(k, v)| (name(k), v.replace("%%", "%"))).collect()
        };
        o.map(|o| proxy::HeaderOps {
            set: lower(&o.set),
            add: lower(&o.add),
            remove: o.remove.iter().map(|k| name(k)).collect(),
        })
        .unwrap_or_default()
    };
    h.map(|h| proxy::HeaderRules { request: ops(h.request.as_ref()), response: ops(h.response.as_ref()) })
        .unwrap_or_default()
}

/// Istio's default retry policy for routes that set none: 2 retries on connection failures,
/// resets and 503.
pub(super) fn default_retries() -> proxy::RetryPolicy {
    proxy::RetryPolicy { attempts: 2, per_try_timeout: None, retry_on: "connect-failure,reset,503".into() }
}

/// A VirtualService redirect. `derivePort: FROM_PROTOCOL_DEFAULT` is the scheme's default port
/// (80, or 443 for https; without a scheme, 80), `FROM_REQUEST_PORT` (or nothing) keeps the
/// request's.
fn redirect(r: &istio::HttpRedirect) -> proxy::Redirect {
    let default_port = match r.scheme.as_deref() {
        Some("https") => 443,
        _ => 80,
    };
    let port = match (r.port, r.derive_port.as_deref()) {
        (Some(p), _) => u16::try_from(p).ok(),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => Some(default_port),
        _ => None,
    };
    proxy::Redirect {
        uri: r.uri.clone(),
        authority: r.authority.clone(),
        redirect_code: r.redirect_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(301),
        scheme: r.scheme.clone(),
        port,
    }
}

fn string_match(m: &istio::StringMatch) -> Option<proxy::StringMatch> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), _, _) => Some(proxy::StringMatch::Exact(v.clone())),
        (_, Some(v), _) => Some(proxy::StringMatch::Prefix(v.clone())),
        (_, _, Some(v)) => Some(proxy::StringMatch::Regex(v.clone())),
        _ => None,
    }
}

fn retries(rule: &HttpRoute) -> Option<proxy::RetryPolicy> {
    match &rule.retries {
        None => Some(default_retries()),
        Some(r) => {
            let attempts = r.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(2);
            (attempts > 0).then(|| proxy::RetryPolicy {
                attempts,
                per_try_timeout: dur(r.per_try_timeout.as_ref()),
                retry_on: r.retry_on.clone().unwrap_or_else(|| default_retries().retry_on),
            })
        }
    }
}

fn fault(rule: &HttpRoute) -> Option<proxy::Fault> {
    let f = rule.fault.as_ref()?;
    let delay = f.delay.as_ref().and_then(|d| {
        Some(proxy::Delay {
            fixed_delay: dur(d.fixed_delay.as_ref())?,
            percentage: d.percentage.as_ref().map(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(100.0),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        Some(proxy::Abort {
            http_status: u16::try_from(a.http_status?).ok()?,
            percentage: a.percentage.as_ref().map_or(100.0, |p| p.value),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(proxy::Fault { delay, abort })
}
