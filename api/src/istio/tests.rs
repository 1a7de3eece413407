use super::*;

#[test]
fn every_istio_crd_serves_v1_v1beta1_and_v1alpha3_with_one_stored() {
    let crds = crds();
    assert_eq!(crds.len(), 8);
    // EnvoyFilter exists only as v1alpha3 in Istio too.
    let (envoy_filter, crds): (Vec<_>, Vec<_>) =
        crds.into_iter().partition(|c| c.metadata.name.as_deref() == Some("envoyfilters.networking.istio.io"));
    let versions: Vec<_> =
        envoy_filter[0].spec.versions.iter().map(|v| (v.name.as_str(), v.served, v.storage)).collect();
    assert_eq!(versions, [("v1alpha3", true, true)]);
    for crd in &crds {
        let names: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["v1", "v1beta1", "v1alpha3"], "{}", crd.metadata.name.as_deref().unwrap_or(""));
        assert_eq!(crd.spec.versions.iter().filter(|v| v.storage).count(), 1);
        assert!(crd.spec.versions.iter().all(|v| v.served));
        let schema = |i: usize| serde_json::to_value(&crd.spec.versions[i].schema).unwrap();
        assert_eq!(schema(0), schema(2), "same schema in every version");
        assert!(crd.spec.names.categories.as_ref().unwrap().contains(&"istio-io".to_string()));
    }
}

#[test]
fn bookinfo_resources_parse_into_the_typed_model() {
    let vs: networking::VirtualService = serde_yaml::from_str(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    fault:
      delay: {percentage: {value: 100.0}, fixedDelay: 7s}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100.0}
"#,
    )
    .unwrap();
    assert_eq!(vs.spec.http[0].matches[0].headers["end-user"].exact.as_deref(), Some("jason"));
    assert_eq!(vs.spec.http[0].fault.as_ref().unwrap().delay.as_ref().unwrap().fixed_delay.as_deref(), Some("7s"));
    assert_eq!(vs.spec.http[1].route[1].weight, Some(50));
    let dr: networking::DestinationRule = serde_yaml::from_str(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n    outlierDetection: {consecutive5xxErrors: 7}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n",
    )
    .unwrap();
    let tp = dr.spec.traffic_policy.unwrap();
    assert_eq!(tp.tls.unwrap().mode, Some(networking::ClientTlsMode::ISTIO_MUTUAL));
    assert_eq!(tp.outlier_detection.unwrap().consecutive_5xx_errors, Some(7));
}
