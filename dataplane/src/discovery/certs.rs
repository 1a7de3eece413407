//! The workload certificate: the proxy makes its own key, sends a CSR with its ServiceAccount
//! token to the CA, writes the signed chain next to the key, and renews at half the lifetime.
//! The loop is generic over where certificates come from ([`CertificateSource`]), so its timing
//! is tested with tokio's paused clock.

use std::{path::PathBuf, time::Duration};

use skein_api::proxy::wire::pb::{self, certificate_service_client::CertificateServiceClient};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::{Backoff, CERT_CHAIN, DiscoveryArgs, KEY, ROOT_CERT};
use crate::store::Store;

/// Why a certificate could not be had (retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Key or CSR generation failed.
    #[error("key/CSR: {0}")]
    Csr(#[from] rcgen::Error),
    /// The token is not usable as a header value.
    #[error("the token is not a valid header value")]
    Token,
    /// The CA refused or failed.
    #[error("CA: {}: {}", .0.code(), .0.message())]
    Ca(Box<tonic::Status>),
    /// The CA's answer is not a usable certificate.
    #[error("certificate: {0}")]
    Certificate(String),
}

/// Where certificates come from: issues one, writes it, and returns its lifetime.
pub trait CertificateSource: Send + 'static {
    /// Issues a certificate and returns how long it is valid.
    fn issue(&mut self) -> impl std::future::Future<Output = Result<Duration, CertError>> + Send;

    /// Whether the trust roots changed since the last issue (a federated peer's root was added
    /// to the mounted bundle): the certificate is then issued again and the new roots loaded
    /// without waiting for the renewal.
    fn roots_changed(&mut self) -> bool {
        false
    }
}

/// How often the mounted roots are compared with the loaded ones.
pub const ROOTS_CHECK: Duration = Duration::from_secs(10);

