//! Every namespace gets a `default` ServiceAccount (recreated if deleted).

use std::sync::Arc;

use serde_json::json;

use super::runtime::{Caches, Next, Queue, run_workers};
use super::write::call;
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;

const NS_PREFIX: &str = keys::NAMESPACES;
const SA_PREFIX: &str = keys::SERVICE_ACCOUNTS;

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let namespaces = caches.get(&app, NS_PREFIX);
    let accounts = caches.get(&app, SA_PREFIX);
    let queue = Arc::new(Queue::default());
    for cache in [namespaces.clone(), accounts.clone()] {
        let (queue, mut changes) = (queue.clone(), cache.changes());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let ns = change
                    .key
                    .trim_start_matches(NS_PREFIX)
                    .trim_start_matches(SA_PREFIX);
                queue.add(ns.split('/').next().unwrap_or_default());
            }
        });
    }
    for ns in namespaces.list(None) {
        queue.add(meta_str(&ns, "name"));
    }
    run_workers(app.clone(), "serviceaccount", queue, 1, move |ns| {
        let (app, namespaces, accounts) = (app.clone(), namespaces.clone(), accounts.clone());
        async move {
            let Some(namespace) = namespaces.get(&format!("{NS_PREFIX}{ns}")) else {
                return Ok(Next::Done);
            };
            if namespace["metadata"]["deletionTimestamp"].is_string()
                || accounts.get(&format!("{SA_PREFIX}{ns}/default")).is_some()
            {
                return Ok(Next::Done);
            }
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
            let c = call(
                &app,
                "",
                "serviceaccounts",
                &ns,
                None,
                None,
                "service-account-controller",
            );
            match app.create(&c, sa).await {
                Ok(_) => Ok(Next::Done),
                Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => Ok(Next::Done),
                Err(e) => Err(e.into()),
            }
        }
    });
}
