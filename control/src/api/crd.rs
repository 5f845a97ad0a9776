//! CustomResourceDefinitions: validation, and turning stored CRDs into served resources.

use std::sync::Arc;

use serde_json::{Value, json};

use super::registry::ResourceInfo;
use super::validation::Causes;

/// Validates a CRD's spec (structural schema checks come later).
pub fn validate(obj: &Value, causes: &mut Causes) {
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        causes.push(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        causes.push(("spec.names.plural".into(), "Required value".into()));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        causes.push(("spec.names.kind".into(), "Required value".into()));
    }
    if !["Namespaced", "Cluster"].contains(&spec["scope"].as_str().unwrap_or_default()) {
        causes.push((
            "spec.scope".into(),
            "Unsupported value: supported values: \"Cluster\", \"Namespaced\"".into(),
        ));
    }
    let versions = spec["versions"].as_array();
    let storage_versions = versions
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if storage_versions != 1 {
        causes.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
}

/// The resources a CRD serves (one per served version).
pub fn resources(crd: &Value) -> Vec<Arc<ResourceInfo>> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let shared = Arc::new(crd.clone());
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"] != json!(false))
        .map(|v| {
            let kind = names["kind"].as_str().unwrap_or_default().to_owned();
            let mut subresources = Vec::new();
            if v["subresources"].get("status").is_some() {
                subresources.push("status".to_owned());
            }
            if v["subresources"].get("scale").is_some() {
                subresources.push("scale".to_owned());
            }
            Arc::new(ResourceInfo {
                group: spec["group"].as_str().unwrap_or_default().to_owned(),
                version: v["name"].as_str().unwrap_or_default().to_owned(),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| kind.to_lowercase()),
                kind,
                plural: names["plural"].as_str().unwrap_or_default().to_owned(),
                namespaced: spec["scope"] == "Namespaced",
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                subresources,
                crd: Some(shared.clone()),
            })
        })
        .collect()
}

/// The status a CRD gets once its names are served.
pub fn established_status(crd: &Value, now: &str) -> Value {
    let names = crd["spec"]["names"].clone();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect();
    json!({
        "acceptedNames": names,
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    })
}

/// The printer columns of a CRD version, as `(name, type, jsonPath, priority)`.
pub fn printer_columns(info: &ResourceInfo) -> Vec<(String, String, String, i64)> {
    let Some(crd) = &info.crd else { return Vec::new() };
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["name"] == info.version.as_str())
        .flat_map(|v| {
            v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["type"].as_str().unwrap_or("string").to_owned(),
                c["jsonPath"].as_str().unwrap_or_default().to_owned(),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}
