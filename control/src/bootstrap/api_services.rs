//! The APIServices of the built-in group versions, as kube-aggregator registers them at start
//! (`kube-aggregator.kubernetes.io/automanaged: onstart`): local, always available, with
//! upstream's group and version priorities, so `kubectl get apiservices` lists what is served.

use serde_json::{Value, json};

use crate::objects::registry::Registry;

/// Upstream's group priority (`groupPriorityMinimum`) and version priority for a built-in
/// group version.
fn priorities(group: &str, version: &str) -> (i64, i64) {
    let group_priority = match group {
        "" => 18000,
        "apps" | "apiregistration.k8s.io" => 17800,
        "events.k8s.io" => 17750,
        "authentication.k8s.io" => 17700,
        "authorization.k8s.io" => 17600,
        "autoscaling" => 17500,
        "batch" => 17400,
        "certificates.k8s.io" => 17300,
        "networking.k8s.io" => 17200,
        "policy" => 17100,
        "rbac.authorization.k8s.io" => 17000,
        "storage.k8s.io" => 16800,
        "admissionregistration.k8s.io" | "apiextensions.k8s.io" => 16700,
        "scheduling.k8s.io" => 16600,
        "coordination.k8s.io" => 16500,
        "node.k8s.io" => 16300,
        "discovery.k8s.io" => 16200,
        "flowcontrol.apiserver.k8s.io" => 16100,
        _ => 1000,
    };
    let version_priority = match (group, version) {
        ("", _) => 1,
        ("autoscaling", "v2") => 30,
        _ => 15,
    };
    (group_priority, version_priority)
}

/// One APIService per built-in group version the registry serves.
pub fn local(registry: &Registry) -> Vec<Value> {
    let mut versions: Vec<(String, String)> = registry
        .all()
        .iter()
        .filter(|r| r.crd.is_none())
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    versions.sort();
    versions.dedup();
    versions
        .into_iter()
        .map(|(group, version)| {
            let (group_priority, version_priority) = priorities(&group, &version);
            json!({
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": format!("{version}.{group}"),
                    "labels": {"kube-aggregator.kubernetes.io/automanaged": "onstart"}},
                "spec": {"group": group, "version": version, "groupPriorityMinimum": group_priority,
                    "versionPriority": version_priority},
                "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Local",
                    "message": "Local APIServices are always available",
                    "lastTransitionTime": crate::objects::meta::now()}]},
            })
        })
        .collect()
}
