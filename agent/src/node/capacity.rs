//! What the node reports about itself: capacity, system information and addresses.

use serde_json::{Value, json};

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Memory in KiB from /proc/meminfo.
fn memory_kib() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".into())
}

/// Go's architecture names, as Kubernetes reports them.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// CPUs this node offers.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Memory this node offers, in bytes.
pub fn memory_bytes() -> u64 {
    memory_kib() * 1024
}

/// The directory whose filesystem holds the pods' writable layers, logs and emptyDirs (the
/// agent's data directory; set once at start).
static STORAGE_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Sets where `ephemeral-storage` is measured.
pub fn set_storage_dir(dir: &std::path::Path) {
    let _ = STORAGE_DIR.set(dir.to_owned());
}

/// The size of that filesystem in bytes (the kubelet's nodefs capacity).
fn ephemeral_storage() -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(STORAGE_DIR.get()?).ok()?;
    Some(st.blocks() * st.fragment_size())
}

/// `status.capacity` (and, with nothing reserved yet, `status.allocatable`).
pub fn capacity(max_pods: u32) -> Value {
    let cpus = cpu_count();
    let mut cap = json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory_kib()), "pods": max_pods.to_string()});
    if let Some(bytes) = ephemeral_storage() {
        cap["ephemeral-storage"] = json!(format!("{}Ki", bytes / 1024));
    }
    cap
}

/// `status.nodeInfo`.
pub fn node_info() -> Value {
    json!({
        "machineID": read("/etc/machine-id"),
        "systemUUID": read("/sys/class/dmi/id/product_uuid"),
        "bootID": read("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": read("/proc/sys/kernel/osrelease"),
        "osImage": os_image(),
        "containerRuntimeVersion": concat!("skiff://", env!("CARGO_PKG_VERSION")),
        "kubeletVersion": "v1.32.0-skiff",
        "kubeProxyVersion": "v1.32.0-skiff",
        "operatingSystem": "linux",
        "architecture": arch(),
    })
}
