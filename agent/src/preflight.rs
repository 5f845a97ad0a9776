//! Pre-flight checks of a node, one line each (`skiff-agent preflight`, and logged by the agent as
//! it starts): the kernel's version and configuration (BPF, BTF, cgroups, overlayfs, nftables,
//! veth and bridge), the cgroup mode, the BPF filesystem, the agent's port, the clock's
//! synchronisation, and another service proxy's rules (kube-proxy's).

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, with a limit the operator should know about.
    Warn,
    /// The agent cannot work (or cannot start) this way.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked (`kernel`, `cgroups`, ...).
    pub name: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// The one line that says why.
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{v} {:<10} {}", self.name, self.detail)
    }
}

/// `skiff-agent preflight` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PreflightArgs {
    /// The agent's HTTPS port (must be free, or held by a running skiff-agent).
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// Where the eBPF maps are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/skiff")]
    pub bpf_dir: PathBuf,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// `(major, minor)` of a kernel release such as `6.18.44-fc`.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn kernel() -> Check {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    match version(&release) {
        Some(v) if v >= (5, 10) => check("kernel", Verdict::Ok, format!("Linux {release}")),
        Some(v) if v >= (5, 4) => check(
            "kernel",
            Verdict::Warn,
            format!(
                "Linux {release}: older than 5.10, eBPF service hooks may be refused (nftables is used then)"
            ),
        ),
        _ => check(
            "kernel",
            Verdict::Fail,
            format!("Linux {release:?}: Skiff needs 5.4 or newer"),
        ),
    }
}

/// The kernel's build configuration (`/proc/config.gz`, or `/boot/config-RELEASE`).
fn kernel_config() -> Option<String> {
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f).read_to_string(&mut text).is_ok() {
            return Some(text);
        }
    }
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_string_lossy()
        .into_owned();
    std::fs::read_to_string(format!("/boot/config-{release}")).ok()
}

/// Options the agent needs (`Fail` without) and those a mode needs (`Warn` without).
const NEEDED: &[(&str, Verdict, &str)] = &[
    ("CONFIG_CGROUPS", Verdict::Fail, "cgroups"),
    ("CONFIG_MEMCG", Verdict::Fail, "memory limits"),
    ("CONFIG_OVERLAY_FS", Verdict::Fail, "container root filesystems"),
    ("CONFIG_VETH", Verdict::Fail, "pod network links"),
    ("CONFIG_BRIDGE", Verdict::Fail, "the pod bridge"),
    ("CONFIG_BPF_SYSCALL", Verdict::Warn, "eBPF services"),
    ("CONFIG_CGROUP_BPF", Verdict::Warn, "eBPF socket hooks"),
    ("CONFIG_NET_CLS_BPF", Verdict::Warn, "eBPF NodePorts"),
    (
        "CONFIG_DEBUG_INFO_BTF",
        Verdict::Warn,
        "BTF for bpftool's named fields",
    ),
    ("CONFIG_NF_TABLES", Verdict::Warn, "the nftables service proxy"),
    ("CONFIG_SECCOMP_FILTER", Verdict::Warn, "seccomp profiles"),
    ("CONFIG_USER_NS", Verdict::Warn, "hostUsers: false"),
];

fn config_checks(config: Option<&str>) -> Check {
    let Some(config) = config else {
        return check(
            "config",
            Verdict::Warn,
            "kernel configuration not readable (no /proc/config.gz or /boot/config-*): options not checked",
        );
    };
    let set = |option: &str| {
        config
            .lines()
            .any(|l| l == format!("{option}=y") || l == format!("{option}=m"))
    };
    let missing: Vec<&(&str, Verdict, &str)> = NEEDED.iter().filter(|(o, _, _)| !set(o)).collect();
    let worst = missing
        .iter()
        .map(|(_, v, _)| *v)
        .max_by_key(|v| *v as u8)
        .unwrap_or(Verdict::Ok);
    if missing.is_empty() {
        return check(
            "config",
            Verdict::Ok,
            "BPF, cgroup BPF, BTF, overlayfs, nftables, veth, bridge, seccomp, user namespaces",
        );
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(o, _, what)| format!("{o} ({what})"))
        .collect();
    check("config", worst, format!("not set: {}", list.join(", ")))
}

