//! Where the pods' cgroups live: cgroup v2 (unified) or v1 hierarchies, as libcontainer places them.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the host runs the unified (v2-only) hierarchy.
pub fn is_unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// Which cgroup version containers get on this host, for logs and tests.
pub fn mode() -> &'static str {
    if is_unified() { "v2" } else { "v1 (hybrid/legacy)" }
}

/// The cgroup2 hierarchy on a hybrid host (v1 controllers plus a controller-less cgroup2 mount at
/// `/sys/fs/cgroup/unified`); `None` on unified and pure-v1 hosts.
pub fn hybrid_unified() -> Option<PathBuf> {
    let unified = Path::new(ROOT).join("unified");
    (!is_unified() && unified.join("cgroup.procs").exists()).then_some(unified)
}

/// The cgroup2 directory for a cgroups path (where the service proxy's socket hooks see the
/// processes): under the root on unified hosts, under `unified` on hybrid ones.
pub fn unified_dir(cgroups_path: &str) -> Option<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    if is_unified() {
        return Some(Path::new(ROOT).join(rel));
    }
    hybrid_unified().map(|u| u.join(rel))
}

/// On a hybrid host, moves the calling process into the cgroup2 directory for `cgroups_path`
/// (created if needed). libcontainer places containers in the v1 hierarchies only there, and a
/// child inherits its parent's cgroup2 membership, so a shim that joins first brings its container
/// along. Nothing to do on unified hosts, where libcontainer places the container itself.
pub fn join_hybrid_unified(cgroups_path: &str) -> std::io::Result<()> {
    let Some(unified) = hybrid_unified() else {
        return Ok(());
    };
    let dir = unified.join(cgroups_path.trim_start_matches('/'));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// On a hybrid host, moves the calling process into the cgroup2 directory of process `pid` (an exec
/// into a container joins the container's).
pub fn join_hybrid_unified_of(pid: i32) -> std::io::Result<()> {
    let Some(unified) = hybrid_unified() else {
        return Ok(());
    };
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Ok(());
    };
    let dir = unified.join(path.trim_start_matches('/'));
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// The memory cgroup directory of a cgroups path.
pub fn memory_dir(cgroups_path: &str) -> PathBuf {
    let rel = cgroups_path.trim_start_matches('/');
    if is_unified() {
        Path::new(ROOT).join(rel)
    } else {
        Path::new(ROOT).join("memory").join(rel)
    }
}

/// Every hierarchy directory a cgroups path may have been created in.
pub fn candidates(cgroups_path: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    if is_unified() {
        return vec![Path::new(ROOT).join(rel)];
    }
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(ROOT) {
        for e in rd.flatten() {
            let p = e.path();
            // Only real hierarchies (not the symlinks such as cpu -> cpu,cpuacct).
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(p.join(rel));
            }
        }
    }
    out
}

/// Removes a cgroup subtree (deepest first) in every hierarchy; non-empty cgroups stay.
pub fn remove_tree(cgroups_path: &str) {
    fn rm(dir: &Path) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for dir in candidates(cgroups_path) {
        if dir.is_dir() {
            rm(&dir);
        }
    }
}
