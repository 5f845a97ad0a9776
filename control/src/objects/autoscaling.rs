//! HorizontalPodAutoscalers: served as `autoscaling/v2` (stored) and `autoscaling/v1` (converted
//! as upstream converts it: the CPU utilization target is v1's one field, every other metric, the
//! current metrics, the conditions and the behavior ride in `autoscaling.alpha.kubernetes.io/*`
//! annotations so a v1 client's update loses none of them), with upstream's defaults and
//! validation.

use serde_json::{Map, Value, json};

use super::validation::Causes;

/// v1's annotation for the metrics other than the CPU utilization target.
const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// v1's annotation for the current metrics.
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// v1's annotation for the conditions.
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// v1's annotation for the scaling behavior.
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// The utilization target a v2 HPA without metrics gets (upstream's `DefaultCPUUtilization`).
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;

/// Whether `group`/`kind` is the HPA.
pub fn is_hpa(group: &str, kind: &str) -> bool {
    group == "autoscaling" && kind == "HorizontalPodAutoscaler"
}

fn set(map: &mut Map<String, Value>, key: &str, value: &Value) {
    if !value.is_null() {
        map.insert(key.to_owned(), value.clone());
    }
}

/// Copies the fields of `from` named in `fields` (`(from, to)`) into a new object.
fn renamed(from: &Value, fields: &[(&str, &str)]) -> Value {
    let mut out = Map::new();
    for (f, t) in fields {
        set(&mut out, t, &from[*f]);
    }
    Value::Object(out)
}

/// A v2 `MetricSpec` as v1's (v2beta1-shaped) `MetricSpec`.
fn spec_to_v1(m: &Value) -> Value {
    let kind = m["type"].as_str().unwrap_or_default();
    let (field, source) = match kind {
        "Object" => {
            let o = &m["object"];
            let mut s = renamed(
                &o["target"],
                &[("value", "targetValue"), ("averageValue", "averageValue")],
            );
            s["target"] = o["describedObject"].clone();
            s["metricName"] = o["metric"]["name"].clone();
            if !o["metric"]["selector"].is_null() {
                s["selector"] = o["metric"]["selector"].clone();
            }
            ("object", s)
        }
        "Pods" => {
            let p = &m["pods"];
            let mut s = renamed(&p["target"], &[("averageValue", "targetAverageValue")]);
            s["metricName"] = p["metric"]["name"].clone();
            if !p["metric"]["selector"].is_null() {
                s["selector"] = p["metric"]["selector"].clone();
            }
            ("pods", s)
        }
        "External" => {
            let e = &m["external"];
            let mut s = renamed(
                &e["target"],
                &[("value", "targetValue"), ("averageValue", "targetAverageValue")],
            );
            s["metricName"] = e["metric"]["name"].clone();
            if !e["metric"]["selector"].is_null() {
                s["metricSelector"] = e["metric"]["selector"].clone();
            }
            ("external", s)
        }
        "Resource" | "ContainerResource" => {
            let field = if kind == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let r = &m[field];
            let mut s = renamed(
                &r["target"],
                &[
                    ("averageUtilization", "targetAverageUtilization"),
                    ("averageValue", "targetAverageValue"),
                ],
            );
            s["name"] = r["name"].clone();
            if !r["container"].is_null() {
                s["container"] = r["container"].clone();
            }
            (field, s)
        }
        _ => return m.clone(),
    };
    json!({"type": kind, field: source})
}

