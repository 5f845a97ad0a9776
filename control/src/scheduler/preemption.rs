//! Preemption, as upstream's default plugin: when a pod fits nowhere, find the node where evicting
//! the fewest, lowest-priority pods (breaking the fewest PodDisruptionBudgets) makes room.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::{Bound, State, filter, priority};
use crate::objects::meta::meta_str;

/// The PodDisruptionBudgets the scheduler checks victims against: (namespace, selector, disruptions
/// still allowed).
fn budgets(state: &State) -> Vec<(String, crate::objects::selector::LabelSelector, i64)> {
    state
        .pdbs
        .as_ref()
        .map(|c| c.list(None))
        .unwrap_or_default()
        .iter()
        .filter_map(|pdb| {
            let selector =
                crate::objects::selector::LabelSelector::from_object(&pdb["spec"]["selector"]).ok()?;
            Some((
                meta_str(pdb, "namespace").to_owned(),
                selector,
                pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0),
            ))
        })
        .collect()
}

/// Which of `pods` (most important first) an eviction of all of them would break a budget for,
/// as upstream's filterPodsWithPDBViolation.
fn violating(
    pods: &[(&String, &Bound)],
    budgets: &[(String, crate::objects::selector::LabelSelector, i64)],
) -> HashSet<String> {
    let mut allowed: Vec<i64> = budgets.iter().map(|b| b.2).collect();
    let mut out = HashSet::new();
    for (key, b) in pods {
        let ns = b.pod["metadata"]["namespace"].as_str().unwrap_or_default();
        for (i, (pdb_ns, selector, _)) in budgets.iter().enumerate() {
            if pdb_ns == ns && !selector.is_empty() && selector.matches(b.pod["metadata"].get("labels")) {
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    out.insert((*key).clone());
                }
            }
        }
    }
    out
}

/// Whether `pod` already preempted pods on its nominated node and some of them are still
/// terminating: it waits for them instead of choosing more victims, as upstream's
/// `PodEligibleToPreemptOthers`.
pub(super) fn waiting_for_victims(state: &State, key: &str, pod: &Value) -> bool {
    let Some(nominated) = state.nominated.get(key) else {
        return false;
    };
    let prio = priority(pod);
    state.bound.values().any(|b| {
        b.node == nominated.node
            && priority(&b.pod) < prio
            && b.pod["metadata"]["deletionTimestamp"].is_string()
    })
}

/// Finds the node where evicting the fewest, lowest-priority pods lets `pod` fit (resources only),
/// as upstream's default preemption: victims are chosen lowest priority first, then the ones not
/// needed are reprieved, highest priority first and those a PodDisruptionBudget protects before
/// the others; nodes whose victims break fewer budgets win, then lower victim priority, then
/// fewer victims. Returns the node and the victims' keys.
pub(super) fn preemption(
    state: &State,
    key: &str,
    pod: &Value,
    requests: &BTreeMap<String, f64>,
) -> Option<(String, Vec<String>)> {
    if pod["spec"]["preemptionPolicy"] == "Never" {
        return None;
    }
    let prio = priority(pod);
    let ports = filter::pod_host_ports(pod);
    let view = filter::PodView::new(pod);
    let budgets = budgets(state);
    // (budgets broken, highest victim priority, victims), node, victims.
    type Candidate = ((usize, i64, usize), String, Vec<String>);
    let mut best: Option<Candidate> = None;
    for (name, info) in &state.nodes {
        // Room already promised to pods at least as important is not to be taken.
        let with_nominated = state.with_nominated(name, info, key, prio);
        let info = with_nominated.as_ref().unwrap_or(info);
        let reasons = filter::check(&view, info, requests, &ports);
        if reasons
            .iter()
            .any(|r| !(r.starts_with("Insufficient ") || r == "Too many pods"))
        {
            continue;
        }
        let mut candidates: Vec<(&String, &Bound)> = state
            .bound
            .iter()
            .filter(|(_, b)| &b.node == name && priority(&b.pod) < prio)
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let mut sim = info.clone();
        for (_, b) in &candidates {
            sim.account(&b.requests, &b.ports, -1.0);
        }
        if !filter::check(&view, &sim, requests, &ports).is_empty() {
            continue;
        }
        candidates.sort_by_key(|(k, b)| (std::cmp::Reverse(priority(&b.pod)), (*k).clone()));
        let protected = violating(&candidates, &budgets);
        // Reprieve protected pods first, so budgets break only when nothing else helps.
        candidates.sort_by_key(|(k, _)| !protected.contains(*k));
        let mut victims = Vec::new();
        let mut max_prio = i64::MIN;
        let mut breaks = 0;
        for (key, b) in candidates {
            sim.account(&b.requests, &b.ports, 1.0);
            if !filter::check(&view, &sim, requests, &ports).is_empty() {
                sim.account(&b.requests, &b.ports, -1.0);
                max_prio = max_prio.max(priority(&b.pod));
                breaks += usize::from(protected.contains(key));
                victims.push(key.clone());
            }
        }
        let rank = (breaks, max_prio, victims.len());
        if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
            best = Some((rank, name.clone(), victims));
        }
    }
    best.map(|(_, node, victims)| (node, victims))
}
