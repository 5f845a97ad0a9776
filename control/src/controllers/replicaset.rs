//! The ReplicaSet controller, which also runs ReplicationControllers (the same controller with a
//! plain label map for a selector): keeps `spec.replicas` pods from the template running, adopts
//! orphan pods its selector matches and releases its pods that no longer match (as upstream's
//! ControllerRefManager), and reports replicas, ready and available counts with
//! `observedGeneration`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::error::Error;
use super::events;
use super::runtime::{Cache, Next, Queue, queue_changes, queue_owners, run_workers};
use super::write::{call, write_status};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{
    active, controller_ref, meta_str, owner_ref, pod_available, pod_from_template, pod_ready,
};
use crate::objects::selector::LabelSelector;
use crate::objects::write::DeleteOptions;

/// Which of the two kinds a controller runs.
#[derive(Debug, Clone, Copy)]
struct Flavour {
    kind: &'static str,
    group: &'static str,
    plural: &'static str,
    prefix: &'static str,
    manager: &'static str,
}

const REPLICA_SET: Flavour = Flavour {
    kind: "ReplicaSet",
    group: "apps",
    plural: "replicasets",
    prefix: keys::REPLICA_SETS,
    manager: "replicaset-controller",
};

const REPLICATION_CONTROLLER: Flavour = Flavour {
    kind: "ReplicationController",
    group: "",
    plural: "replicationcontrollers",
    prefix: keys::REPLICATION_CONTROLLERS,
    manager: "replication-controller",
};

impl Flavour {
    /// The owner's pod selector; None when it has none (it then claims no pod it did not make).
    fn selector(self, owner: &Value) -> Option<LabelSelector> {
        let selector = &owner["spec"]["selector"];
        let selector = if self.kind == "ReplicationController" {
            LabelSelector::from_object(&json!({ "matchLabels": selector }))
        } else {
            LabelSelector::from_object(selector)
        };
        selector.ok().filter(|s| !s.is_empty())
    }
}

/// What claiming pods means for `owner` (of `kind`, selecting with `selector`): the orphans to
/// adopt (active, no controller, matched) and its own pods to release (no longer matched), by
/// name. Nothing is adopted while the owner is being deleted.
fn claims(
    owner: &Value,
    kind: &str,
    selector: &LabelSelector,
    pods: &[Arc<Value>],
) -> (Vec<String>, Vec<String>) {
    let uid = meta_str(owner, "uid");
    let deleting = owner["metadata"]["deletionTimestamp"].is_string();
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    for pod in pods {
        let controller = controller_ref(pod);
        let matched = selector.matches(pod["metadata"].get("labels"));
        match controller {
            None if matched && !deleting && active(pod) => adopt.push(meta_str(pod, "name").to_owned()),
            Some(r) if r["kind"] == kind && r["uid"] == uid && !matched => {
                release.push(meta_str(pod, "name").to_owned());
            }
            _ => {}
        }
    }
    (adopt, release)
}

/// Adopts and releases pods as [`claims`] says; returns whether anything was written.
async fn claim(app: &Objects, f: Flavour, owner: &Value, pods: &Cache, ns: &str) -> Result<bool, Error> {
    let Some(selector) = f.selector(owner) else {
        return Ok(false);
    };
    claim_objects(app, owner, f.kind, &selector, &pods.list(Some(ns)), keys::PODS).await
}

/// Adopts the orphans among `objects` (stored under `prefix`: pods, or a Deployment's
/// ReplicaSets) that `selector` matches, and releases those of `owner` it no longer matches, as
/// upstream's controller ref manager; returns whether anything was written.
pub(super) async fn claim_objects(
    app: &Objects,
    owner: &Value,
    kind: &str,
    selector: &LabelSelector,
    objects: &[Arc<Value>],
    prefix: &str,
) -> Result<bool, Error> {
    let ns = meta_str(owner, "namespace");
    let (adopt, release) = claims(owner, kind, selector, objects);
    let uid = meta_str(owner, "uid").to_owned();
    for name in &adopt {
        let key = keys::object(prefix, Some(ns), name);
        super::edit_object(app, &key, |pod| {
            if controller_ref(pod).is_some() {
                return false;
            }
            let refs = &mut pod["metadata"]["ownerReferences"];
            match refs.as_array_mut() {
                Some(r) => r.push(owner_ref(owner)),
                None => *refs = json!([owner_ref(owner)]),
            }
            true
        })
        .await?;
    }
    for name in &release {
        let key = keys::object(prefix, Some(ns), name);
        super::edit_object(app, &key, |pod| {
            let Some(refs) = pod["metadata"]["ownerReferences"].as_array_mut() else {
                return false;
            };
            let before = refs.len();
            refs.retain(|r| r["uid"] != uid.as_str());
            refs.len() != before
        })
        .await?;
    }
    Ok(!adopt.is_empty() || !release.is_empty())
}

