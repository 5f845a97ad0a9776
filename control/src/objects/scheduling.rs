//! Which nodes a pod may run on by its own fields (tolerations, nodeSelector, node affinity), as
//! upstream's scheduling component helpers: shared by the scheduler and the controllers that place
//! pods themselves (DaemonSet) or bind volumes (WaitForFirstConsumer).

use serde_json::Value;

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
