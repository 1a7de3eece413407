//! `MeshControlPlane`: one mesh control plane installation, cluster-scoped.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{Condition, LabelSelector, Time},
    util::intstr::IntOrString,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Namespace used when `spec.namespace` is not set: Istio's, so what Istio users write for it
/// (`cacerts`, gateway credentials, mesh-wide policies in the root namespace, all
/// `-n istio-system`) has its documented effect unchanged.
pub const DEFAULT_NAMESPACE: &str = "istio-system";

/// The MeshControlPlane CRD as Skein ships it: the derived schema, plus a default for `status`
/// (`observedGeneration: 0`), which the apiserver fills in on every read until the operator
/// writes the first status. Without it a new object has no status at all, and kstatus (Flux's
/// `wait`) reads an object without status as Current: with it, generation 1 against observed 0
/// reads InProgress until the operator has looked.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    use kube::CustomResourceExt;
    let mut crd = MeshControlPlane::crd();
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({"observedGeneration": 0})));
        }
    }
    crd
}
/// Trust domain used when `meshConfig.trustDomain` is not set.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Desired state of a Skein mesh control plane.
///
/// `version` pins a release (`1.0.2`) or a minor alias (`v1.0-latest`); without it, the newest
/// release of `channel` is installed. `version` wins when both are set.
// The printcolumn(...) entries repeat `type_ = "string"`, which clippy mistakes for duplicated
// attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mesh.skein.dev",
    version = "v1alpha1",
    kind = "MeshControlPlane",
    shortname = "mcp",
    category = "skein",
    status = "MeshControlPlaneStatus",
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "Channel", type_ = "string", json_path = ".status.channel"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".status.activeRevision"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MeshControlPlaneSpec {
    /// Release to install: `X.Y.Z` (optionally `v`-prefixed, with a pre-release suffix) or the
    /// alias `vX.Y-latest` (newest patch of that minor). Unset: follow `channel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?|v[0-9]+\.[0-9]+-latest)$"))]
    pub version: Option<String>,

    /// Upgrade channel followed when `version` is unset: `stable` (default), `fast` or
    /// `candidate`, optionally held to one minor line (`stable-1.0`).
    #[serde(default)]
    pub channel: Channel,

    /// Registry and path the control-plane and proxy images come from, like Istio's `hub`
    /// (`<hub>/skein-controlplane:<tag>`, `<hub>/skein-proxy:<tag>`). Unset: the operator's
    /// default registry (its `--image-registry`, else the release catalog's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:-]*[A-Za-z0-9])?(/[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)*$")
    )]
    pub hub: Option<String>,

    /// Image tag, like Istio's `tag`. Unset: the resolved release's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"))]
    pub tag: Option<String>,

    /// Namespace the control plane and gateways are installed in; also the mesh's root
    /// namespace unless `meshConfig.rootNamespace` says otherwise. Default `istio-system`
    /// (Istio's); immutable once set.
    #[serde(default = "default_namespace")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("namespace is immutable"))]
    pub namespace: String,

    /// How a version change is rolled out.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,

    /// Which components run, and their size.
    #[serde(default)]
    pub components: Components,

    /// Mesh-wide settings handed to the control plane and proxies.
    #[serde(default)]
    pub mesh_config: MeshConfig,

    /// Root of trust for workload certificates.
    #[serde(default)]
    pub security: Security,

    /// This cluster's identity in a multi-cluster mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_cluster: Option<MultiCluster>,

    /// Revision tags besides `default`: namespaces labelled `istio.io/rev=<tag>` are injected
    /// by the revision the tag points at, which is the active one (so an upgrade never needs
    /// the namespaces relabelled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(t, t != 'default')").message("`default` is always a tag; list only the others"))]
    pub revision_tags: Vec<RevisionTagName>,
}

/// A revision tag's name (a label value).
pub type RevisionTagName = String;

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// How stable a release is: the track it was published to, and what a channel follows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// Releases proven in the fast track. The default.
    #[default]
    Stable,
    /// Newest general-availability releases.
    Fast,
    /// Release candidates.
    Candidate,
}

