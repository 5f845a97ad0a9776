//! Endpoints and EndpointSlices from Services and their pods: ready pods are addresses, others
//! (not ready, or terminating) are listed as such, with target ports resolved per pod (named
//! ports included).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::error::Error;
use super::runtime::{Cache, Caches, Next, Queue, queue_changes, run_workers};
use super::write::{call, put_object};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::meta::pod_ready;
use crate::objects::write::DeleteOptions;

const SVC_PREFIX: &str = keys::SERVICES;
const EP_PREFIX: &str = keys::ENDPOINTS;
const SLICE_PREFIX: &str = keys::ENDPOINT_SLICES;
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// One Endpoints subset being built: ready addresses, not-ready addresses, ports.
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

fn selects(svc: &Value, pod: &Value) -> bool {
    let Some(sel) = svc["spec"]["selector"].as_object().filter(|s| !s.is_empty()) else {
        return false;
    };
    sel.iter()
        .all(|(k, v)| pod["metadata"]["labels"].get(k) == Some(v))
}

/// The pod's port for a service port's `targetPort` (a number, or a container port's name).
fn target_port(pod: &Value, port: &Value) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": meta_str(pod, "namespace"), "name": meta_str(pod, "name"), "uid": meta_str(pod, "uid")})
}

/// Upstream's annotation with the time of the earliest change an Endpoints or EndpointSlice
/// update carries (kube-proxy measures its network programming latency from it).
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Upstream's trigger time for an update of `previous` (the object as it is): the earliest of the
/// changes since its last trigger time — pods becoming ready or not (their Ready condition's
/// transition) and the service's creation. `None` when no such change is newer (a pod went away).
fn trigger_time(previous: Option<&Value>, svc: &Value, members: &[Arc<Value>]) -> Option<String> {
    let last = previous
        .and_then(|o| o["metadata"]["annotations"][TRIGGER_TIME].as_str())
        .and_then(crate::objects::meta::parse_time);
    fn ready_changed(pod: &Value) -> Option<&str> {
        pod["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?["lastTransitionTime"]
            .as_str()
    }
    members
        .iter()
        .filter_map(|p| ready_changed(p))
        .chain(svc["metadata"]["creationTimestamp"].as_str())
        .filter_map(crate::objects::meta::parse_time)
        .filter(|t| last.is_none_or(|l| *t > l))
        .min()
        .map(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        })
}

/// Sets (or removes) the trigger time annotation of `obj`.
fn annotate_trigger(obj: &mut Value, trigger: Option<&str>) {
    match trigger {
        Some(t) => obj["metadata"]["annotations"][TRIGGER_TIME] = json!(t),
        None => {
            if let Some(a) = obj["metadata"]["annotations"].as_object_mut() {
                a.remove(TRIGGER_TIME);
            }
        }
    }
}

