//! Validation of the built-in kinds: metadata, pod specs, selectors, ports, schedules, data sizes;
//! the field checks themselves are in `objects/validation.rs`. Runs after every mutating plugin.

use serde_json::Value;

use super::{Attributes, Lookup, Plugin};
use crate::objects::registry::ResourceInfo;
use crate::objects::status::ApiError;
use crate::objects::validation::{
    Causes, check_label_name, check_map_selector_matches_template, check_metadata, check_pod_spec,
    check_selector_matches_template,
};

/// Rejects an invalid object with 422 and its field causes.
pub struct Validation;

#[tonic::async_trait]
impl Plugin for Validation {
    fn name(&self) -> &'static str {
        "Validation"
    }

    async fn validate(&self, _: &dyn Lookup, attrs: &Attributes<'_>, obj: &Value) -> Result<(), ApiError> {
        let mut causes = validate(attrs.info, obj);
        // Ephemeral containers are added to a running pod through its subresource only.
        if attrs.is("", "Pod")
            && attrs.operation == super::Operation::Create
            && obj["spec"]["ephemeralContainers"]
                .as_array()
                .is_some_and(|l| !l.is_empty())
        {
            causes.push((
                "spec.ephemeralContainers".into(),
                "Forbidden: cannot be set on create".into(),
            ));
        }
        // A binding's role is fixed: upstream refuses to change it (delete and recreate).
        if attrs.info.group == "rbac.authorization.k8s.io"
            && let Some(old) = attrs.old
            && old.get("roleRef").is_some()
            && old["roleRef"] != obj["roleRef"]
        {
            causes.push(("roleRef".into(), "Invalid value: cannot change roleRef".into()));
        }
        // A PriorityClass's value and preemption policy are fixed (upstream's
        // ValidatePriorityClassUpdate): pods already admitted carry the value.
        if attrs.is("scheduling.k8s.io", "PriorityClass")
            && let Some(old) = attrs.old
        {
            if old["value"] != obj["value"] {
                causes.push((
                    "Value".into(),
                    "Forbidden: may not be changed in an update.".into(),
                ));
            }
            if old["preemptionPolicy"] != obj["preemptionPolicy"] {
                causes.push((
                    "preemptionPolicy".into(),
                    format!("Invalid value: {}: field is immutable", obj["preemptionPolicy"]),
                ));
            }
        }
        attrs.invalid(obj, causes)
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

/// Why `key` cannot be a ConfigMap or Secret key (upstream's `IsConfigMapKey`), if it cannot.
fn config_key_problem(key: &str) -> Option<String> {
    if key.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Some("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into());
    }
    match key {
        "." => Some("must not be '.'".into()),
        ".." => Some("must not be '..'".into()),
        _ if key.starts_with("..") => Some("must not start with '..'".into()),
        _ => None,
    }
}

/// Roles' rules and bindings' role and subjects, as upstream validates them.
fn check_rbac(kind: &str, obj: &Value, causes: &mut Causes) {
    let empty = |v: &Value| v.as_array().is_none_or(|a| a.is_empty());
    match kind {
        "Role" | "ClusterRole" => {
            for (i, rule) in obj["rules"].as_array().into_iter().flatten().enumerate() {
                let at = |f: &str| format!("rules[{i}].{f}");
                if empty(&rule["verbs"]) {
                    causes.push((
                        at("verbs"),
                        "Required value: verbs must contain at least one value".into(),
                    ));
                }
                let urls = !empty(&rule["nonResourceURLs"]);
                if urls && kind == "Role" {
                    causes.push((
                        at("nonResourceURLs"),
                        "Invalid value: namespaced rules cannot apply to non-resource URLs".into(),
                    ));
                }
                if urls && (!empty(&rule["resources"]) || !empty(&rule["apiGroups"])) {
                    causes.push((
                        at("nonResourceURLs"),
                        "Invalid value: rules cannot apply to both regular resources and non-resource URLs"
                            .into(),
                    ));
                }
                if !urls && empty(&rule["resources"]) {
                    causes.push((
                        at("resources"),
                        "Required value: resource rules must supply at least one api group".into(),
                    ));
                }
            }
        }
        _ => {
            let role = &obj["roleRef"];
            let allowed: &[&str] = if kind == "RoleBinding" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            match role["kind"].as_str() {
                Some(k) if allowed.contains(&k) => {}
                other => causes.push((
                    "roleRef.kind".into(),
                    format!(
                        "Unsupported value: \"{}\": supported values: \"{}\"",
                        other.unwrap_or_default(),
                        allowed.join("\", \"")
                    ),
                )),
            }
            if role["name"].as_str().is_none_or(str::is_empty) {
                causes.push(("roleRef.name".into(), "Required value".into()));
            }
            for (i, subject) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
                let kind = subject["kind"].as_str().unwrap_or_default();
                if !matches!(kind, "User" | "Group" | "ServiceAccount") {
                    causes.push((
                        format!("subjects[{i}].kind"),
                        format!("Unsupported value: \"{kind}\": supported values: \"ServiceAccount\", \"User\", \"Group\""),
                    ));
                }
                if subject["name"].as_str().is_none_or(str::is_empty) {
                    causes.push((format!("subjects[{i}].name"), "Required value".into()));
                }
            }
        }
    }
}

