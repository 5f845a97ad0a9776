//! The scheduler: binds pending pods to nodes. Filters, then scores, as upstream; keeps per-node
//! state incrementally so a decision costs O(nodes), and retries unschedulable pods only when the
//! cluster changes (a node appears or changes, a pod goes away), not in a busy loop.

mod affinity;
mod default_spread;
pub mod filter;
mod node_info;
mod preemption;
mod score;
mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use self::node_info::{NodeInfo, pod_requests};
use crate::controllers::error::Error;
use crate::controllers::events;
use crate::controllers::runtime::{Cache, Caches, Change};
use crate::controllers::write::call;
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{meta_str, now};
use crate::objects::write::DeleteOptions;
use crate::objects::write::Request;

/// Store prefix of nodes.
const NAME: &str = "default-scheduler";

/// What the scheduler accounts for a bound pod.
#[derive(Debug, Clone)]
struct Bound {
    node: String,
    requests: BTreeMap<String, f64>,
    ports: Vec<filter::HostPort>,
    /// The pod, for affinity and spread rules of later pods.
    pod: Arc<Value>,
}

#[derive(Debug, Default)]
struct State {
    /// Where the next decision starts looking, so sampled searches spread over all nodes.
    next_start: usize,
    nodes: BTreeMap<String, NodeInfo>,
    /// (label key, value) -> nodes carrying it, so pods with a nodeSelector visit only those.
    by_label: HashMap<(String, String), std::collections::BTreeSet<String>>,
    bound: HashMap<String, Bound>,
    /// Bound pods by label, and their required anti-affinity terms (which constrain every later
    /// decision).
    index: affinity::PodIndex,
    pending: VecDeque<String>,
    queued: HashSet<String>,
    /// How many nodes hold each image (normalized name), for image locality.
    image_nodes: HashMap<String, usize>,
    /// PersistentVolumes, claims and classes, for pods with claims.
    volumes: Option<volumes::Volumes>,
    /// PodDisruptionBudgets, which preemption tries not to break.
    pdbs: Option<Arc<Cache>>,
    /// Services and controllers, whose selectors make a pod's default spread constraints.
    owners: Option<default_spread::Owners>,
    unschedulable: HashSet<String>,
    /// Pending pods that preempted others and wait for the room on their node
    /// (`status.nominatedNodeName`): lower-priority pods must not take it meanwhile.
    nominated: HashMap<String, Nominated>,
}

/// A pending pod's claim on the node it preempted pods on.
#[derive(Debug, Clone)]
struct Nominated {
    node: String,
    priority: i64,
    requests: BTreeMap<String, f64>,
    ports: Vec<filter::HostPort>,
}

fn pending(pod: &Value) -> bool {
    pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        && pod["spec"]["schedulerName"].as_str().is_none_or(|s| s == NAME)
        && !pod["metadata"]["deletionTimestamp"].is_string()
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

fn occupies(pod: &Value) -> Option<&str> {
    if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
        return None;
    }
    pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
}

impl State {
    fn enqueue(&mut self, key: &str) {
        if self.queued.insert(key.to_owned()) {
            self.pending.push_back(key.to_owned());
        }
    }

    /// Something that may let unschedulable pods fit happened.
    fn cluster_changed(&mut self) {
        for key in std::mem::take(&mut self.unschedulable) {
            self.enqueue(&key);
        }
    }

    /// Records (or forgets, with `None`) the node a pending pod is nominated to. Forgetting one
    /// frees its room for others.
    fn nominate(&mut self, key: &str, pod: &Value, node: Option<&str>) {
        match node {
            Some(node) => {
                self.nominated.insert(
                    key.to_owned(),
                    Nominated {
                        node: node.to_owned(),
                        priority: priority(pod),
                        requests: pod_requests(pod),
                        ports: filter::pod_host_ports(pod),
                    },
                );
            }
            None => {
                if self.nominated.remove(key).is_some() {
                    self.cluster_changed();
                }
            }
        }
    }

