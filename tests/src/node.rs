//! A real node: `skiff-agent` joined to a [`Control`], running pods on this host with its own bridge,
//! cgroup subtree and pod CIDR, all named with a prefix unique to the test, and removed on drop.

use crate::BoundedOutput;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Control;
use crate::image::Registry;

/// The `skiff-agent` binary under test.
pub fn agent_bin() -> PathBuf {
    crate::control_bin().with_file_name("skiff-agent")
}

/// The previous release's version (`xtask/previous-release`) and its agent, which `cargo xtask
/// test` builds from the release's commit into `target/previous/VERSION/skiff-agent`.
pub fn previous_release_agent() -> (String, PathBuf) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = std::fs::read_to_string(root.join("xtask/previous-release"))
        .expect("xtask/previous-release names the previous release");
    let version = release.split_whitespace().next().unwrap_or_default().to_owned();
    let agent = root.join("target/previous").join(&version).join("skiff-agent");
    assert!(
        agent.exists(),
        "{} is missing: `cargo xtask test` builds the previous release's agent",
        agent.display()
    );
    (version, agent)
}

/// A prefix for host objects that no other test (or run) uses at the same time.
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("sk{:x}{n}", std::process::id() % 0xfffff)
}

/// The pod CIDR range handed to a test's control plane: a /16 inside 10.128.0.0/9 picked from the
/// prefix, so concurrent tests do not share addresses.
pub fn cluster_cidr(prefix: &str) -> String {
    let h = prefix
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("10.{}.0.0/16", 128 + h % 120)
}

/// How a node implements Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// eBPF socket hooks on the node's pods cgroup, maps pinned on the node's own bpffs.
    Ebpf,
    /// The `inet skiff` nftables table in the node's network namespace.
    Nftables,
}

impl Proxy {
    /// The agent's `--proxy-mode` value.
    pub fn flag(self) -> &'static str {
        match self {
            Proxy::Ebpf => "ebpf",
            Proxy::Nftables => "nftables",
        }
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Node {
    bin: PathBuf,
    child: Option<Child>,
    /// The node's name.
    pub name: String,
    /// Prefix of everything it creates on the host.
    pub prefix: String,
    dir: tempfile::TempDir,
    port: u16,
    server: String,
    token: String,
    kubeconfig: PathBuf,
    proxy: Proxy,
    /// The network namespace (under /run/netns) holding the node's network, if it has its own.
    netns: Option<String>,
    /// The address the node reports (`InternalIP`).
    pub ip: String,
    /// The loopback port the node's DNS forwards other names to (nothing answers unless a test
    /// starts a resolver there; queries never leave the host).
    pub dns_upstream_port: u16,
    /// `--eviction-hard`.
    eviction_hard: String,
}

/// The test agents' hard eviction thresholds: memory only. Upstream's disk thresholds
/// (`nodefs.available<10%`, `imagefs.available<15%`) would put every test node under disk
/// pressure on a build machine whose disk is nearly full, refusing every pod.
pub const EVICTION_HARD: &str = "memory.available<100Mi";

impl Node {
    /// Starts an agent joined to `control` (whose `--cluster-cidr` must be set).
    pub fn start(control: &Control, prefix: &str) -> Node {
        Self::start_bin(control, prefix, &agent_bin())
    }

    /// Starts the `skiff-agent` binary `bin` (a release build, for benchmarks) as [`Node::start`].
    pub fn start_bin(control: &Control, prefix: &str, bin: &Path) -> Node {
        Self::start_full(control, prefix, bin, Proxy::Ebpf, None, EVICTION_HARD)
    }

    /// Starts an agent whose network (bridge, pods, routes, nftables) lives in a network namespace
    /// of its own, `<prefix>-n`, with services through `proxy`.
    pub fn start_in_netns(control: &Control, prefix: &str, proxy: Proxy) -> Node {
        Self::start_full(control, prefix, &agent_bin(), proxy, Some(None), EVICTION_HARD)
    }

