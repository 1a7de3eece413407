//! The mesh config, in Istio's MeshConfig format.

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::json;
use skein_api::{MeshControlPlane, OutboundMode};

use super::{CONTROL_PLANE, Desired, MESH_CONFIGMAP, control_plane, gateway::Gateway, meta::metadata, namespace};

/// Istio-format MeshConfig, so the control plane reads the settings users know.
pub fn mesh_config_yaml(mcp: &MeshControlPlane) -> String {
    let mc = &mcp.spec.mesh_config;
    let mut mesh = json!({
        "trustDomain": mc.trust_domain,
        "rootNamespace": mc.root_namespace.as_deref().unwrap_or(namespace(mcp)),
        "outboundTrafficPolicy": {"mode": match mc.outbound_traffic_policy.mode {
            OutboundMode::AllowAny => "ALLOW_ANY",
            OutboundMode::RegistryOnly => "REGISTRY_ONLY",
        }},
        "enableTracing": mc.enable_tracing,
        // Kubernetes Ingresses of class `istio` are served by Skein's ingress gateway, and
        // report its Service's addresses; none are served when the mesh has no ingress gateway.
        "ingressClass": "istio",
        "ingressControllerMode": if Gateway::Ingress.enabled(mcp) { "STRICT" } else { "OFF" },
        "ingressService": Gateway::Ingress.name(),
        "ingressSelector": "ingressgateway",
        "defaultConfig": {"discoveryAddress": control_plane::discovery_address(mcp)},
    });
    if let Some(f) = &mc.access_log_file {
        mesh["accessLogFile"] = json!(f);
    }
    if let Some(t) = &mc.tracing {
        mesh["defaultConfig"]["tracing"] = json!({"zipkin": {"address": t.address}});
    }
    if let Some(id) = mcp.spec.multi_cluster.as_ref().and_then(|m| m.mesh_id.as_ref()) {
        mesh["defaultConfig"]["meshId"] = json!(id);
    }
    serde_yaml::to_string(&mesh).unwrap_or_default()
}

/// The mesh config ConfigMap the control plane mounts.
pub fn config_map(mcp: &MeshControlPlane) -> Desired {
    Desired::new::<ConfigMap>(
        true,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(mcp, MESH_CONFIGMAP, true, CONTROL_PLANE),
            "data": {"mesh": mesh_config_yaml(mcp)},
        }),
    )
}