/// v1's `MetricSpec` as v2's.
fn spec_from_v1(m: &Value) -> Value {
    let kind = m["type"].as_str().unwrap_or_default();
    let target = |s: &Value, value: &str, average: &str, utilization: Option<&str>| {
        let mut t = Map::new();
        if let Some(u) = utilization.filter(|u| !s[*u].is_null()) {
            t.insert("type".into(), json!("Utilization"));
            t.insert("averageUtilization".into(), s[u].clone());
        } else if !s[value].is_null() {
            t.insert("type".into(), json!("Value"));
            t.insert("value".into(), s[value].clone());
        } else {
            t.insert("type".into(), json!("AverageValue"));
            set(&mut t, "averageValue", &s[average]);
        }
        Value::Object(t)
    };
    let metric = |s: &Value, selector: &str| {
        let mut id = json!({"name": s["metricName"]});
        if !s[selector].is_null() {
            id["selector"] = s[selector].clone();
        }
        id
    };
    match kind {
        "Object" => {
            let s = &m["object"];
            json!({"type": kind, "object": {"describedObject": s["target"], "metric": metric(s, "selector"),
                "target": target(s, "targetValue", "averageValue", None)}})
        }
        "Pods" => {
            let s = &m["pods"];
            json!({"type": kind, "pods": {"metric": metric(s, "selector"),
                "target": target(s, "-", "targetAverageValue", None)}})
        }
        "External" => {
            let s = &m["external"];
            json!({"type": kind, "external": {"metric": metric(s, "metricSelector"),
                "target": target(s, "targetValue", "targetAverageValue", None)}})
        }
        "Resource" | "ContainerResource" => {
            let field = if kind == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let s = &m[field];
            let mut r = json!({"name": s["name"],
                "target": target(s, "-", "targetAverageValue", Some("targetAverageUtilization"))});
            if !s["container"].is_null() {
                r["container"] = s["container"].clone();
            }
            json!({"type": kind, field: r})
        }
        _ => m.clone(),
    }
}

/// A v2 `MetricStatus` as v1's.
fn status_to_v1(m: &Value) -> Value {
    let kind = m["type"].as_str().unwrap_or_default();
    let (field, status) = match kind {
        "Object" => {
            let o = &m["object"];
            let mut s = renamed(
                &o["current"],
                &[("value", "currentValue"), ("averageValue", "averageValue")],
            );
            s["target"] = o["describedObject"].clone();
            s["metricName"] = o["metric"]["name"].clone();
            ("object", s)
        }
        "Pods" => {
            let p = &m["pods"];
            let mut s = renamed(&p["current"], &[("averageValue", "currentAverageValue")]);
            s["metricName"] = p["metric"]["name"].clone();
            ("pods", s)
        }
        "External" => {
            let e = &m["external"];
            let mut s = renamed(
                &e["current"],
                &[("value", "currentValue"), ("averageValue", "currentAverageValue")],
            );
            s["metricName"] = e["metric"]["name"].clone();
            ("external", s)
        }
        "Resource" | "ContainerResource" => {
            let field = if kind == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let r = &m[field];
            let mut s = renamed(
                &r["current"],
                &[
                    ("averageUtilization", "currentAverageUtilization"),
                    ("averageValue", "currentAverageValue"),
                ],
            );
            s["name"] = r["name"].clone();
            if !r["container"].is_null() {
                s["container"] = r["container"].clone();
            }
            (field, s)
        }
        _ => return m.clone(),
    };
    json!({"type": kind, field: status})
}

/// v1's `MetricStatus` as v2's.
fn status_from_v1(m: &Value) -> Value {
    let kind = m["type"].as_str().unwrap_or_default();
    match kind {
        "Object" => {
            let s = &m["object"];
            json!({"type": kind, "object": {"describedObject": s["target"], "metric": {"name": s["metricName"]},
                "current": renamed(s, &[("currentValue", "value"), ("averageValue", "averageValue")])}})
        }
        "Pods" => {
            let s = &m["pods"];
            json!({"type": kind, "pods": {"metric": {"name": s["metricName"]},
                "current": renamed(s, &[("currentAverageValue", "averageValue")])}})
        }
        "External" => {
            let s = &m["external"];
            json!({"type": kind, "external": {"metric": {"name": s["metricName"]},
                "current": renamed(s, &[("currentValue", "value"), ("currentAverageValue", "averageValue")])}})
        }
        "Resource" | "ContainerResource" => {
            let field = if kind == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let s = &m[field];
            let mut r = json!({"name": s["name"], "current": renamed(s, &[
                ("currentAverageUtilization", "averageUtilization"),
                ("currentAverageValue", "averageValue"),
            ])});
            if !s["container"].is_null() {
                r["container"] = s["container"].clone();
            }
            json!({"type": kind, field: r})
        }
        _ => m.clone(),
    }
}