impl Track {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Fast => "fast",
            Track::Candidate => "candidate",
        }
    }
}

/// An upgrade channel: a moving pointer to a release. A track (`stable`, `fast`,
/// `candidate`), optionally held to one minor line (`stable-1.0`: the newest stable 1.0.z).
/// Written as one string; `Channel::STABLE` etc. name the plain tracks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Channel {
    /// What the channel takes: releases at least this stable.
    pub track: Track,
    /// Only releases of this `major.minor`.
    pub minor: Option<(u64, u64)>,
}

impl Channel {
    /// `stable`.
    pub const STABLE: Channel = Channel { track: Track::Stable, minor: None };
    /// `fast`.
    pub const FAST: Channel = Channel { track: Track::Fast, minor: None };
    /// `candidate`.
    pub const CANDIDATE: Channel = Channel { track: Track::Candidate, minor: None };

    /// Whether the channel takes releases of version `major.minor`.
    pub fn takes_minor(&self, major: u64, minor: u64) -> bool {
        self.minor.is_none_or(|m| m == (major, minor))
    }
}

impl std::str::FromStr for Channel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("channel {s:?}: expected stable, fast or candidate, optionally with a minor line (stable-1.0)");
        let (track, minor) = match s.split_once('-') {
            Some((t, m)) => {
                let (major, minor) = m.split_once('.').ok_or_else(bad)?;
                (t, Some((major.parse().map_err(|_| bad())?, minor.parse().map_err(|_| bad())?)))
            }
            None => (s, None),
        };
        let track = match track {
            "stable" => Track::Stable,
            "fast" => Track::Fast,
            "candidate" => Track::Candidate,
            _ => return Err(bad()),
        };
        Ok(Channel { track, minor })
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.track.as_str())?;
        match self.minor {
            Some((major, minor)) => write!(f, "-{major}.{minor}"),
            None => Ok(()),
        }
    }
}

impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Channel {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Channel".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^(stable|fast|candidate)(-[0-9]+\.[0-9]+)?$",
        })
    }
}

/// How upgrades are rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// `InPlace` replaces the running control plane; `RevisionBased` starts the new version as a
    /// canary revision beside the old one. Default `InPlace`.
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,
    /// With `RevisionBased`: seconds an inactive revision is kept once no Running or Pending
    /// pod uses it (never while a tag points at it). Default 30.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0, max = 2592000))]
    pub inactive_revision_deletion_grace_period_seconds: i64,
    /// Restart the workloads of the namespaces that follow the `default` tag (or a tag in
    /// `revisionTags`) onto the new version, in health-gated batches, once it is Ready; an
    /// unhealthy batch rolls the mesh back. Default false: sidecars move on their next restart.
    #[serde(default)]
    pub update_workloads: bool,
    /// Workloads (Deployments, StatefulSets, DaemonSets) restarted at once while migrating: a
    /// count (`2`) or a percentage of the workloads to migrate (`"25%"`, rounded up). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_batch: Option<IntOrString>,
    /// Seconds a new version's control plane has to become Ready, and each migration batch to
    /// become healthy, before the upgrade is rolled back (`Stalled=True`). Default 300.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: i64,
    /// Hold upgrades: a newer version (pinned or from the channel) is reported in status but
    /// not installed until this is false again. Default false.
    #[serde(default)]
    pub paused: bool,
    /// When the operator may start an upgrade the spec did not ask for by version: a newer
    /// release reaching the followed `channel`, or a new patch for `vX.Y-latest`. Outside
    /// every window such an upgrade waits (`Reconciled` reason `OutsideMaintenanceWindow`,
    /// naming the next opening); one that has started goes on after its window closes. A
    /// pinned `version` and a first install are not held. Empty: any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub maintenance_windows: Vec<MaintenanceWindow>,
}

