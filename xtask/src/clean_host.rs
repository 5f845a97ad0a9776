//! `cargo xtask clean-host`: removes what interrupted test runs left on this host, recognised by the
//! tests' unique prefix (`sk<hex>`): their agents, shims and containers, mounts under their temporary
//! directories (bpffs, overlays, namespace files), bridges, cgroups, nftables tables and network
//! namespaces. Production
//! names (`skiff0`, the `skiff` cgroup, `/sys/fs/bpf/skiff`) never match.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `sk` followed by hex digits only: the test prefix (`unique_prefix()` in tests/src/node.rs).
fn is_prefix(name: &str) -> bool {
    name.strip_prefix("sk")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A test bridge: `<prefix>br`.
fn is_bridge(name: &str) -> bool {
    name.strip_suffix("br").is_some_and(is_prefix)
}

/// A test node's (or test network's) namespace: `<prefix>-<suffix>` under /run/netns.
fn is_netns(name: &str) -> bool {
    name.split_once('-')
        .is_some_and(|(p, rest)| is_prefix(p) && !rest.is_empty())
}

/// The test nodes' temporary directories: `<tmp>/<prefix>-agent-XXXX`.
fn node_dirs() -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    std::fs::read_dir(&tmp)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split_once("-agent-").is_some_and(|(p, _)| is_prefix(p))
        })
        .map(|e| e.path())
        .collect()
}

fn kill(pid: i64, what: &str) {
    if pid > 1 && Path::new(&format!("/proc/{pid}")).exists() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        eprintln!("killed {what} {pid}");
    }
}

/// Containers (from their shims' status files), then every process started with a path inside a
/// node directory (agents, shims, exec helpers).
fn kill_processes(dirs: &[PathBuf]) {
    for dir in dirs {
        let pods = dir.join("data/pods");
        for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
            let containers = std::fs::read_dir(pod.path().join("containers"));
            for c in containers.into_iter().flatten().flatten() {
                for attempt in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                    let Ok(text) = std::fs::read_to_string(attempt.path().join("status/started.json")) else {
                        continue;
                    };
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    kill(v["pid"].as_i64().unwrap_or(0), "container");
                    kill(v["shimPid"].as_i64().unwrap_or(0), "shim");
                }
            }
        }
    }
    for proc_dir in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = proc_dir.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(proc_dir.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if dirs.iter().any(|d| cmdline.contains(&*d.to_string_lossy())) {
            kill(pid, "process");
        }
    }
}

fn unmount_under(dirs: &[PathBuf]) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| dirs.iter().any(|d| Path::new(p).starts_with(d)))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        if Command::new("umount")
            .args(["-l", &p])
            .status()
            .is_ok_and(|s| s.success())
        {
            eprintln!("unmounted {p}");
        }
    }
}

fn remove_bridges() {
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "12: sk1a2b0br: <BROADCAST,...> ..." or "13: skab12cd34ef@if2: ... master sk1a2b0br ..."
        let Some(name) = line
            .split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next().unwrap_or(""))
        else {
            continue;
        };
        let enslaved = line
            .split_whitespace()
            .skip_while(|w| *w != "master")
            .nth(1)
            .is_some_and(is_bridge);
        if is_bridge(name) || enslaved {
            let _ = Command::new("ip").args(["link", "del", name]).status();
            eprintln!("deleted link {name}");
        }
    }
}

fn remove_cgroups() {
    fn rm(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rm(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            hierarchies.push(e.path());
        }
    }
    for h in hierarchies {
        for e in std::fs::read_dir(&h).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) && is_prefix(&e.file_name().to_string_lossy()) {
                rm(&e.path());
                if !e.path().exists() {
                    eprintln!("removed cgroup {}", e.path().display());
                }
            }
        }
    }
}

fn remove_nft_tables() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "table ip skiff-sk1a2b0br"
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["table", family, name] = words.as_slice()
            && name.strip_prefix("skiff-").is_some_and(is_bridge)
        {
            let _ = Command::new("nft")
                .args(["delete", "table", family, name])
                .status();
            eprintln!("deleted nftables table {family} {name}");
        }
    }
}

/// Network namespaces of test nodes: their links, pod veths and nftables tables go with them.
fn remove_netns() {
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_netns(&name)
            && Command::new("ip")
                .args(["netns", "del", &name])
                .status()
                .is_ok_and(|s| s.success())
        {
            eprintln!("deleted network namespace {name}");
        }
    }
}

/// Removes every test leftover it finds; reports what it removed.
pub fn run() -> anyhow::Result<()> {
    let dirs = node_dirs();
    kill_processes(&dirs);
    // Give killed shims a moment to go before their mounts and cgroups are removed.
    std::thread::sleep(std::time::Duration::from_millis(300));
    unmount_under(&dirs);
    remove_bridges();
    remove_cgroups();
    remove_nft_tables();
    remove_netns();
    for d in &dirs {
        if std::fs::remove_dir_all(d).is_ok() {
            eprintln!("removed {}", d.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_prefixes_match() {
        assert!(is_prefix("sk357c0"));
        assert!(is_bridge("sk357c0br"));
        assert!(is_netns("sk357c0-n") && !is_netns("skiff-n") && !is_netns("sk357c0"));
        for production in ["skiff", "skiff0", "sk", "skiff-sk1br", "sk12-x"] {
            assert!(!is_prefix(production) && !is_bridge(production), "{production}");
        }
    }
}
