//! Clients for peer clusters, built from checked remote-Secret credentials
//! (`federation::credentials`): never from a kubeconfig that runs a program or reads a file.

use std::time::Duration;

use kube::{Client, Config, config::KubeConfigOptions};

use crate::federation::credentials::PeerCredentials;

/// How long connecting to a peer's apiserver may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for the peer `creds` describe.
pub async fn client(creds: &PeerCredentials) -> Result<Client, String> {
    let mut config = Config::from_custom_kubeconfig(creds.kubeconfig.clone(), &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig: {e}"))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    super::identify(&mut config);
    Client::try_from(config).map_err(|e| format!("client: {e}"))
}
