//! Admission for the built-in kinds: upstream's defaults, then validation.

use serde_json::{Value, json};

use super::registry::ResourceInfo;
use super::validation::{Causes, check_metadata, check_pod_spec, check_selector_matches_template};
use crate::objects::meta::items_mut;

fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut()
        && map.get(key).is_none_or(Value::is_null)
    {
        map.insert(key.to_owned(), value);
    }
}

fn default_container(c: &mut Value) {
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    let image = c["image"].as_str().unwrap_or_default();
    let tag = image.rsplit('/').next().unwrap_or_default();
    let pinned = image.contains('@') || tag.split_once(':').is_some_and(|(_, t)| t != "latest");
    set_default(
        c,
        "imagePullPolicy",
        json!(if pinned { "IfNotPresent" } else { "Always" }),
    );
    for port in items_mut(c, "ports") {
        set_default(port, "protocol", json!("TCP"));
    }
}

/// Fills a pod spec's defaults (also used for templates).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for field in ["containers", "initContainers"] {
        for c in items_mut(spec, field) {
            default_container(c);
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let has = |c: &Value, k: &str| c["resources"][k].as_object().is_some_and(|m| !m.is_empty());
    if containers
        .iter()
        .all(|c| !has(c, "requests") && !has(c, "limits"))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let limits = &c["resources"]["limits"];
        let requests = &c["resources"]["requests"];
        ["cpu", "memory"]
            .iter()
            .all(|r| limits.get(*r).is_some() && requests.get(*r).is_none_or(|q| Some(q) == limits.get(*r)))
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

fn default_pod(obj: &mut Value, creating: bool) {
    default_pod_spec(&mut obj["spec"]);
    let spec = &mut obj["spec"];
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
    set_default(spec, "serviceAccountName", json!("default"));
    // Upstream's DefaultTolerationSeconds admission plugin.
    let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut tolerations = tolerations;
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        if !tolerations.iter().any(|t| t["key"] == key) {
            tolerations.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
            );
        }
    }
    spec["tolerations"] = Value::Array(tolerations);
    if creating {
        let qos = qos_class(&obj["spec"]);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
    }
}

/// Defaults a workload's update strategy: `RollingUpdate` with `rolling` as its parameters.
fn default_strategy(spec: &mut Value, field: &str, rolling: Value) {
    set_default(spec, field, json!({}));
    let strategy = &mut spec[field];
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        set_default(strategy, "rollingUpdate", json!({}));
        for (k, v) in rolling.as_object().into_iter().flatten() {
            set_default(&mut strategy["rollingUpdate"], k, v.clone());
        }
    }
}

fn default_template(obj: &mut Value) {
    default_pod_spec(&mut obj["spec"]["template"]["spec"]);
}

/// Applies defaults for `info`'s kind to `obj`. `creating` is false on updates.
pub fn apply_defaults(info: &ResourceInfo, obj: &mut Value, creating: bool) {
    if !info.group.is_empty() && info.crd.is_some() {
        return;
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => default_pod(obj, creating),
        ("", "Namespace") => {
            set_default(obj, "spec", json!({"finalizers": ["kubernetes"]}));
            if creating {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        ("", "Secret") => {
            set_default(obj, "type", json!("Opaque"));
            if let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                use base64::Engine;
                let data = obj
                    .as_object_mut()
                    .map(|m| m.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (k, v) in string_data {
                        let encoded =
                            base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
                        data.insert(k, json!(encoded));
                    }
                }
            }
        }
        ("", "Service") => {
            let spec = &mut obj["spec"];
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            for port in items_mut(spec, "ports") {
                set_default(port, "protocol", json!("TCP"));
                let p = port["port"].clone();
                set_default(port, "targetPort", p);
            }
            if spec["type"] != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            }
            if spec["type"] == "NodePort" || spec["type"] == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if creating {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        ("apps", "Deployment") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            default_strategy(
                spec,
                "strategy",
                json!({"maxUnavailable": "25%", "maxSurge": "25%"}),
            );
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            default_template(obj);
        }
        ("apps", "ReplicaSet") => {
            set_default(&mut obj["spec"], "replicas", json!(1));
            default_template(obj);
        }
        ("apps", "StatefulSet") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            default_strategy(spec, "updateStrategy", json!({"partition": 0}));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_template(obj);
        }
        ("apps", "DaemonSet") => {
            let spec = &mut obj["spec"];
            default_strategy(
                spec,
                "updateStrategy",
                json!({"maxUnavailable": 1, "maxSurge": 0}),
            );
            set_default(spec, "revisionHistoryLimit", json!(10));
            default_template(obj);
        }
        ("batch", "Job") => {
            let spec = &mut obj["spec"];
            if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
                spec["completions"] = json!(1);
            }
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "manualSelector", json!(false));
            default_template(obj);
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            set_default(obj, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        ("batch", "CronJob") => {
            let spec = &mut obj["spec"];
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            default_pod_spec(&mut spec["jobTemplate"]["spec"]["template"]["spec"]);
        }
        _ => {}
    }
}

