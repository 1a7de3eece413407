//! Writes the CRDs Skein owns as YAML into a directory (`make generate` uses `config/crd`):
//! `MeshControlPlane` at the top, the Istio API CRDs under `istio/`.
use std::path::PathBuf;

use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: crdgen DIR"))?);
    std::fs::create_dir_all(dir.join("istio"))?;
    std::fs::write(
        dir.join("mesh.skein.dev_meshcontrolplanes.yaml"),
        serde_yaml::to_string(&skein_api::MeshControlPlane::crd())?,
    )?;
    for crd in skein_api::istio::crds() {
        let name = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
        std::fs::write(dir.join("istio").join(name), serde_yaml::to_string(&crd)?)?;
    }
    Ok(())
}