/// Validates `obj` as `info`'s kind; returns the field errors.
fn validate(info: &ResourceInfo, obj: &Value) -> Causes {
    let mut causes = Causes::new();
    let label_names = matches!(
        (info.group.as_str(), info.kind.as_str()),
        ("", "Namespace") | ("", "Service")
    );
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if info.group == "rbac.authorization.k8s.io" && !name.is_empty() {
        // RBAC names are path segments (`system:controller:x`), as upstream's ValidateRBACName:
        // the rest of the metadata is checked as for any object.
        let mut renamed = obj.clone();
        renamed["metadata"]["name"] = serde_json::json!("x");
        check_metadata(&renamed, false, &mut causes);
        let problem = match name {
            "." | ".." => Some(format!("may not be '{name}'")),
            _ if name.contains('/') => Some("may not contain '/'".to_owned()),
            _ if name.contains('%') => Some("may not contain '%'".to_owned()),
            _ => None,
        };
        if let Some(p) = problem {
            causes.push(("metadata.name".into(), format!("Invalid value: \"{name}\": {p}")));
        }
    } else {
        check_metadata(obj, label_names, &mut causes);
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => check_pod_spec("spec", &obj["spec"], &mut causes),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            crate::objects::certificates::check(obj, &mut causes);
        }
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
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("", "ReplicationController") => {
            if info.kind == "ReplicationController" {
                check_map_selector_matches_template(obj, &mut causes);
            } else {
                check_selector_matches_template(obj, &mut causes);
            }
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
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            crate::objects::crd::validate(obj, &mut causes)
        }
        ("scheduling.k8s.io", "PriorityClass") if !obj["value"].is_i64() => {
            causes.push(("value".into(), "Required value".into()));
        }
        ("", "ConfigMap" | "Secret") => {
            // A Secret's `stringData` is in `data` by now (the defaults plugin moves it).
            let maps: &[&str] = if info.kind == "Secret" {
                &["data"]
            } else {
                &["data", "binaryData"]
            };
            for map in maps {
                for key in obj[*map].as_object().into_iter().flatten().map(|(k, _)| k) {
                    if let Some(problem) = config_key_problem(key) {
                        causes.push((
                            format!("{map}[{key}]"),
                            format!("Invalid value: \"{key}\": {problem}"),
                        ));
                    }
                    if info.kind == "ConfigMap" && *map == "data" && obj["binaryData"].get(key).is_some() {
                        causes.push((
                            format!("data[{key}]"),
                            format!("Invalid value: \"{key}\": duplicate of key present in binaryData"),
                        ));
                    }
                }
            }
            let size = if info.kind == "Secret" {
                data_size(&obj["data"], true)
            } else {
                data_size(&obj["data"], false) + data_size(&obj["binaryData"], true)
            };
            if size > crate::objects::limits::MAX_DATA_BYTES {
                let field = if info.kind == "Secret" { "data" } else { "[]" };
                causes.push((
                    field.into(),
                    format!(
                        "Too long: must have at most {} bytes",
                        crate::objects::limits::MAX_DATA_BYTES
                    ),
                ));
            }
        }
        ("", "PodTemplate") => check_pod_spec("template.spec", &obj["template"]["spec"], &mut causes),
        ("networking.k8s.io", kind) => super::networking::validate(kind, obj, &mut causes),
        ("node.k8s.io", "RuntimeClass") => match obj["handler"].as_str() {
            None | Some("") => causes.push(("handler".into(), "Required value".into())),
            Some(h) => check_label_name("handler", h, &mut causes),
        },
        ("storage.k8s.io", "VolumeAttachment") => {
            for f in ["attacher", "nodeName"] {
                if obj["spec"][f].as_str().is_none_or(str::is_empty) {
                    causes.push((format!("spec.{f}"), "Required value".into()));
                }
            }
        }
        ("flowcontrol.apiserver.k8s.io", "FlowSchema") => {
            let spec = &obj["spec"];
            if spec["priorityLevelConfiguration"]["name"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                causes.push((
                    "spec.priorityLevelConfiguration.name".into(),
                    "Required value".into(),
                ));
            }
            if let Some(p) = spec["matchingPrecedence"]
                .as_i64()
                .filter(|p| !(1..=10000).contains(p))
            {
                causes.push((
                    "spec.matchingPrecedence".into(),
                    format!("Invalid value: {p}: must be between 1 and 10000, inclusive"),
                ));
            }
        }
        ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration") => {
            let ty = obj["spec"]["type"].as_str().unwrap_or_default();
            if !matches!(ty, "Exempt" | "Limited") {
                causes.push((
                    "spec.type".into(),
                    format!("Unsupported value: \"{ty}\": supported values: \"Exempt\", \"Limited\""),
                ));
            } else if obj["spec"][ty.to_ascii_lowercase()].is_null() {
                causes.push((
                    format!("spec.{}", ty.to_ascii_lowercase()),
                    "Required value".into(),
                ));
            }
        }
        ("", "ResourceQuota") => {
            for (k, v) in obj["spec"]["hard"].as_object().into_iter().flatten() {
                if crate::objects::quota::milli(v).is_none_or(|m| m < 0) {
                    causes.push((
                        format!("spec.hard[{k}]"),
                        format!("Invalid value: {v}: must be a non-negative quantity"),
                    ));
                }
            }
            for (i, scope) in obj["spec"]["scopes"].as_array().into_iter().flatten().enumerate() {
                let s = scope.as_str().unwrap_or_default();
                if !matches!(
                    s,
                    "Terminating"
                        | "NotTerminating"
                        | "BestEffort"
                        | "NotBestEffort"
                        | "PriorityClass"
                        | "CrossNamespacePodAffinity"
                ) {
                    causes.push((format!("spec.scopes[{i}]"), format!("Unsupported value: \"{s}\": supported values: \"BestEffort\", \"CrossNamespacePodAffinity\", \"NotBestEffort\", \"NotTerminating\", \"PriorityClass\", \"Terminating\"")));
                }
            }
        }
        ("", "LimitRange") => {
            use crate::objects::quota::milli;
            for (i, item) in obj["spec"]["limits"].as_array().into_iter().flatten().enumerate() {
                let ty = item["type"].as_str().unwrap_or_default();
                if !matches!(ty, "Container" | "Pod" | "PersistentVolumeClaim") {
                    causes.push((format!("spec.limits[{i}].type"), format!("Unsupported value: \"{ty}\": supported values: \"Container\", \"PersistentVolumeClaim\", \"Pod\"")));
                }
                for field in ["min", "max", "default", "defaultRequest", "maxLimitRequestRatio"] {
                    for (k, v) in item[field].as_object().into_iter().flatten() {
                        if milli(v).is_none() {
                            causes.push((
                                format!("spec.limits[{i}].{field}[{k}]"),
                                format!("Invalid value: {v}: must be a quantity"),
                            ));
                        }
                    }
                }
                for (k, v) in item["min"].as_object().into_iter().flatten() {
                    let max = &item["max"][k];
                    if let (Some(lo), Some(hi)) = (milli(v), milli(max))
                        && lo > hi
                    {
                        causes.push((
                            format!("spec.limits[{i}].min[{k}]"),
                            format!(
                                "Invalid value: {v}: min value {} is greater than max value {}",
                                v.as_str().unwrap_or_default(),
                                max.as_str().unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
        }
        (
            super::webhooks::GROUP,
            kind @ ("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration"),
        ) => {
            causes.extend(super::webhooks::validate_configuration(
                kind.starts_with("Mutating"),
                obj,
            ));
        }
        ("apiregistration.k8s.io", "APIService") => {
            let spec = &obj["spec"];
            let (group, version) = (
                spec["group"].as_str().unwrap_or_default(),
                spec["version"].as_str().unwrap_or_default(),
            );
            if version.is_empty() {
                causes.push(("spec.version".into(), "Required value".into()));
            }
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            if name != format!("{version}.{group}") {
                causes.push((
                    "metadata.name".into(),
                    format!("Invalid value: \"{name}\": must be `spec.version+\".\"+spec.group`: \"{version}.{group}\""),
                ));
            }
            for (field, min) in [("groupPriorityMinimum", 1), ("versionPriority", 1)] {
                if spec[field].as_i64().is_none_or(|p| p < min) {
                    causes.push((
                        format!("spec.{field}"),
                        "Invalid value: must be positive and less than 1000000".into(),
                    ));
                }
            }
            if spec["service"].is_object()
                && spec["caBundle"].is_null()
                && spec["insecureSkipTLSVerify"] != true
            {
                causes.push((
                    "spec.caBundle".into(),
                    "Required value: must be set when insecureSkipTLSVerify is false and service is set"
                        .into(),
                ));
            }
        }
        ("rbac.authorization.k8s.io", kind) => check_rbac(kind, obj, &mut causes),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            crate::objects::autoscaling::validate(&info.version, obj, &mut causes)
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::objects::admission::testing::{Objects, block_on, create, resource};

    fn check(info: &ResourceInfo, obj: Value) -> Result<(), ApiError> {
        block_on(Validation.validate(&Objects::default(), &create(info, "default"), &obj))
    }

    fn fields(err: ApiError) -> Vec<String> {
        err.details.unwrap()["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn services_need_ports_in_range_and_named_when_several() {
        let services = resource("", "v1", "services");
        check(
            &services,
            json!({"metadata": {"name": "ok"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .unwrap();
        check(
            &services,
            json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}),
        )
        .unwrap();
        let err = check(
            &services,
            json!({"metadata": {"name": "bad"}, "spec": {"type": "Magic", "ports": [{"port": 0}, {"port": 81, "name": "b"}]}}),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            fields(err),
            ["spec.ports[0].port", "spec.ports[0].name", "spec.type"]
        );
    }

    #[test]
    fn workloads_jobs_and_cronjobs_are_checked() {
        let deployments = resource("apps", "v1", "deployments");
        let err = check(
            &deployments,
            json!({"metadata": {"name": "d"}, "spec": {"replicas": -1,
                "selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
        )
        .unwrap_err();
        assert_eq!(fields(err), ["spec.replicas"]);
        let jobs = resource("batch", "v1", "jobs");
        let err = check(
            &jobs,
            json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {
                "restartPolicy": "Always", "containers": [{"name": "c", "image": "x"}]}}}}),
        )
        .unwrap_err();
        assert_eq!(fields(err), ["spec.template.spec.restartPolicy"]);
        let cronjobs = resource("batch", "v1", "cronjobs");
        let err = check(
            &cronjobs,
            json!({"metadata": {"name": "c"}, "spec": {"schedule": "every day", "timeZone": "Mars/Olympus"}}),
        )
        .unwrap_err();
        assert_eq!(fields(err), ["spec.schedule", "spec.timeZone"]);
    }

    #[test]
    fn configmap_and_secret_keys_are_config_keys() {
        let secrets = resource("", "v1", "secrets");
        check(
            &secrets,
            json!({"metadata": {"name": "s"}, "data": {"tls.crt": "", "KEY_1-x": ""}}),
        )
        .unwrap();
        let err = check(
            &secrets,
            json!({"metadata": {"name": "s"}, "data": {"": "dmFsdWUtMQ=="}}),
        )
        .unwrap_err();
        assert_eq!(fields(err), ["data[]"]);
        let err = check(
            &secrets,
            json!({"metadata": {"name": "s"}, "data": {"a/b": "eA=="}}),
        )
        .unwrap_err();
        assert_eq!(fields(err), ["data[a/b]"]);
        let configmaps = resource("", "v1", "configmaps");
        let err = check(
            &configmaps,
            json!({"metadata": {"name": "c"}, "data": {"..hidden": "", "same": ""}, "binaryData": {".": "", "same": ""}}),
        )
        .unwrap_err();
        assert_eq!(fields(err), ["data[..hidden]", "data[same]", "binaryData[.]"]);
    }

    #[test]
    fn configmap_and_secret_data_are_held_to_a_mebibyte() {
        let configmaps = resource("", "v1", "configmaps");
        let limit = crate::objects::limits::MAX_DATA_BYTES;
        let at_limit = "x".repeat(limit - 1);
        check(
            &configmaps,
            json!({"metadata": {"name": "c"}, "data": {"k": at_limit}}),
        )
        .unwrap();
        let over = "x".repeat(limit);
        assert_eq!(
            check(
                &configmaps,
                json!({"metadata": {"name": "c"}, "data": {"k": over}})
            )
            .unwrap_err()
            .code,
            422
        );
        // Secrets count decoded bytes: base64 of just under the limit passes.
        use base64::Engine;
        let secrets = resource("", "v1", "secrets");
        let encoded = base64::engine::general_purpose::STANDARD.encode(vec![0u8; limit - 10]);
        check(
            &secrets,
            json!({"metadata": {"name": "s"}, "data": {"k": encoded}}),
        )
        .unwrap();
    }
}
