//! `skiff-bench proxy`: the service data planes side by side on this host, for 100, 1,000 and
//! 10,000 services of 10 endpoints each. For every plane: the time to program all services and to
//! apply one endpoint change, connect()+first byte latency to a ClusterIP, and requests/s through
//! services. The planes are the agent's own (`skiff_agent::proxy`: eBPF socket hooks, the nftables
//! table), an iptables ruleset shaped like upstream kube-proxy's iptables mode (both iptables
//! backends), and no plane at all: connections straight to the endpoints, the floor.
//!
//! The set-up lives in namespaces the benchmark creates (TESTING.md): a client network namespace
//! (fresh for each plane, so no plane inherits another's conntrack or tables) and a server
//! namespace where the whole endpoint range is a local route, so one listener answers for all
//! 100,000 endpoints. The client is a child process in a cgroup2 directory of its own, where the
//! eBPF plane attaches its socket hooks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use skiff_abi::ServiceKey;
use skiff_agent::proxy::model::{self, Entry};
use skiff_agent::proxy::{Plane, ebpf::Ebpf, nft::Nft};
use skiff_tests::node::unique_prefix;

/// Endpoints per service.
const ENDPOINTS: usize = 10;
/// The services' port and their endpoints' (target) port.
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// Cluster IPs are taken from here (inside the client namespace only).
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Endpoint addresses: all local to the server namespace.
const ENDPOINT_RANGE: &str = "10.128.0.0/15";
/// Endpoint changes timed per plane and size.
const CHANGES: usize = 20;
/// Sequential connections timed for latency.
const LATENCY_SAMPLES: usize = 2_000;
/// The eBPF plane's latency is also measured paired with the floor: this many rounds, each of
/// `PAIRED_SAMPLES` connections straight to the endpoints from a cgroup without the hooks, then as
/// many through the hooks, while both share the same namespace, tables and time. Many short rounds:
/// the floor of one round can differ from the next by more than the hooks cost (where the
/// scheduler places the client against the listener).
const PAIRED_ROUNDS: usize = 50;
/// Connections timed per paired round and side (on one CPU, see `Host::client_in`).
const PAIRED_SAMPLES: usize = 200;
/// Requests/s: concurrent client threads and duration.
const RPS_THREADS: usize = 4;
const RPS_SECONDS: u64 = 3;
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The data planes compared, in the order they run.
const PLANES: [&str; 5] = ["direct", "ebpf", "nftables", "iptables-legacy", "iptables-nft"];
/// Upstream's kube-proxy in iptables mode: planes of `peers`, with the upstream binaries. The
/// first runs the system's `iptables` (Debian's default, the nf_tables backend), the second the
/// legacy backend (what kube-proxy's own image picks on a host whose rules are legacy).
pub const KUBE_PROXY: &str = "kube-proxy-iptables";
pub const KUBE_PROXY_LEGACY: &str = "kube-proxy-iptables-legacy";
/// How long kube-proxy may take to program every service before the row says it did not.
const KUBE_PROXY_PATIENCE: Duration = Duration::from_secs(600);

/// Where the upstream binaries are, for the kube-proxy plane.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `etcd` 3.4.
    pub etcd: PathBuf,
    /// The directory holding `kube-apiserver` and `kube-proxy` (and the rest of upstream's
    /// control plane, which `peers::upstream` starts).
    pub bin: PathBuf,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Service `service`'s cluster IP: from 10.96.0.2 (10.96.0.1 is the `kubernetes` Service of the
/// API server kube-proxy reads).
fn cluster_ip(service: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + service as u32 + 2)
}

fn endpoint_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + index as u32)
}

/// The address that replaces endpoint 0 of a service in change `n` (above every original one).
fn replacement_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 129, 200, 0)) + n as u32)
}

/// Service `i` and its EndpointSlice, as the API server would hand them to the agent.
fn service_objects(i: usize, endpoints: &[Ipv4Addr]) -> (Value, Value) {
    let name = format!("s{i}");
    let service = json!({"metadata": {"namespace": "bench", "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip(i).to_string(),
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": TARGET_PORT}]}});
    let slice = json!({"metadata": {"namespace": "bench", "name": format!("{name}-x"),
            "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|a| json!({"addresses": [a.to_string()],
            "conditions": {"ready": true}, "nodeName": "bench"})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}]});
    (service, slice)
}

fn original_endpoints(i: usize) -> Vec<Ipv4Addr> {
    (0..ENDPOINTS).map(|j| endpoint_ip(i * ENDPOINTS + j)).collect()
}

