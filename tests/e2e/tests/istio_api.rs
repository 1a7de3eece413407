//! The Istio API CRDs on a real apiserver: Istio users' YAML (fixtures copied from the kind of
//! manifests users already have, under `fixtures/istio-examples/`) applies unchanged with
//! kubectl's strict field validation, in any of the served versions, and reads back through
//! Skein's typed model.

use kube::{Api, api::ListParams};
use skein_api::istio::{networking, security};
use skein_e2e::{Cluster, repo_root};

async fn install_istio_crds(cluster: &Cluster) {
    cluster.install_istio_crds().await.unwrap();
}

#[tokio::test]
async fn istio_users_yaml_applies_unchanged_and_reads_back_typed() {
    let cluster = Cluster::start("istio").await.unwrap();
    install_istio_crds(&cluster).await;
    // The mesh root namespace exists in any Istio-style install.
    let out = cluster.kubectl(&["create", "namespace", "istio-system"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = repo_root().join("tests/e2e/fixtures/istio-examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // The file that creates the `sample` namespace goes first.
    files.sort_by_key(|f| !f.ends_with("production-namespace.yaml"));
    assert!(files.len() >= 6, "fixtures missing: {files:?}");
    for f in &files {
        // kubectl's default --validate=strict: an unknown field would be an error here.
        let out = cluster.kubectl(&["apply", "--validate=strict", "-f", &f.to_string_lossy()], None);
        assert!(
            out.status.success(),
            "{} did not apply unchanged:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Everything written as v1alpha3/v1beta1 reads back as v1 through the typed model.
    let client = cluster.client.clone();
    let vs = Api::<networking::VirtualService>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let dr = Api::<networking::DestinationRule>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let se = Api::<networking::ServiceEntry>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let gw = Api::<networking::Gateway>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let pa = Api::<security::PeerAuthentication>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let ap = Api::<security::AuthorizationPolicy>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    // Distinct objects per kind in the fixtures (two files may write the same object).
    let mut objects = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
            let field =
                |path: &[&str]| path.iter().try_fold(&v, |v, k| v.get(*k)).and_then(|v| v.as_str()).map(str::to_string);
            if let (Some(kind), Some(name)) = (field(&["kind"]), field(&["metadata", "name"])) {
                let ns = field(&["metadata", "namespace"]).unwrap_or_else(|| "default".into());
                objects.insert((kind, ns, name));
            }
        }
    }
    let count = |kind: &str| objects.iter().filter(|(k, _, _)| k == kind).count();
    assert_eq!(vs.items.len(), count("VirtualService"));
    assert_eq!(dr.items.len(), count("DestinationRule"));
    assert_eq!(se.items.len(), count("ServiceEntry"));
    assert_eq!(gw.items.len(), count("Gateway"));
    assert_eq!(pa.items.len(), count("PeerAuthentication"));
    assert_eq!(ap.items.len(), count("AuthorizationPolicy"));
    assert!(vs.items.iter().any(|v| v.spec.http.iter().any(|r| r.fault.is_some())), "fault rules kept");
    assert!(dr.items.iter().any(|d| d.spec.subsets.iter().any(|s| s.labels.contains_key("version"))));

    // Each served version answers for the same objects, and reads back through the typed
    // model with the same content as v1 (a schema difference between versions would show here).
    async fn typed_in<S: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        client: &kube::Client,
        group: &str,
        kind: &str,
        plural: &str,
        version: &str,
    ) -> std::collections::BTreeMap<(String, String), S> {
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
        let list = api.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("{kind} {version}: {e}"));
        list.items
            .into_iter()
            .map(|o| {
                let key =
                    (o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default());
                let spec = serde_json::from_value(o.data["spec"].clone())
                    .unwrap_or_else(|e| panic!("{kind} {key:?} in {version} does not read back typed: {e}"));
                (key, spec)
            })
            .collect()
    }
    for (kind, plural, group) in [
        ("VirtualService", "virtualservices", "networking.istio.io"),
        ("DestinationRule", "destinationrules", "networking.istio.io"),
        ("PeerAuthentication", "peerauthentications", "security.istio.io"),
    ] {
        macro_rules! compare {
            ($spec:ty) => {{
                let v1 = typed_in::<$spec>(&client, group, kind, plural, "v1").await;
                assert_eq!(v1.len(), count(kind), "{kind}");
                for version in ["v1beta1", "v1alpha3"] {
                    assert_eq!(typed_in::<$spec>(&client, group, kind, plural, version).await, v1, "{kind} {version}");
                }
            }};
        }
        match kind {
            "VirtualService" => compare!(networking::VirtualServiceSpec),
            "DestinationRule" => compare!(networking::DestinationRuleSpec),
            _ => compare!(security::PeerAuthenticationSpec),
        }
    }
}

#[tokio::test]
async fn a_misspelled_or_mistyped_field_is_refused_by_name() {
    let cluster = Cluster::start("istio").await.unwrap();
    install_istio_crds(&cluster).await;
    let typo = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: typo, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - rout:\n    - destination: {host: reviews}\n";
    let out = cluster.kubectl(&["apply", "-f", "-"], Some(typo));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"spec.http[0].rout\""), "{err}");

    let bad_mode = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: bad, namespace: default}\nspec:\n  mtls: {mode: STRICTEST}\n";
    let out = cluster.kubectl(&["apply", "-f", "-"], Some(bad_mode));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.mtls.mode") && err.contains("STRICTEST"), "{err}");
}
