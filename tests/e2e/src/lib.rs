//! Harness for Skein's end-to-end tests: real local Kubernetes clusters (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, and a real node or a kwok one) started through
//! `hack/cluster.sh`, and the operator run as a real process or a pod against them.
//!
//! Every cluster and process is torn down on drop, including when a test panics.
#![forbid(unsafe_code)]

use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod netns;
pub mod readme;
pub mod real;
use kube::{Client, Config, config::KubeConfigOptions};

/// Repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// Cargo's target directory (where the binaries under test are built).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// What runs the cluster's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// A kwok node: pods become Running/Ready with no process (tests that only need objects,
    /// and benchmarks with thousands of pods).
    Kwok,
    /// A real node (containerd, kubelet, kube-proxy, CoreDNS) with the images of
    /// `hack/images.sh` imported: pods really run.
    Real,
}

/// One running local cluster.
pub struct Cluster {
    /// Cluster name (unique per test process).
    pub name: String,
    /// Path of its admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Admin client.
    pub client: Client,
    dir: PathBuf,
}

impl Cluster {
    /// Starts a new cluster with a kwok node, named after `prefix`; ready when this returns
    /// (node Ready, default ServiceAccount present).
    pub async fn start(prefix: &str) -> anyhow::Result<Self> {
        Self::start_with(prefix, Node::Kwok).await
    }

    /// Starts a new cluster with `node`, named after `prefix`.
    pub async fn start_with(prefix: &str, node: Node) -> anyhow::Result<Self> {
        Self::start_inner(prefix, node, None).await
    }

    /// Starts a cluster with a real node on network `network`: its pods reach the pod and
    /// Service addresses of clusters on the same network, and only the LoadBalancer addresses
    /// of clusters on other networks.
    pub async fn start_real_on_network(prefix: &str, network: &str) -> anyhow::Result<Self> {
        Self::start_inner(prefix, Node::Real, Some(network)).await
    }

    async fn start_inner(prefix: &str, node: Node, network: Option<&str>) -> anyhow::Result<Self> {
        // A real node runs the images of this build; without them every pod would wait for a
        // pull that cannot happen here.
        if node == Node::Real && !target_dir().join("images/REF").exists() {
            bail!(
                "no images in {}: run `SKEIN_IMAGE_PROFILE=dev hack/images.sh` (make test-e2e does)",
                target_dir().join("images").display()
            );
        }
        let name = format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = target_dir().join("e2e-clusters");
        let out = Command::new(repo_root().join("hack/cluster.sh"))
            .args(["up", &name])
            .env("SKEIN_CLUSTERS_DIR", &dir)
            .env("SKEIN_NODE", if node == Node::Real { "real" } else { "kwok" })
            .env("SKEIN_NETWORK", network.unwrap_or(""))
            .stderr(Stdio::inherit())
            .output()
            .context("run hack/cluster.sh up")?;
        let cluster_dir = dir.join(&name);
        if !out.status.success() {
            down(&dir, &name);
            bail!("hack/cluster.sh up {name} failed: {}", out.status);
        }
        let kubeconfig = cluster_dir.join("kubeconfig");
        let client = client_for(&kubeconfig).await?;
        Ok(Self { name, kubeconfig, client, dir })
    }

