//! `skiff-bench peers-node --control PATH --agent PATH --etcd PATH --upstream-bin DIR [--rounds N]`:
//! a node on this host, Skiff's against upstream's, each with its own control plane, in one run.
//! Skiff: `skiff-control` and `skiff-agent` (its shims included). Upstream: kube-apiserver over
//! etcd 3.4 with kube-scheduler and kube-controller-manager (as `peers-api` runs them), and a
//! node of `kubelet` 1.20 (DIR) on Debian's `containerd` 1.6 with `runc` and its
//! `containerd-shim-runc-v2` per pod, the pause image built from upstream's `pause.c` (DIR/pause),
//! pods wired by the CNI `bridge` plugin (Debian's `containernetworking-plugins`).
//!
//! Each side, fresh per round and in alternating order: the time from starting every process to
//! the Node Ready and to a first pod Running (submitted as soon as the API takes it), then pods
//! applied one at a time and 50 at once, apply → Ready as a watch sees it, and the node's memory
//! with the 50 pods as PSS summed over every process the node side runs (the agent and its
//! shims; kubelet, containerd, its shims and the pause containers), the pods' own `sleep`s left
//! out on both sides. Both nodes get the same busybox image, imported beforehand.
//!
//! Upstream's node touches the host as a kubelet does; everything it makes is ours and is undone
//! when its side ends, on failure too: its cgroups live under a cgroup root of its own, its pods'
//! network under a bridge of its own (`skpeer0`, 10.250.0.0/24, no masquerade), its network
//! namespaces are the ones that appeared under /run/netns while it ran, the host paths kubelet
//! and containerd hard-code (`/var/log/pods`, `/var/log/containers`, `/run/containerd`) are
//! removed if they did not exist before, and the kernel settings kubelet writes at its start
//! (`vm.overcommit_memory`, `kernel.panic`, `kernel.panic_on_oops`, ...) are restored. kubelet's
//! iptables chains are off (`--make-iptables-util-chains=false`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use skiff_tests::Control;
use skiff_tests::node::{Node, cluster_cidr, remove_cgroups, unique_prefix};

use super::peers::{Running, pss_kib, upstream};
use super::{HttpsClient, Killed, free_port, https_client, pods::stats_to};

/// The image both nodes run, and upstream's sandbox (pause) image.
const IMAGE: &str = "skiff.local/bench/busybox:1";
const PAUSE: &str = "skiff.local/bench/pause:1";
/// Upstream's pod bridge and its subnet (Skiff's test clusters use 10.128-247.0.0/16).
const BRIDGE: &str = "skpeer0";
const SUBNET: &str = "10.250.0.0/24";
/// Kernel settings kubelet writes at its start unless told to refuse to run.
const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// Host paths kubelet and containerd use whatever they are told.
const HOST_PATHS: [&str; 3] = ["/var/log/pods", "/var/log/containers", "/run/containerd"];

fn wait_for<T>(what: &str, patience: Duration, mut probe: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what} within {patience:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Every process: (pid, parent pid, comm, NUL-separated command line).
fn processes() -> Vec<(u32, u32, String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        out.push((pid, ppid, comm, String::from_utf8_lossy(&cmdline).into_owned()));
    }
    out
}

/// One side's node, running, with what the measurements need.
trait NodeSide {
    fn system(&self) -> &'static str;
    fn kubeconfig(&self) -> PathBuf;
    /// Every process the node side runs (not the pods' own), for its memory.
    fn node_pids(&self) -> Vec<u32>;
    /// Whether the node has torn down every pod.
    fn idle(&self) -> bool;
}

struct SkiffNode {
    // Field order is drop order: the node goes first, while the control plane still answers.
    node: Node,
    control: Control,
    agent: PathBuf,
}

impl NodeSide for SkiffNode {
    fn system(&self) -> &'static str {
        "skiff"
    }

    fn kubeconfig(&self) -> PathBuf {
        self.control.kubeconfig()
    }

    fn node_pids(&self) -> Vec<u32> {
        // The agent and what it re-executes (shims, the sandbox helper): its own binary.
        processes()
            .into_iter()
            .filter(|(pid, ..)| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == self.agent)
            })
            .map(|(pid, ..)| pid)
            .collect()
    }

    fn idle(&self) -> bool {
        std::fs::read_dir(self.node.data_dir().join("pods")).map_or(true, |d| d.count() == 0)
    }
}

