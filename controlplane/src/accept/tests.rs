use super::*;

fn vs(name: &str, uid: &str, generation: i64, created: i64, spec: &str) -> Arc<VirtualService> {
    let t = jiff::Timestamp::from_second(1_700_000_000 + created).unwrap();
    Arc::new(
        serde_yaml::from_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default, uid: {uid}, generation: {generation}, creationTimestamp: '{t}'}}\nspec: {spec}\n"
        ))
        .unwrap(),
    )
}

fn dr_with_subsets() -> Arc<DestinationRule> {
    Arc::new(
        serde_yaml::from_str(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default, uid: d1, generation: 1}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}\n",
        )
        .unwrap(),
    )
}

const GOOD: &str = "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}, weight: 50}, {destination: {host: reviews, subset: v2}, weight: 50}]}]}";
const BAD: &str = "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}, weight: 70}, {destination: {host: reviews, subset: v2}, weight: 50}]}]}";

#[test]
fn an_invalid_edit_is_rejected_and_the_last_good_version_stays_in_force() {
    let mut lg = LastGood::default();
    let mut cur = Current { destination_rules: vec![dr_with_subsets()], ..Default::default() };
    cur.virtual_services = vec![vs("reviews", "u1", 1, 0, GOOD)];
    let (istio, verdicts) = lg.accept(&cur, "cluster.local");
    assert_eq!(istio.virtual_services[0].metadata.generation, Some(1));
    assert!(verdicts.iter().all(Verdict::accepted));

    cur.virtual_services = vec![vs("reviews", "u1", 2, 0, BAD)];
    let (istio, verdicts) = lg.accept(&cur, "cluster.local");
    assert_eq!(istio.virtual_services.len(), 1);
    assert_eq!(istio.virtual_services[0].metadata.generation, Some(1), "generation 1 stays in force");
    let v = verdicts.iter().find(|v| v.kind == "VirtualService").unwrap();
    assert!(!v.accepted());
    assert_eq!(v.last_good, Some(1));
    assert!(
        v.message().contains("weights sum to 120") && v.message().contains("(generation 1) stays in force"),
        "{}",
        v.message()
    );

    // Deleted and re-created with the same bad spec: nothing of the old object comes back.
    cur.virtual_services = vec![];
    lg.accept(&cur, "cluster.local");
    cur.virtual_services = vec![vs("reviews", "u2", 1, 5, BAD)];
    let (istio, verdicts) = lg.accept(&cur, "cluster.local");
    assert!(istio.virtual_services.is_empty());
    assert!(verdicts.iter().find(|v| v.kind == "VirtualService").unwrap().message().ends_with("not applied"));
}

#[test]
fn a_newer_virtual_service_for_a_routed_host_is_rejected_as_a_conflict() {
    let mut lg = LastGood::default();
    let cur = Current {
        destination_rules: vec![dr_with_subsets()],
        virtual_services: vec![vs("reviews-mirror", "u2", 1, 10, GOOD), vs("reviews", "u1", 1, 0, GOOD)],
        ..Default::default()
    };
    let (istio, verdicts) = lg.accept(&cur, "cluster.local");
    assert_eq!(istio.virtual_services.len(), 1);
    assert_eq!(istio.virtual_services[0].name_any(), "reviews");
    let rejected = verdicts.iter().find(|v| v.name == "reviews-mirror").unwrap();
    assert!(
        rejected.errors[0]
            .contains("host reviews.default.svc.cluster.local is already routed by VirtualService default/reviews"),
        "{:?}",
        rejected.errors
    );
}

