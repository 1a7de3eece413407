//! Prints the CRDs Skein owns as YAML (`make generate` writes them to `config/crd/`).
use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    print!("{}", serde_yaml::to_string(&skein_api::MeshControlPlane::crd())?);
    Ok(())
}
