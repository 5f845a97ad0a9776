//! ResourceQuota: what the objects of a namespace use of a quota's resources, counted as
//! upstream's quota evaluators count them (object counts, `count/RESOURCE.GROUP`, a pod's compute
//! requests and limits, a claim's storage, a Service's load balancers and node ports; scopes
//! Terminating, NotTerminating, BestEffort, NotBestEffort and PriorityClass for pods), and the
//! admission check that refuses a create taking a namespace over a quota's `hard` limits. The
//! resource quota controller keeps `status.used`; an admitted create is charged to its quotas at
//! once (compare-and-swap on the quota), so a burst of creates cannot overrun a quota before the
//! controller has counted them.
//!
//! Amounts are kept in thousandths of their unit (`500m` CPU is 500, `1Mi` is 1048576000), so
//! sums are exact.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Objects;
use super::keys;
use super::meta::{from_kv, meta_str, to_stored};
use super::registry::ResourceInfo;
use super::status::ApiError;
use crate::store::StoreError;

/// Resource name to amount, in thousandths.
pub type Usage = BTreeMap<String, i128>;

/// Where quotas are stored.
pub fn prefix() -> String {
    keys::prefix("", "resourcequotas")
}

/// An amount in thousandths from a quantity (`500m`, `2Gi`, `3`).
pub fn milli(q: &Value) -> Option<i128> {
    let text = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    super::quantity::parse(&text).map(|v| (v * 1000.0).round() as i128)
}

/// A quantity for an amount in thousandths: memory and storage with a binary suffix where exact.
pub fn format(resource: &str, milli: i128) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let n = milli / 1000;
    if n != 0 && (resource.contains("memory") || resource.contains("storage")) {
        for (suffix, size) in [
            ("Ti", 1i128 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if n % size == 0 {
                return format!("{}{suffix}", n / size);
            }
        }
    }
    n.to_string()
}

/// The compute resources that have the bare (`cpu`) and `requests.` names in a quota.
const COMPUTE: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// Whether a pod no longer counts: it has finished.
fn terminal(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// A pod's effective request or limit of each resource: its containers' sum, or an init
/// container's if larger, plus the pod's overhead.
fn pod_amounts(pod: &Value, field: &str) -> BTreeMap<String, i128> {
    let of = |c: &Value| -> BTreeMap<String, i128> {
        let mut out = BTreeMap::new();
        // A container with limits only is requested at its limits (upstream's defaulting).
        let amounts = match c["resources"][field].as_object() {
            Some(m) if !m.is_empty() => Some(m),
            _ if field == "requests" => c["resources"]["limits"].as_object(),
            _ => None,
        };
        for (k, v) in amounts.into_iter().flatten() {
            if let Some(m) = milli(v) {
                out.insert(k.clone(), m);
            }
        }
        out
    };
    let mut sum: BTreeMap<String, i128> = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, v) in of(c) {
            *sum.entry(k).or_default() += v;
        }
    }
    for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in of(c) {
            let e = sum.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    for (k, v) in pod["spec"]["overhead"].as_object().into_iter().flatten() {
        if let Some(m) = milli(v) {
            *sum.entry(k.clone()).or_default() += m;
        }
    }
    sum
}

/// Whether the pod is BestEffort: no requests or limits anywhere.
fn best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|f| {
        pod["spec"][*f].as_array().into_iter().flatten().all(|c| {
            ["requests", "limits"].iter().all(|k| {
                c["resources"][*k]
                    .as_object()
                    .is_none_or(serde_json::Map::is_empty)
            })
        })
    })
}

/// What an object of `info` counts against quotas, for every resource name a quota may give.
pub fn usage(info: &ResourceInfo, obj: &Value) -> Usage {
    let mut out = Usage::new();
    let (group, plural) = (info.group.as_str(), info.plural.as_str());
    let core = group.is_empty() && info.crd.is_none();
    if core && plural == "pods" && terminal(obj) {
        return out;
    }
    let count = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    out.insert(count, 1000);
    if !core {
        return out;
    }
    if matches!(
        plural,
        "pods"
            | "services"
            | "secrets"
            | "configmaps"
            | "replicationcontrollers"
            | "resourcequotas"
            | "persistentvolumeclaims"
    ) {
        out.insert(plural.to_owned(), 1000);
    }
    match plural {
        "pods" => {
            for (k, v) in pod_amounts(obj, "requests") {
                if COMPUTE.contains(&k.as_str()) {
                    out.insert(k.clone(), v);
                }
                out.insert(format!("requests.{k}"), v);
            }
            for (k, v) in pod_amounts(obj, "limits") {
                if COMPUTE.contains(&k.as_str()) {
                    out.insert(format!("limits.{k}"), v);
                }
            }
        }
        "services" => {
            let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if ty == "LoadBalancer" {
                out.insert("services.loadbalancers".into(), 1000);
            }
            if matches!(ty, "NodePort" | "LoadBalancer") {
                let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len);
                out.insert("services.nodeports".into(), 1000 * ports as i128);
            }
        }
        "persistentvolumeclaims" => {
            let storage = milli(&obj["spec"]["resources"]["requests"]["storage"]).unwrap_or(0);
            out.insert("requests.storage".into(), storage);
            if let Some(class) = obj["spec"]["storageClassName"].as_str() {
                let at = format!("{class}.storageclass.storage.k8s.io/");
                out.insert(format!("{at}requests.storage"), storage);
                out.insert(format!("{at}persistentvolumeclaims"), 1000);
            }
        }
        _ => {}
    }
    out
}