    /// Starts an agent in a network namespace of its own that is wired to `fabric`, whose
    /// address there it reports as its `InternalIP` (which the control plane cannot reach: it
    /// talks to the agent through the agent's tunnel).
    pub fn start_on_fabric(control: &Control, prefix: &str, proxy: Proxy, fabric: &Fabric) -> Node {
        Self::start_full(
            control,
            prefix,
            &agent_bin(),
            proxy,
            Some(Some(fabric)),
            EVICTION_HARD,
        )
    }

    /// Starts an agent as [`Node::start`] with the hard eviction thresholds `thresholds`.
    pub fn start_with_eviction_hard(control: &Control, prefix: &str, thresholds: &str) -> Node {
        Self::start_full(control, prefix, &agent_bin(), Proxy::Ebpf, None, thresholds)
    }

    /// `netns`: `None` for the host's network, `Some(None)` for a namespace of its own,
    /// `Some(Some(fabric))` for one wired to `fabric`.
    fn start_full(
        control: &Control,
        prefix: &str,
        bin: &Path,
        proxy: Proxy,
        netns: Option<Option<&Fabric>>,
        eviction_hard: &str,
    ) -> Node {
        let token = std::fs::read_to_string(control.data_dir().join("node-token")).expect("node-token");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-agent-"))
            .tempdir()
            .expect("tempdir");
        // The node's BPF filesystem: its own mount, so pins never touch the host's /sys/fs/bpf.
        let bpffs = dir.path().join("bpffs");
        std::fs::create_dir_all(&bpffs).expect("bpffs dir");
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs)
            .bounded_output()
            .expect("running mount");
        assert!(
            mounted.status.success(),
            "mounting a BPF filesystem for the node (needs root): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        let mut node = Node {
            bin: bin.to_owned(),
            child: None,
            name: format!("{prefix}-node"),
            prefix: prefix.to_string(),
            dir,
            port: crate::free_port(),
            server: control.url(),
            token: token.trim().to_string(),
            kubeconfig: control.kubeconfig(),
            proxy,
            netns: None,
            ip: "127.0.0.1".into(),
            dns_upstream_port: crate::free_port(),
            eviction_hard: eviction_hard.to_owned(),
        };
        if let Some(fabric) = netns {
            let name = format!("{prefix}-n");
            let added = Command::new("ip")
                .args(["netns", "add", &name])
                .bounded_output()
                .expect("running ip");
            assert!(
                added.status.success(),
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&added.stderr)
            );
            node.netns = Some(name);
            node.ok_in_netns(&["ip", "link", "set", "lo", "up"]);
            if let Some(fabric) = fabric {
                node.ip = fabric.attach(node.netns.as_deref().unwrap_or_default());
            }
        }
        node.launch();
        node.wait_ready();
        node
    }

    /// The agent's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Where the node's service proxy pins its eBPF maps (`services_v1`, `backends_v1`, ...).
    pub fn bpf_dir(&self) -> PathBuf {
        self.dir.path().join("bpffs/skiff")
    }

    /// The cgroup2 directory of the node's pods, where its socket hooks are attached (`unified/`
    /// on a hybrid host such as this one).
    pub fn pods_cgroup2(&self) -> PathBuf {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            root.join(&self.prefix)
        } else {
            root.join("unified").join(&self.prefix)
        }
    }

    /// A command that runs `program args...` from inside the node's pods cgroup2 directory, so the
    /// node's service hooks apply to it as to a pod, with the node's network (its namespace, or
    /// the host's).
    pub fn in_pods_cgroup(&self, program: &str) -> Command {
        // On a unified host the pods' directory enables controllers for its children, so no
        // process may live in it (cgroup v2's no-internal-process rule): a leaf of its own.
        let mut dir = self.pods_cgroup2();
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            dir.push("test-client");
            let _ = std::fs::create_dir_all(&dir);
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(dir);
        if let Some(path) = self.netns_path() {
            cmd.arg("nsenter").arg(format!("--net={}", path.display()));
        }
        cmd.arg(program);
        cmd
    }

    /// The node's network namespace file, when it has its own.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.netns.as_ref().map(|n| Path::new("/run/netns").join(n))
    }

    /// A command that runs `program` in the node's network namespace (which must be its own).
    pub fn in_netns(&self, program: &str) -> Command {
        let path = self
            .netns_path()
            .expect("the node has a network namespace of its own");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", path.display())).arg(program);
        cmd
    }

    /// Runs `argv` in the node's network namespace; panics unless it succeeds; returns stdout.
    pub fn ok_in_netns(&self, argv: &[&str]) -> String {
        let out = self
            .in_netns(argv[0])
            .args(&argv[1..])
            .bounded_output()
            .expect("running nsenter");
        assert!(
            out.status.success(),
            "{argv:?} in the node's namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How the node implements Services.
    pub fn proxy(&self) -> Proxy {
        self.proxy
    }

    /// The bridge this node's pods hang off.
    pub fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The node's top-level pods cgroup (`--cgroup-root`).
    pub fn cgroup_root(&self) -> &str {
        &self.prefix
    }

    /// `skiff-agent uninstall` with the flags this node's agent runs with.
    pub fn uninstall_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("uninstall")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--bridge", &self.bridge(), "--cgroup-root", &self.prefix])
            .arg("--bpf-dir")
            .arg(self.bpf_dir());
        if let Some(path) = self.netns_path() {
            cmd.arg("--netns").arg(path);
        }
        cmd
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("log file");
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--server",
            &self.server,
            "--token",
            &self.token,
            "--node-name",
            &self.name,
        ])
        .arg("--data-dir")
        .arg(self.data_dir())
        .args([
            "--node-ip",
            &self.ip,
            "--address",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
        ])
        .args(["--bridge", &self.bridge(), "--cgroup-root", &self.prefix])
        // eBPF services are served to this node's pods only.
        .args(["--proxy-mode", self.proxy.flag(), "--proxy-cgroup", "pods"]);
        // In its own namespace the node forwards, masquerades and routes the service range as a
        // real one; on the host's network it must not touch the host's forwarding, nftables or
        // routes (the unreachable route for the service range goes into each pod's namespace).
        match self.netns_path() {
            Some(path) => cmd.arg("--netns").arg(path),
            None => cmd.args(["--no-masquerade", "--no-service-route", "--no-node-routes"]),
        };
        let child = cmd
            .args(["--dns-upstream", &format!("127.0.0.1:{}", self.dns_upstream_port)])
            .arg("--bpf-dir")
            .arg(self.bpf_dir())
            .args(["--lease-interval-seconds", "1", "--status-interval-seconds", "5"])
            .args(["--eviction-hard", &self.eviction_hard])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff-agent");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("skiff-agent exited with {status}: {}", self.log());
            }
            if self.log().contains("pod network ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("skiff-agent did not get ready: {}", self.log());
    }

    /// Kills the agent with SIGKILL (its pods' shims keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
        self.wait_ready();
    }

    /// Stops everything the node runs and removes what it created on the host.
    fn clean_up(&mut self) {
        // Let the agent stop and remove the pods it runs: force-delete them and wait (bounded).
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "pods",
                "--all",
                "-A",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ])
            .bounded_output();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && self.child.is_some() {
            let empty = std::fs::read_dir(self.data_dir().join("pods"))
                .map(|mut d| d.next().is_none())
                .unwrap_or(true);
            if empty {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill9();
        // Whatever is left (an agent that could not finish): containers, mounts, links, cgroups.
        kill_containers(&self.data_dir());
        kill_cgroup_processes(&self.prefix);
        unmount_under(self.dir.path());
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .bounded_output();
        if let Some(ns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).bounded_output();
        }
        remove_cgroups(&self.prefix);
    }
}