fn btf() -> Check {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        check("btf", Verdict::Ok, "/sys/kernel/btf/vmlinux")
    } else {
        check(
            "btf",
            Verdict::Warn,
            "no /sys/kernel/btf/vmlinux: eBPF programs may not load (nftables is used then)",
        )
    }
}

fn cgroups() -> Check {
    let mode = crate::runtime::cgroups::mode();
    match mode {
        "v2" => check("cgroups", Verdict::Ok, "v2 (unified)"),
        m if crate::runtime::cgroups::hybrid_unified().is_some() => check(
            "cgroups",
            Verdict::Warn,
            format!(
                "{m}: limits through the v1 controllers, eBPF hooks on the cgroup2 mount; production nodes run v2"
            ),
        ),
        m => check(
            "cgroups",
            Verdict::Warn,
            format!("{m} without a cgroup2 mount: no eBPF service hooks (nftables is used)"),
        ),
    }
}

fn overlay() -> Check {
    let listed = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|f| f.lines().any(|l| l.split_whitespace().last() == Some("overlay")));
    if listed {
        check("overlayfs", Verdict::Ok, "registered")
    } else {
        check(
            "overlayfs",
            Verdict::Fail,
            "overlay is not in /proc/filesystems (modprobe overlay): containers cannot get root filesystems",
        )
    }
}

fn bpffs(dir: &Path) -> Check {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    let on_bpffs =
        nix::sys::statfs::statfs(at).is_ok_and(|s| s.filesystem_type().0 == crate::proxy::ebpf::BPF_FS_MAGIC);
    if on_bpffs {
        check(
            "bpffs",
            Verdict::Ok,
            format!("{} is on a BPF filesystem", dir.display()),
        )
    } else if dir.starts_with("/sys/fs/bpf") {
        check(
            "bpffs",
            Verdict::Warn,
            "nothing mounted at /sys/fs/bpf: the agent mounts it (pins do not outlive a reboot either way)",
        )
    } else {
        check(
            "bpffs",
            Verdict::Fail,
            format!(
                "{} is not on a BPF filesystem (mount -t bpf bpf DIR)",
                dir.display()
            ),
        )
    }
}

/// The command name of the process listening on TCP `port`, if one is found.
fn listener_of(port: u16) -> Option<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        (local_port == port && f.get(3) == Some(&"0A")).then(|| f.get(9).map(|s| (*s).to_owned()))?
    })?;
    let socket = format!("socket:[{inode}]");
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let fds = proc.path().join("fd");
        let Ok(entries) = std::fs::read_dir(&fds) else {
            continue;
        };
        for fd in entries.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == socket.as_str()) {
                return std::fs::read_to_string(proc.path().join("comm"))
                    .ok()
                    .map(|c| c.trim().to_owned());
            }
        }
    }
    Some("another process".into())
}

fn port(port: u16) -> Check {
    match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => check("port", Verdict::Ok, format!("{port}/tcp is free")),
        Err(_) => match listener_of(port) {
            Some(c) if c == "skiff-agent" => check(
                "port",
                Verdict::Ok,
                format!("{port}/tcp is held by a running skiff-agent"),
            ),
            Some(c) => check(
                "port",
                Verdict::Fail,
                format!("{port}/tcp is in use by {c}: stop it, or give the agent another --port"),
            ),
            None => check("port", Verdict::Fail, format!("{port}/tcp cannot be bound")),
        },
    }
}

