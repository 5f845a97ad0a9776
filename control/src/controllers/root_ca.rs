//! Upstream's root CA publisher: every namespace holds a `kube-root-ca.crt` ConfigMap with the
//! cluster CA, which the `kube-api-access-*` volume of every pod projects as `ca.crt`. Recreated
//! when deleted and put back when changed (at once, from a watch of the ConfigMaps' keys; and
//! checked when the namespace changes and every minute).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::runtime::{Caches, Next, Queue, run_workers};
use super::write::{call, put_object};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{ROOT_CA_CONFIG_MAP, from_kv, meta_str};
use crate::objects::status::ApiError;

const MANAGER: &str = "root-ca-cert-publisher";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";
/// How often a namespace's ConfigMap is checked when nothing else says it changed.
const RECHECK: Duration = Duration::from_secs(60);

/// The ConfigMap for namespace `ns` holding `ca_pem`.
fn config_map(ns: &str, ca_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ROOT_CA_CONFIG_MAP, "namespace": ns,
                     "annotations": {"kubernetes.io/description": DESCRIPTION}},
        "data": {"ca.crt": ca_pem},
    })
}

/// Starts the controller (nothing to publish without a cluster CA).
pub fn start(app: Arc<Objects>, caches: &Caches, ca_pem: Option<&str>) {
    let Some(ca_pem) = ca_pem.map(str::to_owned) else {
        return;
    };
    let namespaces = caches.get(&app, keys::NAMESPACES);
    let queue = Arc::new(Queue::default());
    let (q, mut changes) = (queue.clone(), namespaces.changes());
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            q.add(change.key.trim_start_matches(keys::NAMESPACES));
        }
    });
    for ns in namespaces.list(None) {
        queue.add(meta_str(&ns, "name"));
    }
    // The ConfigMaps themselves: one deleted or changed is put back at once (a watch of the
    // ConfigMaps' keys, no cache of their contents).
    {
        let (app, q) = (app.clone(), queue.clone());
        tokio::spawn(async move {
            loop {
                let Ok(mut watch) = app.store.watch(keys::CONFIG_MAPS, app.store.revision()) else {
                    tokio::time::sleep(super::RESYNC).await;
                    continue;
                };
                loop {
                    match watch.next().await {
                        Ok(Some(event)) => {
                            if let Some(ns) = event
                                .kv
                                .key
                                .strip_prefix(keys::CONFIG_MAPS)
                                .and_then(|rest| rest.strip_suffix(&format!("/{ROOT_CA_CONFIG_MAP}")))
                            {
                                q.add(ns);
                            }
                        }
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
            }
        });
    }
    run_workers(app.clone(), "root-ca-cert-publisher", queue, 1, move |ns| {
        let (app, namespaces, ca_pem) = (app.clone(), namespaces.clone(), ca_pem.clone());
        async move {
            let Some(namespace) = namespaces.get(&format!("{}{ns}", keys::NAMESPACES)) else {
                return Ok(Next::Done);
            };
            if namespace["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Next::Done);
            }
            let key = keys::object(keys::CONFIG_MAPS, Some(&ns), ROOT_CA_CONFIG_MAP);
            let wanted = config_map(&ns, &ca_pem);
            match app.store.get(&key).await.map_err(ApiError::internal)? {
                None => {
                    let c = call(&app, "", "configmaps", &ns, None, None, MANAGER);
                    match app.create(&c, wanted).await {
                        Ok(_) => {}
                        // Already there (a race) or the namespace is going: nothing to do.
                        Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(kv) => {
                    let mut current = from_kv(&kv);
                    if current["data"] != wanted["data"] {
                        current["data"] = wanted["data"].clone();
                        if let Some(m) = current.as_object_mut() {
                            m.remove("binaryData");
                        }
                        put_object(&app, current, "", "configmaps", None, MANAGER).await?;
                    }
                }
            }
            Ok(Next::After(RECHECK))
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_map_holds_the_ca_under_the_name_pods_project() {
        let cm = config_map("shop", "-----BEGIN CERTIFICATE-----\n");
        assert_eq!(cm["metadata"]["name"], "kube-root-ca.crt");
        assert_eq!(cm["metadata"]["namespace"], "shop");
        assert_eq!(cm["data"]["ca.crt"], "-----BEGIN CERTIFICATE-----\n");
    }
}
