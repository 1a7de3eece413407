//! Listeners on the wire.

use std::path::PathBuf;

use super::authz::authz_policy;
use super::{InvalidConfig, addr, enum_of, path_str, pb};
use crate::proxy::*;

impl TryFrom<pb::Listener> for Listener {
    type Error = InvalidConfig;

    fn try_from(l: pb::Listener) -> Result<Self, InvalidConfig> {
        let at = |f: &str| format!("listeners[{}].{f}", l.name);
        let protocol = match enum_of::<pb::ListenerProtocol>(at("protocol"), l.protocol)? {
            pb::ListenerProtocol::Unspecified | pb::ListenerProtocol::Http => ListenerProtocol::Http,
            pb::ListenerProtocol::Tcp => ListenerProtocol::Tcp,
            pb::ListenerProtocol::AutoPassthrough => ListenerProtocol::AutoPassthrough,
            pb::ListenerProtocol::Tls => ListenerProtocol::Tls,
            pb::ListenerProtocol::Auto => ListenerProtocol::Auto,
        };
        let capture = match enum_of::<pb::Capture>(at("capture"), l.capture)? {
            pb::Capture::Unspecified => None,
            pb::Capture::Outbound => Some(Capture::Outbound),
            pb::Capture::Inbound => Some(Capture::Inbound),
        };
        Ok(Listener {
            address: addr(at("address"), &l.address)?,
            protocol,
            cluster: l.cluster,
            peer_authentication: peer_auth(at("peerAuthentication"), l.peer_authentication)?,
            port_peer_authentication: l
                .port_peer_authentication
                .into_iter()
                .map(|(port, mode)| {
                    let at = at(&format!("portPeerAuthentication[{port}]"));
                    let port = u16::try_from(port).map_err(|_| invalid(at.clone(), "not a port number"))?;
                    Ok((port, peer_auth(at, mode)?))
                })
                .collect::<Result<_, InvalidConfig>>()?,
            authorization: l
                .authorization
                .into_iter()
                .map(|p| authz_policy(&at("authorization"), p))
                .collect::<Result<_, _>>()?,
            capture,
            server_tls: l.server_tls.map(|t| ServerTls {
                credentials: t
                    .credentials
                    .into_iter()
                    .map(|c| ServerCredential {
                        hosts: c.hosts,
                        cert_chain: c.cert_chain.into(),
                        private_key: c.private_key.into(),
                        inline: c.inline.map(|i| InlineCredential {
                            cert_chain: i.cert_chain,
                            private_key: SecretPem(i.private_key),
                            ca_certificates: i.ca_certificates,
                        }),
                    })
                    .collect(),
                ca_certificates: t.ca_certificates.map(PathBuf::from),
            }),
            tls_routes: l
                .tls_routes
                .into_iter()
                .map(|r| TlsRoute { sni_hosts: r.sni_hosts, cluster: r.cluster })
                .collect(),
            passthrough_hosts: l.passthrough_hosts,
            name: l.name,
        })
    }
}

fn peer_auth(path: String, v: i32) -> Result<PeerAuthMode, InvalidConfig> {
    Ok(match enum_of::<pb::PeerAuthMode>(path, v)? {
        pb::PeerAuthMode::Unspecified | pb::PeerAuthMode::Disable => PeerAuthMode::Disable,
        pb::PeerAuthMode::Permissive => PeerAuthMode::Permissive,
        pb::PeerAuthMode::Strict => PeerAuthMode::Strict,
    })
}

fn pb_peer_auth(m: PeerAuthMode) -> i32 {
    (match m {
        PeerAuthMode::Disable => pb::PeerAuthMode::Disable,
        PeerAuthMode::Permissive => pb::PeerAuthMode::Permissive,
        PeerAuthMode::Strict => pb::PeerAuthMode::Strict,
    }) as i32
}

impl From<&Listener> for pb::Listener {
    fn from(l: &Listener) -> Self {
        pb::Listener {
            name: l.name.clone(),
            address: l.address.to_string(),
            protocol: match l.protocol {
                ListenerProtocol::Http => pb::ListenerProtocol::Http,
                ListenerProtocol::Tcp => pb::ListenerProtocol::Tcp,
                ListenerProtocol::AutoPassthrough => pb::ListenerProtocol::AutoPassthrough,
                ListenerProtocol::Tls => pb::ListenerProtocol::Tls,
                ListenerProtocol::Auto => pb::ListenerProtocol::Auto,
            } as i32,
            cluster: l.cluster.clone(),
            peer_authentication: pb_peer_auth(l.peer_authentication),
            port_peer_authentication: l
                .port_peer_authentication
                .iter()
                .map(|(port, mode)| (u32::from(*port), pb_peer_auth(*mode)))
                .collect(),
            authorization: l.authorization.iter().map(Into::into).collect(),
            capture: match l.capture {
                None => pb::Capture::Unspecified,
                Some(Capture::Outbound) => pb::Capture::Outbound,
                Some(Capture::Inbound) => pb::Capture::Inbound,
            } as i32,
            server_tls: l.server_tls.as_ref().map(|t| pb::ServerTls {
                credentials: t
                    .credentials
                    .iter()
                    .map(|c| pb::ServerCredential {
                        hosts: c.hosts.clone(),
                        cert_chain: path_str(&c.cert_chain),
                        private_key: path_str(&c.private_key),
                        inline: c.inline.as_ref().map(|i| pb::InlineCredential {
                            cert_chain: i.cert_chain.clone(),
                            private_key: i.private_key.0.clone(),
                            ca_certificates: i.ca_certificates.clone(),
                        }),
                    })
                    .collect(),
                ca_certificates: t.ca_certificates.as_deref().map(path_str),
            }),
            tls_routes: l
                .tls_routes
                .iter()
                .map(|r| pb::TlsRoute { sni_hosts: r.sni_hosts.clone(), cluster: r.cluster.clone() })
                .collect(),
            passthrough_hosts: l.passthrough_hosts.clone(),
        }
    }
}