/// A weekly time span, in UTC, when automatic upgrades may start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Days it opens on. Empty: every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub days: Vec<Weekday>,
    /// When it opens, `HH:MM` (UTC).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// How long it stays open: hours and/or minutes (`4h`, `90m`, `1h30m`), at most 168h.
    #[schemars(regex(pattern = r"^([0-9]{1,3}h)?([0-9]{1,5}m)?$"), length(min = 2))]
    pub duration: String,
}

/// A day of the week.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(missing_docs)]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        Self {
            type_: UpdateStrategyType::default(),
            inactive_revision_deletion_grace_period_seconds: default_grace(),
            update_workloads: false,
            workload_batch: None,
            progress_deadline_seconds: default_progress_deadline(),
            paused: false,
            maintenance_windows: Vec::new(),
        }
    }
}

fn default_grace() -> i64 {
    30
}

fn default_progress_deadline() -> i64 {
    300
}

/// Upgrade strategy kind.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpdateStrategyType {
    /// Upgrade the running control plane in place. The default.
    #[default]
    InPlace,
    /// Install each version as its own revision beside the previous one.
    RevisionBased,
}

/// The components of an installation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Components {
    /// The control plane (`skein-controlplane`).
    #[serde(default)]
    pub control_plane: ControlPlaneComponent,
    /// North-south ingress gateway. Enabled unless `enabled: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_gateway: Option<GatewayComponent>,
    /// Egress gateway. Disabled unless `enabled: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_gateway: Option<GatewayComponent>,
    /// East-west gateway for multi-cluster traffic (port 15443). Disabled unless `enabled: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub east_west_gateway: Option<GatewayComponent>,
}

/// Size of the control plane.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneComponent {
    /// Replicas of the control plane Deployment (1–10). Default 1; above 1 a
    /// PodDisruptionBudget keeps one available.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,
    /// Container resources. Default: requests 100m CPU, 128Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scale with a HorizontalPodAutoscaler (Istio's `autoscaleEnabled`/`autoscaleMin`/
    /// `autoscaleMax`) instead of `replicas`, which the operator then leaves to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

impl Default for ControlPlaneComponent {
    fn default() -> Self {
        Self { replicas: default_replicas(), resources: None, autoscaling: None }
    }
}

/// A HorizontalPodAutoscaler (autoscaling/v2) on CPU for a component's Deployment. The
/// autoscaler owns `spec.replicas`: the operator stops setting it, so the two never fight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxReplicas >= self.minReplicas").message("maxReplicas must be at least minReplicas"))]
pub struct Autoscaling {
    /// Fewest replicas (1–100). Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// Most replicas (1–100).
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the containers' CPU request, the autoscaler aims at
    /// (1–100). Default 80, as Istio's.
    #[serde(default = "default_cpu_target", rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_cpu_target() -> i32 {
    80
}

fn default_replicas() -> i32 {
    1
}

/// A gateway Deployment and its Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayComponent {
    /// Whether the gateway is installed. Unset: the component's default (ingress on, others off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Replicas (1–100). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<i32>,
    /// Type of the gateway's Service. Default `LoadBalancer` for ingress and east-west,
    /// `ClusterIP` for egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    /// Container resources. Default: requests 100m CPU, 128Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scale with a HorizontalPodAutoscaler instead of `replicas`, which the operator then
    /// leaves to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// Kubernetes Service type of a gateway.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    ClusterIP,
    /// Exposed on every node's port.
    NodePort,
    /// Exposed by the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Mesh-wide configuration (Istio's `MeshConfig` subset Skein honours).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enableTracing || has(self.tracing)")
    .message("tracing.address is required when enableTracing is true"))]
