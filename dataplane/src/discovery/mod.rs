//! Control-plane-fed configuration: the proxy's side of the discovery stream, and its
//! workload certificate.
//!
//! Certificates: the proxy makes its own key (it never leaves the process's files), sends a
//! CSR with its ServiceAccount token to the CA, writes the signed chain next to the key, and
//! renews at half the lifetime. A renewal re-applies the running config, so new connections
//! use the new certificate while open ones finish with the old (no request fails); clusters
//! keep their pools and load-balancing, outlier and breaker state.
//!
//! Discovery: one stream; every pushed config is converted (`TryFrom`, typed errors), given
//! the local certificate files, and applied; the answer is an ACK with the version, or a
//! NACK with the reason while the last good config stays in force. A broken stream is
//! re-opened with backoff, sending the version the proxy runs so an unchanged config is not
//! re-sent. A delta (changed clusters only) is applied to the running config when that is the
//! delta's base, and NACKed otherwise, upon which the control plane sends the whole config.

mod ads;
mod certs;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use skein_api::proxy::IdentityFiles;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use ads::{AdsClient, AdsConfig, RejectReason};
pub use certs::{CertError, CertificateSource, GrpcIssuer, keep_certificates};

use crate::{metrics::Metrics, store::Store};

/// File names in the certificate directory (Istio's names, shared with the control plane).
pub use skein_api::names::{CERT_CHAIN_FILE as CERT_CHAIN, KEY_FILE as KEY, ROOT_CERT_FILE as ROOT_CERT};

/// Why the discovery client cannot start (bad flags or files): nothing a retry fixes.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `--discovery-address` was not given.
    #[error("--discovery-address is required")]
    NoAddress,
    /// Neither `--node-id` nor the pod's environment names the node.
    #[error("--node-id or ${0} is required")]
    NoNodeId(&'static str),
    /// A file could not be read or a directory made.
    #[error("{path}: {source}")]
    File {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address or TLS settings do not make an endpoint.
    #[error("--discovery-address {address:?}: {reason}")]
    Endpoint {
        /// The address given.
        address: String,
        /// Why.
        reason: String,
    },
    /// The certificate task ended before issuing a certificate.
    #[error("the certificate task ended")]
    CertificatesEnded,
}

/// How to reach the control plane and who this proxy is.
#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryArgs {
    /// Control plane gRPC address (`host:port`, TLS; Istio's 15012).
    #[arg(long = "discovery-address")]
    pub address: Option<String>,
    /// Name the control plane's certificate must carry. Default: the address's host.
    #[arg(long = "discovery-server-name")]
    pub server_name: Option<String>,
    /// Mesh root certificate (PEM) the control plane's certificate chains to.
    #[arg(long = "discovery-root-cert", default_value = "/var/run/secrets/istio/root-cert.pem")]
    pub root_cert: PathBuf,
    /// ServiceAccount token (audience `istio-ca`) proving this workload's identity to the CA.
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    pub token_file: PathBuf,
    /// Where the workload certificate and key are written.
    #[arg(long, default_value = "/var/run/skein/certs")]
    pub cert_dir: PathBuf,
    /// Requested certificate lifetime (the CA caps it at 24 h). `SECRET_TTL` is Istio's name
    /// for it (set per pod through the `proxy.istio.io/config` annotation's `proxyMetadata`).
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = crate::parse_duration_arg)]
    pub cert_ttl: Duration,
    /// Istio node id. Default: `<proxy-type>~$INSTANCE_IP~$POD_NAME.$POD_NAMESPACE~$POD_NAMESPACE.svc.cluster.local`.
    #[arg(long)]
    pub node_id: Option<String>,
    /// What this proxy is when the node id comes from the pod's environment: `sidecar` (beside
    /// a workload, traffic captured) or `router` (a gateway), as Istio's `proxy sidecar|router`.
    #[arg(long, value_enum, default_value_t = ProxyType::Sidecar)]
    pub proxy_type: ProxyType,
    /// Largest config accepted from the control plane, all chunks together (bytes); a larger
    /// one is refused (NACK) and the running config stays.
    #[arg(long, env = "SKEIN_MAX_CONFIG_BYTES", default_value_t = ads::DEFAULT_MAX_CONFIG)]
    pub max_config_bytes: usize,
}

/// The proxy's role, Istio's node-id prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyType {
    /// Beside a workload.
    Sidecar,
    /// A gateway.
    Router,
}

impl ProxyType {
    fn as_str(self) -> &'static str {
        match self {
            ProxyType::Sidecar => "sidecar",
            ProxyType::Router => "router",
        }
    }
}

impl DiscoveryArgs {
    /// The node id, from the flag or the pod's environment (what injected sidecars use).
    pub fn node_id(&self) -> Result<String, DiscoveryError> {
        node_id(self.node_id.as_deref(), self.proxy_type, |k| std::env::var(k).ok())
    }

