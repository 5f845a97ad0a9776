//! The kubelet half: makes the pods bound to this node real and reports their status.
//!
//! One task per pod (`worker`) reconciles the pod's desired state with what runs: sandbox
//! namespaces and network, images, volumes, containers (through the shim), restarts with back-off,
//! termination, clean-up, and the pod's status. Everything needed to pick a pod up again lives
//! under `DATA_DIR/pods/<uid>`, so a restarted agent adopts running pods instead of restarting them.

mod admission;
mod backoff;
mod containers;
pub mod env;
pub mod eviction;
mod host;
mod pass;
pub mod pressure;
pub mod probe;
mod runtime;
mod service_env;
pub mod spec;
mod status;
pub mod volumes;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use crate::image::ImageStore;
use crate::image::pull::Puller;
use crate::network::ipam::Ipam;
use crate::node::client::{ApiClient, status_code};
use crate::node::watch::Event;

/// Node-level settings the pods share.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// This node's name.
    pub node_name: String,
    /// The address the node reports (`status.hostIP`).
    pub node_ip: String,
    /// Top-level cgroup for the node's pods (relative to each hierarchy's root).
    pub cgroup_root: String,
    /// The pod bridge.
    pub bridge: String,
    /// Pod CIDR to use instead of the Node's `spec.podCIDR`.
    pub pod_cidr: Option<String>,
    /// Registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `pids.max` for each container.
    pub pids_limit: Option<i64>,
    /// Where `Localhost` seccomp profiles are read from (`localhostProfile` is relative to it).
    pub seccomp_profile_root: PathBuf,
    /// Program masquerading for pod egress (nftables) and enable forwarding.
    pub masquerade: bool,
    /// Container log size that triggers rotation, in bytes.
    pub log_max_size: u64,
    /// Container log files kept (the current one included).
    pub log_max_files: u32,
    /// Hard eviction thresholds (`pressure.rs`).
    pub eviction_hard: Vec<pressure::Threshold>,
    /// The cluster's service range: an unreachable route in every pod (`None` when the node's
    /// nftables proxy rejects unmatched service traffic instead).
    pub service_cidr: Option<String>,
    /// The route the node itself gets for the service range, if any.
    pub node_service_route: Option<ServiceRoute>,
    /// Route other nodes' pod ranges to them ([`crate::network::routes`]).
    pub node_routes: bool,
    /// Cluster DNS, when this node answers it.
    pub dns: Option<Dns>,
    /// The API server's loopback address when it runs on this host's loopback only: pods reach it
    /// through a relay on the bridge address ([`crate::network::api_relay`]).
    pub api_relay: Option<std::net::SocketAddrV4>,
    /// Where the bridge address is announced once the relay listens on it, for the service proxy
    /// to point loopback endpoints there.
    pub host_alias: tokio::sync::watch::Sender<Option<std::net::Ipv4Addr>>,
    /// The node's stream: its pods, and the Services, EndpointSlices and Nodes that DNS and the
    /// routes to other nodes follow.
    pub feeds: crate::node::stream::Feeds,
}

/// Cluster DNS as the node's pods see it.
#[derive(Debug, Clone)]
pub struct Dns {
    /// The `kube-dns` Service address (pods' nameserver).
    pub address: std::net::Ipv4Addr,
    /// The cluster domain.
    pub domain: String,
    /// Resolvers for other names.
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// How the node routes its service range.
#[derive(Debug, Clone)]
pub enum ServiceRoute {
    /// `unreachable CIDR`: what the eBPF hooks do not rewrite fails at once.
    Unreachable(String),
    /// `CIDR dev BRIDGE`: gives the node's own connections a route, so that nftables (which
    /// translates after routing) sees them; the table rejects what matches no service.
    ViaBridge(String),
}

/// What every pod worker shares.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub cfg: Config,
    /// The API.
    pub api: ApiClient,
    /// The cluster CA.
    pub ca_pem: String,
    /// Images.
    pub images: ImageStore,
    /// Registry client.
    pub puller: Puller,
    /// Pod addresses (once the pod CIDR is known).
    pub ipam: Ipam,
    /// One pull per image at a time.
    pub pulls: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Shared {
    /// `DATA_DIR/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.data_dir.join("pods").join(uid)
    }

