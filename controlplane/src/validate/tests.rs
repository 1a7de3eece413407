use super::*;

fn vs(yaml: &str) -> Errors {
    virtual_service(&serde_yaml::from_str(yaml).unwrap())
}

fn has(errs: &Errors, needle: &str) -> bool {
    errs.iter().any(|e| e.contains(needle))
}

#[test]
fn valid_virtual_service_passes() {
    let errs = vs(
        "hosts: [reviews]\nhttp:\n- match: [{headers: {end-user: {exact: jason}}}]\n  route: [{destination: {host: reviews, subset: v2}}]\n  timeout: 0.5s\n- route: [{destination: {host: reviews, subset: v1}, weight: 50}, {destination: {host: reviews, subset: v3}, weight: 50}]\n",
    );
    assert!(errs.is_empty(), "{errs:?}");
}

#[test]
fn virtual_service_errors_name_the_field() {
    let errs = vs(
        "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews, subset: v1}, weight: 70}, {destination: {host: reviews, subset: v3}, weight: 50}]\n",
    );
    assert!(has(&errs, "spec.http[0].route: weights sum to 120, not 100"), "{errs:?}");
    let errs =
        vs("hosts: [reviews]\nhttp:\n- match: [{uri: {regex: '/a(['}}]\n  route: [{destination: {host: reviews}}]\n");
    assert!(has(&errs, "spec.http[0].match[0].uri.regex: invalid regular expression"), "{errs:?}");
    let errs = vs("hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews}}]\n  timeout: soon\n");
    assert!(has(&errs, "spec.http[0].timeout"), "{errs:?}");
    let errs = vs(
        "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews}}]\n  fault: {abort: {httpStatus: 700, percentage: {value: 150}}}\n",
    );
    assert!(has(&errs, "fault.abort.httpStatus: 700") && has(&errs, "fault.abort.percentage.value: 150"), "{errs:?}");
    let errs = vs(
        "hosts: [reviews]\nhttp:\n- match: [{queryParams: {a: {exact: b}}}]\n  route: [{destination: {host: reviews}}]\n",
    );
    assert!(has(&errs, "spec.http[0].match[0].queryParams: not supported by Skein yet"), "{errs:?}");
    assert!(has(&vs("http: []"), "spec.hosts"));
    let errs =
        vs("hosts: [shop]\nhttp:\n- redirect: {scheme: ftp, port: 70000, derivePort: SOMEHOW, redirectCode: 200}\n");
    for e in [
        "spec.http[0].redirect.scheme: \"ftp\" is not http or https",
        "spec.http[0].redirect.port: 70000",
        "spec.http[0].redirect.derivePort: \"SOMEHOW\"",
        "spec.http[0].redirect.redirectCode: 200",
    ] {
        assert!(has(&errs, e), "{e}: {errs:?}");
    }
    assert!(vs("hosts: [shop]\nhttp:\n- redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}\n").is_empty());
}

#[test]
fn header_edits_are_checked_as_istio_checks_them() {
    let ok = vs(
        "hosts: [r]\nhttp:\n- headers: {request: {set: {x-a: b, ':authority': other, host: h}, add: {x-b: '50%%'}, remove: [x-c]}, response: {set: {x-d: e}}}\n  route: [{destination: {host: r}, headers: {request: {set: {x-e: f}}}}]\n",
    );
    assert!(ok.is_empty(), "{ok:?}");
    let errs = vs(
        "hosts: [r]\nhttp:\n- headers: {request: {remove: [host], set: {':path': /x, 'bad name': v}}, response: {set: {host: h, x-v: '%HOSTNAME%'}}}\n  route: [{destination: {host: r}, headers: {response: {add: {x-ctl: \"a\\u0001b\"}}}}]\n",
    );
    for e in [
        "spec.http[0].headers.request.remove[host]: invalid header \"host\": cannot set Host header",
        "spec.http[0].headers.request.set[:path]: invalid header \":path\": header cannot have \":\" prefix",
        "spec.http[0].headers.request.set[bad name]: not a valid header name",
        "spec.http[0].headers.response.set[host]: invalid header \"host\": cannot set Host header",
        "spec.http[0].headers.response.set[x-v]: Envoy's %VARIABLE% substitution in header values is not supported by Skein yet",
        "spec.http[0].route[0].headers.response.add[x-ctl]: the value holds control characters",
    ] {
        assert!(has(&errs, e), "{e}: {errs:?}");
    }
}

#[test]
fn destination_rule_errors_name_the_field() {
    let dr = |y: &str| destination_rule(&serde_yaml::from_str(y).unwrap());
    assert!(
        dr("host: reviews\nsubsets: [{name: v1, labels: {version: v1}}]\ntrafficPolicy: {tls: {mode: ISTIO_MUTUAL}}")
            .is_empty()
    );
    let errs = dr("host: reviews\nsubsets: [{name: v1}, {name: v1}]\n");
    assert!(has(&errs, "spec.subsets[1].name: duplicate subset"), "{errs:?}");
    let errs = dr("host: reviews\ntrafficPolicy: {outlierDetection: {interval: often}}\n");
    assert!(has(&errs, "spec.trafficPolicy.outlierDetection.interval"), "{errs:?}");
    let errs =
        dr("host: reviews\ntrafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}\n");
    assert!(has(&errs, "mutually exclusive"), "{errs:?}");
}

