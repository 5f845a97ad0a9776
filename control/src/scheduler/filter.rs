//! Filters: which nodes can run a pod, each failure with upstream's reason text.

use std::collections::BTreeMap;

use serde_json::Value;

use super::node_info::NodeInfo;

/// Whether the pod tolerates a taint.
pub fn tolerates(pod: &Value, taint: &Value) -> bool {
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            let effect_ok = t["effect"]
                .as_str()
                .is_none_or(|e| e.is_empty() || Some(e) == taint["effect"].as_str());
            let key_ok = match t["key"].as_str() {
                None | Some("") => t["operator"] == "Exists",
                Some(k) => Some(k) == taint["key"].as_str(),
            };
            let value_ok = match t["operator"].as_str() {
                Some("Exists") => true,
                _ => t["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default(),
            };
            effect_ok && key_ok && value_ok
        })
}

/// Whether a node selector term (`matchExpressions`, `matchFields`) matches the node.
pub fn term_matches(term: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let exprs_ok = term["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let have = labels[key].as_str();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let number = |s: Option<&str>| s.and_then(|v| v.parse::<i64>().ok());
            match e["operator"].as_str().unwrap_or_default() {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                "Gt" => {
                    matches!((number(have), number(values.first().copied())), (Some(h), Some(v)) if h > v)
                }
                "Lt" => {
                    matches!((number(have), number(values.first().copied())), (Some(h), Some(v)) if h < v)
                }
                _ => false,
            }
        });
    let fields_ok = term["matchFields"].as_array().into_iter().flatten().all(|e| {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e["operator"].as_str().unwrap_or_default() {
            "In" => e["key"] == "metadata.name" && values.contains(&name),
            "NotIn" => e["key"] == "metadata.name" && !values.contains(&name),
            _ => false,
        }
    });
    exprs_ok && fields_ok
}

/// The parts of a pod that filters and scores read, looked up once per decision rather than once
/// per node.
#[derive(Debug)]
pub struct PodView<'a> {
    /// The pod.
    pub pod: &'a Value,
    tolerations: &'a [Value],
    node_selector: Option<&'a serde_json::Map<String, Value>>,
    required_terms: Option<&'a [Value]>,
    /// `preferredDuringSchedulingIgnoredDuringExecution` node affinity terms.
    pub preferred_terms: &'a [Value],
}

impl<'a> PodView<'a> {
    /// Looks the pod's scheduling fields up.
    pub fn new(pod: &'a Value) -> Self {
        let spec = &pod["spec"];
        let node_affinity = &spec["affinity"]["nodeAffinity"];
        Self {
            pod,
            tolerations: spec["tolerations"].as_array().map_or(&[], Vec::as_slice),
            node_selector: spec["nodeSelector"].as_object().filter(|m| !m.is_empty()),
            required_terms:
                node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                    .as_array()
                    .map(Vec::as_slice),
            preferred_terms: node_affinity["preferredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .map_or(&[], Vec::as_slice),
        }
    }

    /// Stops testing the nodeSelector, for callers that only pass nodes already found through a
    /// label index.
    pub fn selector_already_matched(&mut self) {
        self.node_selector = None;
    }

    /// Whether the pod tolerates a taint.
    pub fn tolerates(&self, taint: &Value) -> bool {
        !self.tolerations.is_empty() && tolerates(self.pod, taint)
    }

    /// Whether the pod's nodeSelector and required node affinity accept the node.
    pub fn node_matches(&self, node: &Value) -> bool {
        let selector_ok = self.node_selector.is_none_or(|sel| {
            let labels = &node["metadata"]["labels"];
            sel.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        selector_ok
            && self
                .required_terms
                .is_none_or(|terms| terms.iter().any(|t| term_matches(t, node)))
    }
}

/// Whether the pod's nodeSelector and required node affinity accept the node.
pub fn selector_and_affinity_match(pod: &Value, node: &Value) -> bool {
    PodView::new(pod).node_matches(node)
}

fn host_ports(pod: &Value) -> Vec<(String, i64)> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| {
            let hp = p["hostPort"].as_i64().filter(|h| *h > 0)?;
            Some((p["protocol"].as_str().unwrap_or("TCP").to_owned(), hp))
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
    ports: &[(String, i64)],
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
    if ports.iter().any(|p| info.host_ports.contains(p)) {
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
pub fn pod_host_ports(pod: &Value) -> Vec<(String, i64)> {
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
