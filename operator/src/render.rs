//! Desired state of an installation: a pure function from a `MeshControlPlane` (and the facts the
//! reconciler looked up: release, CA bundle) to the objects that must exist.
//!
//! Nothing here talks to the apiserver, so every choice about names, labels, ports and security
//! settings is unit-tested in `render/tests.rs`.

use k8s_openapi::ByteString;
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{Resource, ResourceExt, core::ApiResource};
use serde_json::{Value, json};
use skein_api::{GatewayComponent, MeshControlPlane, OutboundMode, RootCaType, ServiceType};

use crate::catalog::Release;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "skein-operator";
/// Label naming the `MeshControlPlane` an object belongs to (used to prune what is no longer
/// desired).
pub const OWNER_LABEL: &str = "mesh.skein.dev/owner";
/// `app.kubernetes.io/managed-by` value on everything the operator writes.
pub const MANAGED_BY: &str = "skein-operator";
/// Name of the control plane's Deployment, Service and ServiceAccount.
pub const CONTROL_PLANE: &str = "skein-controlplane";
/// Mesh config ConfigMap (key `mesh`, Istio's MeshConfig format).
pub const MESH_CONFIGMAP: &str = "skein-mesh";
/// Self-signed root CA Secret (Istio `cacerts` layout).
pub const SELF_SIGNED_CA_SECRET: &str = "skein-ca";
/// Serving certificate of the injection webhook, signed by the mesh CA.
pub const WEBHOOK_TLS_SECRET: &str = "skein-webhook-tls";
/// Revision name of an in-place installation.
pub const DEFAULT_REVISION: &str = "default";

/// gRPC, plaintext (in-cluster xDS).
pub const PORT_XDS: i32 = 15010;
/// gRPC over TLS (xDS and certificate signing).
pub const PORT_XDS_TLS: i32 = 15012;
/// Prometheus metrics and readiness.
pub const PORT_MONITORING: i32 = 15014;
/// Sidecar-injection webhook (HTTPS).
pub const PORT_WEBHOOK: i32 = 15017;
/// East-west gateway's SNI passthrough port.
pub const PORT_EAST_WEST: i32 = 15443;
/// Gateways' readiness port.
pub const PORT_GATEWAY_STATUS: i32 = 15021;

/// UID the mesh's containers run as (Istio's proxy UID, so iptables rules can exempt it).
const MESH_UID: i64 = 1337;

/// One object the operator keeps in place.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Group/version/kind/plural of the object.
    pub resource: ApiResource,
    /// Whether the object lives in a namespace (`spec.namespace`).
    pub namespaced: bool,
    /// `metadata.name`.
    pub name: String,
    /// The full object as applied (server-side apply body).
    pub body: Value,
}

impl Desired {
    pub(crate) fn new<K: Resource<DynamicType = ()>>(namespaced: bool, body: Value) -> Self {
        let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
        Self { resource: ApiResource::erase::<K>(&()), namespaced, name, body }
    }

    /// `Kind/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.resource.kind, self.name)
    }
}

/// The Istio API CRDs (`networking.istio.io`, `security.istio.io`) the control plane reads.
/// Shared by every MeshControlPlane and never owned by one: deleting a mesh must not delete
/// the users' VirtualServices with their CRD. Labelled so the operator can tell its own from an
/// Istio installation's.
pub fn istio_crds() -> Vec<Desired> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    skein_api::istio::crds()
        .into_iter()
        .map(|crd| {
            let mut body = serde_json::to_value(&crd).unwrap_or(Value::Null);
            body["apiVersion"] = json!("apiextensions.k8s.io/v1");
            body["kind"] = json!("CustomResourceDefinition");
            body["metadata"]["labels"] = json!({
                "app.kubernetes.io/part-of": "skein",
                "app.kubernetes.io/managed-by": MANAGED_BY,
            });
            Desired::new::<CustomResourceDefinition>(false, body)
        })
        .collect()
}

