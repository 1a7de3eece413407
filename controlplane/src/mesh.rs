//! Mesh-wide settings, read from Istio's MeshConfig format (the `mesh` key of the
//! `istio`-style ConfigMap the operator writes), so users find the settings they know.

use serde::Deserialize;
use skein_api::istio::networking::LocalityLbSetting;
use skein_api::proxy::{AccessLog, AccessLogEncoding, OutboundPolicy};

/// The settings the control plane acts on. Unknown MeshConfig fields are ignored, as istiod
/// ignores fields of newer releases.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshSettings {
    /// SPIFFE trust domain (`trustDomain`, default `cluster.local`).
    pub trust_domain: String,
    /// Namespace whose policies apply mesh-wide (`rootNamespace`, default `istio-system`).
    pub root_namespace: String,
    /// `outboundTrafficPolicy.mode` (default ALLOW_ANY).
    pub outbound_policy: OutboundPolicy,
    /// `accessLogFile` / `accessLogEncoding`; unset: no access log.
    pub access_log: Option<AccessLog>,
    /// Kubernetes cluster DNS domain, for Service host names.
    pub cluster_domain: String,
    /// Kubernetes Ingress serving (`ingressClass`, `ingressControllerMode`, `ingressService`,
    /// `ingressSelector`).
    pub ingress: IngressSettings,
    /// `localityLbSetting`: the locality failover of clusters whose DestinationRule sets none
    /// (Istio's default: enabled).
    pub locality_lb: LocalityLbSetting,
}

/// Which Kubernetes Ingresses the mesh serves, and through which gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct IngressSettings {
    /// The `kubernetes.io/ingress.class` annotation value served (`ingressClass`, default `istio`).
    pub class: String,
    /// `ingressControllerMode` (default `STRICT`, Istio's default).
    pub mode: IngressMode,
    /// The ingress gateway's Service in the root namespace, whose addresses Ingresses report
    /// (`ingressService`, default `istio-ingressgateway`; the operator writes Skein's).
    pub service: String,
    /// The `istio` label of the gateway pods that serve Ingresses (`ingressSelector`, default
    /// `ingressgateway`).
    pub selector: String,
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            class: "istio".into(),
            mode: IngressMode::Strict,
            service: "istio-ingressgateway".into(),
            selector: "ingressgateway".into(),
        }
    }
}

/// Istio's `ingressControllerMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressMode {
    /// No Ingress is served.
    Off,
    /// Ingresses of Istio's class (annotation or IngressClass) only.
    Strict,
    /// Also Ingresses that name no class, when the cluster has no default IngressClass.
    Default,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            outbound_policy: OutboundPolicy::AllowAny,
            access_log: None,
            cluster_domain: "cluster.local".into(),
            ingress: IngressSettings::default(),
            locality_lb: LocalityLbSetting::default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MeshConfigDoc {
    trust_domain: Option<String>,
    root_namespace: Option<String>,
    outbound_traffic_policy: Option<OutboundDoc>,
    access_log_file: Option<String>,
    access_log_encoding: Option<String>,
    ingress_class: Option<String>,
    ingress_controller_mode: Option<String>,
    ingress_service: Option<String>,
    ingress_selector: Option<String>,
    locality_lb_setting: Option<LocalityLbSetting>,
}

#[derive(Deserialize)]
struct OutboundDoc {
    mode: Option<String>,
}

