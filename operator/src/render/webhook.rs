//! Sidecar injection: the MutatingWebhookConfiguration and its serving certificate's Secret.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
};
use serde_json::{Value, json};
use skein_api::{CaBundleSource, MeshControlPlane};

use super::{
    CONTROL_PLANE, DEFAULT_REVISION, Desired, Facts, PORT_WEBHOOK, WEBHOOK_TLS_SECRET, cluster_scoped_name,
    control_plane,
    meta::{REVISION_LABEL, metadata},
    namespace,
};

/// Annotation on the webhook Secret: when its certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "mesh.skein.dev/not-after";
/// Annotation on the webhook Secret: the names its certificate was issued for (a change of
/// [`serving_names`] reissues it).
pub const NAMES_ANNOTATION: &str = "mesh.skein.dev/serving-names";

/// DNS names the webhook's serving certificate carries (how the apiserver reaches the
/// control plane's Services: the stable one, and every revision's
/// `skein-controlplane-<revision>` through the namespace wildcard, so a new revision needs no
/// new certificate).
pub fn serving_names(mcp: &MeshControlPlane) -> Vec<String> {
    let ns = namespace(mcp);
    let svc = format!("{CONTROL_PLANE}.{ns}.svc");
    vec![svc.clone(), format!("{svc}.cluster.local"), format!("{CONTROL_PLANE}.{ns}"), format!("*.{ns}.svc")]
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
    meta["annotations"] = json!({NOT_AFTER_ANNOTATION: not_after, NAMES_ANNOTATION: serving_names(mcp).join(",")});
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
///
/// The `default` tag (namespaces labelled `skein-injection=enabled`, `istio-injection=enabled`
/// or `istio.io/rev=default`) and every `revisionTags` entry go to the active revision; a
/// namespace labelled with a revision's own name goes to that revision.
pub fn injection_webhook(mcp: &MeshControlPlane, facts: Facts<'_>) -> Desired {
    // ByteString serializes as base64, the wire form of `caBundle`. With an external CA
    // injector the field is left out of what the operator applies, so it neither owns nor
    // compares it: the injector's writes are not drift.
    let ca_bundle: Option<Value> = match mcp.spec.security.webhook_ca_bundle {
        CaBundleSource::Operator => serde_json::to_value(ByteString(facts.root_cert_pem.as_bytes().to_vec())).ok(),
        CaBundleSource::External => None,
    };
    let client = |revision: &str| {
        let mut config = json!({
            "service": {"name": control_plane::name(revision), "namespace": namespace(mcp), "path": "/inject", "port": PORT_WEBHOOK},
        });
        if let Some(bundle) = &ca_bundle {
            config["caBundle"] = bundle.clone();
        }
        config
    };
    let hook = |name: String, revision: &str, ns_selector: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
            "clientConfig": client(revision),
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": ns_selector,
            "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]},
        })
    };
    // A revision label selects only namespaces without the injection labels (those follow
    // `default`). A namespaceSelector ANDs its expressions, so each way is its own entry.
    let by_rev = |values: Vec<String>| {
        json!({"matchExpressions": [
            {"key": REVISION_LABEL, "operator": "In", "values": values},
            {"key": "istio-injection", "operator": "DoesNotExist"},
            {"key": "skein-injection", "operator": "DoesNotExist"},
        ]})
    };
    let active = facts.revision;
    let mut tags = vec![DEFAULT_REVISION.to_string()];
    tags.extend(mcp.spec.revision_tags.iter().cloned());
    if active != DEFAULT_REVISION {
        tags.push(active.to_string());
    }
    let mut webhooks = vec![
        hook(
            "namespace.sidecar-injector.skein.dev".into(),
            active,
            json!({"matchLabels": {"skein-injection": "enabled"}}),
        ),
        hook(
            "istio-namespace.sidecar-injector.skein.dev".into(),
            active,
            json!({"matchLabels": {"istio-injection": "enabled"}}),
        ),
        hook("rev.namespace.sidecar-injector.skein.dev".into(), active, by_rev(tags)),
    ];
    for (revision, _) in facts.revisions().filter(|(r, _)| *r != active && *r != DEFAULT_REVISION) {
        webhooks.push(hook(
            format!("rev-{revision}.namespace.sidecar-injector.skein.dev"),
            revision,
            by_rev(vec![revision.to_string()]),
        ));
    }
    Desired::new::<MutatingWebhookConfiguration>(
        false,
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": metadata(mcp, &webhook_name(mcp), false, CONTROL_PLANE),
            "webhooks": webhooks,
        }),
    )
}