/// What the reconciler looked up for rendering.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Release resolved from the spec.
    pub release: &'a Release,
    /// PEM of the mesh root certificate (the webhook's `caBundle`).
    pub root_cert_pem: &'a str,
}

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

    fn spec(self, mcp: &MeshControlPlane) -> Option<&GatewayComponent> {
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
            Gateway::Ingress => &[("status-port", 15021, 15021), ("http2", 80, 8080), ("https", 443, 8443)],
            Gateway::Egress => &[("http2", 80, 8080), ("https", 443, 8443)],
            Gateway::EastWest => &[("status-port", 15021, 15021), ("tls", 15443, 15443)],
        }
    }
}

/// Namespace the installation lives in.
pub fn namespace(mcp: &MeshControlPlane) -> &str {
    &mcp.spec.namespace
}

/// Name of a cluster-scoped object, made unique per `MeshControlPlane`.
pub fn cluster_scoped_name(base: &str, mcp: &MeshControlPlane) -> String {
    format!("{base}-{}", mcp.name_any())
}

/// Name of the Secret holding the CA the control plane signs with.
pub fn ca_secret_name(mcp: &MeshControlPlane) -> &str {
    let root = &mcp.spec.security.root_ca;
    match (root.type_, root.secret_name.as_deref()) {
        (RootCaType::Secret, Some(name)) => name,
        _ => SELF_SIGNED_CA_SECRET,
    }
}

/// Labels every managed object carries.
pub fn common_labels(mcp: &MeshControlPlane, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/part-of": "skein",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        OWNER_LABEL: mcp.name_any(),
    })
}

fn metadata(mcp: &MeshControlPlane, name: &str, namespaced: bool, component: &str) -> Value {
    let owner = mcp.controller_owner_ref(&()).map(|o| serde_json::to_value(o).unwrap_or(Value::Null));
    let mut meta = json!({
        "name": name,
        "labels": common_labels(mcp, component),
        "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
    });
    if namespaced {
        meta["namespace"] = json!(namespace(mcp));
    }
    meta
}

fn default_resources() -> Value {
    json!({"requests": {"cpu": "100m", "memory": "128Mi"}})
}

fn resources<T: serde::Serialize>(r: Option<&T>) -> Value {
    r.and_then(|r| serde_json::to_value(r).ok()).unwrap_or_else(default_resources)
}

/// Hardened container security context: non-root, read-only root, no privilege, no capabilities.
fn container_security() -> Value {
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

fn pod_security() -> Value {
    json!({"runAsNonRoot": true, "fsGroup": MESH_UID, "seccompProfile": {"type": "RuntimeDefault"}})
}

fn discovery_address(mcp: &MeshControlPlane) -> String {
    format!("{CONTROL_PLANE}.{}.svc:{PORT_XDS_TLS}", namespace(mcp))
}

/// Every object of the installation, in apply order (identities and RBAC before workloads).
pub fn render(mcp: &MeshControlPlane, facts: Facts<'_>) -> Vec<Desired> {
    let mut out = Vec::new();
    out.push(service_account(mcp, CONTROL_PLANE));
    out.extend(control_plane_rbac(mcp));
    out.push(mesh_config_map(mcp));
    out.push(control_plane_deployment(mcp, facts));
    out.push(control_plane_service(mcp));
    if mcp.spec.components.control_plane.replicas > 1 {
        out.push(control_plane_pdb(mcp));
    }
    for gw in Gateway::ALL.into_iter().filter(|g| g.enabled(mcp)) {
        out.push(service_account(mcp, gw.name()));
        out.push(gateway_deployment(mcp, gw, facts));
        out.push(gateway_service(mcp, gw));
    }
    out.push(injection_webhook(mcp, facts));
    out
}

fn service_account(mcp: &MeshControlPlane, name: &str) -> Desired {
    Desired::new::<ServiceAccount>(
        true,
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(mcp, name, true, name),
        }),
    )
}

