//! The StatefulSet controller: pods `<name>-<ordinal>` with stable identities (hostname and
//! subdomain), created in order and removed in reverse order under `OrderedReady` (all at once
//! under `Parallel`), and rolling updates from the highest ordinal down to `partition`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::deployment::{legacy_template_hashes, template_hash};
use super::error::Error;
use super::events;
use super::runtime::{Cache, Caches, Next, Queue, queue_changes, queue_owners, run_workers};
use super::write::{call, write_status};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::meta::{active, pod_available, pod_from_template, pod_ready};
use crate::objects::write::DeleteOptions;

/// Store prefix of StatefulSets.
pub const STS_PREFIX: &str = keys::STATEFUL_SETS;
const HASH: &str = "controller-revision-hash";
const MANAGER: &str = "statefulset-controller";

fn ordinal(name: &str, pod: &Value) -> Option<i64> {
    meta_str(pod, "name")
        .strip_prefix(&format!("{name}-"))?
        .parse()
        .ok()
}

/// The set's `volumeClaimTemplates` with the claim each names for `pod_name`
/// (`<template>-<pod>`, as upstream).
fn template_claims<'a>(sts: &'a Value, pod_name: &str) -> Vec<(&'a Value, String)> {
    sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t, format!("{}-{pod_name}", meta_str(t, "name"))))
        .collect()
}

/// Creates the claims of the set's `volumeClaimTemplates` for ordinal `pod_name` unless they
/// exist, and points the pod's volumes at them.
async fn claims_for(app: &Objects, sts: &Value, pod_name: &str, pod: &mut Value) -> Result<(), Error> {
    let ns = meta_str(sts, "namespace");
    let claim_call = call(app, "", "persistentvolumeclaims", ns, None, None, MANAGER);
    for (template, claim_name) in template_claims(sts, pod_name) {
        let volume = meta_str(template, "name");
        let mut claim = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name, "namespace": ns,
                "labels": template["metadata"]["labels"].as_object().cloned().unwrap_or_default()},
            "spec": template["spec"],
        });
        for (k, v) in sts["spec"]["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
        {
            claim["metadata"]["labels"][k] = v.clone();
        }
        if let Some(a) = template["metadata"]["annotations"].as_object() {
            claim["metadata"]["annotations"] = json!(a);
        }
        if sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete" {
            let mut owner = crate::objects::meta::owner_ref(sts);
            owner["controller"] = json!(false);
            claim["metadata"]["ownerReferences"] = json!([owner]);
        }
        match app.create(&claim_call, claim).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let entry = json!({"name": volume, "persistentVolumeClaim": {"claimName": claim_name}});
        let volumes = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        let mut volumes: Vec<Value> = volumes.into_iter().filter(|v| v["name"] != volume).collect();
        volumes.push(entry);
        pod["spec"]["volumes"] = Value::Array(volumes);
    }
    Ok(())
}

/// Deletes the template claims of a pod removed by a scale-down (`whenScaled: Delete`).
async fn delete_claims(app: &Objects, sts: &Value, pod_name: &str) {
    let ns = meta_str(sts, "namespace");
    let claim_call = call(app, "", "persistentvolumeclaims", ns, None, None, MANAGER);
    for (_, claim) in template_claims(sts, pod_name) {
        let _ = app
            .delete(&claim_call, &claim, &DeleteOptions::background())
            .await;
    }
}

fn healthy(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && pod_ready(pod)
}

