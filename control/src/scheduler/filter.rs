//! Filters: which nodes can run a pod, each failure with upstream's reason text.

use std::collections::BTreeMap;

use serde_json::Value;

use super::node_info::NodeInfo;
pub use crate::objects::scheduling::{PodView, selector_and_affinity_match, term_matches, tolerates};

/// A host port a pod asks for: protocol, host IP (`0.0.0.0` when unset) and port.
pub type HostPort = (String, String, i64);

/// Whether two host ports collide (upstream's NodePorts): same protocol and port, and the same
/// host IP or either on every address.
fn collide(a: &HostPort, b: &HostPort) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

fn host_ports(pod: &Value) -> Vec<HostPort> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| {
            let hp = p["hostPort"].as_i64().filter(|h| *h > 0)?;
            let ip = p["hostIP"]
                .as_str()
                .filter(|ip| !ip.is_empty())
                .unwrap_or("0.0.0.0");
            Some((
                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                ip.to_owned(),
                hp,
            ))
        })
        .collect()
}

/// Why `node` cannot run `pod` (empty if it can). As upstream, filters run in its plugin order
/// (NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit) and stop at
/// the first that fails; the resource filter reports every insufficient resource.
pub fn check(
    pod: &PodView<'_>,
    info: &NodeInfo,
    requests: &BTreeMap<String, f64>,
    ports: &[HostPort],
) -> Vec<String> {
    let node = &info.node;
    if info.unschedulable
        && !pod.tolerates(
            &serde_json::json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}),
        )
    {
        return vec!["node(s) were unschedulable".to_owned()];
    }
    for taint in &info.taints {
        let effect = taint["effect"].as_str().unwrap_or_default();
        if (effect == "NoSchedule" || effect == "NoExecute") && !pod.tolerates(taint) {
            return vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint["key"].as_str().unwrap_or_default(),
                taint["value"].as_str().unwrap_or_default()
            )];
        }
    }
    if !pod.node_matches(node) {
        return vec!["node(s) didn't match Pod's node affinity/selector".to_owned()];
    }
    if ports
        .iter()
        .any(|p| info.host_ports.iter().any(|taken| collide(p, taken)))
    {
        return vec!["node(s) didn't have free ports for the requested pod ports".to_owned()];
    }
    let mut reasons = Vec::new();
    if info.pods + 1 > info.allocatable.get("pods").copied().unwrap_or(110.0) as usize {
        reasons.push("Too many pods".to_owned());
    }
    for (resource, want) in requests {
        if *want <= 0.0 {
            continue;
        }
        let free = info.allocatable.get(resource).copied().unwrap_or(0.0)
            - info.requested.get(resource).copied().unwrap_or(0.0);
        if *want > free + 1e-9 {
            reasons.push(format!("Insufficient {resource}"));
        }
    }
    reasons
}

/// Upstream's message for a pod no node can run: "0/3 nodes are available: 1 Insufficient cpu,
/// 2 node(s) didn't match Pod's node affinity/selector."
pub fn unschedulable_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", parts.join(", "))
    }
}

/// The pod's host ports, for node bookkeeping.
pub fn pod_host_ports(pod: &Value) -> Vec<HostPort> {
    host_ports(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn affinity_operators_and_tolerations() {
        let node = json!({"metadata": {"name": "n1", "labels": {"zone": "a", "gen": "5"}}});
        assert!(term_matches(
            &json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}),
            &node
        ));
        assert!(term_matches(
            &json!({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}),
            &node
        ));
        assert!(!term_matches(
            &json!({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}),
            &node
        ));
        assert!(term_matches(
            &json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}),
            &node
        ));
        let pod = json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}});
        assert!(tolerates(
            &pod,
            &json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"})
        ));
        assert!(!tolerates(
            &pod,
            &json!({"key": "dedicated", "value": "web", "effect": "NoSchedule"})
        ));
    }

    #[test]
    fn message_shape() {
        let reasons = BTreeMap::from([
            ("Insufficient cpu".to_owned(), 1),
            ("node(s) didn't match Pod's node affinity/selector".to_owned(), 2),
        ]);
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
    }
}
