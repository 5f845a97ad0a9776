//! Objects every cluster starts with: the `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` namespaces, the `system-*-critical` priority classes, the default
//! StorageClass and the `kube-dns` Service.

use serde_json::json;

use crate::api::App;
use crate::objects::keys;
use crate::objects::meta::{new_uid, now, to_stored};
use crate::store::StoreError;

/// Creates the built-in namespaces if they are missing.
pub async fn ensure_defaults(app: &App) -> Result<(), StoreError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = keys::object(keys::NAMESPACES, None, ns);
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
    for (name, value) in [
        ("system-cluster-critical", 2_000_000_000i64),
        ("system-node-critical", 2_000_001_000),
    ] {
        let key = keys::object(keys::PRIORITY_CLASSES, None, name);
        if app.store.get(&key).await?.is_some() {
            continue;
        }
        let class = json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name, "uid": new_uid(), "creationTimestamp": now()},
            "value": value,
            "preemptionPolicy": "PreemptLowerPriority",
            "description": "Used for system critical pods that must not be moved from their current node.",
        });
        match app.store.create(&key, to_stored(&class)).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // The default StorageClass: a directory on the node the pod lands on, as k3s's local-path.
    let key = &keys::object(keys::STORAGE_CLASSES, None, "local-path");
    if app.store.get(key).await?.is_none() {
        let class = json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "local-path", "uid": new_uid(), "creationTimestamp": now(),
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": crate::controllers::volume::LOCAL_PATH,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        });
        match app.store.create(key, to_stored(&class)).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // Cluster DNS at the tenth address of the service range (the allocator never hands it out).
    let key = &keys::object(keys::SERVICES, Some("kube-system"), "kube-dns");
    if app.store.get(key).await?.is_none() {
        let mut svc = crate::controllers::cluster_dns::service(app.service_cidr.nth(10));
        svc["metadata"]["uid"] = json!(new_uid());
        svc["metadata"]["creationTimestamp"] = json!(now());
        match app.store.create(key, to_stored(&svc)).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
