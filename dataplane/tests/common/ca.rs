//! A throwaway mesh CA for tests: issues workload certificates shaped like Istio's (SPIFFE URI
//! SAN, server and client auth).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use skein_proxy::identity::Identity;

/// A root CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    trust_domain: String,
}

impl Ca {
    /// A new self-signed root for `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "test root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        Self { root_pem: cert.pem(), issuer: Issuer::new(params, key), trust_domain: trust_domain.to_string() }
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// Issues (chain PEM, key PEM) for `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn issue(&self, ns: &str, sa: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let id = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain);
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// An `Identity` for `ns`/`sa` trusting this root.
    pub fn identity(&self, ns: &str, sa: &str) -> Identity {
        let (chain, key) = self.issue(ns, sa);
        Identity::from_pem(chain.as_bytes(), key.as_bytes(), self.root_pem.as_bytes()).unwrap()
    }
}

impl Ca {
    /// Writes `ns`/`sa`'s identity as PEM files in `dir`; returns the `identity:` YAML block.
    pub fn identity_files(&self, dir: &std::path::Path, ns: &str, sa: &str) -> String {
        std::fs::create_dir_all(dir).unwrap();
        let (chain, key) = self.issue(ns, sa);
        let (c, k, r) = (dir.join(format!("{sa}.crt")), dir.join(format!("{sa}.key")), dir.join("root.crt"));
        std::fs::write(&c, chain).unwrap();
        std::fs::write(&k, key).unwrap();
        std::fs::write(&r, self.root_pem()).unwrap();
        format!(
            "identity: {{certChain: '{}', privateKey: '{}', rootCert: '{}'}}\n",
            c.display(),
            k.display(),
            r.display()
        )
    }
}

impl Ca {
    /// Issues (chain PEM, key PEM) for DNS names (a gateway's or an external server's
    /// certificate), server auth only.
    pub fn issue_dns(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a DNS certificate as `<stem>.crt`/`<stem>.key` in `dir`; returns both paths.
    pub fn dns_files(&self, dir: &std::path::Path, stem: &str, names: &[&str]) -> (String, String) {
        std::fs::create_dir_all(dir).unwrap();
        let (chain, key) = self.issue_dns(names);
        let (c, k) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        std::fs::write(&c, chain).unwrap();
        std::fs::write(&k, key).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    /// A rustls client trusting this root (TLS 1.2+), optionally presenting `client` (chain, key).
    pub fn client_config(&self, client: Option<(String, String)>) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.root_pem.as_bytes()).unwrap()).unwrap();
        let builder =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let cfg = match client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        std::sync::Arc::new(cfg)
    }
}
