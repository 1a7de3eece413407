//! Publishes the mesh root certificate to every namespace as the `istio-ca-root-cert`
//! ConfigMap (Istio's name and key), which injected sidecars mount to verify the control
//! plane. Written with server-side apply under one field manager, once per namespace and
//! process (and again if its content is changed or the ConfigMap deleted).

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tracing::{info, warn};

use crate::inject::ROOT_CERT_CONFIGMAP;

/// Key of the root certificate in the ConfigMap.
pub const ROOT_CERT_KEY: &str = skein_api::names::ROOT_CERT_FILE;
const MANAGER: &str = "skein-controlplane";

/// Keeps the ConfigMap in every namespace until the task is dropped.
pub async fn publish(client: Client, root_pem: String) {
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let namespaces =
        watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default()).default_backoff().applied_objects();
    // ConfigMaps we own, to repair edits and deletions.
    let owned = watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CERT_CONFIGMAP}")),
    )
    .default_backoff();
    let mut namespaces = std::pin::pin!(namespaces);
    let mut owned = std::pin::pin!(owned);
    loop {
        let ns = tokio::select! {
            ev = namespaces.next() => match ev {
                Some(Ok(ns)) if ns.metadata.deletion_timestamp.is_none() => ns.name_any(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => { warn!(error = %e, "namespace watch"); continue; }
                None => return,
            },
            ev = owned.next() => match ev {
                Some(Ok(watcher::Event::Delete(cm))) => {
                    let ns = cm.namespace().unwrap_or_default();
                    written.remove(&ns);
                    ns
                }
                Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                    let ns = cm.namespace().unwrap_or_default();
                    if cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)) == Some(&root_pem) { continue; }
                    written.remove(&ns);
                    ns
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => { warn!(error = %e, "configmap watch"); continue; }
                None => return,
            },
        };
        if written.get(&ns) == Some(&root_pem) {
            continue;
        }
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ROOT_CERT_CONFIGMAP, "labels": {"istio.io/config": "true"}},
            "data": {ROOT_CERT_KEY: root_pem},
        });
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        match api.patch(ROOT_CERT_CONFIGMAP, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&cm)).await {
            Ok(_) => {
                info!(namespace = ns, "root certificate published");
                written.insert(ns, root_pem.clone());
            }
            // A namespace being deleted refuses new objects; nothing to do.
            Err(e) => warn!(namespace = ns, error = %e, "root certificate not published"),
        }
    }
}
