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