    fn identity_files(&self) -> IdentityFiles {
        IdentityFiles {
            cert_chain: self.cert_dir.join(CERT_CHAIN),
            private_key: self.cert_dir.join(KEY),
            root_cert: self.cert_dir.join(ROOT_CERT),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, DiscoveryError> {
        let root = read(&self.root_cert)?;
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h).trim_matches(['[', ']']);
        let name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root)).domain_name(name);
        let bad = |reason: String| DiscoveryError::Endpoint { address: address.to_string(), reason };
        let endpoint = Endpoint::from_shared(format!("https://{address}"))
            .map_err(|e| bad(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| bad(format!("tls: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Ok(endpoint.connect_lazy())
    }
}

/// `flag`, else Istio's node id from the pod's downward-API environment:
/// `<kind>~$INSTANCE_IP~$POD_NAME.$POD_NAMESPACE~$POD_NAMESPACE.svc.cluster.local`.
fn node_id(
    flag: Option<&str>,
    kind: ProxyType,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, DiscoveryError> {
    if let Some(id) = flag {
        return Ok(id.to_string());
    }
    let var = |k: &'static str| env(k).filter(|v| !v.is_empty()).ok_or(DiscoveryError::NoNodeId(k));
    let (ip, pod, ns) = (var("INSTANCE_IP")?, var("POD_NAME")?, var("POD_NAMESPACE")?);
    Ok(format!("{}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local", kind.as_str()))
}

fn read(path: &Path) -> Result<Vec<u8>, DiscoveryError> {
    std::fs::read(path).map_err(|source| DiscoveryError::File { path: path.to_path_buf(), source })
}

/// Runs certificate provisioning and the discovery stream until the task is dropped. Returns
/// early only for errors no retry can fix (bad flags, unreadable root).
pub async fn run(args: DiscoveryArgs, store: Store, metrics: Metrics) -> Result<(), DiscoveryError> {
    let address = args.address.clone().ok_or(DiscoveryError::NoAddress)?;
    let node_id = args.node_id()?;
    let channel = args.channel(&address)?;
    std::fs::create_dir_all(&args.cert_dir)
        .map_err(|source| DiscoveryError::File { path: args.cert_dir.clone(), source })?;
    let (certs_tx, mut certs_rx) = watch::channel(0u64);
    let issuer = GrpcIssuer::new(&args, channel.clone());
    tokio::spawn(keep_certificates(issuer, store.clone(), certs_tx));
    // No config can be applied before there is an identity to serve mTLS with.
    while *certs_rx.borrow_and_update() == 0 {
        if certs_rx.changed().await.is_err() {
            return Err(DiscoveryError::CertificatesEnded);
        }
    }
    let config = AdsConfig {
        node_id,
        token_file: args.token_file.clone(),
        identity: args.identity_files(),
        max_config: args.max_config_bytes,
    };
    AdsClient::new(config, store, metrics).run(channel).await;
    Ok(())
}

/// Exponential backoff, 200 ms doubling to 3.2 s, reset by a successful response.
#[derive(Debug, Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        self.0 = (self.0 + 1).min(5);
        Duration::from_millis(200 << (self.0 - 1)).min(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::default();
        let seq: Vec<u64> = (0..7).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(seq, vec![200, 400, 800, 1600, 3200, 3200, 3200]);
    }

    #[test]
    fn node_id_comes_from_the_flag_else_from_the_pods_environment() {
        let none = |_: &str| None;
        let id = "sidecar~1.2.3.4~a.b~b.svc.cluster.local";
        assert_eq!(node_id(Some(id), ProxyType::Router, none).unwrap(), id);
        // What an injected sidecar has: the downward API's INSTANCE_IP, POD_NAME, POD_NAMESPACE.
        let pod = |k: &str| match k {
            "INSTANCE_IP" => Some("10.1.2.3".to_string()),
            "POD_NAME" => Some("reviews-v1-abc".to_string()),
            "POD_NAMESPACE" => Some("bookinfo".to_string()),
            _ => None,
        };
        assert_eq!(
            node_id(None, ProxyType::Sidecar, pod).unwrap(),
            "sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        // A gateway pod (the operator runs gateways with --proxy-type=router).
        assert_eq!(
            node_id(None, ProxyType::Router, pod).unwrap(),
            "router~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        let no_ns = |k: &str| if k == "POD_NAMESPACE" { Some(String::new()) } else { pod(k) };
        assert_eq!(
            node_id(None, ProxyType::Sidecar, no_ns).unwrap_err().to_string(),
            "--node-id or $POD_NAMESPACE is required"
        );
        assert!(matches!(node_id(None, ProxyType::Sidecar, none), Err(DiscoveryError::NoNodeId("INSTANCE_IP"))));
    }
}
