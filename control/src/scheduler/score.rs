//! Scores (0-100 each, summed): least allocated and balanced allocation of CPU and memory,
//! preferred node affinity, and fewer untolerated PreferNoSchedule taints.

use super::filter::{PodView, term_matches};
use super::node_info::NodeInfo;

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
/// `requests` is the pod's CPU and memory as scoring counts them
/// ([`super::node_info::scoring_requests`]).
pub fn score(pod: &PodView<'_>, info: &NodeInfo, requests: [f64; 2]) -> i64 {
    let fraction = |i: usize| {
        let alloc = info.scoring_allocatable[i];
        if alloc <= 0.0 {
            return 1.0;
        }
        ((info.scored[i] + requests[i]) / alloc).min(1.0)
    };
    let (cpu, mem) = (fraction(0), fraction(1));
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

/// Adds upstream's normalized PodTopologySpread score (0-100, weight 2 as in the default profile)
/// to each feasible node's score: the node with the fewest matching pods in its domains gets the
/// most, `100 * (max + min - raw) / max`; nodes the constraints ignore get nothing.
pub fn add_spread(scored: &mut [(&str, i64, Option<i64>)]) {
    let raws = scored.iter().filter_map(|(_, _, r)| *r);
    let (min, max) = (raws.clone().min().unwrap_or(0), raws.max().unwrap_or(0));
    for (_, score, raw) in scored.iter_mut() {
        let spread = match *raw {
            None => 0,
            Some(_) if max == 0 => 100,
            Some(r) => 100 * (max + min - r) / max,
        };
        *score += 2 * spread;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_scores_normalize_as_upstream() {
        // Raw scores 6, 9 and 7 (lower is better) and one ignored node.
        let mut scored = [
            ("a", 0, Some(6)),
            ("b", 0, Some(9)),
            ("c", 10, Some(7)),
            ("d", 0, None),
        ];
        add_spread(&mut scored);
        let got: Vec<i64> = scored.iter().map(|(_, s, _)| *s).collect();
        // 100 * (9 + 6 - raw) / 9, doubled; the ignored node gets nothing.
        assert_eq!(got, [2 * 100, 2 * 66, 10 + 2 * 88, 0]);
        // All at zero: every node gets the full score.
        let mut zero = [("a", 0, Some(0)), ("b", 0, Some(0))];
        add_spread(&mut zero);
        assert_eq!(zero.map(|(_, s, _)| s), [200, 200]);
    }
}
