//! skiff-agent: the node agent (kubelet and kube-proxy in one process).
//!
//! This version joins a cluster, registers its Node and keeps it alive with Lease and status
//! heartbeats. Running pods and programming Services arrive with the next slices.

mod node;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Skiff's node agent.
#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version)]
struct Args {
    /// The control plane's API URL.
    #[arg(long, env = "SKIFF_SERVER", default_value = "https://127.0.0.1:6443")]
    server: String,
    /// The content of the control plane's `node-token` file.
    #[arg(long, env = "SKIFF_TOKEN")]
    token: String,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Directory for the node's credentials and state.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    data_dir: PathBuf,
    /// How often the node's Lease is renewed.
    #[arg(long, default_value_t = 10)]
    lease_interval_seconds: u64,
    /// How often the node's conditions are re-posted.
    #[arg(long, default_value_t = 40)]
    status_interval_seconds: u64,
    /// Pods this node accepts.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff-agent: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // One line on failure, whatever RUST_BACKTRACE says.
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("skiff-agent: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let name = args.node_name.clone().unwrap_or_else(host_name);
    let creds = node::join::join(&args.server, &args.token, &name, &args.data_dir).await?;
    let api = node::client::ApiClient::with_identity(&args.server, &creds.ca, &creds.cert, &creds.key)?;
    node::heartbeat::register(&api, &name, args.max_pods).await?;
    tracing::info!(node = %name, server = %args.server, "registered");
    let lease_every = Duration::from_secs(args.lease_interval_seconds.max(1));
    let status_every = Duration::from_secs(args.status_interval_seconds.max(1));
    let mut lease = tokio::time::interval(lease_every);
    let mut status = tokio::time::interval(status_every);
    loop {
        tokio::select! {
            _ = lease.tick() => {
                if let Err(e) = node::heartbeat::renew_lease(&api, &name, lease_every * 4).await {
                    tracing::warn!(error = %e, "lease renewal failed");
                }
            }
            _ = status.tick() => {
                if let Err(e) = node::heartbeat::post_status(&api, &name).await {
                    tracing::warn!(error = %e, "status update failed");
                }
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted");
                return Ok(());
            }
        }
    }
}
