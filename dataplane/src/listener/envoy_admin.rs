//! Envoy's admin text formats for `/stats` and `/clusters`, so that what Istio's tasks tell a
//! user to run against a sidecar (`pilot-agent request GET stats | grep pending`, `curl
//! localhost:15000/clusters`) reads the same against skein-proxy: the same names, the same
//! `name: value` and `cluster::key::value` lines.

use std::fmt::Write as _;

use regex::Regex;

use crate::{
    runtime::Runtime,
    upstream::{Breakers, UNLIMITED},
};

/// What `/stats` was asked for.
#[derive(Debug, Default)]
pub struct StatsQuery {
    /// `filter=<regex>`: only the stats whose name matches.
    pub filter: Option<Regex>,
    /// `format=json`: Envoy's `{"stats": [{"name", "value"}]}` instead of text.
    pub json: bool,
}

impl StatsQuery {
    /// Parses a `/stats` query string; a filter that is no regex is an error naming it.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut q = Self::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "filter" => {
                    q.filter = Some(Regex::new(&value).map_err(|e| format!("filter: not a regular expression: {e}"))?)
                }
                "format" if value == "json" => q.json = true,
                "format" if value == "text" => q.json = false,
                "format" => return Err(format!("format: {value:?} is not one of text, json")),
                // Envoy's `usedonly` and the rest change nothing here: every stat listed is used.
                _ => {}
            }
        }
        Ok(q)
    }
}

/// `limit - used`, for a limit left unset Istio's 2^32-1 (what Envoy's admin shows then).
fn remaining(limit: Option<usize>, used: usize) -> usize {
    limit.unwrap_or(UNLIMITED).saturating_sub(used)
}

/// Whether a breaker is open (its limit reached): Envoy's `*_open` gauges, 0 or 1.
fn open(limit: Option<usize>, used: usize) -> usize {
    usize::from(limit.is_some_and(|m| used >= m))
}

/// Every cluster's circuit-breaker, pending-queue and outlier-detection stats, sorted by name.
fn cluster_stats(runtime: &Runtime) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for up in runtime.clusters() {
        let Breakers {
            max_connections,
            connections,
            max_pending,
            pending,
            max_requests,
            requests,
            max_retries,
            retries,
            pending_total,
            pending_overflow,
        } = up.breakers();
        let mut stat = |name: &str, value: usize| out.push((format!("cluster.{}.{name}", up.name), value));
        if let Some(connections) = connections {
            stat("circuit_breakers.default.cx_open", open(max_connections, connections));
            stat("circuit_breakers.default.remaining_cx", remaining(max_connections, connections));
        }
        stat("circuit_breakers.default.remaining_pending", remaining(max_pending, pending));
        stat("circuit_breakers.default.remaining_retries", remaining(max_retries, retries));
        stat("circuit_breakers.default.remaining_rq", remaining(max_requests, requests));
        stat("circuit_breakers.default.rq_open", open(max_requests, requests));
        stat("circuit_breakers.default.rq_pending_open", open(max_pending, pending));
        stat("circuit_breakers.default.rq_retry_open", open(max_retries, retries));
        if let Some((active, total)) = up.ejection_stats() {
            stat("outlier_detection.ejections_active", active);
            stat("outlier_detection.ejections_enforced_total", total);
            stat("outlier_detection.ejections_total", total);
        }
        stat("upstream_rq_active", requests);
        stat("upstream_rq_pending_active", pending);
        stat("upstream_rq_pending_overflow", pending_overflow);
        stat("upstream_rq_pending_total", pending_total);
    }
    out.sort();
    out
}

/// The body of `/stats` for `query`: Envoy's `name: value` lines, or its JSON.
pub fn stats(runtime: &Runtime, query: &StatsQuery) -> String {
    let stats: Vec<(String, usize)> = cluster_stats(runtime)
        .into_iter()
        .filter(|(name, _)| query.filter.as_ref().is_none_or(|f| f.is_match(name)))
        .collect();
    if query.json {
        let stats: Vec<_> =
            stats.iter().map(|(name, value)| serde_json::json!({"name": name, "value": value})).collect();
        return serde_json::json!({ "stats": stats }).to_string();
    }
    stats.iter().fold(String::new(), |mut s, (name, value)| {
        let _ = writeln!(s, "{name}: {value}");
        s
    })
}

