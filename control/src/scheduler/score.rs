//! Scores (0-100 each, summed): least allocated and balanced allocation of CPU and memory,
//! preferred node affinity, and fewer untolerated PreferNoSchedule taints.

use std::collections::BTreeMap;

use super::filter::{PodView, term_matches};
use super::node_info::NodeInfo;

/// Requests used for scoring: pods that request nothing count as upstream's defaults.
fn scoring_request(requests: &BTreeMap<String, f64>, resource: &str) -> f64 {
    match (requests.get(resource).copied().unwrap_or(0.0), resource) {
        (0.0, "cpu") => 0.1,
        (0.0, "memory") => 200.0 * 1024.0 * 1024.0,
        (v, _) => v,
    }
}

/// The total score of `node` for a pod with `requests`, plus the node's preferred-affinity weight.
pub fn score(pod: &PodView<'_>, info: &NodeInfo, requests: &BTreeMap<String, f64>) -> i64 {
    let fraction = |resource: &str| {
        let alloc = info.allocatable.get(resource).copied().unwrap_or(0.0);
        if alloc <= 0.0 {
            return 1.0;
        }
        ((info.requested.get(resource).copied().unwrap_or(0.0) + scoring_request(requests, resource)) / alloc)
            .min(1.0)
    };
    let (cpu, mem) = (fraction("cpu"), fraction("memory"));
    let least_allocated = (((1.0 - cpu) + (1.0 - mem)) / 2.0 * 100.0) as i64;
    let balanced = ((1.0 - (cpu - mem).abs()) * 100.0) as i64;
    let preferred: i64 = pod
        .preferred_terms
        .iter()
        .filter(|p| term_matches(&p["preference"], &info.node))
        .map(|p| p["weight"].as_i64().unwrap_or(0))
        .sum();
    let untolerated_soft = info
        .taints
        .iter()
        .filter(|t| t["effect"] == "PreferNoSchedule" && !pod.tolerates(t))
        .count() as i64;
    least_allocated + balanced + preferred - untolerated_soft * 10
}
