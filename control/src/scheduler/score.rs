//! Scores (0-100 each, summed): least allocated and balanced allocation of CPU and memory,
//! preferred node affinity, and fewer untolerated PreferNoSchedule taints.

use std::collections::BTreeMap;

use super::filter::{PodView, term_matches};
use super::node_info::{NodeInfo, scoring_request};

const MB: f64 = 1024.0 * 1024.0;

/// Upstream's ImageLocality score (0-100): the sizes of the pod's images the node already holds,
/// each scaled by the share of nodes that hold it (so one node with a popular image is not
/// preferred over spreading), between 23 MB and 1000 MB per container.
pub fn image_locality(
    images: &[String],
    info: &NodeInfo,
    nodes_with: &std::collections::HashMap<String, usize>,
    total_nodes: usize,
) -> i64 {
    if images.is_empty() || total_nodes == 0 {
        return 0;
    }
    let sum: f64 = images
        .iter()
        .filter_map(|i| {
            let size = info.images.get(i)?;
            let spread = nodes_with.get(i).copied().unwrap_or(0) as f64 / total_nodes as f64;
            Some(size * spread)
        })
        .sum();
    let (min, max) = (23.0 * MB, 1000.0 * MB * images.len() as f64);
    ((sum.clamp(min, max) - min) / (max - min) * 100.0) as i64
}

/// The total score of `node` for a pod with `requests`, plus the node's preferred-affinity weight.
pub fn score(pod: &PodView<'_>, info: &NodeInfo, requests: &BTreeMap<String, f64>) -> i64 {
    let fraction = |resource: &str| {
        let alloc = info.allocatable.get(resource).copied().unwrap_or(0.0);
        if alloc <= 0.0 {
            return 1.0;
        }
        ((info.scored.get(resource).copied().unwrap_or(0.0) + scoring_request(requests, resource)) / alloc)
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
