//! Gateways: ingress, egress and east-west, each a Deployment of the proxy and a Service.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use serde_json::{Value, json};
use skein_api::{
    GatewayComponent, MeshControlPlane, ServiceType,
    names::{CERT_DIR, ROOT_CERT_CONFIGMAP, ROOT_CERT_DIR, ROOT_CERT_FILE, TOKEN_AUDIENCE, TOKEN_DIR, TOKEN_FILE},
};

use super::{
    DEFAULT_REVISION, Desired, Facts, PORT_EAST_WEST, PORT_GATEWAY_STATUS, PORT_PROXY_METRICS, control_plane,
    meta::{common_labels, metadata, selector_labels},
};

/// A gateway kind and its fixed properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gateway {
    /// North-south ingress.
    Ingress,
    /// Egress.
    Egress,
    /// Multi-cluster east-west (SNI passthrough on 15443).
    EastWest,
}

impl Gateway {
    /// All gateways.
    pub const ALL: [Gateway; 3] = [Gateway::Ingress, Gateway::Egress, Gateway::EastWest];

    /// Object name, also the `app` label.
    pub fn name(self) -> &'static str {
        match self {
            Gateway::Ingress => "skein-ingressgateway",
            Gateway::Egress => "skein-egressgateway",
            Gateway::EastWest => "skein-eastwestgateway",
        }
    }

    /// Status component name (the spec's field name).
    pub fn component(self) -> &'static str {
        match self {
            Gateway::Ingress => "ingressGateway",
            Gateway::Egress => "egressGateway",
            Gateway::EastWest => "eastWestGateway",
        }
    }

    /// The `istio` label users select gateways with (`selector: {istio: ingressgateway}`).
    fn istio_label(self) -> &'static str {
        match self {
            Gateway::Ingress => "ingressgateway",
            Gateway::Egress => "egressgateway",
            Gateway::EastWest => "eastwestgateway",
        }
    }

    /// The gateway's settings in the spec, if any.
    pub fn spec(self, mcp: &MeshControlPlane) -> Option<&GatewayComponent> {
        let c = &mcp.spec.components;
        match self {
            Gateway::Ingress => c.ingress_gateway.as_ref(),
            Gateway::Egress => c.egress_gateway.as_ref(),
            Gateway::EastWest => c.east_west_gateway.as_ref(),
        }
    }

    /// Whether the spec installs this gateway (ingress is on unless disabled; others are off
    /// unless enabled, as in Istio's default profile).
    pub fn enabled(self, mcp: &MeshControlPlane) -> bool {
        let default = self == Gateway::Ingress;
        self.spec(mcp).and_then(|g| g.enabled).unwrap_or(default)
    }

    fn default_service_type(self) -> ServiceType {
        match self {
            Gateway::Egress => ServiceType::ClusterIP,
            Gateway::Ingress | Gateway::EastWest => ServiceType::LoadBalancer,
        }
    }

    /// (name, service port, container port) of each port the gateway's Service exposes.
    fn ports(self) -> &'static [(&'static str, i32, i32)] {
        match self {
            Gateway::Ingress => {
                &[("status-port", PORT_GATEWAY_STATUS, PORT_GATEWAY_STATUS), ("http2", 80, 8080), ("https", 443, 8443)]
            }
            Gateway::Egress => &[("http2", 80, 8080), ("https", 443, 8443)],
            Gateway::EastWest => {
                &[("status-port", PORT_GATEWAY_STATUS, PORT_GATEWAY_STATUS), ("tls", PORT_EAST_WEST, PORT_EAST_WEST)]
            }
        }
    }
}