/// Whether a quota's scopes (`spec.scopes`, `spec.scopeSelector`) take in `obj` of `info`: a
/// scoped quota counts pods only.
pub fn in_scope(quota: &Value, info: &ResourceInfo, obj: &Value) -> bool {
    let spec = &quota["spec"];
    let scopes: Vec<&str> = spec["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let exprs: Vec<&Value> = spec["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if scopes.is_empty() && exprs.is_empty() {
        return true;
    }
    if !(info.group.is_empty() && info.plural == "pods" && info.crd.is_none()) {
        return false;
    }
    let terminating = obj["spec"]["activeDeadlineSeconds"].as_i64().is_some();
    let class = obj["spec"]["priorityClassName"].as_str().unwrap_or_default();
    let holds = |scope: &str, op: &str, values: &[&str]| match scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort(obj),
        "NotBestEffort" => !best_effort(obj),
        "PriorityClass" => match op {
            "In" => values.contains(&class),
            "NotIn" => !values.contains(&class),
            "DoesNotExist" => class.is_empty(),
            _ => !class.is_empty(),
        },
        _ => false,
    };
    scopes.iter().all(|s| holds(s, "Exists", &[]))
        && exprs.iter().all(|e| {
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            holds(
                e["scopeName"].as_str().unwrap_or_default(),
                e["operator"].as_str().unwrap_or_default(),
                &values,
            )
        })
}

/// The resources (group, plural) whose objects count toward the resource names of `hard`.
pub fn sources(hard: &Value, registry: &super::registry::Registry) -> Vec<std::sync::Arc<ResourceInfo>> {
    let mut out: Vec<std::sync::Arc<ResourceInfo>> = Vec::new();
    let mut add = |group: &str, plural: &str| {
        if let Some(info) = registry
            .all()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural)
            && !out.iter().any(|o| o.group == group && o.plural == plural)
        {
            out.push(info);
        }
    };
    for name in hard.as_object().into_iter().flatten().map(|(k, _)| k.as_str()) {
        match name {
            "services" | "services.loadbalancers" | "services.nodeports" => add("", "services"),
            "secrets"
            | "configmaps"
            | "replicationcontrollers"
            | "resourcequotas"
            | "persistentvolumeclaims" => {
                add("", name);
            }
            "requests.storage" => add("", "persistentvolumeclaims"),
            n if n.contains(".storageclass.storage.k8s.io/") => add("", "persistentvolumeclaims"),
            n if n.starts_with("count/") => {
                let rest = &n["count/".len()..];
                let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
                add(group, plural);
            }
            _ => add("", "pods"),
        }
    }
    out
}

/// Sums `usage` of the objects into `used` for the resource names of `hard`.
pub fn add_usage(used: &mut Usage, hard: &Value, usage: &Usage) {
    for name in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
        if let Some(v) = usage.get(name) {
            *used.entry(name.clone()).or_default() += v;
        }
    }
}

/// `status` for a quota: its hard limits and `used`, with every hard resource present.
pub fn status(quota: &Value, used: &Usage) -> Value {
    let hard = &quota["spec"]["hard"];
    let mut used_out = serde_json::Map::new();
    for name in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
        used_out.insert(
            name.clone(),
            json!(format(name, used.get(name).copied().unwrap_or(0))),
        );
    }
    json!({"hard": hard, "used": used_out})
}

/// The refusal of a create that would take `quota` over its limits, or that leaves a limited
/// compute resource unspecified, in upstream's words.
fn check(quota: &Value, usage: &Usage, pod: bool) -> Result<(), ApiError> {
    let name = meta_str(quota, "name");
    let hard = quota["spec"]["hard"].as_object().cloned().unwrap_or_default();
    let used = &quota["status"]["used"];
    if pod {
        let mut missing: Vec<&str> = hard
            .keys()
            .map(String::as_str)
            .filter(|k| {
                matches!(
                    *k,
                    "cpu" | "memory" | "requests.cpu" | "requests.memory" | "limits.cpu" | "limits.memory"
                ) && !usage.contains_key(*k)
            })
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("failed quota: {name}: must specify {}", missing.join(",")),
            ));
        }
    }
    let mut over: Vec<(&str, i128, i128, i128)> = Vec::new();
    for (res, limit) in &hard {
        let Some(asked) = usage.get(res) else { continue };
        let Some(limit) = milli(limit) else { continue };
        let now = milli(&used[res]).unwrap_or(0);
        if now + asked > limit {
            over.push((res, *asked, now, limit));
        }
    }
    if over.is_empty() {
        return Ok(());
    }
    let list = |f: fn(&(&str, i128, i128, i128)) -> i128| {
        over.iter()
            .map(|o| format!("{}={}", o.0, format(o.0, f(o))))
            .collect::<Vec<_>>()
            .join(",")
    };
    Err(ApiError::new(
        403,
        "Forbidden",
        format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            list(|o| o.1),
            list(|o| o.2),
            list(|o| o.3)
        ),
    ))
}