/// Why a mesh config document was refused.
#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    /// Not YAML of the expected shape.
    #[error("mesh config: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// A field has a value Istio does not define.
    #[error("mesh config: {field}: {reason}")]
    Invalid {
        /// Field path.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl MeshSettings {
    /// Parses Istio MeshConfig YAML; absent fields take Istio's defaults.
    pub fn from_yaml(text: &str) -> Result<Self, MeshConfigError> {
        let doc: MeshConfigDoc =
            if text.trim().is_empty() { MeshConfigDoc::default() } else { serde_yaml::from_str(text)? };
        let mut s = Self::default();
        if let Some(td) = doc.trust_domain.filter(|t| !t.is_empty()) {
            s.trust_domain = td;
        }
        if let Some(ns) = doc.root_namespace.filter(|t| !t.is_empty()) {
            s.root_namespace = ns;
        }
        if let Some(mode) = doc.outbound_traffic_policy.and_then(|o| o.mode) {
            s.outbound_policy = match mode.as_str() {
                "ALLOW_ANY" => OutboundPolicy::AllowAny,
                "REGISTRY_ONLY" => OutboundPolicy::RegistryOnly,
                other => {
                    return Err(MeshConfigError::Invalid {
                        field: "outboundTrafficPolicy.mode",
                        reason: format!("{other:?} is not ALLOW_ANY or REGISTRY_ONLY"),
                    });
                }
            };
        }
        if let Some(class) = doc.ingress_class.filter(|t| !t.is_empty()) {
            s.ingress.class = class;
        }
        if let Some(service) = doc.ingress_service.filter(|t| !t.is_empty()) {
            s.ingress.service = service;
        }
        if let Some(selector) = doc.ingress_selector.filter(|t| !t.is_empty()) {
            s.ingress.selector = selector;
        }
        if let Some(mode) = doc.ingress_controller_mode {
            s.ingress.mode = match mode.as_str() {
                "OFF" => IngressMode::Off,
                "STRICT" | "UNSPECIFIED" => IngressMode::Strict,
                "DEFAULT" => IngressMode::Default,
                other => {
                    return Err(MeshConfigError::Invalid {
                        field: "ingressControllerMode",
                        reason: format!("{other:?} is not OFF, STRICT or DEFAULT"),
                    });
                }
            };
        }
        if let Some(path) = doc.access_log_file.filter(|p| !p.is_empty()) {
            let encoding = match doc.access_log_encoding.as_deref() {
                None | Some("TEXT") => AccessLogEncoding::Text,
                Some("JSON") => AccessLogEncoding::Json,
                Some(other) => {
                    return Err(MeshConfigError::Invalid {
                        field: "accessLogEncoding",
                        reason: format!("{other:?} is not TEXT or JSON"),
                    });
                }
            };
            s.access_log = Some(AccessLog { path: path.into(), encoding });
        }
        if let Some(lb) = doc.locality_lb_setting {
            let mut errs = Vec::new();
            crate::validate::locality_lb_setting(&mut errs, "localityLbSetting", &lb);
            if !errs.is_empty() {
                return Err(MeshConfigError::Invalid { field: "localityLbSetting", reason: errs.join("; ") });
            }
            s.locality_lb = lb;
        }
        Ok(s)
    }

    /// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{}/ns/{namespace}/sa/{service_account}", self.trust_domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_config_written_by_the_operator_is_read() {
        let s = MeshSettings::from_yaml(
            "trustDomain: example.org\nrootNamespace: mesh-system\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\nenableTracing: false\ndefaultConfig: {discoveryAddress: x:15012}\naccessLogFile: /dev/stdout\n",
        )
        .unwrap();
        assert_eq!(s.trust_domain, "example.org");
        assert_eq!(s.root_namespace, "mesh-system");
        assert_eq!(s.outbound_policy, OutboundPolicy::RegistryOnly);
        assert_eq!(s.access_log.unwrap().path.to_str(), Some("/dev/stdout"));
        assert_eq!(MeshSettings::from_yaml("").unwrap(), MeshSettings::default());
    }

    #[test]
    fn ingress_settings_follow_istio_mesh_config() {
        let d = MeshSettings::default().ingress;
        assert_eq!(
            (d.class.as_str(), d.mode, d.service.as_str()),
            ("istio", IngressMode::Strict, "istio-ingressgateway")
        );
        let s = MeshSettings::from_yaml(
            "ingressClass: mesh\ningressControllerMode: DEFAULT\ningressService: skein-ingressgateway\ningressSelector: edge\n",
        )
        .unwrap()
        .ingress;
        assert_eq!(
            s,
            IngressSettings {
                class: "mesh".into(),
                mode: IngressMode::Default,
                service: "skein-ingressgateway".into(),
                selector: "edge".into()
            }
        );
        let err = MeshSettings::from_yaml("ingressControllerMode: ON").unwrap_err();
        assert!(err.to_string().contains("ingressControllerMode"), "{err}");
    }

    #[test]
    fn locality_lb_setting_is_read_and_checked_as_istio_does() {
        assert_eq!(MeshSettings::default().locality_lb.enabled, None, "enabled unless disabled");
        let s = MeshSettings::from_yaml("localityLbSetting: {enabled: false}").unwrap();
        assert_eq!(s.locality_lb.enabled, Some(false));
        let s = MeshSettings::from_yaml("localityLbSetting: {failover: [{from: us-east, to: eu-west}]}").unwrap();
        assert_eq!(s.locality_lb.failover[0].to, "eu-west");
        let err = MeshSettings::from_yaml("localityLbSetting: {failover: [{from: a, to: a}]}").unwrap_err();
        assert!(
            err.to_string().contains(
                "localityLbSetting.failover[0]: locality lb failover settings must specify different regions"
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_outbound_mode_is_refused_by_field() {
        let err = MeshSettings::from_yaml("outboundTrafficPolicy: {mode: DENY}").unwrap_err();
        assert!(err.to_string().contains("outboundTrafficPolicy.mode"), "{err}");
    }
}
