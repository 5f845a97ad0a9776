//! What the scheduler tracks per node: allocatable resources, what bound pods request, pod count
//! and host ports in use. Updated incrementally as pods are bound and removed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::objects::quantity;

/// One node's scheduling state.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The Node object.
    pub node: Arc<Value>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// `spec.taints`.
    pub taints: Vec<Value>,
    /// `status.images`: each name (normalized) the node holds, with the image's size.
    pub images: std::collections::HashMap<String, f64>,
    /// `status.allocatable` in base units.
    pub allocatable: BTreeMap<String, f64>,
    /// Sum of the requests of pods bound here.
    pub requested: BTreeMap<String, f64>,
    /// Sum of the CPU and memory requests of pods bound here as scoring counts them
    /// ([`scoring_request`]).
    pub scored: [f64; 2],
    /// Allocatable CPU and memory (what scoring reads for every node of every decision).
    pub scoring_allocatable: [f64; 2],
    /// Pods bound here.
    pub pods: usize,
    /// (protocol, port) pairs taken by bound pods.
    pub host_ports: HashSet<super::filter::HostPort>,
}

fn quantities(map: &Value) -> BTreeMap<String, f64> {
    map.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            quantity::parse(&text).map(|q| (k.clone(), q))
        })
        .collect()
}

/// An image name as the scheduler compares them: with `:latest` when it has no tag or digest.
pub fn normalized_image(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

fn images(node: &Value) -> std::collections::HashMap<String, f64> {
    node["status"]["images"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| {
            let size = i["sizeBytes"].as_f64().unwrap_or(0.0);
            i["names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(move |n| (normalized_image(n), size))
        })
        .collect()
}

impl NodeInfo {
    /// State for a node with nothing bound yet.
    pub fn new(node: Arc<Value>) -> Self {
        let allocatable = quantities(&node["status"]["allocatable"]);
        Self {
            scoring_allocatable: scoring_pair(&allocatable),
            images: images(&node),
            unschedulable: node["spec"]["unschedulable"] == true,
            taints: node["spec"]["taints"].as_array().cloned().unwrap_or_default(),
            node,
            allocatable,
            requested: BTreeMap::new(),
            scored: [0.0; 2],
            pods: 0,
            host_ports: HashSet::new(),
        }
    }

    /// Replaces the Node object, keeping the bookkeeping.
    pub fn update_node(&mut self, node: Arc<Value>) {
        self.allocatable = quantities(&node["status"]["allocatable"]);
        self.scoring_allocatable = scoring_pair(&self.allocatable);
        self.unschedulable = node["spec"]["unschedulable"] == true;
        self.images = images(&node);
        self.taints = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
        self.node = node;
    }

    /// Adds (`sign` = 1) or removes (-1) a pod's requests.
    pub fn account(
        &mut self,
        requests: &BTreeMap<String, f64>,
        ports: &[super::filter::HostPort],
        sign: f64,
    ) {
        for (k, v) in requests {
            *self.requested.entry(k.clone()).or_default() += sign * v;
        }
        let [cpu, memory] = scoring_requests(requests);
        self.scored[0] += sign * cpu;
        self.scored[1] += sign * memory;
        if sign > 0.0 {
            self.pods += 1;
            self.host_ports.extend(ports.iter().cloned());
        } else {
            self.pods = self.pods.saturating_sub(1);
            for p in ports {
                self.host_ports.remove(p);
            }
        }
    }
}

/// CPU and memory of `amounts`, 0 where absent.
fn scoring_pair(amounts: &BTreeMap<String, f64>) -> [f64; 2] {
    ["cpu", "memory"].map(|r| amounts.get(r).copied().unwrap_or(0.0))
}

/// A pod's CPU and memory requests as scoring counts them ([`scoring_request`]).
pub fn scoring_requests(requests: &BTreeMap<String, f64>) -> [f64; 2] {
    ["cpu", "memory"].map(|r| scoring_request(requests, r))
}

/// A pod's CPU or memory request as scoring counts it: upstream's non-zero defaults (100m CPU,
/// 200 MiB) for a pod that requests none, so pods without requests spread over nodes.
pub fn scoring_request(requests: &BTreeMap<String, f64>, resource: &str) -> f64 {
    match (requests.get(resource).copied().unwrap_or(0.0), resource) {
        (0.0, "cpu") => 0.1,
        (0.0, "memory") => 200.0 * 1024.0 * 1024.0,
        (v, _) => v,
    }
}

/// A pod's effective requests: the larger of its containers' sum and any one init container,
/// plus overhead, as upstream computes them.
pub fn pod_requests(pod: &Value) -> BTreeMap<String, f64> {
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, v) in quantities(&c["resources"]["requests"]) {
            *sum.entry(k).or_default() += v;
        }
    }
    for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in quantities(&c["resources"]["requests"]) {
            let e = sum.entry(k).or_default();
            *e = e.max(v);
        }
    }
    for (k, v) in quantities(&pod["spec"]["overhead"]) {
        *sum.entry(k).or_default() += v;
    }
    sum
}
