//! skiff-agent: the node agent (kubelet and kube-proxy in one process).
//!
//! It joins a cluster, registers its Node and keeps it alive with Lease and status heartbeats, runs
//! the pods bound to it (`pods`), and implements Services with eBPF socket hooks (`proxy`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use skiff_agent::network::{api_relay, dns, pod_net};
use skiff_agent::runtime::{cgroups, shim};
use skiff_agent::{image, node, pods, proxy, server, uninstall, upgrade};

/// Skiff's node agent.
#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs one container (started by the agent; not for direct use).
    #[command(hide = true)]
    Shim(shim::ShimArgs),
    /// Runs a command in a running container (started by the agent; not for direct use).
    #[command(hide = true)]
    Exec(shim::ExecArgs),
    /// Creates a pod's namespaces (started by the agent; not for direct use).
    #[command(hide = true)]
    Sandbox(pod_net::SandboxArgs),
    /// Holds a pod's new user namespace for the sandbox helper (not for direct use).
    #[command(hide = true)]
    UsernsHold,
    /// Manages the node's images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Checks that this node can run the agent (kernel, its configuration, cgroups, BPF
    /// filesystem, port, clock, another service proxy), one line each; exit status 1 on a failure.
    Preflight(skiff_agent::preflight::PreflightArgs),
    /// Prints the node's services, backends, pods, containers or images as a table.
    Inspect(skiff_agent::inspect::InspectArgs),
    /// Removes what the agent put on this node (stop the agent first): its pods, mounts, cgroups,
    /// eBPF pins and programs, nftables tables, routes, bridge and data directory.
    Uninstall(uninstall::UninstallArgs),
}

#[derive(Debug, clap::Subcommand)]
enum ImageCommand {
    /// Imports an OCI-layout or docker-save archive (works while the agent runs, or before).
    Import {
        /// The agent's data directory.
        #[arg(long, default_value = "/var/lib/skiff/agent")]
        data_dir: PathBuf,
        /// Name the image gets when the archive carries no usable reference.
        #[arg(long)]
        name: Option<String>,
        /// The archive (`.tar`, or gzip-compressed).
        file: PathBuf,
    },
    /// Pulls an image from its registry.
    Pull {
        /// The agent's data directory.
        #[arg(long, default_value = "/var/lib/skiff/agent")]
        data_dir: PathBuf,
        /// Registries spoken to over plain HTTP (loopback ones always are).
        #[arg(long)]
        insecure_registry: Vec<String>,
        /// The image reference.
        reference: String,
    },
    /// Lists the node's images.
    List {
        /// The agent's data directory.
        #[arg(long, default_value = "/var/lib/skiff/agent")]
        data_dir: PathBuf,
    },
}

fn image_command(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import { data_dir, name, file } => {
            let store = image::ImageStore::open(&data_dir)?;
            for (img, names) in image::import::import(&store, &file, name.as_deref())? {
                let shown = if names.is_empty() {
                    "(no name; pass --name)".to_string()
                } else {
                    names.join(", ")
                };
                println!("imported {} {shown}", img.digest);
            }
            Ok(())
        }
        ImageCommand::Pull {
            data_dir,
            insecure_registry,
            reference,
        } => {
            let store = image::ImageStore::open(&data_dir)?;
            let r = image::Reference::parse(&reference).map_err(anyhow::Error::msg)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let img = rt.block_on(async {
                image::pull::Puller::new(insecure_registry)?
                    .pull(&store, &r, None)
                    .await
            })?;
            println!("pulled {r} {}", img.digest);
            Ok(())
        }
        ImageCommand::List { data_dir } => {
            let store = image::ImageStore::open(&data_dir)?;
            for (name, digest) in store.names()? {
                if !name.starts_with('@') {
                    println!("{name}\t{digest}");
                }
            }
            Ok(())
        }
    }
}

