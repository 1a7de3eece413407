//! Which of a peer's Services are exported, and what the importing side needs of each: the
//! ports (with their protocols, chosen as Istio does) and the subset names of the peer's
//! DestinationRules for it.
//!
//! The exporting cluster decides: a Service is exported when it or its namespace carries
//! `mesh.skein.dev/export: "true"`, or when an `ExportRule` of the peer's MeshControlPlane
//! matches it. `mesh.skein.dev/export: "false"` on the Service wins over everything else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use kube::{ResourceExt, core::SelectorExt};
use skein_api::ExportRule;

use super::EXPORT_LABEL;

/// One port of an exported Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    /// Service port.
    pub number: u16,
    /// Port name (`port-<number>` when the Service leaves it unnamed).
    pub name: String,
    /// Istio protocol (`HTTP`, `HTTP2`, `GRPC`, `TLS`, `TCP`, ...).
    pub protocol: String,
}

/// A Service a peer exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedService {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Ports.
    pub ports: Vec<Port>,
    /// Names of the subsets the peer's DestinationRules define for it.
    pub subsets: Vec<String>,
}

/// Whether a Service with `labels` in a namespace with `namespace_labels` is exported under
/// `rules` (the peer's `spec.multiCluster.export`).
pub fn is_exported(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    rules: &[ExportRule],
) -> bool {
    match labels.get(EXPORT_LABEL).map(String::as_str) {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    if namespace_labels.and_then(|l| l.get(EXPORT_LABEL)).is_some_and(|v| v == "true") {
        return true;
    }
    rules.iter().any(|r| {
        let in_namespace = r.namespaces.is_empty() || r.namespaces.iter().any(|n| n == namespace);
        // A selector that cannot be parsed exports nothing (the apiserver validated the rule's
        // shape; an unknown operator is the only way to get here).
        let selected =
            r.selector.clone().map_or(Ok(true), |s| kube::core::Selector::try_from(s).map(|s| s.matches(labels)));
        in_namespace && selected.unwrap_or(false)
    })
}

/// The ports of `svc` as the importing side declares them; `None` for Services that cannot be
/// reached through a gateway (ExternalName, no ports).
pub fn ports(svc: &Service) -> Option<Vec<Port>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ports: Vec<Port> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let number = u16::try_from(p.port).ok().filter(|n| *n > 0)?;
            let name = p.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| format!("port-{number}"));
            Some(Port { number, name, protocol: protocol(p).to_string() })
        })
        .collect();
    (!ports.is_empty()).then_some(ports)
}

/// Istio's protocol selection: `appProtocol`, else the port name's prefix (`http-web`), else
/// TCP (the importing side cannot sniff through a passthrough gateway).
pub fn protocol(port: &ServicePort) -> &'static str {
    let from = |s: &str| match s.to_ascii_lowercase().as_str() {
        "http" => Some("HTTP"),
        "http2" | "kubernetes.io/h2c" => Some("HTTP2"),
        "grpc" | "grpc-web" => Some("GRPC"),
        "https" => Some("HTTPS"),
        "tls" => Some("TLS"),
        "tcp" => Some("TCP"),
        "mongo" => Some("MONGO"),
        "redis" => Some("REDIS"),
        "mysql" => Some("MYSQL"),
        _ => None,
    };
    port.app_protocol
        .as_deref()
        .and_then(from)
        .or_else(|| port.name.as_deref().and_then(|n| from(n.split('-').next().unwrap_or(n))))
        .unwrap_or("TCP")
}

/// Whether DestinationRule `host`, written in namespace `dr_namespace`, names Service
/// `name`.`namespace` (short name in the same namespace, or the FQDN in any domain).
pub fn host_names_service(host: &str, dr_namespace: &str, name: &str, namespace: &str) -> bool {
    if host == name {
        return dr_namespace == namespace;
    }
    host.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_prefix(namespace))
        .and_then(|rest| rest.strip_prefix(".svc."))
        .is_some_and(|domain| !domain.is_empty())
}

/// Whether `svc` is exported, and what the importing side needs of it when it is; subsets
/// from `destination_rules` ((namespace, host, subset names)).
pub fn exported_service(
    svc: &Service,
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    rules: &[ExportRule],
    destination_rules: &[(String, String, Vec<String>)],
) -> Option<ExportedService> {
    let (namespace, name) = (svc.namespace()?, svc.name_any());
    if !is_exported(&namespace, svc.labels(), namespace_labels.get(&namespace), rules) {
        return None;
    }
    let ports = ports(svc)?;
    let mut subsets: Vec<String> = destination_rules
        .iter()
        .filter(|(ns, host, _)| host_names_service(host, ns, &name, &namespace))
        .flat_map(|(_, _, s)| s.iter().cloned())
        .collect();
    subsets.sort();
    subsets.dedup();
    Some(ExportedService { namespace, name, ports, subsets })
}

