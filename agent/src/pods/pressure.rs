//! The kubelet's node-pressure eviction. Every 10 s the node's signals are read —
//! `memory.available` (`/proc/meminfo`'s MemAvailable), `nodefs.available` and
//! `nodefs.inodesFree` (the data directory's filesystem), `imagefs.available` (the image store's)
//! — against the hard thresholds (`--eviction-hard`, upstream's syntax and defaults). While one is
//! met the Node reports `MemoryPressure` or `DiskPressure` (and the control plane taints it
//! `node.kubernetes.io/memory-pressure` / `disk-pressure`), new BestEffort pods (memory) or all new
//! pods (disk) are refused at admission with reason `Evicted`, and one pod per pass is evicted:
//! those using more than they request first, then the lowest priority, then the largest use above
//! the request, as the kubelet ranks them. Critical pods (priority 2,000,000,000 and up) stay.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::Shared;
use super::runtime::Runtime as _;

/// Upstream's default hard thresholds.
pub const DEFAULT_THRESHOLDS: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%";

/// How often the signals are read (the kubelet's housekeeping interval).
const INTERVAL: Duration = Duration::from_secs(10);

/// Pods at this priority and above (`system-cluster-critical`, `system-node-critical`) are never
/// evicted for pressure.
const CRITICAL_PRIORITY: i64 = 2_000_000_000;

/// An eviction signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `memory.available`.
    MemoryAvailable,
    /// `nodefs.available`.
    NodefsAvailable,
    /// `nodefs.inodesFree`.
    NodefsInodesFree,
    /// `imagefs.available`.
    ImagefsAvailable,
}

impl Signal {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "memory.available" => Self::MemoryAvailable,
            "nodefs.available" => Self::NodefsAvailable,
            "nodefs.inodesFree" => Self::NodefsInodesFree,
            "imagefs.available" => Self::ImagefsAvailable,
            _ => return None,
        })
    }

    /// The resource the kubelet names in its messages.
    fn resource(self) -> &'static str {
        match self {
            Self::MemoryAvailable => "memory",
            Self::NodefsInodesFree => "inodes",
            Self::NodefsAvailable | Self::ImagefsAvailable => "ephemeral-storage",
        }
    }

    fn is_memory(self) -> bool {
        self == Self::MemoryAvailable
    }
}

/// A threshold's quantity: an amount, or a share of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Quantity {
    Amount(u64),
    Percent(f64),
}

/// One hard threshold (`memory.available<100Mi`).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    signal: Signal,
    quantity: Quantity,
    /// As written (`100Mi`, `10%`), for messages.
    text: String,
}

/// The thresholds of `--eviction-hard`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds(pub Vec<Threshold>);

/// Parses `--eviction-hard` (`signal<quantity` pairs separated by commas; an empty string sets
/// none).
pub fn parse_thresholds(spec: &str) -> Result<Thresholds, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('<')
            .ok_or_else(|| format!("{part:?}: expected SIGNAL<QUANTITY (e.g. memory.available<100Mi)"))?;
        let signal = Signal::parse(name.trim()).ok_or_else(|| {
            format!("{name:?}: unknown signal (memory.available, nodefs.available, nodefs.inodesFree, imagefs.available)")
        })?;
        let value = value.trim();
        let quantity = if let Some(p) = value.strip_suffix('%') {
            let p: f64 = p.parse().map_err(|_| format!("{value:?}: not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("{value:?}: a percentage is between 0 and 100"));
            }
            Quantity::Percent(p)
        } else if signal == Signal::NodefsInodesFree {
            Quantity::Amount(value.parse().map_err(|_| format!("{value:?}: not a count"))?)
        } else {
            let bytes = super::spec::bytes(value).ok_or_else(|| format!("{value:?}: not a quantity"))?;
            Quantity::Amount(u64::try_from(bytes).map_err(|_| format!("{value:?}: negative"))?)
        };
        out.push(Threshold {
            signal,
            quantity,
            text: value.to_owned(),
        });
    }
    Ok(Thresholds(out))
}

/// A signal's reading: what is available of what capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Available (bytes, or inodes).
    pub available: u64,
    /// Capacity (bytes, or inodes).
    pub capacity: u64,
}

/// The thresholds met by `observe`'s readings, with the reading.
pub fn met(
    thresholds: &[Threshold],
    mut observe: impl FnMut(Signal) -> Option<Observation>,
) -> Vec<(&Threshold, Observation)> {
    thresholds
        .iter()
        .filter_map(|t| {
            let o = observe(t.signal)?;
            let limit = match t.quantity {
                Quantity::Amount(a) => a,
                Quantity::Percent(p) => (o.capacity as f64 * p / 100.0) as u64,
            };
            (o.available < limit).then_some((t, o))
        })
        .collect()
}