/// The agent's own flags.
#[derive(Debug, clap::Args)]
struct Args {
    /// How log lines are written: `text` or `json` (the filter is `RUST_LOG`, changeable with
    /// `PUT /debug/flags/v` through the node proxy).
    #[arg(long, default_value = "text")]
    log_format: skiff_common::logging::Format,
    /// The control plane's API URL.
    #[arg(long, env = "SKIFF_SERVER", default_value = "https://127.0.0.1:6443")]
    server: String,
    /// The content of the control plane's `node-token` file.
    #[arg(long, env = "SKIFF_TOKEN")]
    token: Option<String>,
    /// A file holding the token (the control plane's `node-token` on a server, as k3s's
    /// `--token-file`): kept out of the process's arguments.
    #[arg(long, env = "SKIFF_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
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
    /// The address this node reports and is reached at (default: the first global IPv4 address).
    #[arg(long)]
    node_ip: Option<String>,
    /// Pod CIDR to use instead of the one the control plane assigns.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The pod bridge.
    #[arg(long, default_value = "skiff0")]
    bridge: String,
    /// Top-level cgroup of the node's pods.
    #[arg(long, default_value = "skiff")]
    cgroup_root: String,
    /// Registries spoken to over plain HTTP (loopback ones always are).
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// `pids.max` of each container (0: unlimited).
    #[arg(long, default_value_t = 4096)]
    pids_limit: i64,
    /// Directory of `Localhost` seccomp profiles: a pod's `localhostProfile` is a path under it
    /// (default: `DATA_DIR/seccomp`).
    #[arg(long)]
    seccomp_profile_root: Option<PathBuf>,
    /// Address of the agent's HTTPS port (logs for the API server).
    #[arg(long, default_value = "0.0.0.0")]
    address: String,
    /// The agent's HTTPS port.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Container log size that triggers rotation (`10Mi`, `500Ki`, or bytes).
    #[arg(long, default_value = "10Mi", value_parser = parse_size)]
    container_log_max_size: u64,
    /// Container log files kept per container, the current one included.
    #[arg(long, default_value_t = 5)]
    container_log_max_files: u32,
    /// Hard eviction thresholds, the kubelet's syntax (`memory.available<100Mi,nodefs.available<10%`;
    /// empty: none): while one is met the node reports pressure and evicts pods.
    #[arg(long, default_value = skiff_agent::pods::pressure::DEFAULT_THRESHOLDS, value_parser = skiff_agent::pods::pressure::parse_thresholds)]
    eviction_hard: skiff_agent::pods::pressure::Thresholds,
    /// Do not program egress masquerading or enable IPv4 forwarding (the host does it).
    #[arg(long)]
    no_masquerade: bool,
    /// Network namespace (a path such as `/run/netns/NAME`) that holds the node's network: bridge,
    /// pod veths, routes, nftables, probes and host-network pods. Default: the agent's own. For
    /// simulated nodes sharing one host.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// The cluster DNS address written into pods' resolv.conf (default: the tenth address of
    /// `--service-cidr`, where the control plane puts the `kube-dns` Service).
    #[arg(long)]
    cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Resolvers for names outside the cluster domain (default: the host's resolv.conf
    /// nameservers), `IP` or `IP:PORT`.
    #[arg(long, value_parser = parse_upstream)]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Do not answer cluster DNS on this node (pods then resolve like the host).
    #[arg(long)]
    no_dns: bool,
    /// Do not route other nodes' pod ranges (the host's network does it).
    #[arg(long)]
    no_node_routes: bool,
    /// How Services are implemented on this node.
    #[arg(long, value_enum, default_value = "auto")]
    proxy_mode: proxy::Mode,
    /// The cluster's service range (as the control plane's `--service-cidr`): traffic to it that
    /// matches no service is refused on the node (an unreachable route in every pod and the node
    /// with eBPF; a reject in the table with nftables).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Do not route the service range in the node's own namespace (unreachable with eBPF, to the
    /// pod bridge with nftables).
    #[arg(long)]
    no_service_route: bool,
    /// Where the eBPF maps and links are pinned (a BPF filesystem is mounted at /sys/fs/bpf if
    /// none is).
    #[arg(long, default_value = "/sys/fs/bpf/skiff")]
    bpf_dir: PathBuf,
    /// The cgroup2 directory the socket hooks attach to: `node` (the cgroup2 root: pods and host
    /// processes), `pods` (only this agent's pods), or a path.
    #[arg(long, default_value = "node")]
    proxy_cgroup: String,
    /// Interfaces where NodePort and external-IP connections arrive (eBPF mode; default: those
    /// holding the node's address).
    #[arg(long, value_delimiter = ',')]
    nodeport_interfaces: Vec<String>,
}

/// The cgroup2 directory named by `--proxy-cgroup`, created when it is the pods' own; `None` when
/// the host has no cgroup2 hierarchy.
fn proxy_cgroup(args: &Args) -> anyhow::Result<Option<PathBuf>> {
    let Some(root) = cgroups::unified_dir("") else {
        return Ok(None);
    };
    Ok(Some(match args.proxy_cgroup.as_str() {
        "node" => root,
        "pods" => {
            let dir = root.join(&args.cgroup_root);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir
        }
        path => PathBuf::from(path),
    }))
}

/// The nftables plane needs bridged pod traffic to pass the IP hooks (so that an answer from a pod
/// on the same bridge is translated back), as upstream kube-proxy does: `br_netfilter` with
/// `bridge-nf-call-iptables` on, in the node's network namespace.
fn ensure_bridge_netfilter() {
    let path = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !std::path::Path::new(path).exists() {
        // The module is not loaded (nothing loads it on demand): as k3s does, load it.
        match std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
        {
            Ok(s) if s.success() => tracing::info!("loaded br_netfilter"),
            Ok(s) => tracing::warn!(status = %s, "modprobe br_netfilter failed"),
            Err(e) => tracing::warn!(error = %e, "running modprobe br_netfilter"),
        }
    }
    let result = pod_net::in_node_netns(|| match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => std::fs::write(path, "1"),
        Err(e) => Err(e),
    });
    if let Err(e) = result.and_then(|r| r) {
        tracing::warn!(error = %e, "bridged traffic bypasses nftables (load br_netfilter): a pod reaching a service backed by a pod on the same node gets no answer");
    }
}

