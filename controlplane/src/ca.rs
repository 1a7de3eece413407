//! The mesh CA: signs workload certificates over gRPC. The caller proves who it is with its
//! Kubernetes ServiceAccount token (checked by a TokenReview against the apiserver, audience
//! `istio-ca` like Istio); the certificate names exactly that identity,
//! `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, whatever the CSR asked for. Tokens and keys are
//! never logged.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use skein_api::proxy::wire::pb::{self, certificate_service_server::CertificateService};
use skein_support::pki::{CaBundle, MAX_WORKLOAD_TTL};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Audience a workload's token must be issued for (Istio's default).
pub use skein_api::names::TOKEN_AUDIENCE;

/// The `CertificateService`.
#[derive(Clone)]
pub struct Ca {
    bundle: Arc<CaBundle>,
    reviewer: TokenReviewer,
    trust_domain: String,
    metrics: Metrics,
}

impl Ca {
    /// A CA signing with `bundle` for `trust_domain`.
    pub fn new(bundle: CaBundle, reviewer: TokenReviewer, trust_domain: String, metrics: Metrics) -> Self {
        Self { bundle: Arc::new(bundle), reviewer, trust_domain, metrics }
    }
}

/// Checks ServiceAccount tokens with the apiserver (TokenReview).
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    audience: String,
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_string)
}

impl TokenReviewer {
    /// Reviews tokens issued for `audience`.
    pub fn new(client: Client, audience: String) -> Self {
        Self { client, audience }
    }

    /// Who the token belongs to: `(namespace, service account)`.
    pub async fn authenticate(&self, token: &str) -> Result<(String, String), Status> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let result = api.create(&PostParams::default(), &review).await.map_err(|e| {
            warn!(error = %e, "TokenReview failed");
            Status::unavailable("token review failed")
        })?;
        let status = result.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(format!(
                "token not accepted: {}",
                status.error.unwrap_or_else(|| "not authenticated".into())
            )));
        }
        if !status.audiences.unwrap_or_default().contains(&self.audience) {
            return Err(Status::unauthenticated(format!("token is not for audience {}", self.audience)));
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        parse_service_account(&user).ok_or_else(|| {
            Status::permission_denied(format!("{user} is not a ServiceAccount; only workloads get certificates"))
        })
    }
}

/// `system:serviceaccount:<ns>:<sa>` → `(ns, sa)`.
pub fn parse_service_account(user: &str) -> Option<(String, String)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| (ns.to_string(), sa.to_string()))
}

#[tonic::async_trait]
impl CertificateService for Ca {
    async fn create_certificate(
        &self,
        request: Request<pb::CertificateRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        let Some(token) = bearer(request.metadata()) else {
            self.metrics.certs_refused.inc();
            return Err(Status::unauthenticated("authorization: Bearer <ServiceAccount token> is required"));
        };
        let (ns, sa) = match self.reviewer.authenticate(&token).await {
            Ok(id) => id,
            Err(e) => {
                self.metrics.certs_refused.inc();
                return Err(e);
            }
        };
        let req = request.into_inner();
        let ttl = match req.validity_duration {
            s if s > 0 => Duration::from_secs(s as u64).min(MAX_WORKLOAD_TTL),
            _ => MAX_WORKLOAD_TTL,
        };
        let id = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain);
        let chain = self.bundle.sign_workload_csr(&req.csr, &id, ttl).map_err(|e| {
            self.metrics.certs_refused.inc();
            Status::invalid_argument(format!("csr: {e}"))
        })?;
        self.metrics.certs_signed.inc();
        info!(identity = %id, ttl = ?ttl, "workload certificate signed");
        Ok(Response::new(pb::CertificateResponse { cert_chain: chain }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_account_users_have_a_workload_identity() {
        assert_eq!(
            parse_service_account("system:serviceaccount:default:bookinfo-reviews"),
            Some(("default".into(), "bookinfo-reviews".into()))
        );
        for u in ["admin", "system:serviceaccount:default", "system:serviceaccount::x", "system:serviceaccount:a:b:c"] {
            assert_eq!(parse_service_account(u), None, "{u}");
        }
    }
}
