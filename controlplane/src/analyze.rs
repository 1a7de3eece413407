//! `skeinctl analyze`: the control plane's own acceptance (validation and the checks against
//! the other resources) run over resources that are not, or not yet, in a cluster, reported as
//! `istioctl analyze` reports, with Istio's message codes where one means the same thing. The
//! verdicts are the ones the control plane would write into each resource's status: what this
//! calls an error is exactly what the control plane would reject.

use std::{collections::BTreeSet, fmt, sync::Arc};

use kube::ResourceExt;
use serde::Deserialize as _;
use skein_api::istio::networking::EnvoyFilter;

use crate::accept::{Current, LastGood, envoy_filters};

/// How bad a finding is (`istioctl analyze` levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The control plane rejects the resource.
    Error,
    /// Accepted, but probably not what the user meant.
    Warning,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "Error",
            Self::Warning => "Warn",
        })
    }
}

/// One finding about one resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Message {
    /// Severity.
    pub level: Level,
    /// Istio's code where one means the same (`IST0101` ReferencedResourceNotFound, `IST0106`
    /// SchemaValidationError, `IST0109` ConflictingMeshGatewayVirtualServiceHosts), else
    /// Skein's own (`SKN0001` EnvoyFilter has no effect).
    pub code: &'static str,
    /// Kind of the resource.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What is wrong, naming the field.
    pub text: String,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ({} {}/{}) {}", self.level, self.code, self.kind, self.namespace, self.name, self.text)
    }
}

/// The code of a rejection reason. The reasons come from one place (the acceptance checks),
/// whose wording for the cross-resource checks is fixed by their tests.
fn code_of(reason: &str) -> &'static str {
    if reason.contains("is already routed by VirtualService") {
        "IST0109"
    } else if reason.contains("no DestinationRule for") {
        "IST0101"
    } else {
        "IST0106"
    }
}

/// Analyzes `resources` (and `filters`) as the control plane of a mesh with `domain` would
/// accept them. Sorted: errors first.
pub fn analyze(resources: &Current, filters: &[Arc<EnvoyFilter>], domain: &str) -> Vec<Message> {
    let (accepted, mut verdicts) = LastGood::default().accept(resources, domain);
    verdicts.extend(envoy_filters(filters));
    let mut out = Vec::new();
    for v in verdicts {
        for w in &v.warnings {
            out.push(Message {
                level: Level::Warning,
                code: "IST0106",
                kind: v.kind.to_string(),
                namespace: v.namespace.clone(),
                name: v.name.clone(),
                text: w.clone(),
            });
        }
        let unsupported = v.reason == "Unsupported";
        for reason in &v.errors {
            out.push(Message {
                level: if unsupported { Level::Warning } else { Level::Error },
                code: if unsupported { "SKN0001" } else { code_of(reason) },
                kind: v.kind.to_string(),
                namespace: v.namespace.clone(),
                name: v.name.clone(),
                text: reason.clone(),
            });
        }
    }
    // Istio accepts a VirtualService bound to a Gateway that does not exist; it routes nothing
    // until one does. The same here (IST0101 in istioctl), as a warning.
    let gateways: BTreeSet<(String, String)> =
        accepted.gateways.iter().map(|g| (g.namespace().unwrap_or_default(), g.name_any())).collect();
    for vs in &accepted.virtual_services {
        let ns = vs.namespace().unwrap_or_default();
        for (i, gw) in vs.spec.gateways.iter().enumerate() {
            if gw == "mesh" {
                continue;
            }
            let (gw_ns, gw_name) = gw.split_once('/').unwrap_or((&ns, gw));
            if !gateways.contains(&(gw_ns.to_string(), gw_name.to_string())) {
                out.push(Message {
                    level: Level::Warning,
                    code: "IST0101",
                    kind: "VirtualService".into(),
                    namespace: ns.clone(),
                    name: vs.name_any(),
                    text: format!("spec.gateways[{i}]: referenced gateway {gw_ns}/{gw_name} not found"),
                });
            }
        }
    }
    out.sort();
    out
}