/// Keeps a valid certificate: issues one, bumps `ready`, re-applies the running config so new
/// connections use it, and renews at half the lifetime (as Istio's agent does); a failure is
/// retried with back-off. Runs until the task is dropped.
pub async fn keep_certificates(mut source: impl CertificateSource, store: Store, ready: watch::Sender<u64>) {
    let mut backoff = Backoff::default();
    loop {
        match source.issue().await {
            Ok(lifetime) => {
                backoff = Backoff::default();
                ready.send_modify(|n| *n += 1);
                if store.is_configured() {
                    let cfg = store.current().config.clone();
                    if let Err(e) = store.apply(cfg) {
                        warn!(error = %e, "renewed certificate not loaded");
                    }
                }
                let wait = (lifetime / 2).max(Duration::from_secs(1));
                info!(renew_in = ?wait, "workload certificate ready");
                let renew_at = tokio::time::Instant::now() + wait;
                loop {
                    let now = tokio::time::Instant::now();
                    if now >= renew_at {
                        break;
                    }
                    tokio::time::sleep((renew_at - now).min(ROOTS_CHECK)).await;
                    if source.roots_changed() {
                        info!("trust roots changed; loading them");
                        break;
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "certificate request failed; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Certificates from the control plane's CA over gRPC, written to the certificate directory.
pub struct GrpcIssuer {
    channel: Channel,
    token_file: PathBuf,
    root_cert: PathBuf,
    cert_dir: PathBuf,
    ttl: Duration,
    /// The roots written with the last certificate.
    loaded_root: Vec<u8>,
}

impl GrpcIssuer {
    /// An issuer for the proxy configured by `args`, over `channel`.
    pub fn new(args: &DiscoveryArgs, channel: Channel) -> Self {
        Self {
            channel,
            token_file: args.token_file.clone(),
            root_cert: args.root_cert.clone(),
            cert_dir: args.cert_dir.clone(),
            ttl: args.cert_ttl,
            loaded_root: Vec::new(),
        }
    }
}

impl CertificateSource for GrpcIssuer {
    async fn issue(&mut self) -> Result<Duration, CertError> {
        let file_err = |path: &PathBuf| {
            let path = path.clone();
            move |source| CertError::File { path, source }
        };
        let token = std::fs::read_to_string(&self.token_file).map_err(file_err(&self.token_file))?;
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key).and_then(|r| r.pem())?;
        let mut req = tonic::Request::new(pb::CertificateRequest {
            csr,
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
        });
        let bearer = format!("Bearer {}", token.trim());
        req.metadata_mut().insert("authorization", bearer.parse().map_err(|_| CertError::Token)?);
        let chain = CertificateServiceClient::new(self.channel.clone())
            .create_certificate(req)
            .await
            .map_err(|s| CertError::Ca(Box::new(s)))?
            .into_inner()
            .cert_chain;
        let (leaf_and_intermediates, _) = chain.split_at(chain.len().saturating_sub(1));
        if leaf_and_intermediates.is_empty() {
            return Err(CertError::Certificate("the CA returned no certificate".into()));
        }
        let lifetime = lifetime_of(&leaf_and_intermediates[0])?;
        // The mesh root the proxy trusts is the one it was configured with, not one the CA sent.
        let root = std::fs::read(&self.root_cert).map_err(file_err(&self.root_cert))?;
        // Key before chain: a reader seeing the new chain must find the matching key.
        write_atomic(&self.cert_dir.join(KEY), key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&self.cert_dir.join(CERT_CHAIN), leaf_and_intermediates.concat().as_bytes(), 0o644)?;
        write_atomic(&self.cert_dir.join(ROOT_CERT), &root, 0o644)?;
        debug!(dir = %self.cert_dir.display(), "certificate written");
        self.loaded_root = root;
        Ok(lifetime)
    }

    fn roots_changed(&mut self) -> bool {
        // An unreadable file (the kubelet swapping the volume's symlink) is not a change.
        std::fs::read(&self.root_cert).is_ok_and(|r| !r.is_empty() && r != self.loaded_root)
    }
}

fn lifetime_of(pem: &str) -> Result<Duration, CertError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CertError::Certificate(e.to_string()))?;
    let cert = p.parse_x509().map_err(|e| CertError::Certificate(e.to_string()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let left = cert.validity().not_after.timestamp() - now;
    Ok(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees a
/// half-written file.
fn write_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let err = |p: &std::path::Path| {
        let path = p.to_path_buf();
        move |source| CertError::File { path, source }
    };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(err(&tmp))?;
    std::io::Write::write_all(&mut f, bytes).map_err(err(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(err(path))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// Issues certificates of `lifetime`, failing the first `failures` requests; its roots
    /// change when `roots` is bumped.
    struct Fake {
        lifetime: Duration,
        failures: u32,
        calls: Arc<AtomicU32>,
        roots: Arc<AtomicU32>,
        loaded: u32,
    }

    impl CertificateSource for Fake {
        async fn issue(&mut self) -> Result<Duration, CertError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                return Err(CertError::Token);
            }
            self.loaded = self.roots.load(Ordering::SeqCst);
            Ok(self.lifetime)
        }

        fn roots_changed(&mut self) -> bool {
            self.roots.load(Ordering::SeqCst) != self.loaded
        }
    }

    fn fake(lifetime: u64, failures: u32, calls: &Arc<AtomicU32>) -> (Fake, Arc<AtomicU32>) {
        let roots = Arc::new(AtomicU32::new(0));
        let f = Fake {
            lifetime: Duration::from_secs(lifetime),
            failures,
            calls: calls.clone(),
            roots: roots.clone(),
            loaded: 0,
        };
        (f, roots)
    }

    #[tokio::test(start_paused = true)]
    async fn changed_roots_are_loaded_within_the_check_interval_not_at_renewal() {
        let calls = Arc::new(AtomicU32::new(0));
        let (tx, mut rx) = watch::channel(0);
        let (fake, roots) = fake(3600, 0, &calls);
        let task = tokio::spawn(keep_certificates(fake, empty_store(), tx));
        rx.changed().await.unwrap();
        tokio::time::sleep(ROOTS_CHECK * 3).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "unchanged roots: no new issue");
        roots.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(ROOTS_CHECK + Duration::from_millis(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "changed roots: issued and loaded again");
        assert_eq!(*rx.borrow(), 2);
        task.abort();
    }

    fn empty_store() -> Store {
        Store::new(skein_api::proxy::ProxyConfig::default()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn certificates_are_renewed_at_half_their_lifetime() {
        let calls = Arc::new(AtomicU32::new(0));
        let (tx, mut rx) = watch::channel(0);
        let (fake, _) = fake(600, 0, &calls);
        let task = tokio::spawn(keep_certificates(fake, empty_store(), tx));
        rx.changed().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Just before half the lifetime: no renewal yet; just after: renewed once.
        tokio::time::sleep(Duration::from_secs(299)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(*rx.borrow(), 2);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_request_is_retried_with_backoff_until_it_succeeds() {
        let calls = Arc::new(AtomicU32::new(0));
        let (tx, mut rx) = watch::channel(0);
        let (fake, _) = fake(600, 3, &calls);
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(keep_certificates(fake, empty_store(), tx));
        rx.changed().await.unwrap();
        // Three failures: 200 + 400 + 800 ms of back-off before the fourth try succeeds.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(start.elapsed(), Duration::from_millis(1400));
        task.abort();
    }
}