    /// `info` with the pods nominated to its node that are at least as important as a pod of
    /// priority `prio` (other than `key` itself) accounted, as upstream's filters run with
    /// nominated pods; `None` when there are none.
    fn with_nominated(&self, name: &str, info: &NodeInfo, key: &str, prio: i64) -> Option<NodeInfo> {
        let mut out: Option<NodeInfo> = None;
        for (k, n) in &self.nominated {
            if n.node == name && k != key && n.priority >= prio {
                out.get_or_insert_with(|| info.clone())
                    .account(&n.requests, &n.ports, 1.0);
            }
        }
        out
    }

    fn unaccount(&mut self, key: &str) -> bool {
        if let Some(b) = self.bound.remove(key) {
            self.index.remove(key, &b.pod);
            if let Some(info) = self.nodes.get_mut(&b.node) {
                info.account(&b.requests, &b.ports, -1.0);
            }
            return true;
        }
        false
    }

    fn account(&mut self, key: &str, pod: &Arc<Value>, node: &str) {
        self.unaccount(key);
        let b = Bound {
            node: node.to_owned(),
            requests: pod_requests(pod),
            ports: filter::pod_host_ports(pod),
            pod: pod.clone(),
        };
        if let Some(info) = self.nodes.get_mut(node) {
            info.account(&b.requests, &b.ports, 1.0);
        }
        match self.nodes.get(node) {
            Some(info) => self.index.insert(key, pod, &info.node),
            None => self.index.insert(key, pod, &Value::Null),
        }
        self.bound.insert(key.to_owned(), b);
    }

    fn pod_changed(&mut self, change: &Change) {
        match &change.new {
            Some(pod) => {
                match occupies(pod) {
                    Some(node) => {
                        let node = node.to_owned();
                        match self.bound.get_mut(&change.key) {
                            // Same node, same labels: only the object is newer (a deletion
                            // timestamp preemption waits for, say).
                            Some(b)
                                if b.node == node
                                    && b.pod["metadata"]["labels"] == pod["metadata"]["labels"] =>
                            {
                                b.pod = pod.clone();
                            }
                            _ => self.account(&change.key, pod, &node),
                        }
                    }
                    None => {
                        if self.unaccount(&change.key) {
                            self.cluster_changed();
                        }
                    }
                }
                let nominated = pod["status"]["nominatedNodeName"]
                    .as_str()
                    .filter(|n| !n.is_empty() && pending(pod));
                if nominated != self.nominated.get(&change.key).map(|n| n.node.as_str()) {
                    self.nominate(&change.key, pod, nominated);
                }
                if pending(pod) && !self.unschedulable.contains(&change.key) {
                    self.enqueue(&change.key);
                }
            }
            None => {
                self.unschedulable.remove(&change.key);
                self.nominate(&change.key, &Value::Null, None);
                if self.unaccount(&change.key) {
                    self.cluster_changed();
                }
            }
        }
    }

    fn index_labels(&mut self, name: &str, node: &Value, add: bool) {
        for (k, v) in node["metadata"]["labels"].as_object().into_iter().flatten() {
            let key = (k.clone(), v.as_str().unwrap_or_default().to_owned());
            if add {
                self.by_label.entry(key).or_default().insert(name.to_owned());
            } else if let Some(set) = self.by_label.get_mut(&key) {
                set.remove(name);
            }
        }
    }