fn clock() -> Check {
    // adjtimex(2) with no modes only reads; STA_UNSYNC says the kernel's clock is not
    // disciplined by NTP (chrony, systemd-timesyncd, ntpd).
    // SAFETY: an all-zero timex is a valid value (plain integers), and adjtimex with `modes` 0
    // only writes the kernel's state into it.
    #[allow(unsafe_code)]
    let (state, t) = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        (libc::adjtimex(&mut t), t)
    };
    if state < 0 {
        return check(
            "clock",
            Verdict::Warn,
            "the clock's synchronisation cannot be read",
        );
    }
    if state == libc::TIME_ERROR || t.status & libc::STA_UNSYNC != 0 {
        check(
            "clock",
            Verdict::Warn,
            "not synchronised (start chrony or systemd-timesyncd): certificates and leases need clocks that agree",
        )
    } else {
        check("clock", Verdict::Ok, "synchronised")
    }
}

fn other_proxy() -> Check {
    // Read-only: `nft list` never creates anything (an `iptables` listing may create its table).
    let nft = |args: &[&str]| {
        std::process::Command::new("nft")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let tables = nft(&["list", "tables"]).unwrap_or_default();
    let iptables = tables.lines().any(|l| l.trim() == "table ip nat")
        && nft(&["list", "chain", "ip", "nat", "KUBE-SERVICES"]).is_some();
    let mut found = Vec::new();
    if tables.lines().any(|l| l.ends_with(" kube-proxy")) {
        found.push("nftables table kube-proxy");
    }
    if iptables {
        found.push("iptables chain KUBE-SERVICES");
    }
    if found.is_empty() {
        check("kube-proxy", Verdict::Ok, "no other service proxy's rules")
    } else {
        check(
            "kube-proxy",
            Verdict::Warn,
            format!(
                "{} present: another service proxy (kube-proxy) programs this node; stop it and remove its rules",
                found.join(" and ")
            ),
        )
    }
}

/// Every check, in order.
pub fn run(args: &PreflightArgs) -> Vec<Check> {
    let mut checks = run_at_start(args);
    checks.insert(1, config_checks(kernel_config().as_deref()));
    checks
}

/// The checks the agent logs as it starts: all but the kernel configuration (decompressing
/// `/proc/config.gz` would leave the agent's heap larger for the rest of its life).
pub fn run_at_start(args: &PreflightArgs) -> Vec<Check> {
    vec![
        kernel(),
        btf(),
        cgroups(),
        overlay(),
        bpffs(&args.bpf_dir),
        port(args.port),
        clock(),
        other_proxy(),
    ]
}

/// `skiff-agent preflight`: prints each check; the exit status is 1 when one failed.
pub fn main(args: &PreflightArgs) -> i32 {
    let checks = run(args);
    for c in &checks {
        println!("{c}");
    }
    i32::from(checks.iter().any(|c| c.verdict == Verdict::Fail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_and_missing_options_are_named_by_their_worst() {
        assert_eq!(version("6.18.44-fc-v1147"), Some((6, 18)));
        assert_eq!(version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(version("junk"), None);
        let all: String = NEEDED.iter().map(|(o, _, _)| format!("{o}=y\n")).collect();
        assert_eq!(config_checks(Some(&all)).verdict, Verdict::Ok);
        let no_btf = all.replace(
            "CONFIG_DEBUG_INFO_BTF=y\n",
            "# CONFIG_DEBUG_INFO_BTF is not set\n",
        );
        let c = config_checks(Some(&no_btf));
        assert_eq!(c.verdict, Verdict::Warn);
        assert_eq!(
            c.detail,
            "not set: CONFIG_DEBUG_INFO_BTF (BTF for bpftool's named fields)"
        );
        let no_overlay = no_btf.replace("CONFIG_OVERLAY_FS=y\n", "");
        assert_eq!(config_checks(Some(&no_overlay)).verdict, Verdict::Fail);
        assert_eq!(config_checks(None).verdict, Verdict::Warn);
    }

    #[test]
    fn a_taken_port_fails_and_names_its_holder() {
        let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let c = super::port(port);
        assert_eq!(c.verdict, Verdict::Fail, "{c}");
        assert!(c.detail.contains(&format!("{port}/tcp is in use by")), "{c}");
        drop(held);
        assert_eq!(super::port(port).verdict, Verdict::Ok);
    }
}
