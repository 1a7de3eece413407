//! `skein-proxy`: Skein's data plane proxy.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skein_proxy::{config_file, http::Proxy, metrics::Metrics, server, store::Store};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

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
        /// How long in-flight requests may finish after SIGTERM before the proxy exits.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        drain_timeout: Duration,
        /// Worker threads (Istio's `concurrency`; a sidecar rarely needs more than 2). 0: one
        /// per CPU.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Install the iptables rules that redirect the pod's TCP to the capture listeners
    /// (run once per pod, as root, before the workload starts).
    InitIptables {
        #[command(flatten)]
        rules: skein_proxy::iptables::CaptureRules,
        /// Print the rules instead of installing them.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    skein_api::proxy::duration::parse(s)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Args::parse().command {
        Command::InitIptables { rules, dry_run } => {
            if dry_run {
                rules.validate().map_err(anyhow::Error::msg)?;
                print!("{}", rules.render());
            } else {
                rules.apply().map_err(anyhow::Error::msg)?;
                info!("capture rules installed");
            }
            Ok(())
        }
        Command::Run { config, admin_addr, status_addr, metrics_addr, drain_timeout, concurrency } => {
            // One worker runs everything on the current thread: no cross-thread wakeups, which
            // is what a lightly loaded sidecar wants.
            let mut builder = match concurrency {
                1 => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            };
            if concurrency > 1 {
                builder.worker_threads(concurrency);
            }
            builder.enable_all().build()?.block_on(run(config, [admin_addr, status_addr, metrics_addr], drain_timeout))
        }
    }
}

async fn run(config: PathBuf, admin: [SocketAddr; 3], drain_timeout: Duration) -> anyhow::Result<()> {
    let initial = config_file::read(&config)?;
    let store = Store::new(initial).with_context(|| format!("{}: invalid config", config.display()))?;
    let metrics = Metrics::default();
    let proxy = Proxy::new(store.clone(), metrics.clone());
    let drain = proxy.drain().clone();

    let roles = [server::AdminRole::Admin, server::AdminRole::Status, server::AdminRole::Metrics];
    for (addr, role) in admin.into_iter().zip(roles) {
        let sock = TcpListener::bind(addr).await.with_context(|| format!("bind admin endpoint {addr}"))?;
        tokio::spawn(server::serve_admin(sock, role, store.clone(), metrics.clone(), drain.clone()));
    }
    let mut listeners = server::Listeners::new(proxy, store.clone(), metrics.clone());
    for e in listeners.sync(&store.current().config.listeners).await {
        error!(error = %e, "listener not opened");
    }
    tokio::spawn(config_file::watch(config, store.clone(), metrics.clone(), Duration::from_secs(1)));

    // Listener set follows the config until SIGTERM or Ctrl-C.
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
    // Drain: readiness fails from now on, no new connections are accepted, open ones finish
    // what they are doing.
    drain.start();
    drop(listeners);
    info!(open = drain.active(), timeout = ?drain_timeout, "draining");
    if tokio::time::timeout(drain_timeout, drain.idle()).await.is_err() {
        warn!(open = drain.active(), "drain timeout: closing remaining connections");
    }
    info!("stopped");
    Ok(())
}
