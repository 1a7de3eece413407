//! Names both planes must agree on: cluster names (the control plane writes them, the proxy
//! reads them back from SNI and reports them in metrics) and the certificate files of a
//! workload's identity (Istio's names, so tools that read Istio's layout read Skein's).

/// `outbound|<port>|<subset>|<host>`: the cluster of one service port and subset (`subset`
/// empty for the whole service), Istio's name.
pub fn outbound_cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|<port>||`: the cluster delivering to the local workload on `port`, Istio's name.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Label on every object the operator's federation controller generates (value: the local
/// mesh's name); the control plane gives the `.global` hosts of such ServiceEntries the local
/// Service's endpoints too, nearest first.
pub const FEDERATION_LABEL: &str = "mesh.skein.dev/federation";
/// The certificate chain file of a workload's identity.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The private key file of a workload's identity.
pub const KEY_FILE: &str = "key.pem";
/// The mesh root certificate file (also the `istio-ca-root-cert` ConfigMap's key).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Where a mesh pod (sidecar or gateway) finds its identity, Istio's paths: the projected
/// ServiceAccount token for the CA, the mesh root, and the directory its certificate goes in.
/// The operator's gateways and the injector's sidecars mount the same.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The token's file name in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "istio-token";
/// The audience the CA accepts tokens for.
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// Where the mesh root ([`ROOT_CERT_FILE`]) is mounted.
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
/// Where the proxy writes its certificate and key (an in-memory volume).
pub const CERT_DIR: &str = "/var/run/skein/certs";

/// The ConfigMap the control plane publishes the mesh root certificate in, in every namespace
/// (Istio's name; sidecars and gateways mount it).
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";

/// The ConfigMap (in the mesh namespace) holding this cluster's own root alone, which peers
/// read to trust it ([`ROOT_CERT_CONFIGMAP`] holds the whole bundle, so reading that would
/// make trust transitive: a peer's peers would be trusted too).
pub const MESH_ROOT_CONFIGMAP: &str = "skein-mesh-root";

/// The ConfigMap (in the mesh namespace) the operator writes peers' roots to, one key per
/// cluster (`<cluster>.pem`); the control plane adds them to the bundle it publishes.
pub const FEDERATED_ROOTS_CONFIGMAP: &str = "skein-federated-roots";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_have_istios_form() {
        assert_eq!(
            outbound_cluster(9080, "v1", "reviews.default.svc.cluster.local"),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(outbound_cluster(80, "", "a"), "outbound|80||a");
        assert_eq!(inbound_cluster(9080), "inbound|9080||");
    }
}