/// Job selectors are generated from the job's uid unless `manualSelector` is set.
pub fn generate_job_selector(obj: &mut Value, uid: &str) {
    if obj["spec"]["manualSelector"] == json!(true) {
        return;
    }
    obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let name = obj["metadata"]["name"].clone();
    let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", json!(uid)),
        ("controller-uid", json!(uid)),
        ("batch.kubernetes.io/job-name", name.clone()),
        ("job-name", name),
    ] {
        labels[k] = v;
    }
}

/// The bytes a ConfigMap's or Secret's data map holds: keys and values, base64 values decoded.
fn data_size(data: &Value, base64: bool) -> usize {
    data.as_object().into_iter().flatten().fold(0, |n, (k, v)| {
        let v = v.as_str().unwrap_or_default();
        let len = if base64 {
            ((v.len() / 4) * 3).saturating_sub(v.bytes().rev().take_while(|b| *b == b'=').count().min(2))
        } else {
            v.len()
        };
        n + k.len() + len
    })
}

/// Validates `obj` as `info`'s kind; returns the field errors.
pub fn validate(info: &ResourceInfo, obj: &Value) -> Causes {
    let mut causes = Causes::new();
    let label_names = matches!(
        (info.group.as_str(), info.kind.as_str()),
        ("", "Namespace") | ("", "Service")
    );
    check_metadata(obj, label_names, &mut causes);
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => check_pod_spec("spec", &obj["spec"], &mut causes),
        ("", "Service") => {
            let spec = &obj["spec"];
            let headless = spec["clusterIP"] == "None";
            let ports = spec["ports"].as_array();
            if spec["type"] != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
                causes.push(("spec.ports".into(), "Required value".into()));
            }
            for (i, p) in ports.into_iter().flatten().enumerate() {
                let port = p["port"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push((
                        format!("spec.ports[{i}].port"),
                        format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
                    ));
                }
                if ports.is_some_and(|all| all.len() > 1) && p["name"].as_str().is_none_or(str::is_empty) {
                    causes.push((format!("spec.ports[{i}].name"), "Required value".into()));
                }
            }
            let ty = spec["type"].as_str().unwrap_or("ClusterIP");
            if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
                causes.push((
                    "spec.type".into(),
                    format!("Unsupported value: \"{ty}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
                ));
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            check_selector_matches_template(obj, &mut causes);
            check_pod_spec(
                "spec.template.spec",
                &obj["spec"]["template"]["spec"],
                &mut causes,
            );
            if let Some(r) = obj["spec"]["replicas"].as_i64()
                && r < 0
            {
                causes.push((
                    "spec.replicas".into(),
                    format!("Invalid value: {r}: must be greater than or equal to 0"),
                ));
            }
        }
        ("batch", "Job") => {
            let spec = &obj["spec"]["template"]["spec"];
            check_pod_spec("spec.template.spec", spec, &mut causes);
            let policy = spec["restartPolicy"].as_str().unwrap_or("Always");
            if !["OnFailure", "Never"].contains(&policy) {
                causes.push((
                    "spec.template.spec.restartPolicy".into(),
                    "Required value: valid values: \"OnFailure\", \"Never\"".into(),
                ));
            }
        }
        ("batch", "CronJob") => match obj["spec"]["schedule"].as_str().filter(|s| !s.is_empty()) {
            None => causes.push(("spec.schedule".into(), "Required value".into())),
            Some(schedule) => {
                if let Err(e) = crate::objects::cron::Schedule::parse(schedule) {
                    causes.push((
                        "spec.schedule".into(),
                        format!("Invalid value: \"{schedule}\": {e}"),
                    ));
                }
                if let Some(tz) = obj["spec"]["timeZone"].as_str()
                    && jiff::tz::TimeZone::get(tz).is_err()
                {
                    causes.push((
                        "spec.timeZone".into(),
                        format!("Invalid value: \"{tz}\": unknown time zone {tz}"),
                    ));
                }
            }
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition") => super::crd::validate(obj, &mut causes),
        ("scheduling.k8s.io", "PriorityClass") if !obj["value"].is_i64() => {
            causes.push(("value".into(), "Required value".into()));
        }
        ("", "ConfigMap" | "Secret") => {
            let size = if info.kind == "Secret" {
                data_size(&obj["data"], true)
            } else {
                data_size(&obj["data"], false) + data_size(&obj["binaryData"], true)
            };
            if size > super::limits::MAX_DATA_BYTES {
                let field = if info.kind == "Secret" { "data" } else { "[]" };
                causes.push((
                    field.into(),
                    format!(
                        "Too long: must have at most {} bytes",
                        super::limits::MAX_DATA_BYTES
                    ),
                ));
            }
        }
        ("policy", "PodDisruptionBudget") => {
            let spec = &obj["spec"];
            if spec.get("minAvailable").is_some() && spec.get("maxUnavailable").is_some() {
                causes.push((
                    "spec".into(),
                    "Invalid value: minAvailable and maxUnavailable cannot be both set".into(),
                ));
            }
        }
        _ => {}
    }
    causes
}