fn control_plane_rbac(mcp: &MeshControlPlane) -> Vec<Desired> {
    let name = cluster_scoped_name(CONTROL_PLANE, mcp);
    let ns = namespace(mcp);
    let read = json!(["get", "list", "watch"]);
    let subject = json!([{"kind": "ServiceAccount", "name": CONTROL_PLANE, "namespace": ns}]);
    vec![
        Desired::new::<ClusterRole>(
            false,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": metadata(mcp, &name, false, CONTROL_PLANE),
                "rules": [
                    // Service discovery: what the proxies route to.
                    {"apiGroups": [""], "resources": ["services", "pods", "namespaces", "nodes"], "verbs": read},
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
                    // The Istio API users write; status carries validation results.
                    {"apiGroups": ["networking.istio.io", "security.istio.io"], "resources": ["*"], "verbs": read},
                    {"apiGroups": ["networking.istio.io", "security.istio.io"], "resources": ["*/status"], "verbs": ["update", "patch"]},
                    // Authenticates proxies asking for certificates by their ServiceAccount token.
                    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                    // Publishes the root certificate to every namespace (istio-ca-root-cert).
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
                    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
                ],
            }),
        ),
        Desired::new::<ClusterRoleBinding>(
            false,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": metadata(mcp, &name, false, CONTROL_PLANE),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subject,
            }),
        ),
        // Secrets only in the control plane's own namespace, and only to read: the CA and the
        // webhook certificate are written by the operator.
        Desired::new::<Role>(
            true,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": metadata(mcp, CONTROL_PLANE, true, CONTROL_PLANE),
                "rules": [
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": read},
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
                ],
            }),
        ),
        Desired::new::<RoleBinding>(
            true,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": metadata(mcp, CONTROL_PLANE, true, CONTROL_PLANE),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROL_PLANE},
                "subjects": subject,
            }),
        ),
    ]
}

