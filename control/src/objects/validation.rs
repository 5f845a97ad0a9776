//! Validation of object metadata and of the built-in kinds, with upstream's messages.

use serde_json::Value;

/// Field errors as `(field path, message)`.
pub type Causes = Vec<(String, String)>;

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, of any length.
fn is_label_shaped(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shaped(s)
}

/// Upstream's IsDNS1123Subdomain: at most 253 characters of dot-separated label-shaped parts, which
/// (unlike DNS labels) have no length limit of their own.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_shaped)
}

/// Validates a DNS-1123 subdomain name (most kinds).
pub fn check_subdomain(field: &str, value: &str, causes: &mut Causes) {
    if !is_dns_subdomain(value) {
        causes.push((
            field.to_owned(),
            format!(
                "Invalid value: \"{value}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
        ));
    }
}

/// Validates a DNS-1123 label name (namespaces, services, container names).
pub fn check_label_name(field: &str, value: &str, causes: &mut Causes) {
    if !is_dns_label(value) {
        causes.push((
            field.to_owned(),
            format!(
                "Invalid value: \"{value}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ),
        ));
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

fn check_map_keys(field: &str, map: Option<&Value>, check_values: bool, causes: &mut Causes) {
    let Some(map) = map else { return };
    let Some(map) = map.as_object() else {
        causes.push((field.to_owned(), "Invalid value: must be a map of strings".into()));
        return;
    };
    for (k, v) in map {
        if !is_qualified_name(k) {
            causes.push((
                field.to_owned(),
                format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"),
            ));
        }
        match v.as_str() {
            Some(s) if check_values && !(s.is_empty() || is_qualified_name_part(s)) => causes.push((
                field.to_string(),
                format!("Invalid value: \"{s}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"),
            )),
            Some(_) => {}
            None => causes.push((field.to_string(), format!("Invalid value: the value of {k:?} must be a string"))),
        }
    }
}

/// Validates `metadata` for an object whose names follow `label_names` (DNS label) or subdomain rules.
pub fn check_metadata(obj: &Value, label_names: bool, causes: &mut Causes) {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push((
            "metadata.name".into(),
            "Required value: name or generateName is required".into(),
        ));
    } else if label_names {
        check_label_name("metadata.name", name, causes);
    } else {
        check_subdomain("metadata.name", name, causes);
    }
    check_map_keys("metadata.labels", meta.get("labels"), true, causes);
    check_map_keys("metadata.annotations", meta.get("annotations"), false, causes);
    let size: usize = meta
        .get("annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    if size > 256 * 1024 {
        causes.push((
            "metadata.annotations".into(),
            "Too long: must have at most 262144 bytes".into(),
        ));
    }
}

fn check_containers(field: &str, containers: Option<&Value>, required: bool, causes: &mut Causes) {
    let list = containers.and_then(Value::as_array);
    if required && list.is_none_or(|l| l.is_empty()) {
        causes.push((field.to_owned(), "Required value".into()));
        return;
    }
    for (i, c) in list.into_iter().flatten().enumerate() {
        let name = c["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push((format!("{field}[{i}].name"), "Required value".into()));
        } else {
            check_label_name(&format!("{field}[{i}].name"), name, causes);
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            causes.push((format!("{field}[{i}].image"), "Required value".into()));
        }
        for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
            let port = p["containerPort"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&port) {
                causes.push((
                    format!("{field}[{i}].ports[{j}].containerPort"),
                    format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
                ));
            }
        }
    }
}

/// Validates a pod spec at `field` (`spec` or `spec.template.spec`).
pub fn check_pod_spec(field: &str, spec: &Value, causes: &mut Causes) {
    check_containers(
        &format!("{field}.containers"),
        spec.get("containers"),
        true,
        causes,
    );
    check_containers(
        &format!("{field}.initContainers"),
        spec.get("initContainers"),
        false,
        causes,
    );
    if field == "spec" {
        check_containers(
            "spec.ephemeralContainers",
            spec.get("ephemeralContainers"),
            false,
            causes,
        );
        super::ephemeral::check(spec, causes);
    }
    // A name is unique among all of the pod's containers.
    let mut seen = std::collections::HashSet::new();
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            if let Some(name) = c["name"].as_str().filter(|n| !n.is_empty())
                && !seen.insert(name)
            {
                causes.push((
                    format!("{field}.{list}[{i}].name"),
                    format!("Duplicate value: \"{name}\""),
                ));
            }
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        causes.push((
            format!("{field}.restartPolicy"),
            format!(
                "Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        ));
    }
}

/// Checks that a workload's template labels match its selector.
/// A ReplicationController's selector (a plain label map) is set and matches its template's labels.
pub fn check_map_selector_matches_template(obj: &Value, causes: &mut Causes) {
    let selector = obj["spec"]["selector"].as_object().filter(|s| !s.is_empty());
    let Some(selector) = selector else {
        causes.push(("spec.selector".into(), "Required value".into()));
        return;
    };
    let labels = &obj["spec"]["template"]["metadata"]["labels"];
    if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        causes.push((
            "spec.template.metadata.labels".into(),
            format!(
                "Invalid value: {}: `selector` does not match template `labels`",
                serde_json::to_string(labels).unwrap_or_default()
            ),
        ));
    }
}

/// A workload's label selector is set, not empty, and matches its template's labels.
pub fn check_selector_matches_template(obj: &Value, causes: &mut Causes) {
    let selector = &obj["spec"]["selector"];
    if selector.is_null() {
        causes.push(("spec.selector".into(), "Required value".into()));
        return;
    }
    match super::selector::LabelSelector::from_object(selector) {
        Ok(sel) if sel.is_empty() => causes.push((
            "spec.selector".into(),
            "Invalid value: \"{}\": empty selector is invalid for deployment".into(),
        )),
        Ok(sel) => {
            if !sel.matches(obj["spec"]["template"]["metadata"].get("labels")) {
                causes.push((
                    "spec.template.metadata.labels".into(),
                    format!(
                        "Invalid value: {}: `selector` does not match template `labels`",
                        serde_json::to_string(&obj["spec"]["template"]["metadata"]["labels"])
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        Err(e) => causes.push(("spec.selector".into(), format!("Invalid value: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_dns_rules() {
        let mut causes = Causes::new();
        check_metadata(&json!({"metadata": {"name": "Bad_Name"}}), false, &mut causes);
        check_metadata(&json!({"metadata": {"name": "a.b"}}), true, &mut causes);
        check_metadata(
            &json!({"metadata": {"name": "ok", "labels": {"a": "in valid"}}}),
            false,
            &mut causes,
        );
        assert_eq!(causes.len(), 3);
        let mut ok = Causes::new();
        check_metadata(
            &json!({"metadata": {"name": "a.b-c", "labels": {"example.com/x": "y_1"}}}),
            false,
            &mut ok,
        );
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn subdomain_names_may_be_long_and_labels_may_not() {
        let long = "a".repeat(100);
        let mut causes = Causes::new();
        check_metadata(&json!({"metadata": {"name": long}}), false, &mut causes);
        check_metadata(
            &json!({"metadata": {"name": format!("x.{}", "b".repeat(260))}}),
            false,
            &mut causes,
        );
        assert_eq!(causes.len(), 1, "100 characters pass, 262 fail: {causes:?}");
        assert_eq!(causes[0].0, "metadata.name");
        let mut causes = Causes::new();
        check_metadata(&json!({"metadata": {"name": "c".repeat(64)}}), true, &mut causes);
        assert_eq!(
            causes.len(),
            1,
            "a namespace or service name is a 63-character label"
        );
    }
}
