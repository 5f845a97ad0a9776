//! The Deployment controller: one ReplicaSet per pod template (named by the template's hash),
//! rolled over with RollingUpdate (maxSurge/maxUnavailable) or Recreate, with revision history,
//! pause, and the status and conditions `kubectl rollout status` reads.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::error::Error;
use super::events;
use super::runtime::{Cache, Next, Queue, queue_changes, queue_owners, run_workers};
use super::write::{call, put_object, write_status};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{active, controller_of, owner_ref};
use crate::objects::meta::{meta_str, now, parse_time};
use crate::objects::selector::LabelSelector;
use crate::objects::write::DeleteOptions;

/// Store prefix of Deployments.
pub const DEPLOY_PREFIX: &str = keys::DEPLOYMENTS;
const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";
const MANAGER: &str = "deployment-controller";

/// FNV-1a over the template with its keys sorted and its nulls left out (the same template
/// hashes the same however its fields were ordered when written, and whether a client wrote
/// `creationTimestamp: null` or nothing, as upstream hashes the decoded template: a rollback
/// finds its old revision), encoded as upstream's "safe" string.
pub(crate) fn template_hash(template: &Value, collisions: i64) -> String {
    hash_template(&sorted(template, false), collisions)
}

/// A Deployment's ReplicaSet name suffix: the template hashed with sorted keys, nulls kept (as
/// its ReplicaSets have been named, so the controller finds them again).
fn replicaset_hash(template: &Value, collisions: i64) -> String {
    hash_template(&sorted(template, true), collisions)
}

/// The hashes written by earlier versions: before templates were hashed with sorted keys, and
/// before their nulls were left out. Pods labelled with them are at the same template, so an
/// upgrade does not roll every StatefulSet and DaemonSet.
pub(crate) fn legacy_template_hashes(template: &Value) -> [String; 2] {
    [
        hash_template(template, 0),
        hash_template(&sorted(template, true), 0),
    ]
}

/// `v` with every object's keys in sorted order (and null values kept or left out).
fn sorted(v: &Value, nulls: bool) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> =
                m.iter().filter(|(_, v)| nulls || !v.is_null()).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v, nulls)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| sorted(v, nulls)).collect()),
        other => other.clone(),
    }
}

fn hash_template(template: &Value, collisions: i64) -> String {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    let text = format!(
        "{}{}",
        serde_json::to_string(&t).unwrap_or_default(),
        if collisions > 0 {
            collisions.to_string()
        } else {
            String::new()
        }
    );
    let mut h: u32 = 0x811c9dc5;
    for b in text.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x01000193);
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| SAFE[usize::from(b) % SAFE.len()] as char)
        .collect()
}

/// A template with the hash label removed, for comparing a ReplicaSet's template to the Deployment's.
fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    t
}

/// Resolves an int-or-percent against `total`, rounding up or down.
pub(crate) fn resolve(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) if s.ends_with('%') => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = total * pct;
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn status_count(rs: &Value, field: &str) -> i64 {
    rs["status"][field].as_i64().unwrap_or(0)
}

/// Records upstream's `ScalingReplicaSet` event on the Deployment.
async fn record_scaling(app: &Objects, d: &Value, rs_name: &str, direction: &str, to: i64) {
    let message = format!("Scaled {direction} replica set {rs_name} to {to}");
    events::record(app, d, MANAGER, "Normal", "ScalingReplicaSet", &message).await;
}

const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

fn annotation_i64(rs: &Value, key: &str) -> Option<i64> {
    rs["metadata"]["annotations"][key].as_str()?.parse().ok()
}