    fn node_changed(&mut self, change: &Change) {
        let name = change.key.rsplit('/').next().unwrap_or_default().to_owned();
        if let Some(old) = self.nodes.get(&name).map(|i| i.node.clone()) {
            self.index_labels(&name, &old, false);
        }
        if let Some(info) = self.nodes.get(&name) {
            for image in info.images.keys() {
                if let Some(n) = self.image_nodes.get_mut(image) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.image_nodes.remove(image);
                    }
                }
            }
        }
        if let Some(new) = &change.new {
            self.index_labels(&name, new, true);
        }
        match &change.new {
            Some(node) => {
                match self.nodes.get_mut(&name) {
                    Some(info) => info.update_node(node.clone()),
                    None => {
                        let mut info = NodeInfo::new(node.clone());
                        for b in self.bound.values().filter(|b| b.node == name) {
                            info.account(&b.requests, &b.ports, 1.0);
                        }
                        self.nodes.insert(name.clone(), info);
                    }
                }
                if let Some(info) = self.nodes.get(&name) {
                    for image in info.images.keys() {
                        *self.image_nodes.entry(image.clone()).or_default() += 1;
                    }
                }
                self.cluster_changed();
            }
            None => {
                self.nodes.remove(&name);
            }
        }
    }
}

fn priority(pod: &Value) -> i64 {
    pod["spec"]["priority"].as_i64().unwrap_or(0)
}

/// The outcome of one scheduling attempt.
enum Decision {
    /// Bind here, after telling these claims (of `WaitForFirstConsumer` classes) the node.
    Node(String, Vec<Arc<Value>>),
    Unschedulable(String),
}

/// How many feasible nodes to find before scoring, as upstream's adaptive
/// `percentageOfNodesToScore`: all of a small cluster, 50% minus 1% per 125 nodes (at least 5%
/// and 100 nodes) of a large one. This keeps a decision's cost sub-linear in cluster size.
fn feasible_nodes_to_find(total: usize) -> usize {
    if total < 100 {
        return total;
    }
    let percent = 50usize.saturating_sub(total / 125).max(5);
    (total * percent / 100).max(100)
}