/// Whether a v2 metric is the CPU utilization target v1 has a field for.
fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["averageUtilization"].is_i64()
}

fn annotate(obj: &mut Value, key: &str, list: &[Value]) {
    if !list.is_empty() {
        obj["metadata"]["annotations"][key] = json!(serde_json::to_string(list).unwrap_or_default());
    }
}

/// A stored (v2) HPA as `autoscaling/v1` serves it.
pub fn to_v1(v2: &Value) -> Value {
    let mut out = v2.clone();
    out["apiVersion"] = json!("autoscaling/v1");
    let spec = &v2["spec"];
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    let cpu = metrics.iter().find(|m| is_cpu_utilization(m));
    let others: Vec<Value> = metrics
        .iter()
        .filter(|m| !is_cpu_utilization(m))
        .map(spec_to_v1)
        .collect();
    let mut s = renamed(
        spec,
        &[
            ("scaleTargetRef", "scaleTargetRef"),
            ("minReplicas", "minReplicas"),
            ("maxReplicas", "maxReplicas"),
        ],
    );
    if let Some(cpu) = cpu {
        s["targetCPUUtilizationPercentage"] = cpu["resource"]["target"]["averageUtilization"].clone();
    }
    out["spec"] = s;
    annotate(&mut out, METRICS, &others);
    if !spec["behavior"].is_null() {
        out["metadata"]["annotations"][BEHAVIOR] =
            json!(serde_json::to_string(&spec["behavior"]).unwrap_or_default());
    }
    let status = &v2["status"];
    if status.is_object() {
        let current = status["currentMetrics"].as_array().cloned().unwrap_or_default();
        let mut st = renamed(
            status,
            &[
                ("observedGeneration", "observedGeneration"),
                ("lastScaleTime", "lastScaleTime"),
                ("currentReplicas", "currentReplicas"),
                ("desiredReplicas", "desiredReplicas"),
            ],
        );
        if st.get("currentReplicas").is_none() {
            st["currentReplicas"] = json!(0);
        }
        if st.get("desiredReplicas").is_none() {
            st["desiredReplicas"] = json!(0);
        }
        if let Some(u) = current
            .iter()
            .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
            .map(|m| &m["resource"]["current"]["averageUtilization"])
            .filter(|u| u.is_i64())
        {
            st["currentCPUUtilizationPercentage"] = u.clone();
        }
        let current_v1: Vec<Value> = current.iter().map(status_to_v1).collect();
        annotate(&mut out, CURRENT_METRICS, &current_v1);
        let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
        annotate(&mut out, CONDITIONS, &conditions);
        out["status"] = st;
    }
    out
}

/// Removes and parses annotation `key` (a JSON list).
fn take_list(obj: &mut Value, key: &str) -> Option<Vec<Value>> {
    let annotations = obj["metadata"]["annotations"].as_object_mut()?;
    let text = annotations.remove(key)?;
    if annotations.is_empty()
        && let Some(m) = obj["metadata"].as_object_mut()
    {
        m.remove("annotations");
    }
    serde_json::from_str(text.as_str()?).ok()
}

