//! The discovery (ADS-like) client: one bidirectional stream to the control plane; every
//! pushed config (or delta) is decoded, completed with this proxy's certificate files and
//! applied, and answered with an ACK, or a NACK with the reason while the last good config
//! stays. A broken stream is re-opened with back-off, naming the version the proxy runs.

use std::path::PathBuf;

use skein_api::proxy::{
    ConfigDelta, IdentityFiles, InvalidConfig, ProxyConfig,
    wire::pb::{self, proxy_discovery_client::ProxyDiscoveryClient},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::Backoff;
use crate::{metrics::Metrics, store::Store};

/// Default largest config accepted, all chunks together (a mesh of 10 000 services fits well
/// within it).
pub const DEFAULT_MAX_CONFIG: usize = 64 << 20;
/// One response is decoded up to this size even under a smaller config limit, so that a
/// config over the limit is answered with a NACK naming it (the control plane's chunks are
/// 32 KiB by default) instead of a broken stream the control plane cannot report.
const MIN_MESSAGE_LIMIT: usize = 1 << 20;

/// Who this proxy is to the control plane.
#[derive(Debug, Clone)]
pub struct AdsConfig {
    /// Istio node id.
    pub node_id: String,
    /// ServiceAccount token sent as `authorization: Bearer` (read anew on every connection:
    /// tokens are rotated).
    pub token_file: PathBuf,
    /// The certificate files every applied config serves mTLS with.
    pub identity: IdentityFiles,
    /// Largest config accepted, all chunks together; a larger one is refused (NACK) without
    /// keeping more than this much of it.
    pub max_config: usize,
}

/// Why a pushed config was refused (the NACK's `error_detail`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    /// Larger than [`AdsConfig::max_config`] in all.
    #[error("config larger than {0} bytes")]
    TooLarge(usize),
    /// Not the protobuf message it should be.
    #[error("{what}: not a {what} message: {reason}")]
    Decode {
        /// `ProxyConfig` or `ConfigDelta`.
        what: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// A delta whose base is not the config this proxy runs.
    #[error("delta against version {base:?}, but this proxy runs {running:?}")]
    WrongBase {
        /// The delta's base.
        base: String,
        /// The running version.
        running: String,
    },
    /// The config (or the result of the delta) is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
}

/// The client's state between streams.
#[derive(Debug, Default)]
struct AdsState {
    /// Version of the running config (sent on reconnect so it is not sent again).
    running: String,
    /// Reconnect back-off, reset by every response.
    backoff: Backoff,
}

/// The proxy's discovery client.
pub struct AdsClient {
    config: AdsConfig,
    state: AdsState,
    store: Store,
    metrics: Metrics,
}

impl AdsClient {
    /// A client applying configs to `store`.
    pub fn new(config: AdsConfig, store: Store, metrics: Metrics) -> Self {
        Self { config, state: AdsState::default(), store, metrics }
    }

    /// Keeps a stream open on `channel` forever, reconnecting with back-off.
    pub async fn run(mut self, channel: Channel) {
        loop {
            match self.stream(&channel).await {
                Ok(()) => info!("discovery stream closed by the control plane; reconnecting"),
                Err(e) => warn!(error = %e, "discovery stream failed; reconnecting"),
            }
            tokio::time::sleep(self.state.backoff.next()).await;
        }
    }

    /// One stream, until it ends.
    async fn stream(&mut self, channel: &Channel) -> Result<(), tonic::Status> {
        let mut client = ProxyDiscoveryClient::new(channel.clone())
            .max_decoding_message_size(self.config.max_config.max(MIN_MESSAGE_LIMIT));
        let (tx, rx) = mpsc::channel(4);
        let node = pb::Node { id: self.config.node_id.clone(), ..Default::default() };
        let hello =
            pb::DiscoveryRequest { node: Some(node), version_info: self.state.running.clone(), ..Default::default() };
        tx.send(hello).await.map_err(|_| tonic::Status::internal("request channel closed"))?;
        // The ServiceAccount token proves who this proxy is: a gateway is sent the TLS Secrets
        // of its namespace only when it does.
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Ok(token) = std::fs::read_to_string(&self.config.token_file)
            && let Ok(value) = format!("Bearer {}", token.trim()).parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        let mut responses = client.stream_config(request).await?.into_inner();
        info!(node = self.config.node_id, "discovery stream open");
        // A config may come in chunks with the same nonce; it is applied (or refused as too
        // large, without keeping the excess) once the last chunk has arrived.
        let (mut chunks, mut size) = (Vec::<bytes::Bytes>::new(), 0usize);
        while let Some(resp) = responses.message().await? {
            self.state.backoff = Backoff::default();
            size += resp.config.len();
            let max = self.config.max_config;
            if size <= max {
                chunks.push(resp.config);
            }
            if resp.more {
                continue;
            }
            let bytes: bytes::Bytes = chunks.concat().into();
            let result = match size {
                s if s > max => Err(RejectReason::TooLarge(max)),
                _ if !resp.base_version.is_empty() => self.apply_delta(bytes, &resp.base_version, &resp.version_info),
                _ => self.apply(bytes, &resp.version_info),
            };
            (chunks, size) = (Vec::new(), 0);
            if tx.send(self.answer(result, resp.version_info, resp.nonce)).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// The ACK or NACK for one push.
    fn answer(&mut self, result: Result<(), RejectReason>, version: String, nonce: String) -> pb::DiscoveryRequest {
        match result {
            Ok(()) => {
                self.state.running = version.clone();
                info!(version, "configuration applied");
                pb::DiscoveryRequest { version_info: version, response_nonce: nonce, ..Default::default() }
            }
            Err(e) => {
                self.metrics.config_rejected.inc();
                warn!(version, error = %e, "configuration rejected (NACK); the last good one stays in force");
                pb::DiscoveryRequest {
                    version_info: self.state.running.clone(),
                    response_nonce: nonce,
                    error_detail: e.to_string(),
                    ..Default::default()
                }
            }
        }
    }

    /// Converts, completes and applies one pushed config.
    fn apply(&self, config: bytes::Bytes, version: &str) -> Result<(), RejectReason> {
        use prost::Message as _;
        let wire = pb::ProxyConfig::decode(config)
            .map_err(|e| RejectReason::Decode { what: "ProxyConfig", reason: e.to_string() })?;
        let mut cfg = ProxyConfig::try_from(wire)?;
        cfg.version = version.to_string();
        // The identity is this proxy's own: key material is never sent over the wire.
        cfg.identity = Some(self.config.identity.clone());
        Ok(self.store.apply(cfg)?)
    }

    /// Applies an incremental update to the running config, which must be the delta's base.
    fn apply_delta(&self, delta: bytes::Bytes, base: &str, version: &str) -> Result<(), RejectReason> {
        apply_delta(delta, base, &self.state.running, version, &self.store)
    }
}

/// Applies `delta` (against `base`) to `store`'s config, which runs `running`.
fn apply_delta(
    delta: bytes::Bytes,
    base: &str,
    running: &str,
    version: &str,
    store: &Store,
) -> Result<(), RejectReason> {
    use prost::Message as _;
    if base != running || !store.is_configured() {
        return Err(RejectReason::WrongBase { base: base.to_string(), running: running.to_string() });
    }
    let wire = pb::ConfigDelta::decode(delta)
        .map_err(|e| RejectReason::Decode { what: "ConfigDelta", reason: e.to_string() })?;
    let delta = ConfigDelta::try_from(wire)?;
    let mut cfg = delta.apply_to(&store.current().config);
    cfg.version = version.to_string();
    Ok(store.apply(cfg)?)
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
        assert_eq!(err, RejectReason::WrongBase { base: "v0".into(), running: "v1".into() });
        assert!(err.to_string().contains("runs \"v1\""), "{err}");
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
}
