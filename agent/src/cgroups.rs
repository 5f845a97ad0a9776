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
fn candidates(cgroups_path: &str) -> Vec<PathBuf> {
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
