//! Inbound: PeerAuthentication and AuthorizationPolicy of one workload.

use std::net::{Ipv4Addr, SocketAddr};

use kube::ResourceExt;
use skein_api::{
    istio::security::{self as istio, MtlsMode, PeerAuthentication},
    proxy::{self, Capture, Listener, ListenerProtocol, PeerAuthMode},
};

use super::{INBOUND_PORT, Workload};
use crate::snapshot::{Snapshot, age_key, selects};

/// The inbound capture listener of `workload`.
pub fn listener(snap: &Snapshot, workload: &Workload) -> Listener {
    Listener {
        name: "virtualInbound".into(),
        address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, INBOUND_PORT)),
        protocol: ListenerProtocol::Auto,
        cluster: None,
        peer_authentication: peer_authentication(snap, workload),
        port_peer_authentication: port_peer_authentication(snap, workload),
        authorization: authorization(snap, workload),
        capture: Some(Capture::Inbound),
        server_tls: None,
        tls_routes: Vec::new(),
        passthrough_hosts: Vec::new(),
    }
}

/// Istio's PeerAuthentication precedence: the oldest policy selecting the workload, else the
/// namespace's policy, else the mesh-wide one in the root namespace; `UNSET` inherits from
/// the next level; with nothing set the mode is PERMISSIVE.
pub fn peer_authentication(snap: &Snapshot, w: &Workload) -> PeerAuthMode {
    let all = &snap.istio.peer_authentications;
    let oldest = |mut v: Vec<&PeerAuthentication>| {
        v.sort_by_key(|p| age_key(*p));
        v.first().and_then(|p| p.spec.mtls.as_ref()).and_then(|m| m.mode)
    };
    let ns_of = |p: &&PeerAuthentication| p.namespace().unwrap_or_default();
    let workload = oldest(
        all.iter()
            .map(AsRef::as_ref)
            .filter(|p| ns_of(p) == w.namespace)
            .filter(|p| p.spec.selector.as_ref().is_some_and(|s| selects(&s.match_labels, &w.labels)))
            .collect(),
    );
    let namespace = oldest(
        all.iter().map(AsRef::as_ref).filter(|p| ns_of(p) == w.namespace && p.spec.selector.is_none()).collect(),
    );
    let mesh = oldest(
        all.iter()
            .map(AsRef::as_ref)
            .filter(|p| ns_of(p) == snap.mesh.root_namespace && p.spec.selector.is_none())
            .collect(),
    );
    let mode = [workload, namespace, mesh].into_iter().flatten().find(|m| *m != MtlsMode::UNSET);
    match mode {
        Some(MtlsMode::STRICT) => PeerAuthMode::Strict,
        Some(MtlsMode::DISABLE) => PeerAuthMode::Disable,
        _ => PeerAuthMode::Permissive,
    }
}

/// Per-port modes (`portLevelMtls`) of the oldest policy selecting the workload; a port set
/// to `UNSET` keeps the workload's mode.
pub fn port_peer_authentication(snap: &Snapshot, w: &Workload) -> std::collections::BTreeMap<u16, PeerAuthMode> {
    let mut selecting: Vec<&PeerAuthentication> = snap
        .istio
        .peer_authentications
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| p.namespace().as_deref() == Some(w.namespace.as_str()))
        .filter(|p| p.spec.selector.as_ref().is_some_and(|s| selects(&s.match_labels, &w.labels)))
        .collect();
    selecting.sort_by_key(|p| age_key(*p));
    let Some(policy) = selecting.first() else { return Default::default() };
    policy
        .spec
        .port_level_mtls
        .iter()
        .filter_map(|(port, m)| {
            let mode = match m.mode? {
                MtlsMode::STRICT => PeerAuthMode::Strict,
                MtlsMode::PERMISSIVE => PeerAuthMode::Permissive,
                MtlsMode::DISABLE => PeerAuthMode::Disable,
                MtlsMode::UNSET => return None,
            };
            Some((port.parse().ok()?, mode))
        })
        .collect()
}

/// The AuthorizationPolicies applying to `w`: the root namespace's (mesh-wide, or selecting
/// it), and its own namespace's without a selector or with one matching it.
pub fn authorization(snap: &Snapshot, w: &Workload) -> Vec<proxy::AuthorizationPolicy> {
    let mut applying: Vec<&istio::AuthorizationPolicy> = snap
        .istio
        .authorization_policies
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| {
            let ns = p.namespace().unwrap_or_default();
            (ns == w.namespace || ns == snap.mesh.root_namespace)
                && p.spec.selector.as_ref().is_none_or(|s| selects(&s.match_labels, &w.labels))
        })
        .collect();
    applying.sort_by_key(|p| (p.namespace(), p.name_any()));
    applying.into_iter().map(convert).collect()
}

fn convert(p: &istio::AuthorizationPolicy) -> proxy::AuthorizationPolicy {
    proxy::AuthorizationPolicy {
        name: format!("{}.{}", p.namespace().unwrap_or_default(), p.name_any()),
        action: match p.spec.action {
            Some(istio::AuthzAction::DENY) => proxy::AuthzAction::Deny,
            _ => proxy::AuthzAction::Allow,
        },
        rules: p
            .spec
            .rules
            .iter()
            .map(|r| proxy::AuthzRule {
                from: r
                    .from
                    .iter()
                    .map(|f| proxy::AuthzFrom {
                        source: proxy::AuthzSource {
                            principals: f.source.principals.clone(),
                            not_principals: f.source.not_principals.clone(),
                            namespaces: f.source.namespaces.clone(),
                            not_namespaces: f.source.not_namespaces.clone(),
                            ip_blocks: f.source.ip_blocks.clone(),
                            not_ip_blocks: f.source.not_ip_blocks.clone(),
                        },
                    })
                    .collect(),
                to: r
                    .to
                    .iter()
                    .map(|t| proxy::AuthzTo {
                        operation: proxy::AuthzOperation {
                            hosts: t.operation.hosts.clone(),
                            not_hosts: t.operation.not_hosts.clone(),
                            ports: t.operation.ports.clone(),
                            not_ports: t.operation.not_ports.clone(),
                            methods: t.operation.methods.clone(),
                            not_methods: t.operation.not_methods.clone(),
                            paths: t.operation.paths.clone(),
                            not_paths: t.operation.not_paths.clone(),
                        },
                    })
                    .collect(),
                when: r
                    .when
                    .iter()
                    .map(|c| proxy::AuthzCondition {
                        key: c.key.clone(),
                        values: c.values.clone(),
                        not_values: c.not_values.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
