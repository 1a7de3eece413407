//! The Istio API CRDs the control plane reads, shared by every installation.

use serde_json::{Value, json};

use super::{
    Desired, MANAGED_BY,
    meta::{MANAGED_BY_LABEL, PART_OF_LABEL},
};

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
            body["metadata"]["labels"] = json!({PART_OF_LABEL: "skein", MANAGED_BY_LABEL: MANAGED_BY});
            Desired::new::<CustomResourceDefinition>(false, body)
        })
        .collect()
}

/// Keeps in `desired` (a CRD body) every version the apiserver still stores objects in
/// (`status.storedVersions` of `live`) that this operator no longer lists, served but not the
/// storage version: the apiserver refuses a CRD that drops a stored version, and dropping it
/// would strand the users' objects. So an operator downgrade, or a release that retires a
/// version, never removes one still in use; `kube-storage-version-migrator` (or a re-write of
/// the objects) plus editing `storedVersions` retires it for good.
pub fn keep_stored_versions(desired: &mut Value, live: &Value) {
    let stored = live["status"]["storedVersions"].as_array().cloned().unwrap_or_default();
    let Some(versions) = desired["spec"]["versions"].as_array_mut() else { return };
    for name in stored.iter().filter_map(Value::as_str) {
        if versions.iter().any(|v| v["name"] == name) {
            continue;
        }
        let kept = live["spec"]["versions"].as_array().into_iter().flatten().find(|v| v["name"] == name);
        if let Some(kept) = kept {
            let mut kept = kept.clone();
            kept["served"] = json!(true);
            kept["storage"] = json!(false);
            versions.push(kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_version_this_operator_does_not_list_is_kept_served_but_not_stored() {
        let mut desired = json!({"spec": {"versions": [{"name": "v1", "served": true, "storage": true}]}});
        let live = json!({
            "spec": {"versions": [
                {"name": "v1", "served": true, "storage": false},
                {"name": "v2", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}},
            ]},
            "status": {"storedVersions": ["v1", "v2"]},
        });
        keep_stored_versions(&mut desired, &live);
        assert_eq!(
            desired["spec"]["versions"],
            json!([
                {"name": "v1", "served": true, "storage": true},
                {"name": "v2", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}},
            ])
        );
        // Nothing stored beyond what is listed: unchanged.
        let before = desired.clone();
        keep_stored_versions(&mut desired, &json!({"status": {"storedVersions": ["v1"]}}));
        assert_eq!(desired, before);
    }
}
