//! Object metadata: one builder for names, labels and owner references of everything the
//! operator writes, rendered (JSON for server-side apply) or typed (objects it creates).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use skein_api::MeshControlPlane;

use super::{MANAGED_BY, OWNER_LABEL, namespace};

/// `app.kubernetes.io/managed-by`: the label a GitOps tool or a person reads to tell Skein's
/// objects; the operator watches its children by it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/part-of`.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// `istio.io/rev`: the revision a pod belongs to, or a namespace injects.
pub const REVISION_LABEL: &str = "istio.io/rev";

/// Labels every managed object carries.
pub fn common_labels(mcp: &MeshControlPlane, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": component,
        PART_OF_LABEL: "skein",
        MANAGED_BY_LABEL: MANAGED_BY,
        OWNER_LABEL: mcp.name_any(),
    })
}

/// Metadata of a managed object: name, labels, the `MeshControlPlane` as controller owner,
/// and its namespace when `namespaced`.
pub fn metadata(mcp: &MeshControlPlane, name: &str, namespaced: bool, component: &str) -> Value {
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

/// [`metadata`] as a typed `ObjectMeta`, for objects the operator creates rather than applies
/// (the namespace, the self-signed CA Secret).
pub fn object_meta(mcp: &MeshControlPlane, name: &str, namespaced: bool, component: &str) -> ObjectMeta {
    let labels: BTreeMap<String, String> = serde_json::from_value(common_labels(mcp, component)).unwrap_or_default();
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespaced.then(|| namespace(mcp).to_string()),
        labels: Some(labels),
        owner_references: mcp.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Labels selecting the pods of `app` in `revision`.
pub fn selector_labels(app: &str, revision: &str) -> Value {
    json!({"app": app, REVISION_LABEL: revision})
}