fn decide(state: &mut State, key: &str, pod: &Value) -> Decision {
    let total = state.nodes.len();
    let prio = priority(pod);
    let claims = state.volumes.as_ref().map(|v| v.resolve(pod)).unwrap_or_default();
    if let Some(why) = &claims.blocked {
        return Decision::Unschedulable(format!("0/{total} nodes are available: {why}."));
    }
    let requests = pod_requests(pod);
    let scoring = node_info::scoring_requests(&requests);
    let ports = filter::pod_host_ports(pod);
    let mut view = filter::PodView::new(pod);
    // Image locality only matters once some node reports images.
    let images: Vec<String> = if state.image_nodes.is_empty() {
        Vec::new()
    } else {
        ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
            .filter_map(|c| c["image"].as_str())
            .map(node_info::normalized_image)
            .collect()
    };
    let default_selector = match (&state.owners, &pod["spec"]["topologySpreadConstraints"]) {
        (Some(owners), Value::Null) => owners.selector(pod),
        _ => None,
    };
    let rules = affinity::prepare(
        pod,
        &affinity::Cluster {
            bound: &state.bound,
            index: &state.index,
            nodes: &state.nodes,
        },
        default_selector.as_ref(),
    );
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let wanted = feasible_nodes_to_find(total);
    // Feasible nodes: (name, score so far, raw spread score), kept only when the spread score,
    // normalized over all of them, is still to be added; otherwise the best so far.
    let spread = rules.scores_spread();
    let mut scored: Vec<(&str, i64, Option<i64>)> =
        Vec::with_capacity(if spread { wanted.min(total) } else { 0 });
    let mut best: Option<(&str, i64)> = None;
    let start = if total == 0 { 0 } else { state.next_start % total };
    let mut feasible = 0;
    let mut visited = 0;
    // A nodeSelector narrows the search to the nodes indexed under its labels.
    let narrowed: Option<Vec<&String>> = pod["spec"]["nodeSelector"]
        .as_object()
        .filter(|m| !m.is_empty())
        .map(|sel| {
            let mut sets: Vec<Option<&std::collections::BTreeSet<String>>> = sel
                .iter()
                .map(|(k, v)| {
                    state
                        .by_label
                        .get(&(k.clone(), v.as_str().unwrap_or_default().to_owned()))
                })
                .collect();
            sets.sort_by_key(|s| s.map_or(0, |s| s.len()));
            match sets.first().copied().flatten() {
                Some(smallest) => smallest
                    .iter()
                    .filter(|n| sets.iter().all(|s| s.is_some_and(|s| s.contains(*n))))
                    .collect(),
                None => Vec::new(),
            }
        });
    let candidates: Box<dyn Iterator<Item = (&String, &NodeInfo)>> = match &narrowed {
        Some(names) => Box::new(names.iter().filter_map(|n| state.nodes.get_key_value(*n))),
        None => Box::new(
            state
                .nodes
                .iter()
                .skip(start)
                .chain(state.nodes.iter().take(start)),
        ),
    };
    if let Some(names) = &narrowed {
        view.selector_already_matched();
        // Nodes the selector rules out still count in the message, as upstream reports them.
        let excluded = total - names.len();
        if excluded > 0 {
            reasons.insert(
                "node(s) didn't match Pod's node affinity/selector".to_owned(),
                excluded,
            );
        }
    }
    for (name, info) in candidates {
        if feasible >= wanted {
            break;
        }
        visited += 1;
        let with_nominated = if state.nominated.is_empty() {
            None
        } else {
            state.with_nominated(name, info, key, prio)
        };
        let info = with_nominated.as_ref().unwrap_or(info);
        let mut failed = filter::check(&view, info, &requests, &ports);
        if failed.is_empty()
            && let Some(reason) = rules.check(&info.node)
        {
            failed.push(reason);
        }
        if failed.is_empty()
            && let Some(reason) = claims.check(&info.node)
        {
            failed.push(reason.to_owned());
        }
        if failed.is_empty() {
            feasible += 1;
            let s = score::score(&view, info, scoring)
                + rules.score(&info.node)
                + score::image_locality(&images, info, &state.image_nodes, total);
            if spread {
                scored.push((name, s, rules.spread_raw(&info.node)));
            } else if best.is_none_or(|(bn, b)| s > b || (s == b && name.as_str() < bn)) {
                // Highest score wins; equal scores go to the first node by name.
                best = Some((name, s));
            }
        } else {
            // Upstream reports one reason per node kind; count each distinct reason.
            for r in failed {
                *reasons.entry(r).or_default() += 1;
            }
        }
    }
    if spread {
        score::add_spread(&mut scored);
        best = scored
            .into_iter()
            .max_by(|(an, a, _), (bn, b, _)| a.cmp(b).then(bn.cmp(an)))
            .map(|(name, s, _)| (name, s));
    }
    let decision = match best {
        Some((node, _)) => Decision::Node(node.to_owned(), claims.waiting()),
        None => Decision::Unschedulable(filter::unschedulable_message(total, &reasons)),
    };
    if narrowed.is_none() {
        state.next_start = start + visited;
    }
    decision
}

