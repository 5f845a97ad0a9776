//! Objects every cluster starts with: the `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` namespaces.

use serde_json::json;

use crate::api::App;
use crate::api::object::{new_uid, now, to_stored};
use crate::store::StoreError;

/// Creates the built-in namespaces if they are missing.
pub async fn ensure_defaults(app: &App) -> Result<(), StoreError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = format!("/registry/core/namespaces/{ns}");
        if app.store.get(&key).await?.is_some() {
            continue;
        }
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "uid": new_uid(), "creationTimestamp": now(),
                         "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        match app.store.create(&key, to_stored(&obj)).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
