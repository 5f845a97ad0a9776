//! The ReplicaSet controller: keeps `spec.replicas` pods from the template running, and reports
//! replicas, ready and available counts with `observedGeneration`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::error::Error;
use super::events;
use super::runtime::{Cache, Next, Queue, queue_changes, queue_owners, run_workers};
use super::write::{call, write_status};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{meta_str, pod_available, pod_from_template, pod_ready};
use crate::objects::write::DeleteOptions;

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

async fn reconcile(app: &Objects, rs_cache: &Cache, pods: &Cache, key: &str) -> Result<Next, Error> {
    let Some((rs, ns, name)) = rs_cache.live(key) else {
        return Ok(Next::Done);
    };
    let owned: Vec<Arc<Value>> = pods.active_owned_by(&ns, "ReplicaSet", &name);
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let mut last_rev = 0;
    if owned.len() < want {
        let template = &rs["spec"]["template"];
        let pod_call = call(app, "", "pods", &ns, None, None, "replicaset-controller");
        for _ in owned.len()..want.min(owned.len() + 500) {
            let pod = pod_from_template(template, &rs, &name, None);
            match app.create(&pod_call, pod).await {
                Ok(created) => {
                    last_rev = last_rev.max(meta_str(&created, "resourceVersion").parse().unwrap_or(0));
                    events::record(
                        app,
                        &rs,
                        "replicaset-controller",
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
                        "replicaset-controller",
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {}", e.message),
                    )
                    .await;
                    return Err(e.into());
                }
            }
        }
    } else if owned.len() > want {
        let mut extra = owned.clone();
        extra.sort_by_key(|p| deletion_rank(p));
        let pod_call = call(app, "", "pods", &ns, None, None, "replicaset-controller");
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
                        "replicaset-controller",
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
    let owned: Vec<Arc<Value>> = pods.active_owned_by(&ns, "ReplicaSet", &name);
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
    write_status(app, &rs, "apps", "replicasets", status, "replicaset-controller").await?;
    if ready > available {
        return Ok(Next::After(Duration::from_secs(min_ready.max(1) as u64)));
    }
    Ok(Next::Done)
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &super::runtime::Caches) {
    let rs_cache = caches.get(&app, keys::REPLICA_SETS);
    let pods = caches.get(&app, keys::PODS);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &rs_cache);
    queue_owners(&queue, &pods, "ReplicaSet", keys::REPLICA_SETS);
    let (rs_c, pods_c, app_c) = (rs_cache.clone(), pods.clone(), app.clone());
    run_workers(app, "replicaset", queue, 2, move |key| {
        let (rs_c, pods_c, app_c) = (rs_c.clone(), pods_c.clone(), app_c.clone());
        async move { reconcile(&app_c, &rs_c, &pods_c, &key).await }
    });
}
