//! Peers' roots of trust: what identifies a bundle (its fingerprint, as `status.remoteClusters`
//! reports it).

use std::fmt::Write as _;

/// Hex SHA-256 over the DER of every certificate in `pem`, in order (PEM formatting does not
/// change it). Text that holds no certificate is hashed as is, so a change still shows.
pub fn fingerprint(pem: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut any = false;
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).flatten() {
        ctx.update(&p.contents);
        any = true;
    }
    if !any {
        ctx.update(pem.as_bytes());
    }
    ctx.finish().as_ref().iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_certificates_not_their_formatting() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = rcgen::CertificateParams::new(vec!["root".into()]).unwrap().self_signed(&key).unwrap().pem();
        let f = fingerprint(&pem);
        assert_eq!(f.len(), 64);
        assert_eq!(fingerprint(&format!("\n{}\n", pem.replace('\n', "\r\n"))), f);
        let other = rcgen::CertificateParams::new(vec!["other".into()]).unwrap().self_signed(&key).unwrap().pem();
        assert_ne!(fingerprint(&other), f);
    }
}
