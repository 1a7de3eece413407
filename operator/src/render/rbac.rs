//! RBAC: the control plane's (a shipped ClusterRole bound per installation, a Role for the
//! Secrets of its own namespace), the peers' read-only access, and the operator's own, which
//! `make generate` writes to `config/rbac/` from the same functions.
//!
//! Least privilege: the operator holds cluster-wide only what it does cluster-wide (read
//! namespaces and injected pods, restart workloads on upgrade, bind the two shipped
//! ClusterRoles, its webhook configurations and the Istio CRDs). Everything namespaced that it
//! writes lives in the mesh namespaces, where the install gives it a Role: it cannot read a
//! Secret anywhere else. It grants the control plane's cluster-wide rights by `bind` on the
//! shipped ClusterRole instead of holding them itself (Kubernetes lets a subject grant only
//! what it holds or may bind).

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use serde_json::{Value, json};
use skein_api::MeshControlPlane;

use super::{CONTROL_PLANE, Desired, cluster_scoped_name, meta::metadata, namespace};

/// The shipped ClusterRole the control plane of every installation is bound to.
pub const CONTROL_PLANE_CLUSTER_ROLE: &str = "skein-controlplane";
/// The shipped ClusterRole peers' reader ServiceAccounts are bound to.
pub const REMOTE_READER_CLUSTER_ROLE: &str = "skein-remote-reader";
/// The operator's Role in each mesh namespace (and its RoleBinding).
pub const OPERATOR_MESH_ROLE: &str = "skein-operator-mesh";

/// The control plane's ClusterRoleBinding (to the shipped ClusterRole) and its Role and
/// RoleBinding in the mesh namespace.
pub fn control_plane(mcp: &MeshControlPlane) -> Vec<Desired> {
    let subject = json!([{"kind": "ServiceAccount", "name": CONTROL_PLANE, "namespace": namespace(mcp)}]);
    let mut out = vec![bind_cluster_role(mcp, CONTROL_PLANE, CONTROL_PLANE_CLUSTER_ROLE)];
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

/// The reader ServiceAccount's binding to the shipped read-only ClusterRole.
pub fn remote_reader(mcp: &MeshControlPlane) -> Vec<Desired> {
    vec![bind_cluster_role(mcp, REMOTE_READER, REMOTE_READER_CLUSTER_ROLE)]
}

/// ClusterRoleBinding `<account>-<mesh>` of ServiceAccount `account` of the mesh namespace to
/// the shipped ClusterRole `role`.
fn bind_cluster_role(mcp: &MeshControlPlane, account: &str, role: &str) -> Desired {
    let name = cluster_scoped_name(account, mcp);
    let subject = json!([{"kind": "ServiceAccount", "name": account, "namespace": namespace(mcp)}]);
    Desired::new::<ClusterRoleBinding>(
        false,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": metadata(mcp, &name, false, account),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subject,
        }),
    )
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

/// What the operator does cluster-wide.
fn operator_cluster_rules() -> Value {
    let istio_crds: Vec<String> = super::istio_crds().into_iter().map(|c| c.name).collect();
    let bindable = [CONTROL_PLANE_CLUSTER_ROLE, REMOTE_READER_CLUSTER_ROLE];
    json!([
        // Its own API: the finalizer and status are patches; `finalizers` lets children's
        // owner references block the MeshControlPlane's deletion.
        {"apiGroups": [skein_api::GROUP], "resources": ["meshcontrolplanes"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [skein_api::GROUP], "resources": ["meshcontrolplanes/status"], "verbs": ["patch"]},
        {"apiGroups": [skein_api::GROUP], "resources": ["meshcontrolplanes/finalizers"], "verbs": ["update"]},
        // Which namespaces follow which revision tag, and whether spec.namespace exists.
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
        // Why a component is not ready: its pods' container states. Upgrades: which injected
        // pods run which revision.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        // Upgrades with `updateWorkloads`: restart the injected workloads onto the new
        // revision (a pod-template annotation, as `kubectl rollout restart`).
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["get", "patch"]},
        // Each installation's bindings to the two shipped ClusterRoles, and nothing else to
        // bind: no ClusterRole is written, and no right beyond those two can be granted.
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterrolebindings"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": bindable, "verbs": ["bind"]},
        // The sidecar injector's webhook configuration, one per installation.
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        // The Istio API CRDs, by name: installed and updated, never deleted (they hold users'
        // resources). `create` cannot be limited by name in RBAC.
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["create"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "resourceNames": istio_crds, "verbs": ["get", "patch"]},
        // Events about MeshControlPlanes (cluster-scoped, so written to `default`).
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        // Federation: which `.global` hosts users or other tools already define.
        {"apiGroups": ["networking.istio.io"], "resources": ["serviceentries", "destinationrules"], "verbs": READ},
    ])
}