    /// The log directory of a pod, as the kubelet names it.
    pub fn log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("logs")
            .join(format!("{namespace}_{name}_{uid}"))
    }

    /// libcontainer's state root.
    pub fn run_root(&self) -> PathBuf {
        self.cfg.data_dir.join("run")
    }
}

/// Waits for the node's pod CIDR, then prepares the bridge (and masquerading).
async fn pod_cidr(api: &ApiClient, cfg: &Config) -> anyhow::Result<String> {
    if let Some(c) = &cfg.pod_cidr {
        return Ok(c.clone());
    }
    let mut waited = 0;
    loop {
        let node = api
            .json(Method::GET, &format!("/api/v1/nodes/{}", cfg.node_name), None)
            .await?;
        if let Some(c) = node["spec"]["podCIDR"].as_str() {
            return Ok(c.to_string());
        }
        if waited % 20 == 0 {
            tracing::info!("waiting for the control plane to assign this node a pod CIDR");
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The node's masquerade table (family `ip`): traffic from pods to anything but pods
/// (`@pod-cidrs`: this node's range and, as routes to them appear, other nodes') is masqueraded.
fn masquerade_table(cfg: &Config) -> String {
    format!("skiff-{}", cfg.bridge)
}

async fn setup_network(cfg: &Config, ipam: &Ipam, cidr: &str) -> anyhow::Result<()> {
    let h = crate::network::pod_net::connect()?;
    crate::network::pod_net::ensure_bridge(&h, &cfg.bridge, ipam.gateway(), ipam.prefix())
        .await
        .with_context(|| format!("setting up bridge {}", cfg.bridge))?;
    match &cfg.node_service_route {
        Some(ServiceRoute::Unreachable(cidr)) => crate::network::pod_net::add_unreachable(&h, cidr).await?,
        Some(ServiceRoute::ViaBridge(cidr)) => {
            crate::network::pod_net::add_link_route(&h, cidr, &cfg.bridge).await?
        }
        None => {}
    }
    if cfg.masquerade {
        crate::network::pod_net::in_node_netns(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .and_then(|r| r)
            .context("enabling IPv4 forwarding")?;
        let table = masquerade_table(cfg);
        let rules = format!(
            "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n  set pod-cidrs {{\n    type ipv4_addr; flags interval;\n    elements = {{ {cidr} }}\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & {mark:#x} == {mark:#x} masquerade\n    ip saddr {cidr} ip daddr != @pod-cidrs oifname != \"{bridge}\" masquerade\n  }}\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{bridge}\" accept\n    oifname \"{bridge}\" ct state established,related accept\n  }}\n}}\n",
            bridge = cfg.bridge,
            // Set by the service proxy on connections from outside that must be masqueraded.
            mark = skiff_abi::MASQUERADE_MARK,
        );
        crate::network::pod_net::nft(&rules)
            .await
            .context("programming pod masquerading")?;
    }
    Ok(())
}

/// Runs the pod manager until the process ends.
pub async fn run(cfg: Config, api: ApiClient, ca_pem: String) -> anyhow::Result<()> {
    let cidr = pod_cidr(&api, &cfg).await?;
    let ipam = Ipam::new(&cfg.data_dir.join("ipam"), &cidr)?;
    setup_network(&cfg, &ipam, &cidr).await?;
    if cfg.node_routes {
        let table = cfg.masquerade.then(|| masquerade_table(&cfg));
        let (nodes, own) = (cfg.feeds.nodes.subscribe(), cfg.node_name.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::network::routes::run(nodes, own, table).await {
                tracing::warn!(error = %format!("{e:#}"), "routes to other nodes' pods stopped");
            }
        });
    }
    {
        let (pods, bridge) = (cfg.feeds.pods.subscribe(), cfg.bridge.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::network::host_ports::run(pods, bridge).await {
                tracing::warn!(error = %format!("{e:#}"), "host ports stopped");
            }
        });
    }
    if let Some(dns) = &cfg.dns {
        let dns_cfg = crate::network::dns::Config {
            domain: dns.domain.clone(),
            listen: ipam.gateway(),
            upstreams: dns.upstreams.clone(),
            feeds: cfg.feeds.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = crate::network::dns::run(dns_cfg).await {
                tracing::warn!(error = %format!("{e:#}"), "cluster DNS stopped");
            }
        });
    }
    if let Some(upstream) = cfg.api_relay {
        let listen = std::net::SocketAddrV4::new(ipam.gateway(), upstream.port());
        match crate::network::api_relay::listen(listen) {
            Ok(listener) => {
                tracing::info!(%listen, %upstream, "API server relay for pods listening");
                tokio::spawn(crate::network::api_relay::serve(listener, upstream));
                cfg.host_alias.send_replace(Some(ipam.gateway()));
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "pods cannot reach the API server"),
        }
    }
    tracing::info!(pod_cidr = %cidr, bridge = %cfg.bridge, "pod network ready");
    let shared = Arc::new(Shared {
        images: ImageStore::open(&cfg.data_dir)?,
        puller: Puller::new(cfg.insecure_registries.clone())?,
        ipam,
        pulls: Mutex::new(HashMap::new()),
        cfg,
        api,
        ca_pem,
    });
    tokio::spawn(image_gc(shared.clone()));
    pressure::start(shared.clone(), shared.cfg.eviction_hard.clone());
    let mut workers: HashMap<String, watch::Sender<Option<Value>>> = HashMap::new();
    // Pods known from disk are adopted first: their containers keep running.
    for (uid, pod) in worker::saved_pods(&shared) {
        let (tx, rx) = watch::channel(Some(pod.clone()));
        tokio::spawn(worker::run(shared.clone(), uid.clone(), pod, rx));
        workers.insert(uid, tx);
    }
    let mut rx = shared.cfg.feeds.pods.subscribe();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Listed(pods) => {
                let mut seen = std::collections::HashSet::new();
                for pod in pods {
                    let uid = uid_of(&pod);
                    seen.insert(uid.clone());
                    deliver(&shared, &mut workers, &uid, Some(pod));
                }
                let gone: Vec<String> = workers.keys().filter(|u| !seen.contains(*u)).cloned().collect();
                for uid in gone {
                    deliver(&shared, &mut workers, &uid, None);
                }
            }
            Event::Applied(pod) => deliver(&shared, &mut workers, &uid_of(&pod), Some(pod)),
            Event::Deleted(pod) => deliver(&shared, &mut workers, &uid_of(&pod), None),
        }
    }
    anyhow::bail!("the node stream stopped")
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}