pub struct MeshConfig {
    /// SPIFFE trust domain of workload identities. Default `cluster.local`.
    #[serde(default = "default_trust_domain")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub trust_domain: String,
    /// Policy for traffic to hosts outside the mesh registry.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Access log destination (`/dev/stdout`); unset disables access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    /// Whether proxies report spans. Default false.
    #[serde(default)]
    pub enable_tracing: bool,
    /// Where spans are sent; required when `enableTracing` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// The root namespace (Istio's `rootNamespace`): PeerAuthentication, AuthorizationPolicy
    /// and other policies without a workload selector there apply to the whole mesh. Unset:
    /// `spec.namespace`, as in Istio, where it is the control plane's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub root_namespace: Option<String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            access_log_file: None,
            enable_tracing: false,
            tracing: None,
            root_namespace: None,
        }
    }
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_string()
}

/// Istio's `outboundTrafficPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (default) passes unknown hosts through; `REGISTRY_ONLY` refuses them.
    #[serde(default)]
    pub mode: OutboundMode,
}

/// Outbound traffic mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OutboundMode {
    /// Unknown hosts are passed through. The default.
    #[default]
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
    /// Only hosts in the registry (Services, ServiceEntries) are reachable.
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
}

/// Tracing collector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Tracing {
    /// `host:port` of the collector.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[^\s:]+:[0-9]{1,5}$"))]
    pub address: String,
}

/// Security settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Security {
    /// Root CA of the mesh. Default: self-signed, generated once.
    #[serde(default, rename = "rootCA")]
    pub root_ca: RootCa,
    /// Who writes the injection webhook's `caBundle`. `Operator` (default): the operator sets it
    /// to the mesh root and repairs other writes, with back-off. `External`: another controller
    /// owns the field (cert-manager's CA injector with
    /// `cert-manager.io/inject-ca-from-secret: <namespace>/skein-webhook-tls`, whose `ca.crt`
    /// is the mesh root), so the operator leaves it alone and never fights over it.
    #[serde(default, rename = "webhookCABundle")]
    pub webhook_ca_bundle: CaBundleSource,
}

/// Who writes a webhook configuration's `caBundle`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CaBundleSource {
    /// The operator, from the mesh root. The default.
    #[default]
    Operator,
    /// Another controller (a CA injector); the operator omits the field from what it applies.
    External,
}

/// Where the mesh's signing CA comes from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'Secret' || has(self.secretName)")
    .message("secretName is required when type is Secret"))]
pub struct RootCa {
    /// `SelfSigned` (default): the operator generates a root once and never replaces it.
    /// `Secret`: a user-provided Secret in `spec.namespace` with `ca-cert.pem`, `ca-key.pem`,
    /// `root-cert.pem` and `cert-chain.pem` (Istio's `cacerts` layout).
    #[serde(default, rename = "type")]
    pub type_: RootCaType,
    /// Name of the `cacerts`-style Secret when `type` is `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

/// Root CA source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RootCaType {
    /// Generated by the operator. The default.
    #[default]
    SelfSigned,
    /// Provided by the user in a Secret.
    Secret,
}

/// Identity of this cluster in a multi-cluster mesh.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MultiCluster {
    /// Name of this cluster, unique in the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub cluster_name: Option<String>,
    /// Network this cluster's pods are on; clusters on different networks talk through
    /// east-west gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Mesh this cluster belongs to.
    #[serde(default, rename = "meshID", skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
    /// Where this cluster's east-west gateway is, `region[/zone[/subzone]]`: its Service gets
    /// the matching topology labels, and peers order the clusters that export a service by it
    /// (Istio's locality failover: same zone, same region, then other regions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 189),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?(/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?){0,2}$")
    )]
    pub locality: Option<String>,
    /// Which of this cluster's Services its peers import as `<name>.<namespace>.<suffix>`, in
    /// addition to Services and namespaces labelled `mesh.skein.dev/export: "true"`. Nothing is
    /// exported by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub export: Vec<ExportRule>,
    /// Suffix of the names imported Services get here (`reviews.default.<suffix>`). Default
    /// `global`, as in Istio's multi-cluster gateways model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub global_domain_suffix: Option<String>,
}