fn parse_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("invalid resolver address {s:?} (use IP or IP:PORT)"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    pods::spec::bytes(s)
        .filter(|b| *b >= 0)
        .map(|b| b as u64)
        .ok_or_else(|| format!("invalid size {s:?} (use 10Mi, 500Ki or bytes)"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

fn main() {
    skiff_agent::runtime::helper::init();
    let cli = Cli::parse();
    // The shim is single-threaded by design: it must branch off before any runtime starts.
    if let Some(Command::Shim(args)) = cli.command {
        std::process::exit(shim::main(args));
    }
    if let Some(Command::Exec(args)) = cli.command {
        std::process::exit(shim::exec_main(args));
    }
    if let Some(Command::UsernsHold) = cli.command {
        std::process::exit(skiff_agent::runtime::userns::hold_main());
    }
    if let Some(Command::Sandbox(args)) = cli.command {
        std::process::exit(pod_net::sandbox_main(args));
    }
    if let Some(Command::Uninstall(args)) = cli.command {
        std::process::exit(uninstall::main(args));
    }
    if let Some(Command::Preflight(args)) = cli.command {
        std::process::exit(skiff_agent::preflight::main(&args));
    }
    if let Some(Command::Inspect(args)) = cli.command {
        match skiff_agent::inspect::render(&args) {
            Ok(table) => print!("{table}"),
            Err(e) => {
                eprintln!("skiff-agent: {e:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Some(Command::Image(cmd)) = cli.command {
        if let Err(e) = image_command(cmd) {
            eprintln!("skiff-agent: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    skiff_agent::memory::configure();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff-agent: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // One line on failure, whatever RUST_BACKTRACE says.
    if let Err(e) = runtime.block_on(run(cli.agent)) {
        eprintln!("skiff-agent: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    skiff_common::logging::init(args.log_format, "");
    // Before any child of this image exists, and before SIGUSR2 could end the agent.
    upgrade::reap_inherited_children();
    tokio::spawn(upgrade::listen(
        args.data_dir.clone(),
        std::env::args_os().collect(),
    )?);
    skiff_agent::node::capacity::set_storage_dir(&args.data_dir);
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {}", file.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("--token or --token-file (or SKIFF_TOKEN) is required"),
    };
    let token = token.as_str();
    if let Some(ns) = &args.netns {
        pod_net::set_node_netns(ns)?;
    }
    let name = args.node_name.clone().unwrap_or_else(host_name);
    let creds = node::join::join(&args.server, token, &name, &args.data_dir).await?;
    // Once the node may join (a refused token stays a one-line error): what may not work here.
    let checks = skiff_agent::preflight::PreflightArgs {
        port: args.port,
        bpf_dir: args.bpf_dir.clone(),
    };
    for c in skiff_agent::preflight::run_at_start(&checks) {
        if c.verdict != skiff_agent::preflight::Verdict::Ok {
            tracing::warn!(check = c.name, "pre-flight: {}", c.detail);
        }
    }
    let api = node::client::ApiClient::with_identity(&args.server, &creds.ca, &creds.cert, &creds.key)?;
    node::join::check_version(&api).await?;
    let node_ip = match &args.node_ip {
        Some(ip) => ip.clone(),
        None => pod_net::default_ip().await.unwrap_or_else(|| "127.0.0.1".into()),
    };
    let listener = tokio::net::TcpListener::bind((args.address.as_str(), args.port))
        .await
        .with_context(|| format!("listening on {}:{}", args.address, args.port))?;
    let port = listener.local_addr()?.port();
    let tls = server::tls_config(&creds.ca, &creds.cert, &creds.key)?;
    tokio::spawn(server::serve(listener, tls, args.data_dir.clone()));
    upgrade::write_pid(&args.data_dir)?;
    skiff_agent::memory::start_trimming();
    skiff_agent::runtime::stats::start(args.data_dir.clone(), args.cgroup_root.clone(), name.clone());
    tokio::spawn(server::tunnel::run(api.clone(), args.data_dir.clone()));
    node::heartbeat::register(&api, &name, args.max_pods, &node_ip, port).await?;
    let feeds = node::stream::Feeds::default();
    tokio::spawn(node::stream::run(api.clone(), name.clone(), feeds.clone()));
    tokio::spawn(node::stream::follow_api_servers(
        api.clone(),
        feeds.slices.clone(),
    ));
    let node_ips: Vec<std::net::Ipv4Addr> = node_ip.parse().into_iter().collect();
    let host_alias = tokio::sync::watch::Sender::new(None);
    let mut cfg = pods::Config {
        data_dir: args.data_dir.clone(),
        node_name: name.clone(),
        node_ip,
        cgroup_root: args.cgroup_root.clone(),
        bridge: args.bridge.clone(),
        pod_cidr: args.pod_cidr.clone(),
        insecure_registries: args.insecure_registry.clone(),
        pids_limit: (args.pids_limit > 0).then_some(args.pids_limit),
        seccomp_profile_root: args
            .seccomp_profile_root
            .clone()
            .unwrap_or_else(|| args.data_dir.join("seccomp")),
        masquerade: !args.no_masquerade,
        log_max_size: args.container_log_max_size,
        log_max_files: args.container_log_max_files,
        eviction_hard: args.eviction_hard.0.clone(),
        service_cidr: Some(args.service_cidr.clone()),
        node_service_route: None,
        node_routes: !args.no_node_routes,
        dns: if args.no_dns {
            None
        } else {
            let (base, _) = pod_net::parse_cidr(&args.service_cidr)?;
            Some(pods::Dns {
                address: args
                    .cluster_dns
                    .unwrap_or_else(|| std::net::Ipv4Addr::from(u32::from(base) + 10)),
                domain: args.cluster_domain.trim_matches('.').to_lowercase(),
                upstreams: if args.dns_upstream.is_empty() {
                    dns::host_upstreams()
                } else {
                    args.dns_upstream.clone()
                },
            })
        },
        api_relay: api_relay::loopback_server(&args.server),
        host_alias: host_alias.clone(),
        feeds: feeds.clone(),
    };
    tracing::info!(cgroups = cgroups::mode(), "container cgroups");
    let proxy_cfg = proxy::Config {
        mode: args.proxy_mode,
        pin_dir: args.bpf_dir.clone(),
        cgroup: proxy_cgroup(&args)?,
        service_cidr: args.service_cidr.clone(),
        node_ips: node_ips.clone(),
        interfaces: args.nodeport_interfaces.clone(),
    };
    let plane = proxy::start(&proxy_cfg).await?;
    let nftables = plane.as_ref().map(proxy::Plane::mode) == Some(proxy::Mode::Nftables);
    // Traffic to the service range that no service matches must fail on the node: eBPF rewrites
    // sockets before routing, so an unreachable route catches the rest; nftables translates after
    // routing, so the range is routed to the bridge and its table rejects the rest instead. Pods
    // send the range to the node like any address (as with kube-proxy, a UDP `connect()` to a
    // service address on a port no service has succeeds: clients find their own address that
    // way); only when the node has no route for it do they get an unreachable route of their own.
    if nftables {
        ensure_bridge_netfilter();
    }
    if nftables || !args.no_service_route {
        cfg.service_cidr = None;
    }
    if !args.no_service_route {
        cfg.node_service_route = Some(if nftables {
            pods::ServiceRoute::ViaBridge(args.service_cidr.clone())
        } else {
            pods::ServiceRoute::Unreachable(args.service_cidr.clone())
        });
    }
    let mut proxy_task = match plane {
        Some(plane) => {
            tracing::info!(mode = ?plane.mode(), "service proxy");
            tokio::spawn(proxy::run(
                plane,
                name.clone(),
                node_ips,
                feeds.clone(),
                host_alias.subscribe(),
                args.data_dir.join(proxy::RECORD),
            ))
        }
        None => tokio::spawn(std::future::pending()),
    };
    let pods_api = api.clone();
    let ca = creds.ca.clone();
    let mut pods_task = tokio::spawn(pods::run(cfg, pods_api, ca));
    tracing::info!(node = %name, server = %args.server, "registered");
    let lease_every = Duration::from_secs(args.lease_interval_seconds.max(1));
    let status_every = Duration::from_secs(args.status_interval_seconds.max(1));
    let mut lease = tokio::time::interval(lease_every);
    let mut status = tokio::time::interval(status_every);
    let images = image::ImageStore::open(&args.data_dir)?;
    loop {
        tokio::select! {
            _ = lease.tick() => {
                if let Err(e) = node::heartbeat::renew_lease(&api, &name, lease_every * 4).await {
                    tracing::warn!(error = %e, "lease renewal failed");
                }
            }
            _ = status.tick() => {
                let images = images.node_images().unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "listing images for the node status failed");
                        serde_json::Value::Array(Vec::new())
                    });
                if let Err(e) = node::heartbeat::post_status(&api, &name, images).await {
                    tracing::warn!(error = %e, "status update failed");
                }
            }
            done = &mut proxy_task => {
                match done {
                    Ok(Ok(())) => proxy_task = tokio::spawn(std::future::pending()),
                    Ok(Err(e)) => return Err(e.context("service proxy")),
                    Err(e) => anyhow::bail!("the service proxy stopped: {e}"),
                }
            }
            done = &mut pods_task => {
                return match done {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow::anyhow!("the pod manager stopped: {e}")),
                };
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted");
                return Ok(());
            }
        }
    }
}