/// Disk use (percent) above which unused images are removed, as the kubelet's image GC does.
const IMAGE_GC_HIGH: u64 = 85;

/// Removes images no pod on this node uses when the image filesystem runs full.
async fn image_gc(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let Ok(st) = nix::sys::statvfs::statvfs(&shared.cfg.data_dir) else {
            continue;
        };
        let total = st.blocks();
        if total == 0 || (total - st.blocks_available()) * 100 / total < IMAGE_GC_HIGH {
            continue;
        }
        let mut keep = std::collections::BTreeSet::new();
        for (_, pod) in worker::saved_pods(&shared) {
            for key in ["containers", "initContainers"] {
                for c in pod["spec"][key].as_array().into_iter().flatten() {
                    let Ok(r) = crate::image::Reference::parse(c["image"].as_str().unwrap_or_default())
                    else {
                        continue;
                    };
                    if let Ok(Some(img)) = shared.images.resolve(&r) {
                        keep.insert(img.digest);
                    }
                }
            }
        }
        let images = shared.images.clone();
        match tokio::task::spawn_blocking(move || images.collect_garbage(&keep)).await {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(count = removed.len(), "removed unused images under disk pressure")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "image garbage collection failed"),
            _ => {}
        }
    }
}

fn deliver(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, watch::Sender<Option<Value>>>,
    uid: &str,
    pod: Option<Value>,
) {
    if let Some(tx) = workers.get(uid)
        && !tx.is_closed()
    {
        let _ = tx.send(pod);
        return;
    }
    workers.remove(uid);
    let Some(pod) = pod else { return };
    let (tx, rx) = watch::channel(Some(pod.clone()));
    tokio::spawn(worker::run(shared.clone(), uid.to_string(), pod, rx));
    workers.insert(uid.to_string(), tx);
}

/// Confirms a pod's deletion once everything of it is gone on the node (the kubelet's final delete).
pub async fn finish_deletion(api: &ApiClient, pod: &Value) -> anyhow::Result<()> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
        "preconditions": {"uid": pod["metadata"]["uid"]}});
    match api
        .json(
            Method::DELETE,
            &format!("/api/v1/namespaces/{ns}/pods/{name}"),
            Some(&body),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => Ok(()),
        Err(e) => Err(e),
    }
}
