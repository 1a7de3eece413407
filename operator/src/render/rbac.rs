//! RBAC of the control plane: what it reads cluster-wide, the Secrets of its own namespace.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::json;
use skein_api::MeshControlPlane;

use super::{CONTROL_PLANE, Desired, cluster_scoped_name, meta::metadata, namespace};

/// The control plane's ClusterRole and Role, and their bindings to its ServiceAccount.
pub fn control_plane(mcp: &MeshControlPlane) -> Vec<Desired> {
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