/// Whether the node is under memory or disk pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `MemoryPressure`.
    pub memory: bool,
    /// `DiskPressure`.
    pub disk: bool,
}

impl Pressure {
    fn of(met: &[(&Threshold, Observation)]) -> Self {
        Pressure {
            memory: met.iter().any(|(t, _)| t.signal.is_memory()),
            disk: met.iter().any(|(t, _)| !t.signal.is_memory()),
        }
    }
}

#[derive(Default)]
struct State {
    pressure: Pressure,
    /// Evictions decided and not yet taken up by the pod's worker, by uid.
    evictions: HashMap<String, String>,
    /// Pods evicted (their saved copy may not say so yet).
    evicted: std::collections::HashSet<String>,
}

static STATE: std::sync::LazyLock<Mutex<State>> = std::sync::LazyLock::new(Mutex::default);

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node's pressure as last read.
pub fn current() -> Pressure {
    state().pressure
}

/// The eviction decided for the pod `uid`, once (its worker then evicts it).
pub fn take_eviction(uid: &str) -> Option<String> {
    let mut state = state();
    let message = state.evictions.remove(uid)?;
    state.evicted.insert(uid.to_owned());
    Some(message)
}

/// Why a new pod is refused under `pressure` (the kubelet's admission), as its status.
pub fn admission_refusal(pod: &Value, pressure: Pressure) -> Option<Value> {
    if priority(pod) >= CRITICAL_PRIORITY {
        return None;
    }
    let condition = if pressure.disk {
        "DiskPressure"
    } else if pressure.memory
        && super::spec::qos_class(pod) == "BestEffort"
        && !tolerates_memory_pressure(pod)
    {
        "MemoryPressure"
    } else {
        return None;
    };
    Some(json!({
        "phase": "Failed",
        "reason": "Evicted",
        "message": format!("The node had condition: [{condition}]. "),
    }))
}

fn tolerates_memory_pressure(pod: &Value) -> bool {
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            let key = t["key"].as_str().unwrap_or_default();
            (key == "node.kubernetes.io/memory-pressure" || (key.is_empty() && t["operator"] == "Exists"))
                && t["effect"]
                    .as_str()
                    .is_none_or(|e| e.is_empty() || e == "NoSchedule")
        })
}

fn priority(pod: &Value) -> i64 {
    pod["spec"]["priority"].as_i64().unwrap_or(0)
}

/// A pod that may be evicted, with its use and request of the resource being reclaimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The pod's uid.
    pub uid: String,
    /// `spec.priority`.
    pub priority: i64,
    /// The whole pod's use, bytes (or inodes).
    pub usage: u64,
    /// The sum of its containers' requests.
    pub request: u64,
    /// Each container's (name, use, request).
    pub containers: Vec<(String, u64, u64)>,
}

/// Orders candidates as the kubelet does: use above the request first, then the lowest priority,
/// then the largest use above the request.
pub fn rank(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| {
        let over = |c: &Candidate| c.usage > c.request;
        over(b)
            .cmp(&over(a))
            .then(a.priority.cmp(&b.priority))
            .then((b.usage as i128 - b.request as i128).cmp(&(a.usage as i128 - a.request as i128)))
    });
}

/// Bytes as a Kubernetes quantity prints them (`resource.Quantity`, binary SI): the largest
/// suffix that divides exactly (`50Mi`, `10243Ki`, `0`).
fn quantity(bytes: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let (mut value, mut suffix) = (bytes, "");
    for s in SUFFIXES {
        if value == 0 || value % 1024 != 0 {
            break;
        }
        value /= 1024;
        suffix = s;
    }
    format!("{value}{suffix}")
}

/// The kubelet's eviction message.
pub fn message(threshold: &Threshold, observed: Observation, candidate: &Candidate) -> String {
    let resource = threshold.signal.resource();
    let amount = |v: u64| {
        if threshold.signal == Signal::NodefsInodesFree {
            v.to_string()
        } else {
            quantity(v)
        }
    };
    let mut m = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
        threshold.text,
        amount(observed.available)
    );
    for (name, usage, request) in &candidate.containers {
        if usage > request {
            m.push_str(&format!(
                "Container {name} was using {}, request is {}, has larger consumption of {resource}. ",
                amount(*usage),
                amount(*request)
            ));
        }
    }
    m
}

