//! Desired state of an installation: a pure function from a `MeshControlPlane` (and the facts the
//! reconciler looked up: release, CA bundle, revision) to the objects that must exist, split by
//! object family: [`control_plane`], [`gateway`], [`webhook`], [`rbac`], [`mesh_config`] and the
//! shared Istio API [`crds`]; [`meta`] is the one metadata builder they all use.
//!
//! Nothing here talks to the apiserver, so every choice about names, labels, ports and security
//! settings is unit-tested in `render/tests.rs`.

pub mod control_plane;
pub mod crds;
pub mod gateway;
pub mod mesh_config;
pub mod meta;
pub mod rbac;
pub mod webhook;

use kube::{Resource, ResourceExt, core::ApiResource};
use serde_json::Value;
use skein_api::{MeshControlPlane, RootCaType};

use crate::upgrade::catalog::Release;

pub use crds::istio_crds;
pub use gateway::Gateway;
pub use mesh_config::mesh_config_yaml;
pub use meta::common_labels;
pub use webhook::webhook_name;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "skein-operator";
/// Label naming the `MeshControlPlane` an object belongs to (used to prune what is no longer
/// desired).
pub const OWNER_LABEL: &str = "mesh.skein.dev/owner";
/// `app.kubernetes.io/managed-by` value on everything the operator writes.
pub const MANAGED_BY: &str = "skein-operator";
/// Name of the control plane's Deployment, Service and ServiceAccount.
pub const CONTROL_PLANE: &str = "skein-controlplane";
/// Mesh config ConfigMap (key `mesh`, Istio's MeshConfig format).
pub const MESH_CONFIGMAP: &str = "skein-mesh";
/// Self-signed root CA Secret (Istio `cacerts` layout).
pub const SELF_SIGNED_CA_SECRET: &str = "skein-ca";
/// Serving certificate of the injection webhook, signed by the mesh CA.
pub const WEBHOOK_TLS_SECRET: &str = "skein-webhook-tls";
/// Revision name of an in-place installation.
pub const DEFAULT_REVISION: &str = "default";

/// gRPC, plaintext (in-cluster xDS).
pub const PORT_XDS: i32 = 15010;
/// gRPC over TLS (xDS and certificate signing).
pub const PORT_XDS_TLS: i32 = 15012;
/// Prometheus metrics and readiness.
pub const PORT_MONITORING: i32 = 15014;
/// Sidecar-injection webhook (HTTPS).
pub const PORT_WEBHOOK: i32 = 15017;
/// East-west gateway's SNI passthrough port.
pub const PORT_EAST_WEST: i32 = 15443;
/// Gateways' readiness port (Istio's status port).
pub const PORT_GATEWAY_STATUS: i32 = 15021;
/// Proxies' Prometheus port (Envoy's `http-envoy-prom`).
pub const PORT_PROXY_METRICS: i32 = 15090;

/// Where the control plane's container finds the mesh config (the ConfigMap's key `mesh`).
pub const MESH_CONFIG_DIR: &str = "/etc/skein/mesh";
/// Where the control plane's container finds the webhook serving certificate.
pub const WEBHOOK_TLS_DIR: &str = "/etc/skein/webhook";

/// UID the mesh's containers run as (Istio's proxy UID, so iptables rules can exempt it).
pub(crate) const MESH_UID: i64 = 1337;

/// One object the operator keeps in place.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Group/version/kind/plural of the object.
    pub resource: ApiResource,
    /// Whether the object lives in a namespace (`spec.namespace`).
    pub namespaced: bool,
    /// `metadata.name`.
    pub name: String,
    /// The full object as applied (server-side apply body).
    pub body: Value,
}

impl Desired {
    pub(crate) fn new<K: Resource<DynamicType = ()>>(namespaced: bool, body: Value) -> Self {
        let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
        Self { resource: ApiResource::erase::<K>(&()), namespaced, name, body }
    }

    /// `Kind/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.resource.kind, self.name)
    }
}

