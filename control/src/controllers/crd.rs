//! Keeps the served custom resources in step with the stored CustomResourceDefinitions, and
//! deletes a CRD's custom resources before the CRD itself goes (upstream's
//! `customresourcecleanup` finalizer).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{call_for_key, remove_finalizer};
use crate::objects::Objects;
use crate::objects::crd::CLEANUP;
use crate::objects::keys;
use crate::objects::meta::{finalizers, from_kv, meta_str};
use crate::objects::write::DeleteOptions;

const PREFIX: &str = keys::CUSTOM_RESOURCE_DEFINITIONS;

/// Deletes the custom resources of a terminating CRD; returns whether none are left.
async fn clean_up(app: &Objects, crd: &Value) -> Result<bool, crate::store::StoreError> {
    let prefix = keys::prefix(
        crd["spec"]["group"].as_str().unwrap_or_default(),
        crd["spec"]["names"]["plural"].as_str().unwrap_or_default(),
    );
    let list = app.store.list(&prefix, None, 0).await?;
    for kv in &list.items {
        let Some(call) = call_for_key(app, &kv.key) else {
            continue;
        };
        let name = call.name().to_owned();
        if let Err(e) = app.delete(&call, &name, &DeleteOptions::background()).await
            && e.code != 404
        {
            tracing::warn!(key = %kv.key, error = %e, "could not delete custom resource");
        }
    }
    Ok(list.items.is_empty())
}

/// Serves every stored CRD's versions and finishes deleting CRDs whose resources are gone.
/// Returns the revision read and whether a CRD is still terminating.
async fn sync(app: &Objects) -> Result<(u64, bool), crate::store::StoreError> {
    let list = app.store.list(PREFIX, None, 0).await?;
    let crds: Vec<Value> = list.items.iter().map(from_kv).collect();
    // Terminating CRDs stay served until their resources are cleaned up, as upstream.
    app.registry
        .set_custom(crds.iter().flat_map(crate::objects::crd::resources).collect());
    let mut terminating = false;
    for crd in crds
        .iter()
        .filter(|c| c["metadata"]["deletionTimestamp"].is_string())
    {
        if !finalizers(crd).iter().any(|f| f == CLEANUP) {
            continue;
        }
        terminating = true;
        if clean_up(app, crd).await? {
            remove_finalizer(app, &format!("{PREFIX}{}", meta_str(crd, "name")), CLEANUP).await?;
        }
    }
    Ok((list.revision, terminating))
}

/// Re-reads the CRDs whenever one changes (and every second while one is being deleted).
pub async fn run(app: Arc<Objects>) {
    loop {
        let (rev, mut terminating) = match sync(&app).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "crd sync failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(mut watch) = app.store.watch(PREFIX, rev) else {
            continue;
        };
        loop {
            tokio::select! {
                event = watch.next() => match event {
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(_) => break,
                },
                () = tokio::time::sleep(super::RESYNC), if terminating => {}
            }
            match sync(&app).await {
                Ok((_, t)) => terminating = t,
                Err(e) => tracing::warn!(error = %e, "crd sync failed"),
            }
        }
    }
}
