//! Upstream's LimitRanger plugin: the LimitRanges of a namespace give a new pod's containers
//! their default limits and requests (`default`, `defaultRequest`), and refuse pods and claims
//! outside their `min`, `max` and `maxLimitRequestRatio`, per Container, per Pod (the sums) and
//! per PersistentVolumeClaim.

use serde_json::{Value, json};

use super::{Attributes, Lookup, Operation, Plugin};
use crate::objects::keys;
use crate::objects::meta::{items_mut, meta_str};
use crate::objects::quota::{format, milli};
use crate::objects::status::ApiError;

/// Applies and enforces LimitRanges.
pub struct LimitRanger;

/// The limit items of `kind` of the namespace's LimitRanges (as this member has them, like
/// upstream's informer cache).
async fn items(lookup: &dyn Lookup, ns: &str, kind: &str) -> Result<Vec<Value>, ApiError> {
    let ranges = lookup.list_local(&format!("{}{ns}/", keys::prefix("", "limitranges")))?;
    Ok(ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().cloned().unwrap_or_default())
        .filter(|l| l["type"] == kind)
        .collect())
}

/// Upstream's defaults for a LimitRange's Container items: `default` from `max`,
/// `defaultRequest` from `default`, then from `min`.
pub fn default_limit_range(obj: &mut Value) {
    for item in items_mut(&mut obj["spec"], "limits") {
        if item["type"] != "Container" {
            continue;
        }
        let fill = |item: &mut Value, to: &str, from: &str| {
            let source = item[from].as_object().cloned().unwrap_or_default();
            if source.is_empty() {
                return;
            }
            if !item[to].is_object() {
                item[to] = json!({});
            }
            for (k, v) in source {
                if item[to].get(&k).is_none() {
                    item[to][k] = v;
                }
            }
        };
        fill(item, "default", "max");
        fill(item, "defaultRequest", "default");
        fill(item, "defaultRequest", "min");
    }
}

/// Fills what a container lacks: requests at its own limits, then the defaults.
fn default_container(c: &mut Value, item: &Value) {
    if !c["resources"].is_object() {
        c["resources"] = json!({});
    }
    let explicit = c["resources"]["limits"].clone();
    for (field, from) in [("limits", "default"), ("requests", "defaultRequest")] {
        for (k, v) in item[from].as_object().into_iter().flatten() {
            if c["resources"][field].get(k).is_none() {
                if !c["resources"][field].is_object() {
                    c["resources"][field] = json!({});
                }
                // An explicit limit without a request is the request too.
                let value = match (field, explicit.get(k)) {
                    ("requests", Some(limit)) => limit.clone(),
                    _ => v.clone(),
                };
                c["resources"][field][k] = value;
            }
        }
    }
}

/// The min/max/ratio checks of one item against amounts `requests` and `limits`.
fn check(kind: &str, item: &Value, requests: &Value, limits: &Value, problems: &mut Vec<String>) {
    for (res, min) in item["min"].as_object().into_iter().flatten() {
        let Some(min_m) = milli(min) else { continue };
        let shown = format(res, min_m);
        match requests.get(res).and_then(milli) {
            None => problems.push(format!(
                "minimum {res} usage per {kind} is {shown}.  No request is specified"
            )),
            Some(r) if r < min_m => problems.push(format!(
                "minimum {res} usage per {kind} is {shown}, but request is {}",
                format(res, r)
            )),
            Some(_) => {}
        }
        if let Some(l) = limits.get(res).and_then(milli).filter(|l| *l < min_m) {
            problems.push(format!(
                "minimum {res} usage per {kind} is {shown}, but limit is {}",
                format(res, l)
            ));
        }
    }
    for (res, max) in item["max"].as_object().into_iter().flatten() {
        let Some(max_m) = milli(max) else { continue };
        let shown = format(res, max_m);
        match limits.get(res).and_then(milli) {
            None => problems.push(format!(
                "maximum {res} usage per {kind} is {shown}.  No limit is specified"
            )),
            Some(l) if l > max_m => problems.push(format!(
                "maximum {res} usage per {kind} is {shown}, but limit is {}",
                format(res, l)
            )),
            Some(_) => {}
        }
        if let Some(r) = requests.get(res).and_then(milli).filter(|r| *r > max_m) {
            problems.push(format!(
                "maximum {res} usage per {kind} is {shown}, but request is {}",
                format(res, r)
            ));
        }
    }
    for (res, ratio) in item["maxLimitRequestRatio"].as_object().into_iter().flatten() {
        let (Some(ratio), Some(l), Some(r)) = (
            milli(ratio),
            limits.get(res).and_then(milli),
            requests.get(res).and_then(milli),
        ) else {
            continue;
        };
        if r > 0 && l * 1000 > ratio * r {
            problems.push(format!(
                "{res} max limit to request ratio per {kind} is {}, but provided ratio is {:.6}",
                format("", ratio),
                l as f64 / r as f64
            ));
        }
    }
}