/// Reads a signal on this node.
fn observe(signal: Signal, data_dir: &Path, images_dir: &Path) -> Option<Observation> {
    // A share is of what the filesystem gives unprivileged users (used + available): blocks held
    // back for root (ext4's 5%) or by a thin-provisioned disk are not capacity anyone can fill.
    let fs = |path: &Path, inodes: bool| {
        let st = nix::sys::statvfs::statvfs(path).ok()?;
        let unit = st.fragment_size() as u64;
        let (total, free, available) = if inodes {
            (
                st.files() as u64,
                st.files_free() as u64,
                st.files_available() as u64,
            )
        } else {
            (
                st.blocks() as u64,
                st.blocks_free() as u64,
                st.blocks_available() as u64,
            )
        };
        let scale = if inodes { 1 } else { unit };
        Some(Observation {
            available: available * scale,
            capacity: (total.saturating_sub(free) + available) * scale,
        })
    };
    match signal {
        Signal::MemoryAvailable => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let field = |key: &str| {
                meminfo.lines().find_map(|l| {
                    let kb: u64 = l
                        .strip_prefix(key)?
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .ok()?;
                    Some(kb * 1024)
                })
            };
            Some(Observation {
                available: field("MemAvailable:")?,
                capacity: field("MemTotal:")?,
            })
        }
        Signal::NodefsAvailable => fs(data_dir, false),
        Signal::NodefsInodesFree => fs(data_dir, true),
        Signal::ImagefsAvailable => fs(images_dir, false),
    }
}

/// The sum of the containers' requests of `resource` (bytes).
fn requests(pod: &Value, resource: &str) -> (u64, HashMap<String, u64>) {
    let mut each = HashMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let r = c["resources"]["requests"][resource]
            .as_str()
            .and_then(super::spec::bytes)
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or(0);
        each.insert(c["name"].as_str().unwrap_or_default().to_owned(), r);
    }
    (each.values().sum(), each)
}

/// The pods this node runs that pressure may evict, with their use of what `signal` reclaims.
fn candidates(shared: &Arc<Shared>, signal: Signal) -> Vec<Candidate> {
    let stats = crate::runtime::stats::latest();
    let mut out = Vec::new();
    let pods = super::worker::saved_pods(shared);
    let evicted = {
        let mut state = state();
        // Forget pods that are gone from the node.
        state.evicted.retain(|uid| pods.iter().any(|(u, _)| u == uid));
        state.evicted.clone()
    };
    for (uid, pod) in pods {
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        if matches!(phase, "Failed" | "Succeeded")
            || priority(&pod) >= CRITICAL_PRIORITY
            || evicted.contains(&uid)
        {
            continue;
        }
        let candidate = if signal.is_memory() {
            let (request, each) = requests(&pod, "memory");
            let Some(s) = stats.pods.iter().find(|p| p.uid == uid) else {
                continue;
            };
            Candidate {
                uid,
                priority: priority(&pod),
                usage: s.usage.working_set,
                request,
                containers: s
                    .containers
                    .iter()
                    .map(|c| {
                        (
                            c.name.clone(),
                            c.usage.working_set,
                            each.get(&c.name).copied().unwrap_or(0),
                        )
                    })
                    .collect(),
            }
        } else {
            let (request, _) = requests(&pod, "ephemeral-storage");
            let host = super::host::Host::new(shared.clone(), &uid, &pod);
            let used = host.local_storage(&pod);
            let usage = used.containers.values().sum::<u64>() + used.empty_dirs.values().sum::<u64>();
            Candidate {
                uid,
                priority: priority(&pod),
                usage,
                request,
                containers: Vec::new(),
            }
        };
        out.push(candidate);
    }
    out
}

/// Reads the signals every 10 s: reports pressure on the Node and evicts a pod per pass while a
/// threshold is met.
pub fn start(shared: Arc<Shared>, thresholds: Vec<Threshold>) {
    if thresholds.is_empty() {
        return;
    }
    tokio::spawn(async move {
        loop {
            pass(&shared, &thresholds).await;
            tokio::time::sleep(INTERVAL).await;
        }
    });
}

