//! Namespace deletion: everything inside a terminating namespace is deleted, then the namespace.

use std::collections::HashSet;
use std::sync::Arc;

use super::{RESYNC, edit_object};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{from_kv, meta_str};
use crate::objects::write::DeleteOptions;
use crate::objects::write::Request;
use crate::store::StoreError;

const PREFIX: &str = keys::NAMESPACES;

/// Deletes the contents of `ns`; returns whether it is empty.
async fn drain(app: &Objects, ns: &str) -> Result<bool, StoreError> {
    let mut empty = true;
    let mut seen = HashSet::new();
    for info in app.registry.all().into_iter().filter(|r| r.namespaced) {
        if !seen.insert((info.group.clone(), info.plural.clone())) {
            continue;
        }
        let list = app.store.list(&info.prefix_in(Some(ns)), None, 0).await?;
        for kv in &list.items {
            empty = false;
            let obj = from_kv(kv);
            if obj["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let call = Request::new(info.clone(), Some(ns), Some(meta_str(&obj, "name")));
            let name = meta_str(&obj, "name").to_owned();
            if let Err(e) = app.delete(&call, &name, &DeleteOptions::background()).await
                && e.code != 404
            {
                tracing::warn!(%ns, %name, error = %e, "could not delete namespace content");
            }
        }
    }
    Ok(empty)
}

async fn finish(app: &Objects, ns: &str) -> Result<(), StoreError> {
    // Dropping the `kubernetes` finalizer; with no metadata finalizers left the namespace goes.
    edit_object(app, &format!("{PREFIX}{ns}"), |obj| {
        if let Some(spec) = obj["spec"].as_object_mut() {
            spec.remove("finalizers");
        }
        true
    })
    .await
}

async fn pass(app: &Objects) -> Result<bool, StoreError> {
    let list = app.store.list(PREFIX, None, 0).await?;
    let mut terminating = false;
    for kv in &list.items {
        let ns = from_kv(kv);
        if !ns["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        terminating = true;
        let name = meta_str(&ns, "name").to_owned();
        if drain(app, &name).await? {
            finish(app, &name).await?;
        }
    }
    Ok(terminating)
}

/// Runs the namespace controller: a pass whenever a namespace changes, and every second while one
/// is terminating.
pub async fn run(app: Arc<Objects>) {
    let mut watch = None;
    loop {
        let terminating = match pass(&app).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "namespace controller pass failed");
                true
            }
        };
        if watch.is_none() {
            watch = app.store.watch(PREFIX, app.store.revision()).ok();
        }
        let Some(w) = watch.as_mut() else {
            tokio::time::sleep(RESYNC).await;
            continue;
        };
        tokio::select! {
            e = w.next() => match e {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => watch = None,
            },
            () = tokio::time::sleep(RESYNC), if terminating => {}
        }
    }
}