/// Upstream's proportional scaling: when a Deployment is resized while several of its
/// ReplicaSets run (a rollout in progress), each set's share follows the new size in proportion
/// to the size it had (`max-replicas` says for what total it was sized); what rounding leaves
/// goes to the first set (the newest when growing, the largest when shrinking). `sets` are
/// (replicas, max-replicas annotation, creation time); returns the new sizes in the same order.
fn proportional_sizes(sets: &[(i64, Option<i64>, String)], want: i64, max_surge: i64) -> Vec<i64> {
    let allowed = if want == 0 { 0 } else { want + max_surge };
    let total: i64 = sets.iter().map(|s| s.0).sum();
    let to_add = allowed - total;
    let mut order: Vec<usize> = (0..sets.len()).collect();
    if to_add > 0 {
        // Newest first.
        order.sort_by(|a, b| sets[*b].2.cmp(&sets[*a].2));
    } else {
        // Largest first, newest first among equals.
        order.sort_by(|a, b| sets[*b].0.cmp(&sets[*a].0).then(sets[*b].2.cmp(&sets[*a].2)));
    }
    let mut sizes: Vec<i64> = sets.iter().map(|s| s.0).collect();
    let mut added = 0;
    for &i in &order {
        let (current, annotated, _) = &sets[i];
        if to_add == 0 {
            break;
        }
        let fraction = if want == 0 {
            -current
        } else {
            let annotated = annotated.filter(|a| *a > 0).unwrap_or(total.max(1));
            ((*current as f64) * ((want + max_surge) as f64) / (annotated as f64)).round() as i64 - current
        };
        let left = to_add - added;
        let proportion = if to_add > 0 {
            fraction.min(left)
        } else {
            fraction.max(left)
        };
        sizes[i] += proportion;
        added += proportion;
    }
    // What rounding left over goes to the first.
    if let Some(&first) = order.first() {
        sizes[first] = (sizes[first] + to_add - added).max(0);
    }
    sizes
}

/// Sets a ReplicaSet's replica count (and optionally its revision).
async fn scale_rs(app: &Objects, rs: &Value, to: i64, rev: Option<i64>) -> Result<(), Error> {
    if replicas(rs) == to && rev.is_none_or(|r| r == revision(rs)) {
        return Ok(());
    }
    let mut updated = rs.clone();
    updated["spec"]["replicas"] = json!(to);
    if let Some(r) = rev {
        updated["metadata"]["annotations"][REVISION] = json!(r.to_string());
    }
    put_object(app, updated, "apps", "replicasets", None, MANAGER)
        .await
        .map(|_| ())
}