/// Why a YAML document is not an Istio resource this can analyze.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: document {index}: {reason}")]
pub struct LoadError {
    /// File (or `-`).
    pub source_name: String,
    /// 1-based index of the document in the file.
    pub index: usize,
    /// What is wrong.
    pub reason: String,
}

/// Adds the Istio resources of a multi-document YAML `text` to `resources` and `filters`, as
/// `kubectl apply -f` would place them: without a namespace in `namespace`, and replacing an
/// object of the same kind, namespace and name. Documents of other kinds are skipped; the
/// count of Istio documents read is returned. A document that is no valid object of its kind
/// is an error naming the file, the document and the field.
pub fn load_yaml(
    text: &str,
    source_name: &str,
    namespace: &str,
    resources: &mut Current,
    filters: &mut Vec<Arc<EnvoyFilter>>,
) -> Result<usize, LoadError> {
    let mut read = 0;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |reason: String| LoadError { source_name: source_name.to_string(), index: i + 1, reason };
        let mut value = serde_yaml::Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let group = value["apiVersion"].as_str().unwrap_or_default().to_string();
        if !group.starts_with("networking.istio.io/") && !group.starts_with("security.istio.io/") {
            continue;
        }
        if value["metadata"]["namespace"].as_str().is_none_or(str::is_empty) {
            value["metadata"]["namespace"] = namespace.into();
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        macro_rules! put {
            ($list:expr) => {{
                let obj = serde_yaml::from_value(value).map_err(|e| err(format!("{kind}: {e}")))?;
                replace(&mut $list, Arc::new(obj));
            }};
        }
        match kind.as_str() {
            "VirtualService" => put!(resources.virtual_services),
            "DestinationRule" => put!(resources.destination_rules),
            "ServiceEntry" => put!(resources.service_entries),
            "Gateway" => put!(resources.gateways),
            "PeerAuthentication" => put!(resources.peer_authentications),
            "AuthorizationPolicy" => put!(resources.authorization_policies),
            "Sidecar" => put!(resources.sidecars),
            "EnvoyFilter" => put!(*filters),
            other => return Err(err(format!("kind {other:?} of {group} is not served by Skein"))),
        }
        read += 1;
    }
    Ok(read)
}

