//! The service proxy (the kube-proxy half): watches Services and EndpointSlices and programs each
//! changed service into the data plane: eBPF socket hooks ([`ebpf`]) or an nftables table
//! ([`nft`]), both fed by the same model ([`model`]).

pub mod conntrack;
pub mod ebpf;
pub mod model;
pub mod nft;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;
use skiff_abi::ServiceKey;

use crate::metrics;
use crate::node::stream::Feeds;
use crate::node::watch::Event;
use model::Entry;

/// How services are implemented on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// eBPF when this agent carries its programs and the kernel takes them, else nftables.
    Auto,
    /// eBPF socket-level load balancing (cgroup/connect4, sendmsg4, recvmsg4, getpeername4).
    Ebpf,
    /// One `inet skiff` nftables table with verdict maps (DNAT per connection).
    Nftables,
    /// No service proxy on this node.
    None,
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data plane.
    pub mode: Mode,
    /// Where maps and links are pinned (on a BPF filesystem).
    pub pin_dir: PathBuf,
    /// The cgroup2 directory whose processes (and their descendants') sockets are served; `None`
    /// when the host has no cgroup2 hierarchy (eBPF is then unavailable).
    pub cgroup: Option<PathBuf>,
    /// The cluster's service range (rejected by the nftables plane unless a service matches).
    pub service_cidr: String,
    /// The node addresses that serve NodePorts.
    pub node_ips: Vec<Ipv4Addr>,
    /// The interfaces where connections from outside arrive (eBPF); empty: those holding
    /// `node_ips`.
    pub interfaces: Vec<String>,
}

/// The data plane a node's services are programmed into.
#[derive(Debug)]
pub enum Plane {
    /// eBPF socket hooks.
    Ebpf(Box<ebpf::Ebpf>),
    /// The nftables table.
    Nftables(nft::Nft),
}

impl Plane {
    /// The mode this plane implements.
    pub fn mode(&self) -> Mode {
        match self {
            Plane::Ebpf(_) => Mode::Ebpf,
            Plane::Nftables(_) => Mode::Nftables,
        }
    }