fn condition(kind: &str, status: bool, reason: &str, message: &str, previous: &Value) -> Value {
    let status_str = if status { "True" } else { "False" };
    let old = previous["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned());
    let ts = now();
    let transition = match &old {
        Some(o) if o["status"] == status_str => o["lastTransitionTime"].clone(),
        _ => json!(ts),
    };
    let update = match &old {
        Some(o) if o["status"] == status_str && o["reason"] == reason => o["lastUpdateTime"].clone(),
        _ => json!(ts),
    };
    json!({"type": kind, "status": status_str, "lastUpdateTime": update, "lastTransitionTime": transition, "reason": reason, "message": message})
}

async fn reconcile(
    app: &Objects,
    deploys: &Cache,
    rss: &Cache,
    pods: &Cache,
    key: &str,
) -> Result<Next, Error> {
    let Some((d, ns, name)) = deploys.live(key) else {
        return Ok(Next::Done);
    };
    // ReplicaSets without a controller that the selector matches are adopted (an old one keeps its
    // revision, so the next is numbered after it); those it no longer matches are released.
    if let Ok(selector) = LabelSelector::from_object(&d["spec"]["selector"])
        && super::replicaset::claim_objects(
            app,
            &d,
            "Deployment",
            &selector,
            &rss.list(Some(&ns)),
            keys::REPLICA_SETS,
        )
        .await?
    {
        rss.wait_for(app.store.revision()).await;
    }
    let mut owned: Vec<Arc<Value>> = rss
        .list(Some(&ns))
        .into_iter()
        .filter(|rs| {
            controller_of(rs, "Deployment") == Some(name.as_str())
                && !rs["metadata"]["deletionTimestamp"].is_string()
        })
        .collect();
    owned.sort_by_key(|rs| meta_str(rs, "creationTimestamp").to_owned());
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let template = &d["spec"]["template"];
    let new_rs = owned
        .iter()
        .find(|rs| without_hash(&rs["spec"]["template"]) == *template)
        .cloned();
    let old: Vec<Arc<Value>> = owned
        .iter()
        .filter(|rs| Some(*rs) != new_rs.as_ref())
        .cloned()
        .collect();
    let max_old_rev = old.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let paused = d["spec"]["paused"] == json!(true);
    let recreate = d["spec"]["strategy"]["type"] == "Recreate";
    let max_surge = if recreate {
        0
    } else {
        resolve(&d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], want, true)
    };
    let mut max_unavailable = if recreate {
        want
    } else {
        resolve(
            &d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            want,
            false,
        )
    };
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let mut changed = false;

    // The ReplicaSet for the current template (created on first need, not while paused).
    let new_rs = match new_rs {
        Some(rs) => {
            let rev = if revision(&rs) <= max_old_rev {
                Some(max_old_rev + 1)
            } else {
                None
            };
            if rev.is_some() && !paused {
                scale_rs(app, &rs, replicas(&rs), rev).await?;
                changed = true;
            }
            Some(rs)
        }
        None if paused => None,
        None => {
            let hash = replicaset_hash(template, d["status"]["collisionCount"].as_i64().unwrap_or(0));
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"][HASH_LABEL] = json!(hash);
            let mut annotations = d["metadata"]["annotations"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            annotations.retain(|k, _| !k.starts_with("kubectl.kubernetes.io/") && k != REVISION);
            annotations.insert(REVISION.into(), json!((max_old_rev + 1).to_string()));
            annotations.insert(
                "deployment.kubernetes.io/desired-replicas".into(),
                json!(want.to_string()),
            );
            annotations.insert(
                "deployment.kubernetes.io/max-replicas".into(),
                json!((want + max_surge).to_string()),
            );
            let initial = if recreate || !old.iter().any(|rs| replicas(rs) > 0) {
                want
            } else {
                0
            };
            let initial = if recreate && old.iter().any(|rs| replicas(rs) > 0) {
                0
            } else {
                initial
            };
            let rs = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("{name}-{hash}"),
                    "namespace": ns,
                    "labels": rs_template["metadata"]["labels"],
                    "annotations": annotations,
                    "ownerReferences": [owner_ref(&d)],
                },
                "spec": {"replicas": initial, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0), "selector": selector, "template": rs_template},
            });
            let rs_call = call(app, "apps", "replicasets", &ns, None, None, MANAGER);
            let created = app.create(&rs_call, rs).await?;
            record_scaling(app, &d, meta_str(&created, "name"), "up", initial).await;
            rss.wait_for(meta_str(&created, "resourceVersion").parse().unwrap_or(0))
                .await;
            changed = true;
            rss.get(&keys::object(
                keys::REPLICA_SETS,
                Some(&ns),
                meta_str(&created, "name"),
            ))
        }
    };

    if !paused && let Some(new_rs) = &new_rs {
        let all_replicas: i64 = owned.iter().map(|rs| replicas(rs)).sum::<i64>()
            + if owned
                .iter()
                .any(|rs| meta_str(rs, "uid") == meta_str(new_rs, "uid"))
            {
                0
            } else {
                replicas(new_rs)
            };
        if recreate {
            let old_running = old.iter().any(|rs| replicas(rs) > 0)
                || pods.list(Some(&ns)).iter().any(|p| {
                    active(p)
                        && old
                            .iter()
                            .any(|rs| controller_of(p, "ReplicaSet") == Some(meta_str(rs, "name")))
                });
            for rs in old.iter().filter(|rs| replicas(rs) > 0) {
                scale_rs(app, rs, 0, None).await?;
                record_scaling(app, &d, meta_str(rs, "name"), "down", 0).await;
                changed = true;
            }
            if !old_running && replicas(new_rs) != want {
                scale_rs(app, new_rs, want, None).await?;
                changed = true;
            }
        } else if let Some(resized) = {
            // A resize while several sets run: proportional scaling, this pass only.
            let active: Vec<&Arc<Value>> = owned
                .iter()
                .chain(
                    std::iter::once(new_rs)
                        .filter(|n| !owned.iter().any(|o| meta_str(o, "uid") == meta_str(n, "uid"))),
                )
                .filter(|rs| replicas(rs) > 0)
                .collect();
            let resized = active.len() > 1
                && active
                    .iter()
                    .any(|rs| annotation_i64(rs, DESIRED).is_some_and(|d| d != want));
            resized.then_some(active)
        } {
            let sets: Vec<(i64, Option<i64>, String)> = resized
                .iter()
                .map(|rs| {
                    (
                        replicas(rs),
                        annotation_i64(rs, MAX_REPLICAS),
                        meta_str(rs, "creationTimestamp").to_owned(),
                    )
                })
                .collect();
            let sizes = proportional_sizes(&sets, want, max_surge);
            for (rs, size) in resized.iter().zip(sizes) {
                let mut updated = (***rs).clone();
                updated["spec"]["replicas"] = json!(size);
                updated["metadata"]["annotations"][DESIRED] = json!(want.to_string());
                updated["metadata"]["annotations"][MAX_REPLICAS] = json!((want + max_surge).to_string());
                if updated != ***rs {
                    put_object(app, updated, "apps", "replicasets", None, MANAGER).await?;
                    if size != replicas(rs) {
                        let direction = if size > replicas(rs) { "up" } else { "down" };
                        record_scaling(app, &d, meta_str(rs, "name"), direction, size).await;
                    }
                    changed = true;
                }
            }
        } else {
            // Scale the new ReplicaSet up within maxSurge.
            let allowed = want + max_surge - all_replicas;
            let new_target = if replicas(new_rs) > want {
                want
            } else if allowed > 0 {
                (replicas(new_rs) + allowed).min(want)
            } else {
                replicas(new_rs)
            };
            if new_target != replicas(new_rs) {
                scale_rs(app, new_rs, new_target, None).await?;
                record_scaling(app, &d, meta_str(new_rs, "name"), "up", new_target).await;
                changed = true;
            }
            // Scale old ReplicaSets down within maxUnavailable.
            let all_now: i64 = old.iter().map(|rs| replicas(rs)).sum::<i64>() + new_target;
            let min_available = want - max_unavailable;
            let new_unavailable = new_target - status_count(new_rs, "availableReplicas");
            let mut budget = all_now - min_available - new_unavailable.max(0);
            // Unhealthy old replicas go first; they do not count as available anyway.
            for rs in old.iter() {
                if budget <= 0 {
                    break;
                }
                let unhealthy = replicas(rs) - status_count(rs, "availableReplicas");
                let cut = unhealthy.min(budget).max(0);
                if cut > 0 {
                    scale_rs(app, rs, replicas(rs) - cut, None).await?;
                    budget -= cut;
                    changed = true;
                }
            }
            let available: i64 = owned.iter().map(|rs| status_count(rs, "availableReplicas")).sum();
            let mut can_remove = (available - min_available).min(budget.max(0));
            for rs in old.iter() {
                if can_remove <= 0 {
                    break;
                }
                let current = rs_replicas_after(rss, rs);
                let cut = current.min(can_remove);
                if cut > 0 {
                    scale_rs(
                        app,
                        &rss.get(&rs_key(rs)).unwrap_or_else(|| rs.clone()),
                        current - cut,
                        None,
                    )
                    .await?;
                    record_scaling(app, &d, meta_str(rs, "name"), "down", current - cut).await;
                    can_remove -= cut;
                    changed = true;
                }
            }
        }
    }

    // Old, empty ReplicaSets beyond the history limit go, oldest first.
    let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let empty_old: Vec<&Arc<Value>> = old
        .iter()
        .filter(|rs| replicas(rs) == 0 && status_count(rs, "replicas") == 0)
        .collect();
    if empty_old.len() > limit {
        let rs_call = call(app, "apps", "replicasets", &ns, None, None, MANAGER);
        for rs in empty_old.iter().take(empty_old.len() - limit) {
            let _ = app
                .delete(&rs_call, meta_str(rs, "name"), &DeleteOptions::background())
                .await;
        }
    }

    if changed {
        rss.wait_for(app.store.revision()).await;
    }
    // The Deployment carries the revision of its current ReplicaSet, as upstream.
    let mut d = (*d).clone();
    if let Some(rs) = new_rs.and_then(|rs| rss.get(&rs_key(&rs))) {
        let rev = revision(&rs).to_string();
        if d["metadata"]["annotations"][REVISION].as_str() != Some(rev.as_str()) {
            if !d["metadata"]["annotations"].is_object() {
                d["metadata"]["annotations"] = json!({});
            }
            d["metadata"]["annotations"][REVISION] = json!(rev);
            let c = call(app, "apps", "deployments", &ns, Some(&name), None, MANAGER);
            d = app.update(&c, d).await?;
        }
    }
    update_status(app, &d, rss, want, max_unavailable).await
}

