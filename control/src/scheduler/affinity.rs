//! Inter-pod affinity/anti-affinity and topology spread. For the pod being scheduled, each term
//! or constraint is turned once into per-topology-domain counts of matching pods, so checking or
//! scoring a node is a lookup.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::Bound;
use super::node_info::NodeInfo;
use crate::objects::selector::LabelSelector;

/// A pod (anti-)affinity term prepared against the cluster.
#[derive(Debug)]
struct Term {
    topology_key: String,
    /// Topology values (of `topology_key`) that hold a matching pod.
    domains: HashSet<String>,
    weight: i64,
}

/// A spread constraint prepared against the cluster.
#[derive(Debug)]
struct Spread {
    topology_key: String,
    max_skew: i64,
    hard: bool,
    counts: HashMap<String, i64>,
    min: i64,
}

impl Spread {
    /// Upstream's `topologyNormalizingWeight`: ln(domains + 2), so a constraint over many small
    /// domains (hosts) weighs more per pod than one over a few large ones (zones).
    fn weight(&self) -> f64 {
        (self.counts.len() as f64 + 2.0).ln()
    }
}

/// Everything the pod's affinity and spread rules need, computed once per decision.
#[derive(Debug, Default)]
pub struct Prepared {
    required: Vec<Term>,
    /// The pod matches its own required affinity: a first pod of its group may go anywhere.
    self_match: bool,
    anti: Vec<Term>,
    /// (topology key, value) pairs where an existing pod's required anti-affinity rejects this pod.
    existing_anti: HashSet<(String, String)>,
    preferred: Vec<Term>,
    spread: Vec<Spread>,
    /// The soft constraints are the system defaults: nodes missing a topology key are scored
    /// on the keys they have instead of being ignored.
    default_spread: bool,
}

fn labels(v: &Value) -> Option<&Value> {
    v["metadata"].get("labels")
}

/// A term's namespaces and parsed selector, ready to test many pods.
#[derive(Debug, Clone)]
pub struct Selects {
    namespaces: Vec<String>,
    owner_ns: String,
    selector: Option<LabelSelector>,
}

impl Selects {
    /// Prepares a term written in namespace `owner_ns`.
    pub fn new(term: &Value, owner_ns: &str) -> Self {
        Self {
            namespaces: term["namespaces"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
            owner_ns: owner_ns.to_owned(),
            selector: LabelSelector::from_object(&term["labelSelector"]).ok(),
        }
    }

    /// The labels a selected pod must carry one of, for index lookups (None: any pod may match).
    fn index_keys(&self) -> Option<Vec<(String, String)>> {
        let (key, values) = self.selector.as_ref()?.required_values()?;
        Some(
            values
                .into_iter()
                .map(|v| (key.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Whether the term selects `candidate`.
    pub fn matches(&self, candidate: &Value) -> bool {
        let ns = candidate["metadata"]["namespace"].as_str().unwrap_or_default();
        let ns_ok = if self.namespaces.is_empty() {
            ns == self.owner_ns
        } else {
            self.namespaces.iter().any(|n| n == ns)
        };
        ns_ok
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(labels(candidate)))
    }
}

fn term_selects(term: &Value, owner_ns: &str, candidate: &Value) -> bool {
    Selects::new(term, owner_ns).matches(candidate)
}

fn node_label<'a>(
    nodes: &'a std::collections::BTreeMap<String, NodeInfo>,
    node: &str,
    key: &str,
) -> Option<&'a str> {
    nodes.get(node)?.node["metadata"]["labels"][key].as_str()
}

/// Bound pods by label, and bound pods' required anti-affinity terms by a label they require, so
/// a decision tests only the pods (and terms) that can match instead of every bound pod.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_label: HashMap<(String, String), HashSet<String>>,
    anti: HashMap<String, Vec<AntiTerm>>,
    anti_by_label: HashMap<(String, String), HashSet<String>>,
    /// Pods with an anti-affinity term that pins no label (tested for every decision).
    anti_unindexed: HashSet<String>,
}

fn label_pairs(pod: &Value) -> impl Iterator<Item = (String, String)> + '_ {
    labels(pod)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
}

