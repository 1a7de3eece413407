//! `skein-proxy`: Skein's data plane proxy.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skein_proxy::{config_file, http::Proxy, metrics::Metrics, server, store::Store};
use tokio::net::TcpListener;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(name = "skein-proxy", version, about = "Skein data plane proxy")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the configuration in a file (YAML or JSON), reloading it on change or SIGHUP.
    Run {
        /// Proxy configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Admin endpoints (`/config_dump`).
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin_addr: SocketAddr,
        /// Readiness (`/healthz/ready`).
        #[arg(long, default_value = "0.0.0.0:15021")]
        status_addr: SocketAddr,
        /// Prometheus metrics (`/stats/prometheus`).
        #[arg(long, default_value = "0.0.0.0:15090")]
        metrics_addr: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let Command::Run { config, admin_addr, status_addr, metrics_addr } = Args::parse().command;
    let initial = config_file::read(&config)?;
    let store = Store::new(initial).with_context(|| format!("{}: invalid config", config.display()))?;
    let metrics = Metrics::default();
    let proxy = Proxy::new(store.clone(), metrics.clone());

    for (addr, role) in [
        (admin_addr, server::AdminRole::Admin),
        (status_addr, server::AdminRole::Status),
        (metrics_addr, server::AdminRole::Metrics),
    ] {
        let sock = TcpListener::bind(addr).await.with_context(|| format!("bind admin endpoint {addr}"))?;
        tokio::spawn(server::serve_admin(sock, role, store.clone(), metrics.clone()));
    }
    let mut listeners = server::Listeners::new(proxy, store.clone(), metrics.clone());
    for e in listeners.sync(&store.current().config.listeners).await {
        error!(error = %e, "listener not opened");
    }
    tokio::spawn(config_file::watch(config, store.clone(), metrics.clone(), Duration::from_secs(1)));

    // Listener set follows the config; stop on SIGTERM or Ctrl-C.
    let mut changes = store.subscribe();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() { break; }
                let wanted = changes.borrow_and_update().config.listeners.clone();
                for e in listeners.sync(&wanted).await {
                    error!(error = %e, "listener not opened");
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!("stopping: listeners closed");
    drop(listeners);
    Ok(())
}
