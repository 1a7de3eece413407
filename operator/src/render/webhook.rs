//! Sidecar injection: the MutatingWebhookConfiguration and its serving certificate's Secret.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
};
use serde_json::{Value, json};
use skein_api::MeshControlPlane;

use super::{
    CONTROL_PLANE, Desired, Facts, PORT_WEBHOOK, WEBHOOK_TLS_SECRET, cluster_scoped_name,
    meta::{REVISION_LABEL, metadata},
    namespace,
};

/// Annotation on the webhook Secret: when its certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "mesh.skein.dev/not-after";

/// DNS names the webhook's serving certificate carries (how the apiserver reaches the
/// control plane's Service).
pub fn serving_names(mcp: &MeshControlPlane) -> Vec<String> {
    let svc = format!("{CONTROL_PLANE}.{}.svc", namespace(mcp));
    vec![svc.clone(), format!("{svc}.cluster.local"), format!("{CONTROL_PLANE}.{}", namespace(mcp))]
}

/// The webhook's serving certificate Secret (`kubernetes.io/tls`, plus the root as `ca.crt`),
/// annotated with its expiry so the operator renews it in time without parsing it.
pub fn tls_secret(mcp: &MeshControlPlane, chain_pem: &str, key_pem: &str, root_pem: &str, not_after: &str) -> Desired {
    let data: BTreeMap<&str, ByteString> = BTreeMap::from([
        ("tls.crt", ByteString(chain_pem.as_bytes().to_vec())),
        ("tls.key", ByteString(key_pem.as_bytes().to_vec())),
        ("ca.crt", ByteString(root_pem.as_bytes().to_vec())),
    ]);
    let mut meta = metadata(mcp, WEBHOOK_TLS_SECRET, true, CONTROL_PLANE);
    meta["annotations"] = json!({NOT_AFTER_ANNOTATION: not_after});
    Desired::new::<Secret>(
        true,
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "kubernetes.io/tls",
            "data": data,
        }),
    )
}

/// Name of the injection webhook configuration.
pub fn webhook_name(mcp: &MeshControlPlane) -> String {
    cluster_scoped_name("skein-sidecar-injector", mcp)
}

/// The sidecar-injection MutatingWebhookConfiguration, trusting the mesh root.
pub fn injection_webhook(mcp: &MeshControlPlane, facts: Facts<'_>) -> Desired {
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
                    {"key": REVISION_LABEL, "operator": "In", "values": [facts.revision]},
                    {"key": "istio-injection", "operator": "DoesNotExist"},
                    {"key": "skein-injection", "operator": "DoesNotExist"},
                ]})),
            ],
        }),
    )
}