async fn reconcile(
    app: &Objects,
    services: &Cache,
    pods: &Cache,
    endpoints: &Cache,
    slices: &Cache,
    key: &str,
) -> Result<Next, Error> {
    let (ns, name) = key
        .trim_start_matches(SVC_PREFIX)
        .split_once('/')
        .ok_or_else(|| Error::Invalid("bad key".into()))?;
    let svc = services.get(key);
    let existing_slices: Vec<Arc<Value>> = slices
        .list(Some(ns))
        .into_iter()
        .filter(|s| {
            s["metadata"]["labels"]["kubernetes.io/service-name"] == name
                && s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
        })
        .collect();
    let Some(svc) = svc.filter(|s| s["spec"]["selector"].as_object().is_some_and(|m| !m.is_empty())) else {
        // No service (or no selector): the generated objects go; manual Endpoints stay.
        let slice_call = call(
            app,
            "discovery.k8s.io",
            "endpointslices",
            ns,
            None,
            None,
            "endpointslice-controller",
        );
        for s in existing_slices {
            let _ = app
                .delete(&slice_call, meta_str(&s, "name"), &DeleteOptions::default())
                .await;
        }
        if services.get(key).is_none() && endpoints.get(&format!("{EP_PREFIX}{ns}/{name}")).is_some() {
            let ep_call = call(app, "", "endpoints", ns, None, None, "endpoint-controller");
            let _ = app.delete(&ep_call, name, &DeleteOptions::default()).await;
        }
        return Ok(Next::Done);
    };
    let members: Vec<Arc<Value>> = pods
        .list(Some(ns))
        .into_iter()
        .filter(|p| selects(&svc, p) && p["status"]["podIP"].as_str().is_some_and(|ip| !ip.is_empty()))
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .collect();
    let publish_not_ready = svc["spec"]["publishNotReadyAddresses"] == json!(true);
    let svc_ports: Vec<Value> = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();

    // Endpoints: one subset per distinct resolved port set.
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    for pod in &members {
        let ports: Vec<Value> = svc_ports
            .iter()
            .filter_map(|p| {
                let mut port = json!({"port": target_port(pod, p)?, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
                if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
                    port["name"] = json!(n);
                }
                Some(port)
            })
            .collect();
        let signature = serde_json::to_string(&ports).unwrap_or_default();
        let entry = subsets
            .entry(signature)
            .or_insert_with(|| (Vec::new(), Vec::new(), ports));
        let mut address = json!({"ip": pod["status"]["podIP"], "targetRef": target_ref(pod)});
        if let Some(node) = pod["spec"]["nodeName"].as_str() {
            address["nodeName"] = json!(node);
        }
        let terminating = pod["metadata"]["deletionTimestamp"].is_string();
        if (pod_ready(pod) && !terminating) || publish_not_ready {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(ready, not_ready, ports)| {
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    let ep_key = format!("{EP_PREFIX}{ns}/{name}");
    let labels = svc["metadata"]["labels"].clone();
    match endpoints.get(&ep_key) {
        Some(ep) => {
            let current = ep["subsets"].as_array().cloned().unwrap_or_default();
            if current != subsets {
                let mut updated = (*ep).clone();
                updated["subsets"] = json!(subsets);
                annotate_trigger(&mut updated, trigger_time(Some(&ep), &svc, &members).as_deref());
                let c = call(app, "", "endpoints", ns, Some(name), None, "endpoint-controller");
                app.update(&c, updated).await?;
            }
        }
        None => {
            let mut ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns}, "subsets": subsets});
            if labels.is_object() {
                ep["metadata"]["labels"] = labels.clone();
            }
            annotate_trigger(&mut ep, trigger_time(None, &svc, &members).as_deref());
            let c = call(app, "", "endpoints", ns, None, None, "endpoint-controller");
            app.create(&c, ep).await?;
        }
    }

    // One EndpointSlice per service (up to 1000 endpoints, as upstream's default).
    let slice_endpoints: Vec<Value> = members
        .iter()
        .map(|pod| {
            let terminating = pod["metadata"]["deletionTimestamp"].is_string();
            let ready = pod_ready(pod);
            let mut e = json!({
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready && !terminating, "serving": ready, "terminating": terminating},
                "targetRef": target_ref(pod),
            });
            if let Some(node) = pod["spec"]["nodeName"].as_str() {
                e["nodeName"] = json!(node);
            }
            e
        })
        .collect();
    let slice_ports: Vec<Value> = svc_ports
        .iter()
        .filter_map(|p| {
            let port = members.first().and_then(|pod| target_port(pod, p)).or_else(|| p["targetPort"].as_i64())?;
            let mut sp = json!({"port": port, "protocol": p["protocol"].as_str().unwrap_or("TCP"), "name": p["name"].as_str().unwrap_or_default()});
            if let Some(ap) = p.get("appProtocol") {
                sp["appProtocol"] = ap.clone();
            }
            Some(sp)
        })
        .collect();
    let mut slice_labels = labels.as_object().cloned().unwrap_or_default();
    slice_labels.insert("kubernetes.io/service-name".into(), json!(name));
    slice_labels.insert("endpointslice.kubernetes.io/managed-by".into(), json!(MANAGED_BY));
    let owner = json!({"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta_str(&svc, "uid"), "controller": true, "blockOwnerDeletion": true});
    match existing_slices.first() {
        Some(slice) => {
            if slice["endpoints"].as_array().cloned().unwrap_or_default() != slice_endpoints
                || slice["ports"].as_array().cloned().unwrap_or_default() != slice_ports
            {
                let mut updated = (**slice).clone();
                updated["endpoints"] = json!(slice_endpoints);
                updated["ports"] = json!(slice_ports);
                annotate_trigger(&mut updated, trigger_time(Some(slice), &svc, &members).as_deref());
                put_object(
                    app,
                    updated,
                    "discovery.k8s.io",
                    "endpointslices",
                    None,
                    "endpointslice-controller",
                )
                .await?;
            }
        }
        None => {
            let mut slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"generateName": format!("{name}-"), "namespace": ns, "labels": slice_labels, "ownerReferences": [owner]},
                "addressType": "IPv4",
                "endpoints": slice_endpoints,
                "ports": slice_ports,
            });
            annotate_trigger(&mut slice, trigger_time(None, &svc, &members).as_deref());
            let c = call(
                app,
                "discovery.k8s.io",
                "endpointslices",
                ns,
                None,
                None,
                "endpointslice-controller",
            );
            let created = app.create(&c, slice).await?;
            slices
                .wait_for(meta_str(&created, "resourceVersion").parse().unwrap_or(0))
                .await;
        }
    }
    Ok(Next::Done)
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let services = caches.get(&app, SVC_PREFIX);
    let pods = caches.get(&app, keys::PODS);
    let endpoints = caches.get(&app, EP_PREFIX);
    let slices = caches.get(&app, SLICE_PREFIX);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &services);
    {
        let (queue, services, mut changes) = (queue.clone(), services.clone(), pods.changes());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let Some(pod) = change.new.as_ref().or(change.old.as_ref()) else {
                    continue;
                };
                for svc in services.list(Some(meta_str(pod, "namespace"))) {
                    let hit = [&change.old, &change.new]
                        .into_iter()
                        .flatten()
                        .any(|p| selects(&svc, p));
                    if hit {
                        queue.add(&format!(
                            "{SVC_PREFIX}{}/{}",
                            meta_str(&svc, "namespace"),
                            meta_str(&svc, "name")
                        ));
                    }
                }
            }
        });
    }
    run_workers(app.clone(), "endpoints", queue, 2, move |key| {
        let (app, services, pods, endpoints, slices) = (
            app.clone(),
            services.clone(),
            pods.clone(),
            endpoints.clone(),
            slices.clone(),
        );
        async move { reconcile(&app, &services, &pods, &endpoints, &slices, &key).await }
    });
}
