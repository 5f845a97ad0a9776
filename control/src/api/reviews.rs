//! The review APIs, answered in place and never stored: `authorization.k8s.io`
//! (SelfSubjectAccessReview — `kubectl auth can-i` —, SubjectAccessReview,
//! LocalSubjectAccessReview, SelfSubjectRulesReview — `kubectl auth can-i --list`) and
//! `authentication.k8s.io` (TokenReview, SelfSubjectReview — `kubectl auth whoami`).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::App;
use super::handlers::{Call, json_response, parse_body};
use super::rbac::{Subject, Target};
use super::server::Identity;
use crate::objects::status::ApiError;

/// A 422 for the review `call` with one field error.
fn invalid(call: &Call, field: &str, message: &str) -> ApiError {
    ApiError::invalid(call.info.target(""), &[(field.to_owned(), message.to_owned())])
}

/// What the access reviews ask about: a resource request or a path.
fn target<'a>(
    call: &Call,
    spec: &'a Value,
    namespace: Option<&'a str>,
) -> Result<(&'a str, Target<'a>), ApiError> {
    let resource = &spec["resourceAttributes"];
    let path = &spec["nonResourceAttributes"];
    let s = |v: &'a Value| v.as_str().filter(|s| !s.is_empty());
    match (resource.is_object(), path.is_object()) {
        (true, false) => Ok((
            s(&resource["verb"]).unwrap_or_default(),
            Target::Resource {
                group: s(&resource["group"]).unwrap_or_default(),
                resource: s(&resource["resource"]).unwrap_or_default(),
                subresource: s(&resource["subresource"]),
                namespace: namespace.or(s(&resource["namespace"])),
                name: s(&resource["name"]),
            },
        )),
        (false, true) => Ok((
            s(&path["verb"]).unwrap_or_default(),
            Target::Path(s(&path["path"]).unwrap_or_default()),
        )),
        _ => Err(invalid(
            call,
            "spec.resourceAttributes",
            "Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// The node `who` is, when it is one (`system:node:<name>` in `system:nodes`).
fn node_of(who: &Subject) -> Option<&str> {
    who.user
        .strip_prefix("system:node:")
        .filter(|_| who.groups.iter().any(|g| g == "system:nodes"))
}

/// Whether `who` may `verb` `target`, through the same chain requests go through:
/// `system:masters`, the node authorizer, RBAC.
async fn decide(app: &App, who: &Subject, verb: &str, target: &Target<'_>) -> Value {
    if who.groups.iter().any(|g| g == "system:masters") {
        return json!({"allowed": true, "reason": "RBAC: allowed"});
    }
    if node_of(who).is_some_and(|node| super::authz::node_may(node, verb, target)) {
        return json!({"allowed": true});
    }
    if app.rbac.allows(&app.objects, who, verb, target).await {
        json!({"allowed": true, "reason": "RBAC: allowed"})
    } else {
        json!({"allowed": false})
    }
}

/// The rules `who` has in `namespace`, as SelfSubjectRulesReview lists them. A node's are
/// incomplete, as upstream says: what the node authorizer allows depends on the object asked for.
fn rules_review(app: &App, who: &Subject, namespace: &str) -> Value {
    let mut rules = app.rbac.rules(&app.objects, who, Some(namespace));
    if who.groups.iter().any(|g| g == "system:masters") {
        rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    let (urls, resources): (Vec<Value>, Vec<Value>) =
        rules.into_iter().partition(|r| r["nonResourceURLs"].is_array());
    let resources: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let mut out =
                json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"]});
            if r["resourceNames"].is_array() {
                out["resourceNames"] = r["resourceNames"].clone();
            }
            out
        })
        .collect();
    let urls: Vec<Value> = urls
        .into_iter()
        .map(|r| json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}))
        .collect();
    let mut review = json!({"resourceRules": resources, "nonResourceRules": urls, "incomplete": false});
    if node_of(who).is_some() {
        review["incomplete"] = json!(true);
        review["evaluationError"] = json!("node authorizer does not support user rule resolution");
    }
    review
}

/// Answers a review: the request with its `status` filled in (201, as upstream).
pub async fn create(app: &App, call: &Call, body: &[u8], who: &Identity) -> Result<Response, ApiError> {
    // Reviews have no metadata to print: no Table of them (upstream's 406).
    if call.table || call.partial.is_some() {
        return Err(ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "the resource {} does not support being converted to a Table",
                call.info.target("").qualified()
            ),
        ));
    }
    let mut review = parse_body(body, &call.content_type)?;
    review["apiVersion"] = json!(call.info.api_version());
    review["kind"] = json!(call.info.kind);
    review["metadata"] = json!({"creationTimestamp": null});
    let caller = Subject::of(who);
    let spec = review["spec"].clone();
    let status = match call.info.kind.as_str() {
        "SelfSubjectAccessReview" => {
            let (verb, target) = target(call, &spec, None)?;
            decide(app, &caller, verb, &target).await
        }
        "LocalSubjectAccessReview" | "SubjectAccessReview" => {
            let local = call.info.kind == "LocalSubjectAccessReview";
            let asked = spec["resourceAttributes"]["namespace"]
                .as_str()
                .unwrap_or_default();
            if local && asked != call.ns.as_deref().unwrap_or_default() {
                return Err(invalid(
                    call,
                    "spec.resourceAttributes.namespace",
                    "Invalid value: must match metadata.namespace",
                ));
            }
            let user = spec["user"].as_str().unwrap_or_default();
            let groups: Vec<String> = spec["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect();
            if user.is_empty() && groups.is_empty() {
                return Err(invalid(
                    call,
                    "spec.user",
                    "Invalid value: at least one of user or group must be specified",
                ));
            }
            let subject = Subject {
                user: user.to_owned(),
                groups,
            };
            let (verb, target) = target(call, &spec, local.then_some(asked))?;
            decide(app, &subject, verb, &target).await
        }
        "SelfSubjectRulesReview" => {
            let ns = spec["namespace"].as_str().unwrap_or_default();
            if ns.is_empty() {
                return Err(invalid(call, "spec.namespace", "Required value"));
            }
            rules_review(app, &caller, ns)
        }
        "SelfSubjectReview" => json!({"userInfo": {"username": caller.user, "groups": caller.groups}}),
        "TokenReview" => {
            let token = spec["token"].as_str().unwrap_or_default();
            match super::token::authenticate(app, token).await {
                Ok(id) => {
                    let user = Subject::of(&id);
                    json!({"authenticated": true, "user": {"username": user.user, "groups": user.groups},
                        "audiences": [super::token::ISSUER]})
                }
                Err(_) => json!({"authenticated": false, "error": "invalid bearer token"}),
            }
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    review["status"] = status;
    Ok(json_response(StatusCode::CREATED, &review))
}
