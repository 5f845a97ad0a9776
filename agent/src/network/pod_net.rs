//! Pod networking on one node, over rtnetlink: the node's bridge, and a pod sandbox whose network,
//! IPC and UTS namespaces are held open by bind mounts for the pod's life, with a veth into the bridge.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The network namespace that holds the node's network (`--netns`), when it is not the agent's own.
static NODE_NETNS: OnceLock<(PathBuf, std::fs::File)> = OnceLock::new();

/// Puts the node's network (bridge, pod veths, routes, nftables, probes) in the network namespace
/// at `path` instead of the agent's own. Called once, at start-up.
pub fn set_node_netns(path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
    NODE_NETNS
        .set((path.to_owned(), file))
        .map_err(|_| anyhow::anyhow!("the node's network namespace is already set"))
}

/// The node's network namespace, when it is not the agent's own.
pub fn node_netns() -> Option<&'static Path> {
    NODE_NETNS.get().map(|(p, _)| p.as_path())
}

/// Enters the network namespace at `path` for the whole (single-threaded) calling process.
pub fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))
}

/// Runs `f` in the node's network namespace: sockets it opens stay there. Without `--netns` it runs
/// in place; with it, on a short-lived thread that joins the namespace (and the caller's runtime).
pub fn in_node_netns<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let Some((_, file)) = NODE_NETNS.get() else {
        return Ok(f());
    };
    on_thread_in(file, f)
}

/// Runs `f` in the network namespace at `path` (a pod's), on a short-lived thread.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    on_thread_in(&std::fs::File::open(path)?, f)
}

fn on_thread_in<T: Send>(file: &std::fs::File, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let rt = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _entered = rt.as_ref().map(tokio::runtime::Handle::enter);
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "a network namespace helper thread panicked",
            ))
        })
    })
}

/// A command that runs `program` in the node's network namespace.
pub fn command(program: &str) -> tokio::process::Command {
    match node_netns() {
        Some(path) => {
            let mut cmd = tokio::process::Command::new("nsenter");
            cmd.arg(format!("--net={}", path.display())).arg(program);
            cmd
        }
        None => tokio::process::Command::new(program),
    }
}

/// Applies an nftables script (`nft -f -`) in the node's network namespace.
pub async fn nft(script: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (package nftables)")?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    stdin.write_all(script.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Connects to `host:port` from the node's network namespace (probes, hooks).
pub async fn tcp_connect(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    if NODE_NETNS.get().is_none() {
        return tokio::net::TcpStream::connect((host, port)).await;
    }
    let addrs: Vec<_> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no address for {host}"),
        ));
    }
    tcp_connect_in(None, addrs).await
}

/// Connects to the first of `addrs` that answers, from the network namespace at `netns` (a pod's;
/// `None`: the node's).
pub async fn tcp_connect_in(
    netns: Option<&Path>,
    addrs: impl IntoIterator<Item = std::net::SocketAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for addr in addrs {
        let new = || {
            if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
        };
        let socket = match netns {
            Some(path) => in_netns(path, new)??,
            None => in_node_netns(new)??,
        };
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

/// Opens a netlink connection in the node's network namespace.
pub fn connect() -> anyhow::Result<Handle> {
    let (conn, handle, _) = in_node_netns(rtnetlink::new_connection)
        .and_then(|r| r)
        .context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of a link, if it exists.
pub async fn link_index(h: &Handle, name: &str) -> anyhow::Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(nix::errno::Errno::ENODEV as i32) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn up(h: &Handle, index: u32) -> anyhow::Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await?;
    Ok(())
}

async fn add_addr(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    match h.address().add(index, ip.into(), prefix).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(nix::errno::Errno::EEXIST as i32) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the node's bridge (if missing) with the gateway address, and brings it up.
pub async fn ensure_bridge(h: &Handle, name: &str, gateway: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    let index = match link_index(h, name).await? {
        Some(i) => i,
        None => {
            h.link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .with_context(|| format!("creating bridge {name}"))?;
            link_index(h, name).await?.context("the new bridge vanished")?
        }
    };
    add_addr(h, index, gateway, prefix).await?;
    up(h, index).await
}

/// Removes a link if it exists.
pub async fn delete_link(h: &Handle, name: &str) -> anyhow::Result<()> {
    if let Some(i) = link_index(h, name).await? {
        h.link().del(i).execute().await?;
    }
    Ok(())
}

/// Removes bridge `name` with every link attached to it (the pods' host-side veths, which take
/// their peers along): a pod's namespace that is being torn down may still hold its veth for a
/// moment.
pub async fn delete_bridge_and_ports(h: &Handle, name: &str) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let Some(bridge) = link_index(h, name).await? else {
        return Ok(());
    };
    let mut links = h.link().get().execute();
    let mut ports = Vec::new();
    while let Some(l) = links.try_next().await.context("listing links")? {
        if l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge))
        {
            ports.push(l.header.index);
        }
    }
    for port in ports {
        // Gone already when its namespace went first.
        let _ = h.link().del(port).execute().await;
    }
    h.link().del(bridge).execute().await?;
    Ok(())
}