/// An `autoscaling/v1` HPA in its stored (v2) form.
pub fn from_v1(v1: &Value) -> Value {
    let mut out = v1.clone();
    out["apiVersion"] = json!("autoscaling/v2");
    let spec = &v1["spec"];
    let mut metrics: Vec<Value> = take_list(&mut out, METRICS)
        .unwrap_or_default()
        .iter()
        .map(spec_from_v1)
        .collect();
    if let Some(cpu) = spec["targetCPUUtilizationPercentage"].as_i64() {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": cpu}}}));
    }
    let mut s = renamed(
        spec,
        &[
            ("scaleTargetRef", "scaleTargetRef"),
            ("minReplicas", "minReplicas"),
            ("maxReplicas", "maxReplicas"),
        ],
    );
    if !metrics.is_empty() {
        s["metrics"] = json!(metrics);
    }
    let behavior = out["metadata"]["annotations"]
        .as_object_mut()
        .and_then(|a| a.remove(BEHAVIOR));
    if out["metadata"]["annotations"]
        .as_object()
        .is_some_and(|a| a.is_empty())
        && let Some(m) = out["metadata"].as_object_mut()
    {
        m.remove("annotations");
    }
    if let Some(b) = behavior
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    {
        s["behavior"] = b;
    }
    out["spec"] = s;
    let current = take_list(&mut out, CURRENT_METRICS);
    let conditions = take_list(&mut out, CONDITIONS);
    let status = &v1["status"];
    if status.is_object() {
        let mut st = renamed(
            status,
            &[
                ("observedGeneration", "observedGeneration"),
                ("lastScaleTime", "lastScaleTime"),
                ("currentReplicas", "currentReplicas"),
                ("desiredReplicas", "desiredReplicas"),
            ],
        );
        let current: Vec<Value> = match (current, status["currentCPUUtilizationPercentage"].as_i64()) {
            (Some(list), _) => list.iter().map(status_from_v1).collect(),
            (None, Some(u)) => vec![json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": u}}})],
            (None, None) => Vec::new(),
        };
        if !current.is_empty() {
            st["currentMetrics"] = json!(current);
        }
        if let Some(c) = conditions.filter(|c| !c.is_empty()) {
            st["conditions"] = json!(c);
        }
        out["status"] = st;
    }
    default_v2(&mut out);
    out
}

fn set_default(obj: &mut Value, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = value;
    }
}

/// Fills a scaling rule's unset fields from upstream's defaults for its direction.
fn default_rules(rules: &mut Value, up: bool) {
    if !rules.is_object() {
        *rules = json!({});
    }
    set_default(
        rules,
        "stabilizationWindowSeconds",
        json!(if up { 0 } else { 300 }),
    );
    set_default(rules, "selectPolicy", json!("Max"));
    if rules["policies"].as_array().is_none_or(Vec::is_empty) {
        rules["policies"] = if up {
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                   {"type": "Percent", "value": 100, "periodSeconds": 15}])
        } else {
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}])
        };
    }
}

/// Upstream's v2 defaults: one replica at least, 80 % CPU utilization when no metric is given,
/// and a behavior's unset rules filled in (an HPA without a behavior keeps none).
pub fn default_v2(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    set_default(spec, "minReplicas", json!(1));
    if spec["metrics"].as_array().is_none_or(Vec::is_empty) {
        spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}}]);
    }
    if spec["behavior"].is_object() {
        default_rules(&mut spec["behavior"]["scaleUp"], true);
        default_rules(&mut spec["behavior"]["scaleDown"], false);
    }
}

/// Upstream's v1 defaults.
pub fn default_v1(obj: &mut Value) {
    if obj["spec"].is_object() {
        set_default(&mut obj["spec"], "minReplicas", json!(1));
    }
}

fn check_target(field: &str, target: &Value, utilization_allowed: bool, causes: &mut Causes) {
    let positive = |key: &str, causes: &mut Causes| match &target[key] {
        Value::Null => causes.push((format!("{field}.{key}"), "Required value: must be set".into())),
        v if v.as_i64().is_some_and(|n| n <= 0) => causes.push((
            format!("{field}.{key}"),
            format!("Invalid value: {v}: must be greater than 0"),
        )),
        v if v
            .as_str()
            .and_then(super::quantity::parse)
            .is_some_and(|n| n <= 0.0) =>
        {
            causes.push((
                format!("{field}.{key}"),
                format!(
                    "Invalid value: \"{}\": must be positive",
                    v.as_str().unwrap_or_default()
                ),
            ))
        }
        _ => {}
    };
    match target["type"].as_str() {
        None | Some("") => causes.push((
            format!("{field}.type"),
            "Required value: must specify a metric target type".into(),
        )),
        Some("Utilization") if utilization_allowed => positive("averageUtilization", causes),
        Some("Value") if !utilization_allowed => positive("value", causes),
        Some("AverageValue") => positive("averageValue", causes),
        Some(other) => causes.push((
            format!("{field}.type"),
            format!("Invalid value: \"{other}\": must be either Utilization, Value, or AverageValue"),
        )),
    }
}

