//! `skein-operator`: runs in-cluster or against a kubeconfig (`KUBECONFIG`).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use skein_operator::{
    context::{Context, Scope},
    controllers,
    leader::{Elector, LeaseConfig},
    telemetry::{self, Health, Metrics},
    upgrade::catalog::Catalog,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Command line of skein-operator.
#[derive(Parser, Debug)]
#[command(name = "skein-operator", version, about = "Installs and manages Skein mesh control planes")]
struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SKEIN_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Take a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "SKEIN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own namespace in-cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "skein-operator-leader")]
    lease_name: String,
    /// This replica's identity in the Lease (pod name in-cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Registry the control-plane and proxy images come from when a MeshControlPlane names no
    /// `spec.hub` (default: the release catalog's).
    #[arg(long, env = "SKEIN_IMAGE_REGISTRY")]
    image_registry: Option<String>,
    /// Release catalog to use instead of the one built into this binary (same format as
    /// `config/versions.yaml`; an air-gapped mirror's, or a test's).
    #[arg(long, env = "SKEIN_CATALOG")]
    catalog: Option<std::path::PathBuf>,
    /// Seconds a peer whose remote Secret was deleted keeps its imported services.
    #[arg(long, default_value_t = 30)]
    remote_removal_grace_seconds: u64,
    /// Seconds a peer's east-west gateway may fail its readiness probes (port 15021, every
    /// 5 s) before its endpoints are withdrawn from the `.global` hosts; 0: never withdrawn.
    #[arg(long, default_value_t = 30)]
    gateway_lease_seconds: u64,
    /// Exported hosts per east-west Gateway object, on average: more are split over several
    /// Gateways (shards), so that no object nears the apiserver's size limit.
    #[arg(long, default_value_t = skein_operator::federation::generate::EAST_WEST_SHARD_HOSTS, value_parser = clap::value_parser!(usize))]
    east_west_shard_hosts: usize,
    /// Namespaces MeshControlPlanes may install into (comma-separated), where the install
    /// grants the operator a Role (config/rbac/mesh_namespace.yaml); every other namespace is
    /// refused with `NamespaceNotManaged`. Empty: any namespace, for an operator with
    /// cluster-wide rights.
    #[arg(long, env = "SKEIN_MESH_NAMESPACES", default_value = "")]
    mesh_namespaces: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colors only on a terminal: pod logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into()),
        )
        .init();
    let args = Args::parse();
    let catalog = match &args.catalog {
        Some(path) => Catalog::from_file(path, args.image_registry.as_deref()),
        None => Catalog::builtin_with_registry(args.image_registry.as_deref()),
    }
    .context("release catalog")?;
    let mut config = kube::Config::infer().await.context("kubernetes client (in-cluster or KUBECONFIG)")?;
    skein_operator::kube::identify(&mut config);
    let client = kube::Client::try_from(config).context("kubernetes client")?;
    let metrics = Metrics::default();
    let health = Health::default();
    tokio::spawn({
        let (m, h) = (metrics.clone(), health.clone());
        async move {
            if let Err(e) = telemetry::serve(args.metrics_addr, m, h).await {
                error!(error = %e, addr = %args.metrics_addr, "metrics server failed");
                std::process::exit(1);
            }
        }
    });

    // One shutdown signal for everything: SIGTERM (kubelet) or Ctrl-C.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        skein_support::process::shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    health.set_ready(true);

    let elector = args.leader_elect.then(|| {
        let identity = args.identity.clone().unwrap_or_else(skein_support::process::replica_identity);
        Elector::new(
            client.clone(),
            LeaseConfig {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity,
                lease_duration: Duration::from_secs(args.lease_duration_seconds),
                renew_period: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
            },
        )
    });
    let ctx = Context::new(client, catalog, metrics.clone(), Scope::parse(&args.mesh_namespaces));
    let federation = controllers::federation::Settings {
        removal_grace: Duration::from_secs(args.remote_removal_grace_seconds),
        gateway_lease: Duration::from_secs(args.gateway_lease_seconds),
        east_west_shard_hosts: args.east_west_shard_hosts.max(1),
    };
    // Each pass of this loop is one term of leadership. Losing the lease (say, the apiserver was
    // unreachable for longer than the lease) stops the controller and makes this replica a
    // candidate again, within the same process: no restart needed to recover.
    loop {
        if let Some(e) = &elector {
            tokio::select! {
                res = e.acquire() => res.context("leader election")?,
                _ = stopped(stop_rx.clone()) => break,
            }
            metrics.set_leader(true);
        }
        let (term_tx, term_rx) = watch::channel(false);
        let shutdown = {
            let (stop, term) = (stop_rx.clone(), term_rx);
            async move {
                tokio::select! {
                    _ = stopped(stop) => {},
                    _ = stopped(term) => {},
                }
            }
        };
        let mut controller = std::pin::pin!(controllers::run(ctx.clone(), federation.clone(), shutdown));
        let Some(e) = &elector else {
            controller.await;
            break;
        };
        tokio::select! {
            _ = &mut controller => {
                e.release().await;
                break;
            }
            lost = e.hold() => {
                metrics.set_leader(false);
                warn!(error = %lost, "leadership lost; stopping the controller and standing again");
                let _ = term_tx.send(true);
                controller.await;
            }
        }
    }
    info!("stopped");
    Ok(())
}