/// The exported Services among `services` ([`exported_service`]), sorted by namespace and name.
pub fn exported(
    services: &[std::sync::Arc<Service>],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    rules: &[ExportRule],
    destination_rules: &[(String, String, Vec<String>)],
) -> Vec<ExportedService> {
    let mut out: Vec<ExportedService> =
        services.iter().filter_map(|svc| exported_service(svc, namespace_labels, rules, destination_rules)).collect();
    sort(&mut out);
    out
}

/// Sorts exported Services by namespace and name (the order views are compared in).
pub fn sort<S: std::borrow::Borrow<ExportedService>>(services: &mut [S]) {
    services.sort_unstable_by(|a, b| {
        let (a, b) = (a.borrow(), b.borrow());
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn export_is_chosen_by_label_namespace_or_rule_and_false_wins() {
        let rule = ExportRule {
            namespaces: vec!["shop".into()],
            selector: Some(LabelSelector { match_labels: Some(labels(&[("tier", "api")])), ..Default::default() }),
        };
        let ns_exported = labels(&[(EXPORT_LABEL, "true")]);
        for (ns, svc, ns_labels, rules, want) in [
            ("default", labels(&[]), None, vec![], false),
            ("default", labels(&[(EXPORT_LABEL, "true")]), None, vec![], true),
            ("default", labels(&[]), Some(&ns_exported), vec![], true),
            ("default", labels(&[(EXPORT_LABEL, "false")]), Some(&ns_exported), vec![], false),
            ("shop", labels(&[("tier", "api")]), None, vec![rule.clone()], true),
            ("shop", labels(&[("tier", "db")]), None, vec![rule.clone()], false),
            ("other", labels(&[("tier", "api")]), None, vec![rule.clone()], false),
            ("shop", labels(&[("tier", "api"), (EXPORT_LABEL, "false")]), None, vec![rule.clone()], false),
        ] {
            assert_eq!(is_exported(ns, &svc, ns_labels, &rules), want, "{ns} {svc:?} {ns_labels:?}");
        }
    }

    #[test]
    fn protocols_follow_istio_selection() {
        let port = |name: Option<&str>, app: Option<&str>| ServicePort {
            name: name.map(Into::into),
            app_protocol: app.map(Into::into),
            port: 80,
            ..Default::default()
        };
        assert_eq!(protocol(&port(Some("http"), None)), "HTTP");
        assert_eq!(protocol(&port(Some("http-web"), None)), "HTTP");
        assert_eq!(protocol(&port(Some("grpc-api"), None)), "GRPC");
        assert_eq!(protocol(&port(Some("web"), Some("http2"))), "HTTP2");
        assert_eq!(protocol(&port(Some("http"), Some("tcp"))), "TCP", "appProtocol wins");
        assert_eq!(protocol(&port(Some("web"), None)), "TCP");
        assert_eq!(protocol(&port(None, None)), "TCP");
    }

    #[test]
    fn destination_rule_hosts_name_the_service_as_istio_resolves_them() {
        assert!(host_names_service("reviews", "default", "reviews", "default"));
        assert!(!host_names_service("reviews", "other", "reviews", "default"));
        assert!(host_names_service("reviews.default.svc.cluster.local", "other", "reviews", "default"));
        assert!(!host_names_service("reviews.default", "default", "reviews", "default"), "one dot is not expanded");
        assert!(!host_names_service("reviews.defaults.svc.cluster.local", "default", "reviews", "default"));
        assert!(!host_names_service("reviewsx.default.svc.cluster.local", "default", "reviews", "default"));
    }

    #[test]
    fn exported_services_carry_ports_and_subsets() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews", "namespace": "default", "labels": {EXPORT_LABEL: "true"}},
            "spec": {"ports": [{"name": "http", "port": 9080}, {"name": "udp", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let hidden: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ratings", "namespace": "default"}, "spec": {"ports": [{"port": 9080}]}
        }))
        .unwrap();
        let drs = vec![
            ("default".to_string(), "reviews".to_string(), vec!["v3".to_string(), "v2".to_string()]),
            ("other".to_string(), "reviews".to_string(), vec!["x".to_string()]),
        ];
        let got = exported(&[svc.into(), hidden.into()], &BTreeMap::new(), &[], &drs);
        assert_eq!(
            got,
            vec![ExportedService {
                namespace: "default".into(),
                name: "reviews".into(),
                ports: vec![Port { number: 9080, name: "http".into(), protocol: "HTTP".into() }],
                subsets: vec!["v2".into(), "v3".into()],
            }]
        );
    }
}