/// Services a cluster exports to its peers: those of `namespaces` (every namespace when empty)
/// whose labels match `selector` (every Service when unset). At least one of the two is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.namespaces) && size(self.namespaces) > 0) || has(self.selector)").message("set namespaces, selector or both: an empty rule would export every Service of the cluster"))]
pub struct ExportRule {
    /// Namespaces whose Services the rule covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
    /// Labels the Services must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Observed state of a `MeshControlPlane`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshControlPlaneStatus {
    /// `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Reconciled` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Release installed (resolved from `version` or `channel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Channel the spec follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Revision serving the mesh: the one the `default` tag points at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_revision: Option<String>,
    /// Newest release of `channel` in this operator's catalog (whether or not installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_head: Option<String>,
    /// Every installed control plane revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub revisions: Vec<RevisionStatus>,
    /// The upgrade in progress, or the last one (kept so a rollback knows where it came from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,
    /// Readiness of each installed component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub components: Vec<ComponentStatus>,
    /// Peers this cluster imports Services from (written by the federation controller only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub remote_clusters: Vec<RemoteClusterStatus>,
}

/// What the operator sees of one peer cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterStatus {
    /// Cluster name (the key of its kubeconfig in the remote Secret).
    pub name: String,
    /// `<namespace>/<name>` of the Secret it was registered with.
    pub secret: String,
    /// The peer's network, from its east-west gateway (`topology.istio.io/network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `Synced`: True while the peer is watched and its Services are imported; False with
    /// `Unreachable`, `Unauthorized`, `InvalidSecret`, `NoGateway` or `Removing` otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Last time the peer's state was read completely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Services the peer exports.
    #[serde(default)]
    pub exported_services: i32,
    /// Addresses of the peer's east-west gateway (15443).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_addresses: Vec<String>,
    /// SHA-256 of the peer's root certificate(s) (`istio-ca-root-cert`), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle_fingerprint: Option<String>,
    /// When the credentials of the remote Secret expire (token `exp`, client certificate
    /// `notAfter`), when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expire: Option<Time>,
    /// `.global` hosts written for this peer that another object of the same host blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// Users' DestinationRules that set a TLS mode other than `ISTIO_MUTUAL` for `.global`
    /// hosts of this peer (`<namespace>/<name>: tls <MODE> for <host>; ...`): the clients that
    /// use them (those of the rule's namespace; every namespace for a rule in the mesh
    /// namespace) cannot reach the peer through its east-west gateway. Left as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_overrides: Vec<String>,
}

/// One installed control plane revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// Revision name (`istio.io/rev` of its pods and of the namespaces it injects).
    pub name: String,
    /// Release it runs.
    pub version: String,
    /// Whether its control plane is available.
    pub ready: bool,
    /// Tags pointing at it (`default`, then `revisionTags`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Running or Pending pods whose sidecar it injected.
    #[serde(default)]
    pub proxies: i32,
    /// Since when it has been neither pointed at nor used by a pod (removed after
    /// `inactiveRevisionDeletionGracePeriodSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_since: Option<Time>,
}

/// A move of the mesh from one revision/version to another.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// Revision the mesh was on.
    pub from_revision: String,
    /// Release the mesh was on.
    pub from_version: String,
    /// Revision being moved to.
    pub to_revision: String,
    /// Release being moved to.
    pub to_version: String,
    /// `WaitingForRevision`, `Migrating`, `Complete`, `RolledBack` or `Blocked`.
    pub phase: String,
    /// When the move started (the new control plane's progress deadline counts from here).
    pub started_at: Time,
    /// Workloads restarted onto the new revision so far.
    #[serde(default)]
    pub migrated: i32,
    /// Workloads still to restart.
    #[serde(default)]
    pub remaining: i32,
    /// What went wrong (phase `RolledBack` or `Blocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Readiness of one component.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Component name (`controlPlane`, `ingressGateway`, ...).
    pub name: String,
    /// Whether every desired replica is updated and ready.
    pub ready: bool,
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// Why it is not ready, from its pods (`pod <name>: container <c>: CrashLoopBackOff ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests;