impl PodIndex {
    /// Indexes a pod bound to `node`.
    pub fn insert(&mut self, key: &str, pod: &Value, node: &Value) {
        for pair in label_pairs(pod) {
            self.by_label.entry(pair).or_default().insert(key.to_owned());
        }
        let terms = anti_terms(pod, node);
        if terms.is_empty() {
            return;
        }
        for t in &terms {
            match t.selects.index_keys() {
                Some(pairs) => {
                    for pair in pairs {
                        self.anti_by_label.entry(pair).or_default().insert(key.to_owned());
                    }
                }
                None => {
                    self.anti_unindexed.insert(key.to_owned());
                }
            }
        }
        self.anti.insert(key.to_owned(), terms);
    }

    /// Forgets a pod indexed with `insert`.
    pub fn remove(&mut self, key: &str, pod: &Value) {
        for pair in label_pairs(pod) {
            if let Some(set) = self.by_label.get_mut(&pair) {
                set.remove(key);
                if set.is_empty() {
                    self.by_label.remove(&pair);
                }
            }
        }
        for t in self.anti.remove(key).into_iter().flatten() {
            for pair in t.selects.index_keys().into_iter().flatten() {
                if let Some(set) = self.anti_by_label.get_mut(&pair) {
                    set.remove(key);
                    if set.is_empty() {
                        self.anti_by_label.remove(&pair);
                    }
                }
            }
        }
        self.anti_unindexed.remove(key);
    }

    /// The bound pods `selects` may select (a superset; callers still test each).
    fn candidates<'a>(&'a self, selects: &Selects, bound: &'a HashMap<String, Bound>) -> Vec<&'a Bound> {
        match selects.index_keys() {
            Some(pairs) => pairs
                .iter()
                .filter_map(|p| self.by_label.get(p))
                .flatten()
                .filter_map(|k| bound.get(k))
                .collect(),
            None => bound.values().collect(),
        }
    }

    /// The required anti-affinity terms of bound pods that may select `pod`.
    fn anti_for<'a>(&'a self, pod: &Value) -> impl Iterator<Item = &'a AntiTerm> {
        let mut owners: HashSet<&String> = self.anti_unindexed.iter().collect();
        for pair in label_pairs(pod) {
            owners.extend(self.anti_by_label.get(&pair).into_iter().flatten());
        }
        owners.into_iter().filter_map(|k| self.anti.get(k)).flatten()
    }

    fn has_anti(&self) -> bool {
        !self.anti.is_empty()
    }
}

fn prepare_term(term: &Value, pod: &Value, cluster: &Cluster<'_>, weight: i64) -> Term {
    let key = term["topologyKey"].as_str().unwrap_or_default().to_owned();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let selects = Selects::new(term, ns);
    let domains = cluster
        .index
        .candidates(&selects, cluster.bound)
        .into_iter()
        .filter(|b| selects.matches(&b.pod))
        .filter_map(|b| node_label(cluster.nodes, &b.node, &key).map(str::to_owned))
        .collect();
    Term {
        topology_key: key,
        domains,
        weight,
    }
}

/// A bound pod's required anti-affinity term, parsed once: its selector and the topology domain
/// it forbids.
#[derive(Debug, Clone)]
pub struct AntiTerm {
    selects: Selects,
    topology_key: String,
    domain: Option<String>,
}

/// The required anti-affinity terms of a pod bound to `node`.
pub fn anti_terms(pod: &Value, node: &Value) -> Vec<AntiTerm> {
    let owner_ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let key = t["topologyKey"].as_str().unwrap_or_default().to_owned();
            AntiTerm {
                selects: Selects::new(t, owner_ns),
                domain: node["metadata"]["labels"][&key].as_str().map(str::to_owned),
                topology_key: key,
            }
        })
        .collect()
}

/// What a decision reads of the cluster: bound pods, their index, and the nodes.
pub struct Cluster<'a> {
    /// Bound pods by key.
    pub bound: &'a HashMap<String, Bound>,
    /// Their label and anti-affinity index.
    pub index: &'a PodIndex,
    /// Nodes by name.
    pub nodes: &'a std::collections::BTreeMap<String, NodeInfo>,
}

/// One spread constraint as written (or defaulted), before counting.
struct Constraint {
    key: String,
    max_skew: i64,
    hard: bool,
    selector: Option<LabelSelector>,
}