/// What the agent's model makes of service `i` with `endpoints`.
fn model_entries(i: usize, endpoints: &[Ipv4Addr]) -> BTreeMap<ServiceKey, Entry> {
    let (service, slice) = service_objects(i, endpoints);
    model::entries(&service, &[&slice], "bench", &[], None)
}

/// The service and endpoint chains upstream kube-proxy names after hashes; any stable hash does.
fn chain(kind: &str, what: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    what.hash(&mut h);
    format!("KUBE-{kind}-{:016X}", h.finish())
}

/// The nat-table lines of one service, as kube-proxy's iptables mode writes them: the chain
/// declarations and the rules of its KUBE-SVC and KUBE-SEP chains.
fn iptables_service(i: usize, endpoints: &[Ipv4Addr], decls: &mut String, rules: &mut String) {
    let vip = cluster_ip(i);
    let name = format!("bench/s{i}:http");
    let svc = chain("SVC", &name);
    let _ = writeln!(decls, ":{svc} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip}/32 --dport {SERVICE_PORT} ! -s 10.255.0.0/16 -j KUBE-MARK-MASQ"
    );
    let n = endpoints.len();
    for (k, ep) in endpoints.iter().enumerate() {
        let sep = chain("SEP", &format!("{name}-{ep}"));
        let _ = writeln!(decls, ":{sep} - [0:0]");
        let left = n - k;
        if left > 1 {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {ep}:{TARGET_PORT}\" -m statistic --mode random --probability {:.11} -j {sep}",
                1.0 / left as f64
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {ep}:{TARGET_PORT}\" -j {sep}"
            );
        }
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -s {ep}/32 -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {ep}:{TARGET_PORT}"
        );
    }
}

