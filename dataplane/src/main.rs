//! `skein-proxy`: Skein's data plane proxy.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skein_proxy::{
    config_file, discovery,
    http::{Limits, Proxy, Timeouts},
    limits::ConnectionLimits,
    listener,
    metrics::Metrics,
    store::Store,
};
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
    /// Serve the configuration in a file (YAML or JSON, reloaded on change or SIGHUP), or the
    /// one the control plane pushes (`--discovery-address`).
    Run {
        /// Proxy configuration file.
        #[arg(long, required_unless_present = "address", conflicts_with = "address")]
        config: Option<PathBuf>,
        #[command(flatten)]
        discovery: Box<discovery::DiscoveryArgs>,
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
        /// How long the listeners keep accepting after SIGTERM (readiness failing, every
        /// response closing its connection) before they close: the time endpoints need to
        /// drop a terminating pod, so clients are not refused meanwhile (Istio's
        /// `terminationDrainDuration`; the injector and the gateways set 5s).
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        termination_drain_duration: Duration,
        /// Worker threads (Istio's `concurrency`; a sidecar rarely needs more than 2). 0: one
        /// per CPU. Downstream connections are also spread over this many Envoy-style workers,
        /// each of which may open one upstream connection even at `maxConnections`, as Envoy's
        /// per-worker pools do.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        #[command(flatten)]
        limits: LimitArgs,
        /// Serve DNS here (UDP and TCP; Istio's DNS proxying, `127.0.0.1:15053` in a pod whose
        /// port 53 is captured): mesh hosts are answered from the name table, the rest is
        /// forwarded to the nameservers of `--dns-resolv-conf`. Unset: no DNS proxy.
        #[arg(long)]
        dns_addr: Option<SocketAddr>,
        /// Where the nameservers and search suffixes for `--dns-addr` come from.
        #[arg(long, default_value = "/etc/resolv.conf")]
        dns_resolv_conf: PathBuf,
    },
    /// Send one request to the proxy's admin endpoint and print the answer, like Istio's
    /// `pilot-agent request GET stats` (`skein-proxy request GET clusters`). Exits non-zero
    /// unless the answer is 2xx.
    Request {
        /// HTTP method (`GET`, `POST`).
        method: String,
        /// Admin path, with or without its leading `/` (`stats`, `stats?filter=pending`,
        /// `clusters`, `config_dump`).
        path: String,
        /// The proxy's admin address.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin_addr: SocketAddr,
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

/// What the proxy may hold; beyond it new work is refused cleanly (a connection closed at
/// accept, a request no longer retried), never by running out of memory or descriptors.
#[derive(clap::Args, Debug)]
struct LimitArgs {
    /// Downstream connections open at once, all listeners together. 0: half the descriptor
    /// limit (raised to its hard limit at start), less a reserve for the proxy itself.
    #[arg(long, env = "SKEIN_MAX_CONNECTIONS", default_value_t = 0)]
    max_connections: usize,
    /// Downstream connections open at once on one listener. 0: as `--max-connections`.
    #[arg(long, env = "SKEIN_MAX_CONNECTIONS_PER_LISTENER", default_value_t = 0)]
    max_connections_per_listener: usize,
    /// Bytes of request bodies kept for retries and mirrors, all requests together.
    #[arg(long, env = "SKEIN_REQUEST_BUFFER_BUDGET", default_value_t = skein_proxy::http::body::DEFAULT_BUFFER_BUDGET)]
    request_buffer_budget: usize,
    /// A downstream connection with no request in flight for this long is closed (Envoy's
    /// `idle_timeout`).
    #[arg(long, env = "SKEIN_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// A request that moves no body data either way for this long is ended: 408, 504, or a
    /// reset once its response has started (Envoy's `stream_idle_timeout`).
    #[arg(long, env = "SKEIN_STREAM_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    stream_idle_timeout: Duration,
}

impl LimitArgs {
    /// The limits, for a proxy of `workers` Envoy workers.
    fn limits(&self, workers: usize) -> Limits {
        let derived = ConnectionLimits::from_fd_limit(skein_proxy::limits::raise_fd_limit());
        let connections = match (self.max_connections, self.max_connections_per_listener) {
            (0, 0) => derived,
            (0, per) => ConnectionLimits::new(derived.total(), per),
            (total, 0) => ConnectionLimits::new(total, total),
            (total, per) => ConnectionLimits::new(total, per),
        };
        let timeouts =
            Timeouts { idle: self.idle_timeout, stream_idle: self.stream_idle_timeout, ..Timeouts::default() };
        Limits { connections, buffer_budget: self.request_buffer_budget, timeouts, workers }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    skein_proxy::parse_duration_arg(s)
}

/// Where the configuration comes from.
enum Source {
    File(PathBuf),
    ControlPlane(discovery::DiscoveryArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colors only on a terminal: pod logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Args::parse().command {
        Command::Request { method, path, admin_addr } => {
            let (status, body) = skein_proxy::admin_client::request(admin_addr, &method, &path)?;
            std::io::Write::write_all(&mut std::io::stdout(), &body)?;
            anyhow::ensure!((200..300).contains(&status), "{method} {path}: HTTP {status}");
            Ok(())
        }
        Command::InitIptables { rules, dry_run } => {
            if dry_run {
                rules.validate().map_err(anyhow::Error::msg)?;
                print!("{}", rules.render(&rules.nameservers().map_err(anyhow::Error::msg)?));
            } else {
                rules.apply().map_err(anyhow::Error::msg)?;
                info!("capture rules installed");
            }
            Ok(())
        }
        Command::Run {
            config,
            discovery,
            admin_addr,
            status_addr,
            metrics_addr,
            drain_timeout,
            termination_drain_duration,
            concurrency,
            limits,
            dns_addr,
            dns_resolv_conf,
        } => {
            // Read before anything starts: with port 53 captured, a proxy that cannot forward
            // would leave the pod without DNS, so it refuses to start and says why.
            let dns = dns_addr
                .map(|addr| {
                    skein_proxy::dns::server::Upstream::read(&dns_resolv_conf)
                        .map(|up| (addr, up))
                        .map_err(|e| anyhow::anyhow!("--dns-resolv-conf: {e}"))
                })
                .transpose()?;
            // SIGHUP ends a process until it has a handler: held pending until `run` has one.
            hold_sighup(true)?;
            let source = match config {
                Some(path) => Source::File(path),
                None => Source::ControlPlane(*discovery),
            };
            // One worker runs everything on the current thread: no cross-thread wakeups, which
            // is what a lightly loaded sidecar wants.
            let mut builder = match concurrency {
                1 => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            };
            if concurrency > 1 {
                builder.worker_threads(concurrency);
            }
            // As Envoy's: one worker per CPU when 0.
            let workers = match concurrency {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            };
            let limits = limits.limits(workers);
            builder.enable_all().build()?.block_on(run(
                source,
                [admin_addr, status_addr, metrics_addr],
                (termination_drain_duration, drain_timeout),
                limits,
                dns,
            ))
        }
    }
}

async fn run(
    source: Source,
    admin: [SocketAddr; 3],
    (termination_drain, drain_timeout): (Duration, Duration),
    limits: Limits,
    dns: Option<(SocketAddr, skein_proxy::dns::server::Upstream)>,
) -> anyhow::Result<()> {
    // First of all: from here on a SIGHUP reloads instead of ending the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // This future runs on the thread that blocked SIGHUP (`block_on` polls it there), so a
    // SIGHUP that came while the proxy started is delivered now, to the handler.
    hold_sighup(false)?;
    let store = match &source {
        Source::File(config) => {
            let initial = config_file::read(config)?;
            Store::new(initial).with_context(|| format!("{}: invalid config", config.display()))?
        }
        // Not ready, and no listeners, until the control plane's first config is applied.
        Source::ControlPlane(_) => Store::unconfigured(),
    };
    let metrics = Metrics::default();
    tokio::spawn(return_freed_memory());
    let proxy = Proxy::with_limits(store.clone(), metrics.clone(), limits);
    let drain = proxy.drain().clone();

    let roles =
        [listener::admin::AdminRole::Admin, listener::admin::AdminRole::Status, listener::admin::AdminRole::Metrics];
    for (addr, role) in admin.into_iter().zip(roles) {
        let sock = TcpListener::bind(addr).await.with_context(|| format!("bind admin endpoint {addr}"))?;
        tokio::spawn(listener::admin::serve_admin(sock, role, store.clone(), metrics.clone(), drain.clone()));
    }
    if let Some((addr, upstream)) = dns {
        // Bound here so a taken port fails the start, not a background task.
        let server = skein_proxy::dns::server::Server::bind(addr, upstream)
            .await
            .with_context(|| format!("bind DNS proxy {addr}"))?;
        info!(%addr, "DNS proxy serving");
        tokio::spawn(server.serve(store.clone()));
    }
    let mut listeners = listener::Listeners::new(proxy);
    let mut unbound = report_unbound(listeners.sync(&store.current().config.listeners).await);
    let mut retry_in = BIND_RETRY_MIN;
    let mut feed = match source {
        Source::File(config) => tokio::spawn(config_file::watch_with(
            config,
            store.clone(),
            metrics.clone(),
            Duration::from_secs(1),
            Some(hup),
        )),
        Source::ControlPlane(args) => tokio::spawn({
            let (store, metrics) = (store.clone(), metrics.clone());
            async move {
                if let Err(e) = discovery::run(args, store, metrics).await {
                    error!(error = %e, "control plane connection cannot start");
                }
            }
        }),
    };

    // Listener set follows the config (less those closed by `POST /drain_listeners`) until
    // SIGTERM or Ctrl-C.
    let mut changes = store.subscribe();
    let mut stopped = drain.stopped_listeners();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() { break; }
                let wanted = changes.borrow_and_update().config.listeners.clone();
                let wanted = listener::serving(&wanted, *stopped.borrow());
                unbound = report_unbound(listeners.sync(&wanted).await);
                retry_in = BIND_RETRY_MIN;
            }
            Ok(()) = stopped.changed() => {
                let which = *stopped.borrow_and_update();
                info!(?which, "listeners closed on request (drain_listeners)");
                let wanted = listener::serving(&store.current().config.listeners, which);
                unbound = report_unbound(listeners.sync(&wanted).await);
                retry_in = BIND_RETRY_MIN;
            }
            // A port still held by someone else (a previous process on its way out, a client
            // socket that happened to take it) is tried again, backing off, rather than left
            // closed until the next config change.
            _ = tokio::time::sleep(retry_in), if unbound => {
                let wanted = listener::serving(&store.current().config.listeners, *stopped.borrow());
                unbound = report_unbound(listeners.sync(&wanted).await);
                retry_in = (retry_in * 2).min(BIND_RETRY_MAX);
            }
            _ = &mut feed => anyhow::bail!("configuration source stopped"),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Drain: readiness fails from now on; the listeners keep serving for the termination
    // drain (while endpoints still name this pod), then close, and every open connection
    // finishes what it is doing (HTTP/1.1 closes after the current response, HTTP/2 GOAWAY).
    if !termination_drain.is_zero() {
        drain.stop_ready();
        info!(period = ?termination_drain, "termination drain: still serving");
        tokio::time::sleep(termination_drain).await;
    }
    listeners.close().await;
    drain.start();
    info!(open = drain.active(), timeout = ?drain_timeout, "draining");
    if tokio::time::timeout(drain_timeout, drain.idle()).await.is_err() {
        warn!(open = drain.active(), "drain timeout: closing remaining connections");
    }
    info!("stopped");
    Ok(())
}

/// Blocks (`true`) or unblocks SIGHUP in this thread; threads started meanwhile (the runtime's
/// workers) inherit the block and keep it, so once unblocked here a SIGHUP is delivered to this
/// thread. Blocked, a SIGHUP stays pending instead of taking its default action, which ends
/// the process: without this, a deploy tool that signals every process on a config change
/// kills a proxy that is still starting (reading its config, building its runtime).
fn hold_sighup(hold: bool) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let how = if hold { SigmaskHow::SIG_BLOCK } else { SigmaskHow::SIG_UNBLOCK };
    pthread_sigmask(how, Some(&SigSet::from(Signal::SIGHUP)), None).context("SIGHUP mask")
}

/// First wait before a listener that could not bind is tried again; it doubles per failure.
const BIND_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two tries to bind a listener.
const BIND_RETRY_MAX: Duration = Duration::from_secs(30);

/// Logs each listener that could not be opened; whether some are still to be bound.
fn report_unbound(errors: Vec<String>) -> bool {
    for e in &errors {
        error!(error = %e, "listener not opened");
    }
    !errors.is_empty()
}

/// How often freed heap memory is handed back to the system.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Hands freed heap memory back to the system every [`TRIM_INTERVAL`]. glibc's malloc keeps what
/// a burst freed in its per-thread arenas for reuse: the attack suite saw 133 MiB of a 146 MiB
/// peak still resident after the connections were gone, on a proxy that idles at 8 MiB.
/// (jemalloc, which purges in the background, was tried: its resident peak under the same load
/// was a fifth higher, because glibc's large blocks are mmapped fresh and only touched pages
/// count.) A trim walks the free lists of each arena under that arena's lock: microseconds for a
/// sidecar's heap, once every ten seconds, on a blocking thread so no worker waits for it.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let _ = tokio::task::spawn_blocking(trim_heap).await;
    }
}

/// `malloc_trim(0)`: releases free memory at the top of the main heap and whole free pages
/// inside every arena (glibc ≥ 2.8).
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim takes a plain integer (the padding to keep at the top of the heap) and
    // no pointers; it touches only the allocator's own state, under each arena's mutex, so it is
    // sound to call from any thread at any time, concurrently with allocations. Its return value
    // only says whether anything was released.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
