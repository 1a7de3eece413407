//! Distribution through OLM (Operator Lifecycle Manager): the file-based catalog of the
//! `skein-operator` package and the bundle of this release, generated (`make generate`) from
//! the one release list (`config/versions.yaml`) and the operator's own install
//! (`config/manager`, `render::rbac`), so OLM users get what kubectl and Helm users get.
//!
//! Channels follow the release catalog's tracks: `stable` takes stable releases, `fast` fast
//! and stable ones, `candidate` all; `stable-X.Y` holds to one minor line. In every channel each
//! entry `replaces` the one before it and `skipRange`s every older version, so any installed
//! version upgrades straight to the channel head.

use serde_json::{Value, json};
use skein_api::{Channel, Track};

use crate::upgrade::catalog::{Catalog, Release, stability};

/// The OLM package name.
pub const PACKAGE: &str = "skein-operator";

/// A bundle's name in the catalog.
pub fn bundle_name(release: &Release) -> String {
    format!("{PACKAGE}.v{}", release.version)
}

/// The channels of the package: the three tracks and `stable-X.Y` for each minor line with a
/// stable release, each with the releases it takes, oldest first.
pub fn channels(catalog: &Catalog) -> Vec<(String, Vec<&Release>)> {
    let mut names: Vec<Channel> = [Track::Stable, Track::Fast, Track::Candidate]
        .into_iter()
        .map(|track| Channel { track, minor: None })
        .collect();
    let mut minors: Vec<(u64, u64)> = catalog
        .releases()
        .iter()
        .filter(|r| r.channel == Track::Stable)
        .map(|r| (r.version.major, r.version.minor))
        .collect();
    minors.dedup();
    names.extend(minors.into_iter().map(|m| Channel { track: Track::Stable, minor: Some(m) }));
    names
        .into_iter()
        .map(|c| {
            let members = catalog
                .releases()
                .iter()
                .filter(|r| {
                    stability(r.channel) >= stability(c.track) && c.takes_minor(r.version.major, r.version.minor)
                })
                .collect();
            (c.to_string(), members)
        })
        .collect()
}

/// The file-based catalog (`opm validate`-able declarative config): package, channels, bundles.
pub fn catalog(catalog: &Catalog, bundle_registry: &str) -> Vec<Value> {
    let mut docs = vec![json!({
        "schema": "olm.package",
        "name": PACKAGE,
        "defaultChannel": "stable",
        "description": "Skein service mesh operator: installs, upgrades and federates Skein meshes.",
    })];
    for (name, members) in channels(catalog) {
        let mut entries = Vec::new();
        for (i, r) in members.iter().enumerate() {
            let mut e = json!({"name": bundle_name(r)});
            if let Some(prev) = i.checked_sub(1).map(|p| members[p]) {
                e["replaces"] = json!(bundle_name(prev));
                e["skipRange"] = json!(format!(">={} <{}", members[0].version, r.version));
            }
            entries.push(e);
        }
        docs.push(json!({"schema": "olm.channel", "package": PACKAGE, "name": name, "entries": entries}));
    }
    for r in catalog.releases() {
        docs.push(json!({
            "schema": "olm.bundle",
            "name": bundle_name(r),
            "package": PACKAGE,
            "image": format!("{bundle_registry}/skein-operator-bundle:v{}", r.version),
            "properties": [
                {"type": "olm.package", "value": {"packageName": PACKAGE, "version": r.version.to_string()}},
                {"type": "olm.gvk", "value": {"group": skein_api::GROUP, "kind": "MeshControlPlane", "version": "v1alpha1"}},
            ],
        }));
    }
    docs
}

