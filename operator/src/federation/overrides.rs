//! Users' DestinationRules that turn mesh mTLS off for `.global` hosts.
//!
//! A sidecar takes the rule of its own namespace first, then the service's, then the root
//! namespace's (as Istio does), so a user's rule in a client namespace for
//! `reviews.default.global` or `*.global` that sets `tls.mode: DISABLE` (or `SIMPLE`, `MUTUAL`)
//! wins over the generated `ISTIO_MUTUAL` for that namespace's clients, and the peers' east-west
//! gateways, which route by the mesh's SNI, refuse them. The rule is the user's: it is reported
//! (`status.remoteClusters[].tlsOverrides`), not changed. A rule that sets no TLS mode is fine:
//! the control plane uses mesh mTLS for `MESH_INTERNAL` endpoints by itself.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::generate::GlobalHost;

/// The TLS modes other than `ISTIO_MUTUAL` that a DestinationRule `spec` sets: its traffic
/// policy's, its port-level settings', its subsets' (and theirs). Sorted, once each.
pub fn non_mesh_modes(spec: &Value) -> Vec<String> {
    let mut policies: Vec<&Value> = vec![&spec["trafficPolicy"]];
    policies.extend(spec["subsets"].as_array().into_iter().flatten().map(|s| &s["trafficPolicy"]));
    let mut modes = BTreeSet::new();
    for policy in policies {
        let ports = policy["portLevelSettings"].as_array().into_iter().flatten();
        for tls in std::iter::once(policy).chain(ports).map(|p| &p["tls"]) {
            if let Some(mode) = tls["mode"].as_str().filter(|m| *m != "ISTIO_MUTUAL") {
                modes.insert(mode.to_string());
            }
        }
    }
    modes.into_iter().collect()
}

/// Whether DestinationRule host `rule_host` applies to `host`: the same name, or a wildcard
/// (`*`, `*.global`, `*.default.global`) that covers it.
fn covers(rule_host: &str, host: &str) -> bool {
    rule_host == host
        || rule_host == "*"
        || rule_host.strip_prefix('*').is_some_and(|suffix| suffix.starts_with('.') && host.ends_with(suffix))
}

/// The rules among `rules` ((namespace, name, spec)) that set a TLS mode other than
/// `ISTIO_MUTUAL` for hosts of `plan`: a line saying so per rule, with the clusters whose
/// hosts it covers.
pub fn tls_overrides<'a>(
    rules: impl IntoIterator<Item = (&'a str, &'a str, &'a Value)>,
    plan: &BTreeMap<String, GlobalHost>,
) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for (namespace, name, spec) in rules {
        let Some(rule_host) = spec["host"].as_str() else { continue };
        let modes = non_mesh_modes(spec);
        if modes.is_empty() {
            continue;
        }
        // An exact host is one lookup; a wildcard is checked against every host.
        let covered: Vec<&GlobalHost> = if rule_host.starts_with('*') {
            plan.values().filter(|h| covers(rule_host, &h.host)).collect()
        } else {
            plan.get(rule_host).into_iter().collect()
        };
        let clusters: BTreeSet<String> = covered.iter().flat_map(|h| h.sources.iter().cloned()).collect();
        if clusters.is_empty() {
            continue;
        }
        let line = format!(
            "{namespace}/{name}: tls {} for {rule_host}; clients that use this rule cannot reach the peers' east-west gateways (set ISTIO_MUTUAL, or no tls)",
            modes.join(", ")
        );
        out.push((line, clusters));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn host(name: &str, sources: &[&str]) -> (String, GlobalHost) {
        let h = GlobalHost {
            host: name.into(),
            ports: vec![],
            endpoints: vec![],
            subsets: BTreeSet::new(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
        };
        (name.to_string(), h)
    }

    #[test]
    fn modes_other_than_istio_mutual_are_found_at_every_level() {
        for (spec, want) in [
            (json!({"host": "a.default.global", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}), vec![]),
            (json!({"host": "a.default.global"}), vec![]),
            (json!({"host": "a.default.global", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}), vec!["DISABLE"]),
            (
                json!({"host": "a", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "SIMPLE"}}]}}),
                vec!["SIMPLE"],
            ),
            (
                json!({"host": "a", "subsets": [{"name": "v2", "trafficPolicy": {"tls": {"mode": "MUTUAL"}}}, {"name": "v3", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}]}),
                vec!["DISABLE", "MUTUAL"],
            ),
        ] {
            assert_eq!(non_mesh_modes(&spec), want, "{spec}");
        }
    }

    #[test]
    fn rules_turning_mtls_off_for_global_hosts_are_reported_with_the_clusters_they_touch() {
        let plan: BTreeMap<String, GlobalHost> =
            [host("reviews.default.global", &["cluster2"]), host("ratings.shop.global", &["cluster2", "cluster3"])]
                .into_iter()
                .collect();
        let disable = json!({"host": "reviews.default.global", "trafficPolicy": {"tls": {"mode": "DISABLE"}}});
        let wildcard = json!({"host": "*.shop.global", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}});
        let fine = json!({"host": "reviews.default.global", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}});
        let elsewhere = json!({"host": "*.example.com", "trafficPolicy": {"tls": {"mode": "DISABLE"}}});
        let unknown_host = json!({"host": "details.default.global", "trafficPolicy": {"tls": {"mode": "DISABLE"}}});
        let rules = [
            ("default", "reviews-plain", &disable),
            ("shop", "shop-simple", &wildcard),
            ("default", "reviews-mtls", &fine),
            ("default", "example", &elsewhere),
            ("default", "details", &unknown_host),
        ];
        let got = tls_overrides(rules, &plan);
        let clusters = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].0.starts_with("default/reviews-plain: tls DISABLE for reviews.default.global"), "{}", got[0].0);
        assert_eq!(got[0].1, clusters(&["cluster2"]));
        assert!(got[1].0.starts_with("shop/shop-simple: tls SIMPLE for *.shop.global"), "{}", got[1].0);
        assert_eq!(got[1].1, clusters(&["cluster2", "cluster3"]));
        // `*` covers every host; `*.global` too; a wildcard never covers a host of another domain.
        assert!(covers("*", "a.b.global") && covers("*.global", "a.b.global"));
        assert!(!covers("*.global", "a.b.globalx") && !covers("*.b.global", "b.global"));
    }
}
