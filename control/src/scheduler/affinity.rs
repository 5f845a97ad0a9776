//! Inter-pod affinity/anti-affinity and topology spread. For the pod being scheduled, each term
//! or constraint is turned once into per-topology-domain counts of matching pods, so checking or
//! scoring a node is a lookup.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::Bound;
use super::node_info::NodeInfo;
use crate::api::selector::LabelSelector;

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

fn prepare_term(
    term: &Value,
    pod: &Value,
    bound: &HashMap<String, Bound>,
    nodes: &std::collections::BTreeMap<String, NodeInfo>,
    weight: i64,
) -> Term {
    let key = term["topologyKey"].as_str().unwrap_or_default().to_owned();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let selects = Selects::new(term, ns);
    let domains = bound
        .values()
        .filter(|b| selects.matches(&b.pod))
        .filter_map(|b| node_label(nodes, &b.node, &key).map(str::to_owned))
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

/// Prepares the pod's rules against the pods already bound; `anti` holds the bound pods' required
/// anti-affinity terms.
pub fn prepare(
    pod: &Value,
    bound: &HashMap<String, Bound>,
    anti: &HashMap<String, Vec<AntiTerm>>,
    nodes: &std::collections::BTreeMap<String, NodeInfo>,
) -> Prepared {
    let mut p = Prepared::default();
    let aff = &pod["spec"]["affinity"];
    if anti.is_empty() && aff.is_null() && pod["spec"]["topologySpreadConstraints"].is_null() {
        return p;
    }
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    for t in aff["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        p.self_match = p.required.is_empty() || p.self_match;
        p.self_match &= term_selects(t, ns, pod);
        p.required.push(prepare_term(t, pod, bound, nodes, 0));
    }
    for t in aff["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        p.anti.push(prepare_term(t, pod, bound, nodes, 0));
    }
    for (field, sign) in [("podAffinity", 1), ("podAntiAffinity", -1)] {
        for w in aff[field]["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let weight = w["weight"].as_i64().unwrap_or(0) * sign;
            p.preferred
                .push(prepare_term(&w["podAffinityTerm"], pod, bound, nodes, weight));
        }
    }
    // Existing pods whose required anti-affinity selects this pod keep it out of their domain.
    for t in anti.values().flatten() {
        if let Some(domain) = &t.domain
            && t.selects.matches(pod)
        {
            p.existing_anti.insert((t.topology_key.clone(), domain.clone()));
        }
    }
    for c in pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = c["topologyKey"].as_str().unwrap_or_default().to_owned();
        let selector = LabelSelector::from_object(&c["labelSelector"]).ok();
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
        for b in bound.values() {
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
            max_skew: c["maxSkew"].as_i64().unwrap_or(1),
            hard: c["whenUnsatisfiable"].as_str().unwrap_or("DoNotSchedule") == "DoNotSchedule",
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

    /// Preferred (anti-)affinity weights and soft spread for the node.
    pub fn score(&self, node: &Value) -> i64 {
        let label = |k: &str| node["metadata"]["labels"][k].as_str();
        let affinity: i64 = self
            .preferred
            .iter()
            .filter(|t| label(&t.topology_key).is_some_and(|v| t.domains.contains(v)))
            .map(|t| t.weight)
            .sum();
        let spread: i64 = self
            .spread
            .iter()
            .filter(|s| !s.hard)
            .map(|s| {
                label(&s.topology_key).map_or(-100, |v| -10 * (s.counts.get(v).copied().unwrap_or(0) - s.min))
            })
            .sum();
        affinity + spread
    }
}
