//! Workload identity and mTLS (rustls): a SPIFFE certificate chain and key, the mesh root, and
//! the TLS configurations built from them. TLS 1.2 and 1.3 only.
//!
//! Peers are authenticated by their SPIFFE URI SAN (`spiffe://<td>/ns/<ns>/sa/<sa>`), not by a
//! DNS name: a workload certificate names an identity, not a host. Key material is never
//! logged; errors name files and fields.

use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// Why identity material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A PEM input could not be decoded.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input (`certChain`, `privateKey`, `rootCert`).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the material.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn pem_err(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> IdentityError {
    move |e| IdentityError::Pem { what, reason: e.to_string() }
}

/// The rustls crypto provider every TLS configuration of the proxy uses (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A workload's certificate chain, key and trust root.
#[derive(Clone)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
    root_certs: Vec<CertificateDer<'static>>,
    /// This workload's SPIFFE id, from its certificate.
    pub spiffe_id: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("spiffe_id", &self.spiffe_id).finish_non_exhaustive()
    }
}

/// The SPIFFE id (URI SAN starting `spiffe://`) of a certificate.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_string()),
        _ => None,
    })
}

/// `spiffe://cluster.local/ns/default/sa/bookinfo` → `cluster.local/ns/default/sa/bookinfo`,
/// the principal form AuthorizationPolicy uses.
pub fn principal(spiffe_id: &str) -> &str {
    spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id)
}

impl Identity {
    /// Reads PEM: the certificate chain (leaf first), its private key, and the root bundle.
    pub fn from_pem(chain: &[u8], key: &[u8], roots: &[u8]) -> Result<Self, IdentityError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain).collect::<Result<_, _>>().map_err(pem_err("certChain"))?;
        let leaf = chain.first().ok_or(IdentityError::Pem { what: "certChain", reason: "no certificate".into() })?;
        let spiffe_id = spiffe_id(leaf).ok_or(IdentityError::Pem {
            what: "certChain",
            reason: "leaf certificate has no spiffe:// URI SAN".into(),
        })?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(pem_err("privateKey"))?;
        let root_certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(roots).collect::<Result<_, _>>().map_err(pem_err("rootCert"))?;
        let mut store = RootCertStore::empty();
        for root in &root_certs {
            store.add(root.clone())?;
        }
        if store.is_empty() {
            return Err(IdentityError::Pem { what: "rootCert", reason: "no certificate".into() });
        }
        Ok(Self { chain, key: Arc::new(key), roots: Arc::new(store), root_certs, spiffe_id })
    }

    /// Whether `other` is the same certificate chain and roots (the key belongs to the chain).
    pub fn same_as(&self, other: &Identity) -> bool {
        self.chain == other.chain && self.root_certs == other.root_certs
    }

    /// Whether `other` is this identity or a renewal of it: the same SPIFFE id under the same
    /// roots, perhaps with a new certificate and key. Peers verified against these roots stay
    /// verified, and connections made with either certificate speak for the same workload.
    pub fn renewal_of(&self, other: &Identity) -> bool {
        self.spiffe_id == other.spiffe_id && self.root_certs == other.root_certs
    }

    /// Server side. `require_client_cert`: STRICT (a peer without a valid mesh certificate
    /// fails the handshake); otherwise a client certificate is verified if sent.
    pub fn server_config(&self, require_client_cert: bool) -> Result<Arc<ServerConfig>, IdentityError> {
        let mut verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        if !require_client_cert {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build().map_err(|e| IdentityError::Verifier(e.to_string()))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"istio".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side of ISTIO_MUTUAL: presents this identity and accepts a server whose chain
    /// leads to the mesh root and whose SPIFFE id is in `allowed` (any mesh identity if empty).
    pub fn client_config(&self, allowed: Vec<String>) -> Result<Arc<ClientConfig>, IdentityError> {
        let provider = provider();
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: self.roots.clone(),
            allowed,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl Identity {
    /// Client side of SIMPLE TLS: verifies the server against the mesh root by DNS name, sends
    /// no client certificate.
    pub fn simple_client_config(&self) -> Result<Arc<ClientConfig>, IdentityError> {
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

/// Verifies a server chain against the mesh root and its SPIFFE id against an allow list.
/// Custom because webpki's server verifier insists on a DNS name match, which SPIFFE
/// certificates do not carry.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    allowed: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
        })?;
        let id = spiffe_id(end_entity)
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a == &id) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}