#[test]
fn locality_lb_settings_are_checked_as_istio_checks_them() {
    let dr = |y: &str| destination_rule(&serde_yaml::from_str(y).unwrap());
    let od = "outlierDetection: {consecutive5xxErrors: 1}";
    assert!(dr(&format!("host: h\ntrafficPolicy: {{{od}, loadBalancer: {{localityLbSetting: {{enabled: true, failover: [{{from: region1, to: region2}}]}}}}}}")).is_empty());
    let errs = dr(
        "host: h\ntrafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r1}, {from: r1/z, to: 'r*'}]}}}",
    );
    for e in [
        "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]: locality lb failover settings must specify different regions",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[1]: locality lb failover only specify region",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[1]: locality lb failover region should not contain '*' wildcard",
    ] {
        assert!(has(&errs, e), "{e}: {errs:?}");
    }
    let errs = dr(
        "host: h\ntrafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: r1/*, to: {r1/*: 100}}], failover: [{from: r1, to: r2}]}}}",
    );
    assert!(has(&errs, "can not simultaneously specify 'distribute' and 'failover'"), "{errs:?}");
    // Weighted distribution is refused by name rather than accepted with no effect.
    let errs = dr(
        "host: h\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {localityLbSetting: {distribute: [{from: r1/*, to: {r1/*: 80, r2/*: 20}}]}}}]}",
    );
    assert!(
        has(
            &errs,
            "spec.trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting.distribute: not supported by Skein yet"
        ),
        "{errs:?}"
    );
    let errs = dr(
        "host: h\ntrafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r2}], failoverPriority: [topology.kubernetes.io/zone]}}}",
    );
    assert!(
        has(&errs, "can not simultaneously set 'failover' and topology label 'topology.kubernetes.io/zone'"),
        "{errs:?}"
    );
    // Failover without outlier detection is accepted with Istio's warning: it never happens.
    let spec = serde_yaml::from_str(
        "host: h\ntrafficPolicy: {loadBalancer: {localityLbSetting: {failoverPriority: [version]}}}",
    )
    .unwrap();
    assert!(destination_rule(&spec).is_empty());
    assert_eq!(
        destination_rule_warnings(&spec),
        vec![format!("spec.trafficPolicy.loadBalancer.localityLbSetting: {FAILOVER_NEEDS_OUTLIER_DETECTION}")]
    );
}

#[test]
fn service_entry_and_policy_errors_name_the_field() {
    let se = |y: &str| service_entry(&serde_yaml::from_str(y).unwrap());
    let errs = se(
        "hosts: [a.example.com]\nresolution: STATIC\nendpoints: [{address: a.example.com}]\nports: [{number: 80}, {number: 80}]\n",
    );
    assert!(has(&errs, "spec.endpoints[0].address: resolution STATIC needs an IP"), "{errs:?}");
    assert!(has(&errs, "spec.ports[1].number: duplicate port 80"), "{errs:?}");
    let ap = |y: &str| authorization_policy(&serde_yaml::from_str(y).unwrap());
    assert!(ap("{}").is_empty(), "allow-nothing is valid");
    let errs = ap(
        "action: CUSTOM\nrules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}], to: [{operation: {ports: [http]}}]}]\n",
    );
    assert!(has(&errs, "spec.action: CUSTOM"), "{errs:?}");
    assert!(has(&errs, "spec.rules[0].when[0].key"), "{errs:?}");
    assert!(has(&errs, "spec.rules[0].to[0].operation.ports: \"http\""), "{errs:?}");
    let pa = |y: &str| peer_authentication(&serde_yaml::from_str(y).unwrap());
    assert!(has(&pa("portLevelMtls: {'8080': {mode: DISABLE}}"), "requires a workload selector"));
}

#[test]
fn a_sidecar_is_refused_naming_what_skein_does_not_apply_or_what_is_malformed() {
    let sc = |yaml: &str| sidecar(&serde_yaml::from_str(yaml).unwrap());
    let ok = sc(
        "egress:\n- hosts: ['./*', 'istio-system/*', '*/*.example.com', '~/*', 'prod/api.prod.svc.cluster.local']\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    );
    assert!(ok.is_empty(), "{ok:?}");
    assert!(sc("workloadSelector: {labels: {app: ratings}}\noutboundTrafficPolicy: {mode: ALLOW_ANY}\n").is_empty());
    let errs = sc("ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  defaultEndpoint: 127.0.0.1:8080\n");
    assert!(has(&errs, "spec.ingress: not supported by Skein yet"), "{errs:?}");
    let errs = sc(
        "egress:\n- port: {number: 3306, protocol: MYSQL, name: mysql}\n  bind: 127.0.0.1\n  captureMode: NONE\n  hosts: ['*/mysql.example.com']\n- hosts: ['./*']\n",
    );
    for needle in [
        "spec.egress: Skein supports one",
        "spec.egress[0].port: not supported",
        "spec.egress[0].bind",
        "spec.egress[0].captureMode",
    ] {
        assert!(has(&errs, needle), "{needle}: {errs:?}");
    }
    let errs = sc("egress:\n- hosts: [reviews, 'a*/b', './', './a.*.com', '*/x/y']\n");
    for (i, why) in [
        (0, "is not <namespace>/<dnsName>"),
        (1, "invalid namespace"),
        (2, "invalid dnsName"),
        (3, "invalid dnsName"),
        (4, "invalid namespace"),
    ] {
        assert!(has(&errs, &format!("spec.egress[0].hosts[{i}]")) && has(&errs, why), "{i} {why}: {errs:?}");
    }
    assert!(has(&sc("egress:\n- hosts: []\n"), "spec.egress[0].hosts: at least one host"));
    let errs = sc("outboundTrafficPolicy: {mode: SOMETIMES, egressProxy: {host: egress.example.com}}\n");
    assert!(has(&errs, "spec.outboundTrafficPolicy.mode: \"SOMETIMES\""), "{errs:?}");
    assert!(has(&errs, "spec.outboundTrafficPolicy.egressProxy: not supported"), "{errs:?}");
}