fn kill_containers(data: &Path) {
    let Ok(pods) = std::fs::read_dir(data.join("pods")) else {
        return;
    };
    for pod in pods.flatten() {
        for c in std::fs::read_dir(pod.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for a in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                let started = a.path().join("status/started.json");
                let Ok(text) = std::fs::read_to_string(started) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                for key in ["pid", "shimPid"] {
                    if let Some(pid) = v[key].as_i64() {
                        let _ = Command::new("kill")
                            .args(["-9", &pid.to_string()])
                            .bounded_output();
                    }
                }
            }
        }
    }
}

fn unmount_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).bounded_output();
    }
}

/// Kills every process left in the cgroups named `prefix` (any hierarchy, any depth): a
/// container's children outlive its init when the pod shares the host's PID namespace (the agent's
/// DaemonSet does), and a cgroup with a process in it cannot be removed.
pub fn kill_cgroup_processes(prefix: &str) {
    fn procs(dir: &Path, out: &mut Vec<String>) {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().map(str::to_owned));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                procs(&e.path(), out);
            }
        }
    }
    let mut pids = Vec::new();
    for dir in cgroup_dirs(prefix) {
        procs(&dir, &mut pids);
    }
    pids.sort();
    pids.dedup();
    if !pids.is_empty() {
        let _ = Command::new("kill").arg("-9").args(&pids).bounded_output();
        // Killed processes leave their cgroups once reaped (by init: they are orphans).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && pids.iter().any(|p| Path::new("/proc").join(p).exists()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Removes the test's cgroup subtree from every hierarchy (deepest first; only empty cgroups go).
pub fn remove_cgroups(prefix: &str) {
    fn rm(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rm(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for dir in cgroup_dirs(prefix) {
        rm(&dir);
    }
}

/// The test's cgroup `prefix` at the root of cgroup2 (`/sys/fs/cgroup/PREFIX`) and of each
/// hierarchy mounted beneath it (`/sys/fs/cgroup/<hierarchy>/PREFIX`).
fn cgroup_dirs(prefix: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(prefix)];
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && e.path().join(prefix).is_dir() {
            dirs.push(e.path().join(prefix));
        }
    }
    dirs
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- the agent's log, last lines ---\n{}",
                crate::tail(&self.log(), 300)
            );
        }
        self.clean_up();
    }
}

