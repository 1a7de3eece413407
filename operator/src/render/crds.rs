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
