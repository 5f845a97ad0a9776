//! `skiff-agent uninstall`: takes off the node what an agent put there, so the host is left as it
//! was before the agent first ran: its pods' processes, mounts and cgroups, the eBPF pins (which
//! detaches the socket and tc programs, since their links are held by nothing else; before Linux
//! 6.6 the tc programs are qdisc filters, detached by name), the nftables
//! tables, the routes it added, the pod bridge and, unless kept, the data directory. The agent must
//! be stopped first; kernel settings it turned on (IPv4 forwarding, `bridge-nf-call-iptables`)
//! stay, as other software may rely on them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The flags of `skiff-agent uninstall`: the same values the agent ran with.
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// The agent's data directory.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    pub data_dir: PathBuf,
    /// The pod bridge.
    #[arg(long, default_value = "skiff0")]
    pub bridge: String,
    /// Top-level cgroup of the node's pods.
    #[arg(long, default_value = "skiff")]
    pub cgroup_root: String,
    /// Where the eBPF maps and links are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/skiff")]
    pub bpf_dir: PathBuf,
    /// The network namespace that holds the node's network, when it was not the agent's own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Keep the data directory (images, logs, certificates); everything else still goes.
    #[arg(long)]
    pub keep_data: bool,
}

/// Runs the uninstall; returns the process exit code. Every step runs even when an earlier one
/// failed; each failure is one line on stderr.
pub fn main(args: UninstallArgs) -> i32 {
    if let Err(e) = refuse_while_running(&args.data_dir) {
        eprintln!("skiff-agent uninstall: {e:#}");
        return 1;
    }
    let mut failed = false;
    let mut step = |what: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            eprintln!("skiff-agent uninstall: {what}: {e:#}");
            failed = true;
        }
    };
    step("stopping the pods", stop_pods(&args));
    step("unmounting the pods' mounts", unmount_under(&args.data_dir));
    step("removing the pods' cgroups", remove_cgroups(&args.cgroup_root));
    step("removing the eBPF pins", remove_pins(&args.bpf_dir));
    step("removing the node's network set-up", network(&args));
    if !args.keep_data {
        step("removing the data directory", remove_data(&args.data_dir));
    }
    if failed {
        1
    } else {
        println!("uninstalled the agent of {}", args.data_dir.display());
        0
    }
}

/// `/proc/PID/cmdline`'s arguments.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p| *p != std::process::id())
        .collect()
}

/// Fails when an agent (not one of its helpers) runs on `data_dir`.
fn refuse_while_running(data_dir: &Path) -> anyhow::Result<()> {
    for pid in pids() {
        let args = cmdline(pid);
        let Some(program) = args.first() else {
            continue;
        };
        if Path::new(program).file_name().and_then(|n| n.to_str()) != Some("skiff-agent") {
            continue;
        }
        if matches!(
            args.get(1).map(String::as_str),
            Some("shim" | "exec" | "sandbox" | "image" | "uninstall")
        ) {
            continue;
        }
        let dir = args
            .iter()
            .position(|a| a == "--data-dir")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .or_else(|| {
                args.iter()
                    .find_map(|a| a.strip_prefix("--data-dir=").map(PathBuf::from))
            })
            .unwrap_or_else(|| PathBuf::from("/var/lib/skiff/agent"));
        if dir == data_dir {
            bail!(
                "the agent still runs on {} (pid {pid}): stop it first",
                data_dir.display()
            );
        }
    }
    Ok(())
}

/// Every process in the pods' cgroups (v1 hierarchies and cgroup2).
fn cgroup_pids(cgroup_root: &str) -> Vec<u32> {
    fn walk(dir: &Path, out: &mut Vec<u32>) {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    for dir in crate::runtime::cgroups::candidates(cgroup_root) {
        walk(&dir, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Kills the pods' containers (every process in their cgroups) and the agent's helpers (shims,
/// exec helpers: processes started with a path inside the data directory), then waits for them.
fn stop_pods(args: &UninstallArgs) -> anyhow::Result<()> {
    let helpers = |pid: u32| {
        cmdline(pid).iter().any(|a| {
            Path::new(a).starts_with(&args.data_dir) || a.contains(&format!("={}/", args.data_dir.display()))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left: Vec<u32> = cgroup_pids(&args.cgroup_root);
        left.extend(pids().into_iter().filter(|p| helpers(*p)));
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes still running after SIGKILL: {left:?}");
        }
        for pid in left {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        // A disk mounted at the directory itself stays.
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    points
}

/// Unmounts everything under `dir` (root filesystems, volumes, the pods' namespace files, whose
/// release ends the pods' network namespaces and their veths).
fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    for p in mounts_under(dir) {
        nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", p.display()))?;
    }
    Ok(())
}

/// Removes the pods' cgroup trees, waiting for killed processes to leave them.
fn remove_cgroups(cgroup_root: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        crate::runtime::cgroups::remove_tree(cgroup_root);
        let left: Vec<PathBuf> = crate::runtime::cgroups::candidates(cgroup_root)
            .into_iter()
            .filter(|d| d.is_dir())
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("cgroups still in use: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unpins the maps and program links: with no agent holding them, the programs detach.
fn remove_pins(bpf_dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(bpf_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", bpf_dir.display()))
        }
        _ => Ok(()),
    }
}

/// The nftables tables, the agent's routes and the bridge, in the node's network namespace.
fn network(args: &UninstallArgs) -> anyhow::Result<()> {
    if let Some(ns) = &args.netns {
        crate::network::pod_net::enter_netns(ns)?;
    }
    let tables = format!(
        "add table inet {t}\ndelete table inet {t}\nadd table ip skiff-{b}\ndelete table ip skiff-{b}\nadd table ip {h}\ndelete table ip {h}\n",
        t = crate::proxy::nft::TABLE,
        b = args.bridge,
        h = crate::network::host_ports::table(&args.bridge),
    );
    crate::proxy::ebpf::detach_tc_filters();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let h = crate::network::pod_net::connect()?;
        crate::network::pod_net::delete_routes_of_agent(&h).await?;
        crate::network::pod_net::delete_bridge_and_ports(&h, &args.bridge)
            .await
            .with_context(|| format!("removing the bridge {}", args.bridge))?;
        // Without nft on the host the agent made no tables either.
        if which("nft") {
            crate::network::pod_net::nft(&tables)
                .await
                .context("removing the nftables tables")?;
        }
        Ok(())
    })
}

/// Whether `program` is on `PATH`.
fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// Removes the data directory, unless something is still mounted in it (it would be deleted
/// through the mount).
fn remove_data(dir: &Path) -> anyhow::Result<()> {
    let left = mounts_under(dir);
    if !left.is_empty() {
        bail!("still mounted under it: {left:?}");
    }
    if !skiff_common::fs::is_mountpoint(dir) {
        return match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", dir.display()))
            }
            _ => Ok(()),
        };
    }
    // A disk of its own: emptied, left mounted.
    for e in std::fs::read_dir(dir)?.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}