#[test]
fn a_route_to_an_undefined_subset_is_rejected_until_a_destination_rule_defines_it() {
    let mut lg = LastGood::default();
    let mut cur = Current { virtual_services: vec![vs("reviews", "u1", 1, 0, GOOD)], ..Default::default() };
    let (istio, verdicts) = lg.accept(&cur, "cluster.local");
    assert!(istio.virtual_services.is_empty());
    assert!(verdicts[0].errors[0].contains("spec.http[0].route[0].destination.subset: no DestinationRule for reviews.default.svc.cluster.local defines subset \"v1\""), "{:?}", verdicts[0].errors);
    cur.destination_rules = vec![dr_with_subsets()];
    let (istio, _) = lg.accept(&cur, "cluster.local");
    assert_eq!(istio.virtual_services.len(), 1);
}

#[test]
fn deprecated_consecutive_errors_is_accepted_with_istios_warning() {
    let dr: Arc<DestinationRule> = Arc::new(
        serde_yaml::from_str(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default, uid: d1, generation: 1}\nspec: {host: reviews, trafficPolicy: {outlierDetection: {consecutiveErrors: 7}, portLevelSettings: [{port: {number: 9080}, outlierDetection: {consecutive5xxErrors: 2}}]}, subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {outlierDetection: {consecutiveErrors: 3}}}]}\n",
        )
        .unwrap(),
    );
    let cur = Current { destination_rules: vec![dr], ..Default::default() };
    let (istio, verdicts) = LastGood::default().accept(&cur, "cluster.local");
    assert_eq!(istio.destination_rules.len(), 1, "a warning does not reject");
    let v = &verdicts[0];
    assert!(v.accepted());
    assert_eq!(
        v.warnings,
        [
            format!(
                "spec.trafficPolicy.outlierDetection.consecutiveErrors: {}",
                validate::CONSECUTIVE_ERRORS_DEPRECATED
            ),
            format!(
                "spec.subsets[0].trafficPolicy.outlierDetection.consecutiveErrors: {}",
                validate::CONSECUTIVE_ERRORS_DEPRECATED
            ),
        ]
    );
    assert!(v.message().starts_with("accepted; warning: spec.trafficPolicy.outlierDetection.consecutiveErrors: outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead"), "{}", v.message());
    // Without the field there is nothing to warn about.
    let (_, verdicts) = LastGood::default()
        .accept(&Current { destination_rules: vec![dr_with_subsets()], ..Default::default() }, "cluster.local");
    assert!(verdicts[0].warnings.is_empty() && verdicts[0].message() == "accepted");
}

#[test]
fn a_second_sidecar_without_a_selector_in_a_namespace_is_refused_and_the_first_stays() {
    let sc = |name: &str, created: i64, spec: &str| -> Arc<Sidecar> {
        let t = jiff::Timestamp::from_second(1_700_000_000 + created).unwrap();
        Arc::new(
            serde_yaml::from_str(&format!(
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: default, uid: {name}, generation: 1, creationTimestamp: '{t}'}}\nspec: {spec}\n"
            ))
            .unwrap(),
        )
    };
    let cur = Current {
        sidecars: vec![
            sc("late", 5, "{egress: [{hosts: ['*/*']}]}"),
            sc("first", 0, "{egress: [{hosts: ['./*']}]}"),
            sc("ratings", 9, "{workloadSelector: {labels: {app: ratings}}, egress: [{hosts: ['./*']}]}"),
            sc("bad", 1, "{ingress: [{port: {number: 80}}], workloadSelector: {labels: {app: x}}}"),
        ],
        ..Default::default()
    };
    let (istio, verdicts) = LastGood::default().accept(&cur, "cluster.local");
    let mut in_force: Vec<String> = istio.sidecars.iter().map(|s| s.name_any()).collect();
    in_force.sort();
    assert_eq!(in_force, ["first", "ratings"]);
    let late = verdicts.iter().find(|v| v.kind == "Sidecar" && v.name == "late").unwrap();
    assert!(
        late.message().contains("Sidecar default/first is the namespace's Sidecar without a workloadSelector"),
        "{}",
        late.message()
    );
    let bad = verdicts.iter().find(|v| v.name == "bad").unwrap();
    assert!(bad.message().contains("spec.ingress: not supported by Skein yet"), "{}", bad.message());
}
