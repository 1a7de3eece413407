//! A Sidecar resource's egress scope: which of the services a sidecar could see it is given
//! (`egress[].hosts`, `<namespace>/<dnsName>`), as Istio scopes a sidecar's configuration.

use std::sync::Arc;

use skein_api::{istio::networking::Sidecar, proxy::OutboundPolicy};

use crate::{registry::ServiceInfo, snapshot::wildcard_covers};

/// The namespace part of an egress host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Namespaces {
    /// `*`: any namespace.
    Any,
    /// A namespace by name (`.` is the Sidecar's own).
    Named(String),
    /// `~`: none (the entry selects nothing).
    None,
}

/// The hosts a Sidecar's egress listener names, resolved against the Sidecar's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressScope {
    hosts: Vec<(Namespaces, String)>,
}

impl EgressScope {
    /// The scope `sidecar` gives a workload of `namespace`: `None` when it names no egress
    /// hosts (every visible service stays visible, as with no Sidecar). `.` is the workload's
    /// namespace, also for the root namespace's Sidecar (Istio's "same namespace" default).
    pub fn of(sidecar: &Sidecar, namespace: &str) -> Option<Arc<Self>> {
        let own = namespace.to_string();
        let hosts: Vec<(Namespaces, String)> = sidecar
            .spec
            .egress
            .iter()
            .flat_map(|l| &l.hosts)
            .filter_map(|h| h.split_once('/'))
            .map(|(ns, dns)| {
                let ns = match ns {
                    "*" => Namespaces::Any,
                    "." => Namespaces::Named(own.clone()),
                    "~" => Namespaces::None,
                    name => Namespaces::Named(name.to_string()),
                };
                (ns, dns.to_ascii_lowercase())
            })
            .collect();
        (!hosts.is_empty()).then(|| Arc::new(Self { hosts }))
    }

    /// Whether `svc` is in scope: some entry names its namespace and covers its host (`*`,
    /// the host itself, or a `*.<suffix>` wildcard covering it).
    pub fn sees(&self, svc: &ServiceInfo) -> bool {
        let host = svc.host.to_ascii_lowercase();
        self.hosts.iter().any(|(ns, dns)| {
            let ns_ok = match ns {
                Namespaces::Any => true,
                Namespaces::Named(n) => *n == svc.namespace,
                Namespaces::None => false,
            };
            ns_ok && (dns == "*" || *dns == host || wildcard_covers(dns, &host))
        })
    }
}

/// The outbound traffic policy a Sidecar sets, if it sets one.
pub fn outbound_policy(sidecar: &Sidecar) -> Option<OutboundPolicy> {
    match sidecar.spec.outbound_traffic_policy.as_ref()?.mode.as_deref()? {
        "REGISTRY_ONLY" => Some(OutboundPolicy::RegistryOnly),
        "ALLOW_ANY" => Some(OutboundPolicy::AllowAny),
        _ => None,
    }
}
