//! `skiff-bench pods`: a real node on this host. Time from `kubectl apply` to Ready for 1 and 50
//! pods (image present), the agent's RSS with 0 and 50 pods, and container create+start+delete of
//! one bundle through the agent's shim (libcontainer) against Debian's runc and crun.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use skiff_tests::Control;
use skiff_tests::node::{Node, cluster_cidr, remove_cgroups, unique_prefix};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn stats(v: Vec<f64>) -> Value {
    stats_to(v, 10.0)
}

/// Sample count, p50 and p99 of `v` (ms), rounded to `1 / per_ms` ms.
pub fn stats_to(mut v: Vec<f64>, per_ms: f64) -> Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |p: f64| (percentile(&v, p) * per_ms).round() / per_ms;
    json!({"samples": v.len(), "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
}

/// The test suites' one-node cluster, on release binaries.
struct Cluster {
    // Field order is drop order: the node goes first, while the control plane still answers.
    node: Node,
    control: Control,
}

impl Cluster {
    fn kubectl(&self) -> Command {
        self.control.kubectl_cmd(&[])
    }

    fn pods_on_node(&self) -> usize {
        std::fs::read_dir(self.node.data_dir().join("pods"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Applies `n` pods and returns each one's time to Ready, in ms.
    fn round(&self, n: usize, round: usize) -> anyhow::Result<Vec<f64>> {
        let mut watch = Proc(
            self.kubectl()
                .args(["get", "pods", "-w", "--watch-only", "-o", "json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let stdout = watch.0.stdout.take().context("watch stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
            for pod in stream.flatten() {
                let ready = pod["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                if ready
                    && tx
                        .send((
                            pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                            Instant::now(),
                        ))
                        .is_err()
                {
                    return;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let items: Vec<Value> = (0..n)
            .map(|i| {
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("b{round}-{i}")},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "skiff.local/bench/busybox:1",
                "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}})
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        let t0 = Instant::now();
        let mut apply = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        std::io::Write::write_all(
            &mut apply.stdin.take().context("stdin")?,
            list.to_string().as_bytes(),
        )?;
        if !apply.wait()?.success() {
            bail!("kubectl apply failed");
        }
        let mut ready = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while ready.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let (name, at) = rx
                .recv_timeout(left)
                .context("pods did not become Ready in 120s")?;
            ready.entry(name).or_insert(at);
        }
        Ok(ready
            .values()
            .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0)
            .collect())
    }

    fn delete_all(&self) -> anyhow::Result<()> {
        self.kubectl()
            .args([
                "delete",
                "pods",
                "--all",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ])
            .output()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.pods_on_node() > 0 {
            if Instant::now() > deadline {
                bail!("pods were not cleaned up in 120s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

fn start(control: &Path, agent: &Path, dir: &Path, prefix: &str) -> anyhow::Result<Cluster> {
    let control = Control::start_bin(control, &["--cluster-cidr", &cluster_cidr(prefix)]);
    let node = Node::start_bin(&control, prefix, agent);
    // Imported while the agent runs, as on an air-gapped node.
    let out = Command::new(agent)
        .args([
            "image",
            "import",
            "--name",
            "skiff.local/bench/busybox:1",
            "--data-dir",
        ])
        .arg(node.data_dir())
        .arg(skiff_tests::image::busybox_oci_archive(dir))
        .output()?;
    if !out.status.success() {
        bail!("image import failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Cluster { node, control })
}

fn bundle(dir: &Path, layer_dir: &Path, cgroup: &str) -> anyhow::Result<PathBuf> {
    let b = dir.join("bundle");
    std::fs::create_dir_all(&b)?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(layer_dir)
        .arg(b.join("rootfs"))
        .status()?;
    if !status.success() {
        bail!("copying the rootfs failed");
    }
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["true"], "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}, "noNewPrivileges": true},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": format!("/{cgroup}/CID"), "resources": {}},
    });
    std::fs::write(b.join("config.json.in"), serde_json::to_vec_pretty(&config)?)?;
    Ok(b)
}

/// Points the bundle's cgroup at a fresh path per container (runc and crun insist on unique ones).
fn set_cgroup(b: &Path, id: &str) -> anyhow::Result<()> {
    let t = std::fs::read_to_string(b.join("config.json.in"))?;
    std::fs::write(b.join("config.json"), t.replace("CID", id))?;
    Ok(())
}

fn time_runs(
    n: usize,
    b: &Path,
    mut one: impl FnMut(&str) -> anyhow::Result<()>,
    tag: &str,
) -> anyhow::Result<Value> {
    let mut v = Vec::new();
    for i in 0..n {
        let id = format!("{tag}{i}");
        set_cgroup(b, &id)?;
        let t = Instant::now();
        one(&id)?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(stats(v))
}

/// `skiff-bench crun-loop BUNDLE ROOT N`: crun runs, from inside a private mount namespace whose
/// `/sys/fs/cgroup/unified` the caller covered with a tmpfs (crun refuses hybrid hosts).
pub fn crun_loop(b: &Path, root: &Path, n: usize) -> anyhow::Result<Value> {
    time_runs(
        n,
        b,
        |id| {
            let s = Command::new("crun")
                .arg("--root")
                .arg(root)
                .args(["run", "--bundle"])
                .arg(b)
                .arg(id)
                .stdout(Stdio::null())
                .status()?;
            if !s.success() {
                bail!("crun run failed");
            }
            Ok(())
        },
        "crun",
    )
}

/// The whole benchmark; prints JSON.
pub fn run(control: &Path, agent: &Path, rounds_single: usize, rounds_fifty: usize) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new().prefix("skiff-bench-pods-").tempdir()?;
    let prefix = unique_prefix();
    let cluster = start(control, agent, dir.path(), &prefix)?;
    let agent_pid = cluster.node.pid().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kib(agent_pid);
    let mut single = Vec::new();
    for r in 0..rounds_single {
        single.extend(cluster.round(1, r)?);
        cluster.delete_all()?;
    }
    let mut fifty = Vec::new();
    let mut rss_fifty = 0;
    for r in 0..rounds_fifty {
        fifty.extend(cluster.round(50, 1000 + r)?);
        std::thread::sleep(Duration::from_secs(1));
        rss_fifty = rss_fifty.max(rss_kib(agent_pid));
        cluster.delete_all()?;
    }

    // Runtimes: the same bundle through the shim (as the agent runs it), runc and crun.
    let layers = cluster.node.data_dir().join("images/layers");
    let layer = std::fs::read_dir(&layers)?
        .flatten()
        .next()
        .context("no unpacked layer")?
        .path();
    let b = bundle(dir.path(), &layer, &format!("{prefix}rt"))?;
    let n = 50;
    let shim_root = dir.path().join("shim-root");
    let shim = time_runs(
        n,
        &b,
        |id| {
            let st = dir.path().join("st").join(id);
            let s = Command::new(agent)
                .args(["shim", "--id", id, "--root"])
                .arg(&shim_root)
                .arg("--bundle")
                .arg(&b)
                .arg("--log")
                .arg(dir.path().join("shim.log"))
                .arg("--status-dir")
                .arg(&st)
                .status()?;
            let exited: Value = serde_json::from_slice(&std::fs::read(st.join("exit.json"))?)?;
            if !s.success() || exited["exitCode"] != 0 {
                bail!("shim run failed: {exited}");
            }
            Ok(())
        },
        "shim",
    )?;
    let runc_root = dir.path().join("runc-root");
    let runc = time_runs(
        n,
        &b,
        |id| {
            let s = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--bundle"])
                .arg(&b)
                .arg(id)
                .stdout(Stdio::null())
                .status()?;
            if !s.success() {
                bail!("runc run failed");
            }
            Ok(())
        },
        "runc",
    )?;
    let me = std::env::current_exe()?;
    let script = format!(
        "mount -t tmpfs tmpfs /sys/fs/cgroup/unified && exec {} crun-loop {} {} {n}",
        me.display(),
        b.display(),
        dir.path().join("crun-root").display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()?;
    let crun = if out.status.success() {
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    } else {
        json!({"error": String::from_utf8_lossy(&out.stderr).trim()})
    };
    remove_cgroups(&format!("{prefix}rt"));
    let log = cluster.node.log();
    let cgroups = log
        .lines()
        .find(|l| l.contains("container cgroups"))
        .unwrap_or_default()
        .to_owned();
    drop(cluster);
    Ok(json!({
        "ready_1": stats(single),
        "ready_50": stats(fifty),
        "rss_idle_kib": rss_idle,
        "rss_50_kib": rss_fifty,
        "runtime": {"shim": shim, "runc": runc, "crun": crun},
        "cgroups": cgroups.split_once("cgroups=").map(|(_, v)| v.trim().trim_matches('"')).unwrap_or("unknown"),
    }))
}