/// kubelet on containerd, and everything they made on the host, undone when dropped.
struct UpstreamNode {
    // Field order is drop order: kubelet, then containerd, then the control plane.
    kubelet: Option<Killed>,
    containerd: Option<Killed>,
    control: Running,
    dir: PathBuf,
    cgroup_root: String,
    sysctls: Vec<(&'static str, String)>,
    netns_before: Vec<String>,
    host_paths_before: Vec<bool>,
    _dir: tempfile::TempDir,
}

impl UpstreamNode {
    fn socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    /// This containerd's shims.
    fn shims(&self) -> Vec<u32> {
        let sock = self.socket().display().to_string();
        processes()
            .into_iter()
            .filter(|(_, _, comm, cmd)| comm.starts_with("containerd-shim") && cmd.contains(&sock))
            .map(|(pid, ..)| pid)
            .collect()
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.socket()).args(["-n", "k8s.io"]);
        c
    }
}

impl NodeSide for UpstreamNode {
    fn system(&self) -> &'static str {
        "upstream"
    }

    fn kubeconfig(&self) -> PathBuf {
        self.control.kubeconfig.clone()
    }

    fn node_pids(&self) -> Vec<u32> {
        let shims = self.shims();
        let mut pids: Vec<u32> = [&self.kubelet, &self.containerd]
            .into_iter()
            .flatten()
            .map(|k| k.0.id())
            .collect();
        // The pause containers: the shims' children running `pause`.
        pids.extend(
            processes()
                .into_iter()
                .filter(|(_, ppid, comm, _)| comm == "pause" && shims.contains(ppid))
                .map(|(pid, ..)| pid),
        );
        pids.extend(shims);
        pids
    }

    fn idle(&self) -> bool {
        self.shims().is_empty()
    }
}

impl Drop for UpstreamNode {
    fn drop(&mut self) {
        // kubelet first, so it starts nothing more; then every container and shim of this
        // containerd (a clean round left none), then containerd.
        drop(self.kubelet.take());
        let cgroups = Path::new("/sys/fs/cgroup/pids").join(&self.cgroup_root);
        for _ in 0..50 {
            let mut left = self.shims();
            left.extend(cgroup_procs(&cgroups));
            if left.is_empty() {
                break;
            }
            let _ = Command::new("kill")
                .arg("-9")
                .args(left.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .output();
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(self.containerd.take());
        // Mounts containerd and kubelet left under the node's directory (rootfs, shm, secret
        // volumes) and the pods' network namespaces.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        ours.reverse();
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
        for ns in netns_names() {
            if !self.netns_before.contains(&ns) && ns.starts_with("cni-") {
                let _ = Command::new("ip").args(["netns", "delete", &ns]).output();
            }
        }
        let _ = Command::new("ip").args(["link", "delete", BRIDGE]).output();
        remove_cgroups(&self.cgroup_root);
        for (path, existed) in HOST_PATHS.iter().zip(&self.host_paths_before) {
            if !existed {
                let _ = std::fs::remove_dir_all(path);
            }
        }
        for (key, value) in &self.sysctls {
            let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
        }
    }
}

fn cgroup_procs(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|p| p.parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(cgroup_procs(&e.path()));
        }
    }
    out
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect()
}

/// A cgroup `name` in every v1 hierarchy (kubelet insists its root exists), cpuset's filled in
/// from the root's as a new cpuset is empty.
fn make_cgroup_root(name: &str) -> anyhow::Result<()> {
    for e in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let path = e.path();
        if !e.file_type()?.is_dir() || path.join(name).exists() {
            continue;
        }
        std::fs::create_dir(path.join(name))
            .with_context(|| format!("creating {}", path.join(name).display()))?;
        if e.file_name() == "cpuset" {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                std::fs::write(path.join(name).join(f), std::fs::read(path.join(f))?)?;
            }
        }
    }
    Ok(())
}

fn import_image(mut cmd: Command, archive: &Path, name: &str) -> anyhow::Result<()> {
    let base = name.rsplit_once(':').map_or(name, |(b, _)| b);
    ok(cmd.args(["images", "import", "--base-name", base]).arg(archive))
}

