//! The control plane: its ServiceAccount, Deployment, Service, PodDisruptionBudget and
//! HorizontalPodAutoscaler.

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
};
use serde_json::{Value, json};
use skein_api::{Autoscaling, MeshControlPlane};

use super::{
    CONTROL_PLANE, DEFAULT_REVISION, Desired, MESH_CONFIG_DIR, MESH_CONFIGMAP, MESH_UID, PORT_MONITORING, PORT_WEBHOOK,
    PORT_XDS, PORT_XDS_TLS, WEBHOOK_TLS_DIR, WEBHOOK_TLS_SECRET, ca_secret_name,
    meta::{metadata, selector_labels},
    namespace,
};
use crate::upgrade::catalog::Release;

/// Name of a revision's Deployment, Service and PodDisruptionBudget: `skein-controlplane` for
/// the `default` revision (in place), `skein-controlplane-<revision>` for the others.
pub fn name(revision: &str) -> String {
    match revision {
        DEFAULT_REVISION => CONTROL_PLANE.to_string(),
        rev => format!("{CONTROL_PLANE}-{rev}"),
    }
}

/// A ServiceAccount of the installation.
pub fn service_account(mcp: &MeshControlPlane, name: &str) -> Desired {
    Desired::new::<ServiceAccount>(
        true,
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(mcp, name, true, name),
        }),
    )
}

fn default_resources() -> Value {
    json!({"requests": {"cpu": "100m", "memory": "128Mi"}})
}

pub(super) fn resources<T: serde::Serialize>(r: Option<&T>) -> Value {
    r.and_then(|r| serde_json::to_value(r).ok()).unwrap_or_else(default_resources)
}

/// Hardened container security context: non-root, read-only root, no privilege, no capabilities.
pub(super) fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": MESH_UID,
        "runAsGroup": MESH_UID,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

pub(super) fn pod_security() -> Value {
    json!({"runAsNonRoot": true, "fsGroup": MESH_UID, "seccompProfile": {"type": "RuntimeDefault"}})
}

/// `host:port` of the control plane's TLS discovery service.
pub fn discovery_address(mcp: &MeshControlPlane) -> String {
    format!("{CONTROL_PLANE}.{}.svc:{PORT_XDS_TLS}", namespace(mcp))
}

pub(super) fn cluster_env(mcp: &MeshControlPlane) -> Vec<Value> {
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}}),
    ];
    if let Some(m) = &mcp.spec.multi_cluster {
        if let Some(c) = &m.cluster_name {
            env.push(json!({"name": "CLUSTER_ID", "value": c}));
        }
        if let Some(n) = &m.network {
            env.push(json!({"name": "ISTIO_META_NETWORK", "value": n}));
        }
    }
    env
}

/// A revision's control plane Deployment.
pub fn deployment(mcp: &MeshControlPlane, revision: &str, release: &Release) -> Desired {
    let ns = namespace(mcp);
    let cp = &mcp.spec.components.control_plane;
    let name = name(revision);
    let mut pod_labels = selector_labels(CONTROL_PLANE, revision);
    pod_labels["istio"] = json!("pilot");
    pod_labels["app.kubernetes.io/version"] = json!(release.version.to_string());
    let mut args = vec![
        "discovery".to_string(),
        format!("--namespace={ns}"),
        format!("--mesh-config={MESH_CONFIG_DIR}/mesh"),
        format!("--ca-secret={}", ca_secret_name(mcp)),
        format!("--webhook-tls-dir={WEBHOOK_TLS_DIR}"),
        format!("--revision={revision}"),
        format!("--proxy-image={}", release.proxy_image),
    ];
    if revision != DEFAULT_REVISION {
        // Sidecars of this revision dial its own Service, whose name its certificate carries.
        let host = format!("{name}.{ns}.svc");
        args.push(format!("--injected-discovery-address={host}:{PORT_XDS_TLS}"));
        args.push(format!("--tls-san={host}"));
    }
    Desired::new::<Deployment>(
        true,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(mcp, &name, true, CONTROL_PLANE),
            "spec": {
                "selector": {"matchLabels": selector_labels(CONTROL_PLANE, revision)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "serviceAccountName": CONTROL_PLANE,
                        "securityContext": pod_security(),
                        "containers": [{
                            "name": "discovery",
                            "image": release.control_plane_image,
                            "args": args,
                            "env": cluster_env(mcp),
                            "ports": [
                                {"name": "grpc-xds", "containerPort": PORT_XDS, "protocol": "TCP"},
                                {"name": "https-dns", "containerPort": PORT_XDS_TLS, "protocol": "TCP"},
                                {"name": "http-monitoring", "containerPort": PORT_MONITORING, "protocol": "TCP"},
                                {"name": "https-webhook", "containerPort": PORT_WEBHOOK, "protocol": "TCP"},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": PORT_MONITORING},
                                "periodSeconds": 3,
                            },
                            "resources": resources(cp.resources.as_ref()),
                            "securityContext": container_security(),
                            "volumeMounts": [
                                {"name": "mesh-config", "mountPath": MESH_CONFIG_DIR, "readOnly": true},
                                {"name": "webhook-tls", "mountPath": WEBHOOK_TLS_DIR, "readOnly": true},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }],
                        "volumes": [
                            {"name": "mesh-config", "configMap": {"name": MESH_CONFIGMAP}},
                            {"name": "webhook-tls", "secret": {"secretName": WEBHOOK_TLS_SECRET}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                        ],
                    },
                },
            },
        }),
    )
}

/// A control plane Service `name` (discovery, certificates, monitoring, webhook) selecting
/// the pods of `revision`.
pub fn service(mcp: &MeshControlPlane, name: &str, revision: &str) -> Desired {
    let port = |name: &str, p: i32| json!({"name": name, "port": p, "targetPort": p, "protocol": "TCP"});
    Desired::new::<Service>(
        true,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(mcp, name, true, CONTROL_PLANE),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(CONTROL_PLANE, revision),
                "ports": [
                    port("grpc-xds", PORT_XDS),
                    port("https-dns", PORT_XDS_TLS),
                    port("http-monitoring", PORT_MONITORING),
                    port("https-webhook", PORT_WEBHOOK),
                ],
            },
        }),
    )
}

/// `replicas` in a Deployment body, unless an autoscaler owns it: a field the operator applies
/// would be put back after every scaling, a fight with the HorizontalPodAutoscaler.
pub(super) fn set_replicas(deployment: &mut Desired, replicas: i32, autoscaling: Option<&Autoscaling>) {
    if autoscaling.is_none() {
        deployment.body["spec"]["replicas"] = json!(replicas);
    }
}

/// A HorizontalPodAutoscaler on CPU for Deployment `name` of `component`.
pub fn autoscaler(mcp: &MeshControlPlane, name: &str, component: &str, a: &Autoscaling) -> Desired {
    Desired::new::<HorizontalPodAutoscaler>(
        true,
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(mcp, name, true, component),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": a.target_cpu_utilization_percentage}}}],
            },
        }),
    )
}

/// A revision's PodDisruptionBudget (with more than one replica).
pub fn pdb(mcp: &MeshControlPlane, name: &str, revision: &str) -> Desired {
    Desired::new::<PodDisruptionBudget>(
        true,
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(mcp, name, true, CONTROL_PLANE),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": selector_labels(CONTROL_PLANE, revision)}},
        }),
    )
}
