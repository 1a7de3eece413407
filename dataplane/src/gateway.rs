//! Gateway servers: HTTPS terminated with certificates chosen by server name (Istio's
//! `Gateway` tls mode SIMPLE, or MUTUAL with a client CA), and the host patterns that TLS
//! passthrough routes and certificates are selected by.

use std::{fmt, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use skein_api::proxy::{InvalidConfig, ServerTls};

/// Istio's host match: `*` matches everything, `*.example.com` any subdomain, otherwise the
/// name itself (case-insensitive).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern {
        "*" => true,
        p if p.starts_with("*.") => {
            host.len() > p.len() - 1 && host[host.len() - (p.len() - 1)..].eq_ignore_ascii_case(&p[1..])
        }
        p => p.eq_ignore_ascii_case(host),
    }
}

/// Picks the certificate whose hosts match the ClientHello's server name most specifically
/// (exact before wildcard); without a server name, or with no match, the first one.
struct SniResolver {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").field("hosts", &self.certs.iter().map(|c| &c.0).collect::<Vec<_>>()).finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else { return self.certs.first().map(|c| c.1.clone()) };
        let exact = self.certs.iter().find(|(hosts, _)| hosts.iter().any(|h| h.eq_ignore_ascii_case(name)));
        let wild = || {
            self.certs
                .iter()
                .filter_map(|(hosts, k)| {
                    hosts
                        .iter()
                        .filter(|h| h.starts_with('*') && host_matches(h, name))
                        .map(|h| h.len())
                        .max()
                        .map(|l| (l, k))
                })
                .max_by_key(|(l, _)| *l)
                .map(|(_, k)| k)
        };
        exact.map(|c| &c.1).or_else(wild).or_else(|| self.certs.first().map(|c| &c.1)).cloned()
    }
}

/// Reads a file a config field names; failure is a config error naming the field.
pub(crate) fn read(path: String, file: &std::path::Path) -> Result<Vec<u8>, InvalidConfig> {
    std::fs::read(file).map_err(|e| InvalidConfig { path, reason: format!("read {}: {e}", file.display()) })
}

fn bad(path: String, reason: impl fmt::Display) -> InvalidConfig {
    InvalidConfig { path, reason: reason.to_string() }
}

/// Builds the TLS server of a gateway listener. Files that cannot be read or parsed are a
/// config error naming the field, so the last good config stays in force.
pub fn server_config(listener: &str, tls: &ServerTls) -> Result<Arc<ServerConfig>, InvalidConfig> {
    let provider = crate::identity::provider();
    let mut certs = Vec::with_capacity(tls.credentials.len());
    for (i, c) in tls.credentials.iter().enumerate() {
        let at = |f: &str| format!("listeners[{listener}].serverTls.credentials[{i}].{f}");
        let (chain_pem, key_pem) = match &c.inline {
            Some(inline) => (inline.cert_chain.as_bytes().to_vec(), inline.private_key.0.as_bytes().to_vec()),
            None => (read(at("certChain"), &c.cert_chain)?, read(at("privateKey"), &c.private_key)?),
        };
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(at("certChain"), e))?;
        if chain.is_empty() {
            return Err(bad(at("certChain"), "no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(at("privateKey"), e))?;
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| bad(at("privateKey"), e))?;
        certs.push((c.hosts.clone(), Arc::new(key)));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad(format!("listeners[{listener}].serverTls"), e))?;
    // MUTUAL: the CA from the file, or from the (first) inline credential that carries one.
    let inline_ca = tls.credentials.iter().find_map(|c| c.inline.as_ref()?.ca_certificates.clone());
    let ca_pem = match (&tls.ca_certificates, inline_ca) {
        (Some(file), _) => Some(read(format!("listeners[{listener}].serverTls.caCertificates"), file)?),
        (None, Some(pem)) => Some(pem.into_bytes()),
        (None, None) => None,
    };
    let builder = match ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let at = format!("listeners[{listener}].serverTls.caCertificates");
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca) {
                roots.add(cert.map_err(|e| bad(at.clone(), e))?).map_err(|e| bad(at.clone(), e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(at.clone(), e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_follow_istio() {
        assert!(host_matches("*", "anything"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.EXAMPLE.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "aexample.com"));
        assert!(host_matches("Bookinfo.com", "bookinfo.com"));
        assert!(!host_matches("bookinfo.com", "x.bookinfo.com"));
    }
}
