//! The mesh's certificate authority material, in Istio's `cacerts` layout, and the webhook's
//! serving certificate signed by it.
//!
//! Key material never reaches a log: errors name files and fields, never their contents.

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Secret keys of Istio's `cacerts` layout.
pub const CA_CERT: &str = "ca-cert.pem";
/// Signing key of `ca-cert.pem`.
pub const CA_KEY: &str = "ca-key.pem";
/// The mesh's root of trust.
pub const ROOT_CERT: &str = skein_api::names::ROOT_CERT_FILE;
/// Chain from `ca-cert.pem` up to the root.
pub const CERT_CHAIN: &str = skein_api::names::CERT_CHAIN_FILE;

/// Lifetime of a generated root: ten years, like Istio's self-signed root.
const ROOT_DAYS: i64 = 3650;
/// Lifetime of the webhook serving certificate; it is re-issued with 30 days left.
pub const SERVING_DAYS: i64 = 365;

/// Why CA material could not be produced or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A required key of the Secret is absent.
    #[error(
        "secret {secret} has no {key:?} entry (expected Istio's cacerts layout: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)"
    )]
    MissingKey {
        /// Secret name.
        secret: String,
        /// Missing data key.
        key: &'static str,
    },
    /// An entry is present but not usable.
    #[error("secret {secret}: {key} is not a valid PEM {what}")]
    Invalid {
        /// Secret name.
        secret: String,
        /// Data key.
        key: &'static str,
        /// What was expected.
        what: &'static str,
    },
    /// rcgen failed to generate or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// CA material in `cacerts` layout.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// Certificate the mesh signs with (the root itself when self-signed).
    pub ca_cert_pem: String,
    /// Its private key.
    pub ca_key_pem: String,
    /// Root of trust handed to every workload.
    pub root_cert_pem: String,
    /// `ca-cert.pem` followed by intermediates up to the root.
    pub cert_chain_pem: String,
}

// Deliberately not derived: Debug must never print the key.
impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").field("ca_key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

fn days_from_now(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - time::Duration::hours(1), now + time::Duration::days(days))
}

impl CaBundle {
    /// Generates a self-signed root for `trust_domain` (ECDSA P-256).
    pub fn generate_self_signed(trust_domain: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Skein Root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = days_from_now(ROOT_DAYS);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        Ok(Self {
            ca_cert_pem: pem.clone(),
            ca_key_pem: key.serialize_pem(),
            root_cert_pem: pem.clone(),
            cert_chain_pem: pem,
        })
    }

    /// Reads a `cacerts`-layout Secret's data; `secret` names it in errors.
    pub fn from_secret_data(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Self, PkiError> {
        let get = |key: &'static str| -> Result<String, PkiError> {
            let bytes = data.get(key).ok_or(PkiError::MissingKey { secret: secret.to_string(), key })?;
            String::from_utf8(bytes.clone()).map_err(|_| PkiError::Invalid {
                secret: secret.to_string(),
                key,
                what: "text",
            })
        };
        let bundle = Self {
            ca_cert_pem: get(CA_CERT)?,
            ca_key_pem: get(CA_KEY)?,
            root_cert_pem: get(ROOT_CERT)?,
            cert_chain_pem: get(CERT_CHAIN)?,
        };
        // Prove the pair is usable now, so a bad Secret is reported on the MeshControlPlane instead
        // of breaking the control plane later.
        let key = KeyPair::from_pem(&bundle.ca_key_pem).map_err(|_| PkiError::Invalid {
            secret: secret.to_string(),
            key: CA_KEY,
            what: "private key",
        })?;
        Issuer::from_ca_cert_pem(&bundle.ca_cert_pem, &key).map_err(|_| PkiError::Invalid {
            secret: secret.to_string(),
            key: CA_CERT,
            what: "certificate",
        })?;
        if !bundle.root_cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(PkiError::Invalid { secret: secret.to_string(), key: ROOT_CERT, what: "certificate" });
        }
        Ok(bundle)
    }

    /// Secret data in `cacerts` layout.
    pub fn to_secret_data(&self) -> BTreeMap<String, Vec<u8>> {
        [
            (CA_CERT, &self.ca_cert_pem),
            (CA_KEY, &self.ca_key_pem),
            (ROOT_CERT, &self.root_cert_pem),
            (CERT_CHAIN, &self.cert_chain_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
    }

    /// Issues a TLS serving certificate for `dns_names`, valid `SERVING_DAYS`. Returns
    /// (certificate chain PEM, private key PEM).
    pub fn issue_serving_cert(&self, dns_names: &[String]) -> Result<(String, String), PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, &ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_names.first().cloned().unwrap_or_default());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = days_from_now(SERVING_DAYS);
        let cert = params.signed_by(&key, &issuer)?;
        let mut chain = cert.pem();
        if self.ca_cert_pem != self.root_cert_pem {
            chain.push_str(&self.cert_chain_pem);
        }
        Ok((chain, key.serialize_pem()))
    }
}

