//! A peer's remote Secret: one kubeconfig per data key (the key is the peer's cluster name, as
//! in Istio's remote secrets), checked before any client is built from it.
//!
//! A kubeconfig that runs a program (`exec`, `auth-provider`) or reads a file of the operator's
//! filesystem is refused: whoever can write a Secret in the mesh namespace would otherwise run
//! code or read files as the operator.

use std::collections::BTreeMap;

use base64::Engine as _;
use jiff::Timestamp;
use kube::config::{AuthInfo, Kubeconfig};

/// Why a remote Secret (or one of its kubeconfigs) is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecret {
    /// The Secret holds no data key.
    #[error("the Secret holds no kubeconfig (one data key per cluster, named after it)")]
    Empty,
    /// A data key is not a valid cluster name.
    #[error("data key {0:?} is not a valid cluster name (a DNS label: lowercase letters, digits, '-', at most 63)")]
    ClusterName(String),
    /// The kubeconfig is not UTF-8 YAML of a kubeconfig.
    #[error("data key {key:?}: not a kubeconfig: {reason}")]
    NotKubeconfig {
        /// Data key.
        key: String,
        /// Parser message.
        reason: String,
    },
    /// No context to use.
    #[error("data key {key:?}: {reason}")]
    Context {
        /// Data key.
        key: String,
        /// What is missing.
        reason: String,
    },
    /// The kubeconfig would run a program or read a local file.
    #[error("data key {key:?}: {field} is refused: {why}")]
    Refused {
        /// Data key.
        key: String,
        /// Offending kubeconfig field (`users[name].exec`, ...).
        field: String,
        /// Why.
        why: &'static str,
    },
}

/// One peer's credentials, checked.
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    /// The peer's cluster name.
    pub cluster: String,
    /// Its kubeconfig (only the current context is used).
    pub kubeconfig: Kubeconfig,
    /// Hash of the kubeconfig's bytes: a different value means new credentials.
    pub fingerprint: u64,
    /// Earliest expiry of the credentials (token `exp`, client certificate `notAfter`).
    pub expires: Option<Timestamp>,
}

/// Whether `name` is a DNS label (what cluster names are).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Reads every kubeconfig of a remote Secret's `data`: one result per data key, in key order.
/// An empty Secret is one error.
pub fn parse(data: &BTreeMap<String, Vec<u8>>) -> Vec<Result<PeerCredentials, (String, InvalidSecret)>> {
    if data.is_empty() {
        return vec![Err((String::new(), InvalidSecret::Empty))];
    }
    data.iter().map(|(key, bytes)| parse_one(key, bytes).map_err(|e| (key.clone(), e))).collect()
}

fn parse_one(key: &str, bytes: &[u8]) -> Result<PeerCredentials, InvalidSecret> {
    if !is_dns_label(key) {
        return Err(InvalidSecret::ClusterName(key.to_string()));
    }
    let not_kubeconfig = |reason: String| InvalidSecret::NotKubeconfig { key: key.to_string(), reason };
    let text = std::str::from_utf8(bytes).map_err(|_| not_kubeconfig("not UTF-8".into()))?;
    if text.trim().is_empty() {
        return Err(not_kubeconfig("empty".into()));
    }
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| not_kubeconfig(e.to_string()))?;
    let context_error = |reason: String| InvalidSecret::Context { key: key.to_string(), reason };
    let context_name = match (&kubeconfig.current_context, kubeconfig.contexts.as_slice()) {
        (Some(c), _) if !c.is_empty() => c.clone(),
        (_, [only]) => only.name.clone(),
        _ => return Err(context_error("no current-context, and not exactly one context".into())),
    };
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| context_error(format!("current-context {context_name:?} is not among contexts")))?;
    let refused = |field: String, why| InvalidSecret::Refused { key: key.to_string(), field, why };
    let cluster =
        kubeconfig.clusters.iter().find(|c| c.name == context.cluster).and_then(|c| c.cluster.as_ref()).ok_or_else(
            || context_error(format!("cluster {:?} of the context is not among clusters", context.cluster)),
        )?;
    if cluster.server.as_deref().is_none_or(str::is_empty) {
        return Err(context_error(format!("cluster {:?} has no server", context.cluster)));
    }
    if cluster.certificate_authority.is_some() {
        let field = format!("clusters[{}].certificate-authority", context.cluster);
        return Err(refused(field, "a file path; embed it as certificate-authority-data"));
    }
    let mut expires = None;
    if let Some(user) = &context.user {
        let auth = kubeconfig
            .auth_infos
            .iter()
            .find(|a| &a.name == user)
            .and_then(|a| a.auth_info.as_ref())
            .ok_or_else(|| context_error(format!("user {user:?} of the context is not among users")))?;
        check_auth(user, auth).map_err(|(field, why)| refused(field, why))?;
        expires = expiry(auth);
    }
    Ok(PeerCredentials { cluster: key.to_string(), kubeconfig, fingerprint: fingerprint(bytes), expires })
}

