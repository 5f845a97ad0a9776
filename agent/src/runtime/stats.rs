//! Resource usage of the node and its pods, read from cgroups (v2, or v1 `cpuacct` and `memory`)
//! and `/proc` every 10 s, as the kubelet's stats provider: cumulative CPU time, the CPU rate
//! over the last interval, and the memory working set (usage less inactive file pages). Served on
//! the agent's port as the kubelet serves them: `/stats/summary` (the Summary API that
//! metrics-server and the API server's `metrics.k8s.io` read), `/metrics/resource` and
//! `/metrics/cadvisor` (Prometheus' text format, cAdvisor's names).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::cgroups::is_unified;
use super::shim::{EXITED, STARTED};

const ROOT: &str = "/sys/fs/cgroup";

/// How often usage is sampled (the kubelet's housekeeping interval is 10 s too).
const INTERVAL: Duration = Duration::from_secs(10);

/// One reading of a cgroup (or the node).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time used, nanoseconds, cumulative.
    pub cpu_ns: u64,
    /// CPU used over the last interval, nanocores (`None` before a second reading).
    pub nano_cores: Option<u64>,
    /// Memory in use, bytes.
    pub memory: u64,
    /// Memory in use less inactive file pages, bytes (what the OOM killer and eviction look at).
    pub working_set: u64,
}

/// A container's reading.
#[derive(Debug, Clone)]
pub struct ContainerStats {
    /// The container's name in the pod.
    pub name: String,
    /// Its usage.
    pub usage: Usage,
}

/// A pod's reading.
#[derive(Debug, Clone)]
pub struct PodStats {
    /// Namespace, name, uid.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
    /// The whole pod's usage (its cgroup).
    pub usage: Usage,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
}

/// The latest readings.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When they were taken.
    pub at: Option<SystemTime>,
    /// The node.
    pub node: Usage,
    /// Its pods.
    pub pods: Vec<PodStats>,
}

struct Sampler {
    data_dir: PathBuf,
    cgroup_root: String,
    node_name: String,
    latest: Mutex<Snapshot>,
    /// Previous CPU readings by cgroup path (or "" for the node), with when they were taken.
    previous: Mutex<HashMap<String, (u64, SystemTime)>>,
    /// Each pod directory's (namespace, name, uid), read from its `pod.json` once.
    pods: Mutex<HashMap<PathBuf, (String, String, String)>>,
}

static SAMPLER: OnceLock<Arc<Sampler>> = OnceLock::new();

/// Starts sampling every 10 s (the first reading at once).
pub fn start(data_dir: PathBuf, cgroup_root: String, node_name: String) {
    let sampler = Arc::new(Sampler {
        data_dir,
        cgroup_root,
        node_name,
        latest: Mutex::new(Snapshot::default()),
        previous: Mutex::new(HashMap::new()),
        pods: Mutex::new(HashMap::new()),
    });
    if SAMPLER.set(sampler.clone()).is_err() {
        return;
    }
    // In place on the runtime: a few small reads of cgroup files and /proc per pod every 10 s
    // (a thread of its own would cost the agent its stack and a malloc arena).
    tokio::spawn(async move {
        loop {
            sampler.sample();
            tokio::time::sleep(INTERVAL).await;
        }
    });
}

