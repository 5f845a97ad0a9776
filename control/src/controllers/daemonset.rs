//! The DaemonSet controller: one pod on every node the template accepts (nodeSelector, required
//! node affinity, tolerated taints), pinned with node affinity and bound by the scheduler;
//! RollingUpdate replaces out-of-date pods within maxUnavailable; ControllerRevisions keep the
//! template history for `kubectl rollout history`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::deployment::{legacy_template_hashes, resolve, template_hash};
use super::error::Error;
use super::events;
use super::runtime::{Cache, Caches, Next, Queue, queue_changes, queue_owners, run_workers};
use super::write::{call, write_status};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::meta::{controller_of, owner_ref, pod_available, pod_from_template, pod_ready};
use crate::objects::scheduling::{selector_and_affinity_match, tolerates};
use crate::objects::write::DeleteOptions;

/// Store prefix of DaemonSets.
pub const DS_PREFIX: &str = keys::DAEMON_SETS;
const REV_PREFIX: &str = keys::CONTROLLER_REVISIONS;
const HASH: &str = "controller-revision-hash";
const MANAGER: &str = "daemonset-controller";

/// The tolerations upstream adds to every daemon pod.
fn daemon_tolerations(template: &Value) -> Value {
    let mut list = template["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let add = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    for (key, effect) in add {
        if !list.iter().any(|t| t["key"] == key && t["effect"] == effect) {
            list.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    }
    Value::Array(list)
}

/// Whether a daemon pod from `template` belongs on `node`.
fn eligible(template: &Value, node: &Value) -> bool {
    let mut pod = json!({"spec": template["spec"].clone()});
    pod["spec"]["tolerations"] = daemon_tolerations(template);
    selector_and_affinity_match(&pod, node)
        && node["spec"]["taints"].as_array().into_iter().flatten().all(|t| {
            let effect = t["effect"].as_str().unwrap_or_default();
            !(effect == "NoSchedule" || effect == "NoExecute") || tolerates(&pod, t)
        })
}

fn node_of(pod: &Value) -> Option<String> {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
        .as_str()
        .or_else(|| pod["spec"]["nodeName"].as_str())
        .map(str::to_owned)
}

/// Fields of a pod template that Go holds as pointers, so that a zero (`0`, `false`) is kept
/// when upstream marshals the template; every other zero scalar is left out (`omitempty`).
const POINTER_SCALARS: &[&str] = &[
    "activeDeadlineSeconds",
    "allowPrivilegeEscalation",
    "automountServiceAccountToken",
    "defaultMode",
    "enableServiceLinks",
    "expirationSeconds",
    "fsGroup",
    "hostUsers",
    "mode",
    "optional",
    "priority",
    "privileged",
    "readOnlyRootFilesystem",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "terminationGracePeriodSeconds",
    "tolerationSeconds",
];

/// Map-valued fields of a pod template: empty, they are nil in Go and left out.
const MAP_FIELDS: &[&str] = &[
    "annotations",
    "labels",
    "limits",
    "matchLabels",
    "nodeSelector",
    "overhead",
    "requests",
    "volumeAttributes",
];

/// `value` as Go's `encoding/json` writes the typed object it decodes to, re-read as a map:
/// keys sorted, empty strings, lists and maps, nulls and non-pointer zeros left out.
fn go_shape(value: &Value, key: &str) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Bool(false) if !POINTER_SCALARS.contains(&key) => None,
        Value::Number(n) if n.as_f64() == Some(0.0) && !POINTER_SCALARS.contains(&key) => None,
        Value::Array(items) if items.is_empty() => None,
        // List items are never left out (`omitempty` is a struct field's tag).
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|v| match v {
                    Value::Object(_) => go_shape(v, "").unwrap_or_else(|| v.clone()),
                    _ => v.clone(),
                })
                .collect(),
        )),
        Value::Object(m) if m.is_empty() && MAP_FIELDS.contains(&key) => None,
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Some(Value::Object(
                keys.into_iter()
                    .filter_map(|k| Some((k.clone(), go_shape(&m[k], k)?)))
                    .collect(),
            ))
        }
        other => Some(other.clone()),
    }
}

/// A ControllerRevision's `data` for pod template `template`, byte for byte as upstream's
/// DaemonSet and StatefulSet controllers write it (`getPatch`: the owner marshalled by Go, read
/// back as a map, `spec.template` with `$patch: replace` marshalled again). Clients find the
/// revision of a DaemonSet by comparing these bytes (`kubectl rollout undo`, the conformance
/// suite), and apply them as a strategic merge patch to roll back.
pub(super) fn revision_data(template: &Value) -> Value {
    let mut t = go_shape(template, "template").unwrap_or_else(|| json!({}));
    if !t["metadata"].is_object() {
        t["metadata"] = json!({});
    }
    if !t["spec"].is_object() {
        t["spec"] = json!({});
    }
    // Never left out by Go: the template's `creationTimestamp` (a struct) and each container's
    // `resources` (a struct).
    t["metadata"]["creationTimestamp"] = Value::Null;
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let containers = t["spec"].get_mut(list).and_then(Value::as_array_mut);
        for c in containers.into_iter().flatten() {
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
        }
    }
    t["$patch"] = json!("replace");
    json!({"spec": {"template": go_shape_keep_nulls(t)}})
}