/// What the reconciler looked up for rendering.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Release resolved from the spec.
    pub release: &'a Release,
    /// PEM of the mesh root certificate (the webhook's `caBundle`).
    pub root_cert_pem: &'a str,
    /// The active revision: the one the `default` tag (and every revision tag) points at;
    /// [`DEFAULT_REVISION`] for an in-place installation.
    pub revision: &'a str,
    /// Control plane revisions to render besides the active one (a `RevisionBased` upgrade's
    /// new revision while it starts, an old one while pods still use it). An entry named like
    /// the active revision sets the release its control plane runs (an in-place rollout in
    /// progress: gateways stay on `release` until it is Ready).
    pub others: &'a [Revision],
}

/// A control plane revision to render besides the active one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// Revision name (`istio.io/rev`).
    pub name: String,
    /// Release it runs.
    pub release: Release,
}

impl<'a> Facts<'a> {
    /// Every revision to render, the active one first.
    pub fn revisions(self) -> impl Iterator<Item = (&'a str, &'a Release)> {
        let active = self.revision;
        let control_plane = self.others.iter().find(|r| r.name == active).map_or(self.release, |r| &r.release);
        std::iter::once((active, control_plane))
            .chain(self.others.iter().filter(move |r| r.name != active).map(|r| (r.name.as_str(), &r.release)))
    }
}

/// Namespace the installation lives in.
pub fn namespace(mcp: &MeshControlPlane) -> &str {
    &mcp.spec.namespace
}

/// Name of a cluster-scoped object, made unique per `MeshControlPlane`.
pub fn cluster_scoped_name(base: &str, mcp: &MeshControlPlane) -> String {
    format!("{base}-{}", mcp.name_any())
}

/// Name of the Secret holding the CA the control plane signs with.
pub fn ca_secret_name(mcp: &MeshControlPlane) -> &str {
    let root = &mcp.spec.security.root_ca;
    match (root.type_, root.secret_name.as_deref()) {
        (RootCaType::Secret, Some(name)) => name,
        _ => SELF_SIGNED_CA_SECRET,
    }
}

/// Every object of the installation, in apply order (identities and RBAC before workloads).
pub fn render(mcp: &MeshControlPlane, facts: Facts<'_>) -> Vec<Desired> {
    let mut out = Vec::new();
    out.push(control_plane::service_account(mcp, CONTROL_PLANE));
    out.extend(rbac::control_plane(mcp));
    out.push(control_plane::service_account(mcp, rbac::REMOTE_READER));
    out.extend(rbac::remote_reader(mcp));
    out.push(mesh_config::config_map(mcp));
    for (revision, release) in facts.revisions() {
        let name = control_plane::name(revision);
        let cp = &mcp.spec.components.control_plane;
        let mut deployment = control_plane::deployment(mcp, revision, release);
        control_plane::set_replicas(&mut deployment, cp.replicas, cp.autoscaling.as_ref());
        out.push(deployment);
        // The inactive `default` revision's Service is the stable one, which follows the
        // active revision (its proxies then reach the active control plane).
        if revision == facts.revision || revision != DEFAULT_REVISION {
            out.push(control_plane::service(mcp, &name, revision));
        }
        let most = cp.autoscaling.as_ref().map_or(cp.replicas, |a| a.max_replicas);
        if most > 1 {
            out.push(control_plane::pdb(mcp, &name, revision));
        }
        if let Some(a) = &cp.autoscaling {
            out.push(control_plane::autoscaler(mcp, &name, CONTROL_PLANE, a));
        }
    }
    // The stable Service: gateways and mesh config dial it; it follows the active revision.
    if facts.revision != DEFAULT_REVISION {
        out.push(control_plane::service(mcp, CONTROL_PLANE, facts.revision));
    }
    for gw in Gateway::ALL.into_iter().filter(|g| g.enabled(mcp)) {
        out.push(control_plane::service_account(mcp, gw.name()));
        let spec = gw.spec(mcp);
        let autoscaling = spec.and_then(|s| s.autoscaling.as_ref());
        let mut deployment = gateway::deployment(mcp, gw, facts);
        control_plane::set_replicas(&mut deployment, spec.and_then(|s| s.replicas).unwrap_or(1), autoscaling);
        out.push(deployment);
        out.push(gateway::service(mcp, gw));
        if let Some(a) = autoscaling {
            out.push(control_plane::autoscaler(mcp, gw.name(), gw.name(), a));
        }
    }
    out.push(webhook::injection_webhook(mcp, facts));
    out
}

#[cfg(test)]
mod tests;