/// The ClusterServiceVersion of `release`: the operator's Deployment (from
/// `config/manager/manager.yaml`'s, `deployment`), its cluster-wide rules, and its
/// mesh-namespace rules as `permissions`, which OLM grants in the OperatorGroup's target
/// namespaces; the operator reads those from the `olm.targetNamespaces` annotation as its
/// `--mesh-namespaces`. One replica and `Recreate` (no leader election needed).
pub fn cluster_service_version(
    release: &Release,
    deployment: &Value,
    cluster_rules: Value,
    mesh_rules: Value,
) -> Value {
    let version = release.version.to_string();
    let image = format!("{}/skein-operator:{version}", release.registry);
    let mut spec = deployment["spec"].clone();
    spec["replicas"] = json!(1);
    spec["strategy"] = json!({"type": "Recreate"});
    let container = &mut spec["template"]["spec"]["containers"][0];
    container["image"] = json!(image);
    container["args"] = json!(["--metrics-addr=0.0.0.0:8080", "--leader-elect=false"]);
    if let Some(env) = container["env"].as_array_mut() {
        env.push(json!({"name": "SKEIN_MESH_NAMESPACES", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations['olm.targetNamespaces']"}}}));
    }
    let example = json!([{"apiVersion": "mesh.skein.dev/v1alpha1", "kind": "MeshControlPlane", "metadata": {"name": "default"}, "spec": {"namespace": "istio-system"}}]);
    json!({
        "apiVersion": "operators.coreos.com/v1alpha1",
        "kind": "ClusterServiceVersion",
        "metadata": {
            "name": bundle_name(release),
            "annotations": {
                "alm-examples": example.to_string(),
                "capabilities": "Seamless Upgrades",
                "categories": "Networking",
                "containerImage": image,
                "description": "Installs, upgrades and federates Skein service meshes (Istio API).",
            },
        },
        "spec": {
            "displayName": "Skein",
            "description": "Skein is a service mesh that reads the Istio API. The operator installs its control plane and gateways from a MeshControlPlane, upgrades them in place or by revision with health-gated workload migration and automatic rollback, and federates clusters into one mesh.\n\nInstall it into the mesh namespace (OwnNamespace, e.g. istio-system) or target the mesh namespaces (SingleNamespace/MultiNamespace): a MeshControlPlane's spec.namespace must be one of them.",
            "version": version,
            "minKubeVersion": "1.30.0",
            "maturity": if release.version.pre.is_empty() { "stable" } else { "alpha" },
            "provider": {"name": "Skein"},
            "keywords": ["service mesh", "istio", "mtls"],
            "links": [{"name": "Source", "url": "https://skein.dev"}],
            "maintainers": [{"name": "Skein", "email": "maintainers@skein.dev"}],
            "installModes": [
                {"type": "OwnNamespace", "supported": true},
                {"type": "SingleNamespace", "supported": true},
                {"type": "MultiNamespace", "supported": true},
                // Namespaced rights everywhere would include every Secret of the cluster.
                {"type": "AllNamespaces", "supported": false},
            ],
            "customresourcedefinitions": {"owned": [{
                "name": "meshcontrolplanes.mesh.skein.dev",
                "version": "v1alpha1",
                "kind": "MeshControlPlane",
                "displayName": "Mesh Control Plane",
                "description": "A Skein mesh: control plane, gateways, version or channel, update strategy, federation.",
            }]},
            "install": {"strategy": "deployment", "spec": {
                "clusterPermissions": [{"serviceAccountName": "skein-operator", "rules": cluster_rules}],
                "permissions": [{"serviceAccountName": "skein-operator", "rules": mesh_rules}],
                "deployments": [{"name": "skein-operator", "label": {"app.kubernetes.io/name": "skein-operator"}, "spec": spec}],
            }},
        },
    })
}

/// `metadata/annotations.yaml` of a registry+v1 bundle.
pub fn bundle_annotations(release: &Release) -> Value {
    json!({"annotations": {
        "operators.operatorframework.io.bundle.mediatype.v1": "registry+v1",
        "operators.operatorframework.io.bundle.manifests.v1": "manifests/",
        "operators.operatorframework.io.bundle.metadata.v1": "metadata/",
        "operators.operatorframework.io.bundle.package.v1": PACKAGE,
        "operators.operatorframework.io.bundle.channels.v1": release.channel.as_str(),
        "operators.operatorframework.io.bundle.channel.default.v1": "stable",
    }})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Every version in a channel reaches the channel's head: by `replaces` one step at a time,
    /// or in one step when the head (or any later entry) `skipRange`s it.
    #[test]
    fn every_release_reaches_its_channels_head() {
        let builtin = Catalog::builtin().unwrap();
        let docs = catalog(&builtin, "registry.skein.dev/skein");
        let channels: Vec<&Value> = docs.iter().filter(|d| d["schema"] == "olm.channel").collect();
        let names: BTreeSet<&str> = channels.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, BTreeSet::from(["stable", "fast", "candidate", "stable-1.0"]));
        for ch in channels {
            let entries = ch["entries"].as_array().unwrap();
            // Edges: entry -> the ones it replaces or skips.
            let mut upgrades_from: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for e in entries {
                let name = e["name"].as_str().unwrap().to_string();
                if let Some(r) = e["replaces"].as_str() {
                    upgrades_from.entry(r.to_string()).or_default().push(name.clone());
                }
                if let Some(range) = e["skipRange"].as_str() {
                    // `>=A <B`, compared as OLM (blang/semver) does, pre-releases included.
                    let (low, high) = range.split_once(' ').unwrap();
                    let parse = |s: &str, op: &str| semver::Version::parse(s.strip_prefix(op).unwrap()).unwrap();
                    let (low, high) = (parse(low, ">="), parse(high, "<"));
                    for other in entries {
                        let o = other["name"].as_str().unwrap();
                        let v = semver::Version::parse(o.trim_start_matches("skein-operator.v")).unwrap();
                        if low <= v && v < high {
                            upgrades_from.entry(o.to_string()).or_default().push(name.clone());
                        }
                    }
                }
            }
            let head = entries.last().unwrap()["name"].as_str().unwrap();
            let replaced: BTreeSet<&str> = entries.iter().filter_map(|e| e["replaces"].as_str()).collect();
            let heads: Vec<&str> =
                entries.iter().filter_map(|e| e["name"].as_str()).filter(|n| !replaced.contains(n)).collect();
            assert_eq!(heads, [head], "channel {} has one head", ch["name"]);
            for e in entries {
                let start = e["name"].as_str().unwrap();
                let (mut seen, mut todo) = (BTreeSet::from([start.to_string()]), vec![start.to_string()]);
                while let Some(n) = todo.pop() {
                    for next in upgrades_from.get(&n).into_iter().flatten() {
                        if seen.insert(next.clone()) {
                            todo.push(next.clone());
                        }
                    }
                }
                assert!(seen.contains(head), "{start} cannot reach {head} in channel {}", ch["name"]);
            }
            // The head is the release the operator's own catalog resolves for that channel.
            let channel: Channel = ch["name"].as_str().unwrap().parse().unwrap();
            let resolved = builtin.resolve(None, channel).unwrap();
            assert_eq!(head, bundle_name(resolved), "channel {}", ch["name"]);
        }
    }
}