/// A network joining simulated nodes: a bridge in a network namespace of its own (`<prefix>-fab`),
/// one veth per node (`eth0` in the node's namespace) with an address from a /24 of 172.31.0.0/16
/// picked from the prefix. The bridge itself holds the first address: a client outside every node
/// ([`Fabric::command`]). Nothing else is connected to it; removed on drop.
#[derive(Debug)]
pub struct Fabric {
    netns: String,
    subnet: String,
    attached: std::sync::atomic::AtomicU8,
}

impl Fabric {
    /// Creates the namespace and its bridge.
    pub fn new(prefix: &str) -> Fabric {
        let netns = format!("{prefix}-fab");
        let h = prefix
            .bytes()
            .fold(11u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let fabric = Fabric {
            netns,
            subnet: format!("172.31.{}", h % 250),
            attached: std::sync::atomic::AtomicU8::new(0),
        };
        run_ok(&["ip", "netns", "add", &fabric.netns]);
        let n = &fabric.netns;
        run_ok(&["ip", "-n", n, "link", "add", "fab", "type", "bridge"]);
        run_ok(&["ip", "-n", n, "link", "set", "fab", "up"]);
        run_ok(&["ip", "-n", n, "link", "set", "lo", "up"]);
        let own = format!("{}/24", fabric.client_ip());
        run_ok(&["ip", "-n", n, "addr", "add", &own, "dev", "fab"]);
        fabric
    }

    /// The fabric's own address: where [`Fabric::command`]'s connections come from.
    pub fn client_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// An address of the fabric's subnet that no namespace holds (`last` is its last octet, from
    /// 200 up); [`Fabric::route`] can send it to a node.
    pub fn spare_ip(&self, last: u8) -> String {
        assert!(last >= 200, "addresses below .200 go to nodes");
        format!("{}.{last}", self.subnet)
    }

    /// Routes `addr` (one address) to the node at `via`, in the fabric's namespace.
    pub fn route(&self, addr: &str, via: &str) {
        run_ok(&[
            "ip",
            "-n",
            &self.netns,
            "route",
            "replace",
            &format!("{addr}/32"),
            "via",
            via,
        ]);
    }

    /// Wires the namespace `netns` in; returns its address on the fabric.
    pub fn attach(&self, netns: &str) -> String {
        let i = self.attached.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let port = format!("n{i}");
        let ip = format!("{}.{}", self.subnet, i + 1);
        let n = &self.netns;
        run_ok(&[
            "ip", "-n", n, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ]);
        run_ok(&["ip", "-n", n, "link", "set", &port, "master", "fab", "up"]);
        run_ok(&[
            "ip",
            "-n",
            netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        run_ok(&["ip", "-n", netns, "link", "set", "eth0", "up"]);
        ip
    }

    /// A command that runs `program` in the fabric's namespace: outside every node.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns)).arg(program);
        cmd
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .bounded_output();
    }
}

fn run_ok(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .bounded_output()
        .expect("running a command");
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Several nodes, each in a network namespace of its own, joined by a [`Fabric`], sharing a
/// control plane and a registry.
#[derive(Debug)]
pub struct MultiCluster {
    // Field order is drop order: nodes first, while the control plane still answers.
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The network between them.
    pub fabric: Fabric,
    /// The registry on loopback.
    pub registry: Registry,
    /// The control plane.
    pub c: Control,
}

impl MultiCluster {
    /// Starts `n` nodes with services through `proxy`.
    pub fn start(n: usize, proxy: Proxy) -> MultiCluster {
        let prefix = unique_prefix();
        let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix)]);
        let registry = Registry::start_with_busybox();
        let fabric = Fabric::new(&prefix);
        let nodes = (0..n)
            .map(|_| Node::start_on_fabric(&c, &unique_prefix(), proxy, &fabric))
            .collect();
        MultiCluster {
            nodes,
            fabric,
            registry,
            c,
        }
    }
}