/// Puts `obj` in `list`, replacing one of the same namespace and name.
fn replace<K: kube::Resource>(list: &mut Vec<Arc<K>>, obj: Arc<K>) {
    let id = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
    list.retain(|o| id(o) != id(&obj));
    list.push(obj);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> Vec<String> {
        let (mut res, mut filters) = (Current::default(), Vec::new());
        load_yaml(yaml, "test.yaml", "default", &mut res, &mut filters).unwrap();
        analyze(&res, &filters, "cluster.local").iter().map(ToString::to_string).collect()
    }

    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}\n";

    #[test]
    fn the_reference_examples_have_only_the_conflict_the_control_plane_rejects() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/fixtures/istio-examples");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(!files.is_empty());
        for f in files {
            let (mut res, mut filters) = (Current::default(), Vec::new());
            let text = std::fs::read_to_string(&f).unwrap();
            load_yaml(&text, &f.display().to_string(), "default", &mut res, &mut filters).unwrap();
            // Files that route to Bookinfo subsets come with their DestinationRules elsewhere;
            // give every file Bookinfo's.
            let bookinfo = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bi-reviews}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: v3, labels: {version: v3}}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bi-ratings}\nspec: {host: ratings, subsets: [{name: v1, labels: {version: v1}}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bi-details}\nspec: {host: details, subsets: [{name: v1, labels: {version: v1}}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bi-productpage}\nspec: {host: productpage, subsets: [{name: v1, labels: {version: v1}}]}\n";
            load_yaml(bookinfo, "bookinfo", "default", &mut res, &mut filters).unwrap();
            let errors: Vec<String> = analyze(&res, &filters, "cluster.local")
                .into_iter()
                .filter(|m| m.level == Level::Error)
                .map(|m| m.to_string())
                .collect();
            // traffic-management.yaml routes `reviews` with two VirtualServices (the task's and
            // the mirroring one): Istio silently drops one, the control plane rejects the newer.
            let expected: Vec<String> = match f.file_name().and_then(|n| n.to_str()) {
                Some("traffic-management.yaml") => vec!["Error [IST0109] (VirtualService default/reviews-mirror) spec.hosts[0]: host reviews.default.svc.cluster.local is already routed by VirtualService default/reviews".into()],
                _ => vec![],
            };
            assert_eq!(errors, expected, "{}", f.display());
        }
    }

    #[test]
    fn rejections_carry_istio_codes_and_name_the_field() {
        let out = run(&format!(
            "{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 70}}\n    - {{destination: {{host: reviews, subset: v9}}, weight: 50}}\n"
        ));
        assert!(
            out.contains(
                &"Error [IST0106] (VirtualService default/reviews) spec.http[0].route: weights sum to 120, not 100"
                    .to_string()
            ),
            "{out:#?}"
        );
        assert!(
            out.iter().any(|m| m.starts_with("Error [IST0101] (VirtualService default/reviews) spec.http[0].route[1].destination.subset: no DestinationRule for reviews.default.svc.cluster.local defines subset \"v9\"")),
            "{out:#?}"
        );
    }

    #[test]
    fn conflicts_missing_gateways_and_envoy_filters_are_reported() {
        let vs = |name: &str, age: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, creationTimestamp: '{age}'}}\nspec: {{hosts: [ratings], http: [{{route: [{{destination: {{host: ratings}}}}]}}]}}\n"
            )
        };
        let out = run(&format!(
            "{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: gw}}\nspec: {{hosts: ['*'], gateways: [bookinfo-gateway], http: [{{route: [{{destination: {{host: productpage}}}}]}}]}}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: ratelimit}}\nspec: {{}}\n",
            vs("first", "2024-01-01T00:00:00Z"),
            vs("second", "2024-01-02T00:00:00Z")
        ));
        assert!(out.iter().any(|m| m.starts_with("Error [IST0109] (VirtualService default/second) spec.hosts[0]: host ratings.default.svc.cluster.local is already routed by VirtualService default/first")), "{out:#?}");
        assert!(out.contains(&"Warn [IST0101] (VirtualService default/gw) spec.gateways[0]: referenced gateway default/bookinfo-gateway not found".to_string()), "{out:#?}");
        assert!(
            out.iter().any(|m| m.starts_with(
                "Warn [SKN0001] (EnvoyFilter default/ratelimit) EnvoyFilter patches Envoy's own configuration"
            )),
            "{out:#?}"
        );
        let cb = run(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cb}\nspec: {host: httpbin, trafficPolicy: {outlierDetection: {consecutiveErrors: 1}}}\n",
        );
        assert_eq!(
            cb,
            [
                "Warn [IST0106] (DestinationRule default/cb) spec.trafficPolicy.outlierDetection.consecutiveErrors: outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead"
            ]
        );
        // Errors sort first.
        assert!(out[0].starts_with("Error"), "{out:#?}");
    }

    #[test]
    fn a_bad_document_names_file_document_and_field_and_other_kinds_are_skipped() {
        let (mut res, mut filters) = (Current::default(), Vec::new());
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec: {host: [not, a, string]}\n";
        let err = load_yaml(text, "bad.yaml", "default", &mut res, &mut filters).unwrap_err().to_string();
        assert!(err.starts_with("bad.yaml: document 2: DestinationRule:"), "{err}");
        let err = load_yaml(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: x}\n",
            "s.yaml",
            "default",
            &mut res,
            &mut filters,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kind \"WorkloadEntry\""), "{err}");
        assert_eq!(load_yaml(DR, "dr.yaml", "prod", &mut res, &mut filters).unwrap(), 1);
        assert_eq!(res.destination_rules[0].namespace().as_deref(), Some("prod"));
    }
}
