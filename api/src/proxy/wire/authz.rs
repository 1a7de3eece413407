//! Authorization policies on the wire.

use super::{InvalidConfig, enum_of, pb};
use crate::proxy::*;

pub(super) fn authz_policy(at: &str, p: pb::AuthorizationPolicy) -> Result<AuthorizationPolicy, InvalidConfig> {
    let action = match enum_of::<pb::AuthzAction>(format!("{at}[{}].action", p.name), p.action)? {
        pb::AuthzAction::Unspecified | pb::AuthzAction::Allow => AuthzAction::Allow,
        pb::AuthzAction::Deny => AuthzAction::Deny,
    };
    let rules = p
        .rules
        .into_iter()
        .map(|r| AuthzRule {
            from: r
                .from
                .into_iter()
                .map(|s| AuthzFrom {
                    source: AuthzSource {
                        principals: s.principals,
                        not_principals: s.not_principals,
                        namespaces: s.namespaces,
                        not_namespaces: s.not_namespaces,
                        ip_blocks: s.ip_blocks,
                        not_ip_blocks: s.not_ip_blocks,
                    },
                })
                .collect(),
            to: r
                .to
                .into_iter()
                .map(|o| AuthzTo {
                    operation: AuthzOperation {
                        hosts: o.hosts,
                        not_hosts: o.not_hosts,
                        ports: o.ports,
                        not_ports: o.not_ports,
                        methods: o.methods,
                        not_methods: o.not_methods,
                        paths: o.paths,
                        not_paths: o.not_paths,
                    },
                })
                .collect(),
            when: r
                .when
                .into_iter()
                .map(|c| AuthzCondition { key: c.key, values: c.values, not_values: c.not_values })
                .collect(),
        })
        .collect();
    Ok(AuthorizationPolicy { name: p.name, action, rules })
}

impl From<&AuthorizationPolicy> for pb::AuthorizationPolicy {
    fn from(p: &AuthorizationPolicy) -> Self {
        pb::AuthorizationPolicy {
            name: p.name.clone(),
            action: match p.action {
                AuthzAction::Allow => pb::AuthzAction::Allow,
                AuthzAction::Deny => pb::AuthzAction::Deny,
            } as i32,
            rules: p
                .rules
                .iter()
                .map(|r| pb::AuthzRule {
                    from: r
                        .from
                        .iter()
                        .map(|f| {
                            let s = &f.source;
                            pb::AuthzSource {
                                principals: s.principals.clone(),
                                not_principals: s.not_principals.clone(),
                                namespaces: s.namespaces.clone(),
                                not_namespaces: s.not_namespaces.clone(),
                                ip_blocks: s.ip_blocks.clone(),
                                not_ip_blocks: s.not_ip_blocks.clone(),
                            }
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|t| {
                            let o = &t.operation;
                            pb::AuthzOperation {
                                hosts: o.hosts.clone(),
                                not_hosts: o.not_hosts.clone(),
                                ports: o.ports.clone(),
                                not_ports: o.not_ports.clone(),
                                methods: o.methods.clone(),
                                not_methods: o.not_methods.clone(),
                                paths: o.paths.clone(),
                                not_paths: o.not_paths.clone(),
                            }
                        })
                        .collect(),
                    when: r
                        .when
                        .iter()
                        .map(|c| pb::AuthzCondition {
                            key: c.key.clone(),
                            values: c.values.clone(),
                            not_values: c.not_values.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