/// Upstream's control plane and node, started together as a cluster's would be.
fn start_upstream(
    etcd: &Path,
    bin: &Path,
    images: &Path,
    prefix: &str,
) -> anyhow::Result<(UpstreamNode, Instant)> {
    let tmp = tempfile::Builder::new()
        .prefix("skiff-bench-kubelet-")
        .tempdir()?;
    let dir = tmp.path().to_owned();
    let cgroup_root = format!("{prefix}-kubelet");
    let sysctls = KUBELET_SYSCTLS
        .iter()
        .map(|k| {
            std::fs::read_to_string(Path::new("/proc/sys").join(k))
                .map(|v| (*k, v.trim().to_owned()))
                .with_context(|| format!("reading {k}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let host_paths_before = HOST_PATHS.iter().map(|p| Path::new(p).exists()).collect();
    std::fs::create_dir_all(dir.join("cni"))?;
    std::fs::write(
        dir.join("cni/10-bench.conflist"),
        json!({"cniVersion": "0.4.0", "name": "bench", "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": dir.join("cni-ipam")},
        }]})
        .to_string(),
    )?;
    let config = format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{d}/containerd/containerd.sock"
[ttrpc]
  address = "{d}/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  # Containers' oom_score_adj no lower than containerd's own: lowering it takes
  # CAP_SYS_RESOURCE, which a node in a VM or container may lack (this one does).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#,
        d = dir.display()
    );
    std::fs::write(dir.join("containerd.toml"), config)?;
    make_cgroup_root(&cgroup_root)?;
    let netns_before = netns_names();

    let started = Instant::now();
    let control = upstream(etcd, bin, &[], &[])?;
    let containerd_log = std::fs::File::create(dir.join("containerd.log"))?;
    let mut node = UpstreamNode {
        kubelet: None,
        containerd: Some(Killed(
            Command::new("containerd")
                .arg("--config")
                .arg(dir.join("containerd.toml"))
                .stdout(containerd_log.try_clone()?)
                .stderr(containerd_log)
                .spawn()
                .context("starting containerd (apt-get install containerd)")?,
        )),
        control,
        dir: dir.clone(),
        cgroup_root,
        sysctls,
        netns_before,
        host_paths_before,
        _dir: tmp,
    };
    wait_for("containerd's socket", Duration::from_secs(30), || {
        node.socket().exists().then_some(())
    })?;
    wait_for("the admin kubeconfig", Duration::from_secs(30), || {
        node.control.kubeconfig.exists().then_some(())
    })?;
    let kubelet_log = std::fs::File::create(dir.join("kubelet.log"))?;
    let sock = format!("unix://{}", node.socket().display());
    node.kubelet = Some(Killed(
        Command::new(bin.join("kubelet"))
            .arg(format!("--kubeconfig={}", node.control.kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
            .arg(format!(
                "--volume-plugin-dir={}",
                dir.join("kubelet/volume-plugins").display()
            ))
            .arg(format!("--container-runtime-endpoint={sock}"))
            .arg(format!("--containerd={}", node.socket().display()))
            .arg(format!("--cgroup-root=/{}", node.cgroup_root))
            .arg(format!("--hostname-override={prefix}-kubelet"))
            .arg(format!("--port={}", free_port()?))
            .args([
                "--container-runtime=remote",
                "--cgroup-driver=cgroupfs",
                "--address=127.0.0.1",
                "--read-only-port=0",
                "--healthz-port=0",
                "--fail-swap-on=false",
                "--make-iptables-util-chains=false",
                // As Skiff's test nodes: a build machine's nearly full disk would put the node
                // under disk pressure, and image GC would remove the imported image.
                "--eviction-hard=memory.available<100Mi",
                "--image-gc-high-threshold=100",
                "--image-gc-low-threshold=99",
                "--v=0",
            ])
            .stdout(kubelet_log.try_clone()?)
            .stderr(kubelet_log)
            .spawn()
            .context("starting kubelet")?,
    ));
    import_image(node.ctr(), &images.join("pause.tar"), PAUSE)?;
    import_image(node.ctr(), &images.join("busybox.tar"), IMAGE)?;
    Ok((node, started))
}

/// Skiff's control plane and node, started as the test suites start them.
fn start_skiff(
    control: &Path,
    agent: &Path,
    images: &Path,
    prefix: &str,
) -> anyhow::Result<(SkiffNode, Instant)> {
    let started = Instant::now();
    let c = Control::start_bin(control, &["--cluster-cidr", &cluster_cidr(prefix)]);
    let node = Node::start_bin(&c, prefix, agent);
    let out = Command::new(agent)
        .args(["image", "import", "--name", IMAGE, "--data-dir"])
        .arg(node.data_dir())
        .arg(images.join("busybox.tar"))
        .output()?;
    if !out.status.success() {
        bail!("image import failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((
        SkiffNode {
            node,
            control: c,
            agent: std::fs::canonicalize(agent)?,
        },
        started,
    ))
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": IMAGE,
        "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}})
}

/// Pods of the default namespace as a watch sees them: name, Running, Ready, when.
async fn watch_pods(
    kubeconfig: &Path,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<((String, bool, bool), Instant)>> {
    super::peers::watch_default_pods(kubeconfig, |pod| {
        let running = pod["status"]["phase"] == "Running";
        let ready = pod["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        Some((name, running, ready))
    })
    .await
}

async fn request(
    client: &HttpsClient,
    req: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> anyhow::Result<(u16, Value)> {
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn get(client: &HttpsClient, url: &str) -> anyhow::Result<Value> {
    let (status, v) = request(client, hyper::Request::get(url).body(Default::default())?).await?;
    if status != 200 {
        bail!("GET {url} returned {status}");
    }
    Ok(v)
}

/// Creates `pod`, retrying while the API refuses it for want of what a fresh cluster makes in
/// its first seconds (the default ServiceAccount and its token).
async fn create_pod(client: &HttpsClient, server: &str, pod: &Value) -> anyhow::Result<()> {
    let url = format!("{server}/api/v1/namespaces/default/pods");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let req = hyper::Request::post(&url)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(pod.to_string())))?;
        let answer = request(client, req).await;
        if answer.as_ref().is_ok_and(|(status, _)| *status == 201) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("creating {} failed: {answer:?}", pod["metadata"]["name"]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `names` to be seen Ready (or only Running, with `running`); when each was.
async fn seen(
    watch: &mut tokio::sync::mpsc::UnboundedReceiver<((String, bool, bool), Instant)>,
    names: &[String],
    running: bool,
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut at = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while at.len() < names.len() {
        let ((name, is_running, is_ready), when) = tokio::time::timeout_at(deadline, watch.recv())
            .await
            .context("pods did not become Ready in 300 s")?
            .context("the pod watch ended")?;
        if (if running { is_running } else { is_ready }) && names.contains(&name) {
            at.entry(name).or_insert(when);
        }
    }
    Ok(at)
}

/// Deletes every pod of the default namespace at once and waits until the node has torn them
/// all down.
async fn delete_all(side: &dyn NodeSide, client: &HttpsClient, server: &str) -> anyhow::Result<()> {
    let url = format!("{server}/api/v1/namespaces/default/pods");
    let list = get(client, &url).await?;
    for p in list["items"].as_array().into_iter().flatten() {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let req =
            hyper::Request::delete(format!("{url}/{name}?gracePeriodSeconds=0")).body(Default::default())?;
        request(client, req).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = get(client, &url).await?["items"].as_array().map_or(0, Vec::len);
        if left == 0 && side.idle() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{}: pods were not torn down in 180 s", side.system());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One side's round: start to node Ready and first pod Running, pods one at a time and 50 at
/// once, the node's memory with 50.
async fn side_round(
    side: &dyn NodeSide,
    started: Instant,
    singles: usize,
    round: usize,
) -> anyhow::Result<Value> {
    super::wait_ready(&side.kubeconfig(), Duration::from_secs(120)).await?;
    let (client, server) = https_client(&side.kubeconfig())?;
    // The node Ready, and a first pod submitted as soon as the API takes it.
    let first = format!("first-{round}");
    let mut watch = watch_pods(&side.kubeconfig()).await?;
    create_pod(&client, &server, &pod(&first)).await?;
    let mut node_ready = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while node_ready.is_none() {
        let nodes = get(&client, &format!("{server}/api/v1/nodes")).await?;
        let ready = nodes["items"].as_array().into_iter().flatten().any(|n| {
            n["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        });
        if ready {
            node_ready = Some(started.elapsed());
        } else if Instant::now() > deadline {
            bail!("{}: no node Ready in 300 s", side.system());
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let first_running =
        seen(&mut watch, std::slice::from_ref(&first), true).await?[&first].duration_since(started);
    delete_all(side, &client, &server).await?;

    let mut one = Vec::new();
    for i in 0..singles {
        let name = format!("one-{round}-{i}");
        let t0 = Instant::now();
        create_pod(&client, &server, &pod(&name)).await?;
        let at = seen(&mut watch, std::slice::from_ref(&name), false).await?;
        one.push(at[&name].duration_since(t0).as_secs_f64() * 1000.0);
        delete_all(side, &client, &server).await?;
    }

    let names: Vec<String> = (0..50).map(|i| format!("fifty-{round}-{i}")).collect();
    let t0 = Instant::now();
    let creates: Vec<_> = names
        .iter()
        .map(|n| {
            let (client, server, p) = (client.clone(), server.clone(), pod(n));
            tokio::spawn(async move { create_pod(&client, &server, &p).await })
        })
        .collect();
    for c in creates {
        c.await??;
    }
    let at = seen(&mut watch, &names, false).await?;
    let fifty: Vec<f64> = at
        .values()
        .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0)
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids = side.node_pids();
    let pss: u64 = pids.iter().filter_map(|p| pss_kib(*p).ok()).sum();
    delete_all(side, &client, &server).await?;
    Ok(json!({
        "system": side.system(), "round": round,
        "node_ready_ms": node_ready.map_or(0, |d| d.as_millis() as u64),
        "first_pod_running_ms": first_running.as_millis() as u64,
        "ready_1": stats_to(one.clone(), 10.0), "ready_50": stats_to(fifty.clone(), 10.0),
        "ready_1_ms": tenths(one), "ready_50_ms": tenths(fifty),
        "node_pss_50_kib": pss, "node_processes_50": pids.len(),
    }))
}

/// Milliseconds to a tenth, for the raw samples in the output.
fn tenths(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|ms| (ms * 10.0).round() / 10.0).collect()
}

/// `rounds` rounds of both nodes (of `systems`: `skiff`, `upstream`), the first side
/// alternating; `singles` one-pod applies each.
pub async fn node(
    control: &Path,
    agent: &Path,
    etcd: &Path,
    bin: &Path,
    rounds: usize,
    singles: usize,
    systems: &[String],
) -> anyhow::Result<Value> {
    let images = tempfile::Builder::new().prefix("skiff-bench-images-").tempdir()?;
    let busybox = skiff_tests::image::busybox_oci_archive(images.path());
    std::fs::rename(busybox, images.path().join("busybox.tar"))?;
    let pause =
        std::fs::read(bin.join("pause")).context("the pause binary (cargo xtask bench peers builds it)")?;
    skiff_tests::image::busybox_oci_archive_as(
        images.path(),
        "pause.tar",
        &[],
        &[("usr/local/bin/pause", &pause)],
        &["/usr/local/bin/pause"],
    );
    let mut out = Vec::new();
    for round in 0..rounds {
        for skiff_first in [round % 2 == 0, round % 2 != 0] {
            let system = if skiff_first { "skiff" } else { "upstream" };
            if !systems.iter().any(|s| s == system) {
                continue;
            }
            let prefix = unique_prefix();
            let v = if skiff_first {
                let (side, started) =
                    tokio::task::block_in_place(|| start_skiff(control, agent, images.path(), &prefix))?;
                let v = side_round(&side, started, singles, round).await;
                tokio::task::block_in_place(|| drop(side));
                v?
            } else {
                let (side, started) =
                    tokio::task::block_in_place(|| start_upstream(etcd, bin, images.path(), &prefix))?;
                let v = side_round(&side, started, singles, round).await;
                if v.is_err() {
                    for name in ["kubelet", "containerd"] {
                        let log =
                            std::fs::read_to_string(side.dir.join(format!("{name}.log"))).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(30).collect();
                        eprintln!(
                            "{name}'s log ends:\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        );
                    }
                }
                tokio::task::block_in_place(|| drop(side));
                v?
            };
            eprintln!("{}", serde_json::to_string(&v)?);
            out.push(v);
        }
    }
    Ok(json!(out))
}