/// Which extra pods go first when scaling down, as upstream: unscheduled, pending, not ready,
/// then the newest.
fn deletion_rank(pod: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let phase = match pod["status"]["phase"].as_str() {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let created = meta_str(pod, "creationTimestamp").to_owned();
    (
        u8::from(scheduled),
        phase,
        u8::from(pod_ready(pod)),
        std::cmp::Reverse(created),
    )
}

async fn reconcile(
    app: &Objects,
    f: Flavour,
    rs_cache: &Cache,
    pods: &Cache,
    key: &str,
) -> Result<Next, Error> {
    let Some((rs, ns, name)) = rs_cache.live(key) else {
        return Ok(Next::Done);
    };
    if claim(app, f, &rs, pods, &ns).await? {
        pods.wait_for(app.store.revision()).await;
    }
    let owned: Vec<Arc<Value>> = pods.active_owned_by(&ns, f.kind, &name);
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let mut last_rev = 0;
    // A create that failed (a quota, admission): reported in the ReplicaFailure condition, and
    // tried again with back-off once the status is written.
    let mut failure: Option<crate::objects::status::ApiError> = None;
    if owned.len() < want {
        let template = &rs["spec"]["template"];
        let pod_call = call(app, "", "pods", &ns, None, None, f.manager);
        for _ in owned.len()..want.min(owned.len() + 500) {
            let pod = pod_from_template(template, &rs, &name, None);
            match app.create(&pod_call, pod).await {
                Ok(created) => {
                    last_rev = last_rev.max(meta_str(&created, "resourceVersion").parse().unwrap_or(0));
                    events::record(
                        app,
                        &rs,
                        f.manager,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {}", meta_str(&created, "name")),
                    )
                    .await;
                }
                Err(e) => {
                    events::record(
                        app,
                        &rs,
                        f.manager,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {}", e.message),
                    )
                    .await;
                    failure = Some(e);
                    break;
                }
            }
        }
    } else if owned.len() > want {
        let mut extra = owned.clone();
        extra.sort_by_key(|p| deletion_rank(p));
        let pod_call = call(app, "", "pods", &ns, None, None, f.manager);
        for pod in extra.iter().take(owned.len() - want) {
            let pod_name = meta_str(pod, "name").to_owned();
            match app
                .delete(&pod_call, &pod_name, &DeleteOptions::background())
                .await
            {
                Ok(_) => {
                    events::record(
                        app,
                        &rs,
                        f.manager,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pod_name}"),
                    )
                    .await
                }
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        last_rev = app.store.revision();
    }
    if last_rev > 0 {
        // Look again once the cache has seen these writes, so nothing is created twice.
        pods.wait_for(last_rev).await;
    }
    let owned: Vec<Arc<Value>> = pods.active_owned_by(&ns, f.kind, &name);
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
    let fully_labeled = owned
        .iter()
        .filter(|p| {
            template_labels.as_object().is_none_or(|want| {
                want.iter()
                    .all(|(k, v)| p["metadata"]["labels"].get(k) == Some(v))
            })
        })
        .count();
    let ready = owned.iter().filter(|p| pod_ready(p)).count();
    let available = owned.iter().filter(|p| pod_available(p, min_ready)).count();
    let status = json!({
        "replicas": owned.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs["metadata"]["generation"],
    });
    let mut status = status;
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| k == "replicas" || k == "observedGeneration" || v != &json!(0));
    }
    let conditions = failure_conditions(&rs["status"]["conditions"], failure.as_ref());
    if !conditions.is_empty() {
        status["conditions"] = Value::Array(conditions);
    }
    write_status(app, &rs, f.group, f.plural, status, f.manager).await?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if ready > available {
        return Ok(Next::After(Duration::from_secs(min_ready.max(1) as u64)));
    }
    Ok(Next::Done)
}

/// The conditions to keep with upstream's `ReplicaFailure`: added (FailedCreate, the error) when
/// a create failed and it is not there yet, removed once creates succeed again.
fn failure_conditions(current: &Value, failure: Option<&crate::objects::status::ApiError>) -> Vec<Value> {
    let mut out: Vec<Value> = current.as_array().cloned().unwrap_or_default();
    let has = out.iter().any(|c| c["type"] == "ReplicaFailure");
    match failure {
        Some(e) if !has => out.push(json!({
            "type": "ReplicaFailure",
            "status": "True",
            "reason": "FailedCreate",
            "message": e.message,
            "lastTransitionTime": crate::objects::meta::now(),
        })),
        None if has => out.retain(|c| c["type"] != "ReplicaFailure"),
        _ => {}
    }
    out
}