/// The operator's cluster-wide rules, and what it reads of its own cluster as a peer would
/// (what this cluster exports opens its east-west gateway), without duplicates.
fn operator_cluster_rules_all() -> Value {
    let mut rules: Vec<Value> = Vec::new();
    for rule in [operator_cluster_rules(), remote_reader_rules()].iter().filter_map(Value::as_array).flatten() {
        if !rules.contains(rule) {
            rules.push(rule.clone());
        }
    }
    Value::Array(rules)
}

/// What the operator does in a mesh namespace: the installation's objects, the CA and
/// webhook Secrets, peers' remote Secrets, and the federation's generated objects. Includes
/// what it grants the control plane's Role there (Secrets to read, its leader Lease).
fn operator_mesh_rules() -> Value {
    let write = json!(["get", "list", "watch", "create", "patch"]);
    let prune = json!(["get", "list", "watch", "create", "patch", "delete"]);
    json!([
        // Pruned when a component is turned off (`prune` deletes them).
        {"apiGroups": [""], "resources": ["serviceaccounts", "services"], "verbs": prune},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": prune},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": prune},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": prune},
        {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": write},
        // A binding whose roleRef must change is deleted and created again.
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": prune},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
        // Upgrades: each replica of a revision's control plane reports which proxies
        // acknowledge or refuse its config (`/debug/syncz`), read through the apiserver's pod
        // proxy.
        {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]},
        // Federation: the generated `.global` ServiceEntries and DestinationRules, and the
        // Gateway opening the east-west gateway to the exported services.
        {"apiGroups": ["networking.istio.io"], "resources": ["serviceentries", "destinationrules", "gateways"], "verbs": prune},
    ])
}

fn labels() -> Value {
    json!({"app.kubernetes.io/name": "skein-operator", "app.kubernetes.io/part-of": "skein"})
}

/// `config/rbac/role.yaml` (written by `make generate`): the operator's ClusterRole and binding,
/// and the two ClusterRoles it binds installations and peers' readers to, from the same
/// functions that render the bindings; a change to either shows as generated-file drift.
pub fn operator_cluster_role(service_account_namespace: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "skein-operator", "labels": labels()},
            "rules": operator_cluster_rules_all(),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "skein-operator", "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "skein-operator"},
            "subjects": [{"kind": "ServiceAccount", "name": "skein-operator", "namespace": service_account_namespace}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": CONTROL_PLANE_CLUSTER_ROLE, "labels": labels()},
            "rules": control_plane_cluster_rules(),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": REMOTE_READER_CLUSTER_ROLE, "labels": labels()},
            "rules": remote_reader_rules(),
        }),
    ]
}

/// `config/rbac/mesh_namespace.yaml`: the mesh namespace `namespace` itself and the operator's
/// Role and RoleBinding in it. One set per namespace listed in `--mesh-namespaces`.
pub fn operator_mesh_namespace(namespace: &str, service_account_namespace: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels()},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": OPERATOR_MESH_ROLE, "namespace": namespace, "labels": labels()},
            "rules": operator_mesh_rules(),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": OPERATOR_MESH_ROLE, "namespace": namespace, "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_MESH_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": "skein-operator", "namespace": service_account_namespace}],
        }),
    ]
}
