//! Objects every cluster starts with: the `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` namespaces, the `system-*-critical` priority classes, the default
//! StorageClass, the `kube-dns` Service and the `kubernetes` Service that leads pods to the API,
//! API Priority and Fairness' default flow schemas and priority levels, the built-in group
//! versions' APIServices, and upstream's default RBAC roles and bindings.

mod api_services;
mod flowcontrol;
mod rbac;

use serde_json::json;

use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{from_kv, new_uid, now, to_stored};
use crate::store::StoreError;

/// Creates the built-in namespaces if they are missing.
pub async fn ensure_defaults(app: &Objects) -> Result<(), StoreError> {
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
    // Their `default` accounts, which pods need from the first (the service account controller
    // makes them for later namespaces).
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = keys::object(keys::SERVICE_ACCOUNTS, Some(ns), "default");
        if app.store.get(&key).await?.is_some() {
            continue;
        }
        let sa = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": ns, "uid": new_uid(), "creationTimestamp": now()},
        });
        match app.store.create(&key, to_stored(&sa)).await {
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
    // Upstream's default flow control configuration and local APIServices; the APIServices follow
    // what this version serves (one that is no longer served goes).
    let flow_control = flowcontrol::priority_levels()
        .into_iter()
        .map(|o| {
            (
                keys::prefix("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations"),
                o,
            )
        })
        .chain(
            flowcontrol::flow_schemas()
                .into_iter()
                .map(|o| (keys::prefix("flowcontrol.apiserver.k8s.io", "flowschemas"), o)),
        );
    let api_service_prefix = keys::prefix("apiregistration.k8s.io", "apiservices");
    let local = api_services::local(&app.registry);
    let served: Vec<String> = local
        .iter()
        .map(|o| {
            keys::object(
                &api_service_prefix,
                None,
                o["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for kv in app.store.list(&api_service_prefix, None, 0).await?.items {
        let stale = from_kv(&kv)["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"]
            == "onstart"
            && !served.contains(&kv.key);
        if stale {
            app.store.delete(&kv.key, Some(kv.mod_revision)).await?;
        }
    }
    for (prefix, mut obj) in flow_control.chain(local.into_iter().map(|o| (api_service_prefix.clone(), o))) {
        let key = keys::object(
            &prefix,
            None,
            obj["metadata"]["name"].as_str().unwrap_or_default(),
        );
        if app.store.get(&key).await?.is_some() {
            continue;
        }
        obj["metadata"]["uid"] = json!(new_uid());
        obj["metadata"]["creationTimestamp"] = json!(now());
        match app.store.create(&key, to_stored(&obj)).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // Upstream's default roles and bindings, reconciled.
    let group = "rbac.authorization.k8s.io";
    let defaults = rbac::cluster_roles()
        .into_iter()
        .map(|r| (keys::prefix(group, "clusterroles"), r))
        .chain(
            rbac::cluster_role_bindings()
                .into_iter()
                .map(|b| (keys::prefix(group, "clusterrolebindings"), b)),
        )
        .chain(
            rbac::roles()
                .into_iter()
                .map(|r| (keys::prefix(group, "roles"), r)),
        );
    for (prefix, mut obj) in defaults {
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
        let key = keys::object(
            &prefix,
            ns.as_deref(),
            obj["metadata"]["name"].as_str().unwrap_or_default(),
        );
        match app.store.get(&key).await? {
            Some(kv) => {
                if let Some(next) = rbac::reconcile(&from_kv(&kv), &obj) {
                    app.store
                        .update(&key, to_stored(&next), Some(kv.mod_revision))
                        .await?;
                }
            }
            None => {
                obj["metadata"]["uid"] = json!(new_uid());
                obj["metadata"]["creationTimestamp"] = json!(now());
                match app.store.create(&key, to_stored(&obj)).await {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
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

/// The `default/kubernetes` Service (the service range's first address, port 443) and its
/// Endpoints and EndpointSlice naming this API server, as the API server's endpoint reconciler
/// keeps them: in-cluster clients find the API through `KUBERNETES_SERVICE_HOST`/`_PORT` or
/// `kubernetes.default.svc`. The endpoints follow `advertise` across restarts.
pub async fn ensure_api_service(app: &Objects, advertise: std::net::SocketAddrV4) -> Result<(), StoreError> {
    ensure_api_endpoints(app, &[*advertise.ip()], advertise.port()).await
}

/// The `default/kubernetes` Service with `servers` (the API servers, all on `port`) as its
/// endpoints; the Endpoints and EndpointSlice are written only when they change.
pub async fn ensure_api_endpoints(
    app: &Objects,
    servers: &[std::net::Ipv4Addr],
    port: u16,
) -> Result<(), StoreError> {
    let key = &keys::object(keys::SERVICES, Some("default"), "kubernetes");
    if app.store.get(key).await?.is_none() {
        let svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "uid": new_uid(),
                         "creationTimestamp": now(),
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": app.service_cidr.nth(1).to_string(),
                "clusterIPs": [app.service_cidr.nth(1).to_string()],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster",
                "sessionAffinity": "None",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                           "targetPort": port}],
            },
            "status": {"loadBalancer": {}},
        });
        match app.store.create(key, to_stored(&svc)).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut ips: Vec<String> = servers.iter().map(ToString::to_string).collect();
    ips.sort();
    ips.dedup();
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    for (prefix, obj, parts) in [
        (keys::ENDPOINTS, endpoints, &["subsets"][..]),
        (
            keys::ENDPOINT_SLICES,
            slice,
            &["addressType", "endpoints", "ports"][..],
        ),
    ] {
        let key = &keys::object(prefix, Some("default"), "kubernetes");
        match app.store.get(key).await? {
            None => {
                let mut obj = obj;
                obj["metadata"]["uid"] = json!(new_uid());
                obj["metadata"]["creationTimestamp"] = json!(now());
                match app.store.create(key, to_stored(&obj)).await {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(kv) => {
                let mut current = from_kv(&kv);
                if parts.iter().all(|p| current[*p] == obj[*p]) {
                    continue;
                }
                for p in parts {
                    current[*p] = obj[*p].clone();
                }
                app.store
                    .update(key, to_stored(&current), Some(kv.mod_revision))
                    .await?;
            }
        }
    }
    Ok(())
}

/// `kube-system/extension-apiserver-authentication`, as upstream's API server publishes it:
/// how aggregated API servers (metrics-server, custom API servers) authenticate the requests it
/// proxies to them: the front proxy's CA and name, and the headers that carry the user.
pub async fn ensure_extension_auth(
    app: &Objects,
    client_ca: &str,
    front_proxy_ca: &str,
) -> Result<(), StoreError> {
    let key = keys::object(
        keys::CONFIG_MAPS,
        Some("kube-system"),
        "extension-apiserver-authentication",
    );
    let data = json!({
        "client-ca-file": client_ca,
        "requestheader-client-ca-file": front_proxy_ca,
        "requestheader-allowed-names": format!("[\"{}\"]", crate::pki::FRONT_PROXY_CLIENT),
        "requestheader-username-headers": "[\"X-Remote-User\"]",
        "requestheader-group-headers": "[\"X-Remote-Group\"]",
        "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
    });
    match app.store.get(&key).await? {
        Some(kv) => {
            let mut current = from_kv(&kv);
            if current["data"] != data {
                current["data"] = data;
                app.store
                    .update(&key, to_stored(&current), Some(kv.mod_revision))
                    .await?;
            }
        }
        None => {
            let cm = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system",
                    "uid": new_uid(), "creationTimestamp": now()},
                "data": data,
            });
            match app.store.create(&key, to_stored(&cm)).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