/// The pod's spread constraints, and whether they are the defaults: its own, or, when it has
/// none, the system defaults over `default_selector` (soft, hosts and zones).
fn spread_constraints(pod: &Value, default_selector: Option<&LabelSelector>) -> (Vec<Constraint>, bool) {
    let own: Vec<_> = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| Constraint {
            key: c["topologyKey"].as_str().unwrap_or_default().to_owned(),
            max_skew: c["maxSkew"].as_i64().unwrap_or(1),
            hard: c["whenUnsatisfiable"].as_str().unwrap_or("DoNotSchedule") == "DoNotSchedule",
            selector: LabelSelector::from_object(&c["labelSelector"]).ok(),
        })
        .collect();
    match default_selector {
        Some(selector) if own.is_empty() => (
            super::default_spread::CONSTRAINTS
                .iter()
                .map(|(key, max_skew)| Constraint {
                    key: (*key).to_owned(),
                    max_skew: *max_skew,
                    hard: false,
                    selector: Some(selector.clone()),
                })
                .collect(),
            true,
        ),
        _ => (own, false),
    }
}

/// Prepares the pod's rules against the pods already bound. `default_selector` selects the
/// pods of the pod's Services and controllers, for the default spread constraints.
pub fn prepare(pod: &Value, cluster: &Cluster<'_>, default_selector: Option<&LabelSelector>) -> Prepared {
    let (bound, nodes) = (cluster.bound, cluster.nodes);
    let mut p = Prepared::default();
    let aff = &pod["spec"]["affinity"];
    let (constraints, defaults) = spread_constraints(pod, default_selector);
    if !cluster.index.has_anti() && aff.is_null() && constraints.is_empty() {
        return p;
    }
    p.default_spread = defaults;
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    for t in aff["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        p.self_match = p.required.is_empty() || p.self_match;
        p.self_match &= term_selects(t, ns, pod);
        p.required.push(prepare_term(t, pod, cluster, 0));
    }
    for t in aff["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        p.anti.push(prepare_term(t, pod, cluster, 0));
    }
    for (field, sign) in [("podAffinity", 1), ("podAntiAffinity", -1)] {
        for w in aff[field]["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let weight = w["weight"].as_i64().unwrap_or(0) * sign;
            p.preferred
                .push(prepare_term(&w["podAffinityTerm"], pod, cluster, weight));
        }
    }
    // Existing pods whose required anti-affinity selects this pod keep it out of their domain.
    for t in cluster.index.anti_for(pod) {
        if let Some(domain) = &t.domain
            && t.selects.matches(pod)
        {
            p.existing_anti.insert((t.topology_key.clone(), domain.clone()));
        }
    }
    for Constraint {
        key,
        max_skew,
        hard,
        selector,
    } in constraints
    {
        // Every domain among eligible nodes starts at zero.
        let mut counts: HashMap<String, i64> = nodes
            .values()
            .filter(|n| super::filter::selector_and_affinity_match(pod, &n.node))
            .filter_map(|n| {
                n.node["metadata"]["labels"][&key]
                    .as_str()
                    .map(|v| (v.to_owned(), 0))
            })
            .collect();
        let selects = Selects {
            namespaces: Vec::new(),
            owner_ns: ns.to_owned(),
            selector: selector.clone(),
        };
        for b in cluster.index.candidates(&selects, bound) {
            let same_ns = b.pod["metadata"]["namespace"].as_str() == Some(ns);
            if same_ns
                && selector.as_ref().is_some_and(|s| s.matches(labels(&b.pod)))
                && let Some(v) = node_label(nodes, &b.node, &key)
                && let Some(n) = counts.get_mut(v)
            {
                *n += 1;
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        p.spread.push(Spread {
            topology_key: key,
            max_skew,
            hard,
            counts,
            min,
        });
    }
    p
}

impl Prepared {
    /// Upstream's reason if the node breaks a hard rule.
    pub fn check(&self, node: &Value) -> Option<String> {
        let label = |k: &str| node["metadata"]["labels"][k].as_str();
        for s in self.spread.iter().filter(|s| s.hard) {
            let Some(v) = label(&s.topology_key) else {
                return Some(
                    "node(s) didn't match pod topology spread constraints (missing required label)".into(),
                );
            };
            if s.counts.get(v).copied().unwrap_or(0) + 1 - s.min > s.max_skew {
                return Some("node(s) didn't match pod topology spread constraints".into());
            }
        }
        // The first pod of a group that matches its own affinity may go anywhere.
        let first_of_group = self.self_match && self.required.iter().all(|t| t.domains.is_empty());
        for t in &self.required {
            let ok = label(&t.topology_key).is_some_and(|v| t.domains.contains(v));
            if !ok && !first_of_group {
                return Some("node(s) didn't match pod affinity rules".into());
            }
        }
        for t in &self.anti {
            if label(&t.topology_key).is_some_and(|v| t.domains.contains(v)) {
                return Some("node(s) didn't match pod anti-affinity rules".into());
            }
        }
        if self
            .existing_anti
            .iter()
            .any(|(k, v)| label(k) == Some(v.as_str()))
        {
            return Some("node(s) didn't satisfy existing pods anti-affinity rules".into());
        }
        None
    }

    /// Preferred (anti-)affinity weights for the node.
    pub fn score(&self, node: &Value) -> i64 {
        let label = |k: &str| node["metadata"]["labels"][k].as_str();
        self.preferred
            .iter()
            .filter(|t| label(&t.topology_key).is_some_and(|v| t.domains.contains(v)))
            .map(|t| t.weight)
            .sum()
    }

    /// Whether the pod has soft spread constraints to score ([`spread_raw`](Self::spread_raw)).
    pub fn scores_spread(&self) -> bool {
        self.spread.iter().any(|s| !s.hard)
    }

    /// Upstream's PodTopologySpread score before normalizing, lower is better: for each soft
    /// constraint, the matching pods in the node's domain times the constraint's weight, plus
    /// `maxSkew - 1`. None when the node is ignored (it lacks a key of the pod's own constraints).
    pub fn spread_raw(&self, node: &Value) -> Option<i64> {
        let label = |k: &str| node["metadata"]["labels"][k].as_str();
        let soft = self.spread.iter().filter(|s| !s.hard);
        if !self.default_spread && soft.clone().any(|s| label(&s.topology_key).is_none()) {
            return None;
        }
        let score: f64 = soft
            .filter_map(|s| {
                let count = s.counts.get(label(&s.topology_key)?).copied().unwrap_or(0);
                Some(count as f64 * s.weight() + (s.max_skew - 1) as f64)
            })
            .sum();
        Some(score.round() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> NodeInfo {
        NodeInfo::new(std::sync::Arc::new(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
        ))
    }

    #[test]
    fn the_index_finds_bound_pods_and_existing_anti_affinity_until_they_go() {
        let nodes =
            std::collections::BTreeMap::from([("n1".to_owned(), node("n1")), ("n2".to_owned(), node("n2"))]);
        let anti = json!({"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, "topologyKey": "kubernetes.io/hostname"}]});
        let bound_pod = json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "db"}},
            "spec": {"affinity": {"podAntiAffinity": anti}}});
        let mut bound = HashMap::new();
        bound.insert(
            "a".to_owned(),
            Bound {
                node: "n1".to_owned(),
                requests: Default::default(),
                ports: Vec::new(),
                pod: std::sync::Arc::new(bound_pod.clone()),
            },
        );
        let mut index = PodIndex::default();
        index.insert("a", &bound_pod, &nodes["n1"].node);
        let newcomer = json!({"metadata": {"name": "b", "namespace": "ns", "labels": {"app": "db"}},
            "spec": {"affinity": {"podAntiAffinity": anti}}});
        let cluster = Cluster {
            bound: &bound,
            index: &index,
            nodes: &nodes,
        };
        let rules = prepare(&newcomer, &cluster, None);
        assert_eq!(
            rules.check(&nodes["n1"].node).as_deref(),
            Some("node(s) didn't match pod anti-affinity rules")
        );
        assert_eq!(rules.check(&nodes["n2"].node), None);
        // A pod in another namespace is not selected by a term without namespaces.
        let other_ns = json!({"metadata": {"name": "c", "namespace": "other", "labels": {"app": "db"}}});
        assert_eq!(prepare(&other_ns, &cluster, None).check(&nodes["n1"].node), None);
        index.remove("a", &bound_pod);
        bound.clear();
        let cluster = Cluster {
            bound: &bound,
            index: &index,
            nodes: &nodes,
        };
        assert_eq!(prepare(&newcomer, &cluster, None).check(&nodes["n1"].node), None);
        assert!(index.by_label.is_empty() && index.anti_by_label.is_empty() && !index.has_anti());
    }
}
