//! The ReplicaSet controller: keeps `spec.replicas` pods from the template running, and reports
//! replicas, ready and available counts with `observedGeneration`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::events;
use super::runtime::{Cache, Next, Queue, queue_changes, queue_owners, run_workers};
use crate::api::App;
use crate::api::handlers::{Call, create_object, delete_one, update_object};
use crate::api::object::{meta_str, parse_time};
use crate::objects::keys;

/// Store prefix of ReplicaSets.
pub const RS_PREFIX: &str = keys::REPLICA_SETS;
/// Store prefix of pods.
pub const POD_PREFIX: &str = keys::PODS;

/// The `Call` for writing `plural` objects in `ns` as the controller `manager`.
pub fn call(
    app: &App,
    group: &str,
    plural: &str,
    ns: &str,
    name: Option<&str>,
    sub: Option<&str>,
    manager: &str,
) -> Call {
    let info = app
        .registry
        .all()
        .into_iter()
        .find(|r| r.group == group && r.plural == plural)
        .expect("built-in resource is registered");
    Call {
        info,
        ns: Some(ns.to_owned()),
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
        query: [("fieldManager".to_owned(), manager.to_owned())]
            .into_iter()
            .collect(),
        table: false,
        content_type: "application/json".into(),
    }
}

/// Writes `next` over the object (or its subresource `sub`) of `group`/`plural` that its
/// metadata names, as `manager`; returns the stored object.
pub async fn put_object(
    app: &App,
    next: Value,
    group: &str,
    plural: &str,
    sub: Option<&str>,
    manager: &str,
) -> Result<Value, String> {
    let c = call(
        app,
        group,
        plural,
        meta_str(&next, "namespace"),
        Some(meta_str(&next, "name")),
        sub,
        manager,
    );
    update_object(app, &c, next).await.map_err(|e| e.message)
}

/// Writes `obj`'s status subresource (`group`/`plural`) as `manager`.
pub async fn put_status(
    app: &App,
    obj: &Value,
    group: &str,
    plural: &str,
    status: Value,
    manager: &str,
) -> Result<(), String> {
    let mut next = obj.clone();
    next["status"] = status;
    put_object(app, next, group, plural, Some("status"), manager)
        .await
        .map(|_| ())
}

/// Writes `status` unless the object already has it.
pub async fn write_status(
    app: &App,
    obj: &Value,
    group: &str,
    plural: &str,
    status: Value,
    manager: &str,
) -> Result<(), String> {
    if obj["status"] == status {
        return Ok(());
    }
    put_status(app, obj, group, plural, status, manager).await
}

/// The uid of the controller that owns `obj` with the given kind, if any.
pub fn controller_of<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == json!(true) && r["kind"] == kind)
        .and_then(|r| r["name"].as_str())
}

/// Whether a pod is Ready.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Whether a pod has been Ready for at least `min_ready` seconds.
pub fn pod_available(pod: &Value, min_ready: i64) -> bool {
    if !pod_ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    let since = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| parse_time(c["lastTransitionTime"].as_str().unwrap_or_default()));
    since.is_some_and(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds() >= min_ready)
}

/// Pods that count toward a controller: not terminating and not finished.
pub fn active(pod: &Value) -> bool {
    !pod["metadata"]["deletionTimestamp"].is_string()
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// The owner reference a controller puts on what it creates.
pub fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta_str(owner, "name"),
        "uid": meta_str(owner, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A pod from `template`, owned by `owner`, named `prefix` plus a random suffix (or exactly
/// `name` when given).
pub fn pod_from_template(template: &Value, owner: &Value, prefix: &str, name: Option<&str>) -> Value {
    let mut meta = json!({
        "namespace": meta_str(owner, "namespace"),
        "labels": template["metadata"]["labels"].clone(),
        "ownerReferences": [owner_ref(owner)],
    });
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(format!("{prefix}-")),
    }
    if let Some(a) = template["metadata"].get("annotations").filter(|a| a.is_object()) {
        meta["annotations"] = a.clone();
    }
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"].clone()})
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

async fn reconcile(app: &App, rs_cache: &Cache, pods: &Cache, key: &str) -> Result<Next, String> {
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
            match create_object(app, &pod_call, pod).await {
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
                    return Err(e.message);
                }
            }
        }
    } else if owned.len() > want {
        let mut extra = owned.clone();
        extra.sort_by_key(|p| deletion_rank(p));
        let pod_call = call(app, "", "pods", &ns, None, None, "replicaset-controller");
        for pod in extra.iter().take(owned.len() - want) {
            let pod_name = meta_str(pod, "name").to_owned();
            match delete_one(
                app,
                &pod_call,
                &pod_name,
                Some("Background"),
                None,
                &Value::Null,
                false,
            )
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
                Err(e) => return Err(e.message),
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
pub fn start(app: Arc<App>, caches: &super::runtime::Caches) {
    let rs_cache = caches.get(&app, RS_PREFIX);
    let pods = caches.get(&app, POD_PREFIX);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &rs_cache);
    queue_owners(&queue, &pods, "ReplicaSet", RS_PREFIX);
    let (rs_c, pods_c, app_c) = (rs_cache.clone(), pods.clone(), app.clone());
    run_workers(app, "replicaset", queue, 2, move |key| {
        let (rs_c, pods_c, app_c) = (rs_c.clone(), pods_c.clone(), app_c.clone());
        async move { reconcile(&app_c, &rs_c, &pods_c, &key).await }
    });
}