async fn schedule_one(
    app: &Arc<Objects>,
    pods: &Cache,
    state: &mut State,
    key: &str,
    failed: &tokio::sync::mpsc::UnboundedSender<String>,
) {
    let Some(pod) = pods.get(key) else { return };
    if !pending(&pod) || state.bound.contains_key(key) {
        return;
    }
    let (ns, name) = (
        meta_str(&pod, "namespace").to_owned(),
        meta_str(&pod, "name").to_owned(),
    );
    let started = std::time::Instant::now();
    let decision = decide(state, key, &pod);
    let result = match decision {
        Decision::Node(..) => "scheduled",
        Decision::Unschedulable(_) => "unschedulable",
    };
    crate::metrics::SCHEDULE_ATTEMPTS.inc(&[NAME, result]);
    crate::metrics::SCHEDULING_DURATION.observe(&[NAME, result], started.elapsed().as_secs_f64());
    match decision {
        Decision::Node(node, claims) => {
            // Assume the pod is there now, and bind in the background as upstream does; a
            // failed binding un-assumes it and queues it again.
            state.nominated.remove(key);
            state.account(key, &pod, &node);
            let (app, key, failed) = (app.clone(), key.to_owned(), failed.clone());
            tokio::spawn(async move {
                for claim in claims {
                    if let Err(e) = select_node(&app, &claim, &node).await {
                        tracing::debug!(%key, error = %e, "marking the claim's node failed; retrying");
                        let _ = failed.send(key);
                        return;
                    }
                }
                let c = call(&app, "", "pods", &ns, Some(&name), None, NAME);
                match app.bind(&c, &node).await {
                    Ok(_) => {
                        events::record(
                            &app,
                            &pod,
                            NAME,
                            "Normal",
                            "Scheduled",
                            &format!("Successfully assigned {ns}/{name} to {node}"),
                        )
                        .await;
                    }
                    Err(e) if e.code == 404 || e.code == 409 => {}
                    Err(e) => {
                        tracing::debug!(%key, error = %e, "binding failed; retrying");
                        crate::metrics::SCHEDULE_ATTEMPTS.inc(&[NAME, "error"]);
                        let _ = failed.send(key);
                    }
                }
            });
        }
        Decision::Unschedulable(message) => {
            state.unschedulable.insert(key.to_owned());
            let mut nominated = None;
            let preempted = if preemption::waiting_for_victims(state, key, &pod) {
                None
            } else {
                preemption::preemption(state, key, &pod, &pod_requests(&pod))
            };
            if let Some((node, victims)) = preempted {
                // Claim the room now, before the victims go and their replacements are queued.
                state.nominate(key, &pod, Some(&node));
                let pod_call = call(app, "", "pods", &ns, None, None, NAME);
                for victim in &victims {
                    let Some(v) = pods.get(victim) else { continue };
                    if v["metadata"]["deletionTimestamp"].is_string() {
                        continue;
                    }
                    let vc = Request {
                        ns: v["metadata"]["namespace"].as_str().map(str::to_owned),
                        ..pod_call.clone()
                    };
                    if app
                        .delete(&vc, meta_str(&v, "name"), &DeleteOptions::background())
                        .await
                        .is_ok()
                    {
                        events::record(
                            app,
                            &v,
                            NAME,
                            "Normal",
                            "Preempted",
                            &format!("Preempted by pod {} on node {node}", meta_str(&pod, "uid")),
                        )
                        .await;
                    }
                }
                nominated = Some(node);
            }
            let already = pod["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "PodScheduled" && c["status"] == "False" && c["message"] == message.as_str()
                })
            });
            let nominated_already = nominated
                .as_deref()
                .is_none_or(|n| pod["status"]["nominatedNodeName"] == n);
            if already && nominated_already {
                return;
            }
            let mut updated = (*pod).clone();
            if let Some(node) = &nominated {
                updated["status"]["nominatedNodeName"] = json!(node);
            }
            let mut conditions: Vec<Value> = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null, "lastTransitionTime": now(), "reason": "Unschedulable", "message": message}));
            updated["status"]["conditions"] = Value::Array(conditions);
            let c = call(app, "", "pods", &ns, Some(&name), Some("status"), NAME);
            if app.update(&c, updated).await.is_ok() {
                events::record(app, &pod, NAME, "Warning", "FailedScheduling", &message).await;
            }
        }
    }
}

/// Tells a `WaitForFirstConsumer` claim which node its pod got (upstream's
/// `volume.kubernetes.io/selected-node`), so the binder binds or provisions there.
async fn select_node(app: &Objects, claim: &Value, node: &str) -> Result<(), Error> {
    let mut next = claim.clone();
    next["metadata"]["annotations"][crate::controllers::volume::SELECTED_NODE] = json!(node);
    if next == *claim {
        return Ok(());
    }
    crate::controllers::write::put_object(app, next, "", "persistentvolumeclaims", None, NAME)
        .await
        .map(|_| ())
}