/// Istio-format MeshConfig, so the control plane reads the settings users know.
pub fn mesh_config_yaml(mcp: &MeshControlPlane) -> String {
    let mc = &mcp.spec.mesh_config;
    let mut mesh = json!({
        "trustDomain": mc.trust_domain,
        "rootNamespace": namespace(mcp),
        "outboundTrafficPolicy": {"mode": match mc.outbound_traffic_policy.mode {
            OutboundMode::AllowAny => "ALLOW_ANY",
            OutboundMode::RegistryOnly => "REGISTRY_ONLY",
        }},
        "enableTracing": mc.enable_tracing,
        "defaultConfig": {"discoveryAddress": discovery_address(mcp)},
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

fn mesh_config_map(mcp: &MeshControlPlane) -> Desired {
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

fn selector_labels(app: &str) -> Value {
    json!({"app": app, "istio.io/rev": DEFAULT_REVISION})
}

fn cluster_env(mcp: &MeshControlPlane) -> Vec<Value> {
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
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

fn control_plane_deployment(mcp: &MeshControlPlane, facts: Facts<'_>) -> Desired {
    let ns = namespace(mcp);
    let cp = &mcp.spec.components.control_plane;
    let mut pod_labels = selector_labels(CONTROL_PLANE);
    pod_labels["istio"] = json!("pilot");
    pod_labels["app.kubernetes.io/version"] = json!(facts.release.version.to_string());
    Desired::new::<Deployment>(
        true,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(mcp, CONTROL_PLANE, true, CONTROL_PLANE),
            "spec": {
                "replicas": cp.replicas,
                "selector": {"matchLabels": selector_labels(CONTROL_PLANE)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "serviceAccountName": CONTROL_PLANE,
                        "securityContext": pod_security(),
                        "containers": [{
                            "name": "discovery",
                            "image": facts.release.control_plane_image,
                            "args": [
                                "discovery",
                                format!("--namespace={ns}"),
                                "--mesh-config=/etc/skein/mesh/mesh".to_string(),
                                format!("--ca-secret={}", ca_secret_name(mcp)),
                                format!("--webhook-tls-dir=/etc/skein/webhook"),
                                format!("--revision={DEFAULT_REVISION}"),
                                format!("--proxy-image={}", facts.release.proxy_image),
                            ],
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
                                {"name": "mesh-config", "mountPath": "/etc/skein/mesh", "readOnly": true},
                                {"name": "webhook-tls", "mountPath": "/etc/skein/webhook", "readOnly": true},
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

fn control_plane_service(mcp: &MeshControlPlane) -> Desired {
    let port = |name: &str, p: i32| json!({"name": name, "port": p, "targetPort": p, "protocol": "TCP"});
    Desired::new::<Service>(
        true,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(mcp, CONTROL_PLANE, true, CONTROL_PLANE),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(CONTROL_PLANE),
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

fn control_plane_pdb(mcp: &MeshControlPlane) -> Desired {
    Desired::new::<PodDisruptionBudget>(
        true,
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(mcp, CONTROL_PLANE, true, CONTROL_PLANE),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": selector_labels(CONTROL_PLANE)}},
        }),
    )
}

fn gateway_deployment(mcp: &MeshControlPlane, gw: Gateway, facts: Facts<'_>) -> Desired {
    let spec = gw.spec(mcp);
    let mut pod_labels = selector_labels(gw.name());
    pod_labels["istio"] = json!(gw.istio_label());
    pod_labels["sidecar.istio.io/inject"] = json!("false");
    let mode = match gw {
        Gateway::Ingress | Gateway::Egress => "gateway",
        Gateway::EastWest => "east-west",
    };
    let mut ports: Vec<Value> = gw
        .ports()
        .iter()
        .map(|(name, _, target)| json!({"name": name, "containerPort": target, "protocol": "TCP"}))
        .collect();
    ports.push(json!({"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}));
    Desired::new::<Deployment>(
        true,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(mcp, gw.name(), true, gw.name()),
            "spec": {
                "replicas": spec.and_then(|s| s.replicas).unwrap_or(1),
                "selector": {"matchLabels": selector_labels(gw.name())},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "serviceAccountName": gw.name(),
                        "securityContext": pod_security(),
                        "containers": [{
                            "name": "proxy",
                            "image": facts.release.proxy_image,
                            "args": [
                                mode.to_string(),
                                format!("--discovery-address={}", discovery_address(mcp)),
                                format!("--trust-domain={}", mcp.spec.mesh_config.trust_domain),
                            ],
                            "env": cluster_env(mcp),
                            "ports": ports,
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz/ready", "port": PORT_GATEWAY_STATUS},
                                "periodSeconds": 2,
                            },
                            "resources": resources(spec.and_then(|s| s.resources.as_ref())),
                            "securityContext": container_security(),
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }],
                        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                    },
                },
            },
        }),
    )
}

fn gateway_service(mcp: &MeshControlPlane, gw: Gateway) -> Desired {
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
    Desired::new::<Service>(
        true,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"type": service_type.as_str(), "selector": selector_labels(gw.name()), "ports": ports},
        }),
    )
}

/// Name of the injection webhook configuration.
pub fn webhook_name(mcp: &MeshControlPlane) -> String {
    cluster_scoped_name("skein-sidecar-injector", mcp)
}

fn injection_webhook(mcp: &MeshControlPlane, facts: Facts<'_>) -> Desired {
    // ByteString serializes as base64, the wire form of `caBundle`.
    let ca_bundle = serde_json::to_value(ByteString(facts.root_cert_pem.as_bytes().to_vec())).unwrap_or(Value::Null);
    let client = json!({
        "service": {"name": CONTROL_PLANE, "namespace": namespace(mcp), "path": "/inject", "port": PORT_WEBHOOK},
        "caBundle": ca_bundle,
    });
    // Namespaces opt in with Skein's label, Istio's label, or Istio's revision label. A
    // namespaceSelector ANDs its expressions, so each way is its own webhook entry.
    let hook = |name: &str, ns_selector: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
            "clientConfig": client,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": ns_selector,
            "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]},
        })
    };
    Desired::new::<MutatingWebhookConfiguration>(
        false,
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": metadata(mcp, &webhook_name(mcp), false, CONTROL_PLANE),
            "webhooks": [
                hook("namespace.sidecar-injector.skein.dev", json!({"matchLabels": {"skein-injection": "enabled"}})),
                hook("istio-namespace.sidecar-injector.skein.dev", json!({"matchLabels": {"istio-injection": "enabled"}})),
                hook("rev.namespace.sidecar-injector.skein.dev", json!({"matchExpressions": [
                    {"key": "istio.io/rev", "operator": "In", "values": [DEFAULT_REVISION]},
                    {"key": "istio-injection", "operator": "DoesNotExist"},
                    {"key": "skein-injection", "operator": "DoesNotExist"},
                ]})),
            ],
        }),
    )
}

#[cfg(test)]
mod tests;