fn check_auth(user: &str, auth: &AuthInfo) -> Result<(), (String, &'static str)> {
    let field = |f: &str| format!("users[{user}].{f}");
    if auth.exec.is_some() {
        return Err((field("exec"), "it runs a program in the operator; use a token or client certificate"));
    }
    if auth.auth_provider.is_some() {
        return Err((field("auth-provider"), "it runs a plugin in the operator; use a token or client certificate"));
    }
    for (name, set) in [
        ("tokenFile", auth.token_file.is_some()),
        ("client-certificate", auth.client_certificate.is_some()),
        ("client-key", auth.client_key.is_some()),
    ] {
        if set {
            return Err((field(name), "a file path on the operator's filesystem; embed the data instead"));
        }
    }
    Ok(())
}

/// Earliest of the token's `exp` and the client certificate's `notAfter`.
fn expiry(auth: &AuthInfo) -> Option<Timestamp> {
    use secrecy::ExposeSecret as _;
    let token = auth.token.as_ref().and_then(|t| token_expiry(t.expose_secret()));
    let cert = auth.client_certificate_data.as_deref().and_then(certificate_expiry);
    token.into_iter().chain(cert).min()
}

/// `exp` of a JWT (service account tokens are JWTs); `None` for other tokens. The signature is
/// not checked: this only reports when the peer will stop accepting it.
pub fn token_expiry(token: &str) -> Option<Timestamp> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Timestamp::from_second(claims.get("exp")?.as_i64()?).ok()
}

/// `notAfter` of a base64 PEM certificate (kubeconfig `client-certificate-data`).
fn certificate_expiry(data_b64: &str) -> Option<Timestamp> {
    let pem = base64::engine::general_purpose::STANDARD.decode(data_b64.trim()).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Timestamp::from_second(cert.validity().not_after.timestamp()).ok()
}

/// FNV-1a of `bytes`: stable across restarts and builds (std's hasher is neither).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: peer\ncontexts: [{{name: peer, context: {{cluster: c, user: u}}}}]\nclusters: [{{name: c, cluster: {{server: 'https://192.0.2.1:6443', certificate-authority-data: Zm9v}}}}]\nusers: [{{name: u, user: {user}}}]\n"
        )
    }

    fn one(key: &str, text: &str) -> Result<PeerCredentials, InvalidSecret> {
        parse(&BTreeMap::from([(key.to_string(), text.as_bytes().to_vec())])).remove(0).map_err(|(_, e)| e)
    }

    fn jwt(exp: i64) -> String {
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.sig", enc(r#"{"alg":"RS256"}"#), enc(&format!(r#"{{"sub":"x","exp":{exp}}}"#)))
    }

    #[test]
    fn a_token_kubeconfig_is_accepted_with_its_expiry() {
        let creds = one("cluster2", &kubeconfig(&format!("{{token: {}}}", jwt(2_000_000_000)))).unwrap();
        assert_eq!(creds.cluster, "cluster2");
        assert_eq!(creds.expires, Some(Timestamp::from_second(2_000_000_000).unwrap()));
        // An opaque token has no expiry to report.
        assert_eq!(one("cluster2", &kubeconfig("{token: abc}")).unwrap().expires, None);
    }

    #[test]
    fn programs_and_local_files_are_refused_naming_the_field() {
        for (user, field) in [
            ("{exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}", "users[u].exec"),
            ("{tokenFile: /var/run/secrets/token}", "users[u].tokenFile"),
            ("{client-certificate: /etc/cert.pem, client-key-data: Zm9v}", "users[u].client-certificate"),
            ("{auth-provider: {name: gcp}}", "users[u].auth-provider"),
        ] {
            match one("cluster2", &kubeconfig(user)) {
                Err(InvalidSecret::Refused { field: f, .. }) => assert_eq!(f, field, "{user}"),
                other => panic!("{user}: {other:?}"),
            }
        }
        let ca_file =
            kubeconfig("{token: abc}").replace("certificate-authority-data: Zm9v", "certificate-authority: /ca.pem");
        assert!(
            matches!(one("c2", &ca_file), Err(InvalidSecret::Refused { field, .. }) if field == "clusters[c].certificate-authority")
        );
    }

    #[test]
    fn broken_secrets_say_what_is_wrong() {
        assert!(matches!(parse(&BTreeMap::new()).remove(0), Err((_, InvalidSecret::Empty))));
        assert!(matches!(one("Cluster_2", &kubeconfig("{token: a}")), Err(InvalidSecret::ClusterName(_))));
        assert!(matches!(one("c2", ""), Err(InvalidSecret::NotKubeconfig { .. })));
        assert!(matches!(one("c2", "clusters: ["), Err(InvalidSecret::NotKubeconfig { .. })));
        let no_ctx = kubeconfig("{token: a}").replace("current-context: peer", "current-context: other");
        let e = one("c2", &no_ctx).unwrap_err();
        assert!(e.to_string().contains("\"other\" is not among contexts"), "{e}");
    }

    #[test]
    fn fingerprints_differ_with_the_bytes() {
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
        assert_eq!(fingerprint(b"kubeconfig"), fingerprint(b"kubeconfig"));
    }
}