fn check_metric(field: &str, m: &Value, causes: &mut Causes) {
    let kind = m["type"].as_str().unwrap_or_default();
    let source = match kind {
        "Object" => "object",
        "Pods" => "pods",
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "External" => "external",
        "" => {
            causes.push((
                format!("{field}.type"),
                "Required value: must specify a metric source type".into(),
            ));
            return;
        }
        other => {
            causes.push((
                format!("{field}.type"),
                format!("Unsupported value: \"{other}\": supported values: \"ContainerResource\", \"External\", \"Object\", \"Pods\", \"Resource\""),
            ));
            return;
        }
    };
    let s = &m[source];
    if !s.is_object() {
        causes.push((
            format!("{field}.{source}"),
            format!("Required value: must populate information for the given metric source (type {kind})"),
        ));
        return;
    }
    let resource = matches!(kind, "Resource" | "ContainerResource");
    if resource {
        if s["name"].as_str().is_none_or(str::is_empty) {
            causes.push((
                format!("{field}.{source}.name"),
                "Required value: must specify a resource name".into(),
            ));
        }
        if kind == "ContainerResource" && s["container"].as_str().is_none_or(str::is_empty) {
            causes.push((
                format!("{field}.{source}.container"),
                "Required value: must specify a container".into(),
            ));
        }
    } else if s["metric"]["name"].as_str().is_none_or(str::is_empty) {
        causes.push((
            format!("{field}.{source}.metric.name"),
            "Required value: must specify a metric name".into(),
        ));
    }
    let target = &s["target"];
    match kind {
        "Pods" if target["type"] != "AverageValue" => causes.push((
            format!("{field}.{source}.target.type"),
            "Unsupported value: must be AverageValue for Pods metrics".into(),
        )),
        _ => check_target(&format!("{field}.{source}.target"), target, resource, causes),
    }
}

fn check_rules(field: &str, rules: &Value, causes: &mut Causes) {
    if rules.is_null() {
        return;
    }
    if let Some(w) = rules["stabilizationWindowSeconds"].as_i64()
        && !(0..=3600).contains(&w)
    {
        causes.push((
            format!("{field}.stabilizationWindowSeconds"),
            format!("Invalid value: {w}: must be less than or equal to 3600 and greater than or equal to 0"),
        ));
    }
    if let Some(p) = rules["selectPolicy"].as_str()
        && !matches!(p, "Max" | "Min" | "Disabled")
    {
        causes.push((
            format!("{field}.selectPolicy"),
            format!("Unsupported value: \"{p}\": supported values: \"Disabled\", \"Max\", \"Min\""),
        ));
    }
    for (i, p) in rules["policies"].as_array().into_iter().flatten().enumerate() {
        let at = format!("{field}.policies[{i}]");
        if !matches!(p["type"].as_str(), Some("Pods" | "Percent")) {
            causes.push((
                format!("{at}.type"),
                "Unsupported value: supported values: \"Percent\", \"Pods\"".into(),
            ));
        }
        if p["value"].as_i64().is_none_or(|v| v <= 0) {
            causes.push((
                format!("{at}.value"),
                format!("Invalid value: {}: must be greater than zero", p["value"]),
            ));
        }
        if p["periodSeconds"]
            .as_i64()
            .is_none_or(|v| !(1..=1800).contains(&v))
        {
            causes.push((
                format!("{at}.periodSeconds"),
                format!(
                    "Invalid value: {}: must be greater than zero and less than or equal to 1800",
                    p["periodSeconds"]
                ),
            ));
        }
    }
}