    /// The mode's name in metrics.
    pub fn mode_name(&self) -> &'static str {
        match self {
            Plane::Ebpf(_) => "ebpf",
            Plane::Nftables(_) => "nftables",
        }
    }

    /// How many entries each of the data plane's maps holds.
    pub fn entries(&self) -> Vec<(&'static str, usize)> {
        match self {
            Plane::Ebpf(p) => p.entries(),
            Plane::Nftables(p) => p.entries(),
        }
    }

    /// Programs `changes`; `Ok(false)` when they did not go in and must be retried.
    pub async fn apply(&mut self, changes: &[(ServiceKey, Option<Entry>)]) -> anyhow::Result<bool> {
        match self {
            Plane::Ebpf(p) => {
                for (key, entry) in changes {
                    if let Err(e) = p.apply(*key, entry.as_ref()) {
                        tracing::warn!(error = %format!("{e:#}"), ?key, "programming a service failed");
                    }
                }
                p.attach()
                    .map_err(|e| e.context("attaching the eBPF service hooks"))?;
            }
            Plane::Nftables(p) => {
                if let Err(e) = p.apply(changes).await {
                    tracing::warn!(error = %format!("{e:#}"), "programming services into nftables failed; retrying");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Picks and prepares the data plane (eBPF programs are loaded and verified now); `None` when the
/// node proxies no services.
pub async fn start(cfg: &Config) -> anyhow::Result<Option<Plane>> {
    let nftables = || Ok(Some(Plane::Nftables(nft::Nft::new(&cfg.service_cidr))));
    let load = || async {
        let Some(cgroup) = cfg.cgroup.clone() else {
            anyhow::bail!("no cgroup2 hierarchy on this host: the eBPF service proxy needs one");
        };
        let pins = cfg.pin_dir.clone();
        let interfaces = if cfg.interfaces.is_empty() {
            crate::network::pod_net::interfaces_with(&cfg.node_ips)
                .await
                .context("finding the interfaces of the node's addresses")?
        } else {
            cfg.interfaces.clone()
        };
        if interfaces.is_empty() {
            tracing::warn!(addresses = ?cfg.node_ips, "no interface holds the node's addresses: NodePorts are served to the node's own sockets only");
        }
        tokio::task::spawn_blocking(move || {
            let loaded = ebpf::Ebpf::load(&pins, &cgroup, &interfaces);
            // The kernel's BTF, parsed by the loader (about 9 MiB), is free now.
            crate::memory::trim();
            loaded
        })
        .await?
    };
    match cfg.mode {
        Mode::None => Ok(None),
        Mode::Nftables => nftables(),
        Mode::Ebpf => Ok(Some(Plane::Ebpf(Box::new(load().await?)))),
        Mode::Auto if !ebpf::available() => {
            tracing::info!("this agent carries no eBPF programs: services go through nftables");
            nftables()
        }
        Mode::Auto => match load().await {
            Ok(p) => Ok(Some(Plane::Ebpf(Box::new(p)))),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "eBPF is unavailable: services go through nftables");
                nftables()
            }
        },
    }
}

/// Everything known about services, and what each one is programmed with.
#[derive(Debug, Default)]
struct State {
    services: HashMap<String, Value>,
    slices: HashMap<String, Value>,
    /// Service `ns/name` → its slices' keys.
    slices_of: HashMap<String, BTreeSet<String>>,
    programmed: HashMap<String, BTreeMap<ServiceKey, Entry>>,
    dirty: BTreeSet<String>,
    /// Where loopback endpoints are reached ([`model::entries`]).
    host: Option<Ipv4Addr>,
    /// The trigger times of the slice changes not programmed yet (newer than `started`).
    triggers: Vec<time::OffsetDateTime>,
    /// When this proxy started: older trigger times are not its latency.
    started: Option<time::OffsetDateTime>,
}

impl State {
    fn set_service(&mut self, obj: Value, deleted: bool) {
        let key = model::key_of(&obj);
        self.dirty.insert(key.clone());
        if deleted {
            self.services.remove(&key);
        } else {
            self.services.insert(key, obj);
        }
    }

    /// Remembers when the change a slice update carries happened (the endpoints controller's
    /// `endpoints.kubernetes.io/last-change-trigger-time`), as kube-proxy's tracker does.
    fn note_trigger(&mut self, slice: &Value) {
        let Some(t) = slice["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
            .as_str()
            .and_then(skiff_common::time::parse)
        else {
            return;
        };
        if self.started.is_some_and(|s| t > s) {
            self.triggers.push(t);
        }
    }

    fn set_slice(&mut self, obj: Value, deleted: bool) {
        let key = model::key_of(&obj);
        if let Some(old) = self.slices.remove(&key)
            && let Some(svc) = model::service_of_slice(&old)
        {
            self.dirty.insert(svc.clone());
            if let Some(set) = self.slices_of.get_mut(&svc) {
                set.remove(&key);
            }
        }
        if deleted {
            return;
        }
        if let Some(svc) = model::service_of_slice(&obj) {
            self.dirty.insert(svc.clone());
            self.slices_of.entry(svc).or_default().insert(key.clone());
        }
        self.slices.insert(key, obj);
    }

    fn list_services(&mut self, items: Vec<Value>) {
        self.dirty.extend(self.services.keys().cloned());
        self.services.clear();
        for obj in items {
            self.set_service(obj, false);
        }
    }

    fn list_slices(&mut self, items: Vec<Value>) {
        let old: Vec<Value> = self.slices.values().cloned().collect();
        for obj in old {
            self.set_slice(obj, true);
        }
        for obj in items {
            self.set_slice(obj, false);
        }
    }

    /// A new address for loopback endpoints: every service is looked at again.
    fn set_host(&mut self, host: Option<Ipv4Addr>) {
        if host != self.host {
            self.host = host;
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    /// The changes that bring the data plane in line with the dirty services.
    fn changes(&mut self, node: &str, node_ips: &[Ipv4Addr]) -> Vec<(ServiceKey, Option<Entry>)> {
        let mut out = Vec::new();
        for name in std::mem::take(&mut self.dirty) {
            let wanted = match self.services.get(&name) {
                Some(svc) => {
                    let slices: Vec<&Value> = self
                        .slices_of
                        .get(&name)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| self.slices.get(k))
                        .collect();
                    model::entries(svc, &slices, node, node_ips, self.host)
                }
                None => BTreeMap::new(),
            };
            let had = self.programmed.remove(&name).unwrap_or_default();
            for key in had.keys().filter(|k| !wanted.contains_key(k)) {
                out.push((*key, None));
            }
            for (key, entry) in &wanted {
                if had.get(key) != Some(entry) {
                    out.push((*key, Some(entry.clone())));
                }
            }
            if !wanted.is_empty() {
                self.programmed.insert(name, wanted);
            }
        }
        out
    }
}

/// The record's path under the data directory.
pub const RECORD: &str = "proxy/services.json";

/// One programmed service port as `skiff-agent inspect services` reads it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Programmed {
    /// The Service, `namespace/name`.
    pub service: String,
    /// `address:port/PROTOCOL`.
    pub address: String,
    /// `ip:port` of each backend, in slot order.
    pub backends: Vec<String>,
    /// Reached from outside the node.
    pub external: bool,
    /// Connections from outside are masqueraded.
    pub masquerade: bool,
    /// `sessionAffinity: ClientIP` timeout (0: none).
    pub affinity_timeout: u32,
}

/// The record of what the data plane was last programmed with (`DATA_DIR/proxy/services.json`):
/// the mode and every service port, with the Service each belongs to, which the kernel's maps do
/// not hold.
pub fn write_record(
    path: &std::path::Path,
    mode: &str,
    programmed: &HashMap<String, BTreeMap<ServiceKey, Entry>>,
) -> anyhow::Result<()> {
    let mut ports: Vec<Programmed> = programmed
        .iter()
        .flat_map(|(service, entries)| {
            entries.iter().map(move |(key, e)| Programmed {
                service: service.clone(),
                address: format!(
                    "{}:{}/{}",
                    Ipv4Addr::from(key.addr),
                    key.port,
                    match key.protocol {
                        skiff_abi::PROTO_UDP => "UDP",
                        skiff_abi::PROTO_SCTP => "SCTP",
                        _ => "TCP",
                    }
                ),
                backends: e
                    .backends
                    .iter()
                    .map(|b| format!("{}:{}", Ipv4Addr::from(b.addr), b.port))
                    .collect(),
                external: e.external,
                masquerade: e.masquerade,
                affinity_timeout: e.affinity_timeout,
            })
        })
        .collect();
    ports.sort_by(|a, b| (&a.service, &a.address).cmp(&(&b.service, &b.address)));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let body = serde_json::json!({"mode": mode, "services": ports});
    skiff_common::fs::write_private(path, &serde_json::to_vec(&body)?)?;
    Ok(())
}

/// Runs the proxy with `plane` until the process ends, fed by the node's Service and
/// EndpointSlice watches; NodePorts are served on `node_ips`, loopback endpoints at `host` once
/// it is known.
pub async fn run(
    mut plane: Plane,
    node_name: String,
    node_ips: Vec<Ipv4Addr>,
    feeds: Feeds,
    mut host: tokio::sync::watch::Receiver<Option<Ipv4Addr>>,
    record: PathBuf,
) -> anyhow::Result<()> {
    let (mut svc_rx, mut slice_rx) = (feeds.services.subscribe(), feeds.slices.subscribe());
    let mut state = State {
        started: Some(time::OffsetDateTime::now_utc()),
        ..State::default()
    };
    state.set_host(*host.borrow_and_update());
    let (mut services_listed, mut slices_listed) = (false, false);
    let mut retry = false;
    loop {
        let backoff = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::select! {
            _ = backoff, if retry => {}
            Some(ev) = svc_rx.recv() => match ev {
                Event::Listed(items) => { state.list_services(items); services_listed = true; }
                Event::Applied(o) => { metrics::SERVICE_CHANGES.inc(&[]); state.set_service(o, false) }
                Event::Deleted(o) => { metrics::SERVICE_CHANGES.inc(&[]); state.set_service(o, true) }
            },
            Some(ev) = slice_rx.recv() => match ev {
                Event::Listed(items) => { state.list_slices(items); slices_listed = true; }
                Event::Applied(o) => {
                    metrics::ENDPOINT_CHANGES.inc(&[]);
                    state.note_trigger(&o);
                    state.set_slice(o, false)
                }
                Event::Deleted(o) => { metrics::ENDPOINT_CHANGES.inc(&[]); state.set_slice(o, true) }
            },
            Ok(()) = host.changed() => state.set_host(*host.borrow_and_update()),
            else => anyhow::bail!("the service watches stopped"),
        }
        // Apply once both initial lists are in, so that the first attach serves a complete set.
        let settled = services_listed && slices_listed && svc_rx.is_empty() && slice_rx.is_empty();
        if !settled {
            continue;
        }
        let changes = state.changes(&node_name, &node_ips);
        let began = std::time::Instant::now();
        retry = !plane.apply(&changes).await?;
        if !changes.is_empty() && !retry {
            tracing::debug!(changes = changes.len(), "services programmed");
            metrics::SYNC_DURATION.observe(&[], began.elapsed().as_secs_f64());
            let now = time::OffsetDateTime::now_utc();
            metrics::LAST_SYNC.set(&[], now.unix_timestamp() as f64);
            for t in state.triggers.drain(..) {
                metrics::NETWORK_PROGRAMMING.observe(&[], (now - t).as_seconds_f64().max(0.0));
            }
            for (map, n) in plane.entries() {
                metrics::MAP_ENTRIES.set(&[plane.mode_name(), map], n as f64);
            }
            if let Err(e) = write_record(&record, plane.mode_name(), &state.programmed) {
                tracing::debug!(error = %e, path = %record.display(), "recording the programmed services failed");
            }
        }
    }
}