/// A pod's network: where its veth goes and what address it gets. All of it or none of it: its
/// arguments are not required one by one (clap would then require them of host-network pods too),
/// but a pod network with one missing is refused when parsed.
#[derive(Debug, Clone, clap::Args)]
pub struct PodNet {
    /// The node's bridge.
    #[arg(long, required = false)]
    pub bridge: String,
    /// Host-side name of the pod's veth.
    #[arg(long, required = false)]
    pub veth: String,
    /// The pod's address.
    #[arg(long, required = false)]
    pub ip: Ipv4Addr,
    /// Prefix length of the node's pod CIDR.
    #[arg(long, required = false)]
    pub prefix: u8,
    /// The bridge's address, the pod's default gateway.
    #[arg(long, required = false)]
    pub gateway: Ipv4Addr,
    /// The cluster's service range: the pod gets an unreachable route for it, so a service address
    /// that the proxy has not programmed fails inside the pod instead of leaving the node.
    #[arg(long)]
    pub service_cidr: Option<String>,
}

/// `skiff-agent sandbox`: creates a pod's namespaces (single-threaded, before any runtime starts).
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Directory where `net`, `ipc` and `uts` namespace files are bind-mounted.
    #[arg(long)]
    pub dir: PathBuf,
    /// The pod's host name.
    #[arg(long)]
    pub hostname: String,
    /// Share the host's network (and host name): only an IPC namespace is made.
    #[arg(long)]
    pub host_network: bool,
    /// Wire the pod into the bridge (else it has only `lo`).
    #[command(flatten)]
    pub net: Option<PodNet>,
    /// The node's network namespace (the agent's `--netns`), entered before anything else.
    #[arg(long)]
    pub node_netns: Option<PathBuf>,
    /// Give the pod a user namespace mapping its IDs from this host ID (`hostUsers: false`); its
    /// network, IPC and UTS namespaces are then made inside it.
    #[arg(long)]
    pub userns_base: Option<u32>,
}

/// Namespace kinds a sandbox holds, and their `/proc/self/ns` names (`user` only for pods in a
/// user namespace).
pub const NAMESPACES: [&str; 4] = ["net", "ipc", "uts", "user"];

/// Bind-mounts the namespaces `names` of the process whose `/proc` entry is `proc` into `dir`.
fn bind_namespaces(dir: &Path, proc: &str, names: &[&str]) -> anyhow::Result<()> {
    for ns in names {
        let target = dir.join(ns);
        std::fs::File::create(&target)?;
        nix::mount::mount(
            Some(Path::new(&format!("{proc}/ns/{ns}"))),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting the {ns} namespace"))?;
    }
    Ok(())
}

/// Makes the pod's user namespace (IDs from `base`) with its network, IPC and UTS namespaces
/// inside, through `skiff-agent userns-hold`, and bind-mounts all four into `dir`.
fn make_user_namespaces(dir: &Path, base: u32) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut holder = std::process::Command::new("/proc/self/exe")
        .arg("userns-hold")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the user namespace holder")?;
    let made = (|| -> anyhow::Result<()> {
        let mut line = String::new();
        let stdout = holder.stdout.take().context("the holder's stdout")?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the user namespace holder failed");
        }
        let proc = format!("/proc/{}", holder.id());
        let map = crate::runtime::userns::id_map(base);
        std::fs::write(format!("{proc}/uid_map"), &map).context("writing the pod's uid_map")?;
        std::fs::write(format!("{proc}/gid_map"), &map).context("writing the pod's gid_map")?;
        bind_namespaces(dir, &proc, &NAMESPACES)
    })();
    drop(holder.stdin.take());
    let _ = holder.wait();
    made
}

/// Runs the sandbox helper; returns the process exit code.
pub fn sandbox_main(args: SandboxArgs) -> i32 {
    if let Some(ns) = &args.node_netns
        && let Err(e) = enter_netns(ns)
    {
        eprintln!("skiff-agent sandbox: {e:#}");
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff-agent sandbox: {e}");
            return 1;
        }
    };
    match rt.block_on(create_sandbox(&args)) {
        Ok(()) => 0,
        Err(e) => {
            let _ = release_sandbox(&args.dir);
            eprintln!("skiff-agent sandbox: {e:#}");
            1
        }
    }
}

