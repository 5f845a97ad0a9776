//! skiff-control: the control plane (API server, store, and, as they land, scheduler and
//! controllers) in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use skiff_control::api::{self, App};
use skiff_control::objects::Objects;
use skiff_control::objects::service::Cidr;
use skiff_control::pki::{Pki, local_url};
use skiff_control::store::{Encryption, Store, StoreConfig};

/// mimalloc rather than glibc's malloc: the API's requests allocate on one thread and free on
/// another, where glibc's arenas took 18% of this process's CPU at 64 clients creating objects
/// (their locks and consolidation); creates/s rose by a quarter (docs/benchmarks.md). Without
/// transparent huge pages (`no_thp`), which put 18 MiB more in the idle footprint.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its index in `mi_option_e` of the mimalloc v3 that the pinned
/// `libmimalloc-sys` bundles.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Has mimalloc give freed pages back to the kernel 10 ms after they empty (its default is 1 s,
/// and 10 s for its arenas), so the footprint follows the load down as glibc's did. An operator's
/// `MIMALLOC_PURGE_DELAY` wins.
#[expect(unsafe_code, reason = "mimalloc's options have no safe wrapper")]
fn purge_freed_memory_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set bounds-checks the index and stores the number in mimalloc's own
        // option table; it touches no Rust memory and may be called from any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
    }
}

/// Skiff's control plane.
#[derive(Debug, Parser)]
#[command(name = "skiff-control", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// How log lines are written: `text` or `json` (the filter is `RUST_LOG`, changeable with
    /// `PUT /debug/flags/v`).
    #[arg(long, default_value = "text")]
    log_format: skiff_common::logging::Format,
    /// Directory for the store, the CA and the bootstrap files.
    #[arg(long, default_value = "/var/lib/skiff/control", env = "SKIFF_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the Kubernetes API (HTTPS).
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// The address pods and other nodes reach this API server at, published as the endpoint of the
    /// `default/kubernetes` Service (default: the `--listen` address, or this host's address on its
    /// default route when that is unspecified).
    #[arg(long)]
    advertise_address: Option<std::net::Ipv4Addr>,
    /// Address of the Raft transport between store members (gRPC).
    #[arg(long, default_value = "127.0.0.1:6444")]
    raft_listen: SocketAddr,
    /// This store member's id (default: the one it was given when it joined, or 1 for the
    /// member that founds the cluster).
    #[arg(long)]
    node_id: Option<u64>,
    /// Join the store of an existing control plane as a new member: its API URL (any member's).
    /// The new member gets the cluster's CAs, tokens and encryption configuration from it, is
    /// added as a learner, and becomes a voter once it has caught up. Ignored once joined.
    #[arg(long)]
    join: Option<String>,
    /// The server token for `--join`: the content of DATA_DIR/server-token on the first member
    /// (the node token does not add members).
    #[arg(long, env = "SKIFF_SERVER_TOKEN")]
    token: Option<String>,
    /// `--token` read from a file (kept out of the process list).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// This member's name in `skiff-control member list` (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// The Raft address other members dial (default: `--raft-listen`, or this host's advertised
    /// address with its port when that is unspecified).
    #[arg(long)]
    raft_advertise: Option<SocketAddr>,
    /// Serve etcd's v3 API (for `etcdctl`) on this address: TLS, client certificates of the
    /// cluster CA in `system:masters` (the admin kubeconfig's). Off unless given.
    #[arg(long)]
    etcd_listen: Option<SocketAddr>,
    /// The range cluster IPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// How long a node may go without a heartbeat (Lease renewal) before it is marked
    /// `Ready=Unknown` and tainted unreachable.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How long a node agent's stream lasts at least before the control plane ends it (it ends
    /// between this and twice this, like the API server's watches); the agent resumes at once
    /// from its last revision, which spreads agents over the members of an HA control plane.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    node_stream_timeout: std::time::Duration,
    /// The range pod addresses come from; each node gets a share (empty: no allocation).
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's share of the cluster CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Store events kept for watches that start in the past; older revisions get 410 Gone.
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// Free disk space (MiB) kept on the data directory's filesystem: below it the store refuses
    /// writes (reads go on, `/readyz` fails) until space is freed.
    #[arg(long, default_value_t = 64)]
    min_free_disk_mb: u64,
    /// Users authenticated by bearer token: upstream's static token file, CSV lines
    /// `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Upstream's `EncryptionConfiguration` file: which resources are encrypted at rest, and
    /// with which keys (default: DATA_DIR/encryption-config.yaml, made at first start with a new
    /// key for Secrets). Values stored otherwise than it writes are rewritten at start.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// The audit log: upstream's audit.k8s.io/v1 Events as JSON lines (`-`: standard output;
    /// default DATA_DIR/audit.log).
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// Upstream's audit Policy file: what is logged at which level (default: every request at
    /// Metadata but health checks and node heartbeats).
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Size in MiB at which the audit log is rotated (0: never).
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept (0: all).
    #[arg(long, default_value_t = 10)]
    audit_log_maxbackup: usize,
    /// Days a rotated audit log is kept (0: no limit).
    #[arg(long, default_value_t = 0)]
    audit_log_maxage: u64,
    /// Client connections the API server serves at once (default: 4096, or what the descriptor
    /// limit allows); 64 more serve only health checks and `system:masters` clients.
    #[arg(long)]
    max_connections: Option<usize>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The store's members: `list`, `remove ID`, `promote ID` (IDs as listed).
    Member {
        /// `list`, `remove` or `promote`.
        action: String,
        /// The member, for `remove` and `promote`.
        id: Option<String>,
        /// An administrator's kubeconfig (any member's server).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
    },
    /// Backups: `restore FILE --data-dir DIR` makes DIR's store from a backup that
    /// `etcdctl snapshot save` wrote (checked against its SHA-256); the next start there founds a
    /// new one-member cluster with that state.
    Snapshot {
        /// `restore`.
        action: String,
        /// The backup file.
        file: PathBuf,
        /// The data directory to restore into (its store must not exist yet; its CA and tokens,
        /// if there, are kept).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// The address published for an API server listening on `listen`: that address, or for an
/// unspecified one the source address of this host's default route (a UDP socket's `connect`
/// picks it; nothing is sent), else loopback.
fn advertise_ip(listen: std::net::IpAddr) -> std::net::Ipv4Addr {
    if let std::net::IpAddr::V4(ip) = listen
        && !ip.is_unspecified()
    {
        return ip;
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
            _ => None,
        })
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST)
}

