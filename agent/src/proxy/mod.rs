//! The service proxy (the kube-proxy half): watches Services and EndpointSlices and programs each
//! changed service into the data plane.

pub mod ebpf;
pub mod model;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::Value;
use skiff_abi::ServiceKey;
use tokio::sync::mpsc;

use crate::node::client::ApiClient;
use crate::node::watch::{Event, reflect};
use model::Entry;

/// How services are implemented on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// eBPF socket hooks when this agent carries its programs and the kernel takes them.
    Auto,
    /// eBPF socket-level load balancing (cgroup/connect4, sendmsg4, recvmsg4, getpeername4).
    Ebpf,
    /// No service proxy on this node.
    None,
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data plane.
    pub mode: Mode,
    /// This node's name (for `internalTrafficPolicy: Local`).
    pub node_name: String,
    /// Where maps and links are pinned (on a BPF filesystem).
    pub pin_dir: PathBuf,
    /// The cgroup2 directory whose processes (and their descendants') sockets are served.
    pub cgroup: PathBuf,
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

    /// The changes that bring the data plane in line with the dirty services.
    fn changes(&mut self, node: &str) -> Vec<(ServiceKey, Option<Entry>)> {
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
                    model::entries(svc, &slices, node)
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

/// Runs the proxy until the process ends.
pub async fn run(cfg: Config, api: ApiClient) -> anyhow::Result<()> {
    let mode = match cfg.mode {
        Mode::None => return Ok(()),
        Mode::Auto if !ebpf::available() => {
            tracing::warn!("this agent carries no eBPF programs: services are not proxied on this node");
            return Ok(());
        }
        m => m,
    };
    let loaded = {
        let (pins, cgroup) = (cfg.pin_dir.clone(), cfg.cgroup.clone());
        tokio::task::spawn_blocking(move || ebpf::Ebpf::load(&pins, &cgroup)).await?
    };
    let mut plane = match (loaded, mode) {
        (Ok(p), _) => p,
        (Err(e), Mode::Auto) => {
            tracing::warn!(error = %format!("{e:#}"), "eBPF is unavailable: services are not proxied on this node");
            return Ok(());
        }
        (Err(e), _) => return Err(e),
    };
    let (svc_tx, mut svc_rx) = mpsc::channel(1024);
    let (slice_tx, mut slice_rx) = mpsc::channel(1024);
    tokio::spawn(reflect(api.clone(), "/api/v1/services".into(), svc_tx));
    tokio::spawn(reflect(
        api,
        "/apis/discovery.k8s.io/v1/endpointslices".into(),
        slice_tx,
    ));
    let mut state = State::default();
    let (mut services_listed, mut slices_listed) = (false, false);
    loop {
        tokio::select! {
            Some(ev) = svc_rx.recv() => match ev {
                Event::Listed(items) => { state.list_services(items); services_listed = true; }
                Event::Applied(o) => state.set_service(o, false),
                Event::Deleted(o) => state.set_service(o, true),
            },
            Some(ev) = slice_rx.recv() => match ev {
                Event::Listed(items) => { state.list_slices(items); slices_listed = true; }
                Event::Applied(o) => state.set_slice(o, false),
                Event::Deleted(o) => state.set_slice(o, true),
            },
            else => anyhow::bail!("the service watches stopped"),
        }
        // Apply once both initial lists are in, so that the first attach serves a complete set.
        let settled = services_listed && slices_listed && svc_rx.is_empty() && slice_rx.is_empty();
        if !settled {
            continue;
        }
        let changes = state.changes(&cfg.node_name);
        for (key, entry) in &changes {
            if let Err(e) = plane.apply(*key, entry.as_ref()) {
                tracing::warn!(error = %format!("{e:#}"), ?key, "programming a service failed");
            }
        }
        if let Err(e) = plane.attach() {
            return Err(e.context("attaching the eBPF service hooks"));
        }
        if !changes.is_empty() {
            tracing::debug!(changes = changes.len(), "services programmed");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(ip: &str) -> Value {
        json!({"metadata": {"namespace": "ns", "name": "web"},
               "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})
    }

    fn slice(name: &str, ip: &str) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name,
                            "labels": {"kubernetes.io/service-name": "web"}},
               "ports": [{"port": 8080}], "endpoints": [{"addresses": [ip]}]})
    }

    #[test]
    fn only_changed_service_ports_are_reprogrammed() {
        let mut s = State::default();
        s.list_services(vec![svc("10.96.0.1")]);
        s.list_slices(vec![slice("a", "10.42.0.2")]);
        let first = s.changes("n");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.as_ref().unwrap().backends.len(), 1);
        // An unrelated relist changes nothing.
        s.list_slices(vec![slice("a", "10.42.0.2")]);
        assert!(s.changes("n").is_empty());
        s.set_slice(slice("b", "10.42.0.3"), false);
        assert_eq!(s.changes("n")[0].1.as_ref().unwrap().backends.len(), 2);
        // A new cluster IP replaces the old key.
        s.set_service(svc("10.96.0.2"), false);
        let moved = s.changes("n");
        assert_eq!(moved.len(), 2);
        assert!(moved.iter().any(|(k, e)| k.addr == [10, 96, 0, 1] && e.is_none()));
        s.set_service(svc("10.96.0.2"), true);
        assert!(matches!(s.changes("n").as_slice(), [(_, None)]));
    }
}
