//! `skeinctl proxy-config <clusters|listeners|routes|endpoints|all> <pod>`: a proxy's config
//! as tables like `istioctl proxy-config`, or as JSON. The config is the one the proxy runs:
//! the control plane's `/debug/config_dump?proxyID=` (the config the proxy acknowledged, which
//! it does only once applied), or a dump saved from the proxy itself (`skein-proxy request GET
//! config_dump > dump.json`, then `--file dump.json`).

use skein_api::proxy::{Cluster, ProxyConfig, RouteMatch, StringMatch};

use crate::table;

/// Which part of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Upstream clusters.
    Clusters,
    /// Listeners.
    Listeners,
    /// Virtual hosts and their routes.
    Routes,
    /// Every cluster's endpoints.
    Endpoints,
    /// The whole config.
    All,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table.
    Short,
    /// The section as JSON, as the config dump has it.
    Json,
}

/// Parses a config dump (JSON, as the proxy's and the control plane's `/config_dump` serve it).
pub fn parse(dump: &str) -> Result<ProxyConfig, String> {
    serde_json::from_str(dump).map_err(|e| format!("not a skein-proxy config dump: {e}"))
}

/// `serde`'s name of a unit enum value (`STRICT`, `ISTIO_MUTUAL`, ...).
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "-".into())
}

/// `outbound|9080|v1|reviews.default.svc.cluster.local` → (fqdn, port, subset, direction).
fn split_cluster_name(name: &str) -> (String, String, String, String) {
    let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    match name.split('|').collect::<Vec<_>>()[..] {
        [direction, port, subset, host] => (dash(host), dash(port), dash(subset), direction.to_string()),
        _ => (name.to_string(), "-".into(), "-".into(), "-".into()),
    }
}

fn string_match(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(v) => v.clone(),
        StringMatch::Prefix(v) => format!("{v}*"),
        StringMatch::Regex(v) => format!("~{v}"),
    }
}