impl Objects {
    /// Admits the create of `obj` (of `info`, in namespace `ns`) against the namespace's quotas
    /// and, unless `dry_run`, charges its usage to them. Quotas whose status the controller has
    /// not yet written are counted by it alone.
    pub async fn charge_quotas(
        &self,
        info: &ResourceInfo,
        ns: &str,
        obj: &Value,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let quotas = self
            .store
            .list_local(&format!("{}{ns}/", prefix()))
            .map_err(ApiError::internal)?;
        if quotas.items.is_empty() {
            return Ok(());
        }
        let usage = usage(info, obj);
        let pod = info.group.is_empty() && info.plural == "pods" && info.crd.is_none();
        for kv in quotas.items {
            let (mut kv, mut quota) = (kv.clone(), from_kv(&kv));
            loop {
                if !in_scope(&quota, info, obj)
                    || !quota["spec"]["hard"]
                        .as_object()
                        .is_some_and(|h| h.keys().any(|k| usage.contains_key(k)))
                {
                    break;
                }
                check(&quota, &usage, pod)?;
                if dry_run || !quota["status"]["used"].is_object() {
                    break;
                }
                let mut used: Usage = quota["status"]["used"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| milli(v).map(|m| (k.clone(), m)))
                    .collect();
                add_usage(&mut used, &quota["spec"]["hard"], &usage);
                quota["status"] = status(&quota, &used);
                match self
                    .store
                    .update(&kv.key, to_stored(&quota), Some(kv.mod_revision))
                    .await
                {
                    Ok(_) => break,
                    Err(StoreError::Conflict { .. }) => {
                        match self.store.get(&kv.key).await.map_err(ApiError::internal)? {
                            Some(fresh) => {
                                quota = from_kv(&fresh);
                                kv = fresh;
                            }
                            None => break,
                        }
                    }
                    Err(e) => return Err(ApiError::internal(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::admission::testing::resource;

    fn pod(requests: Value, limits: Value) -> Value {
        json!({"spec": {"containers": [{"name": "a", "resources": {"requests": requests, "limits": limits}}]}, "status": {"phase": "Pending"}})
    }

    #[test]
    fn pods_count_their_requests_limits_and_extended_resources() {
        let pods = resource("", "v1", "pods");
        let u = usage(
            &pods,
            &pod(
                json!({"cpu": "500m", "memory": "252Mi", "example.com/dongle": "2"}),
                json!({"example.com/dongle": "2"}),
            ),
        );
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["count/pods"], 1000);
        assert_eq!(u["cpu"], 500);
        assert_eq!(u["requests.cpu"], 500);
        assert_eq!(u["requests.memory"], 252 * 1024 * 1024 * 1000);
        assert_eq!(u["requests.example.com/dongle"], 2000);
        assert!(!u.contains_key("limits.example.com/dongle"));
        assert_eq!(format("memory", u["memory"]), "252Mi");
        assert_eq!(format("cpu", u["cpu"]), "500m");
        let mut done = pod(json!({"cpu": "1"}), json!({}));
        done["status"]["phase"] = json!("Succeeded");
        assert!(usage(&pods, &done).is_empty());
    }

    #[test]
    fn going_over_a_limit_is_refused_in_upstreams_words() {
        let pods = resource("", "v1", "pods");
        let quota = json!({"metadata": {"name": "q"}, "spec": {"hard": {"cpu": "1", "pods": "5"}}, "status": {"used": {"cpu": "500m", "pods": "1"}}});
        let err = check(
            &quota,
            &usage(&pods, &pod(json!({"cpu": "600m"}), json!({}))),
            true,
        )
        .unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "exceeded quota: q, requested: cpu=600m, used: cpu=500m, limited: cpu=1"
        );
        check(
            &quota,
            &usage(&pods, &pod(json!({"cpu": "500m"}), json!({}))),
            true,
        )
        .unwrap();
        let err = check(&quota, &usage(&pods, &pod(json!({}), json!({}))), true).unwrap_err();
        assert_eq!(err.message, "failed quota: q: must specify cpu");
    }

    #[test]
    fn scopes_take_in_pods_only() {
        let (pods, cms) = (resource("", "v1", "pods"), resource("", "v1", "configmaps"));
        let terminating = json!({"spec": {"scopes": ["Terminating"]}});
        let best_effort = json!({"spec": {"scopes": ["BestEffort"]}});
        let mut p = pod(json!({}), json!({}));
        assert!(!in_scope(&terminating, &pods, &p));
        assert!(in_scope(&best_effort, &pods, &p));
        p["spec"]["activeDeadlineSeconds"] = json!(3600);
        assert!(in_scope(&terminating, &pods, &p));
        assert!(!in_scope(&terminating, &cms, &json!({})));
        let classed = json!({"spec": {"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        p["spec"]["priorityClassName"] = json!("high");
        assert!(in_scope(&classed, &pods, &p));
    }
}
