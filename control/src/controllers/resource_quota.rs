//! Upstream's resource quota controller: every ResourceQuota's `status` holds its `hard` limits
//! and what the namespace's objects use of them (`objects::quota` counts), recounted when the
//! quota changes, when anything in its namespace changes, and every 30 seconds.

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

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let prefix = quota::prefix();
    let quotas = caches.get(&app, &prefix);
    let queue = Arc::new(Queue::default());
    let (q, mut changes) = (queue.clone(), quotas.subscribe());
    tokio::spawn(async move {
        while let Ok(change) = changes.recv().await {
            q.add(&change.key);
        }
    });
    // A change anywhere in a namespace with quotas recounts them.
    let (q, cache, store) = (queue.clone(), quotas.clone(), app.store.clone());
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