async fn create_sandbox(args: &SandboxArgs) -> anyhow::Result<()> {
    use nix::sched::CloneFlags;
    std::fs::create_dir_all(&args.dir)?;
    // A connection opened now stays in the host's namespace after the unshare below.
    let host = connect()?;
    let net = args.net.as_ref();
    let peer = net.map(|n| format!("{}p", &n.veth[..n.veth.len().min(14)]));
    if let (Some(n), Some(peer)) = (net, &peer) {
        delete_link(&host, &n.veth).await?;
        host.link()
            .add(LinkVeth::new(&n.veth, peer).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {}", n.veth))?;
    }
    if args.host_network {
        nix::sched::unshare(CloneFlags::CLONE_NEWIPC).context("unshare")?;
        return bind_namespaces(&args.dir, "/proc/self", &["ipc"]);
    }
    match args.userns_base {
        Some(base) => {
            make_user_namespaces(&args.dir, base)?;
            // This helper stays in the host's user namespace (its netlink socket must): it
            // enters the pod's UTS and network namespaces, which it may as their owner's parent.
            for (ns, flag) in [
                ("uts", CloneFlags::CLONE_NEWUTS),
                ("net", CloneFlags::CLONE_NEWNET),
            ] {
                let file = std::fs::File::open(args.dir.join(ns))?;
                nix::sched::setns(file, flag)
                    .with_context(|| format!("entering the pod's {ns} namespace"))?;
            }
        }
        None => {
            nix::sched::unshare(
                CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
            )
            .context("unshare")?;
            bind_namespaces(&args.dir, "/proc/self", &NAMESPACES[..3])?;
        }
    }
    nix::unistd::sethostname(&args.hostname).context("sethostname")?;
    let pod = connect()?;
    let lo = link_index(&pod, "lo")
        .await?
        .context("no lo in the new namespace")?;
    up(&pod, lo).await?;
    if let (Some(n), Some(peer)) = (net, &peer) {
        let bridge = link_index(&host, &n.bridge)
            .await?
            .with_context(|| format!("bridge {} is missing", n.bridge))?;
        let veth = link_index(&host, &n.veth)
            .await?
            .context("the new veth vanished")?;
        let peer_index = link_index(&host, peer).await?.context("the veth peer vanished")?;
        let nsfile = std::fs::File::open(args.dir.join("net"))?;
        use std::os::fd::AsRawFd;
        host.link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .setns_by_fd(nsfile.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .context("moving the veth into the pod")?;
        host.link()
            .set(LinkUnspec::new_with_index(veth).controller(bridge).up().build())
            .execute()
            .await
            .context("attaching the veth to the bridge")?;
        // Hairpin: a pod's connection to its own service may be DNATed back to the pod; the bridge
        // must send that frame back out of the port it came in on (kubelet's hairpin-veth mode).
        host.link()
            .set_port(rtnetlink::LinkBridgePort::new(veth).hairpin(true).build())
            .execute()
            .await
            .context("turning on hairpin mode on the pod's bridge port")?;
        let inner = link_index(&pod, peer)
            .await?
            .context("the veth did not arrive in the pod")?;
        pod.link()
            .set(LinkUnspec::new_with_index(inner).name("eth0".to_string()).build())
            .execute()
            .await?;
        add_addr(&pod, inner, n.ip, n.prefix).await?;
        up(&pod, inner).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(n.gateway)
            .output_interface(inner)
            .build();
        pod.route()
            .add(route)
            .execute()
            .await
            .context("adding the pod's default route")?;
        if let Some(cidr) = &n.service_cidr {
            add_unreachable(&pod, cidr).await?;
        }
    }
    Ok(())
}

/// Adds `route`, replacing one to the same destination.
pub async fn replace_route(
    h: &Handle,
    route: rtnetlink::packet_route::route::RouteMessage,
) -> Result<(), rtnetlink::Error> {
    h.route().add(route).replace().execute().await
}

/// The routing protocol number the agent's routes carry (`ip route show proto 115`), so that
/// `skiff-agent uninstall` finds them all.
pub const ROUTE_PROTOCOL: u8 = 115;

fn agent_protocol() -> rtnetlink::packet_route::route::RouteProtocol {
    rtnetlink::packet_route::route::RouteProtocol::Other(ROUTE_PROTOCOL)
}

/// A route builder for `cidr` marked as the agent's.
pub fn agent_route(addr: Ipv4Addr, prefix: u8) -> RouteMessageBuilder<Ipv4Addr> {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(addr, prefix)
        .protocol(agent_protocol())
}

/// Removes every IPv4 route of the main table that carries [`ROUTE_PROTOCOL`].
pub async fn delete_routes_of_agent(h: &Handle) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut ours = Vec::new();
    while let Some(r) = routes.try_next().await.context("listing routes")? {
        if r.header.protocol == agent_protocol() {
            ours.push(r);
        }
    }
    for r in ours {
        h.route().del(r).execute().await.context("removing a route")?;
    }
    Ok(())
}

/// Installs (or keeps) an `unreachable` route for `cidr` in the namespace `h` talks to.
pub async fn add_unreachable(h: &Handle, cidr: &str) -> anyhow::Result<()> {
    let (addr, prefix) = parse_cidr(cidr)?;
    let route = agent_route(addr, prefix)
        .kind(rtnetlink::packet_route::route::RouteType::Unreachable)
        .build();
    replace_route(h, route)
        .await
        .with_context(|| format!("adding an unreachable route for the service range {cidr}"))
}

/// Installs (or keeps) a route for `cidr` out of link `dev` (no gateway).
pub async fn add_link_route(h: &Handle, cidr: &str, dev: &str) -> anyhow::Result<()> {
    let (addr, prefix) = parse_cidr(cidr)?;
    let index = link_index(h, dev)
        .await?
        .with_context(|| format!("no link {dev}"))?;
    let route = agent_route(addr, prefix)
        .output_interface(index)
        .scope(rtnetlink::packet_route::route::RouteScope::Link)
        .build();
    replace_route(h, route)
        .await
        .with_context(|| format!("adding a route for {cidr} via {dev}"))
}

/// Unmounts a sandbox's namespace files (the namespaces go when nothing else holds them).
pub fn release_sandbox(dir: &Path) -> anyhow::Result<()> {
    for ns in NAMESPACES {
        let target = dir.join(ns);
        if target.exists() {
            let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
            std::fs::remove_file(&target).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        }
    }
    Ok(())
}

/// The first global IPv4 address of the host (what the node reports by default).
pub async fn default_ip() -> Option<String> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let h = connect().ok()?;
    let mut addrs = h.address().get().execute();
    while let Ok(Some(a)) = addrs.try_next().await {
        if a.header.scope != rtnetlink::packet_route::address::AddressScope::Universe {
            continue;
        }
        for attr in &a.attributes {
            if let AddressAttribute::Address(std::net::IpAddr::V4(ip)) = attr
                && !ip.is_loopback()
            {
                return Some(ip.to_string());
            }
        }
    }
    None
}