/// A gateway's Deployment. Gateways follow the `default` tag: their pods keep
/// `istio.io/rev: default` (a selector cannot change) and run the active revision's proxy
/// image, dialling the stable control plane Service, so moving the tag rolls them forward and
/// a rollback rolls them back.
pub fn deployment(mcp: &MeshControlPlane, gw: Gateway, facts: Facts<'_>) -> Desired {
    let spec = gw.spec(mcp);
    let mut pod_labels = selector_labels(gw.name(), DEFAULT_REVISION);
    pod_labels["istio"] = json!(gw.istio_label());
    pod_labels["sidecar.istio.io/inject"] = json!("false");
    let mut env = control_plane::cluster_env(mcp);
    env.push(
        json!({"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}),
    );
    env.push(json!({"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.serviceAccountName"}}}));
    let mut ports: Vec<Value> = gw
        .ports()
        .iter()
        .map(|(name, _, target)| json!({"name": name, "containerPort": target, "protocol": "TCP"}))
        .collect();
    ports.push(json!({"name": "http-envoy-prom", "containerPort": PORT_PROXY_METRICS, "protocol": "TCP"}));
    Desired::new::<Deployment>(
        true,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(mcp, gw.name(), true, gw.name()),
            "spec": {
                "selector": {"matchLabels": selector_labels(gw.name(), DEFAULT_REVISION)},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "serviceAccountName": gw.name(),
                        "securityContext": control_plane::pod_security(),
                        "containers": [{
                            "name": "proxy",
                            "image": facts.release.proxy_image,
                            // A `router` proxy (Istio's `proxy router`): no capture, its node
                            // id from the downward API, its identity from the same token and
                            // root-certificate volumes an injected sidecar has.
                            "args": [
                                "run",
                                "--proxy-type=router",
                                format!("--discovery-address={}", control_plane::discovery_address(mcp)),
                                format!("--discovery-root-cert={ROOT_CERT_DIR}/{ROOT_CERT_FILE}"),
                                format!("--token-file={TOKEN_DIR}/{TOKEN_FILE}"),
                                format!("--cert-dir={CERT_DIR}"),
                                // Istio's default `terminationDrainDuration`: the Service
                                // drops the pod before its listeners close.
                                "--termination-drain-duration=5s".to_string(),
                            ],
                            "env": env,
                            "ports": ports,
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz/ready", "port": PORT_GATEWAY_STATUS},
                                "periodSeconds": 2,
                            },
                            "resources": control_plane::resources(spec.and_then(|s| s.resources.as_ref())),
                            "securityContext": control_plane::container_security(),
                            "volumeMounts": [
                                {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": true},
                                {"name": "istiod-ca-cert", "mountPath": ROOT_CERT_DIR, "readOnly": true},
                                {"name": "skein-certs", "mountPath": CERT_DIR},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }],
                        "volumes": [
                            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                                "audience": TOKEN_AUDIENCE, "expirationSeconds": 43200, "path": TOKEN_FILE}}]}},
                            {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
                            {"name": "skein-certs", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                        ],
                    },
                },
            },
        }),
    )
}

/// A gateway's Service (LoadBalancer for ingress and east-west by default).
pub fn service(mcp: &MeshControlPlane, gw: Gateway) -> Desired {
    let service_type = gw.spec(mcp).and_then(|s| s.service_type).unwrap_or_else(|| gw.default_service_type());
    let ports: Vec<Value> = gw
        .ports()
        .iter()
        .map(|(name, port, target)| json!({"name": name, "port": port, "targetPort": target, "protocol": "TCP"}))
        .collect();
    let mut labels = common_labels(mcp, gw.name());
    labels["istio"] = json!(gw.istio_label());
    let mut meta = metadata(mcp, gw.name(), true, gw.name());
    meta["labels"] = labels;
    let network = mcp.spec.multi_cluster.as_ref().and_then(|m| m.network.as_ref());
    if let (Gateway::EastWest, Some(net)) = (gw, network) {
        meta["labels"]["topology.istio.io/network"] = json!(net);
    }
    // Peers read the gateway's locality from these labels (the node labels' names).
    let locality = mcp.spec.multi_cluster.as_ref().and_then(|m| m.locality.as_deref());
    if let (Gateway::EastWest, Some(loc)) = (gw, locality) {
        let keys = ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];
        for (key, part) in keys.into_iter().zip(loc.split('/')) {
            meta["labels"][key] = json!(part);
        }
    }
    Desired::new::<Service>(
        true,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"type": service_type.as_str(), "selector": selector_labels(gw.name(), DEFAULT_REVISION), "ports": ports},
        }),
    )
}