/// Upstream's `ValidateHorizontalPodAutoscaler`, for the object as `version` serves it.
pub fn validate(version: &str, obj: &Value, causes: &mut Causes) {
    let spec = &obj["spec"];
    let target = &spec["scaleTargetRef"];
    if target["kind"].as_str().is_none_or(str::is_empty) {
        causes.push(("spec.scaleTargetRef.kind".into(), "Required value".into()));
    }
    if target["name"].as_str().is_none_or(str::is_empty) {
        causes.push(("spec.scaleTargetRef.name".into(), "Required value".into()));
    }
    let min = spec["minReplicas"].as_i64().unwrap_or(1);
    if min < 1 {
        causes.push((
            "spec.minReplicas".into(),
            format!("Invalid value: {min}: must be greater than or equal to 1"),
        ));
    }
    let max = spec["maxReplicas"].as_i64().unwrap_or(0);
    if max < 1 {
        causes.push((
            "spec.maxReplicas".into(),
            format!("Invalid value: {max}: must be greater than 0"),
        ));
    } else if max < min {
        causes.push((
            "spec.maxReplicas".into(),
            format!("Invalid value: {max}: must be greater than or equal to `minReplicas`"),
        ));
    }
    if version == "v1" {
        if let Some(cpu) = spec["targetCPUUtilizationPercentage"].as_i64()
            && cpu < 1
        {
            causes.push((
                "spec.targetCPUUtilizationPercentage".into(),
                format!("Invalid value: {cpu}: must be greater than 0"),
            ));
        }
        return;
    }
    for (i, m) in spec["metrics"].as_array().into_iter().flatten().enumerate() {
        check_metric(&format!("spec.metrics[{i}]"), m, causes);
    }
    let behavior = &spec["behavior"];
    check_rules("spec.behavior.scaleUp", &behavior["scaleUp"], causes);
    check_rules("spec.behavior.scaleDown", &behavior["scaleDown"], causes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "annotations": {"team": "a"}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90, "averageValue": "90m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "SucceededRescale"}]}})
    }

    #[test]
    fn v1_carries_the_cpu_target_in_its_field_and_the_rest_in_annotations() {
        let v1 = to_v1(&v2());
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 90);
        let others: Value =
            serde_json::from_str(v1["metadata"]["annotations"][METRICS].as_str().unwrap()).unwrap();
        assert_eq!(
            others,
            json!([{"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "100Mi"}}])
        );
        assert!(v1["spec"].get("metrics").is_none());
        // And back: nothing lost (the CPU target comes last, as upstream orders it).
        let back = from_v1(&v1);
        let mut want = v2();
        want["spec"]["behavior"]["scaleUp"] = json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]});
        assert_eq!(back, want);
    }

    #[test]
    fn a_v1_hpa_without_a_target_gets_80_percent_cpu() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 3}});
        let v2 = from_v1(&v1);
        assert_eq!(v2["spec"]["minReplicas"], 1);
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert!(v2.get("status").is_none());
        assert!(v2["spec"].get("behavior").is_none());
    }

    #[test]
    fn invalid_specs_name_their_fields() {
        let mut causes = Causes::new();
        let bad = json!({"spec": {"scaleTargetRef": {"kind": "Deployment"}, "minReplicas": 3, "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}},
                        {"type": "Bogus"}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 4000}}}});
        validate("v2", &bad, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.scaleTargetRef.name",
                "spec.maxReplicas",
                "spec.metrics[0].resource.target.averageUtilization",
                "spec.metrics[1].type",
                "spec.behavior.scaleDown.stabilizationWindowSeconds"
            ]
        );
        let mut causes = Causes::new();
        validate(
            "v1",
            &json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 2,
            "targetCPUUtilizationPercentage": 0}}),
            &mut causes,
        );
        assert_eq!(causes[0].0, "spec.targetCPUUtilizationPercentage");
    }
}
