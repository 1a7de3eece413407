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

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use skein_api::proxy::{
    ConfigDelta, IdentityFiles, ProxyConfig,
    wire::pb::{
        self, certificate_service_client::CertificateServiceClient, proxy_discovery_client::ProxyDiscoveryClient,
    },
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::{debug, info, warn};

use crate::{metrics::Metrics, store::Store};

/// Largest config accepted, all chunks together (a mesh of 10 000 services fits well within it).
const MAX_MESSAGE: usize = 64 << 20;
/// File names in the certificate directory (Istio's names, shared with the control plane).
pub use skein_api::names::{CERT_CHAIN_FILE as CERT_CHAIN, KEY_FILE as KEY, ROOT_CERT_FILE as ROOT_CERT};

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
    /// Requested certificate lifetime (the CA caps it at 24 h).
    #[arg(long, default_value = "24h", value_parser = crate::parse_duration_arg)]
    pub cert_ttl: Duration,
    /// Istio node id. Default: `sidecar~$INSTANCE_IP~$POD_NAME.$POD_NAMESPACE~$POD_NAMESPACE.svc.cluster.local`.
    #[arg(long)]
    pub node_id: Option<String>,
}

impl DiscoveryArgs {
    /// The node id, from the flag or the pod's environment.
    pub fn node_id(&self) -> Result<String, String> {
        if let Some(id) = &self.node_id {
            return Ok(id.clone());
        }
        let var = |k: &str| std::env::var(k).map_err(|_| format!("--node-id or ${k} is required"));
        let (ip, pod, ns) = (var("INSTANCE_IP")?, var("POD_NAME")?, var("POD_NAMESPACE")?);
        Ok(format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"))
    }

    fn identity_files(&self) -> IdentityFiles {
        IdentityFiles {
            cert_chain: self.cert_dir.join(CERT_CHAIN),
            private_key: self.cert_dir.join(KEY),
            root_cert: self.cert_dir.join(ROOT_CERT),
        }
    }

    async fn channel(&self, address: &str) -> Result<Channel, String> {
        let root = std::fs::read(&self.root_cert).map_err(|e| format!("read {}: {e}", self.root_cert.display()))?;
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h).trim_matches(['[', ']']);
        let name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root)).domain_name(name);
        let endpoint = Endpoint::from_shared(format!("https://{address}"))
            .map_err(|e| format!("--discovery-address {address:?}: {e}"))?
            .tls_config(tls)
            .map_err(|e| format!("tls: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Ok(endpoint.connect_lazy())
    }
}

