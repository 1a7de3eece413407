//! The injection webhook server: `POST /inject` with an `AdmissionReview` (v1), answered with
//! the JSON Patch from [`inject`](crate::inject). HTTPS (rustls, TLS 1.2+) with the serving
//! certificate the operator writes (`tls.crt`/`tls.key`), re-read when the files change so a
//! renewed certificate is used without a restart. A malformed review gets 400; a pod the
//! patch cannot be built for is admitted unchanged with a warning: the webhook fails closed
//! (`failurePolicy: Fail`), and one odd pod must not be blocked by it.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::{inject, metrics::Metrics};

/// Largest AdmissionReview accepted (a pod spec is far smaller).
const MAX_BODY: usize = 4 << 20;

/// The serving certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate and key do not make a TLS server configuration.
    #[error("webhook certificate: {0}")]
    Config(#[from] rustls::Error),
}

/// An AdmissionReview that cannot be answered (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON.
    #[error("not an AdmissionReview: {0}")]
    NotJson(String),
    /// A required field is missing or wrong; names the field.
    #[error("{field}: {reason}")]
    Field {
        /// Path of the field (`kind`, `request.uid`, ...).
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The response could not be encoded.
    #[error("encoding the response: {0}")]
    Encode(String),
}

/// Loads the serving certificate from `dir` (`tls.crt`, `tls.key`).
pub fn load(dir: &std::path::Path) -> Result<Arc<ServerConfig>, TlsError> {
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
        .and_then(Iterator::collect)
        .map_err(|source| TlsError::Pem { path: crt.clone(), source })?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|source| TlsError::Pem { path: key.clone(), source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn mtime(dir: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join("tls.crt")).and_then(|m| m.modified()).ok()
}

/// Serves the webhook on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    tls_dir: PathBuf,
    template: inject::Template,
    metrics: Metrics,
) -> Result<(), TlsError> {
    let tls = Arc::new(RwLock::new(load(&tls_dir)?));
    // Certificate reload: the operator renews the Secret, the kubelet updates the files.
    {
        let (tls, dir) = (tls.clone(), tls_dir.clone());
        tokio::spawn(async move {
            let mut seen = mtime(&dir);
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = mtime(&dir);
                if now != seen {
                    match load(&dir) {
                        Ok(cfg) => {
                            *tls.write().unwrap_or_else(|e| e.into_inner()) = cfg;
                            info!("webhook certificate reloaded");
                            seen = now;
                        }
                        Err(e) => warn!(error = %e, "webhook certificate not reloaded"),
                    }
                }
            }
        });
    }
    let template = Arc::new(template);
    info!(addr = ?listener.local_addr().ok(), "injection webhook serving");
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let cfg = tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (template, metrics) = (template.clone(), metrics.clone());
        tokio::spawn(async move {
            let handshake = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await else {
                debug!(%peer, "webhook TLS handshake failed");
                return;
            };
            let svc = service_fn(move |req| handle(req, template.clone(), metrics.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await {
                debug!(%peer, error = %e, "webhook connection");
            }
        });
    }
}

fn reply(status: StatusCode, body: String) -> Result<Response<Full<Bytes>>, hyper::Error> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default())
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    template: Arc<inject::Template>,
    metrics: Metrics,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.method() != Method::POST || req.uri().path() != "/inject" {
        return reply(StatusCode::NOT_FOUND, json!({"error": "POST /inject only"}).to_string());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "body too large"}).to_string()),
    };
    match review(&body, &template) {
        Ok((response, injected)) => {
            if injected {
                metrics.injections.inc();
            }
            reply(StatusCode::OK, response.to_string())
        }
        Err(e) => reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}).to_string()),
    }
}

/// Answers one AdmissionReview: (response review, whether a sidecar was injected).
pub fn review(body: &[u8], template: &inject::Template) -> Result<(Value, bool), ReviewError> {
    let review: Value = serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    if review["kind"] != "AdmissionReview" {
        return Err(ReviewError::Field { field: "kind", reason: "expected AdmissionReview" });
    }
    let request = &review["request"];
    let uid = request["uid"].as_str().ok_or(ReviewError::Field { field: "request.uid", reason: "missing" })?;
    let object = request.get("object").ok_or(ReviewError::Field { field: "request.object", reason: "missing" })?;
    let mut response = json!({"uid": uid, "allowed": true});
    let injected = match inject::patch(object, template) {
        Ok(Some(ops)) => {
            let patch = serde_json::to_vec(&ops).map_err(|e| ReviewError::Encode(e.to_string()))?;
            // ByteString serializes as base64, the wire form of `patch`.
            response["patch"] =
                serde_json::to_value(k8s_openapi::ByteString(patch)).map_err(|e| ReviewError::Encode(e.to_string()))?;
            response["patchType"] = json!("JSONPatch");
            true
        }
        Ok(None) => false,
        Err(e) => {
            let name = request["name"].as_str().or(object["metadata"]["generateName"].as_str()).unwrap_or("?");
            warn!(pod = name, error = %e, "pod admitted without a sidecar");
            response["warnings"] = json!([format!("skein: no sidecar injected: {e}")]);
            false
        }
    };
    Ok((json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}), injected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> inject::Template {
        inject::Template { proxy_image: "p".into(), discovery_address: "cp:15012".into(), revision: "default".into() }
    }

    #[test]
    fn a_review_is_answered_with_a_base64_json_patch_for_its_uid() {
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "abc", "object": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}}});
        let (resp, injected) = review(body.to_string().as_bytes(), &template()).unwrap();
        assert!(injected);
        assert_eq!(resp["response"]["uid"], "abc");
        assert_eq!(resp["response"]["allowed"], true);
        assert_eq!(resp["response"]["patchType"], "JSONPatch");
        let patch: k8s_openapi::ByteString = serde_json::from_value(resp["response"]["patch"].clone()).unwrap();
        let ops: Vec<Value> = serde_json::from_slice(&patch.0).unwrap();
        assert!(ops.iter().any(|o| o["path"] == "/spec/containers/-"));
    }

    #[test]
    fn malformed_reviews_are_refused_with_the_reason() {
        assert!(review(b"{", &template()).unwrap_err().to_string().contains("not an AdmissionReview"));
        assert_eq!(
            review(br#"{"kind": "Pod"}"#, &template()).unwrap_err(),
            ReviewError::Field { field: "kind", reason: "expected AdmissionReview" }
        );
        assert_eq!(
            review(br#"{"kind": "AdmissionReview", "request": {}}"#, &template()).unwrap_err(),
            ReviewError::Field { field: "request.uid", reason: "missing" }
        );
        // A pod without a spec is admitted unchanged, with a warning.
        let (resp, injected) =
            review(br#"{"kind": "AdmissionReview", "request": {"uid": "u", "object": {"metadata": {}}}}"#, &template())
                .unwrap();
        assert!(!injected);
        assert!(resp["response"]["patch"].is_null());
        assert!(resp["response"]["warnings"][0].as_str().unwrap().contains("no sidecar injected"));
    }
}