async fn reconcile(
    app: &Objects,
    stss: &Cache,
    pods: &Cache,
    revs: &Cache,
    key: &str,
) -> Result<Next, Error> {
    let Some((sts, ns, name)) = stss.live(key) else {
        return Ok(Next::Done);
    };
    let want = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
    let template = &sts["spec"]["template"];
    let hash = template_hash(template, 0);
    let revision = format!("{name}-{hash}");
    super::daemonset::ensure_revision(app, revs, &sts, "StatefulSet", &hash).await?;
    // Pods made again below the partition (or, without one, below the current replicas) while an
    // update rolls get the current revision's template, as upstream.
    let current_template: Option<(String, Value)> = sts["status"]["currentRevision"]
        .as_str()
        .filter(|r| *r != revision)
        .and_then(|r| {
            let rev = revs.get(&keys::object(keys::CONTROLLER_REVISIONS, Some(&ns), r))?;
            Some((r.to_owned(), super::daemonset::revision_template(&rev)))
        })
        .filter(|(_, t)| t.is_object());
    let partition_set = sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"].is_i64();
    let current_replicas = sts["status"]["currentReplicas"].as_i64().unwrap_or(0);
    // Pods labelled before revisions were hashed with sorted keys and without
    // nulls are at the current template too.
    let legacy = legacy_template_hashes(template).map(|h| format!("{name}-{h}"));
    let at_revision = |p: &Value| {
        let label = &p["metadata"]["labels"][HASH];
        label == revision.as_str() || legacy.iter().any(|l| label == l.as_str())
    };
    let partition = sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        .as_i64()
        .unwrap_or(0);
    let rolling = sts["spec"]["updateStrategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let all: Vec<Arc<Value>> = pods.owned_by(&ns, "StatefulSet", &name);
    let mut by_ordinal: BTreeMap<i64, Arc<Value>> = BTreeMap::new();
    for p in &all {
        if let Some(o) = ordinal(&name, p) {
            by_ordinal.insert(o, p.clone());
        }
    }
    let pod_call = call(app, "", "pods", &ns, None, None, MANAGER);
    let mut wrote = false;
    // A terminating pod blocks ordered progress until it is gone.
    let terminating = by_ordinal
        .values()
        .any(|p| p["metadata"]["deletionTimestamp"].is_string());
    if parallel || !terminating {
        // Create missing ordinals, in order.
        for o in 0..want {
            // A pod that failed (or ended) is deleted and made again, as upstream.
            if let Some(p) = by_ordinal.get(&o)
                && matches!(p["status"]["phase"].as_str(), Some("Failed" | "Succeeded"))
                && !p["metadata"]["deletionTimestamp"].is_string()
            {
                let pod_name = meta_str(p, "name").to_owned();
                let _ = app
                    .delete(&pod_call, &pod_name, &DeleteOptions::background())
                    .await;
                events::record(
                    app,
                    &sts,
                    MANAGER,
                    "Warning",
                    "RecreatingFailedPod",
                    &format!("StatefulSet {ns}/{name} is recreating failed Pod {pod_name}"),
                )
                .await;
                wrote = true;
                break;
            }
            if by_ordinal.contains_key(&o) {
                if !parallel && !healthy(&by_ordinal[&o]) {
                    break;
                }
                continue;
            }
            let pod_name = format!("{name}-{o}");
            let below = if partition_set {
                o < partition
            } else {
                o < current_replicas
            };
            let (template, label) = match &current_template {
                Some((rev, t)) if rolling && below => (t, rev.as_str()),
                _ => (template, revision.as_str()),
            };
            let mut pod = pod_from_template(template, &sts, &name, Some(&pod_name));
            pod["metadata"]["labels"][HASH] = json!(label);
            pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
            pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(o.to_string());
            pod["spec"]["hostname"] = json!(pod_name);
            if let Some(svc) = sts["spec"]["serviceName"].as_str().filter(|s| !s.is_empty()) {
                pod["spec"]["subdomain"] = json!(svc);
            }
            claims_for(app, &sts, &pod_name, &mut pod).await?;
            match app.create(&pod_call, pod).await {
                Ok(created) => {
                    events::record(
                        app,
                        &sts,
                        MANAGER,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                    )
                    .await;
                    pods.wait_for(meta_str(&created, "resourceVersion").parse().unwrap_or(0))
                        .await;
                    wrote = true;
                }
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            if !parallel {
                break;
            }
        }
        // Remove ordinals beyond replicas, highest first (one at a time when ordered).
        let extra: Vec<(i64, Arc<Value>)> = by_ordinal
            .iter()
            .rev()
            .filter(|(o, p)| **o >= want && active(p))
            .map(|(o, p)| (*o, p.clone()))
            .collect();
        let others_healthy = by_ordinal
            .iter()
            .filter(|(o, _)| **o < want)
            .all(|(_, p)| healthy(p));
        // Ordered: the highest goes once the others are healthy, and only if it is healthy itself
        // or the lowest unhealthy pod (upstream halts a scale-down on an unhealthy pod).
        let first_unhealthy = by_ordinal.iter().find(|(_, p)| !healthy(p)).map(|(o, _)| *o);
        let top_may_go = extra
            .first()
            .is_some_and(|(o, p)| healthy(p) || Some(*o) == first_unhealthy);
        for (_, p) in extra.iter().take(if parallel {
            extra.len()
        } else {
            usize::from(others_healthy && top_may_go)
        }) {
            let _ = app
                .delete(&pod_call, meta_str(p, "name"), &DeleteOptions::background())
                .await;
            if sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete" {
                delete_claims(app, &sts, meta_str(p, "name")).await;
            }
            events::record(
                app,
                &sts,
                MANAGER,
                "Normal",
                "SuccessfulDelete",
                &format!(
                    "delete Pod {} in StatefulSet {name} successful",
                    meta_str(p, "name")
                ),
            )
            .await;
            wrote = true;
        }
        // Rolling update: replace out-of-date pods from the top ordinal down to the partition,
        // one at a time, each once the others are healthy.
        if rolling && extra.is_empty() && !wrote {
            let all_healthy = (0..want).all(|o| by_ordinal.get(&o).is_some_and(|p| healthy(p)));
            if all_healthy
                && let Some((_, p)) = by_ordinal
                    .iter()
                    .rev()
                    .find(|(o, p)| **o >= partition && **o < want && !at_revision(p))
            {
                let _ = app
                    .delete(&pod_call, meta_str(p, "name"), &DeleteOptions::background())
                    .await;
                wrote = true;
            }
        }
    }
    if wrote {
        pods.wait_for(app.store.revision()).await;
    }
    let current: Vec<Arc<Value>> = pods.active_owned_by(&ns, "StatefulSet", &name);
    let updated = current.iter().filter(|p| at_revision(p)).count();
    let current_revision = if updated == current.len() {
        revision.clone()
    } else {
        sts["status"]["currentRevision"]
            .as_str()
            .unwrap_or(&revision)
            .to_owned()
    };
    let min_ready = sts["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let mut status = json!({
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": current.len(),
        "readyReplicas": current.iter().filter(|p| pod_ready(p)).count(),
        "currentReplicas": current
            .iter()
            .filter(|p| if current_revision == revision { at_revision(p) } else { p["metadata"]["labels"][HASH] == current_revision.as_str() })
            .count(),
        "updatedReplicas": updated,
        "availableReplicas": current.iter().filter(|p| pod_available(p, min_ready)).count(),
        "currentRevision": current_revision,
        "updateRevision": revision,
        "collisionCount": 0,
    });
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| !matches!(k.as_str(), "readyReplicas" | "availableReplicas") || v != &json!(0));
    }
    write_status(app, &sts, "apps", "statefulsets", status, MANAGER).await?;
    Ok(Next::Done)
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let stss = caches.get(&app, STS_PREFIX);
    let pods = caches.get(&app, keys::PODS);
    let revs = caches.get(&app, keys::CONTROLLER_REVISIONS);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &stss);
    queue_owners(&queue, &pods, "StatefulSet", STS_PREFIX);
    run_workers(app.clone(), "statefulset", queue, 2, move |key| {
        let (app, stss, pods, revs) = (app.clone(), stss.clone(), pods.clone(), revs.clone());
        async move { reconcile(&app, &stss, &pods, &revs, &key).await }
    });
}
