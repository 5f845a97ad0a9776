//! The `networking.k8s.io` kinds' defaults and checks, as upstream's: an Ingress's rules and
//! backends, an IngressClass's controller, a NetworkPolicy's policy types and ports. Called by the
//! `defaults` and `validation` plugins.

use serde_json::{Value, json};

use crate::objects::meta::items_mut;
use crate::objects::validation::Causes;

/// Upstream's defaults for `kind` of `networking.k8s.io`.
pub(super) fn defaults(kind: &str, obj: &mut Value) {
    if kind != "NetworkPolicy" {
        return;
    }
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    for dir in ["ingress", "egress"] {
        for rule in items_mut(spec, dir) {
            for port in items_mut(rule, "ports") {
                if port.get("protocol").is_none() {
                    port["protocol"] = json!("TCP");
                }
            }
        }
    }
    if spec
        .get("policyTypes")
        .is_none_or(|t| t.as_array().is_none_or(Vec::is_empty))
    {
        let mut types = vec![json!("Ingress")];
        if spec["egress"].as_array().is_some_and(|e| !e.is_empty()) {
            types.push(json!("Egress"));
        }
        spec["policyTypes"] = Value::Array(types);
    }
}

/// Checks `kind` of `networking.k8s.io`.
pub(super) fn validate(kind: &str, obj: &Value, causes: &mut Causes) {
    let spec = &obj["spec"];
    match kind {
        "Ingress" => {
            if spec.get("defaultBackend").is_none() && spec["rules"].as_array().is_none_or(Vec::is_empty) {
                causes.push((
                    "spec".into(),
                    "Invalid value: \"\": either `defaultBackend` or `rules` must be specified".into(),
                ));
            }
            if let Some(b) = spec.get("defaultBackend") {
                check_backend("spec.defaultBackend", b, causes);
            }
            for (i, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
                for (j, path) in rule["http"]["paths"].as_array().into_iter().flatten().enumerate() {
                    check_path(&format!("spec.rules[{i}].http.paths[{j}]"), path, causes);
                }
            }
        }
        "IngressClass" if spec["controller"].as_str().is_none_or(str::is_empty) => {
            causes.push(("spec.controller".into(), "Required value".into()));
        }
        "NetworkPolicy" => {
            for (i, t) in spec["policyTypes"].as_array().into_iter().flatten().enumerate() {
                if !matches!(t.as_str(), Some("Ingress" | "Egress")) {
                    causes.push((
                        format!("spec.policyTypes[{i}]"),
                        format!("Unsupported value: {t}: supported values: \"Egress\", \"Ingress\""),
                    ));
                }
            }
            for dir in ["ingress", "egress"] {
                for (i, rule) in spec[dir].as_array().into_iter().flatten().enumerate() {
                    for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                        let p = &port["protocol"];
                        if !(p.is_null() || matches!(p.as_str(), Some("TCP" | "UDP" | "SCTP"))) {
                            causes.push((
                                format!("spec.{dir}[{i}].ports[{j}].protocol"),
                                format!(
                                    "Unsupported value: {p}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                                ),
                            ));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn check_path(field: &str, path: &Value, causes: &mut Causes) {
    match path["pathType"].as_str() {
        None | Some("") => causes.push((
            format!("{field}.pathType"),
            "Required value: pathType must be specified".into(),
        )),
        Some("Exact" | "Prefix") => {
            let p = path["path"].as_str().unwrap_or_default();
            if !p.starts_with('/') {
                causes.push((
                    format!("{field}.path"),
                    format!("Invalid value: \"{p}\": must be an absolute path"),
                ));
            }
        }
        Some("ImplementationSpecific") => {}
        Some(other) => causes.push((
            format!("{field}.pathType"),
            format!(
                "Unsupported value: \"{other}\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""
            ),
        )),
    }
    check_backend(&format!("{field}.backend"), &path["backend"], causes);
}

fn check_backend(field: &str, backend: &Value, causes: &mut Causes) {
    let service = backend.get("service").filter(|s| !s.is_null());
    let resource = backend.get("resource").filter(|r| !r.is_null());
    match (service, resource) {
        (Some(_), Some(_)) => causes.push((
            field.to_owned(),
            "Invalid value: \"\": cannot set both resource and service backends".into(),
        )),
        (None, None) => causes.push((
            field.to_owned(),
            "Invalid value: \"\": resource or service backend is required".into(),
        )),
        (Some(s), None) => {
            if s["name"].as_str().is_none_or(str::is_empty) {
                causes.push((format!("{field}.service.name"), "Required value".into()));
            }
            let port = &s["port"];
            match (port.get("name"), port.get("number")) {
                (Some(_), Some(_)) => causes.push((
                    format!("{field}.service.port"),
                    "Invalid value: \"\": cannot set both port name & port number".into(),
                )),
                (None, None) => causes.push((
                    format!("{field}.service.port.name"),
                    "Required value: port name or number is required".into(),
                )),
                (None, Some(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => causes.push((
                    format!("{field}.service.port.number"),
                    format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                )),
                _ => {}
            }
        }
        (None, Some(r)) => {
            if r["kind"].as_str().is_none_or(str::is_empty) {
                causes.push((format!("{field}.resource.kind"), "Required value".into()));
            }
            if r["name"].as_str().is_none_or(str::is_empty) {
                causes.push((format!("{field}.resource.name"), "Required value".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(kind: &str, obj: &Value) -> Vec<String> {
        let mut out = Causes::new();
        validate(kind, obj, &mut out);
        out.into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn ingress_rules_need_path_types_and_one_backend() {
        let ok = json!({"spec": {"rules": [{"host": "a.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
        assert!(causes("Ingress", &ok).is_empty());
        let bad = json!({"spec": {"rules": [{"http": {"paths": [
            {"path": "x", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {}}}},
            {"path": "/", "backend": {}},
            {"path": "/", "pathType": "Glob", "backend": {"service": {"name": "", "port": {"number": 0}}}}]}}]}});
        assert_eq!(
            causes("Ingress", &bad),
            [
                "spec.rules[0].http.paths[0].path",
                "spec.rules[0].http.paths[0].backend.service.port.name",
                "spec.rules[0].http.paths[1].pathType",
                "spec.rules[0].http.paths[1].backend",
                "spec.rules[0].http.paths[2].pathType",
                "spec.rules[0].http.paths[2].backend.service.name",
                "spec.rules[0].http.paths[2].backend.service.port.number",
            ]
        );
        assert_eq!(causes("Ingress", &json!({"spec": {}})), ["spec"]);
        assert!(causes("IngressClass", &json!({"spec": {"controller": "example.com/c"}})).is_empty());
        assert_eq!(causes("IngressClass", &json!({"spec": {}})), ["spec.controller"]);
    }

    #[test]
    fn network_policies_default_their_types_and_protocols() {
        let mut np = json!({"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}});
        defaults("NetworkPolicy", &mut np);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        let mut ingress_only = json!({"spec": {"podSelector": {}}});
        defaults("NetworkPolicy", &mut ingress_only);
        assert_eq!(ingress_only["spec"]["policyTypes"], json!(["Ingress"]));
        assert!(causes("NetworkPolicy", &np).is_empty());
        let bad =
            json!({"spec": {"policyTypes": ["Sideways"], "ingress": [{"ports": [{"protocol": "ICMP"}]}]}});
        assert_eq!(
            causes("NetworkPolicy", &bad),
            ["spec.policyTypes[0]", "spec.ingress[0].ports[0].protocol"]
        );
    }
}