/// Starts the controllers of ReplicaSets and of ReplicationControllers.
pub fn start(app: Arc<Objects>, caches: &super::runtime::Caches) {
    for f in [REPLICA_SET, REPLICATION_CONTROLLER] {
        start_one(app.clone(), caches, f);
    }
}

fn start_one(app: Arc<Objects>, caches: &super::runtime::Caches, f: Flavour) {
    let owners = caches.get(&app, f.prefix);
    let pods = caches.get(&app, keys::PODS);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &owners);
    queue_owners(&queue, &pods, f.kind, f.prefix);
    queue_selecting(&queue, &pods, &owners, f.prefix, move |o| f.selector(o));
    let (rs_c, pods_c, app_c) = (owners.clone(), pods.clone(), app.clone());
    let name = if f.kind == "ReplicaSet" {
        "replicaset"
    } else {
        "replicationcontroller"
    };
    run_workers(app, name, queue, 2, move |key| {
        let (rs_c, pods_c, app_c) = (rs_c.clone(), pods_c.clone(), app_c.clone());
        async move { reconcile(&app_c, f, &rs_c, &pods_c, &key).await }
    });
}

/// Queues the owners (stored under `prefix`) whose selector matches a changed pod that has no
/// controller, so they adopt it.
pub(super) fn queue_selecting(
    queue: &Arc<Queue>,
    pods: &Cache,
    owners: &Arc<Cache>,
    prefix: &'static str,
    selector: impl Fn(&Value) -> Option<LabelSelector> + Send + 'static,
) {
    let (queue, owners, mut changes) = (queue.clone(), owners.clone(), pods.changes());
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            let Some(pod) = change
                .new
                .as_ref()
                .filter(|p| active(p) && controller_ref(p).is_none())
            else {
                continue;
            };
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            for owner in owners.list(Some(ns)) {
                if selector(&owner).is_some_and(|s| s.matches(pod["metadata"].get("labels"))) {
                    queue.add(&keys::object(prefix, Some(ns), meta_str(&owner, "name")));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: Value, owner: Option<(&str, &str)>) -> Arc<Value> {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "labels": labels}, "status": {"phase": "Running"}});
        if let Some((kind, uid)) = owner {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": kind, "name": "x", "uid": uid, "controller": true}]);
        }
        Arc::new(p)
    }

    #[test]
    fn orphans_that_match_are_adopted_and_owned_pods_that_do_not_are_released() {
        let rc = json!({"kind": "ReplicationController", "metadata": {"name": "web", "uid": "u1"},
            "spec": {"selector": {"app": "web"}}});
        let selector = REPLICATION_CONTROLLER.selector(&rc).unwrap();
        let pods = [
            pod("orphan", json!({"app": "web"}), None),
            pod("stranger", json!({"app": "db"}), None),
            pod(
                "mine",
                json!({"app": "web"}),
                Some(("ReplicationController", "u1")),
            ),
            pod(
                "relabelled",
                json!({"app": "other"}),
                Some(("ReplicationController", "u1")),
            ),
            pod("theirs", json!({"app": "web"}), Some(("ReplicaSet", "u2"))),
        ];
        let (adopt, release) = claims(&rc, "ReplicationController", &selector, &pods);
        assert_eq!(adopt, ["orphan"]);
        assert_eq!(release, ["relabelled"]);
        // Nothing is adopted by an owner being deleted; finished pods are not adopted.
        let mut deleting = rc.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(
            claims(&deleting, "ReplicationController", &selector, &pods)
                .0
                .is_empty()
        );
        let done = Arc::new(
            json!({"metadata": {"name": "done", "labels": {"app": "web"}}, "status": {"phase": "Succeeded"}}),
        );
        assert!(
            claims(&rc, "ReplicationController", &selector, &[done])
                .0
                .is_empty()
        );
    }

    #[test]
    fn a_replica_set_selects_with_expressions_and_an_empty_selector_claims_nothing() {
        let rs = json!({"spec": {"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}}});
        let selector = REPLICA_SET.selector(&rs).unwrap();
        assert!(selector.matches(Some(&json!({"tier": "b"}))));
        assert!(REPLICA_SET.selector(&json!({"spec": {"selector": {}}})).is_none());
        assert!(REPLICATION_CONTROLLER.selector(&json!({"spec": {}})).is_none());
    }
}