/// Parses `40s`, `2m`, `500ms` or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "" | "s" => Ok(std::time::Duration::from_secs(n)),
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        "h" => Ok(std::time::Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {s:?} (use 40s, 2m, 500ms)")),
    }
}

/// The exit status of a member removed from the cluster (the service unit does not restart it:
/// `RestartPreventExitStatus`).
const REMOVED_EXIT: i32 = 3;

fn main() {
    purge_freed_memory_soon();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // Room for recursive walkers over objects at the nesting limit in unoptimised builds;
        // only touched pages cost memory.
        .thread_stack_size(8 * 1024 * 1024)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff-control: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // One line on failure, whatever RUST_BACKTRACE says.
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("skiff-control: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Command::Member {
            action,
            id,
            kubeconfig,
        }) => {
            return skiff_control::membership::command(kubeconfig, action, id.as_deref()).await;
        }
        Some(Command::Snapshot {
            action,
            file,
            data_dir,
        }) => {
            if action != "restore" {
                anyhow::bail!("usage: skiff-control snapshot restore FILE --data-dir DIR");
            }
            let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let (revision, keys) = skiff_control::store::restore(&bytes, &data_dir.join("store"))
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("restoring {}", file.display()))?;
            println!(
                "restored {keys} keys at revision {revision} into {}; start skiff-control with --data-dir {} (a new one-member cluster)",
                data_dir.join("store").display(),
                data_dir.display()
            );
            return Ok(());
        }
        None => {}
    }
    skiff_common::logging::init(args.log_format, "openraft=warn,h2=warn,hyper=warn");
    let nofile = api::server::raise_descriptor_limit();
    let mut limits = api::server::ConnLimits::for_descriptors(nofile);
    if let Some(max) = args.max_connections {
        limits.max = max;
    }
    let cidr = Cidr::parse(&args.service_cidr)
        .map_err(anyhow::Error::msg)
        .context("--service-cidr")?;
    // The store holds every Secret and the service-account signing key, the PKI the CA keys:
    // root's alone, including what an older release left readable.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    keep_private(&args.data_dir).with_context(|| format!("restricting {}", args.data_dir.display()))?;

    let advertise = std::net::SocketAddrV4::new(
        args.advertise_address
            .unwrap_or_else(|| advertise_ip(args.listen.ip())),
        args.listen.port(),
    );
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading --token-file {}", file.display()))?,
        ),
        (None, None) => None,
    };
    let join = match (&args.join, token) {
        (Some(url), Some(token)) => Some(skiff_control::membership::Join {
            url: url.trim_end_matches('/').to_owned(),
            token,
        }),
        (Some(_), None) => {
            anyhow::bail!("--join needs --token or --token-file (the first member's server-token)")
        }
        (None, _) => None,
    };
    if let Some(join) = &join
        && !args.data_dir.join("pki").join("ca.key").exists()
    {
        join.fetch_shared_files(&args.data_dir).await?;
    }
    let store_dir = args.data_dir.join("store");
    if store_dir.join("removed").exists() {
        eprintln!(
            "skiff-control: this member was removed from the cluster; to join again, move {} away and start with --join",
            store_dir.display()
        );
        std::process::exit(REMOVED_EXIT);
    }
    let id_file = store_dir.join("member-id");
    let saved_id = std::fs::read_to_string(&id_file)
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
    let node_id = match (args.node_id, saved_id) {
        (Some(id), _) | (None, Some(id)) => id,
        // etcd's member ids are random too; kept below 2^63 for tools that read them signed.
        (None, None) if join.is_some() => (rand::random::<u64>() >> 1).max(2),
        (None, None) => 1,
    };
    if join.is_some() && saved_id != Some(node_id) {
        std::fs::create_dir_all(&store_dir).with_context(|| format!("creating {}", store_dir.display()))?;
        std::fs::write(&id_file, format!("{node_id:016x}\n"))
            .with_context(|| format!("writing {}", id_file.display()))?;
    }

    let in_cluster = [(*advertise.ip()).into(), cidr.nth(1).into()];
    let pki = Pki::load_or_create(&args.data_dir.join("pki"), args.listen, &in_cluster)
        .context("loading the cluster CA")?;
    pki.write_bootstrap_files(&args.data_dir, &local_url(args.listen))
        .context("writing bootstrap files")?;

    let mut store_config = StoreConfig::single(store_dir, args.raft_listen);
    // A founding member records the address its peers dial (a wildcard is no address to dial).
    store_config.advertise = args.raft_advertise.or_else(|| {
        (args.raft_listen.ip().is_unspecified() && args.raft_listen.port() != 0)
            .then(|| SocketAddr::new((*advertise.ip()).into(), args.raft_listen.port()))
    });
    store_config.node_id = node_id;
    store_config.join = join.is_some();
    let member_cert = pki
        .issue_member(node_id)
        .context("issuing the store member certificate")?;
    store_config.tls = Some(Arc::new(skiff_control::store::PeerTls {
        ca_pem: pki.ca_pem.clone(),
        cert_pem: member_cert.cert_pem,
        key_pem: member_cert.key_pem,
    }));
    store_config.watch_history = args.watch_history;
    store_config.min_free_disk = args.min_free_disk_mb << 20;
    let encryption_file = match &args.encryption_provider_config {
        Some(file) => file.clone(),
        None => {
            let file = args.data_dir.join("encryption-config.yaml");
            if !file.exists() {
                std::fs::write(&file, Encryption::generate_default())
                    .with_context(|| format!("writing {}", file.display()))?;
            }
            file
        }
    };
    let text = std::fs::read_to_string(&encryption_file)
        .with_context(|| format!("reading {}", encryption_file.display()))?;
    store_config.encryption = Arc::new(
        Encryption::parse(&text)
            .with_context(|| format!("--encryption-provider-config {}", encryption_file.display()))?,
    );
    let store = Store::open(store_config).await.context("opening the store")?;
    // A Raft core stopped by a storage error (an fsync that failed, a disk that filled past the
    // reserve) never serves again in this process: exit, so the service manager starts the
    // member afresh from its log (etcd stops the same way).
    // A member removed from the cluster stops for good (as etcd's), and says so if started again.
    let watched = store.clone();
    let removed_marker = args.data_dir.join("store").join("removed");
    tokio::spawn(async move {
        let mut was_member = false;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if let Some(why) = watched.not_live() {
                tracing::error!(reason = %why, "exiting: the store cannot go on in this process; restart it");
                std::process::exit(1);
            }
            let member = watched.in_membership();
            let removed = (was_member && !member) || watched.told_removed();
            was_member |= member;
            if removed {
                let _ = std::fs::write(&removed_marker, b"removed from the cluster\n");
                tracing::error!(
                    "this member has been removed from the cluster: exiting (to join again, move DATA_DIR/store away and start with --join)"
                );
                std::process::exit(REMOVED_EXIT);
            }
        }
    });
    let raft_advertise = args.raft_advertise.unwrap_or_else(|| {
        let bound = store.raft_addr();
        if bound.ip().is_unspecified() {
            SocketAddr::new((*advertise.ip()).into(), bound.port())
        } else {
            bound
        }
    });
    let name = args
        .name
        .clone()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_lowercase())
        .unwrap_or_else(|| "default".to_owned());
    let api_url = format!("https://{advertise}");
    if let Some(join) = &join {
        if !store.is_initialized().await? {
            tracing::info!(url = %join.url, member = format!("{node_id:016x}"), "joining the store");
            join.add(&pki.ca_pem, node_id, &name, &raft_advertise.to_string(), &api_url)
                .await?;
        }
        store
            .wait_until_serving(std::time::Duration::from_secs(60))
            .await
            .context("waiting for the store after joining")?;
    }
    record_member(&store, &name, &raft_advertise.to_string(), &api_url)
        .await
        .context("recording this member")?;
    let rewriting = store.clone();
    tokio::spawn(async move {
        match rewriting.reencrypt().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(values = n, "rewrote values stored with an older key or provider"),
            Err(e) => tracing::error!(error = %e, "rewriting values stored with an older key or provider"),
        }
    });

    let cluster_cidr = if args.cluster_cidr.is_empty() {
        None
    } else {
        Some(
            skiff_control::objects::cluster_cidr::ClusterCidr::parse(
                &args.cluster_cidr,
                args.node_cidr_mask_size,
            )
            .map_err(anyhow::Error::msg)
            .context("--cluster-cidr")?,
        )
    };
    let objects = Arc::new(Objects::new(store.clone(), cidr).with_cluster_cidr(cluster_cidr));
    let mut app = App::new(objects.clone());
    app.node_stream_timeout = args.node_stream_timeout;
    let token = std::fs::read_to_string(args.data_dir.join("node-token")).context("reading node-token")?;
    app.node_secret = skiff_control::pki::parse_token(&token)
        .map(|(_, s)| s.to_owned())
        .unwrap_or_default();
    let server_token =
        std::fs::read_to_string(args.data_dir.join("server-token")).context("reading server-token")?;
    app.joining = Some(api::members::Joining {
        secret: skiff_control::pki::parse_token(&server_token)
            .map(|(_, s)| s.to_owned())
            .unwrap_or_default(),
        bundle: skiff_control::membership::shared_bundle(&args.data_dir, &encryption_file)?,
    });
    // Every member runs the lease expiry (it acts only on the leader), with or without etcd's API.
    let lessor = skiff_control::etcd::lease::Lessor::start(store.clone());
    if let Some(addr) = args.etcd_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --etcd-listen {addr}"))?;
        let url = format!("https://{}", listener.local_addr()?);
        let etcd = skiff_control::etcd::Etcd::new(
            store.clone(),
            &objects.registry,
            &pki.ca_pem,
            &args.data_dir,
            url,
            lessor.clone(),
        );
        skiff_control::etcd::serve(etcd, listener, skiff_control::etcd::server_tls(&pki)?);
    }
    let tls = api::server::tls_config(&pki).context("configuring TLS")?;
    let pki = Arc::new(pki);
    let mut controllers = skiff_control::controllers::Config {
        node_grace: args.node_monitor_grace_period,
        root_ca: Some(pki.ca_pem.clone()),
        ca: Some(pki.clone()),
        metrics: None,
    };
    app.pki = Some(pki);
    if let Some(file) = &args.token_auth_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        app.static_tokens = api::token::StaticTokens::parse(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("--token-auth-file {}", file.display()))?;
    }
    let policy = match &args.audit_policy_file {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            api::audit::Policy::parse(&text)
                .with_context(|| format!("--audit-policy-file {}", file.display()))?
        }
        None => api::audit::Policy::default_policy(),
    };
    let sink = api::audit::Sink {
        path: args
            .audit_log_path
            .clone()
            .unwrap_or_else(|| args.data_dir.join("audit.log")),
        max_bytes: args.audit_log_maxsize << 20,
        max_backups: args.audit_log_maxbackup,
        max_age_days: args.audit_log_maxage,
    };
    app.audit = Some(
        api::audit::Audit::start(policy, sink.clone())
            .with_context(|| format!("opening the audit log {}", sink.path.display()))?,
    );
    let app = Arc::new(app);
    let webhooks = api::webhooks::Calls::new(&objects);
    webhooks.serve(&app);
    objects.set_webhooks(webhooks);
    skiff_control::bootstrap::ensure_defaults(&objects)
        .await
        .context("creating default namespaces")?;
    // With more members the leader keeps the Service's endpoints (`publish_api_servers`).
    if store.members().0.len() == 1 {
        skiff_control::bootstrap::ensure_api_service(&objects, advertise)
            .await
            .context("publishing the kubernetes Service")?;
    }
    if let Some(pki) = &app.pki {
        skiff_control::bootstrap::ensure_extension_auth(&objects, &pki.ca_pem, &pki.front_proxy_ca_pem)
            .await
            .context("publishing extension-apiserver-authentication")?;
    }
    api::aggregator::start(app.clone());
    api::members::publish_api_servers(app.clone(), advertise);
    controllers.metrics = Some(Arc::new(api::resource_metrics::AgentMetrics::new(app.clone())));
    let caches = skiff_control::controllers::start(objects.clone(), &controllers);
    skiff_control::scheduler::start(objects, &caches);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        kubeconfig = %args.data_dir.join("admin.kubeconfig").display(),
        max_connections = limits.max,
        descriptors = nofile,
        "skiff-control serving"
    );
    let serving = api::server::serve(listener, tls, api::router(app), limits);
    tokio::select! {
        () = serving => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
    }
    store.shutdown().await;
    Ok(())
}

/// Keeps this member's name and addresses beside the Raft membership (`member list` shows them).
async fn record_member(store: &Store, name: &str, peer: &str, api_url: &str) -> anyhow::Result<()> {
    let key = api::members::record_key(store.member_id());
    let record = serde_json::json!({"name": name, "peerAddress": peer, "apiURL": api_url});
    let value = serde_json::to_vec(&record)?;
    match store.get(&key).await? {
        Some(kv) if kv.value == value => {}
        Some(kv) => drop(store.update(&key, value, Some(kv.mod_revision)).await?),
        None => drop(store.create(&key, value).await?),
    }
    Ok(())
}

/// Makes `path` and everything under it root's only: directories 0700, files 0600.
fn keep_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            keep_private(&entry?.path())?;
        }
    }
    Ok(())
}
