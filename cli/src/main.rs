//! `skeinctl`: what `istioctl` does for an Istio user, for a Skein mesh. `proxy-status` and
//! `proxy-config` read the control planes' debug endpoints through the apiserver; `analyze`
//! runs the control plane's own acceptance over the cluster's resources and files.

mod analyze;
mod proxy_config;
mod remote_secret;
mod source;
mod status;
mod table;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::source::ControlPlanes;

#[derive(Parser, Debug)]
#[command(name = "skeinctl", version, about = "Skein's command line (istioctl's habits, for a Skein mesh)")]
struct Args {
    /// Kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The mesh's namespace, where its control planes run.
    #[arg(short = 'i', long, global = true, default_value = "istio-system")]
    istio_namespace: String,
    /// Ask this control plane's monitoring address (`host:15014`) instead of the cluster's
    /// control-plane pods (a port-forward, or a control plane run by hand).
    #[arg(long, global = true)]
    controlplane: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every proxy connected to the control planes, and whether it runs the config it was
    /// last sent (SYNCED, STALE, NACKED, NOT SENT). Exits 1 unless all are SYNCED.
    ProxyStatus {
        /// Only this proxy (`<pod>.<namespace>`).
        pod: Option<String>,
    },
    /// The config a proxy runs, as tables or JSON.
    ProxyConfig {
        /// Which part.
        #[arg(value_enum)]
        section: proxy_config::Section,
        /// The proxy's pod, `<pod>` or `<pod>.<namespace>`. Not with `--file`.
        pod: Option<String>,
        /// The pod's namespace when `pod` has none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "short")]
        output: proxy_config::Format,
        /// Read a config dump saved from the proxy (`skein-proxy request GET config_dump`).
        #[arg(long, conflicts_with = "pod")]
        file: Option<PathBuf>,
    },
    /// Istio resources checked as the control plane accepts them: the cluster's, with FILES laid
    /// over them. Exits 79 when an error is found (as istioctl does).
    Analyze {
        /// Files or directories of Istio YAML (`-`: standard input).
        files: Vec<String>,
        /// Namespace to analyze, and of file resources that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Read the cluster's resources (false: the files alone).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        use_kube: bool,
        /// The mesh's cluster domain.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
    },
    /// Prints a Secret that lets another cluster's operator read this one (apply it in the
    /// other cluster): a kubeconfig with the token of this mesh's read-only reader
    /// ServiceAccount, as `istioctl create-remote-secret` does.
    CreateRemoteSecret {
        /// This cluster's name in the mesh (default: the MeshControlPlane's
        /// `spec.multiCluster.clusterName`).
        #[arg(long)]
        name: Option<String>,
        /// Apiserver address the other cluster reaches this one at (default: the kubeconfig's).
        #[arg(long)]
        server: Option<String>,
        /// Namespace of the Secret in the other cluster (default: this mesh's namespace).
        #[arg(long)]
        secret_namespace: Option<String>,
        /// Issue a new reader token and revoke the previous ones (their token Secrets are
        /// deleted once the new token exists): the peer holding the old Secret gets
        /// Unauthorized until the printed Secret is applied there.
        #[arg(long)]
        rotate: bool,
    },
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(config(kubeconfig).await?)?)
}

async fn config(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => {
            kube::Config::infer().await.context("no kubeconfig found (--kubeconfig, $KUBECONFIG, ~/.kube/config)")?
        }
    })
}

async fn control_planes(args: &Args) -> anyhow::Result<ControlPlanes> {
    Ok(match &args.controlplane {
        Some(addr) => ControlPlanes::Address(addr.clone()),
        None => ControlPlanes::Pods {
            client: client(args.kubeconfig.as_ref()).await?,
            namespace: args.istio_namespace.clone(),
        },
    })
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Command::ProxyStatus { pod } => {
            let answers = control_planes(&args).await?.get("/debug/syncz").await?;
            let mut bodies = Vec::new();
            for (cp, answer) in answers {
                match answer {
                    Ok((200, body)) => bodies.push((cp, body)),
                    Ok((status, body)) => anyhow::bail!("{cp}: /debug/syncz: HTTP {status}: {}", body.trim()),
                    Err(e) => anyhow::bail!("{cp}: {e}"),
                }
            }
            let (out, synced) = status::render(&bodies, pod.as_deref()).map_err(anyhow::Error::msg)?;
            print!("{out}");
            Ok(if synced { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::ProxyConfig { section, pod, namespace, output, file } => {
            let dump = match (file, pod) {
                (Some(path), _) => std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
                (None, Some(pod)) => {
                    let id = if pod.contains('.') { pod.clone() } else { format!("{pod}.{namespace}") };
                    let answers = control_planes(&args).await?.get(&format!("/debug/config_dump?proxyID={id}")).await?;
                    let mut why = Vec::new();
                    let mut found = None;
                    for (cp, answer) in answers {
                        match answer {
                            Ok((200, body)) => found = Some(body),
                            Ok((_, body)) => why.push(format!("{cp}: {}", body.trim())),
                            Err(e) => why.push(format!("{cp}: {e}")),
                        }
                    }
                    found.ok_or_else(|| anyhow::anyhow!("no config for {id}: {}", why.join("; ")))?
                }
                (None, None) => anyhow::bail!("name the proxy's pod, or give --file"),
            };
            let cfg = proxy_config::parse(&dump).map_err(anyhow::Error::msg)?;
            print!("{}", proxy_config::render(&cfg, *section, *output));
            Ok(ExitCode::SUCCESS)
        }
        Command::Analyze { files, namespace, all_namespaces, use_kube, cluster_domain } => {
            let scope_ns = (!all_namespaces).then_some(namespace.as_str());
            // Every namespace is read (a DestinationRule in another namespace may define the
            // subset a VirtualService here names); only the scope's messages are shown.
            let (mut resources, mut filters) = if *use_kube {
                analyze::from_cluster(&client(args.kubeconfig.as_ref()).await?).await?
            } else {
                anyhow::ensure!(!files.is_empty(), "--use-kube=false needs files to analyze");
                Default::default()
            };
            analyze::overlay(files, namespace, &mut resources, &mut filters)?;
            let mut messages = skein_controlplane::analyze::analyze(&resources, &filters, cluster_domain);
            messages.retain(|m| scope_ns.is_none_or(|ns| m.namespace == ns));
            let scope = match scope_ns {
                Some(ns) => format!("namespace: {ns}"),
                None => "all namespaces".into(),
            };
            let (text, errors) = analyze::report(&messages, &scope);
            print!("{text}");
            Ok(if errors { ExitCode::from(analyze::EXIT_ISSUES as u8) } else { ExitCode::SUCCESS })
        }
        Command::CreateRemoteSecret { name, server, secret_namespace, rotate } => {
            let config = config(args.kubeconfig.as_ref()).await?;
            let url = config.cluster_url.to_string();
            let client = kube::Client::try_from(config)?;
            let opts = remote_secret::Options {
                name: name.clone(),
                server: server.clone(),
                secret_namespace: secret_namespace.clone(),
                rotate: *rotate,
            };
            print!("{}", remote_secret::create(&client, url.trim_end_matches('/'), &opts).await?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
