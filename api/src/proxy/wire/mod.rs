//! The protobuf wire form of the proxy configuration (`proto/skein/proxy/v1/proxy.proto`) and
//! its conversions. Decoding is `TryFrom` with [`InvalidConfig`] naming the field, so a
//! malformed push is NACKed with a reason; semantic checks stay in `ProxyConfig::validate`.

use std::{net::SocketAddr, time::Duration};

use super::*;

mod authz;
mod cluster;
mod listener;
mod route;

/// Generated messages and tonic services.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("skein.proxy.v1");
}

fn addr(path: String, s: &str) -> Result<SocketAddr, InvalidConfig> {
    s.parse().map_err(|_| invalid(path, format!("{s:?} is not an ip:port address")))
}

fn dur(path: String, d: Option<prost_types::Duration>) -> Result<Option<Duration>, InvalidConfig> {
    d.map(|d| Duration::try_from(d).map_err(|e| invalid(path, format!("invalid duration: {e}")))).transpose()
}

fn pb_dur(d: Option<Duration>) -> Option<prost_types::Duration> {
    d.and_then(|d| prost_types::Duration::try_from(d).ok())
}

/// Decodes a proto enum field: unknown numbers are an error (a newer control plane must not be
/// half-understood silently).
fn enum_of<E: TryFrom<i32>>(path: String, v: i32) -> Result<E, InvalidConfig> {
    E::try_from(v).map_err(|_| invalid(path, format!("unknown enum value {v}")))
}

impl TryFrom<pb::ProxyConfig> for ProxyConfig {
    type Error = InvalidConfig;

    fn try_from(c: pb::ProxyConfig) -> Result<Self, InvalidConfig> {
        let outbound_traffic_policy =
            match enum_of::<pb::OutboundPolicy>("outboundTrafficPolicy".into(), c.outbound_traffic_policy)? {
                pb::OutboundPolicy::Unspecified | pb::OutboundPolicy::AllowAny => OutboundPolicy::AllowAny,
                pb::OutboundPolicy::RegistryOnly => OutboundPolicy::RegistryOnly,
            };
        Ok(ProxyConfig {
            version: c.version,
            outbound_traffic_policy,
            listeners: c.listeners.into_iter().map(Listener::try_from).collect::<Result<_, _>>()?,
            virtual_hosts: c.virtual_hosts.into_iter().map(VirtualHost::try_from).collect::<Result<_, _>>()?,
            clusters: c.clusters.into_iter().map(Cluster::try_from).collect::<Result<_, _>>()?,
            identity: c.identity.map(|i| IdentityFiles {
                cert_chain: i.cert_chain.into(),
                private_key: i.private_key.into(),
                root_cert: i.root_cert.into(),
            }),
            access_log: c
                .access_log
                .map(|a| {
                    let encoding = match enum_of::<pb::AccessLogEncoding>("accessLog.encoding".into(), a.encoding)? {
                        pb::AccessLogEncoding::Json => AccessLogEncoding::Json,
                        _ => AccessLogEncoding::Text,
                    };
                    Ok::<_, InvalidConfig>(AccessLog { path: a.path.into(), encoding })
                })
                .transpose()?,
            name_table: c
                .name_table
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    let addresses = n
                        .addresses
                        .iter()
                        .map(|a| {
                            a.parse().map_err(|_| {
                                invalid(format!("nameTable[{i}].addresses"), format!("{a:?} is not an IP address"))
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    Ok::<_, InvalidConfig>(NameEntry { host: n.host, addresses })
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<&ProxyConfig> for pb::ProxyConfig {
    fn from(c: &ProxyConfig) -> Self {
        pb::ProxyConfig {
            version: c.version.clone(),
            outbound_traffic_policy: match c.outbound_traffic_policy {
                OutboundPolicy::AllowAny => pb::OutboundPolicy::AllowAny,
                OutboundPolicy::RegistryOnly => pb::OutboundPolicy::RegistryOnly,
            } as i32,
            listeners: c.listeners.iter().map(Into::into).collect(),
            virtual_hosts: c.virtual_hosts.iter().map(Into::into).collect(),
            clusters: c.clusters.iter().map(Into::into).collect(),
            identity: c.identity.as_ref().map(|i| pb::IdentityFiles {
                cert_chain: path_str(&i.cert_chain),
                private_key: path_str(&i.private_key),
                root_cert: path_str(&i.root_cert),
            }),
            access_log: c.access_log.as_ref().map(|a| pb::AccessLog {
                path: path_str(&a.path),
                encoding: match a.encoding {
                    AccessLogEncoding::Text => pb::AccessLogEncoding::Text,
                    AccessLogEncoding::Json => pb::AccessLogEncoding::Json,
                } as i32,
            }),
            name_table: c.name_table.iter().map(pb::NameEntry::from).collect(),
        }
    }
}

impl From<&NameEntry> for pb::NameEntry {
    fn from(n: &NameEntry) -> Self {
        pb::NameEntry { host: n.host.clone(), addresses: n.addresses.iter().map(ToString::to_string).collect() }
    }
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

impl TryFrom<pb::ConfigDelta> for ConfigDelta {
    type Error = InvalidConfig;

    fn try_from(d: pb::ConfigDelta) -> Result<Self, InvalidConfig> {
        Ok(ConfigDelta {
            clusters: d.clusters.into_iter().map(Cluster::try_from).collect::<Result<_, _>>()?,
            removed_clusters: d.removed_clusters,
        })
    }
}

impl From<&ConfigDelta> for pb::ConfigDelta {
    fn from(d: &ConfigDelta) -> Self {
        pb::ConfigDelta {
            clusters: d.clusters.iter().map(pb::Cluster::from).collect(),
            removed_clusters: d.removed_clusters.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
