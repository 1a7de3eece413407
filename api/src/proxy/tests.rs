use std::time::Duration;

use super::*;

const BOOKINFO: &str = r#"
version: "1"
outboundTrafficPolicy: REGISTRY_ONLY
listeners:
  - {name: outbound, address: "127.0.0.1:15001"}
virtualHosts:
  - name: reviews
    domains: [reviews, reviews.default.svc.cluster.local]
    routes:
      - name: jason
        match: [{headers: {end-user: {exact: jason}}}]
        route: [{cluster: "outbound|9080|v2|reviews"}]
        fault: {abort: {httpStatus: 500, percentage: 100}}
      - name: split
        route:
          - {cluster: "outbound|9080|v1|reviews", weight: 50}
          - {cluster: "outbound|9080|v3|reviews", weight: 50}
        timeout: 0.5s
        retries: {attempts: 3, perTryTimeout: 2s}
        mirror: "outbound|9080|v2|reviews"
        mirrorPercentage: 100
clusters:
  - {name: "outbound|9080|v1|reviews", endpoints: ["127.0.0.1:9081"]}
  - {name: "outbound|9080|v2|reviews", endpoints: ["127.0.0.1:9082"]}
  - {name: "outbound|9080|v3|reviews", endpoints: ["127.0.0.1:9083"], connectTimeout: 250ms}
"#;

fn bookinfo() -> ProxyConfig {
    serde_yaml::from_str(BOOKINFO).unwrap()
}

