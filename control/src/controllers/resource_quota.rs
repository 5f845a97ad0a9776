//! Upstream's resource quota controller: every ResourceQuota's `status` holds its `hard` limits
//! and what the namespace's objects use of them (`objects::quota` counts), recounted when the
//! quota's limits change, when an object of its namespace is deleted or changes what it uses,
//! and every 30 seconds. Creates are charged by admission (`Objects::charge_quotas`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::runtime::{Caches, Next, Queue, run_workers};
use super::write::write_status;
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::from_kv;
use crate::objects::quota::{self, Usage};
use crate::objects::status::ApiError;
use crate::store::{Event, EventKind};

const MANAGER: &str = "resourcequota-controller";
/// How often a quota is recounted when nothing says it changed.
const RECOUNT: Duration = Duration::from_secs(30);

/// What the objects of the quota's namespace use of its hard limits.
async fn count(app: &Objects, quota: &Value) -> Result<Usage, ApiError> {
    let ns = quota["metadata"]["namespace"].as_str().unwrap_or_default();
    let hard = &quota["spec"]["hard"];
    let mut used = Usage::new();
    for info in quota::sources(hard, &app.registry) {
        let items = app
            .store
            .list(&info.prefix_in(Some(ns)), None, 0)
            .await
            .map_err(ApiError::internal)?;
        for kv in &items.items {
            let obj = from_kv(kv);
            if quota::in_scope(quota, &info, &obj) {
                quota::add_usage(&mut used, hard, &quota::usage(&info, &obj));
            }
        }
    }
    Ok(used)
}

/// Whether `event` changes what the objects of `quota`'s namespace use of it: a counted object
/// deleted, or updated so that it counts differently (a pod that ended, a service of another
/// type). Creates are charged to the quota by admission as they are made; a recount then, before
/// the object is stored, would take back the charge of a create still on its way, and let the
/// next one past the limit (as upstream, whose replenishment follows deletes and pods that end).
fn changes_usage(app: &Objects, quota: &Value, event: &Event) -> bool {
    let ns = quota["metadata"]["namespace"].as_str();
    let Some(info) = quota::sources(&quota["spec"]["hard"], &app.registry)
        .into_iter()
        .find(|info| event.kv.key.starts_with(&info.prefix_in(ns)))
    else {
        return false;
    };
    let counted = |kv: &crate::store::KeyValue| {
        let obj = from_kv(kv);
        quota::in_scope(quota, &info, &obj).then(|| quota::usage(&info, &obj))
    };
    match (&event.kind, &event.prev) {
        (EventKind::Delete, _) => counted(&event.kv).is_some(),
        (EventKind::Put, Some(prev)) => counted(prev) != counted(&event.kv),
        (EventKind::Put, None) => false,
    }
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let prefix = quota::prefix();
    let quotas = caches.get(&app, &prefix);
    let queue = Arc::new(Queue::default());
    // A new quota, or new limits, are counted; the quota's own status writes (the controller's,
    // and admission's charges) are not a reason to count again.
    let (q, mut changes) = (queue.clone(), quotas.changes());
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            let spec = |o: &Option<Arc<Value>>| o.as_ref().map(|o| o["spec"].clone());
            if change.new.is_some() && spec(&change.old) != spec(&change.new) {
                q.add(&change.key);
            }
        }
    });
    // A change in a namespace with quotas that changes what its objects use recounts them.
    let (q, cache, store, objects) = (queue.clone(), quotas.clone(), app.store.clone(), app.clone());
    tokio::spawn(async move {
        loop {
            let Ok(mut watch) = store.watch("/", store.revision()) else {
                tokio::time::sleep(super::RESYNC).await;
                continue;
            };
            while let Ok(Some(event)) = watch.next().await {
                let Some((_, _, rest)) = keys::split(&event.kv.key) else {
                    continue;
                };
                let Some((ns, _)) = rest.split_once('/') else {
                    continue;
                };
                for quota in cache.under(&format!("{}{ns}/", quota::prefix())) {
                    if !changes_usage(&objects, &quota, &event) {
                        continue;
                    }
                    q.add(&keys::object(
                        &quota::prefix(),
                        quota["metadata"]["namespace"].as_str(),
                        quota["metadata"]["name"].as_str().unwrap_or_default(),
                    ));
                }
            }
        }
    });
    for quota in quotas.list(None) {
        queue.add(&keys::object(
            &prefix,
            quota["metadata"]["namespace"].as_str(),
            quota["metadata"]["name"].as_str().unwrap_or_default(),
        ));
    }
    run_workers(app.clone(), MANAGER, queue, 1, move |key| {
        let app = app.clone();
        async move {
            let Some(kv) = app.store.get(&key).await.map_err(ApiError::internal)? else {
                return Ok(Next::Done);
            };
            let quota = from_kv(&kv);
            if quota["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Next::Done);
            }
            let used = count(&app, &quota).await?;
            write_status(
                &app,
                &quota,
                "",
                "resourcequotas",
                quota::status(&quota, &used),
                MANAGER,
            )
            .await?;
            Ok(Next::After(RECOUNT))
        }
    });
}
