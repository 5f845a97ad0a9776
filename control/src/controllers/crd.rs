//! Keeps the served custom resources in step with the stored CustomResourceDefinitions.

use std::sync::Arc;
use std::time::Duration;

use crate::api::App;
use crate::api::object::from_kv;

const PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

async fn sync(app: &App) -> Result<u64, crate::store::StoreError> {
    let list = app.store.list(PREFIX, None, 0).await?;
    let custom = list
        .items
        .iter()
        .map(from_kv)
        .filter(|crd| !crd["metadata"]["deletionTimestamp"].is_string())
        .flat_map(|crd| crate::api::crd::resources(&crd))
        .collect();
    app.registry.set_custom(custom);
    Ok(list.revision)
}

/// Re-reads the CRDs whenever one changes.
pub async fn run(app: Arc<App>) {
    loop {
        let rev = match sync(&app).await {
            Ok(rev) => rev,
            Err(e) => {
                tracing::warn!(error = %e, "crd sync failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut watch = match app.store.watch(PREFIX, rev) {
            Ok(w) => w,
            Err(_) => continue,
        };
        loop {
            match watch.next().await {
                Ok(Some(_)) => {
                    if let Err(e) = sync(&app).await {
                        tracing::warn!(error = %e, "crd sync failed");
                    }
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
    }
}