/// The names of the node's interfaces that hold any of `ips` (where NodePorts are served).
pub async fn interfaces_with(ips: &[Ipv4Addr]) -> anyhow::Result<Vec<String>> {
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkAttribute;
    let h = connect()?;
    let mut indexes = std::collections::BTreeSet::new();
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await? {
        let holds = a.attributes.iter().any(
            |attr| matches!(attr, AddressAttribute::Address(std::net::IpAddr::V4(ip)) if ips.contains(ip)),
        );
        if holds {
            indexes.insert(a.header.index);
        }
    }
    let mut names = Vec::new();
    for index in indexes {
        let mut links = h.link().get().match_index(index).execute();
        if let Some(l) = links.try_next().await? {
            names.extend(l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }));
        }
    }
    Ok(names)
}

/// Whether a sandbox's namespaces are still held.
pub fn sandbox_alive(dir: &Path) -> bool {
    skiff_common::fs::is_mountpoint(&dir.join("net"))
}

/// Host-side veth name for a pod (at most 15 bytes, unique per pod uid).
pub fn veth_name(prefix: &str, uid: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, uid.as_bytes());
    let hex: String = digest
        .as_ref()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect();
    let p: String = prefix.chars().take(4).collect();
    format!("{p}{hex}")
}

/// Checks an IPv4 CIDR and returns (network, prefix).
pub fn parse_cidr(cidr: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, len) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr:?} is not a CIDR"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("{cidr:?} is not an IPv4 CIDR"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("{cidr:?} has a bad prefix length"))?;
    if len > 30 {
        bail!("{cidr:?} is too small for pods");
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sandbox: SandboxArgs,
    }

    #[test]
    fn sandbox_arguments_parse_with_and_without_a_pod_network() {
        let host = Cli::try_parse_from(["x", "--dir", "/d", "--hostname", "h", "--host-network"]).unwrap();
        assert!(host.sandbox.host_network && host.sandbox.net.is_none());
        let pod = Cli::try_parse_from([
            "x",
            "--dir",
            "/d",
            "--hostname",
            "h",
            "--bridge",
            "br",
            "--veth",
            "v",
            "--ip",
            "10.0.0.2",
            "--prefix",
            "24",
            "--gateway",
            "10.0.0.1",
        ])
        .unwrap();
        let net = pod.sandbox.net.unwrap();
        assert_eq!((net.ip, net.prefix), (Ipv4Addr::new(10, 0, 0, 2), 24));
        assert!(Cli::try_parse_from(["x", "--dir", "/d", "--hostname", "h", "--bridge", "br"]).is_err());
    }
}
