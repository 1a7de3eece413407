//! `skeinctl analyze [FILE...]`: the control plane's acceptance run over the cluster's Istio
//! resources with the files laid over them (as if applied), or over the files alone
//! (`--use-kube=false`), printed as `istioctl analyze` prints its messages.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use kube::{Api, Client, api::ListParams};
use serde::de::DeserializeOwned;
use skein_api::istio::{
    networking::{DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService},
    security::{AuthorizationPolicy, PeerAuthentication},
};
use skein_controlplane::{
    accept::Current,
    analyze::{Level, Message, load_yaml},
};

/// Exit status when an error-level message was found (`istioctl analyze`'s).
pub const EXIT_ISSUES: i32 = 79;

async fn list<K>(client: &Client) -> anyhow::Result<Vec<Arc<K>>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let items = api.list(&ListParams::default()).await.with_context(|| format!("list {kind}s"))?.items;
    Ok(items.into_iter().map(Arc::new).collect())
}

/// The Istio resources in the cluster, every namespace.
pub async fn from_cluster(client: &Client) -> anyhow::Result<(Current, Vec<Arc<EnvoyFilter>>)> {
    let current = Current {
        virtual_services: list::<VirtualService>(client).await?,
        destination_rules: list::<DestinationRule>(client).await?,
        service_entries: list::<ServiceEntry>(client).await?,
        gateways: list::<Gateway>(client).await?,
        peer_authentications: list::<PeerAuthentication>(client).await?,
        authorization_policies: list::<AuthorizationPolicy>(client).await?,
        sidecars: list::<Sidecar>(client).await?,
    };
    Ok((current, list::<EnvoyFilter>(client).await?))
}

/// Lays the Istio resources of `files` (files, or directories of `.yaml`/`.yml`/`.json` files;
/// `-` is standard input) over `resources`.
pub fn overlay(
    files: &[String],
    namespace: &str,
    resources: &mut Current,
    filters: &mut Vec<Arc<EnvoyFilter>>,
) -> anyhow::Result<usize> {
    let mut read = 0;
    for f in files {
        let path = Path::new(f);
        let mut paths = vec![];
        if path.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("read directory {f}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            entries.sort();
            paths.extend(entries);
        } else {
            paths.push(path.to_path_buf());
        }
        for p in paths {
            let text = if p == Path::new("-") {
                std::io::read_to_string(std::io::stdin()).context("read standard input")?
            } else {
                std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?
            };
            anyhow::ensure!(!text.trim().is_empty(), "{}: empty file", p.display());
            read += load_yaml(&text, &p.display().to_string(), namespace, resources, filters)?;
        }
    }
    Ok(read)
}

/// The report of `messages` for `scope`, and whether any is an error.
pub fn report(messages: &[Message], scope: &str) -> (String, bool) {
    if messages.is_empty() {
        return (format!("\u{2714} No validation issues found when analyzing {scope}.\n"), false);
    }
    let text = messages.iter().map(|m| format!("{m}\n")).collect();
    (text, messages.iter().any(|m| m.level == Level::Error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_read_and_an_empty_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("skeinctl-analyze-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v9}}]}]}\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml: [").unwrap();
        let (mut res, mut filters) = (Current::default(), Vec::new());
        let n = overlay(&[dir.display().to_string()], "default", &mut res, &mut filters).unwrap();
        assert_eq!(n, 1);
        let (text, errors) =
            report(&skein_controlplane::analyze::analyze(&res, &filters, "cluster.local"), "namespace: default");
        assert!(errors);
        assert!(
            text.starts_with("Error [IST0101] (VirtualService default/r) spec.http[0].route[0].destination.subset"),
            "{text}"
        );
        std::fs::write(dir.join("empty.yaml"), "").unwrap();
        let err =
            overlay(&[dir.join("empty.yaml").display().to_string()], "default", &mut res, &mut filters).unwrap_err();
        assert!(err.to_string().ends_with("empty.yaml: empty file"), "{err}");
        assert_eq!(
            report(&[], "namespace: default").0,
            "\u{2714} No validation issues found when analyzing namespace: default.\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