    /// Runs this build's `skeinctl` against the cluster (`make test-e2e` builds it); its
    /// output, whatever the exit status.
    pub fn skeinctl(&self, args: &[&str]) -> Output {
        let bin = std::env::var_os("SKEIN_SKEINCTL_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("debug/skeinctl"));
        Command::new(&bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {} (cargo build -p skeinctl): {e}", bin.display()))
    }

    /// Runs the pinned kubectl against this cluster, optionally feeding `stdin`.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(tools_bin().join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Installs Skein's CRDs (`config/crd`, kustomize) and the ClusterRoles its install ships
    /// (`config/rbac/role.yaml`), and waits until the apiserver serves the CRDs.
    ///
    /// Polls the Established condition itself: `kubectl wait` fails outright when it looks
    /// before the apiserver has written any condition.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        let dir = repo_root().join("config/crd");
        let out = self.kubectl(&["apply", "--server-side", "-k", &dir.to_string_lossy()], None);
        anyhow::ensure!(out.status.success(), "install CRDs: {}", String::from_utf8_lossy(&out.stderr));
        // The ClusterRoles the operator binds (the control plane's, peers' readers'): shipped
        // with the operator's install, which an operator started by a test stands in for.
        let roles = repo_root().join("config/rbac/role.yaml");
        let out = self.kubectl(&["apply", "--server-side", "-f", &roles.to_string_lossy()], None);
        anyhow::ensure!(out.status.success(), "install ClusterRoles: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_established("meshcontrolplanes.mesh.skein.dev").await
    }

    /// Waits until the apiserver serves CRD `name` (its Established condition is True).
    pub async fn wait_established(&self, name: &str) -> anyhow::Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let api: kube::Api<CustomResourceDefinition> = kube::Api::all(self.client.clone());
        let start = Instant::now();
        loop {
            let conds = api.get_opt(name).await?.and_then(|c| c.status?.conditions).unwrap_or_default();
            if conds.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                return Ok(());
            }
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "{name} not Established after 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Installs the Istio API CRDs (`config/crd/istio`) and waits until each is Established.
    pub async fn install_istio_crds(&self) -> anyhow::Result<()> {
        let dir = repo_root().join("config/crd/istio");
        let out = self.kubectl(&["apply", "--server-side", "-k", &dir.to_string_lossy()], None);
        anyhow::ensure!(out.status.success(), "install Istio CRDs: {}", String::from_utf8_lossy(&out.stderr));
        for crd in skein_api::istio::crds() {
            self.wait_established(&crd.metadata.name.unwrap_or_default()).await?;
        }
        Ok(())
    }

    /// Applies YAML documents with kubectl (server-side, strict validation), failing loudly.
    pub fn apply(&self, yaml: &str) {
        let out =
            self.kubectl(&["apply", "--server-side", "--force-conflicts", "--validate=strict", "-f", "-"], Some(yaml));
        assert!(out.status.success(), "kubectl apply: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
    }

    /// Directory for this cluster's logs and scratch files.
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Stops the kube-apiserver (etcd and the rest keep running).
    pub fn stop_apiserver(&self) -> anyhow::Result<()> {
        self.script("stop-apiserver")
    }

    /// Starts the kube-apiserver again on the same port with the same certificates.
    pub fn start_apiserver(&self) -> anyhow::Result<()> {
        self.script("start-apiserver")
    }

    /// Runs `hack/cluster.sh up` for this cluster again (after its processes were killed: a
    /// new cluster under the same name, with fresh certificates and ports; `client` is stale).
    pub fn up_again(&self) -> anyhow::Result<()> {
        self.script("up")
    }

    /// Runs `ctr` against the real node's containerd (namespace `k8s.io`, where the kubelet's
    /// images are), failing loudly.
    pub fn node_ctr(&self, args: &[&str]) -> String {
        let slot = std::fs::read_to_string(self.scratch_dir().join("slot")).expect("a real node's slot");
        let socket = format!("/run/skein/node-{}/containerd.sock", slot.trim());
        let out = Command::new("ctr").args(["--address", &socket, "--namespace", "k8s.io"]).args(args).output();
        let out = out.expect("run ctr");
        assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a kubeconfig that impersonates `user` (the admin may), so a process can be run with
    /// exactly the permissions RBAC grants that user.
    pub fn impersonating_kubeconfig(&self, user: &str) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let mut kc: serde_yaml::Value = serde_yaml::from_str(&text)?;
        kc["users"][0]["user"]["as"] = serde_yaml::Value::from(user);
        let path = self.dir.join(&self.name).join("impersonating.kubeconfig");
        std::fs::write(&path, serde_yaml::to_string(&kc)?)?;
        Ok(path)
    }

    fn script(&self, cmd: &str) -> anyhow::Result<()> {
        let status = Command::new(repo_root().join("hack/cluster.sh"))
            .args([cmd, &self.name])
            .env("SKEIN_CLUSTERS_DIR", &self.dir)
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "hack/cluster.sh {cmd} {} failed", self.name);
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        down(&self.dir, &self.name);
    }
}

fn down(dir: &Path, name: &str) {
    let _ =
        Command::new(repo_root().join("hack/cluster.sh")).args(["down", name]).env("SKEIN_CLUSTERS_DIR", dir).status();
}

/// Directory of the pinned Kubernetes binaries (built by `hack/tools.sh`).
pub fn tools_bin() -> PathBuf {
    let out = Command::new(repo_root().join("hack/tools.sh")).output().expect("run hack/tools.sh");
    assert!(out.status.success(), "hack/tools.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A client for `kubeconfig`.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The operator running as a real process against a cluster; killed on drop.
pub struct Operator {
    child: Child,
    /// Port of its `/metrics`, `/healthz`, `/readyz`.
    pub metrics_port: u16,
    log: PathBuf,
}

impl Operator {
    /// Starts `skein-operator` (built by `cargo build -p skein-operator`) against `cluster` with
    /// its admin credentials.
    pub fn start(cluster: &Cluster, identity: &str) -> anyhow::Result<Self> {
        Self::start_with(cluster, identity, &cluster.kubeconfig, "default")
    }

    /// Starts the operator with the credentials of `kubeconfig`, its Lease in `lease_namespace`.
    pub fn start_with(
        cluster: &Cluster,
        identity: &str,
        kubeconfig: &Path,
        lease_namespace: &str,
    ) -> anyhow::Result<Self> {
        Self::start_args(cluster, identity, kubeconfig, lease_namespace, &[])
    }

    /// [`Operator::start_with`], with more command-line arguments.
    pub fn start_args(
        cluster: &Cluster,
        identity: &str,
        kubeconfig: &Path,
        lease_namespace: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let bin = std::env::var_os("SKEIN_OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("debug/skein-operator"));
        anyhow::ensure!(bin.exists(), "{} missing: run `cargo build -p skein-operator` first", bin.display());
        let metrics_port = free_port();
        let log = cluster.dir.join(&cluster.name).join(format!("logs/operator-{identity}.log"));
        let child = Command::new(bin)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,skein_operator=debug")
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--identity", identity, "--lease-namespace", lease_namespace, "--lease-duration-seconds", "6"])
            .args(extra)
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log)?))
            .spawn()
            .context("spawn skein-operator")?;
        Ok(Self { child, metrics_port, log })
    }

    /// Whether the process is still running (it must never restart itself).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The operator's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Value of an unlabelled metric sample (`name` exactly as exposed), if present.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        scrape(self.metrics_port, name).await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `skein-controlplane` running as a real process against a cluster (Istio CRDs, its
/// namespace and a CA Secret in Istio's `cacerts` layout set up first); killed on drop.
pub struct ControlPlane {
    child: Child,
    /// gRPC with TLS (discovery and certificates).
    pub grpc_port: u16,
    /// Monitoring (`/metrics`, `/ready`, `/debug/syncz`).
    pub monitoring_port: u16,
    /// Injection webhook (HTTPS on 127.0.0.1, certificate signed by `ca` for 127.0.0.1).
    pub webhook_port: u16,
    /// The mesh root certificate (PEM), as proxies are given it.
    pub root_cert: PathBuf,
    /// The CA it signs with.
    pub ca: skein_support::pki::CaBundle,
    log: PathBuf,
    mesh: PathBuf,
    bind_ip: String,
}

/// Namespace the e2e control plane runs in.
pub const CONTROL_PLANE_NS: &str = "istio-system";

impl ControlPlane {
    /// Starts `skein-controlplane` (built by `cargo build -p skein-controlplane`) listening on
    /// `bind_ip` with `mesh_config` (Istio MeshConfig YAML); returns once `/ready` answers.
    pub async fn start(cluster: &Cluster, bind_ip: &str, mesh_config: &str) -> anyhow::Result<Self> {
        Self::start_with(cluster, bind_ip, mesh_config, &[]).await
    }

    /// [`ControlPlane::start`] with extra command-line arguments.
    pub async fn start_with(
        cluster: &Cluster,
        bind_ip: &str,
        mesh_config: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        cluster.install_istio_crds().await?;
        let ca = skein_support::pki::CaBundle::generate_self_signed("cluster.local")?;
        let data: std::collections::BTreeMap<String, String> =
            ca.to_secret_data().into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap_or_default())).collect();
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cacerts", "namespace": CONTROL_PLANE_NS},
            "stringData": data,
        });
        cluster.apply(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {CONTROL_PLANE_NS}}}\n"));
        cluster.apply(&serde_json::to_string(&secret)?);
        let dir = cluster.scratch_dir();
        let root_cert = dir.join("root-cert.pem");
        std::fs::write(&root_cert, &ca.root_cert_pem)?;
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, mesh_config)?;
        Self::spawn(cluster, bind_ip, mesh, ca, root_cert, extra).await
    }

    /// Another replica of this control plane (same CA Secret and mesh config, its own ports).
    pub async fn replica(&self, cluster: &Cluster, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(cluster, &self.bind_ip, self.mesh.clone(), self.ca.clone(), self.root_cert.clone(), extra).await
    }

    async fn spawn(
        cluster: &Cluster,
        bind_ip: &str,
        mesh: PathBuf,
        ca: skein_support::pki::CaBundle,
        root_cert: PathBuf,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let bin = std::env::var_os("SKEIN_CONTROLPLANE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("debug/skein-controlplane"));
        anyhow::ensure!(bin.exists(), "{} missing: run `cargo build -p skein-controlplane` first", bin.display());
        let dir = cluster.scratch_dir();
        let (grpc_port, plain_port, monitoring_port, webhook_port) =
            (free_port(), free_port(), free_port(), free_port());
        let webhook_tls = dir.join(format!("webhook-tls-{webhook_port}"));
        std::fs::create_dir_all(&webhook_tls)?;
        let (chain, key) = ca.issue_serving_cert(&["127.0.0.1".to_string()])?;
        std::fs::write(webhook_tls.join("tls.crt"), chain)?;
        std::fs::write(webhook_tls.join("tls.key"), key)?;
        let log = dir.join(format!("logs/controlplane-{monitoring_port}.log"));
        let child = Command::new(bin)
            .env("KUBECONFIG", &cluster.kubeconfig)
            // Benchmarks run it at the production level (SKEIN_E2E_CP_LOG): a debug line per push
            // is a cost real deployments do not pay.
            .env(
                "RUST_LOG",
                std::env::var("SKEIN_E2E_CP_LOG").unwrap_or_else(|_| "info,skein_controlplane=debug".into()),
            )
            .args(["discovery", "--namespace", CONTROL_PLANE_NS, "--ca-secret", "cacerts"])
            .arg("--mesh-config")
            .arg(&mesh)
            .args(["--grpc-addr", &format!("{bind_ip}:{grpc_port}")])
            .args(["--plaintext-grpc-addr", &format!("127.0.0.1:{plain_port}")])
            .args(["--monitoring-addr", &format!("127.0.0.1:{monitoring_port}")])
            .args(["--tls-san", bind_ip])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
            .arg("--webhook-tls-dir")
            .arg(&webhook_tls)
            .args(["--proxy-image", "registry.skein.dev/skein-proxy:e2e"])
            // Small chunks, so every config the tests push arrives in several pieces and the
            // proxies' reassembly is exercised.
            .args(["--push-chunk-bytes", &std::env::var("SKEIN_E2E_PUSH_CHUNK").unwrap_or_else(|_| "1024".into())])
            .args(extra)
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log)?))
            .spawn()
            .context("spawn skein-controlplane")?;
        let mut cp = Self {
            child,
            grpc_port,
            monitoring_port,
            webhook_port,
            root_cert,
            ca,
            log,
            mesh,
            bind_ip: bind_ip.to_string(),
        };
        let start = Instant::now();
        while http_get(cp.monitoring_port, "/ready").await.is_err() {
            if !matches!(cp.child.try_wait(), Ok(None)) {
                bail!("skein-controlplane exited:\n{}", cp.log());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("skein-controlplane not ready after 60s:\n{}", cp.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(cp)
    }

    /// Stops the process now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Value of a metric sample whose line starts with `prefix` (name plus labels, if any).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        scrape(self.monitoring_port, prefix).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first sample on `port`'s `/metrics` whose line starts with `prefix`
/// (the metric name, plus its labels if any) followed by a space.
pub async fn scrape(port: u16, prefix: &str) -> Option<f64> {
    let body = http_get(port, "/metrics").await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(prefix).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Minimal HTTP/1.1 GET on loopback, returning the body of a 2xx answer.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(("127.0.0.1", port))).await??;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.1 2"), "GET {path}: {}", head.lines().next().unwrap_or(""));
    Ok(body.to_string())
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Go tool the tests build from its pinned module: `$env` names a built binary, else
/// `hack/<script>` builds it (cached) and prints its path.
pub fn go_tool(env: &str, script: &str) -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os(env) {
        return std::path::PathBuf::from(bin);
    }
    let out =
        std::process::Command::new(repo_root().join("hack").join(script)).output().expect("run the hack/ builder");
    assert!(out.status.success(), "hack/{script}: {}", String::from_utf8_lossy(&out.stderr));
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