/// `value` with the keys of its objects sorted and nothing left out.
fn go_shape_keep_nulls(value: Value) -> Value {
    match value {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, go_shape_keep_nulls(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(go_shape_keep_nulls).collect()),
        other => other,
    }
}

/// The pod template a ControllerRevision records (its patch's directive taken out).
pub(super) fn revision_template(rev: &Value) -> Value {
    let mut t = rev["data"]["spec"]["template"].clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    t
}

/// Records `owner`'s (a DaemonSet's or StatefulSet's, of `kind`) current template as the
/// ControllerRevision `<name>-<hash>`, numbered after the owner's others. An existing revision
/// returned to (a rollback) is numbered after the others again, as upstream.
pub(super) async fn ensure_revision(
    app: &Objects,
    revs: &Cache,
    owner: &Value,
    kind: &str,
    hash: &str,
) -> Result<(), Error> {
    let ns = meta_str(owner, "namespace");
    let name = format!("{}-{hash}", meta_str(owner, "name"));
    let others = |exclude: &str| {
        revs.list(Some(ns))
            .into_iter()
            .filter(|r| controller_of(r, kind) == Some(meta_str(owner, "name")))
            .filter(|r| meta_str(r, "name") != exclude)
            .filter_map(|r| r["revision"].as_i64())
            .max()
            .unwrap_or(0)
    };
    if let Some(current) = revs.get(&format!("{REV_PREFIX}{ns}/{name}")) {
        let latest = others(&name);
        if current["revision"].as_i64().unwrap_or(0) <= latest {
            let mut next = (*current).clone();
            next["revision"] = json!(latest + 1);
            let c = call(app, "apps", "controllerrevisions", ns, Some(&name), None, MANAGER);
            match app.update(&c, next).await {
                Ok(_) => {}
                Err(e) if e.code == 409 || e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(());
    }
    let existing = others("");
    let mut labels = owner["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(HASH.into(), json!(hash));
    let rev = json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner_ref(owner)]},
        "data": revision_data(&owner["spec"]["template"]),
        "revision": existing + 1,
    });
    let c = call(app, "apps", "controllerrevisions", ns, None, None, MANAGER);
    match app.create(&c, rev).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(
    app: &Objects,
    dss: &Cache,
    nodes: &Cache,
    pods: &Cache,
    revs: &Cache,
    key: &str,
) -> Result<Next, Error> {
    let Some((ds, ns, name)) = dss.live(key) else {
        return Ok(Next::Done);
    };
    let template = &ds["spec"]["template"];
    let hash = template_hash(template, 0);
    // Pods labelled before templates were hashed with sorted keys and without
    // nulls are at the current template too.
    let legacy = legacy_template_hashes(template);
    let current = |p: &Value| {
        let label = &p["metadata"]["labels"][HASH];
        label == hash.as_str() || legacy.iter().any(|l| label == l.as_str())
    };
    ensure_revision(app, revs, &ds, "DaemonSet", &hash).await?;
    let all_nodes = nodes.list(None);
    let wanted: Vec<String> = all_nodes
        .iter()
        .filter(|n| eligible(template, n))
        .map(|n| meta_str(n, "name").to_owned())
        .collect();
    let owned: Vec<Arc<Value>> = pods.active_owned_by(&ns, "DaemonSet", &name);
    let mut by_node: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
    for p in &owned {
        if let Some(n) = node_of(p) {
            by_node.entry(n).or_default().push(p.clone());
        }
    }
    let pod_call = call(app, "", "pods", &ns, None, None, MANAGER);
    let mut wrote = false;
    // Pods on nodes that should not run one, and duplicates, go.
    for (node, list) in &by_node {
        let keep = usize::from(wanted.contains(node));
        for p in list.iter().skip(keep) {
            let _ = app
                .delete(&pod_call, meta_str(p, "name"), &DeleteOptions::background())
                .await;
            wrote = true;
        }
    }
    // Out-of-date pods are replaced within maxUnavailable (RollingUpdate only).
    let rolling = ds["spec"]["updateStrategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling {
        let max_unavailable = resolve(
            &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            wanted.len() as i64,
            true,
        )
        .max(1);
        let unavailable = wanted
            .iter()
            .filter(|n| {
                by_node
                    .get(*n)
                    .and_then(|l| l.first())
                    .is_none_or(|p| !pod_available(p, ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0)))
            })
            .count() as i64;
        let mut budget = max_unavailable - unavailable;
        for node in &wanted {
            let Some(p) = by_node.get(node).and_then(|l| l.first()) else {
                continue;
            };
            if current(p) {
                continue;
            }
            // Unavailable old pods can go at once; available ones only within the budget.
            let available = pod_available(p, 0);
            if available && budget <= 0 {
                continue;
            }
            if available {
                budget -= 1;
            }
            let _ = app
                .delete(&pod_call, meta_str(p, "name"), &DeleteOptions::background())
                .await;
            by_node.remove(node);
            wrote = true;
        }
    }
    // Nodes without a daemon pod get one.
    for node in wanted.iter().filter(|n| !by_node.contains_key(*n)) {
        let mut pod = pod_from_template(template, &ds, &name, None);
        pod["metadata"]["labels"][HASH] = json!(hash);
        pod["spec"]["tolerations"] = daemon_tolerations(template);
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
        match app.create(&pod_call, pod).await {
            Ok(created) => {
                events::record(
                    app,
                    &ds,
                    MANAGER,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta_str(&created, "name")),
                )
                .await;
                wrote = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if wrote {
        pods.wait_for(app.store.revision()).await;
    }
    let owned: Vec<Arc<Value>> = pods.active_owned_by(&ns, "DaemonSet", &name);
    let on_wanted: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|p| node_of(p).is_some_and(|n| wanted.contains(&n)))
        .collect();
    let scheduled: Vec<&&Arc<Value>> = on_wanted
        .iter()
        .filter(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()))
        .collect();
    let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let available = on_wanted.iter().filter(|p| pod_available(p, min_ready)).count();
    let mut status = json!({
        "currentNumberScheduled": scheduled.len(),
        "numberMisscheduled": owned.len() - on_wanted.len(),
        "desiredNumberScheduled": wanted.len(),
        "numberReady": on_wanted.iter().filter(|p| pod_ready(p)).count(),
        "observedGeneration": ds["metadata"]["generation"],
        "updatedNumberScheduled": on_wanted.iter().filter(|p| current(p)).count(),
        "numberAvailable": available,
        "numberUnavailable": wanted.len() - available,
    });
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| !matches!(k.as_str(), "numberAvailable" | "numberUnavailable") || v != &json!(0));
    }
    write_status(app, &ds, "apps", "daemonsets", status, MANAGER).await?;
    Ok(Next::Done)
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let dss = caches.get(&app, DS_PREFIX);
    let nodes = caches.get(&app, keys::NODES);
    let pods = caches.get(&app, keys::PODS);
    let revs = caches.get(&app, REV_PREFIX);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &dss);
    {
        // Any node change may change where daemons belong.
        let (queue, dss, mut changes) = (queue.clone(), dss.clone(), nodes.changes());
        tokio::spawn(async move {
            while changes.recv().await.is_some() {
                for ds in dss.list(None) {
                    queue.add(&format!(
                        "{DS_PREFIX}{}/{}",
                        meta_str(&ds, "namespace"),
                        meta_str(&ds, "name")
                    ));
                }
            }
        });
    }
    queue_owners(&queue, &pods, "DaemonSet", DS_PREFIX);
    run_workers(app.clone(), "daemonset", queue, 2, move |key| {
        let (app, dss, nodes, pods, revs) = (
            app.clone(),
            dss.clone(),
            nodes.clone(),
            pods.clone(),
            revs.clone(),
        );
        async move { reconcile(&app, &dss, &nodes, &pods, &revs, &key).await }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes upstream's `getPatch` writes for the conformance suite's DaemonSet as the API
    /// server defaults it (and as a protobuf client decodes it: zero scalars present).
    #[test]
    fn revision_data_is_upstreams_patch_byte_for_byte() {
        let template = json!({
            "metadata": {"labels": {"daemonset-name": "daemon-set"}, "annotations": {}},
            "spec": {
                "containers": [{
                    "name": "app", "image": "httpd:2.4", "args": ["", "x"], "stdin": false,
                    "ports": [{"containerPort": 9376, "protocol": "TCP", "hostPort": 0}],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
                    "securityContext": {"privileged": false},
                }],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst", "hostNetwork": false, "securityContext": {},
                "schedulerName": "default-scheduler", "volumes": [],
            },
        });
        assert_eq!(
            serde_json::to_string(&revision_data(&template)).unwrap(),
            concat!(
                r#"{"spec":{"template":{"$patch":"replace","metadata":{"creationTimestamp":null,"#,
                r#""labels":{"daemonset-name":"daemon-set"}},"spec":{"containers":[{"args":["","x"],"#,
                r#""image":"httpd:2.4","imagePullPolicy":"IfNotPresent","name":"app","#,
                r#""ports":[{"containerPort":9376,"protocol":"TCP"}],"resources":{},"#,
                r#""securityContext":{"privileged":false},"#,
                r#""terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File"}],"#,
                r#""dnsPolicy":"ClusterFirst","restartPolicy":"Always","schedulerName":"default-scheduler","#,
                r#""securityContext":{},"terminationGracePeriodSeconds":30}}}}"#
            )
        );
        let rev = json!({"data": revision_data(&template)});
        assert!(revision_template(&rev).get("$patch").is_none());
        assert_eq!(revision_template(&rev)["spec"]["containers"][0]["name"], "app");
    }
}