/// The latest readings (empty before the sampler started).
pub fn latest() -> Snapshot {
    SAMPLER
        .get()
        .map(|s| s.latest.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .unwrap_or_default()
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, memory.stat).
fn stat_field(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU nanoseconds and memory (usage, working set) of the cgroup at `rel` (relative path).
fn cgroup_usage(rel: &str) -> Option<(u64, u64, u64)> {
    let rel = rel.trim_start_matches('/');
    if is_unified() {
        let dir = Path::new(ROOT).join(rel);
        let cpu = stat_field(&dir.join("cpu.stat"), "usage_usec")? * 1000;
        let memory = read_u64(&dir.join("memory.current")).unwrap_or(0);
        let inactive = stat_field(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
        return Some((cpu, memory, memory.saturating_sub(inactive)));
    }
    let cpu = read_u64(&Path::new(ROOT).join("cpuacct").join(rel).join("cpuacct.usage"))?;
    let mem = Path::new(ROOT).join("memory").join(rel);
    let memory = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
    let inactive = stat_field(&mem.join("memory.stat"), "total_inactive_file").unwrap_or(0);
    Some((cpu, memory, memory.saturating_sub(inactive)))
}

/// The node's CPU nanoseconds (busy time of every CPU, from `/proc/stat`) and memory (total less
/// available: what `free` calls used, the kubelet's node working set).
fn node_usage() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    let ticks = rustix::param::clock_ticks_per_second();
    let cpu_ns = busy.saturating_mul(1_000_000_000) / ticks.max(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    let used = kib("MemTotal:").saturating_sub(kib("MemAvailable:"));
    Some((cpu_ns, used, used))
}

impl Sampler {
    /// A usage from a reading, with the rate since the previous reading of `key`.
    fn usage(&self, key: &str, (cpu_ns, memory, working_set): (u64, u64, u64), now: SystemTime) -> Usage {
        let mut previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        let nano_cores = previous.get(key).and_then(|(before, at)| {
            let elapsed = now.duration_since(*at).ok()?.as_nanos() as u64;
            (elapsed > 0 && cpu_ns >= *before)
                .then(|| ((cpu_ns - before) as u128 * 1_000_000_000 / elapsed as u128) as u64)
        });
        previous.insert(key.to_owned(), (cpu_ns, now));
        Usage {
            cpu_ns,
            nano_cores,
            memory,
            working_set,
        }
    }

    /// The pod directories under the data directory with each one's (namespace, name, uid), read
    /// from its `pod.json` once and forgotten when the directory is gone.
    fn pod_dirs(&self) -> Vec<(PathBuf, (String, String, String))> {
        let mut known = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = Vec::new();
        for entry in std::fs::read_dir(self.data_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = entry.path();
            if !known.contains_key(&dir) {
                let Some(pod) = std::fs::read(dir.join("pod.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                else {
                    continue;
                };
                let field = |f: &str| pod["metadata"][f].as_str().unwrap_or_default().to_owned();
                known.insert(dir.clone(), (field("namespace"), field("name"), field("uid")));
            }
            present.push(dir);
        }
        known.retain(|dir, _| present.contains(dir));
        present
            .into_iter()
            .filter_map(|dir| {
                let id = known.get(&dir).cloned()?;
                Some((dir, id))
            })
            .collect()
    }

    fn sample(&self) {
        let now = SystemTime::now();
        let node = node_usage().map(|u| self.usage("", u, now)).unwrap_or_default();
        let mut pods = Vec::new();
        let mut seen = Vec::new();
        for (dir, (namespace, name, uid)) in self.pod_dirs() {
            let pod_cgroup = format!("/{}/pod{uid}", self.cgroup_root);
            let Some(reading) = cgroup_usage(&pod_cgroup) else {
                continue;
            };
            seen.push(pod_cgroup.clone());
            let mut containers = Vec::new();
            for (name, id) in running_containers(&dir) {
                let path = format!("{pod_cgroup}/{id}");
                if let Some(r) = cgroup_usage(&path) {
                    containers.push(ContainerStats {
                        name,
                        usage: self.usage(&path, r, now),
                    });
                    seen.push(path);
                }
            }
            containers.sort_by(|a, b| a.name.cmp(&b.name));
            pods.push(PodStats {
                namespace,
                name,
                uid,
                usage: self.usage(&pod_cgroup, reading, now),
                containers,
            });
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        // Forget cgroups that are gone.
        self.previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.is_empty() || seen.contains(k));
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Snapshot {
            at: Some(now),
            node,
            pods,
        };
    }
}

/// The running containers of the pod whose directory is `dir`: (name, runtime id).
fn running_containers(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in std::fs::read_dir(dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let latest = std::fs::read_dir(c.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|a| a.file_name().to_string_lossy().parse::<u32>().ok())
            .max();
        let Some(latest) = latest else { continue };
        let attempt = c.path().join(latest.to_string());
        let status = attempt.join("status");
        if !status.join(STARTED).exists() || status.join(EXITED).exists() {
            continue;
        }
        if let Ok(id) = std::fs::read_to_string(attempt.join("id")) {
            out.push((c.file_name().to_string_lossy().into_owned(), id.trim().to_owned()));
        }
    }
    out
}

fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn usage_json(u: &Usage, at: &str) -> (Value, Value) {
    let mut cpu = json!({"time": at, "usageCoreNanoSeconds": u.cpu_ns});
    if let Some(n) = u.nano_cores {
        cpu["usageNanoCores"] = json!(n);
    }
    let memory = json!({"time": at, "usageBytes": u.memory, "workingSetBytes": u.working_set});
    (cpu, memory)
}

/// How many pods have their cgroup and how many containers run, read now (not from the last
/// sample: the kubelet's gauges follow its runtime cache, refreshed every second).
pub fn running() -> (usize, usize) {
    let Some(sampler) = SAMPLER.get() else {
        return (0, 0);
    };
    let mut counts = (0, 0);
    for (dir, (_, _, uid)) in sampler.pod_dirs() {
        if cgroup_usage(&format!("/{}/pod{uid}", sampler.cgroup_root)).is_some() {
            counts.0 += 1;
            counts.1 += running_containers(&dir).len();
        }
    }
    counts
}

/// The Summary API's document (`/stats/summary`).
pub fn summary() -> Value {
    let snap = latest();
    let at = snap.at.map(rfc3339).unwrap_or_default();
    let node_name = SAMPLER.get().map(|s| s.node_name.clone()).unwrap_or_default();
    let (cpu, memory) = usage_json(&snap.node, &at);
    let pods: Vec<Value> = snap
        .pods
        .iter()
        .map(|p| {
            let (cpu, memory) = usage_json(&p.usage, &at);
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(|c| {
                    let (cpu, memory) = usage_json(&c.usage, &at);
                    json!({"name": c.name, "startTime": at, "cpu": cpu, "memory": memory})
                })
                .collect();
            json!({"podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                "startTime": at, "containers": containers, "cpu": cpu, "memory": memory})
        })
        .collect();
    json!({"node": {"nodeName": node_name, "startTime": at, "cpu": cpu, "memory": memory}, "pods": pods})
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `/metrics/resource` (the kubelet's resource metrics, timestamped) or `/metrics/cadvisor`
/// (cAdvisor's container metrics) in Prometheus' text format.
pub fn prometheus(resource: bool) -> String {
    let snap = latest();
    let ms = snap
        .at
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let stamp = if resource { format!(" {ms}") } else { String::new() };
    let mut out = String::new();
    let family = |out: &mut String, name: &str, help: &str, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    if resource {
        family(
            &mut out,
            "node_cpu_usage_seconds_total",
            "Cumulative cpu time consumed by the node in core-seconds",
            "counter",
        );
        let _ = writeln!(
            out,
            "node_cpu_usage_seconds_total {}{stamp}",
            snap.node.cpu_ns as f64 / 1e9
        );
        family(
            &mut out,
            "node_memory_working_set_bytes",
            "Current working set of the node in bytes",
            "gauge",
        );
        let _ = writeln!(
            out,
            "node_memory_working_set_bytes {}{stamp}",
            snap.node.working_set
        );
        family(
            &mut out,
            "pod_cpu_usage_seconds_total",
            "Cumulative cpu time consumed by the pod in core-seconds",
            "counter",
        );
        for p in &snap.pods {
            let _ = writeln!(
                out,
                "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {}{stamp}",
                escape(&p.namespace),
                escape(&p.name),
                p.usage.cpu_ns as f64 / 1e9
            );
        }
        family(
            &mut out,
            "pod_memory_working_set_bytes",
            "Current working set of the pod in bytes",
            "gauge",
        );
        for p in &snap.pods {
            let _ = writeln!(
                out,
                "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {}{stamp}",
                escape(&p.namespace),
                escape(&p.name),
                p.usage.working_set
            );
        }
    }
    let help = if resource {
        "Cumulative cpu time consumed by the container in core-seconds"
    } else {
        "Cumulative cpu time consumed in seconds."
    };
    family(&mut out, "container_cpu_usage_seconds_total", help, "counter");
    for p in &snap.pods {
        for c in &p.containers {
            let _ = writeln!(
                out,
                "container_cpu_usage_seconds_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {}{stamp}",
                escape(&c.name),
                escape(&p.namespace),
                escape(&p.name),
                c.usage.cpu_ns as f64 / 1e9
            );
        }
    }
    let help = if resource {
        "Current working set of the container in bytes"
    } else {
        "Current working set in bytes."
    };
    family(&mut out, "container_memory_working_set_bytes", help, "gauge");
    for p in &snap.pods {
        for c in &p.containers {
            let _ = writeln!(
                out,
                "container_memory_working_set_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {}{stamp}",
                escape(&c.name),
                escape(&p.namespace),
                escape(&p.name),
                c.usage.working_set
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_rate_is_the_difference_over_the_interval() {
        let s = Sampler {
            data_dir: PathBuf::new(),
            cgroup_root: String::new(),
            node_name: String::new(),
            latest: Mutex::new(Snapshot::default()),
            previous: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let first = s.usage("c", (1_000_000_000, 10, 8), t0);
        assert_eq!(first.nano_cores, None);
        // Half a core for 10 s: 5 s of CPU.
        let second = s.usage("c", (6_000_000_000, 10, 8), t0 + Duration::from_secs(10));
        assert_eq!(second.nano_cores, Some(500_000_000));
        assert_eq!((second.memory, second.working_set), (10, 8));
    }

    #[test]
    fn the_node_reads_its_cpu_and_memory() {
        let (cpu, used, working) = node_usage().expect("/proc/stat and /proc/meminfo");
        assert!(cpu > 0 && used > 0 && used == working);
    }
}
