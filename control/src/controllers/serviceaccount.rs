//! Every namespace gets a `default` ServiceAccount, and the `kube-root-ca.crt` ConfigMap holding the
//! cluster CA that pods verify the API server with (both recreated if deleted; the CA kept current).

use std::sync::Arc;

use serde_json::json;

use super::replicaset::call;
use super::runtime::{Caches, Next, Queue, run_workers};
use crate::api::App;
use crate::api::admission::ROOT_CA_CONFIG_MAP;
use crate::api::handlers::{create_object, update_object};
use crate::api::object::meta_str;

const NS_PREFIX: &str = "/registry/core/namespaces/";
const SA_PREFIX: &str = "/registry/core/serviceaccounts/";
const CM_PREFIX: &str = "/registry/core/configmaps/";
/// Upstream's description of the root CA ConfigMap.
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Starts the controller.
pub fn start(app: Arc<App>, caches: &Caches) {
    let namespaces = caches.get(&app, NS_PREFIX);
    let accounts = caches.get(&app, SA_PREFIX);
    let config_maps = caches.get(&app, CM_PREFIX);
    let queue = Arc::new(Queue::default());
    for cache in [namespaces.clone(), accounts.clone(), config_maps.clone()] {
        let (queue, mut changes) = (queue.clone(), cache.subscribe());
        tokio::spawn(async move {
            while let Ok(change) = changes.recv().await {
                if change.key.starts_with(CM_PREFIX)
                    && !change.key.ends_with(&format!("/{ROOT_CA_CONFIG_MAP}"))
                {
                    continue;
                }
                let ns = change
                    .key
                    .trim_start_matches(NS_PREFIX)
                    .trim_start_matches(SA_PREFIX)
                    .trim_start_matches(CM_PREFIX);
                queue.add(ns.split('/').next().unwrap_or_default());
            }
        });
    }
    for ns in namespaces.list(None) {
        queue.add(meta_str(&ns, "name"));
    }
    run_workers(app.clone(), "serviceaccount", queue, 1, move |ns| {
        let (app, namespaces, accounts, config_maps) = (
            app.clone(),
            namespaces.clone(),
            accounts.clone(),
            config_maps.clone(),
        );
        async move {
            let Some(namespace) = namespaces.get(&format!("{NS_PREFIX}{ns}")) else {
                return Ok(Next::Done);
            };
            if namespace["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Next::Done);
            }
            if accounts.get(&format!("{SA_PREFIX}{ns}/default")).is_none() {
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
                match create_object(&app, &c, sa).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
                    Err(e) => return Err(e.message),
                }
            }
            let current = config_maps
                .get(&format!("{CM_PREFIX}{ns}/{ROOT_CA_CONFIG_MAP}"))
                .map(|cm| (*cm).clone());
            publish_root_ca(&app, &ns, current).await
        }
    });
}

/// Creates the namespace's `kube-root-ca.crt`, or puts the current CA back into it.
async fn publish_root_ca(app: &App, ns: &str, current: Option<serde_json::Value>) -> Result<Next, String> {
    let Some(ca) = app.pki.as_ref().map(|p| p.ca_pem.clone()) else {
        return Ok(Next::Done);
    };
    let manager = "root-ca-cert-publisher";
    let result = match current {
        Some(cm) if cm["data"]["ca.crt"] == ca.as_str() => return Ok(Next::Done),
        Some(mut cm) => {
            cm["data"] = json!({"ca.crt": ca});
            let c = call(app, "", "configmaps", ns, Some(ROOT_CA_CONFIG_MAP), None, manager);
            update_object(app, &c, cm).await
        }
        None => {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIG_MAP, "namespace": ns,
                    "annotations": {"kubernetes.io/description": ROOT_CA_DESCRIPTION}},
                "data": {"ca.crt": ca}});
            let c = call(app, "", "configmaps", ns, None, None, manager);
            create_object(app, &c, cm).await
        }
    };
    match result {
        Ok(_) => Ok(Next::Done),
        // Raced with another writer or the namespace's deletion: the next change brings it back.
        Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => Ok(Next::Done),
        Err(e) => Err(e.message),
    }
}
