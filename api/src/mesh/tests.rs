use super::*;
use kube::CustomResourceExt;

#[test]
fn empty_spec_takes_documented_defaults() {
    let spec: MeshControlPlaneSpec = serde_json::from_str("{}").unwrap();
    assert_eq!(spec.version, None);
    assert_eq!(spec.channel, Channel::STABLE);
    assert_eq!(spec.namespace, "istio-system");
    assert_eq!(spec.update_strategy.type_, UpdateStrategyType::InPlace);
    assert_eq!(spec.update_strategy.inactive_revision_deletion_grace_period_seconds, 30);
    assert_eq!(spec.components.control_plane.replicas, 1);
    assert_eq!(spec.mesh_config.trust_domain, "cluster.local");
    assert_eq!(spec.mesh_config.outbound_traffic_policy.mode, OutboundMode::AllowAny);
    assert_eq!(spec.security.root_ca.type_, RootCaType::SelfSigned);
}

#[test]
fn spec_reads_istio_style_field_names() {
    let spec: MeshControlPlaneSpec = serde_yaml::from_str(
        r#"
version: v1.0-latest
updateStrategy: {type: RevisionBased, inactiveRevisionDeletionGracePeriodSeconds: 5}
components:
  eastWestGateway: {enabled: true, serviceType: NodePort}
meshConfig:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
security:
  rootCA: {type: Secret, secretName: cacerts}
multiCluster: {clusterName: east, network: net1, meshID: mesh1}
"#,
    )
    .unwrap();
    assert_eq!(spec.update_strategy.type_, UpdateStrategyType::RevisionBased);
    assert_eq!(spec.components.east_west_gateway.unwrap().service_type, Some(ServiceType::NodePort));
    assert_eq!(spec.mesh_config.outbound_traffic_policy.mode, OutboundMode::RegistryOnly);
    assert_eq!(spec.security.root_ca.secret_name.as_deref(), Some("cacerts"));
    assert_eq!(spec.multi_cluster.unwrap().mesh_id.as_deref(), Some("mesh1"));
}

#[test]
fn crd_is_cluster_scoped_with_status_short_name_and_columns() {
    let crd = MeshControlPlane::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["mcp".to_string()][..]));
    let v = &crd.spec.versions[0];
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<_> = v.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cols, ["Version", "Channel", "Revision", "Ready", "Age"]);
}

#[test]
fn a_new_object_reads_as_not_yet_observed() {
    let crd = crate::mesh::crd();
    let schema = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
    let status = &schema.properties.as_ref().unwrap()["status"];
    assert_eq!(status.default.as_ref().unwrap().0, serde_json::json!({"observedGeneration": 0}));
    assert_eq!(MeshControlPlane::crd().spec.names, crd.spec.names, "otherwise the derived CRD");
}

#[test]
fn crd_schema_carries_server_side_validation() {
    let json = serde_json::to_string(&MeshControlPlane::crd()).unwrap();
    assert!(json.contains(r#""rule":"self == oldSelf""#), "namespace immutability");
    assert!(json.contains("has(self.secretName)"), "secret root CA needs a name");
    assert!(json.contains("has(self.tracing)"), "tracing needs an address");
    assert!(json.contains(r#""x-kubernetes-list-type":"map""#));
    assert!(json.contains(r#""pattern":"^(stable|fast|candidate)(-[0-9]+\\.[0-9]+)?$""#), "{json}");
    assert!(json.contains(r#""enum":["ALLOW_ANY","REGISTRY_ONLY"]"#));
}