async fn run(
    app: Arc<Objects>,
    pods: Arc<Cache>,
    nodes: Arc<Cache>,
    volumes: volumes::Volumes,
    pdbs: Arc<Cache>,
    owners: default_spread::Owners,
) {
    let (volume_tx, mut volume_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for cache in [&volumes.pvs, &volumes.claims, &volumes.classes] {
        let (tx, mut changes) = (volume_tx.clone(), cache.changes());
        tokio::spawn(async move {
            while changes.recv().await.is_some() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    let mut state = State {
        volumes: Some(volumes),
        pdbs: Some(pdbs),
        owners: Some(owners),
        ..State::default()
    };
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut pod_changes = pods.subscribe();
    let mut node_changes = nodes.subscribe();
    // Catch up with what the caches already hold.
    for node in nodes.list(None) {
        let key = keys::object(keys::NODES, None, meta_str(&node, "name"));
        state.node_changed(&Change {
            key,
            old: None,
            new: Some(node),
        });
    }
    for pod in pods.list(None) {
        let key = keys::object(
            keys::PODS,
            Some(meta_str(&pod, "namespace")),
            meta_str(&pod, "name"),
        );
        state.pod_changed(&Change {
            key,
            old: None,
            new: Some(pod),
        });
    }
    loop {
        // Apply every change that has arrived, then schedule.
        while let Ok(key) = failed_rx.try_recv() {
            state.unaccount(&key);
            state.enqueue(&key);
        }
        // Volumes, claims or classes changed: pods waiting on them may fit now.
        let mut volumes_changed = false;
        while volume_rx.try_recv().is_ok() {
            volumes_changed = true;
        }
        if volumes_changed {
            state.cluster_changed();
        }
        loop {
            match node_changes.try_recv() {
                Ok(c) => state.node_changed(&c),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => state.cluster_changed(),
                Err(_) => break,
            }
        }
        loop {
            match pod_changes.try_recv() {
                Ok(c) => state.pod_changed(&c),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                    for pod in pods.list(None) {
                        let key = keys::object(
                            keys::PODS,
                            Some(meta_str(&pod, "namespace")),
                            meta_str(&pod, "name"),
                        );
                        state.pod_changed(&Change {
                            key,
                            old: None,
                            new: Some(pod),
                        });
                    }
                }
                Err(_) => break,
            }
        }
        if let Some(key) = state.pending.pop_front() {
            state.queued.remove(&key);
            if !app.store.is_leader().await {
                state.enqueue(&key);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            app.store
                .as_leader(schedule_one(&app, &pods, &mut state, &key, &failed_tx))
                .await;
            continue;
        }
        tokio::select! {
            Some(key) = failed_rx.recv() => {
                state.unaccount(&key);
                state.enqueue(&key);
            }
            Some(()) = volume_rx.recv() => state.cluster_changed(),
            c = pod_changes.recv() => match c {
                Ok(c) => state.pod_changed(&c),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                Err(_) => state.cluster_changed(),
            },
            c = node_changes.recv() => match c {
                Ok(c) => state.node_changed(&c),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                Err(_) => state.cluster_changed(),
            },
        }
    }
}

/// Starts the scheduler.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let pods = caches.get(&app, keys::PODS);
    let nodes = caches.get(&app, keys::NODES);
    let volumes = volumes::Volumes {
        pvs: caches.get(&app, crate::controllers::volume::PV_PREFIX),
        claims: caches.get(&app, crate::controllers::volume::PVC_PREFIX),
        classes: caches.get(&app, crate::controllers::volume::SC_PREFIX),
    };
    let pdbs = caches.get(&app, crate::controllers::disruption::PDB_PREFIX);
    let owners = default_spread::Owners {
        services: caches.get(&app, keys::SERVICES),
        replication_controllers: caches.get(&app, keys::REPLICATION_CONTROLLERS),
        replica_sets: caches.get(&app, keys::REPLICA_SETS),
        stateful_sets: caches.get(&app, keys::STATEFUL_SETS),
    };
    tokio::spawn(run(app, pods, nodes, volumes, pdbs, owners));
}
