//! `skeinctl create-remote-secret`: what `istioctl create-remote-secret` does, for a Skein
//! mesh. Run against the cluster to be read (the exporting peer); prints a Secret to apply in
//! the cluster that imports from it.
//!
//! The credentials are a token of the reader ServiceAccount the operator installs
//! (`skein-reader-service-account`, bound to a read-only ClusterRole): never the caller's own.

use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;
use skein_api::MeshControlPlane;

/// Reader ServiceAccount (the operator's `render::rbac::REMOTE_READER`).
pub const READER: &str = "skein-reader-service-account";
/// Label of Skein remote secrets (the operator's `federation::REMOTE_SECRET_LABEL`).
const REMOTE_LABEL: &str = "mesh.skein.dev/remote-cluster";
/// Istio's annotation naming the cluster of a remote secret.
const CLUSTER_ANNOTATION: &str = "networking.istio.io/cluster";

/// What to create the Secret for.
pub struct Options {
    /// Cluster name (default: the MeshControlPlane's `multiCluster.clusterName`).
    pub name: Option<String>,
    /// Apiserver address the peer uses (default: the kubeconfig's).
    pub server: Option<String>,
    /// Namespace the Secret is for (the importing mesh's; default: this mesh's).
    pub secret_namespace: Option<String>,
    /// A new token, the previous ones revoked.
    pub rotate: bool,
}

/// The remote Secret's YAML.
pub async fn create(client: &Client, server: &str, opts: &Options) -> anyhow::Result<String> {
    let meshes: Api<MeshControlPlane> = Api::all(client.clone());
    let mut list =
        meshes.list(&ListParams::default()).await.context("list MeshControlPlanes (is Skein installed?)")?.items;
    list.sort_by_key(|m| m.metadata.creation_timestamp.clone().map(|t| t.0));
    let Some(mcp) = list.into_iter().next() else {
        bail!("no MeshControlPlane in this cluster: install the mesh first");
    };
    let namespace = mcp.spec.namespace.clone();
    let name = match (opts.name.clone(), mcp.spec.multi_cluster.as_ref().and_then(|m| m.cluster_name.clone())) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => bail!("the MeshControlPlane sets no spec.multiCluster.clusterName: pass --name"),
    };
    anyhow::ensure!(
        is_dns_label(&name),
        "--name {name:?}: a cluster name is a DNS label (lowercase letters, digits, '-')"
    );

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    accounts.get_opt(READER).await?.with_context(|| {
        format!("ServiceAccount {namespace}/{READER} is missing: the operator installs it with the mesh")
    })?;
    let (token, ca) = token(client, &namespace, opts.rotate).await?;

    let server = opts.server.as_deref().unwrap_or(server);
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("skein-remote-secret-{name}"),
            "namespace": opts.secret_namespace.clone().unwrap_or(namespace),
            "labels": {REMOTE_LABEL: "true"},
            "annotations": {CLUSTER_ANNOTATION: name},
        },
        "type": "Opaque",
        "stringData": {name.clone(): serde_yaml::to_string(&kubeconfig)?},
    });
    Ok(serde_yaml::to_string(&secret)?)
}

/// The reader's long-lived token and the cluster CA (base64), from the newest token Secret of
/// the reader (created on first use), or from a new one when rotating, after which the older
/// ones are deleted: Kubernetes revokes a legacy token with its Secret. A new Secret gets a
/// new name, because a token's claims are the Secret's and the ServiceAccount's names and
/// its signature is deterministic: re-creating a Secret of the same name brings back the
/// very token that was meant to be revoked.
async fn token(client: &Client, namespace: &str, rotate: bool) -> anyhow::Result<(String, String)> {
    use base64::Engine as _;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let readers = |list: Vec<Secret>| -> Vec<Secret> {
        let mut v: Vec<Secret> = list
            .into_iter()
            .filter(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"))
            .filter(|s| {
                s.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubernetes.io/service-account.name"))
                    .map(String::as_str)
                    == Some(READER)
            })
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect();
        // Newest first.
        v.sort_by_key(|s| std::cmp::Reverse(s.metadata.creation_timestamp.clone().map(|t| t.0)));
        v
    };
    let existing = readers(secrets.list(&ListParams::default()).await.context("list token Secrets")?.items);
    let name = match existing.first() {
        Some(s) if !rotate => s.metadata.name.clone().unwrap_or_default(),
        _ => {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"generateName": format!("{READER}-token-"), "annotations": {"kubernetes.io/service-account.name": READER}},
                "type": "kubernetes.io/service-account-token",
            }))?;
            let created = secrets
                .create(&PostParams::default(), &secret)
                .await
                .context(format!("create a token Secret for {namespace}/{READER}"))?;
            created.metadata.name.unwrap_or_default()
        }
    };
    // The token controller fills the Secret in.
    for _ in 0..60 {
        let s = secrets.get(&name).await?;
        let data = s.data.unwrap_or_default();
        if let (Some(token), Some(ca)) = (data.get("token"), data.get("ca.crt")) {
            let token = String::from_utf8(token.0.clone()).context("token is not UTF-8")?;
            if rotate {
                for old in existing.iter().filter_map(|s| s.metadata.name.as_deref()).filter(|n| *n != name) {
                    secrets
                        .delete(old, &Default::default())
                        .await
                        .map(|_| ())
                        .or_else(|e| match e {
                            kube::Error::Api(s) if s.is_not_found() => Ok(()),
                            e => Err(e),
                        })
                        .context(format!("revoke the old token: delete Secret {namespace}/{old}"))?;
                }
            }
            return Ok((token, base64::engine::general_purpose::STANDARD.encode(&ca.0)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("Secret {namespace}/{name} got no token in 30 s: is kube-controller-manager's token controller running?")
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
