//! The Istio API Skein serves: `networking.istio.io` (VirtualService, DestinationRule,
//! ServiceEntry, Gateway, Sidecar) and `security.istio.io` (PeerAuthentication, AuthorizationPolicy).
//!
//! Field names and shapes follow Istio's API so users' YAML applies unchanged; the generated
//! CRDs are served as `v1` (stored) and also as `v1beta1` and `v1alpha3` with the same schema,
//! as Istio's own CRDs are. The schema is structural and complete for the fields Skein reads,
//! so `kubectl apply` (strict field validation) refuses a misspelled field by name. A few
//! rarely used objects Skein does not act on are kept as free-form objects
//! ([`FreeForm`]) rather than silently dropped.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod networking;
pub mod security;

/// Versions every Istio CRD is served under besides the stored `v1`.
pub const ALSO_SERVED: [&str; 2] = ["v1beta1", "v1alpha3"];

/// An object kept as written (`x-kubernetes-preserve-unknown-fields`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(transparent)]
pub struct FreeForm(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for FreeForm {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FreeForm".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    }
}

/// Status Skein writes on Istio resources: whether the resource was accepted, and why not.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioStatus {
    /// Conditions (`Reconciled`: the resource is in force, or rejected with the reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<IstioCondition>,
    /// Generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Analysis messages (Istio's shape), kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_messages: Vec<FreeForm>,
}

/// A status condition in Istio's shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioCondition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// When the condition was last probed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<String>,
}

/// `selector` / `workloadSelector` of namespaced policies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Pod labels that must all match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Adds the `v1beta1` and `v1alpha3` versions (same schema, served, not stored) to a CRD
/// generated for `v1`, and Istio's categories.
pub fn serve_istio_versions(mut crd: CustomResourceDefinition, categories: &[&str]) -> CustomResourceDefinition {
    let stored = crd.spec.versions[0].clone();
    for name in ALSO_SERVED {
        let mut v = stored.clone();
        v.name = name.to_string();
        v.storage = false;
        crd.spec.versions.push(v);
    }
    with_categories(crd, categories)
}

fn with_categories(mut crd: CustomResourceDefinition, categories: &[&str]) -> CustomResourceDefinition {
    crd.spec.names.categories = Some(categories.iter().map(|c| c.to_string()).collect());
    crd
}

/// Every Istio CRD Skein installs, ready to print.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let net = ["istio-io", "networking-istio-io"];
    let sec = ["istio-io", "security-istio-io"];
    vec![
        serve_istio_versions(networking::VirtualService::crd(), &net),
        serve_istio_versions(networking::DestinationRule::crd(), &net),
        serve_istio_versions(networking::ServiceEntry::crd(), &net),
        serve_istio_versions(networking::Gateway::crd(), &net),
        serve_istio_versions(networking::Sidecar::crd(), &net),
        serve_istio_versions(security::PeerAuthentication::crd(), &sec),
        serve_istio_versions(security::AuthorizationPolicy::crd(), &sec),
        // v1alpha3 only, as Istio serves it.
        with_categories(networking::EnvoyFilter::crd(), &net),
    ]
}

#[cfg(test)]
mod tests;