/// Runs certificate provisioning and the discovery stream until the task is dropped. Returns
/// early only for errors no retry can fix (bad flags, unreadable root).
pub async fn run(args: DiscoveryArgs, store: Store, metrics: Metrics) -> Result<(), String> {
    let address = args.address.clone().ok_or("--discovery-address is required")?;
    let node_id = args.node_id()?;
    let channel = args.channel(&address).await?;
    std::fs::create_dir_all(&args.cert_dir).map_err(|e| format!("create {}: {e}", args.cert_dir.display()))?;
    let (certs_tx, mut certs_rx) = watch::channel(0u64);
    tokio::spawn(certificates(args.clone(), channel.clone(), store.clone(), certs_tx));
    // No config can be applied before there is an identity to serve mTLS with.
    while *certs_rx.borrow_and_update() == 0 {
        if certs_rx.changed().await.is_err() {
            return Err("certificate task ended".into());
        }
    }
    let identity = args.identity_files();
    let mut backoff = Backoff::default();
    let mut running = String::new();
    loop {
        match stream(&channel, &node_id, &args.token_file, &identity, &store, &metrics, &mut running, &mut backoff)
            .await
        {
            Ok(()) => info!("discovery stream closed by the control plane; reconnecting"),
            Err(e) => warn!(error = %e, "discovery stream failed; reconnecting"),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Exponential backoff, 200 ms doubling to 3.2 s, reset by a successful response.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        self.0 = (self.0 + 1).min(5);
        Duration::from_millis(200 << (self.0 - 1)).min(Duration::from_secs(5))
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    channel: &Channel,
    node_id: &str,
    token_file: &Path,
    identity: &IdentityFiles,
    store: &Store,
    metrics: &Metrics,
    running: &mut String,
    backoff: &mut Backoff,
) -> Result<(), tonic::Status> {
    let mut client = ProxyDiscoveryClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(4);
    let node = pb::Node { id: node_id.to_string(), ..Default::default() };
    let hello = pb::DiscoveryRequest { node: Some(node), version_info: running.clone(), ..Default::default() };
    tx.send(hello).await.map_err(|_| tonic::Status::internal("request channel closed"))?;
    // The ServiceAccount token proves who this proxy is: a gateway is sent the TLS Secrets of
    // its namespace only when it does. Read anew on every connection (tokens are rotated).
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Ok(token) = std::fs::read_to_string(token_file)
        && let Ok(value) = format!("Bearer {}", token.trim()).parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    let mut responses = client.stream_config(request).await?.into_inner();
    info!(node = node_id, "discovery stream open");
    // A config may come in chunks with the same nonce; it is applied (or refused as too
    // large, without keeping the excess) once the last chunk has arrived.
    let (mut chunks, mut size) = (Vec::<bytes::Bytes>::new(), 0usize);
    while let Some(resp) = responses.message().await? {
        *backoff = Backoff::default();
        size += resp.config.len();
        if size <= MAX_MESSAGE {
            chunks.push(resp.config);
        }
        if resp.more {
            continue;
        }
        let result = match size {
            s if s > MAX_MESSAGE => Err(format!("config larger than {MAX_MESSAGE} bytes")),
            _ if !resp.base_version.is_empty() => {
                apply_delta(chunks.concat().into(), &resp.base_version, running, &resp.version_info, store)
            }
            _ => apply(chunks.concat().into(), &resp.version_info, identity, store),
        };
        (chunks, size) = (Vec::new(), 0);
        let answer = match result {
            Ok(()) => {
                *running = resp.version_info.clone();
                info!(version = resp.version_info, "configuration applied");
                pb::DiscoveryRequest {
                    version_info: resp.version_info,
                    response_nonce: resp.nonce,
                    ..Default::default()
                }
            }
            Err(e) => {
                metrics.config_rejected.inc();
                warn!(version = resp.version_info, error = %e, "configuration rejected (NACK); the last good one stays in force");
                pb::DiscoveryRequest {
                    version_info: running.clone(),
                    response_nonce: resp.nonce,
                    error_detail: e,
                    ..Default::default()
                }
            }
        };
        if tx.send(answer).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Converts, completes and applies one pushed config.
fn apply(config: bytes::Bytes, version: &str, identity: &IdentityFiles, store: &Store) -> Result<(), String> {
    use prost::Message as _;
    let wire = pb::ProxyConfig::decode(config).map_err(|e| format!("config: not a ProxyConfig message: {e}"))?;
    let mut cfg = ProxyConfig::try_from(wire).map_err(|e| e.to_string())?;
    cfg.version = version.to_string();
    // The identity is this proxy's own: key material is never sent over the wire.
    cfg.identity = Some(identity.clone());
    store.apply(cfg).map_err(|e| e.to_string())
}

/// Applies an incremental update to the running config, which must be the delta's base.
fn apply_delta(delta: bytes::Bytes, base: &str, running: &str, version: &str, store: &Store) -> Result<(), String> {
    use prost::Message as _;
    if base != running || !store.is_configured() {
        return Err(format!("delta against version {base:?}, but this proxy runs {running:?}"));
    }
    let wire = pb::ConfigDelta::decode(delta).map_err(|e| format!("delta: not a ConfigDelta message: {e}"))?;
    let delta = ConfigDelta::try_from(wire).map_err(|e| e.to_string())?;
    let mut cfg = delta.apply_to(&store.current().config);
    cfg.version = version.to_string();
    store.apply(cfg).map_err(|e| e.to_string())
}

/// Keeps a valid certificate in `args.cert_dir`; bumps `ready` after each issuance.
async fn certificates(args: DiscoveryArgs, channel: Channel, store: Store, ready: watch::Sender<u64>) {
    let mut backoff = Backoff::default();
    loop {
        match issue(&args, &channel).await {
            Ok(lifetime) => {
                backoff = Backoff::default();
                ready.send_modify(|n| *n += 1);
                // Rebuild the running config so new connections use the new certificate.
                if store.is_configured() {
                    let cfg = store.current().config.clone();
                    if let Err(e) = store.apply(cfg) {
                        warn!(error = %e, "renewed certificate not loaded");
                    }
                }
                // Renew at half the lifetime, as Istio's agent does.
                let wait = (lifetime / 2).max(Duration::from_secs(1));
                info!(renew_in = ?wait, "workload certificate ready");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                warn!(error = %e, "certificate request failed; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Requests and writes one certificate; returns its lifetime.
async fn issue(args: &DiscoveryArgs, channel: &Channel) -> Result<Duration, String> {
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| format!("read token {}: {e}", args.token_file.display()))?;
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| format!("csr: {e}"))?;
    let mut req = tonic::Request::new(pb::CertificateRequest {
        csr,
        validity_duration: i64::try_from(args.cert_ttl.as_secs()).unwrap_or(i64::MAX),
    });
    let bearer = format!("Bearer {}", token.trim());
    req.metadata_mut().insert("authorization", bearer.parse().map_err(|_| "token is not a valid header value")?);
    let chain = CertificateServiceClient::new(channel.clone())
        .create_certificate(req)
        .await
        .map_err(|s| format!("CA: {}: {}", s.code(), s.message()))?
        .into_inner()
        .cert_chain;
    let (leaf_and_intermediates, _) = chain.split_at(chain.len().saturating_sub(1));
    if leaf_and_intermediates.is_empty() {
        return Err("CA returned no certificate".into());
    }
    let lifetime = lifetime_of(&leaf_and_intermediates[0])?;
    // The mesh root the proxy trusts is the one it was configured with, not one the CA sent.
    let root = std::fs::read(&args.root_cert).map_err(|e| format!("read {}: {e}", args.root_cert.display()))?;
    // Key before chain: a reader seeing the new chain must find the matching key.
    write_atomic(&args.cert_dir.join(KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&args.cert_dir.join(CERT_CHAIN), leaf_and_intermediates.concat().as_bytes(), 0o644)?;
    write_atomic(&args.cert_dir.join(ROOT_CERT), &root, 0o644)?;
    debug!(dir = %args.cert_dir.display(), "certificate written");
    Ok(lifetime)
}

fn lifetime_of(pem: &str) -> Result<Duration, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("certificate: {e}"))?;
    let cert = p.parse_x509().map_err(|e| format!("certificate: {e}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let left = cert.validity().not_after.timestamp() - now;
    Ok(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_applies_only_to_its_base_and_keeps_the_rest_of_the_config() {
        use prost::Message as _;
        let cfg: ProxyConfig = serde_yaml::from_str(
            "version: v1\nvirtualHosts: [{name: a, domains: [a], routes: [{route: [{cluster: c}]}]}]\nclusters: [{name: c, endpoints: ['127.0.0.1:1']}, {name: d}]\n",
        )
        .unwrap();
        let store = Store::new(cfg.clone()).unwrap();
        let mut c = cfg.clusters[0].clone();
        c.endpoints = vec!["127.0.0.1:2".parse().unwrap()];
        let delta = |d: ConfigDelta| bytes::Bytes::from(pb::ConfigDelta::from(&d).encode_to_vec());
        let change = delta(ConfigDelta { clusters: vec![c.clone()], removed_clusters: vec!["d".into()] });
        let err = apply_delta(change.clone(), "v0", "v1", "v2", &store).unwrap_err();
        assert!(err.contains("runs \"v1\""), "{err}");
        assert_eq!(store.current().config.version, "v1");
        apply_delta(change, "v1", "v1", "v2", &store).unwrap();
        let now = &store.current().config;
        assert_eq!((now.version.as_str(), now.clusters.clone()), ("v2", vec![c]));
        assert_eq!(now.virtual_hosts, cfg.virtual_hosts);
        // A delta leaving a route without its cluster is refused; the config stays.
        let bad = delta(ConfigDelta { removed_clusters: vec!["c".into()], ..Default::default() });
        assert!(apply_delta(bad, "v2", "v2", "v3", &store).is_err());
        assert_eq!(store.current().config.version, "v2");
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::default();
        let seq: Vec<u64> = (0..7).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(seq, vec![200, 400, 800, 1600, 3200, 3200, 3200]);
    }

    #[test]
    fn node_id_comes_from_the_flag() {
        let args = DiscoveryArgs {
            address: None,
            server_name: None,
            root_cert: "r".into(),
            token_file: "t".into(),
            cert_dir: "d".into(),
            cert_ttl: Duration::from_secs(1),
            node_id: Some("sidecar~1.2.3.4~a.b~b.svc.cluster.local".into()),
        };
        assert_eq!(args.node_id().unwrap(), "sidecar~1.2.3.4~a.b~b.svc.cluster.local");
    }
}