fn rs_key(rs: &Value) -> String {
    keys::object(
        keys::REPLICA_SETS,
        Some(meta_str(rs, "namespace")),
        meta_str(rs, "name"),
    )
}

fn rs_replicas_after(rss: &Cache, rs: &Value) -> i64 {
    rss.get(&rs_key(rs))
        .map(|r| replicas(&r))
        .unwrap_or_else(|| replicas(rs))
}

async fn update_status(
    app: &Objects,
    d: &Value,
    rss: &Cache,
    want: i64,
    max_unavailable: i64,
) -> Result<Next, Error> {
    let (ns, name) = (meta_str(d, "namespace"), meta_str(d, "name"));
    let owned: Vec<Arc<Value>> = rss
        .list(Some(ns))
        .into_iter()
        .filter(|rs| controller_of(rs, "Deployment") == Some(name))
        .collect();
    let template = &d["spec"]["template"];
    let new_rs = owned
        .iter()
        .find(|rs| without_hash(&rs["spec"]["template"]) == *template);
    let total: i64 = owned.iter().map(|rs| status_count(rs, "replicas")).sum();
    let ready: i64 = owned.iter().map(|rs| status_count(rs, "readyReplicas")).sum();
    let available: i64 = owned.iter().map(|rs| status_count(rs, "availableReplicas")).sum();
    let updated = new_rs.map(|rs| status_count(rs, "replicas")).unwrap_or(0);
    let new_available = new_rs
        .map(|rs| status_count(rs, "availableReplicas"))
        .unwrap_or(0);
    let complete = updated == want && new_available == want && total == want;
    let available_cond = if available >= want - max_unavailable {
        condition(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            d,
        )
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            d,
        )
    };
    let rs_name = new_rs
        .map(|rs| meta_str(rs, "name").to_owned())
        .unwrap_or_default();
    let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
    let previous_progress = d["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing").cloned());
    let progress_made = d["status"]["updatedReplicas"].as_i64().unwrap_or(-1) != updated
        || d["status"]["availableReplicas"].as_i64().unwrap_or(-1) != available
        || d["status"]["observedGeneration"] != d["metadata"]["generation"];
    let progressing = if d["spec"]["paused"] == json!(true) {
        condition("Progressing", true, "DeploymentPaused", "Deployment is paused", d)
    } else if complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            d,
        )
    } else {
        let stalled = !progress_made
            && previous_progress
                .as_ref()
                .and_then(|c| parse_time(c["lastUpdateTime"].as_str().unwrap_or_default()))
                .is_some_and(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds() > deadline);
        if stalled {
            condition(
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                d,
            )
        } else {
            let mut c = condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                &format!("ReplicaSet \"{rs_name}\" is progressing."),
                d,
            );
            if progress_made {
                c["lastUpdateTime"] = json!(now());
            }
            c
        }
    };
    let mut status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (want - available).max(0),
        "conditions": [available_cond, progressing],
    });
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| {
            !matches!(
                k.as_str(),
                "replicas"
                    | "updatedReplicas"
                    | "readyReplicas"
                    | "availableReplicas"
                    | "unavailableReplicas"
            ) || v != &json!(0)
        });
    }
    write_status(app, d, "apps", "deployments", status, MANAGER).await?;
    if complete {
        Ok(Next::Done)
    } else {
        // Re-check the progress deadline while a rollout is under way.
        Ok(Next::After(Duration::from_secs(deadline.clamp(1, 10) as u64)))
    }
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &super::runtime::Caches) {
    let deploys = caches.get(&app, DEPLOY_PREFIX);
    let rss = caches.get(&app, keys::REPLICA_SETS);
    let pods = caches.get(&app, keys::PODS);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &deploys);
    queue_owners(&queue, &rss, "Deployment", DEPLOY_PREFIX);
    {
        // Recreate waits for old pods to go.
        let (queue, rss, mut changes) = (queue.clone(), rss.clone(), pods.changes());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                if change.new.is_some() {
                    continue;
                }
                for pod in change.old.iter() {
                    let Some(rs_name) = controller_of(pod, "ReplicaSet") else {
                        continue;
                    };
                    let ns = meta_str(pod, "namespace");
                    if let Some(rs) = rss.get(&keys::object(keys::REPLICA_SETS, Some(ns), rs_name))
                        && let Some(owner) = controller_of(&rs, "Deployment")
                    {
                        queue.add(&format!("{DEPLOY_PREFIX}{ns}/{owner}"));
                    }
                }
            }
        });
    }
    run_workers(app.clone(), "deployment", queue, 2, move |key| {
        let (app, deploys, rss, pods) = (app.clone(), deploys.clone(), rss.clone(), pods.clone());
        async move { reconcile(&app, &deploys, &rss, &pods, &key).await }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_mid_rollout_scales_every_set_in_proportion() {
        // Upstream's conformance numbers: 10 replicas (maxSurge 3) mid-rollout with 8 old and 5
        // new pods, resized to 30: 20 old and 13 new.
        let sets = vec![
            (8, Some(13), "2026-01-01T00:00:00Z".to_owned()),
            (5, Some(13), "2026-01-01T00:01:00Z".to_owned()),
        ];
        assert_eq!(proportional_sizes(&sets, 30, 3), [20, 13]);
        // Shrinking takes from the largest first; rounding leftovers go to it.
        assert_eq!(proportional_sizes(&sets, 5, 3), [5, 3]);
        // To zero: every set goes.
        assert_eq!(proportional_sizes(&sets, 0, 3), [0, 0]);
    }

    #[test]
    fn int_or_percent_rounding() {
        assert_eq!(resolve(&json!("25%"), 10, true), 3);
        assert_eq!(resolve(&json!("25%"), 10, false), 2);
        assert_eq!(resolve(&json!(2), 10, false), 2);
    }

    #[test]
    fn hash_ignores_the_hash_label_and_is_safe() {
        let t = json!({"metadata": {"labels": {"app": "a"}}, "spec": {}});
        let mut with = t.clone();
        with["metadata"]["labels"][HASH_LABEL] = json!("x");
        assert_eq!(template_hash(&t, 0), template_hash(&with, 0));
        assert!(
            template_hash(&t, 0)
                .bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        assert_ne!(template_hash(&t, 0), template_hash(&t, 1));
        // Field order does not matter: a template read back in another order hashes the same.
        let reordered: Value = serde_json::from_str(
            r#"{"spec": {"containers": [{"image": "i", "name": "c"}]}, "metadata": {"labels": {"app": "a"}}}"#,
        )
        .unwrap();
        let ordered: Value = serde_json::from_str(
            r#"{"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}"#,
        )
        .unwrap();
        assert_eq!(template_hash(&reordered, 0), template_hash(&ordered, 0));
        // Nor does a null: `kubectl rollout undo` writes the template back with
        // `creationTimestamp: null`.
        let mut nulled = ordered.clone();
        nulled["metadata"]["creationTimestamp"] = Value::Null;
        assert_eq!(template_hash(&nulled, 0), template_hash(&ordered, 0));
        assert_eq!(
            legacy_template_hashes(&nulled)[1],
            hash_template(&sorted(&nulled, true), 0)
        );
        assert_ne!(
            legacy_template_hashes(&reordered)[0],
            legacy_template_hashes(&ordered)[0]
        );
    }
}