#[test]
fn bookinfo_style_config_parses_and_validates() {
    let c = bookinfo();
    c.validate().unwrap();
    let r = &c.virtual_hosts[0].routes[1];
    assert_eq!(r.timeout, Some(Duration::from_millis(500)));
    assert_eq!(r.retries.as_ref().unwrap().per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(r.retries.as_ref().unwrap().retry_on, "connect-failure,reset,503");
    assert_eq!(c.outbound_traffic_policy, OutboundPolicy::RegistryOnly);
    assert_eq!(c.clusters[2].connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(c.virtual_hosts[0].routes[0].matches[0].headers["end-user"], StringMatch::Exact("jason".into()));
}

#[test]
fn config_round_trips_through_yaml() {
    let c = bookinfo();
    let back: ProxyConfig = serde_yaml::from_str(&serde_yaml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

fn err(mutate: impl FnOnce(&mut ProxyConfig)) -> String {
    let mut c = bookinfo();
    mutate(&mut c);
    c.validate().unwrap_err().to_string()
}

#[test]
fn weights_not_summing_to_100_are_rejected_with_the_path() {
    let e = err(|c| c.virtual_hosts[0].routes[1].route[0].weight = 60);
    assert_eq!(e, "virtualHosts[reviews].routes[1].route: weights sum to 110, not 100");
}

#[test]
fn unknown_cluster_is_rejected() {
    let e = err(|c| c.virtual_hosts[0].routes[0].route[0].cluster = "outbound|9080|v9|reviews".into());
    assert!(e.starts_with("virtualHosts[reviews].routes[0].route[0].cluster: unknown cluster"), "{e}");
    let e = err(|c| c.virtual_hosts[0].routes[1].mirror = Some("nope".into()));
    assert!(e.contains(".mirror: unknown cluster"), "{e}");
}

#[test]
fn bad_regex_is_rejected() {
    let e = err(|c| c.virtual_hosts[0].routes[0].matches[0].uri = Some(StringMatch::Regex("(unclosed".into())));
    assert!(e.starts_with("virtualHosts[reviews].routes[0].match[0].uri: invalid regex"), "{e}");
}

#[test]
fn out_of_range_percentages_and_statuses_are_rejected() {
    assert!(err(|c| c.virtual_hosts[0].routes[1].mirror_percentage = Some(101.0)).contains("mirrorPercentage"));
    assert!(
        err(|c| c.virtual_hosts[0].routes[0].fault.as_mut().unwrap().abort.as_mut().unwrap().http_status = 42)
            .contains("httpStatus")
    );
    assert!(
        err(|c| c.virtual_hosts[0].routes[0].redirect = Some(Redirect { redirect_code: 301, ..Default::default() }))
            .contains("mutually exclusive")
    );
    let scheme = err(|c| {
        let r = &mut c.virtual_hosts[0].routes[0];
        r.route.clear();
        r.redirect = Some(Redirect { redirect_code: 301, scheme: Some("ftp".into()), ..Default::default() });
    });
    assert!(scheme.contains("redirect.scheme") && scheme.contains("not http or https"), "{scheme}");
}

#[test]
fn duplicate_names_are_rejected() {
    assert!(err(|c| c.clusters.push(c.clusters[0].clone())).contains("duplicate cluster"));
    assert!(err(|c| c.virtual_hosts.push(c.virtual_hosts[0].clone())).contains("duplicate virtual host"));
}

#[test]
fn unknown_fields_and_bad_durations_fail_to_parse() {
    assert!(serde_yaml::from_str::<ProxyConfig>("listners: []").is_err());
    let bad = BOOKINFO.replace("timeout: 0.5s", "timeout: 5 parsecs");
    let e = serde_yaml::from_str::<ProxyConfig>(&bad).unwrap_err().to_string();
    assert!(e.contains("duration"), "{e}");
}

#[test]
fn regexes_match_the_whole_value() {
    let r = compile_regex("/api/v[0-9]+").unwrap();
    assert!(r.is_match("/api/v2"));
    assert!(!r.is_match("/api/v2/extra"));
}

#[test]
fn durations_parse_istio_units() {
    assert_eq!(duration::parse("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(duration::parse("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(duration::parse("250ms").unwrap(), Duration::from_millis(250));
    assert!(duration::parse("-1s").is_err());
    assert!(duration::parse("10").is_err());
}

fn listener_err(yaml: &str) -> String {
    let mut c = bookinfo();
    c.listeners.push(serde_yaml::from_str(yaml).unwrap());
    c.validate().unwrap_err().to_string()
}

#[test]
fn listener_fields_that_do_not_fit_the_protocol_are_rejected() {
    assert_eq!(
        listener_err("{name: cap, address: '0.0.0.0:15006', capture: INBOUND}"),
        "listeners[cap].protocol: a capture listener detects the protocol: set AUTO"
    );
    assert_eq!(
        listener_err("{name: a, address: '0.0.0.0:1', protocol: AUTO}"),
        "listeners[a].protocol: AUTO is only for capture listeners (set capture)"
    );
    assert_eq!(
        listener_err("{name: t, address: '0.0.0.0:1', protocol: TLS}"),
        "listeners[t].tlsRoutes: a TLS listener needs routes"
    );
    assert_eq!(
        listener_err("{name: t, address: '0.0.0.0:1', protocol: TLS, tlsRoutes: [{sniHosts: [a], cluster: nope}]}"),
        r#"listeners[t].tlsRoutes[0].cluster: unknown cluster "nope""#
    );
    assert_eq!(
        listener_err(
            "{name: g, address: '0.0.0.0:1', protocol: TCP, cluster: 'outbound|9080|v1|reviews', serverTls: {credentials: [{hosts: [a], certChain: /c, privateKey: /k}]}}"
        ),
        "listeners[g].serverTls: only HTTP listeners terminate gateway TLS"
    );
    assert_eq!(
        listener_err("{name: g, address: '0.0.0.0:1', serverTls: {credentials: []}}"),
        "listeners[g].serverTls.credentials: at least one certificate is required"
    );
    assert_eq!(
        listener_err("{name: h, address: '0.0.0.0:1', passthroughHosts: ['*.local']}"),
        "listeners[h].passthroughHosts: only AUTO_PASSTHROUGH listeners have passthrough hosts"
    );
}

#[test]
fn a_delta_replaces_adds_and_removes_clusters_by_name_and_keeps_the_rest() {
    let base = bookinfo();
    let mut v1 = base.clusters[0].clone();
    v1.endpoints = vec!["127.0.0.1:9999".parse().unwrap()];
    let added = Cluster { name: "outbound|9080|v4|reviews".into(), ..base.clusters[1].clone() };
    let delta = ConfigDelta {
        clusters: vec![added.clone(), v1.clone()],
        removed_clusters: vec!["outbound|9080|v3|reviews".into()],
    };
    // Through the wire, as the control plane sends it.
    let wire = wire::pb::ConfigDelta::from(&delta);
    let delta = ConfigDelta::try_from(wire).unwrap();
    let out = delta.apply_to(&base);
    assert_eq!(out.clusters, vec![v1, base.clusters[1].clone(), added]);
    assert_eq!(out.virtual_hosts, base.virtual_hosts);
    assert_eq!(out.listeners, base.listeners);
    // Removing a cluster a route still names is a config error when applied, not silently kept.
    assert!(out.validate().unwrap_err().to_string().contains("v3"), "{:?}", out.validate());
}

#[test]
fn a_name_table_entry_must_be_a_queryable_lower_case_name_with_an_address() {
    let cfg = |host: &str, addrs: &str| -> ProxyConfig {
        serde_yaml::from_str(&format!("nameTable: [{{host: '{host}', addresses: [{addrs}]}}]")).unwrap()
    };
    assert!(cfg("reviews.default.global", "240.1.2.3").validate().is_ok());
    assert!(cfg("reviews", "'fd00::1'").validate().is_ok());
    let err = |c: ProxyConfig| c.validate().unwrap_err().to_string();
    assert_eq!(err(cfg("*.global", "240.1.2.3")), r#"nameTable[0].host: "*.global" is not a lower-case DNS name"#);
    assert!(err(cfg("Reviews.global", "240.1.2.3")).starts_with("nameTable[0].host:"));
    assert!(err(cfg("a..global", "240.1.2.3")).starts_with("nameTable[0].host:"));
    assert!(err(cfg(&format!("{}.global", "a".repeat(64)), "240.1.2.3")).starts_with("nameTable[0].host:"));
    assert_eq!(err(cfg("a.global", "")), "nameTable[0].addresses: a name needs at least one address");
}
