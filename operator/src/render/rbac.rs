//! RBAC of the control plane: what it reads cluster-wide, the Secrets of its own namespace.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{Value, json};
use skein_api::MeshControlPlane;

use super::{CONTROL_PLANE, Desired, cluster_scoped_name, meta::metadata, namespace};

/// The control plane's ClusterRole and Role, and their bindings to its ServiceAccount.
pub fn control_plane(mcp: &MeshControlPlane) -> Vec<Desired> {
    let subject = json!([{"kind": "ServiceAccount", "name": CONTROL_PLANE, "namespace": namespace(mcp)}]);
    let mut out = cluster_role_bound_to(mcp, CONTROL_PLANE, control_plane_cluster_rules());
    out.extend([
        // Secrets only in the control plane's own namespace, and only to read: the CA and the
        // webhook certificate are written by the operator.
        Desired::new::<Role>(
            true,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": metadata(mcp, CONTROL_PLANE, true, CONTROL_PLANE),
                "rules": control_plane_namespace_rules(),
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
    ]);
    out
}

const READ: [&str; 3] = ["get", "list", "watch"];

/// ServiceAccount peers read this cluster as (`skeinctl create-remote-secret` issues its token),
/// in the mesh namespace. Istio's equivalent is `istio-reader-service-account`.
pub const REMOTE_READER: &str = "skein-reader-service-account";

/// What a peer's operator reads here, and nothing else: Services and namespaces (which are
/// exported, the east-west gateway's address), DestinationRules (subsets to mirror), the
/// MeshControlPlane (export rules) and the ConfigMap of its own root (`skein-mesh-root`).
pub fn remote_reader_rules() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": READ},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [crate::federation::MESH_ROOT_CONFIGMAP], "verbs": READ},
        {"apiGroups": ["networking.istio.io"], "resources": ["destinationrules"], "verbs": READ},
        {"apiGroups": [skein_api::GROUP], "resources": ["meshcontrolplanes"], "verbs": READ},
    ])
}

/// The reader ServiceAccount's read-only ClusterRole and its binding.
pub fn remote_reader(mcp: &MeshControlPlane) -> Vec<Desired> {
    cluster_role_bound_to(mcp, REMOTE_READER, remote_reader_rules())
}

/// ClusterRole `<account>-<mesh>` with `rules`, bound to ServiceAccount `account` of the mesh
/// namespace.
fn cluster_role_bound_to(mcp: &MeshControlPlane, account: &str, rules: Value) -> Vec<Desired> {
    let name = cluster_scoped_name(account, mcp);
    let subject = json!([{"kind": "ServiceAccount", "name": account, "namespace": namespace(mcp)}]);
    vec![
        Desired::new::<ClusterRole>(
            false,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": metadata(mcp, &name, false, account),
                "rules": rules,
            }),
        ),
        Desired::new::<ClusterRoleBinding>(
            false,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": metadata(mcp, &name, false, account),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subject,
            }),
        ),
    ]
}

/// What the control plane may do cluster-wide.
pub fn control_plane_cluster_rules() -> Value {
    json!([
        // Service discovery: what the proxies route to.
        {"apiGroups": [""], "resources": ["services", "pods", "namespaces", "nodes"], "verbs": READ},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
        // Kubernetes Ingresses of Istio's class, served through the ingress gateway; their
        // status carries the gateway's addresses.
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingressclasses"], "verbs": READ},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses/status"], "verbs": ["patch"]},
        // The Istio API users write; status carries validation results.
        {"apiGroups": ["networking.istio.io", "security.istio.io"], "resources": ["*"], "verbs": READ},
        {"apiGroups": ["networking.istio.io", "security.istio.io"], "resources": ["*/status"], "verbs": ["update", "patch"]},
        // Authenticates proxies asking for certificates by their ServiceAccount token.
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        // Publishes the root certificate to every namespace (istio-ca-root-cert).
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

/// What the control plane may do in its own namespace: read Secrets (the CA and the webhook
/// certificate, which the operator writes) and hold its leader Lease.
pub fn control_plane_namespace_rules() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["secrets"], "verbs": READ},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    ])
}

/// What the operator itself does cluster-wide (its own API, the objects an installation is
/// made of, the Istio API CRDs, Events).
fn operator_own_rules() -> Value {
    let manage = json!(["get", "list", "watch", "create", "patch", "update", "delete"]);
    json!([
        {"apiGroups": [skein_api::GROUP], "resources": ["meshcontrolplanes"], "verbs": ["get", "list", "watch", "patch", "update"]},
        {"apiGroups": [skein_api::GROUP], "resources": ["meshcontrolplanes/status"], "verbs": ["get", "patch", "update"]},
        {"apiGroups": [skein_api::GROUP], "resources": ["meshcontrolplanes/finalizers"], "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": [""], "resources": ["serviceaccounts", "services", "configmaps", "secrets"], "verbs": manage},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": manage},
        // Why a component is not ready: its pods' container states. Upgrades: which injected
        // pods run which revision.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        // Upgrades with `updateWorkloads`: restart the injected workloads onto the new
        // revision (a pod-template annotation, as `kubectl rollout restart`).
        {"apiGroups": ["apps"], "resources": ["statefulsets", "daemonsets"], "verbs": ["get", "patch"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": manage},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles", "clusterrolebindings", "roles", "rolebindings"], "verbs": manage},
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "verbs": manage},
        // The Istio API CRDs: installed and updated, never deleted (they hold users' resources).
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        // Federation: the generated `.global` ServiceEntries and DestinationRules, and the
        // Gateway opening the east-west gateway to the exported services.
        {"apiGroups": ["networking.istio.io"], "resources": ["serviceentries", "destinationrules", "gateways"], "verbs": manage},
    ])
}

/// The operator's ClusterRole and its binding (`config/rbac/role.yaml`, written by `make
/// generate`). Kubernetes lets the operator grant the control plane only permissions it holds
/// itself, so the control plane's rules are part of it, from the same functions that render
/// the control plane's roles; a change to either shows up here and as generated-file drift.
pub fn operator_cluster_role(service_account_namespace: &str) -> Vec<Value> {
    let labels = json!({"app.kubernetes.io/name": "skein-operator", "app.kubernetes.io/part-of": "skein"});
    let mut rules: Vec<Value> = Vec::new();
    for set in
        [operator_own_rules(), control_plane_cluster_rules(), control_plane_namespace_rules(), remote_reader_rules()]
    {
        for rule in set.as_array().into_iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "skein-operator", "labels": labels},
            "rules": rules,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "skein-operator", "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "skein-operator"},
            "subjects": [{"kind": "ServiceAccount", "name": "skein-operator", "namespace": service_account_namespace}],
        }),
    ]
}