/// The whole ruleset for `n` services (filter and nat tables), for `iptables-restore`.
fn iptables_ruleset(n: usize) -> String {
    let mut s = String::from(
        "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n\
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
COMMIT\n\
*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let (mut decls, mut rules) = (String::new(), String::new());
    let mut portals = String::new();
    for i in 0..n {
        let name = format!("bench/s{i}:http");
        let _ = writeln!(
            portals,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {}/32 --dport {SERVICE_PORT} -j {}",
            cluster_ip(i),
            chain("SVC", &name)
        );
        iptables_service(i, &original_endpoints(i), &mut decls, &mut rules);
    }
    s.push_str(&decls);
    s.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    s.push_str(&portals);
    s.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    s.push_str(&rules);
    s.push_str("COMMIT\n");
    s
}

/// One endpoint change as kube-proxy's partial sync writes it (`--noflush`): the service chain is
/// redeclared (which flushes it) and refilled, the new endpoint chain added, the old one deleted.
fn iptables_change(i: usize, old: &[Ipv4Addr], new: &[Ipv4Addr]) -> String {
    let (mut decls, mut rules) = (String::from("*nat\n"), String::new());
    iptables_service(i, new, &mut decls, &mut rules);
    let name = format!("bench/s{i}:http");
    let mut gone = String::new();
    for ep in old.iter().filter(|e| !new.contains(e)) {
        let sep = chain("SEP", &format!("{name}-{ep}"));
        let _ = writeln!(decls, ":{sep} - [0:0]");
        let _ = writeln!(gone, "-X {sep}");
    }
    format!("{decls}{rules}{gone}COMMIT\n")
}

fn iptables_restore(ns: &str, program: &str, rules: &str, noflush: bool) -> anyhow::Result<()> {
    let mut cmd = in_ns(ns, program);
    if noflush {
        cmd.arg("--noflush");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (package iptables)"))?;
    child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces, cgroup and BPF filesystem of one benchmark run; removed on drop.
struct Host {
    prefix: String,
    cgroup: PathBuf,
    /// A sibling cgroup2 directory without the hooks (the paired floor's client).
    bare_cgroup: PathBuf,
    /// Holds the bpffs mount (named like a test node's directory, so `cargo xtask clean-host`
    /// finds it after an interrupted run).
    dir: tempfile::TempDir,
}

impl Host {
    fn client_ns(&self) -> String {
        format!("{}-c", self.prefix)
    }

    fn server_ns(&self) -> String {
        format!("{}-s", self.prefix)
    }

    fn bpffs(&self) -> PathBuf {
        self.dir.path().join("bpffs")
    }

    fn new() -> anyhow::Result<Host> {
        let prefix = unique_prefix();
        let root = Path::new("/sys/fs/cgroup");
        let cgroup = if root.join("cgroup.controllers").exists() {
            root.join(&prefix)
        } else {
            root.join("unified").join(&prefix)
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-agent-"))
            .tempdir()?;
        let bare_cgroup = cgroup.with_file_name(format!("{prefix}-bare"));
        let host = Host {
            prefix,
            cgroup,
            bare_cgroup,
            dir,
        };
        std::fs::create_dir_all(&host.cgroup).context("creating the client's cgroup2 directory")?;
        std::fs::create_dir_all(&host.bare_cgroup).context("creating the bare cgroup2 directory")?;
        std::fs::create_dir_all(host.bpffs())?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(host.bpffs()))?;
        let s = host.server_ns();
        ip(&["netns", "add", &s])?;
        run(in_ns(&s, "ip").args(["link", "set", "lo", "up"]))?;
        // Every endpoint address is local here: one listener answers for all of them.
        run(in_ns(&s, "ip").args(["route", "add", "local", ENDPOINT_RANGE, "dev", "lo"]))?;
        run(in_ns(&s, "sysctl").args(["-qw", "net.core.somaxconn=4096"]))?;
        // The agent's nftables plane runs `nft` in the node's namespace: here, the client's. Each
        // plane gets a fresh namespace under the same name, which `nft` opens by path each time.
        host.fresh_client()?;
        skiff_agent::network::pod_net::set_node_netns(&PathBuf::from("/run/netns").join(host.client_ns()))?;
        Ok(host)
    }

    /// A fresh client namespace wired to the server namespace (the previous one is deleted).
    fn fresh_client(&self) -> anyhow::Result<()> {
        let (c, s) = (self.client_ns(), self.server_ns());
        let (cl, sl) = (format!("{}c0", self.prefix), format!("{}s0", self.prefix));
        // The first client namespace outlives its name (the agent library holds it open): its
        // end of the pair goes with the server's.
        let _ = in_ns(&s, "ip").args(["link", "del", &sl]).output();
        let _ = Command::new("ip").args(["netns", "del", &c]).output();
        ip(&["netns", "add", &c])?;
        ip(&[
            "link", "add", &cl, "netns", &c, "type", "veth", "peer", "name", &sl, "netns", &s,
        ])?;
        for (ns, link, addr) in [(&c, &cl, "10.255.0.1/30"), (&s, &sl, "10.255.0.2/30")] {
            run(in_ns(ns, "ip").args(["addr", "add", addr, "dev", link]))?;
            run(in_ns(ns, "ip").args(["link", "set", link, "up"]))?;
            run(in_ns(ns, "ip").args(["link", "set", "lo", "up"]))?;
        }
        run(in_ns(&c, "ip").args(["route", "add", "default", "via", "10.255.0.2"]))?;
        run(in_ns(&c, "sysctl").args(["-qw", "net.ipv4.ip_local_port_range=1024 65535"]))?;
        run(in_ns(&c, "sysctl").args(["-qw", "net.ipv4.tcp_tw_reuse=1"]))?;
        Ok(())
    }

    /// Runs the client in the cgroup (moved first: `ip netns exec` hides cgroup2), in the client
    /// namespace, against `targets`.
    fn client(&self, targets: &[SocketAddrV4]) -> anyhow::Result<Value> {
        self.client_in(&self.cgroup, targets, None)
    }

    /// The client in `cgroup`; with `samples`, only that many latency samples (as a list).
    fn client_in(
        &self,
        cgroup: &Path,
        targets: &[SocketAddrV4],
        samples: Option<usize>,
    ) -> anyhow::Result<Value> {
        let list = self.dir.path().join("targets");
        let text: String = targets.iter().map(|t| format!("{t}\n")).collect();
        std::fs::write(&list, text)?;
        let me = std::env::current_exe()?;
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && exec $6 ip netns exec "$2" "$3" proxy-client "$4" $5"#)
            .arg("sh")
            .arg(cgroup)
            .arg(self.client_ns())
            .arg(me)
            .arg(&list)
            .arg(samples.map(|n| n.to_string()).unwrap_or_default())
            // The paired rounds' clients all run on the first CPU: where the scheduler places a
            // client against the listener moves its latency by more than the hooks cost.
            .arg(if samples.is_some() { "taskset -c 0" } else { "" })
            .output()?;
        if !out.status.success() {
            bail!(
                "the benchmark client failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for ns in [self.client_ns(), self.server_ns()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        let _ = std::fs::remove_dir_all(self.bpffs().join("skiff"));
        let _ = Command::new("umount").arg(self.bpffs()).output();
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir(&self.bare_cgroup);
    }
}

/// The listener that answers for every endpoint: a few threads in the server namespace.
fn serve(ns: &str) -> anyhow::Result<()> {
    let path = PathBuf::from("/run/netns").join(ns);
    let listener = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<TcpListener> {
            skiff_agent::network::pod_net::enter_netns(&path)?;
            Ok(TcpListener::bind(("0.0.0.0", TARGET_PORT))?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))?
    })?;
    for _ in 0..2 {
        let listener = listener.try_clone()?;
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 256];
                let mut got = 0;
                while got < REQUEST.len() {
                    match conn.read(&mut buf[got..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                let _ = conn.write_all(RESPONSE);
            }
        });
    }
    Ok(())
}

/// One plane's figures at one size.
struct Measured {
    program_all_ms: f64,
    change_ms: Vec<f64>,
    client: Value,
    /// eBPF only: (through the hooks, straight to the endpoints) latencies, in interleaved rounds.
    paired: Option<(Vec<f64>, Vec<f64>)>,
    /// eBPF only: the kernel's accounting of `connect4` over the paired rounds: (runs, ns per run).
    hook: Option<(u64, f64)>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Programs `n` services into `plane`, then times `CHANGES` endpoint changes.
async fn agent_plane(mut plane: Plane, n: usize) -> anyhow::Result<(f64, Vec<f64>, Plane)> {
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        all.extend(
            model_entries(i, &original_endpoints(i))
                .into_iter()
                .map(|(k, e)| (k, Some(e))),
        );
    }
    if !plane.apply(&all).await? {
        bail!("programming {n} services failed");
    }
    let program_all = ms(t0.elapsed());
    let mut changes = Vec::new();
    for c in 0..CHANGES {
        let i = c * n / CHANGES;
        let mut endpoints = original_endpoints(i);
        endpoints[0] = replacement_ip(c);
        let t = Instant::now();
        let change: Vec<_> = model_entries(i, &endpoints)
            .into_iter()
            .map(|(k, e)| (k, Some(e)))
            .collect();
        if !plane.apply(&change).await? {
            bail!("an endpoint change failed");
        }
        changes.push(ms(t.elapsed()));
    }
    Ok((program_all, changes, plane))
}

fn iptables_plane(ns: &str, program: &str, n: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    let rules = iptables_ruleset(n);
    let t0 = Instant::now();
    iptables_restore(ns, program, &rules, false)?;
    let program_all = ms(t0.elapsed());
    let mut changes = Vec::new();
    for c in 0..CHANGES {
        let i = c * n / CHANGES;
        let old = original_endpoints(i);
        let mut new = old.clone();
        new[0] = replacement_ip(c);
        let t = Instant::now();
        iptables_restore(ns, program, &iptables_change(i, &old, &new), true)?;
        changes.push(ms(t.elapsed()));
    }
    Ok((program_all, changes))
}

/// Runs `job` on a thread of its own inside network namespace `ns` (on a runtime of its own, so
/// every socket it opens is there): how the benchmark talks to an API server in the client's
/// namespace.
async fn in_netns<T, F, Fut>(ns: &str, job: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let path = PathBuf::from("/run/netns").join(ns);
    on_thread(move || {
        skiff_agent::network::pod_net::enter_netns(&path)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(job())
    })
    .await
}

/// Runs `job` on a thread of its own and awaits its result, so that the waiting future can be
/// dropped (a signal stops skiff-bench by dropping what it runs): the thread is then left to
/// end on its own, and goes with the process.
async fn on_thread<T: Send + 'static>(
    job: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(job());
    });
    rx.await
        .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?
}