async fn pass(shared: &Arc<Shared>, thresholds: &[Threshold]) {
    let images = shared.cfg.data_dir.join("images");
    let met = met(thresholds, |s| observe(s, &shared.cfg.data_dir, &images));
    let pressure = Pressure::of(&met);
    let before = std::mem::replace(&mut state().pressure, pressure);
    let name = &shared.cfg.node_name;
    if pressure != before {
        tracing::warn!(
            memory = pressure.memory,
            disk = pressure.disk,
            "node pressure changed"
        );
        if let Err(e) = crate::node::heartbeat::post_conditions(&shared.api, name).await {
            tracing::warn!(error = %format!("{e:#}"), "reporting the node's pressure failed");
        }
    }
    let Some((threshold, observed)) = met.first() else {
        return;
    };
    // One eviction at a time: the next pass looks again once it is done (or its pod is gone).
    {
        let mut state = state();
        state.evictions.retain(|uid, _| shared.pod_dir(uid).exists());
        if !state.evictions.is_empty() {
            return;
        }
    }
    let mut candidates = candidates(shared, threshold.signal);
    rank(&mut candidates);
    let Some(victim) = candidates.first() else {
        return;
    };
    let resource = threshold.signal.resource();
    crate::node::heartbeat::node_event(
        &shared.api,
        name,
        "Warning",
        "EvictionThresholdMet",
        &format!("Attempting to reclaim {resource}"),
    )
    .await;
    let message = message(threshold, *observed, victim);
    tracing::info!(uid = %victim.uid, %message, "evicting a pod for node pressure");
    state().evictions.insert(victim.uid.clone(), message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_upstream_writes_them() {
        let t = parse_thresholds(DEFAULT_THRESHOLDS).unwrap().0;
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].signal, Signal::MemoryAvailable);
        assert_eq!(t[0].quantity, Quantity::Amount(100 << 20));
        assert_eq!(t[1].quantity, Quantity::Percent(10.0));
        assert_eq!(parse_thresholds("").unwrap().0, []);
        assert!(
            parse_thresholds("memory.available>1Gi")
                .unwrap_err()
                .contains("SIGNAL<QUANTITY")
        );
        assert!(
            parse_thresholds("cpu.available<1")
                .unwrap_err()
                .contains("unknown signal")
        );
        assert!(parse_thresholds("nodefs.available<150%").is_err());
        assert!(parse_thresholds("memory.available<lots").is_err());
    }

    #[test]
    fn a_threshold_is_met_below_its_amount_or_share() {
        let t = parse_thresholds("memory.available<1Gi,nodefs.available<10%")
            .unwrap()
            .0;
        let reading = |mem: u64, disk: u64| {
            move |s: Signal| {
                Some(match s {
                    Signal::MemoryAvailable => Observation {
                        available: mem,
                        capacity: 8 << 30,
                    },
                    _ => Observation {
                        available: disk,
                        capacity: 1000,
                    },
                })
            }
        };
        assert!(met(&t, reading(2 << 30, 500)).is_empty());
        let m = met(&t, reading(512 << 20, 500));
        assert_eq!(
            Pressure::of(&m),
            Pressure {
                memory: true,
                disk: false
            }
        );
        let m = met(&t, reading(2 << 30, 99));
        assert_eq!(
            Pressure::of(&m),
            Pressure {
                memory: false,
                disk: true
            }
        );
    }

    fn candidate(uid: &str, priority: i64, usage: u64, request: u64) -> Candidate {
        Candidate {
            uid: uid.into(),
            priority,
            usage,
            request,
            containers: vec![("app".into(), usage, request)],
        }
    }

    #[test]
    fn pods_over_their_requests_go_first_then_low_priority_then_the_largest_excess() {
        let mut c = vec![
            candidate("within", 0, 50, 100),
            candidate("over-high-priority", 1000, 300, 100),
            candidate("over-small", 0, 120, 100),
            candidate("over-large", 0, 900, 100),
        ];
        rank(&mut c);
        let order: Vec<_> = c.iter().map(|c| c.uid.as_str()).collect();
        assert_eq!(
            order,
            ["over-large", "over-small", "over-high-priority", "within"]
        );
    }

    #[test]
    fn the_message_names_the_threshold_and_the_containers_over_their_request() {
        let t = &parse_thresholds("memory.available<100Mi").unwrap().0[0];
        let m = message(
            t,
            Observation {
                available: 50 << 20,
                capacity: 1 << 30,
            },
            &candidate("p", 0, (10 << 20) + 3072, 0),
        );
        assert_eq!(
            m,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. Container app was using 10243Ki, request is 0, has larger consumption of memory. "
        );
    }

    #[test]
    fn pressure_refuses_best_effort_pods_for_memory_and_every_pod_for_disk() {
        let best_effort = json!({"spec": {"containers": [{"name": "c"}]}});
        let burstable =
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": "1Mi"}}}]}});
        let memory = Pressure {
            memory: true,
            disk: false,
        };
        let disk = Pressure {
            memory: false,
            disk: true,
        };
        let refused = admission_refusal(&best_effort, memory).unwrap();
        assert_eq!(refused["reason"], "Evicted");
        assert_eq!(refused["message"], "The node had condition: [MemoryPressure]. ");
        assert!(admission_refusal(&burstable, memory).is_none());
        assert_eq!(
            admission_refusal(&burstable, disk).unwrap()["message"],
            "The node had condition: [DiskPressure]. "
        );
        assert!(admission_refusal(&best_effort, Pressure::default()).is_none());
        let tolerating = json!({"spec": {"containers": [{"name": "c"}], "tolerations": [{"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}]}});
        assert!(admission_refusal(&tolerating, memory).is_none());
        let critical = json!({"spec": {"priority": 2_000_001_000, "containers": [{"name": "c"}]}});
        assert!(admission_refusal(&critical, disk).is_none());
    }
}
