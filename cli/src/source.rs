//! Where skeinctl reads the control plane's debug endpoints (15014): every control-plane pod of
//! the mesh through the apiserver's pod proxy (what `istioctl` does with istiod), or one
//! address given on the command line (a port-forward, or a control plane run by hand).

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt, api::ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The control planes' monitoring port (istiod's 15014).
const MONITORING_PORT: u16 = 15014;
/// Label of control-plane pods, as istiod's (`istio: pilot`).
const CONTROL_PLANE_SELECTOR: &str = "istio=pilot";
/// How long one control plane has to answer.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read from an address (a config dump of a big mesh fits many times).
const MAX_RESPONSE: u64 = 256 << 20;

/// The control planes to ask.
pub enum ControlPlanes {
    /// One control plane's monitoring address, `host:port` (`http://` optional).
    Address(String),
    /// Every running control-plane pod in `namespace`, through the apiserver.
    Pods {
        /// Client of the cluster.
        client: Client,
        /// The mesh's namespace (`istio-system` by default).
        namespace: String,
    },
}

/// One control plane's answer: its name, and the status and body (or why there is none).
pub type Answer = (String, Result<(u16, String), String>);

impl ControlPlanes {
    /// `GET path_and_query` on every control plane.
    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<Vec<Answer>> {
        match self {
            Self::Address(addr) => {
                let addr = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
                anyhow::ensure!(
                    !addr.contains("://"),
                    "--controlplane {addr}: only http:// is served on the monitoring port"
                );
                let answer = tokio::time::timeout(TIMEOUT, direct_get(&addr, path_and_query))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")));
                Ok(vec![(addr, answer)])
            }
            Self::Pods { client, namespace } => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
                let list = pods
                    .list(&ListParams::default().labels(CONTROL_PLANE_SELECTOR))
                    .await
                    .with_context(|| format!("list control-plane pods ({CONTROL_PLANE_SELECTOR}) in {namespace}"))?;
                let running: Vec<Pod> = list
                    .items
                    .into_iter()
                    .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                    .collect();
                anyhow::ensure!(
                    !running.is_empty(),
                    "no running control-plane pod ({CONTROL_PLANE_SELECTOR}) in namespace {namespace} (-i to choose another)"
                );
                let mut out = Vec::new();
                for pod in running {
                    let name = pod.name_any();
                    let path =
                        format!("/api/v1/namespaces/{namespace}/pods/{name}:{MONITORING_PORT}/proxy{path_and_query}");
                    let answer = tokio::time::timeout(TIMEOUT, proxy_get(client, &path))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")));
                    out.push((name, answer));
                }
                Ok(out)
            }
        }
    }
}

/// `GET path` through the apiserver.
async fn proxy_get(client: &Client, path: &str) -> Result<(u16, String), String> {
    let req = http::Request::get(path).body(kube::client::Body::empty()).map_err(|e| e.to_string())?;
    let resp = client.send(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect_bytes().await.map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET path` over plain HTTP/1.1 to `addr` (`host:port`).
async fn direct_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|h| h.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    Ok((status, body.to_string()))
}
