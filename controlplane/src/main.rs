//! `skein-controlplane`: Skein's istiod.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use skein_api::proxy::wire::pb::{
    certificate_service_server::CertificateServiceServer, proxy_discovery_server::ProxyDiscoveryServer,
};
use skein_controlplane::{
    ca::{Ca, TOKEN_AUDIENCE, TokenReviewer},
    inject,
    mesh::MeshSettings,
    metrics::{self, Metrics},
    render::Configs,
    rootcert,
    watch::{self, Changes, Stores},
    webhook,
    xds::Discovery,
};
use skein_support::{
    leader::{Elector, LeaseConfig},
    pki::CaBundle,
};
use tokio::{net::TcpListener, sync::watch as tokio_watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(name = "skein-controlplane", version, about = "Skein control plane")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch the apiserver, serve proxy configuration and certificates.
    Discovery(DiscoveryArgs),
}

#[derive(clap::Args, Debug)]
struct DiscoveryArgs {
    /// Namespace the control plane runs in (its CA Secret lives here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    namespace: String,
    /// Istio MeshConfig file (YAML); absent: Istio's defaults.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Secret holding the CA in Istio's `cacerts` layout.
    #[arg(long, default_value = "cacerts")]
    ca_secret: String,
    /// Directory with the injection webhook's `tls.crt`/`tls.key` (written by the operator).
    #[arg(long)]
    webhook_tls_dir: Option<PathBuf>,
    /// Revision this control plane serves (`istio.io/rev`).
    #[arg(long, default_value = "default")]
    revision: String,
    /// gRPC with TLS: discovery and certificates (Istio's 15012).
    #[arg(long, default_value = "0.0.0.0:15012")]
    grpc_addr: SocketAddr,
    /// Plaintext gRPC, discovery only (Istio's 15010). Empty to disable.
    #[arg(long, default_value = "0.0.0.0:15010")]
    plaintext_grpc_addr: Option<SocketAddr>,
    /// `/metrics`, `/ready`, `/debug/syncz` (Istio's 15014).
    #[arg(long, default_value = "0.0.0.0:15014")]
    monitoring_addr: SocketAddr,
    /// Extra names (DNS or IP) in the gRPC serving certificate.
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Audience ServiceAccount tokens must carry to get a certificate.
    #[arg(long, default_value = TOKEN_AUDIENCE)]
    token_audience: String,
    /// Configs larger than one chunk in flight (sent, not yet acknowledged) at most, across
    /// all proxies; smaller ones (deltas) are not held back.
    #[arg(long, default_value_t = skein_controlplane::xds::DEFAULT_PUSH_LIMIT)]
    push_limit: usize,
    /// Largest piece of a config in one response (configs are split so no stream keeps a
    /// buffer the size of a whole config).
    #[arg(long, default_value_t = skein_controlplane::xds::DEFAULT_CHUNK)]
    push_chunk_bytes: usize,
    /// Injection webhook (HTTPS, certificate from `--webhook-tls-dir`; Istio's 15017).
    #[arg(long, default_value = "0.0.0.0:15017")]
    webhook_addr: SocketAddr,
    /// Image of the sidecar the webhook injects.
    #[arg(long, default_value = "registry.skein.dev/skein-proxy:latest")]
    proxy_image: String,
    /// Control plane address injected sidecars dial. Default: `skein-controlplane.<namespace>.svc:15012`.
    #[arg(long)]
    injected_discovery_address: Option<String>,
    /// Elect one replica (Lease `<lease-name>` in `--namespace`) to write status and Events;
    /// every replica serves proxies either way.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "skein-controlplane-leader")]
    lease_name: String,
    /// How long a leader's Lease lasts without renewal (renewed every third of it).
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colors only on a terminal: pod logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let Command::Discovery(args) = Args::parse().command;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(discovery(args))
}

async fn load_ca(client: &Client, ns: &str, name: &str) -> anyhow::Result<CaBundle> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("read CA secret {ns}/{name}"))?;
    let data: BTreeMap<String, Vec<u8>> = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    Ok(CaBundle::from_secret_data(name, &data)?)
}

