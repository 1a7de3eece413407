//! Publishes the mesh's trust bundle to every namespace as the `istio-ca-root-cert` ConfigMap
//! (Istio's name and key), which injected sidecars and gateways mount: this cluster's root
//! first, then the roots of the federated peers (the operator writes them to
//! `skein-federated-roots`). This cluster's root alone goes to `skein-mesh-root` in the mesh
//! namespace, for peers to read.
//!
//! Written with server-side apply under one field manager, once per namespace and bundle (and
//! again if a ConfigMap's content is changed or it is deleted).

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use skein_api::names::{FEDERATED_ROOTS_CONFIGMAP, MESH_ROOT_CONFIGMAP};
use tracing::{info, warn};

use crate::inject::ROOT_CERT_CONFIGMAP;

/// Key of the root certificate in the ConfigMap.
pub const ROOT_CERT_KEY: &str = skein_api::names::ROOT_CERT_FILE;
const MANAGER: &str = "skein-controlplane";

/// `own` followed by every certificate of `peers` (by key) not already in the bundle. A
/// peer's text that holds no certificate is skipped: a broken entry must not break the bundle
/// every workload verifies with.
pub fn bundle(own: &str, peers: &BTreeMap<String, String>) -> String {
    let mut out = own.trim_end().to_string();
    out.push('\n');
    let mut seen: BTreeSet<String> = pem_blocks(own).into_iter().collect();
    for pem in peers.values() {
        for block in pem_blocks(pem) {
            if seen.insert(block.clone()) {
                out.push_str(&block);
            }
        }
    }
    out
}

/// The `CERTIFICATE` blocks of `pem`, normalized (LF line ends, one trailing newline).
fn pem_blocks(pem: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = pem.replace("\r\n", "\n");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else { break };
        let block = &rest[start..start + len + END.len()];
        out.push(format!("{block}\n"));
        rest = &rest[start + len + END.len()..];
    }
    out
}

enum Event {
    Namespace(String),
    /// An `istio-ca-root-cert` changed or went away in a namespace: (namespace, its content).
    Published(String, Option<String>),
    /// `skein-federated-roots` (absent: no peers).
    Federated(BTreeMap<String, String>),
    /// `skein-mesh-root` changed or went away.
    MeshRoot(Option<String>),
}

/// Keeps the ConfigMaps until the task is dropped; `namespace` is the mesh's.
pub async fn publish(client: Client, own_root: String, namespace: String) {
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let namespaces: BoxStream<'static, Event> =
        watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .filter_map(|ns| async move {
                match ns {
                    Ok(ns) if ns.metadata.deletion_timestamp.is_none() => Some(Event::Namespace(ns.name_any())),
                    Ok(_) => None,
                    Err(e) => {
                        warn!(error = %e, "namespace watch");
                        None
                    }
                }
            })
            .boxed();
    let data = |cm: &ConfigMap| cm.data.clone().unwrap_or_default();
    let owned: BoxStream<'static, Event> = watcher(Api::<ConfigMap>::all(client.clone()), by_name(ROOT_CERT_CONFIGMAP))
        .default_backoff()
        .filter_map(move |ev| async move {
            match ev {
                Ok(watcher::Event::Delete(cm)) => Some(Event::Published(cm.namespace().unwrap_or_default(), None)),
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                    Some(Event::Published(cm.namespace().unwrap_or_default(), data(&cm).remove(ROOT_CERT_KEY)))
                }
                _ => None,
            }
        })
        .boxed();
    let in_mesh_ns =
        |name| watcher(Api::<ConfigMap>::namespaced(client.clone(), &namespace), by_name(name)).default_backoff();
    let federated: BoxStream<'static, Event> = in_mesh_ns(FEDERATED_ROOTS_CONFIGMAP)
        .filter_map(move |ev| async move {
            match ev {
                Ok(watcher::Event::Delete(_)) => Some(Event::Federated(BTreeMap::new())),
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => Some(Event::Federated(data(&cm))),
                _ => None,
            }
        })
        .boxed();
    let mesh_root: BoxStream<'static, Event> = in_mesh_ns(MESH_ROOT_CONFIGMAP)
        .filter_map(move |ev| async move {
            match ev {
                Ok(watcher::Event::Delete(_)) => Some(Event::MeshRoot(None)),
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                    Some(Event::MeshRoot(data(&cm).remove(ROOT_CERT_KEY)))
                }
                _ => None,
            }
        })
        .boxed();
    let mut events = futures::stream::select_all([namespaces, owned, federated, mesh_root]);

    let mut current = bundle(&own_root, &BTreeMap::new());
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut mesh_root_written = false;
    while let Some(event) = events.next().await {
        let targets: Vec<String> = match event {
            Event::Namespace(ns) => {
                known.insert(ns.clone());
                vec![ns]
            }
            Event::Published(ns, content) => {
                if content.as_ref() == Some(&current) {
                    written.insert(ns, current.clone());
                    continue;
                }
                written.remove(&ns);
                if known.contains(&ns) { vec![ns] } else { continue }
            }
            Event::Federated(peers) => {
                let next = bundle(&own_root, &peers);
                if next == current {
                    continue;
                }
                info!(peers = peers.len(), "trust bundle changed");
                current = next;
                written.clear();
                known.iter().cloned().collect()
            }
            Event::MeshRoot(content) => {
                mesh_root_written = content.as_ref() == Some(&own_root);
                vec![]
            }
        };
        if !mesh_root_written {
            mesh_root_written = write(&client, &namespace, MESH_ROOT_CONFIGMAP, &own_root).await;
        }
        for ns in targets {
            if written.get(&ns) == Some(&current) {
                continue;
            }
            if write(&client, &ns, ROOT_CERT_CONFIGMAP, &current).await {
                written.insert(ns, current.clone());
            }
        }
    }
}

/// Applies ConfigMap `name` in `ns` with `pem` under `root-cert.pem`; whether it was written.
async fn write(client: &Client, ns: &str, name: &str, pem: &str) -> bool {
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"istio.io/config": "true"}},
        "data": {ROOT_CERT_KEY: pem},
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    match api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&cm)).await {
        Ok(_) => {
            info!(namespace = ns, configmap = name, "root certificate published");
            true
        }
        // A namespace being deleted refuses new objects; nothing to do.
        Err(e) => {
            warn!(namespace = ns, configmap = name, error = %e, "root certificate not published");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![name.into()]).unwrap().self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_bundle_is_the_own_root_then_each_new_peer_root_once() {
        let (own, r2, r3) = (cert("own"), cert("r2"), cert("r3"));
        assert_eq!(bundle(&own, &BTreeMap::new()), own);
        let peers = BTreeMap::from([
            ("cluster2.pem".to_string(), r2.replace('\n', "\r\n")),
            // A peer that shares our root (a common cacerts), and one sending r2 again.
            ("cluster3.pem".to_string(), format!("{own}{r3}")),
            ("cluster4.pem".to_string(), r2.clone()),
            ("broken.pem".to_string(), "not a certificate".to_string()),
        ]);
        let b = bundle(&own, &peers);
        assert_eq!(b, format!("{own}{r2}{r3}"));
        assert_eq!(pem_blocks(&b).len(), 3);
    }
}
