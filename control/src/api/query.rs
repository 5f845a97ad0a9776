//! Query parameters checked as upstream checks them, before anything acts on them: booleans as
//! Go's `strconv.ParseBool`, integers as integers, enumerations against their values, field
//! selectors against the fields each resource supports. A typo is an error, never a silent
//! default (a misspelt `dryRun` must not write).

use std::collections::HashMap;

use axum::http::Method;
use serde_json::json;

use crate::objects::status::ApiError;

/// Boolean parameters; their values are rewritten to `true`/`false` once checked.
const BOOLS: &[&str] = &[
    "watch",
    "allowWatchBookmarks",
    "sendInitialEvents",
    "follow",
    "previous",
    "timestamps",
    "force",
    "stdin",
    "stdout",
    "stderr",
    "tty",
    "pretty",
    "insecureSkipTLSVerifyBackend",
    "orphanDependents",
];

/// Integer parameters and whether they may be negative.
const INTS: &[(&str, bool)] = &[
    ("limit", false),
    ("timeoutSeconds", false),
    ("gracePeriodSeconds", true),
    ("sinceSeconds", false),
    ("tailLines", false),
    ("limitBytes", false),
];

/// Parses a boolean as Go's `strconv.ParseBool`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The options kind whose validation upstream reports for a request with this method.
fn options_kind(method: &Method) -> &'static str {
    match *method {
        Method::POST => "CreateOptions",
        Method::PUT => "UpdateOptions",
        Method::PATCH => "PatchOptions",
        Method::DELETE => "DeleteOptions",
        _ => "ListOptions",
    }
}

/// 422 on the request's options, as upstream words it:
/// `DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: ...`.
fn unsupported(kind: &str, field: &str, value: &str, supported: &[&str]) -> ApiError {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    let message = format!(
        "Unsupported value: {value:?}: supported values: {}",
        list.join(", ")
    );
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("{kind}.meta.k8s.io \"\" is invalid: {field}: {message}"),
    );
    e.details = Some(json!({
        "group": "meta.k8s.io",
        "kind": kind,
        "causes": [{"reason": "FieldValueNotSupported", "message": message, "field": field}],
    }));
    e
}

/// Checks the parameters of a request on a resource and normalises booleans to `true`/`false`.
pub fn check(method: &Method, query: &mut HashMap<String, String>) -> Result<(), ApiError> {
    for name in BOOLS {
        if let Some(v) = query.get_mut(*name) {
            // A bare `?watch` means true, as upstream.
            let b = if v.is_empty() {
                true
            } else {
                parse_bool(v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name}: strconv.ParseBool: parsing {v:?}: invalid syntax"
                    ))
                })?
            };
            *v = b.to_string();
        }
    }
    for (name, negative_ok) in INTS {
        let Some(v) = query.get(*name).filter(|v| !v.is_empty()) else {
            continue;
        };
        let n: i64 = v.parse().map_err(|_| {
            ApiError::bad_request(format!("{name}: strconv.ParseInt: parsing {v:?}: invalid syntax"))
        })?;
        if n < 0 && !negative_ok {
            return Err(ApiError::bad_request(format!(
                "{name}: Invalid value: {n}: must be greater than or equal to 0"
            )));
        }
    }
    let kind = options_kind(method);
    if let Some(v) = query.get("dryRun").filter(|v| !v.is_empty() && *v != "All") {
        return Err(unsupported(kind, "dryRun", v, &["All"]));
    }
    if let Some(v) = query
        .get("propagationPolicy")
        .filter(|v| !matches!(v.as_str(), "" | "Foreground" | "Background" | "Orphan"))
    {
        return Err(unsupported(
            "DeleteOptions",
            "propagationPolicy",
            v,
            &["Foreground", "Background", "Orphan", "nil"],
        ));
    }
    if let Some(v) = query
        .get("resourceVersionMatch")
        .filter(|v| !matches!(v.as_str(), "" | "Exact" | "NotOlderThan"))
    {
        return Err(unsupported(
            "ListOptions",
            "resourceVersionMatch",
            v,
            &["Exact", "NotOlderThan", ""],
        ));
    }
    if let Some(v) = query
        .get("fieldValidation")
        .filter(|v| !matches!(v.as_str(), "" | "Ignore" | "Warn" | "Strict"))
    {
        return Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: {v:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
        )));
    }
    Ok(())
}

/// Whether `field` may appear in a field selector on `resource` of `group`, as upstream's
/// per-resource field label conversions allow (`metadata.name` and `metadata.namespace`
/// everywhere, plus each type's own).
pub fn selectable_field(group: &str, resource: &str, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    let own: &[&str] = match (group, resource) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "events") | ("events.k8s.io", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reportingController",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase", "name"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        ("", "services") => &["spec.clusterIP", "spec.type"],
        ("certificates.k8s.io", "certificatesigningrequests") => &["spec.signerName"],
        _ => &[],
    };
    own.contains(&field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn booleans_parse_as_go_does() {
        for (given, want) in [
            ("True", "true"),
            ("1", "true"),
            ("t", "true"),
            ("", "true"),
            ("FALSE", "false"),
            ("0", "false"),
        ] {
            let mut query = q(&[("watch", given)]);
            check(&Method::GET, &mut query).unwrap();
            assert_eq!(query["watch"], want, "{given}");
        }
        let e = check(&Method::GET, &mut q(&[("follow", "yes")])).unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn integers_and_enumerations_are_strict() {
        for bad in [
            ("limit", "-1"),
            ("limit", "abc"),
            ("timeoutSeconds", "-5"),
            ("gracePeriodSeconds", "abc"),
        ] {
            let e = check(&Method::DELETE, &mut q(&[bad])).unwrap_err();
            assert_eq!(e.code, 400, "{bad:?}");
        }
        assert!(
            check(
                &Method::DELETE,
                &mut q(&[("gracePeriodSeconds", "0"), ("limit", "5")])
            )
            .is_ok()
        );
        let e = check(&Method::POST, &mut q(&[("dryRun", "Garbage")])).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert!(
            e.message
                .starts_with("CreateOptions.meta.k8s.io \"\" is invalid: dryRun"),
            "{}",
            e.message
        );
        let e = check(&Method::DELETE, &mut q(&[("propagationPolicy", "Garbage")])).unwrap_err();
        assert!(
            e.message
                .contains("propagationPolicy: Unsupported value: \"Garbage\""),
            "{}",
            e.message
        );
        let e = check(&Method::GET, &mut q(&[("resourceVersionMatch", "Garbage")])).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            check(
                &Method::POST,
                &mut q(&[("dryRun", "All"), ("fieldValidation", "Strict")])
            )
            .is_ok()
        );
        assert_eq!(
            check(&Method::POST, &mut q(&[("fieldValidation", "strict")]))
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn field_selectors_follow_each_resource() {
        assert!(selectable_field("", "configmaps", "metadata.name"));
        assert!(selectable_field("", "pods", "spec.nodeName"));
        assert!(selectable_field("", "events", "involvedObject.name"));
        assert!(!selectable_field("", "configmaps", "data.x"));
        assert!(!selectable_field("apps", "deployments", "spec.replicas"));
    }
}