async fn discovery(args: DiscoveryArgs) -> anyhow::Result<()> {
    let mesh = match &args.mesh_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
            MeshSettings::from_yaml(&text)?
        }
        None => MeshSettings::default(),
    };
    info!(trust_domain = mesh.trust_domain, root_namespace = mesh.root_namespace, revision = args.revision, "starting");
    let client = Client::try_default().await.context("kubernetes client")?;
    let ca_bundle = load_ca(&client, &args.namespace, &args.ca_secret).await?;
    let metrics = Metrics::default();

    let changes = Arc::new(Changes::default());
    let stores = Stores::start(&client, &changes, &args.namespace);
    let (tx, rx) = tokio_watch::channel(Arc::new(Configs::default()));
    let leader = Arc::new(AtomicBool::new(!args.leader_elect));
    metrics.leader.set(i64::from(!args.leader_elect));
    if args.leader_elect {
        let identity = skein_support::process::replica_identity();
        let elector = Elector::new(
            client.clone(),
            LeaseConfig {
                namespace: args.namespace.clone(),
                name: args.lease_name.clone(),
                identity,
                lease_duration: Duration::from_secs(args.lease_duration_seconds),
                renew_period: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
            },
        );
        tokio::spawn(lead(elector, leader.clone(), changes.clone(), metrics.clone()));
    }
    tokio::spawn(watch::run(client.clone(), stores, changes, mesh.clone(), tx, metrics.clone(), leader));

    let reviewer = TokenReviewer::new(client.clone(), args.token_audience.clone());
    let discovery =
        Discovery::new(rx.clone(), metrics.clone(), args.push_limit, args.push_chunk_bytes, Some(reviewer.clone()));
    let monitoring =
        metrics::bind(args.monitoring_addr).await.with_context(|| format!("bind {}", args.monitoring_addr))?;
    tokio::spawn(metrics::serve(monitoring, metrics.clone(), Arc::new(discovery.sync_table())));

    let mut names = vec![
        format!("skein-controlplane.{}.svc", args.namespace),
        format!("istiod.{}.svc", args.namespace),
        format!("skein-controlplane.{}.svc.{}", args.namespace, mesh.cluster_domain),
    ];
    names.extend(args.tls_san.iter().cloned());
    let (chain, key) = ca_bundle.issue_serving_cert(&names)?;
    tokio::spawn(rootcert::publish(client.clone(), ca_bundle.root_cert_pem.clone(), args.namespace.clone()));
    if let Some(dir) = args.webhook_tls_dir.clone() {
        // A bad certificate is a startup error, not a webhook silently missing.
        webhook::load(&dir).map_err(|e| anyhow::anyhow!("--webhook-tls-dir: {e}"))?;
        let template = inject::Template {
            proxy_image: args.proxy_image.clone(),
            discovery_address: args
                .injected_discovery_address
                .clone()
                .unwrap_or_else(|| format!("skein-controlplane.{}.svc:15012", args.namespace)),
            revision: args.revision.clone(),
        };
        let listener =
            TcpListener::bind(args.webhook_addr).await.with_context(|| format!("bind {}", args.webhook_addr))?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = webhook::serve(listener, dir, template, metrics).await {
                tracing::error!(error = %e, "injection webhook stopped");
            }
        });
    }
    let ca = Ca::new(ca_bundle, reviewer, mesh.trust_domain.clone(), metrics.clone());

    let tls_listener = TcpListener::bind(args.grpc_addr).await.with_context(|| format!("bind {}", args.grpc_addr))?;
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(chain, key));
    let secure = Server::builder()
        .tls_config(tls)?
        .add_service(ProxyDiscoveryServer::new(discovery.clone()))
        .add_service(CertificateServiceServer::new(ca))
        .serve_with_incoming(TcpListenerStream::new(tls_listener));
    let plaintext = match args.plaintext_grpc_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
            Some(
                Server::builder()
                    .add_service(ProxyDiscoveryServer::new(discovery))
                    .serve_with_incoming(TcpListenerStream::new(l)),
            )
        }
        None => None,
    };
    // Ready once the first snapshot is built: before that a proxy would get an empty config.
    let mut first = rx.clone();
    let ready_metrics = metrics.clone();
    tokio::spawn(async move {
        while first.borrow_and_update().snapshot().generation == 0 {
            if first.changed().await.is_err() {
                return;
            }
        }
        ready_metrics.set_ready();
        info!(grpc = %args.grpc_addr, "serving");
    });
    let plaintext = async move {
        match plaintext {
            Some(s) => s.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = secure => r.context("gRPC (TLS) server")?,
        r = plaintext => r.context("gRPC (plaintext) server")?,
        () = skein_support::process::shutdown_signal() => info!("stopping"),
    }
    Ok(())
}

/// Terms of leadership, forever: while this replica holds the Lease it writes status and
/// Events; on winning, a snapshot is built so verdicts the last leader left unwritten are.
async fn lead(elector: Elector, leader: Arc<AtomicBool>, changes: Arc<Changes>, metrics: Metrics) {
    loop {
        if let Err(e) = elector.acquire().await {
            warn!(error = %e, "leader election failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        leader.store(true, Ordering::Relaxed);
        metrics.leader.set(1);
        changes.mark();
        let why = elector.hold().await;
        leader.store(false, Ordering::Relaxed);
        metrics.leader.set(0);
        warn!(error = %why, "leadership lost; status writes stop until it is won again");
    }
}