/// A route's matches in one cell: `/productpage`, `/static*`, `/* (headers)`.
fn matches(ms: &[RouteMatch]) -> String {
    if ms.is_empty() {
        return "/*".into();
    }
    ms.iter()
        .map(|m| {
            let mut s = m.uri.as_ref().map_or_else(|| "/*".to_string(), string_match);
            let mut extra = Vec::new();
            if let Some(method) = &m.method {
                extra.push(format!("method {}", string_match(method)));
            }
            extra.extend(m.headers.iter().map(|(k, v)| format!("{k}={}", string_match(v))));
            if let Some(port) = m.port {
                extra.push(format!("port {port}"));
            }
            if !extra.is_empty() {
                s.push_str(&format!(" ({})", extra.join(", ")));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn clusters(cfg: &ProxyConfig) -> String {
    let mut rows: Vec<Vec<String>> = cfg
        .clusters
        .iter()
        .map(|c: &Cluster| {
            let (fqdn, port, subset, direction) = split_cluster_name(&c.name);
            let tls = c.tls.as_ref().map_or_else(|| "-".to_string(), |t| wire_name(&t.mode));
            vec![fqdn, port, subset, direction, c.endpoints.len().to_string(), tls]
        })
        .collect();
    rows.sort();
    table::render(&["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "ENDPOINTS", "TLS"], &rows)
}

fn listeners(cfg: &ProxyConfig) -> String {
    let mut rows: Vec<Vec<String>> = cfg
        .listeners
        .iter()
        .map(|l| {
            vec![
                l.address.ip().to_string(),
                l.address.port().to_string(),
                l.name.clone(),
                wire_name(&l.protocol),
                wire_name(&l.peer_authentication),
                l.cluster.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    rows.sort();
    table::render(&["ADDRESS", "PORT", "NAME", "PROTOCOL", "PEER AUTH", "CLUSTER"], &rows)
}

fn routes(cfg: &ProxyConfig) -> String {
    let mut rows = Vec::new();
    for vh in &cfg.virtual_hosts {
        let domains = match &vh.domains[..] {
            [] => "-".to_string(),
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} + {} more", rest.len()),
        };
        for r in &vh.routes {
            let to = if let Some(redirect) = &r.redirect {
                format!("redirect {}", serde_json::to_string(redirect).unwrap_or_default())
            } else {
                r.route
                    .iter()
                    .map(|d| if r.route.len() > 1 { format!("{} {}%", d.cluster, d.weight) } else { d.cluster.clone() })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            rows.push(vec![vh.name.clone(), domains.clone(), matches(&r.matches), to]);
        }
    }
    table::render(&["VIRTUAL HOST", "DOMAINS", "MATCH", "DESTINATION"], &rows)
}

fn endpoints(cfg: &ProxyConfig) -> String {
    let mut rows: Vec<Vec<String>> = cfg
        .clusters
        .iter()
        .flat_map(|c| {
            // Every priority level (locality failover), the first being Envoy's priority 0.
            let levels = std::iter::once(&c.endpoints).chain(&c.failover).enumerate();
            levels.flat_map(move |(p, level)| {
                level.iter().map(move |e| vec![e.to_string(), "HEALTHY".into(), p.to_string(), c.name.clone()])
            })
        })
        .collect();
    rows.sort();
    table::render(&["ENDPOINT", "STATUS", "PRIORITY", "CLUSTER"], &rows)
}

/// The section of `cfg` in `format`.
pub fn render(cfg: &ProxyConfig, section: Section, format: Format) -> String {
    if format == Format::Json {
        let value = serde_json::to_value(cfg).unwrap_or_default();
        let part = match section {
            Section::Clusters | Section::Endpoints => value.get("clusters").cloned(),
            Section::Listeners => value.get("listeners").cloned(),
            Section::Routes => value.get("virtualHosts").cloned(),
            Section::All => Some(value),
        };
        return serde_json::to_string_pretty(&part.unwrap_or(serde_json::Value::Array(vec![]))).unwrap_or_default()
            + "\n";
    }
    match section {
        Section::Clusters => clusters(cfg),
        Section::Listeners => listeners(cfg),
        Section::Routes => routes(cfg),
        Section::Endpoints => endpoints(cfg),
        Section::All => [listeners(cfg), routes(cfg), clusters(cfg), endpoints(cfg)].join("\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"{
      "version": "v1",
      "listeners": [{"name": "virtualInbound", "address": "0.0.0.0:15006", "peerAuthentication": "STRICT"},
                    {"name": "virtualOutbound", "address": "0.0.0.0:15001"}],
      "virtualHosts": [{"name": "reviews.default.svc.cluster.local:9080",
                        "domains": ["reviews.default.svc.cluster.local", "reviews", "reviews:9080"],
                        "routes": [{"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"cluster": "outbound|9080|v2|reviews.default.svc.cluster.local"}]},
                                   {"route": [{"cluster": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 80},
                                              {"cluster": "outbound|9080|v3|reviews.default.svc.cluster.local", "weight": 20}]}]}],
      "clusters": [{"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "endpoints": ["10.0.0.5:9080"], "tls": {"mode": "ISTIO_MUTUAL"}},
                   {"name": "outbound|9080|v2|reviews.default.svc.cluster.local", "endpoints": ["10.0.0.6:9080", "10.0.0.7:9080"], "failover": [["10.1.0.6:9080"]]},
                   {"name": "outbound|9080|v3|reviews.default.svc.cluster.local", "endpoints": []}]
    }"#;

    #[test]
    fn clusters_and_endpoints_read_like_istioctl() {
        let cfg = parse(DUMP).unwrap();
        let out = render(&cfg, Section::Clusters, Format::Short);
        let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["SERVICE", "FQDN", "PORT", "SUBSET", "DIRECTION", "ENDPOINTS", "TLS"]);
        assert_eq!(rows[1], ["reviews.default.svc.cluster.local", "9080", "v1", "outbound", "1", "ISTIO_MUTUAL"]);
        assert_eq!(rows[2][4..], ["2", "-"]);
        let out = render(&cfg, Section::Endpoints, Format::Short);
        assert_eq!(out.lines().count(), 5, "{out}");
        assert!(
            out.contains("10.0.0.6:9080   HEALTHY   0          outbound|9080|v2|reviews.default.svc.cluster.local"),
            "{out}"
        );
        assert!(
            out.contains("10.1.0.6:9080   HEALTHY   1          outbound|9080|v2|reviews.default.svc.cluster.local"),
            "{out}"
        );
    }

    #[test]
    fn routes_show_matches_and_weights() {
        let out = render(&parse(DUMP).unwrap(), Section::Routes, Format::Short);
        assert!(out.contains("reviews.default.svc.cluster.local + 2 more"), "{out}");
        assert!(out.contains("/* (end-user=jason)"), "{out}");
        assert!(out.contains("outbound|9080|v1|reviews.default.svc.cluster.local 80%, outbound|9080|v3|reviews.default.svc.cluster.local 20%"), "{out}");
    }

    #[test]
    fn listeners_show_peer_authentication_and_json_is_the_section() {
        let cfg = parse(DUMP).unwrap();
        let out = render(&cfg, Section::Listeners, Format::Short);
        assert!(
            out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["0.0.0.0", "15006", "virtualInbound", "HTTP", "STRICT", "-"]),
            "{out}"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&cfg, Section::Clusters, Format::Json)).unwrap();
        assert_eq!(json.as_array().map(Vec::len), Some(3));
        assert!(parse("{\"listeners\": 3}").unwrap_err().starts_with("not a skein-proxy config dump"));
    }
}