/// The body of `/clusters`: Envoy's `cluster::key::value` lines, each cluster's limits and then
/// each endpoint's requests in flight and health (`/failed_outlier_check` when ejected).
pub fn clusters(runtime: &Runtime) -> String {
    let mut ups: Vec<_> = runtime.clusters().collect();
    ups.sort_by(|a, b| a.name.cmp(&b.name));
    let mut s = String::new();
    for up in ups {
        let name = &up.name;
        let b = up.breakers();
        let _ = writeln!(s, "{name}::observability_name::{name}");
        for (key, limit) in [
            ("max_connections", b.max_connections),
            ("max_pending_requests", b.max_pending),
            ("max_requests", b.max_requests),
            ("max_retries", b.max_retries),
        ] {
            let _ = writeln!(s, "{name}::default_priority::{key}::{}", limit.unwrap_or(UNLIMITED));
        }
        let _ = writeln!(s, "{name}::added_via_api::true");
        for (addr, active, ejected) in up.endpoint_states() {
            let health = if ejected { "/failed_outlier_check" } else { "healthy" };
            let _ = writeln!(s, "{name}::{addr}::rq_active::{active}");
            let _ = writeln!(s, "{name}::{addr}::health_flags::{health}");
            let _ = writeln!(s, "{name}::{addr}::weight::1");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(yaml: &str) -> Runtime {
        Runtime::compile(serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    const TASK: &str = "clusters: [{name: 'outbound|8000||httpbin.default.svc.cluster.local', endpoints: ['10.0.0.5:8080'], connectionPool: {maxConnections: 1, http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}, outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}}]";

    #[test]
    fn stats_name_the_task_cluster_like_envoy_and_filter_by_regex() {
        let rt = runtime(TASK);
        let all = stats(&rt, &StatsQuery::default());
        let c = "cluster.outbound|8000||httpbin.default.svc.cluster.local";
        for line in [
            "circuit_breakers.default.remaining_cx: 1",
            "circuit_breakers.default.remaining_pending: 1",
            "circuit_breakers.default.remaining_rq: 4294967295",
            "circuit_breakers.default.rq_pending_open: 0",
            "outlier_detection.ejections_active: 0",
            "upstream_rq_pending_active: 0",
            "upstream_rq_pending_overflow: 0",
            "upstream_rq_pending_total: 0",
        ] {
            assert!(all.contains(&format!("{c}.{line}\n")), "{line} missing from\n{all}");
        }
        let mut sorted: Vec<&str> = all.lines().collect();
        sorted.sort();
        assert_eq!(all.lines().collect::<Vec<_>>(), sorted, "sorted by name, as Envoy lists them");

        let pending = stats(&rt, &StatsQuery::parse(Some("filter=upstream_rq_pending")).unwrap());
        assert_eq!(pending.lines().count(), 3, "{pending}");
        assert!(pending.lines().all(|l| l.contains(".upstream_rq_pending_")), "{pending}");
        let json: serde_json::Value =
            serde_json::from_str(&stats(&rt, &StatsQuery::parse(Some("format=json&filter=overflow")).unwrap()))
                .unwrap();
        assert_eq!(json["stats"][0]["name"], format!("{c}.upstream_rq_pending_overflow"));
        assert_eq!(json["stats"][0]["value"], 0);
    }

    #[test]
    fn a_bad_stats_query_names_the_parameter() {
        let err = StatsQuery::parse(Some("filter=(")).unwrap_err();
        assert!(err.starts_with("filter: not a regular expression"), "{err}");
        let err = StatsQuery::parse(Some("format=yaml")).unwrap_err();
        assert!(err.starts_with("format:"), "{err}");
    }

    #[test]
    fn clusters_list_limits_and_endpoint_health_like_envoy() {
        let rt = runtime(TASK);
        let out = clusters(&rt);
        let c = "outbound|8000||httpbin.default.svc.cluster.local";
        for line in [
            format!("{c}::observability_name::{c}"),
            format!("{c}::default_priority::max_connections::1"),
            format!("{c}::default_priority::max_pending_requests::1"),
            format!("{c}::default_priority::max_requests::4294967295"),
            format!("{c}::10.0.0.5:8080::rq_active::0"),
            format!("{c}::10.0.0.5:8080::health_flags::healthy"),
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
        // One 5xx ejects the only endpoint (consecutive5xxErrors: 1): its flag says so.
        let up = rt.cluster(c).unwrap();
        up.report("10.0.0.5:8080".parse().unwrap(), crate::upstream::Outcome::Status(503));
        assert!(clusters(&rt).lines().any(|l| l == format!("{c}::10.0.0.5:8080::health_flags::/failed_outlier_check")));
        assert!(
            stats(&rt, &StatsQuery::default())
                .contains(&format!("cluster.{c}.outlier_detection.ejections_active: 1\n"))
        );
    }
}
