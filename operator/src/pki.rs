//! The mesh's certificates as the operator keeps them: the root CA Secret (generated once, or
//! the user's Istio `cacerts` Secret) and the injection webhook's serving certificate, signed by
//! that root and renewed well before it expires.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt, api::PostParams};
use skein_api::{MeshControlPlane, RootCaType, conditions::Reason};
use skein_support::pki::{CaBundle, SERVING_DAYS};
use tracing::info;

use crate::{
    context::Context,
    error::{Error, SpecError},
    kube::apply::{Applier, ApplyError},
    render::{self, CONTROL_PLANE, WEBHOOK_TLS_SECRET, meta::object_meta, webhook},
};

/// Re-issue the webhook certificate when fewer than this many days are left.
const RENEW_BEFORE_DAYS: i64 = 30;

/// What a reconcile did about certificates worth an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// Nothing new.
    Nothing,
    /// A self-signed root was generated (once per installation).
    Root,
}

/// The CA bundle, generating the self-signed root once. A missing or malformed user Secret is
/// a [`SpecError`] naming `spec.security.rootCA`.
pub async fn ensure_ca(mcp: &MeshControlPlane, ctx: &Context) -> Result<(CaBundle, Issued), Error> {
    let ns = render::namespace(mcp);
    let name = render::ca_secret_name(mcp);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let existing = api.get_opt(name).await.map_err(ApplyError::during("get", format!("Secret/{name}")))?;
    let data = |s: &Secret| -> BTreeMap<String, Vec<u8>> {
        s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
    };
    let invalid = |message: String| Error::InvalidSpec(SpecError { reason: Reason::InvalidRootCa, message });
    if mcp.spec.security.root_ca.type_ == RootCaType::Secret {
        return match existing {
            None => Err(invalid(format!("spec.security.rootCA.secretName: Secret {ns}/{name} does not exist"))),
            Some(s) => CaBundle::from_secret_data(name, &data(&s))
                .map(|ca| (ca, Issued::Nothing))
                .map_err(|e| invalid(format!("spec.security.rootCA.secretName: {e}"))),
        };
    }
    if let Some(s) = existing {
        // Never regenerated: replacing the root would break trust with every issued certificate.
        return CaBundle::from_secret_data(name, &data(&s))
            .map(|ca| (ca, Issued::Nothing))
            .map_err(|e| invalid(format!("self-signed root CA: {e}")));
    }
    let ca = CaBundle::generate_self_signed(&mcp.spec.mesh_config.trust_domain)?;
    let secret = Secret {
        metadata: object_meta(mcp, name, true, CONTROL_PLANE),
        type_: Some("Opaque".into()),
        data: Some(ca.to_secret_data().into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    };
    // Created, not applied: a Secret that appeared meanwhile (another replica's) must win.
    let params = PostParams { field_manager: Some(render::FIELD_MANAGER.into()), ..Default::default() };
    match api.create(&params, &secret).await {
        Ok(_) => {
            info!(namespace = ns, secret = name, "generated self-signed root CA");
            Ok((ca, Issued::Root))
        }
        // Another replica won the race: use its root, not ours.
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let s = api.get(name).await.map_err(ApplyError::during("get", format!("Secret/{name}")))?;
            CaBundle::from_secret_data(name, &data(&s))
                .map(|ca| (ca, Issued::Nothing))
                .map_err(|e| invalid(format!("self-signed root CA: {e}")))
        }
        Err(e) => Err(ApplyError::during("create", format!("Secret/{name}"))(e).into()),
    }
}

/// Keeps the webhook's serving certificate signed by the current root and far from expiry;
/// returns whether a new one was issued. Written through the applier like every other object.
pub async fn ensure_webhook_cert(
    mcp: &MeshControlPlane,
    ctx: &Context,
    applier: &Applier,
    ca: &CaBundle,
) -> Result<bool, Error> {
    let ns = render::namespace(mcp);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let existing = api
        .get_opt(WEBHOOK_TLS_SECRET)
        .await
        .map_err(ApplyError::during("get", format!("Secret/{WEBHOOK_TLS_SECRET}")))?;
    let fresh = existing.as_ref().is_some_and(|s| {
        let same_root =
            s.data.as_ref().and_then(|d| d.get("ca.crt")).is_some_and(|c| c.0 == ca.root_cert_pem.as_bytes());
        let not_after = s
            .annotations()
            .get(webhook::NOT_AFTER_ANNOTATION)
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
        let renew_at =
            k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(24 * RENEW_BEFORE_DAYS);
        let names = s.annotations().get(webhook::NAMES_ANNOTATION);
        same_root && not_after.is_some_and(|t| t > renew_at) && names == Some(&webhook::serving_names(mcp).join(","))
    });
    if fresh {
        return Ok(false);
    }
    let (chain, key) = ca.issue_serving_cert(&webhook::serving_names(mcp))?;
    let not_after =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(24 * SERVING_DAYS);
    let desired = webhook::tls_secret(mcp, &chain, &key, &ca.root_cert_pem, &not_after.to_string());
    let applied = applier.ensure(&desired, ns).await?.wrote();
    info!(namespace = ns, "issued webhook serving certificate");
    Ok(applied)
}