/// Longest workload certificate the CA signs (Istio's default `MAX_WORKLOAD_CERT_TTL` is 90
/// days; Skein keeps workload certificates short-lived).
pub const MAX_WORKLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl CaBundle {
    /// Signs a workload's PKCS#10 CSR (PEM) for `spiffe_id`, valid for `ttl` (at most
    /// [`MAX_WORKLOAD_TTL`]). Whatever names the CSR asks for are ignored: the identity is the
    /// one the caller authenticated as. Returns the chain, leaf first, root last.
    pub fn sign_workload_csr(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        ttl: std::time::Duration,
    ) -> Result<Vec<String>, PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, &ca_key)?;
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let ttl = ttl.min(MAX_WORKLOAD_TTL);
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(spiffe_id)?)];
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        // A minute of slack for clocks that disagree a little.
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        csr.params = params;
        let cert = csr.signed_by(&issuer)?;
        let mut chain = vec![cert.pem()];
        if self.ca_cert_pem != self.root_cert_pem {
            chain.push(self.cert_chain_pem.clone());
        } else {
            chain.push(self.root_cert_pem.clone());
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_root_round_trips_through_secret_data() {
        let ca = CaBundle::generate_self_signed("cluster.local").unwrap();
        assert_eq!(ca.ca_cert_pem, ca.root_cert_pem);
        let back = CaBundle::from_secret_data("skein-ca", &ca.to_secret_data()).unwrap();
        assert_eq!(back, ca);
    }

    #[test]
    fn missing_secret_key_is_named() {
        let ca = CaBundle::generate_self_signed("cluster.local").unwrap();
        let mut data = ca.to_secret_data();
        data.remove(CA_KEY);
        let err = CaBundle::from_secret_data("cacerts", &data).unwrap_err().to_string();
        assert!(err.contains("cacerts") && err.contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn garbage_key_is_rejected_without_echoing_it() {
        let ca = CaBundle::generate_self_signed("cluster.local").unwrap();
        let mut data = ca.to_secret_data();
        data.insert(CA_KEY.into(), b"SECRET-GARBAGE".to_vec());
        let err = CaBundle::from_secret_data("cacerts", &data).unwrap_err().to_string();
        assert!(err.contains("ca-key.pem") && !err.contains("SECRET-GARBAGE"), "{err}");
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let ca = CaBundle::generate_self_signed("cluster.local").unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn serving_cert_is_signed_by_the_root_for_the_service_names() {
        let ca = CaBundle::generate_self_signed("cluster.local").unwrap();
        let names = vec!["skein-controlplane.skein-system.svc".to_string()];
        let (chain, key) = ca.issue_serving_cert(&names).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let (_, leaf) = x509_parser::pem::parse_x509_pem(chain.as_bytes()).unwrap();
        let cert = leaf.parse_x509().unwrap();
        let (_, root) = x509_parser::pem::parse_x509_pem(ca.root_cert_pem.as_bytes()).unwrap();
        let root = root.parse_x509().unwrap();
        assert_eq!(cert.issuer(), root.subject());
        cert.verify_signature(Some(root.public_key())).expect("signed by the root");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(format!("{:?}", san.value).contains("skein-controlplane.skein-system.svc"));
    }

    #[test]
    fn workload_csr_is_signed_for_the_authenticated_identity_only() {
        let ca = CaBundle::generate_self_signed("cluster.local").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
        asked
            .subject_alt_names
            .push(rcgen::SanType::URI("spiffe://cluster.local/ns/kube-system/sa/admin".try_into().unwrap()));
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let id = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";
        let chain = ca.sign_workload_csr(&csr, id, std::time::Duration::from_secs(90 * 24 * 3600)).unwrap();
        assert_eq!(chain.len(), 2);
        let (_, leaf) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
        let cert = leaf.parse_x509().unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, vec![format!("URI({id})")]);
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(lifetime <= 24 * 3600 + 60, "ttl capped at 24 h, got {lifetime} s");
        let (_, root) = x509_parser::pem::parse_x509_pem(ca.root_cert_pem.as_bytes()).unwrap();
        cert.verify_signature(Some(root.parse_x509().unwrap().public_key())).unwrap();
        assert!(ca.sign_workload_csr("not a csr", id, std::time::Duration::from_secs(60)).is_err());
    }
}
