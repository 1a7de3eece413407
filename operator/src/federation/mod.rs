//! Federation, the pure part: what a peer's remote Secret holds ([`credentials`]), which of a
//! peer's Services are exported ([`export`]), the `.global` ServiceEntries and
//! DestinationRules their import needs ([`generate`]), the virtual IPs they get ([`vip`]), the
//! peers' roots of trust ([`trust`]), which peer gateways are withdrawn ([`health`]), which
//! users' rules turn mesh mTLS off for `.global` hosts ([`overrides`]) and how often costly
//! work runs in a burst of changes ([`pace`]).
//!
//! No I/O here: the controllers (`controllers::federation`) read the peers and the local
//! cluster into these types and apply what comes out.

pub mod credentials;
pub mod export;
pub mod generate;
pub mod health;
pub mod overrides;
pub mod pace;
pub mod trust;
pub mod vip;

/// Label of a Secret holding a peer's kubeconfig (Skein's).
pub const REMOTE_SECRET_LABEL: &str = "mesh.skein.dev/remote-cluster";
/// Label of Istio's remote secrets (`istioctl create-remote-secret`), accepted unchanged.
pub const ISTIO_REMOTE_SECRET_LABEL: &str = "istio/multiCluster";
/// Annotation naming the cluster of an Istio remote secret.
pub const ISTIO_CLUSTER_ANNOTATION: &str = "networking.istio.io/cluster";
/// Label exporting a Service, or every Service of a namespace, to the peers.
pub const EXPORT_LABEL: &str = "mesh.skein.dev/export";
/// Label on every object the federation controller generates (value: the local mesh's name).
pub const GENERATED_LABEL: &str = skein_api::names::FEDERATION_LABEL;
/// Annotation listing the clusters a generated object was made from.
pub const SOURCE_CLUSTERS_ANNOTATION: &str = "mesh.skein.dev/source-clusters";
/// Default suffix of imported names.
pub const DEFAULT_SUFFIX: &str = "global";
/// Istio's topology labels, set on the generated endpoints.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// See [`CLUSTER_LABEL`].
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Prefix of the endpoint labels the mirrored subsets select on: an endpoint (a peer's gateway)
/// carries `subsets.mesh.skein.dev/<subset>: "true"` for each subset that peer defines.
pub const SUBSET_LABEL_PREFIX: &str = "subsets.mesh.skein.dev/";
/// Port of the east-west gateways (SNI passthrough with mesh mTLS end to end).
pub const EAST_WEST_PORT: u16 = 15443;
/// Label of east-west gateway Services (Istio's).
pub const EAST_WEST_SELECTOR: (&str, &str) = ("istio", "eastwestgateway");
/// ConfigMap (in the mesh namespace) persisting the virtual IP table.
pub const VIP_CONFIGMAP: &str = "skein-federation-vips";
/// ConfigMap (mesh namespace) the peers' roots are written to, one `<cluster>.pem` each.
pub use skein_api::names::FEDERATED_ROOTS_CONFIGMAP;
/// ConfigMap holding a peer's own root (the control plane publishes it in the mesh namespace).
pub use skein_api::names::MESH_ROOT_CONFIGMAP;