/// The sums of a pod's containers' amounts in `field`, as quantities.
fn pod_sum(pod: &Value, field: &str) -> Value {
    let mut sums: std::collections::BTreeMap<String, i128> = std::collections::BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, v) in c["resources"][field].as_object().into_iter().flatten() {
            *sums.entry(k.clone()).or_default() += milli(v).unwrap_or(0);
        }
    }
    Value::Object(
        sums.into_iter()
            .map(|(k, v)| (k.clone(), json!(format(&k, v))))
            .collect(),
    )
}

#[tonic::async_trait]
impl Plugin for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    async fn admit(
        &self,
        lookup: &dyn Lookup,
        attrs: &Attributes<'_>,
        pod: &mut Value,
    ) -> Result<(), ApiError> {
        if attrs.operation != Operation::Create || !attrs.is("", "Pod") || attrs.sub.is_some() {
            return Ok(());
        }
        let Some(ns) = attrs.namespace else { return Ok(()) };
        for item in items(lookup, ns, "Container").await? {
            for field in ["containers", "initContainers"] {
                for c in items_mut(&mut pod["spec"], field) {
                    default_container(c, &item);
                }
            }
        }
        Ok(())
    }

    async fn validate(
        &self,
        lookup: &dyn Lookup,
        attrs: &Attributes<'_>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        if attrs.operation != Operation::Create || attrs.sub.is_some() {
            return Ok(());
        }
        let Some(ns) = attrs.namespace else { return Ok(()) };
        let mut problems = Vec::new();
        if attrs.is("", "Pod") {
            for item in items(lookup, ns, "Container").await? {
                for field in ["containers", "initContainers"] {
                    for c in obj["spec"][field].as_array().into_iter().flatten() {
                        check(
                            "Container",
                            &item,
                            &c["resources"]["requests"],
                            &c["resources"]["limits"],
                            &mut problems,
                        );
                    }
                }
            }
            let pod_items = items(lookup, ns, "Pod").await?;
            if !pod_items.is_empty() {
                let (requests, limits) = (pod_sum(obj, "requests"), pod_sum(obj, "limits"));
                for item in pod_items {
                    check("Pod", &item, &requests, &limits, &mut problems);
                }
            }
        } else if attrs.is("", "PersistentVolumeClaim") {
            for item in items(lookup, ns, "PersistentVolumeClaim").await? {
                let requests = &obj["spec"]["resources"]["requests"];
                let limits = &obj["spec"]["resources"]["limits"];
                check("PersistentVolumeClaim", &item, requests, limits, &mut problems);
            }
        } else {
            return Ok(());
        }
        if problems.is_empty() {
            return Ok(());
        }
        let listed = if problems.len() == 1 {
            problems.remove(0)
        } else {
            format!("[{}]", problems.join(", "))
        };
        Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{}\" is forbidden: {listed}",
                attrs.info.plural,
                meta_str(obj, "name")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Objects, block_on, create, resource};
    use super::*;

    fn namespace_with(range: Value) -> Objects {
        let mut range = json!({"metadata": {"name": "lr", "namespace": "team"}, "spec": {"limits": [range]}});
        default_limit_range(&mut range);
        let mut o = Objects::default();
        o.0.insert("/registry/core/limitranges/team/lr".into(), range);
        o
    }

    fn pod(requests: Value, limits: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "resources": {"requests": requests, "limits": limits}}]}})
    }

    #[test]
    fn containers_get_defaults_and_stay_within_min_and_max() {
        let lookup = namespace_with(json!({
            "type": "Container",
            "min": {"cpu": "50m", "memory": "100Mi"},
            "max": {"cpu": "500m", "memory": "500Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "200Mi"},
        }));
        let info = resource("", "v1", "pods");
        let attrs = create(&info, "team");
        let mut p = pod(json!({"memory": "150Mi"}), json!({"cpu": "300m"}));
        block_on(LimitRanger.admit(&lookup, &attrs, &mut p)).unwrap();
        let r = &p["spec"]["containers"][0]["resources"];
        // max is the default limit; a request follows its own limit before the default request.
        assert_eq!(r["limits"], json!({"cpu": "300m", "memory": "500Mi"}));
        assert_eq!(r["requests"], json!({"cpu": "300m", "memory": "150Mi"}));
        block_on(LimitRanger.validate(&lookup, &attrs, &p)).unwrap();
        let small = pod(
            json!({"cpu": "10m", "memory": "150Mi"}),
            json!({"cpu": "300m", "memory": "300Mi"}),
        );
        let err = block_on(LimitRanger.validate(&lookup, &attrs, &small)).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "pods \"p\" is forbidden: minimum cpu usage per Container is 50m, but request is 10m"
        );
        let big = pod(
            json!({"cpu": "100m", "memory": "150Mi"}),
            json!({"cpu": "600m", "memory": "300Mi"}),
        );
        let err = block_on(LimitRanger.validate(&lookup, &attrs, &big)).unwrap_err();
        assert!(
            err.message
                .contains("maximum cpu usage per Container is 500m, but limit is 600m"),
            "{}",
            err.message
        );
    }
}
