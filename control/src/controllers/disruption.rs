//! The disruption controller: each PodDisruptionBudget's healthy, desired and allowed
//! disruptions, from the pods its selector matches.

use std::sync::Arc;

use serde_json::json;

use super::deployment::resolve;
use super::error::Error;
use super::runtime::{Cache, Caches, Next, Queue, queue_changes, run_workers};
use super::write::write_status;
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::meta::{active, pod_ready};
use crate::objects::selector::LabelSelector;

/// Store prefix of PodDisruptionBudgets.
pub const PDB_PREFIX: &str = keys::POD_DISRUPTION_BUDGETS;

async fn reconcile(app: &Objects, pdbs: &Cache, pods: &Cache, key: &str) -> Result<Next, Error> {
    let Some(pdb) = pdbs.get(key) else {
        return Ok(Next::Done);
    };
    let (ns, _name) = (
        meta_str(&pdb, "namespace").to_owned(),
        meta_str(&pdb, "name").to_owned(),
    );
    let selector = LabelSelector::from_object(&pdb["spec"]["selector"]).map_err(|e| e.to_string())?;
    let matching: Vec<_> = pods
        .list(Some(&ns))
        .into_iter()
        .filter(|p| !selector.is_empty() && selector.matches(p["metadata"].get("labels")) && active(p))
        .collect();
    let expected = matching.len() as i64;
    let healthy = matching.iter().filter(|p| pod_ready(p)).count() as i64;
    let desired = match (&pdb["spec"]["minAvailable"], &pdb["spec"]["maxUnavailable"]) {
        (min, _) if !min.is_null() => resolve(min, expected, true),
        (_, max) if !max.is_null() => (expected - resolve(max, expected, false)).max(0),
        _ => expected,
    };
    let allowed = (healthy - desired).max(0);
    let condition = if allowed > 0 {
        json!({"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods", "message": "", "observedGeneration": pdb["metadata"]["generation"]})
    } else {
        json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods", "message": "", "observedGeneration": pdb["metadata"]["generation"]})
    };
    let previous_condition = pdb["status"]["conditions"][0].clone();
    let condition = if previous_condition["status"] == condition["status"]
        && previous_condition["lastTransitionTime"].is_string()
    {
        let mut c = condition;
        c["lastTransitionTime"] = previous_condition["lastTransitionTime"].clone();
        c
    } else {
        let mut c = condition;
        c["lastTransitionTime"] = json!(crate::objects::meta::now());
        c
    };
    let status = json!({
        "observedGeneration": pdb["metadata"]["generation"],
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "disruptionsAllowed": allowed,
        "expectedPods": expected,
        "conditions": [condition],
    });
    write_status(
        app,
        &pdb,
        "policy",
        "poddisruptionbudgets",
        status,
        "disruption-controller",
    )
    .await?;
    Ok(Next::Done)
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let pdbs = caches.get(&app, PDB_PREFIX);
    let pods = caches.get(&app, keys::PODS);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &pdbs);
    {
        let (queue, pdbs, mut changes) = (queue.clone(), pdbs.clone(), pods.changes());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let Some(pod) = change.new.as_ref().or(change.old.as_ref()) else {
                    continue;
                };
                for pdb in pdbs.list(Some(meta_str(pod, "namespace"))) {
                    queue.add(&format!(
                        "{PDB_PREFIX}{}/{}",
                        meta_str(&pdb, "namespace"),
                        meta_str(&pdb, "name")
                    ));
                }
            }
        });
    }
    run_workers(app.clone(), "disruption", queue, 1, move |key| {
        let (app, pdbs, pods) = (app.clone(), pdbs.clone(), pods.clone());
        async move { reconcile(&app, &pdbs, &pods, &key).await }
    });
}