/// A one-node cluster: a control plane with a cluster CIDR, a registry serving the busybox test
/// image, and a node agent.
#[derive(Debug)]
pub struct Cluster {
    // Field order is drop order: the node goes first, while the control plane still answers.
    /// The node.
    pub node: Node,
    /// The registry on loopback.
    pub registry: Registry,
    /// The control plane.
    pub c: Control,
}

impl Cluster {
    /// Starts all three, named with a fresh prefix.
    pub fn start() -> Cluster {
        let prefix = unique_prefix();
        let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix)]);
        let registry = Registry::start_with_busybox();
        let node = Node::start(&c, &prefix);
        Cluster { node, registry, c }
    }

    /// Starts all three, the node running the agent binary at `bin`.
    pub fn start_with_agent(bin: &Path) -> Cluster {
        let prefix = unique_prefix();
        let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix)]);
        let registry = Registry::start_with_busybox();
        let node = Node::start_bin(&c, &prefix, bin);
        Cluster { node, registry, c }
    }

    /// Starts all three, the agent with the hard eviction thresholds `thresholds`.
    pub fn start_with_eviction_hard(thresholds: &str) -> Cluster {
        let prefix = unique_prefix();
        let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix)]);
        let registry = Registry::start_with_busybox();
        let node = Node::start_with_eviction_hard(&c, &prefix, thresholds);
        Cluster { node, registry, c }
    }

    /// Starts all three with the node in a network namespace of its own, services through `proxy`.
    pub fn start_in_netns(proxy: Proxy) -> Cluster {
        let prefix = unique_prefix();
        let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix)]);
        let registry = Registry::start_with_busybox();
        let node = Node::start_in_netns(&c, &prefix, proxy);
        Cluster { node, registry, c }
    }
}

/// The entries of the pinned map `map`, as `bpftool -j map dump` prints them (named fields).
pub fn bpftool_dump(map: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(map)
        .bounded_output()
        .expect("running bpftool (package bpftool)");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        map.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON")
}
