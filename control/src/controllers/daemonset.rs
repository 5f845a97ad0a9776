//! The DaemonSet controller: one pod on every node the template accepts (nodeSelector, required
//! node affinity, tolerated taints), pinned with node affinity and bound by the scheduler;
//! RollingUpdate replaces out-of-date pods within maxUnavailable; ControllerRevisions keep the
//! template history for `kubectl rollout history`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::deployment::{legacy_template_hash, resolve, template_hash};
use super::error::Error;
use super::events;
use super::runtime::{Cache, Caches, Next, Queue, queue_changes, queue_owners, run_workers};
use super::write::{call, write_status};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::meta::{controller_of, owner_ref, pod_available, pod_from_template, pod_ready};
use crate::objects::scheduling::{selector_and_affinity_match, tolerates};
use crate::objects::write::DeleteOptions;

/// Store prefix of DaemonSets.
pub const DS_PREFIX: &str = keys::DAEMON_SETS;
const REV_PREFIX: &str = keys::CONTROLLER_REVISIONS;
const HASH: &str = "controller-revision-hash";
const MANAGER: &str = "daemonset-controller";

/// The tolerations upstream adds to every daemon pod.
fn daemon_tolerations(template: &Value) -> Value {
    let mut list = template["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let add = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    for (key, effect) in add {
        if !list.iter().any(|t| t["key"] == key && t["effect"] == effect) {
            list.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    }
    Value::Array(list)
}

/// Whether a daemon pod from `template` belongs on `node`.
fn eligible(template: &Value, node: &Value) -> bool {
    let mut pod = json!({"spec": template["spec"].clone()});
    pod["spec"]["tolerations"] = daemon_tolerations(template);
    selector_and_affinity_match(&pod, node)
        && node["spec"]["taints"].as_array().into_iter().flatten().all(|t| {
            let effect = t["effect"].as_str().unwrap_or_default();
            !(effect == "NoSchedule" || effect == "NoExecute") || tolerates(&pod, t)
        })
}

fn node_of(pod: &Value) -> Option<String> {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
        .as_str()
        .or_else(|| pod["spec"]["nodeName"].as_str())
        .map(str::to_owned)
}

/// Records `owner`'s (a DaemonSet's or StatefulSet's, of `kind`) current template as the
/// ControllerRevision `<name>-<hash>`, numbered after the owner's others, unless it exists.
pub(super) async fn ensure_revision(
    app: &Objects,
    revs: &Cache,
    owner: &Value,
    kind: &str,
    hash: &str,
) -> Result<(), Error> {
    let ns = meta_str(owner, "namespace");
    let name = format!("{}-{hash}", meta_str(owner, "name"));
    if revs.get(&format!("{REV_PREFIX}{ns}/{name}")).is_some() {
        return Ok(());
    }
    let existing = revs
        .list(Some(ns))
        .into_iter()
        .filter(|r| controller_of(r, kind) == Some(meta_str(owner, "name")))
        .filter_map(|r| r["revision"].as_i64())
        .max()
        .unwrap_or(0);
    let mut labels = owner["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(HASH.into(), json!(hash));
    let rev = json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner_ref(owner)]},
        "data": {"spec": {"template": owner["spec"]["template"], "$patch": "replace"}},
        "revision": existing + 1,
    });
    let c = call(app, "apps", "controllerrevisions", ns, None, None, MANAGER);
    match app.create(&c, rev).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(
    app: &Objects,
    dss: &Cache,
    nodes: &Cache,
    pods: &Cache,
    revs: &Cache,
    key: &str,
) -> Result<Next, Error> {
    let Some((ds, ns, name)) = dss.live(key) else {
        return Ok(Next::Done);
    };
    let template = &ds["spec"]["template"];
    let hash = template_hash(template, 0);
    // Pods labelled before templates were hashed with sorted keys are at the current template too.
    let legacy = legacy_template_hash(template);
    let current = |p: &Value| {
        let label = &p["metadata"]["labels"][HASH];
        label == hash.as_str() || label == legacy.as_str()
    };
    ensure_revision(app, revs, &ds, "DaemonSet", &hash).await?;
    let all_nodes = nodes.list(None);
    let wanted: Vec<String> = all_nodes
        .iter()
        .filter(|n| eligible(template, n))
        .map(|n| meta_str(n, "name").to_owned())
        .collect();
    let owned: Vec<Arc<Value>> = pods.active_owned_by(&ns, "DaemonSet", &name);
    let mut by_node: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
    for p in &owned {
        if let Some(n) = node_of(p) {
            by_node.entry(n).or_default().push(p.clone());
        }
    }
    let pod_call = call(app, "", "pods", &ns, None, None, MANAGER);
    let mut wrote = false;
    // Pods on nodes that should not run one, and duplicates, go.
    for (node, list) in &by_node {
        let keep = usize::from(wanted.contains(node));
        for p in list.iter().skip(keep) {
            let _ = app
                .delete(&pod_call, meta_str(p, "name"), &DeleteOptions::background())
                .await;
            wrote = true;
        }
    }
    // Out-of-date pods are replaced within maxUnavailable (RollingUpdate only).
    let rolling = ds["spec"]["updateStrategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling {
        let max_unavailable = resolve(
            &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            wanted.len() as i64,
            true,
        )
        .max(1);
        let unavailable = wanted
            .iter()
            .filter(|n| {
                by_node
                    .get(*n)
                    .and_then(|l| l.first())
                    .is_none_or(|p| !pod_available(p, ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0)))
            })
            .count() as i64;
        let mut budget = max_unavailable - unavailable;
        for node in &wanted {
            let Some(p) = by_node.get(node).and_then(|l| l.first()) else {
                continue;
            };
            if current(p) {
                continue;
            }
            // Unavailable old pods can go at once; available ones only within the budget.
            let available = pod_available(p, 0);
            if available && budget <= 0 {
                continue;
            }
            if available {
                budget -= 1;
            }
            let _ = app
                .delete(&pod_call, meta_str(p, "name"), &DeleteOptions::background())
                .await;
            by_node.remove(node);
            wrote = true;
        }
    }
    // Nodes without a daemon pod get one.
    for node in wanted.iter().filter(|n| !by_node.contains_key(*n)) {
        let mut pod = pod_from_template(template, &ds, &name, None);
        pod["metadata"]["labels"][HASH] = json!(hash);
        pod["spec"]["tolerations"] = daemon_tolerations(template);
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
        match app.create(&pod_call, pod).await {
            Ok(created) => {
                events::record(
                    app,
                    &ds,
                    MANAGER,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta_str(&created, "name")),
                )
                .await;
                wrote = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if wrote {
        pods.wait_for(app.store.revision()).await;
    }
    let owned: Vec<Arc<Value>> = pods.active_owned_by(&ns, "DaemonSet", &name);
    let on_wanted: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|p| node_of(p).is_some_and(|n| wanted.contains(&n)))
        .collect();
    let scheduled: Vec<&&Arc<Value>> = on_wanted
        .iter()
        .filter(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()))
        .collect();
    let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let available = on_wanted.iter().filter(|p| pod_available(p, min_ready)).count();
    let mut status = json!({
        "currentNumberScheduled": scheduled.len(),
        "numberMisscheduled": owned.len() - on_wanted.len(),
        "desiredNumberScheduled": wanted.len(),
        "numberReady": on_wanted.iter().filter(|p| pod_ready(p)).count(),
        "observedGeneration": ds["metadata"]["generation"],
        "updatedNumberScheduled": on_wanted.iter().filter(|p| current(p)).count(),
        "numberAvailable": available,
        "numberUnavailable": wanted.len() - available,
    });
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| !matches!(k.as_str(), "numberAvailable" | "numberUnavailable") || v != &json!(0));
    }
    write_status(app, &ds, "apps", "daemonsets", status, MANAGER).await?;
    Ok(Next::Done)
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let dss = caches.get(&app, DS_PREFIX);
    let nodes = caches.get(&app, keys::NODES);
    let pods = caches.get(&app, keys::PODS);
    let revs = caches.get(&app, REV_PREFIX);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &dss);
    {
        // Any node change may change where daemons belong.
        let (queue, dss, mut changes) = (queue.clone(), dss.clone(), nodes.subscribe());
        tokio::spawn(async move {
            while changes.recv().await.is_ok() {
                for ds in dss.list(None) {
                    queue.add(&format!(
                        "{DS_PREFIX}{}/{}",
                        meta_str(&ds, "namespace"),
                        meta_str(&ds, "name")
                    ));
                }
            }
        });
    }
    queue_owners(&queue, &pods, "DaemonSet", DS_PREFIX);
    run_workers(app.clone(), "daemonset", queue, 2, move |key| {
        let (app, dss, nodes, pods, revs) = (
            app.clone(),
            dss.clone(),
            nodes.clone(),
            pods.clone(),
            revs.clone(),
        );
        async move { reconcile(&app, &dss, &nodes, &pods, &revs, &key).await }
    });
}
