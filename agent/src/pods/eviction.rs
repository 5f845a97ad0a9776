//! The kubelet's local storage eviction: a pod whose emptyDir outgrows its `sizeLimit`, whose
//! containers together outgrow the sum of their `ephemeral-storage` limits, or one of whose
//! containers outgrows its own (writable layer and log), is evicted: its containers are killed
//! at once, it is reported `Failed` with reason `Evicted` and the kubelet's message, and an
//! `Evicted` event says why. Usage is what `du` counts (allocated blocks).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use serde_json::Value;

/// A pod's use of the node's disk, in bytes.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    /// Each container's writable layer and log (its current attempt).
    pub containers: HashMap<String, u64>,
    /// Each disk-backed emptyDir.
    pub empty_dirs: HashMap<String, u64>,
}

/// Whether the pod asks for anything local storage eviction looks at (only then is its usage
/// measured).
pub fn watched(pod: &Value) -> bool {
    let limited = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["resources"]["limits"]["ephemeral-storage"].is_string());
    limited
        || pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["emptyDir"]["sizeLimit"].is_string() && v["emptyDir"]["medium"] != "Memory")
}

/// Bytes allocated under `path` (not following links; 0 when it is missing).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

fn limit(q: &Value) -> Option<(u64, &str)> {
    let text = q.as_str()?;
    Some((u64::try_from(super::spec::bytes(text)?).ok()?, text))
}

/// Why the kubelet would evict the pod now, in its words (`None`: it stays).
pub fn reason(pod: &Value, usage: &Usage) -> Option<String> {
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default();
        if v["emptyDir"]["medium"] == "Memory" {
            continue;
        }
        if let Some((max, text)) = limit(&v["emptyDir"]["sizeLimit"])
            && usage.empty_dirs.get(name).is_some_and(|u| *u > max)
        {
            return Some(format!(
                "Usage of EmptyDir volume \"{name}\" exceeds the limit \"{text}\". "
            ));
        }
    }
    let containers: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let limits: Vec<(u64, &str)> = containers
        .iter()
        .filter_map(|c| limit(&c["resources"]["limits"]["ephemeral-storage"]))
        .collect();
    if !limits.is_empty() {
        let total_limit: u64 = limits.iter().map(|(b, _)| b).sum();
        let on_disk = |name: &str| {
            !pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["name"] == name && v["emptyDir"]["medium"] == "Memory")
        };
        let volumes: u64 = usage
            .empty_dirs
            .iter()
            .filter(|(n, _)| on_disk(n))
            .map(|(_, u)| u)
            .sum();
        let total_use: u64 = usage.containers.values().sum::<u64>() + volumes;
        if total_use > total_limit {
            let shown = match limits.as_slice() {
                [(_, text)] => (*text).to_owned(),
                _ => total_limit.to_string(),
            };
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {shown}. "
            ));
        }
    }
    for c in containers {
        let name = c["name"].as_str().unwrap_or_default();
        if let Some((max, text)) = limit(&c["resources"]["limits"]["ephemeral-storage"])
            && usage.containers.get(name).is_some_and(|u| *u > max)
        {
            return Some(format!(
                "Container {name} exceeded its local ephemeral storage limit \"{text}\". "
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_kubelets_order_and_words() {
        let pod = json!({"spec": {
            "containers": [{"name": "a", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
                           {"name": "b"}],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "2Mi"}},
                        {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]}});
        assert!(watched(&pod));
        let mut usage = Usage::default();
        assert_eq!(reason(&pod, &usage), None);
        usage.empty_dirs.insert("ram".into(), 10 << 20);
        assert_eq!(
            reason(&pod, &usage),
            None,
            "memory emptyDirs are the tmpfs's business"
        );
        usage.containers.insert("a".into(), 512 << 10);
        assert_eq!(reason(&pod, &usage), None);
        usage.empty_dirs.insert("scratch".into(), 3 << 20);
        assert_eq!(
            reason(&pod, &usage).unwrap(),
            "Usage of EmptyDir volume \"scratch\" exceeds the limit \"2Mi\". "
        );
        usage.empty_dirs.insert("scratch".into(), 1 << 20);
        usage.empty_dirs.remove("ram");
        assert_eq!(
            reason(&pod, &usage).unwrap(),
            "Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. "
        );
        let alone = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
            {"name": "b", "resources": {"limits": {"ephemeral-storage": "8Mi"}}}]}});
        let usage = Usage {
            containers: [("a".to_owned(), 2 << 20)].into(),
            ..Usage::default()
        };
        assert_eq!(
            reason(&alone, &usage).unwrap(),
            "Container a exceeded its local ephemeral storage limit \"1Mi\". "
        );
        assert!(!watched(&json!({"spec": {"containers": [{"name": "c"}]}})));
    }

    #[test]
    fn usage_counts_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), vec![1u8; 100_000]).unwrap();
        let used = disk_usage(dir.path());
        assert!(used >= 100_000, "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