/// kube-proxy 1.20 in iptables mode in the client's namespace, fed by kube-apiserver (over
/// etcd, with upstream's scheduler and controller manager, as `peers` runs them) in that same
/// namespace; all stopped when dropped (their state goes with the namespace and temp dirs).
struct KubeProxy {
    proxy: Option<super::Killed>,
    control: super::peers::Running,
    ns: String,
    server: String,
    /// kube-proxy runs the legacy iptables backend (else the system's `iptables`).
    legacy: bool,
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        drop(self.proxy.take());
    }
}

/// What `iptables-save -t nat` shows in namespace `ns`.
fn nat_rules(ns: &str, save: &str) -> anyhow::Result<String> {
    let out = in_ns(ns, save).args(["-t", "nat"]).output()?;
    if !out.status.success() {
        bail!("{save}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How many rule syncs kube-proxy has finished, from its metrics (127.0.0.1:10249 in the
/// namespace the calling thread is in); 0 before it answers.
fn syncs() -> u64 {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", 10249)) else {
        return 0;
    };
    let mut text = String::new();
    if conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_err() || conn.read_to_string(&mut text).is_err() {
        return 0;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_duration_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits, from `t0`, until a rule sync of kube-proxy leaves `ns`'s NAT rules as `done` wants
/// them: its metrics are polled (cheap) and the rules read once after each sync (reading them
/// over and over would compete with the sync itself, `save` reads them). How long that took;
/// `None` once `patience` has run out.
async fn until_synced(
    ns: &str,
    save: &'static str,
    t0: Instant,
    patience: Duration,
    done: impl Fn(&str) -> bool + Send + 'static,
) -> anyhow::Result<Option<f64>> {
    let (path, ns) = (PathBuf::from("/run/netns").join(ns), ns.to_owned());
    on_thread(move || -> anyhow::Result<Option<f64>> {
        skiff_agent::network::pod_net::enter_netns(&path)?;
        let mut checked = None;
        loop {
            let now = syncs();
            let at = t0.elapsed();
            if now > 0 && checked != Some(now) {
                checked = Some(now);
                if done(&nat_rules(&ns, save)?) {
                    return Ok(Some(ms(at)));
                }
            }
            if t0.elapsed() > patience {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await
}

/// Service `i`'s EndpointSlice as kube-proxy 1.20 reads it (discovery.k8s.io/v1beta1).
fn v1beta1_slice(i: usize, endpoints: &[Ipv4Addr]) -> Value {
    let (_, mut slice) = service_objects(i, endpoints);
    slice["apiVersion"] = json!("discovery.k8s.io/v1beta1");
    slice["kind"] = json!("EndpointSlice");
    slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = json!("skiff-bench");
    for e in slice["endpoints"].as_array_mut().into_iter().flatten() {
        if let Some(e) = e.as_object_mut() {
            e.remove("nodeName");
        }
    }
    slice
}

impl KubeProxy {
    /// Starts the control plane in the client namespace and gives it `n` services with their
    /// EndpointSlices; kube-proxy starts in [`KubeProxy::program`].
    async fn start(host: &Host, upstream: &Upstream, n: usize, legacy: bool) -> anyhow::Result<KubeProxy> {
        let ns = host.client_ns();
        let control = super::peers::upstream_in(&upstream.etcd, &upstream.bin, &[], &[], Some(&ns))?;
        let kubeconfig = control.kubeconfig.clone();
        let server = in_netns(&ns, move || async move {
            super::wait_ready(&kubeconfig, Duration::from_secs(120)).await?;
            let (client, server) = super::https_client(&kubeconfig)?;
            super::create(
                &client,
                &format!("{server}/api/v1/namespaces"),
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
            )
            .await?;
            // kube-proxy looks up its Node for its address (and waits for it, retrying), as a
            // kubelet would have registered it.
            super::create(
                &client,
                &format!("{server}/api/v1/nodes"),
                &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bench"},
                    "status": {"addresses": [{"type": "InternalIP", "address": "10.255.0.1"}]}}),
            )
            .await?;
            let clients: std::sync::Arc<Vec<super::HttpsClient>> = std::sync::Arc::new(
                (0..16)
                    .map(|_| super::https_client(&kubeconfig).map(|c| c.0))
                    .collect::<Result<_, _>>()?,
            );
            let srv = std::sync::Arc::new(server.clone());
            super::drive(n, 16, move |w, i| {
                let (c, srv) = (clients.clone(), srv.clone());
                async move {
                    let (mut service, _) = service_objects(i, &original_endpoints(i));
                    service["apiVersion"] = json!("v1");
                    service["kind"] = json!("Service");
                    super::create(
                        &c[w],
                        &format!("{srv}/api/v1/namespaces/bench/services"),
                        &service,
                    )
                    .await?;
                    super::create(
                        &c[w],
                        &format!("{srv}/apis/discovery.k8s.io/v1beta1/namespaces/bench/endpointslices"),
                        &v1beta1_slice(i, &original_endpoints(i)),
                    )
                    .await
                }
            })
            .await?;
            Ok(server)
        })
        .await?;
        Ok(KubeProxy {
            proxy: None,
            control,
            ns,
            server,
            legacy,
        })
    }

    /// The program that shows kube-proxy's rules.
    fn save(&self) -> &'static str {
        if self.legacy {
            "iptables-legacy-save"
        } else {
            "iptables-save"
        }
    }

    /// Starts kube-proxy; the time until all `n` services are in its rules, `None` if they were
    /// not within [`KUBE_PROXY_PATIENCE`].
    async fn program(&mut self, bin: &Path, n: usize) -> anyhow::Result<Option<f64>> {
        let log_path = self.control.dir().join("kube-proxy.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = in_ns(&self.ns, &bin.join("kube-proxy").display().to_string());
        if self.legacy {
            // kube-proxy runs `iptables`, `iptables-save` and `iptables-restore` (and their
            // ip6tables twins) from its PATH: there, they are the legacy backend's.
            let dir = self.control.dir().join("iptables-legacy");
            std::fs::create_dir_all(&dir)?;
            for family in ["iptables", "ip6tables"] {
                for suffix in ["", "-save", "-restore"] {
                    let link = dir.join(format!("{family}{suffix}"));
                    if !link.exists() {
                        std::os::unix::fs::symlink(format!("/usr/sbin/{family}-legacy{suffix}"), link)?;
                    }
                }
            }
            let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        let t0 = Instant::now();
        self.proxy = Some(super::Killed(
            cmd.arg(format!("--kubeconfig={}", self.control.kubeconfig.display()))
                .args([
                    "--proxy-mode=iptables",
                    "--hostname-override=bench",
                    // Leave the kernel's conntrack settings as they are (the table size is the
                    // host's, not the namespace's).
                    "--conntrack-max-per-core=0",
                    "--conntrack-min=0",
                    "--conntrack-tcp-timeout-established=0s",
                    "--conntrack-tcp-timeout-close-wait=0s",
                    "--v=0",
                ])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting kube-proxy")?,
        ));
        let synced = until_synced(&self.ns, self.save(), t0, KUBE_PROXY_PATIENCE, move |rules| {
            rules
                .lines()
                .filter(|l| {
                    l.starts_with("-A KUBE-SERVICES") && l.contains("bench/s") && l.contains("-j KUBE-SVC-")
                })
                .count()
                >= n
        })
        .await;
        self.explained(synced)
    }

    /// `result`, with the end of kube-proxy's log when it is an error.
    fn explained<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        let log = self.control.dir().join("kube-proxy.log");
        result.map_err(|e| {
            e.context(format!(
                "kube-proxy's log ends:\n{}",
                super::peers::log_tail(&log, 20)
            ))
        })
    }

    /// Replaces endpoint 0 of service `i` by `to`; the time until kube-proxy's rules send to it.
    async fn change(&self, i: usize, to: Ipv4Addr) -> anyhow::Result<f64> {
        let mut endpoints = original_endpoints(i);
        endpoints[0] = to;
        let (kubeconfig, server) = (self.control.kubeconfig.clone(), self.server.clone());
        let patch = json!({"endpoints": v1beta1_slice(i, &endpoints)["endpoints"]}).to_string();
        let t0 = Instant::now();
        in_netns(&self.ns, move || async move {
            let (client, _) = super::https_client(&kubeconfig)?;
            let req = hyper::Request::patch(format!(
                "{server}/apis/discovery.k8s.io/v1beta1/namespaces/bench/endpointslices/s{i}-x"
            ))
            .header("content-type", "application/merge-patch+json")
            .body(http_body_util::Full::new(bytes::Bytes::from(patch)))?;
            let resp = client.request(req).await?;
            let status = resp.status();
            http_body_util::BodyExt::collect(resp.into_body()).await?;
            if status != 200 {
                bail!("patching EndpointSlice s{i}-x returned {status}");
            }
            Ok(())
        })
        .await?;
        let target = format!("--to-destination {to}:{TARGET_PORT}");
        let patience = Duration::from_secs(300);
        let synced = until_synced(&self.ns, self.save(), t0, patience, move |rules| {
            rules.contains(&target)
        })
        .await
        .and_then(|at| at.with_context(|| format!("kube-proxy did not apply a change within {patience:?}")));
        self.explained(synced)
    }
}

async fn measure(
    host: &Host,
    plane: &str,
    n: usize,
    upstream: Option<&Upstream>,
) -> anyhow::Result<Option<Measured>> {
    host.fresh_client()?;
    let services: Vec<SocketAddrV4> = (0..n)
        .map(|i| SocketAddrV4::new(cluster_ip(i), SERVICE_PORT))
        .collect();
    let c = host.client_ns();
    let endpoints: Vec<SocketAddrV4> = (0..n * ENDPOINTS)
        .map(|k| SocketAddrV4::new(endpoint_ip(k), TARGET_PORT))
        .collect();
    Ok(Some(match plane {
        "direct" => Measured {
            program_all_ms: 0.0,
            change_ms: Vec::new(),
            client: host.client(&endpoints)?,
            paired: None,
            hook: None,
        },
        "ebpf" => {
            let pins = host.bpffs().join("skiff");
            let ebpf = Ebpf::load(&pins, &host.cgroup, &[])?;
            let (program_all_ms, change_ms, plane) = agent_plane(Plane::Ebpf(Box::new(ebpf)), n).await?;
            let client = host.client(&services);
            // The kernel counts each program's runs and run time while statistics are enabled
            // (until the descriptor is closed).
            let stats_on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enabling the kernel's eBPF run-time statistics")?;
            let before = connect4_runs()?;
            let paired = paired_latency(host, &services, &endpoints);
            let after = connect4_runs()?;
            drop(stats_on);
            // Dropping the plane and its pins detaches the hooks.
            drop(plane);
            std::fs::remove_dir_all(&pins)?;
            let runs = after.0.saturating_sub(before.0);
            let per_run = (after.1.saturating_sub(before.1)).as_nanos() as f64 / runs.max(1) as f64;
            Measured {
                program_all_ms,
                change_ms,
                client: client?,
                paired: Some(paired?),
                hook: Some((runs, per_run)),
            }
        }
        "nftables" => {
            if skiff_agent::network::pod_net::node_netns().is_none() {
                bail!("the nftables plane would program the host's namespace");
            }
            let (program_all_ms, change_ms, _plane) =
                agent_plane(Plane::Nftables(Nft::new(SERVICE_CIDR)), n).await?;
            Measured {
                program_all_ms,
                change_ms,
                client: host.client(&services)?,
                paired: None,
                hook: None,
            }
        }
        "iptables-legacy" | "iptables-nft" => {
            let program = format!("{plane}-restore");
            let (program_all_ms, change_ms) = iptables_plane(&c, &program, n)?;
            Measured {
                program_all_ms,
                change_ms,
                client: host.client(&services)?,
                paired: None,
                hook: None,
            }
        }
        KUBE_PROXY | KUBE_PROXY_LEGACY => {
            let upstream = upstream.context("the kube-proxy planes need --upstream-bin and --etcd")?;
            let mut kp = KubeProxy::start(host, upstream, n, plane == KUBE_PROXY_LEGACY).await?;
            let Some(program_all_ms) = kp.program(&upstream.bin, n).await? else {
                // Not programmed in time: the row says so, with nothing else to measure.
                return Ok(None);
            };
            // Every sync of kube-proxy 1.20 rewrites its whole ruleset: at 10,000 services a
            // change takes seconds, so fewer of them there.
            let changes = if n >= 10_000 { CHANGES / 4 } else { CHANGES };
            let mut change_ms = Vec::new();
            for c in 0..changes {
                change_ms.push(kp.change(c * n / changes, replacement_ip(c)).await?);
            }
            let client = host.client(&services)?;
            drop(kp);
            Measured {
                program_all_ms,
                change_ms,
                client,
                paired: None,
                hook: None,
            }
        }
        other => bail!("unknown plane {other}"),
    }))
}

/// Runs and total run time, as the kernel accounts them, of the programs named `connect4` (only
/// this benchmark's run while it measures: each serves its own cgroup).
fn connect4_runs() -> anyhow::Result<(u64, Duration)> {
    let (mut runs, mut time) = (0, Duration::ZERO);
    for p in aya::programs::loaded_programs() {
        let p = p.context("listing the loaded eBPF programs")?;
        if p.name_as_str() == Some("connect4") {
            runs += p.run_count();
            time += p.run_time();
        }
    }
    Ok((runs, time))
}

/// The eBPF plane's latency and the floor's, in interleaved rounds (see `PAIRED_ROUNDS`).
fn paired_latency(
    host: &Host,
    services: &[SocketAddrV4],
    endpoints: &[SocketAddrV4],
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let per_round = PAIRED_SAMPLES;
    let samples = |v: Value| -> Vec<f64> {
        v["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    let (mut hooked, mut floor) = (Vec::new(), Vec::new());
    for round in 0..PAIRED_ROUNDS {
        // Each side goes first in every other round, so neither gains from its place.
        let mut sides: [(&mut Vec<f64>, &Path, &[SocketAddrV4]); 2] = [
            (&mut floor, &host.bare_cgroup, endpoints),
            (&mut hooked, &host.cgroup, services),
        ];
        if round % 2 == 1 {
            sides.reverse();
        }
        for (out, cgroup, targets) in sides {
            out.extend(samples(host.client_in(cgroup, targets, Some(per_round))?));
        }
    }
    Ok((hooked, floor))
}

/// p50/p99 in ms to the microsecond (these latencies are tens of microseconds).
fn stats(v: Vec<f64>) -> Value {
    crate::pods::stats_to(v, 1000.0)
}

/// `skiff-bench proxy [SIZES...]`: every plane at every size, as JSON rows.
pub async fn bench(sizes: &[usize], planes: &[String], upstream: Option<&Upstream>) -> anyhow::Result<Value> {
    let host = Host::new()?;
    serve(&host.server_ns())?;
    let mut rows = Vec::new();
    for &n in sizes {
        for plane in planes {
            eprintln!("proxy bench: {plane}, {n} services");
            let m = measure(&host, plane, n, upstream)
                .await
                .with_context(|| format!("{plane} with {n} services"))?;
            let Some(m) = m else {
                rows.push(json!({"plane": plane, "services": n, "endpoints": n * ENDPOINTS,
                    "program_all_ms": null, "gave_up_after_s": KUBE_PROXY_PATIENCE.as_secs()}));
                continue;
            };
            let mut row = json!({"plane": plane, "services": n, "endpoints": n * ENDPOINTS,
                "program_all_ms": (m.program_all_ms * 10.0).round() / 10.0,
                "change": stats(m.change_ms), "latency": m.client["latency"],
                "rps": m.client["rps"], "errors": m.client["errors"]});
            if let Some((hooked, floor)) = m.paired {
                row["paired"] = json!({"ebpf": stats(hooked), "direct": stats(floor)});
            }
            if let Some((runs, ns)) = m.hook {
                row["connect4"] = json!({"runs": runs, "ns_per_run": ns.round()});
            }
            rows.push(row);
        }
    }
    Ok(json!(rows))
}

/// The default planes.
pub fn planes() -> Vec<String> {
    PLANES.iter().map(|p| p.to_string()).collect()
}

/// A small xorshift generator: the client picks targets uniformly without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One request: connect, send, time to the first byte of the answer, then read it to the end.
fn request(target: &SocketAddrV4) -> std::io::Result<Duration> {
    let t0 = Instant::now();
    let mut conn = TcpStream::connect_timeout(&(*target).into(), Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.write_all(REQUEST)?;
    let mut buf = [0u8; 256];
    let n = conn.read(&mut buf)?;
    let first = t0.elapsed();
    if n == 0 {
        return Err(std::io::Error::other("closed before answering"));
    }
    while conn.read(&mut buf)? > 0 {}
    Ok(first)
}

/// `skiff-bench proxy-client TARGETS [SAMPLES]`: latency of sequential requests to random targets,
/// then requests/s from several threads; with SAMPLES, only that many latencies, as a list.
pub fn client(targets: &Path, samples: Option<usize>) -> anyhow::Result<Value> {
    let targets: Vec<SocketAddrV4> = std::fs::read_to_string(targets)?
        .lines()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    if targets.is_empty() {
        bail!("no targets");
    }
    // Each run (and each paired round) picks its own targets.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(nanos) << 20 | 1));
    let mut errors = 0u64;
    // Warm up (ARP, caches), then time.
    let warm = (0..100)
        .filter(|_| request(&targets[rng.below(targets.len())]).is_ok())
        .count();
    if warm == 0 {
        bail!("no target answered");
    }
    let mut latency = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..samples.unwrap_or(LATENCY_SAMPLES) {
        match request(&targets[rng.below(targets.len())]) {
            Ok(d) => latency.push(ms(d)),
            Err(_) => errors += 1,
        }
    }
    if samples.is_some() {
        return Ok(json!({"samples": latency, "errors": errors}));
    }
    let deadline = Instant::now() + Duration::from_secs(RPS_SECONDS);
    let t0 = Instant::now();
    let results: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..RPS_THREADS)
            .map(|t| {
                let targets = &targets;
                s.spawn(move || {
                    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((t as u64 + 1) << 32));
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        match request(&targets[rng.below(targets.len())]) {
                            Ok(_) => ok += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or((0, 0))).collect()
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let ok: u64 = results.iter().map(|r| r.0).sum();
    errors += results.iter().map(|r| r.1).sum::<u64>();
    Ok(json!({"latency": stats(latency), "rps": (ok as f64 / elapsed).round(), "errors": errors}))
}
