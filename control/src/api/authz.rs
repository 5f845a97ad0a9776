//! Authorization, as upstream's chain: `system:masters` may do anything; nodes
//! (`system:node:<name>` in `system:nodes`) may read, and write what a kubelet writes for itself
//! (its Node and its status, its Lease, pod status, pod deletion, events), with the objects
//! checked by [`super::noderestriction`] (its own pods, what they use); then RBAC
//! ([`super::rbac`]) for everyone. Refusals are upstream's `Forbidden` Status.

use axum::http::Method;

use super::App;
use super::handlers::Call;
use super::rbac::{Subject, Target};
use super::server::Identity;
use crate::objects::status::ApiError;

/// The Kubernetes verb of a request.
pub fn verb(method: &Method, call: &Call, watching: bool) -> &'static str {
    verb_for(method, call.name.is_some(), watching)
}

/// The Kubernetes verb of a request with `method` on one object (`named`) or a collection.
pub fn verb_for(method: &Method, named: bool, watching: bool) -> &'static str {
    match (method, named) {
        (&Method::GET, _) if watching => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// What the node authorizer lets node `node` do: read, and write what a kubelet writes for itself.
pub fn node_may(node: &str, verb: &str, target: &Target<'_>) -> bool {
    let Target::Resource {
        group,
        resource,
        subresource,
        namespace,
        name,
    } = *target
    else {
        return false;
    };
    if matches!(verb, "get" | "list" | "watch") {
        // One by one, and only those its pods use (`noderestriction`): never the whole set.
        return match (group, resource) {
            ("", "secrets" | "configmaps" | "persistentvolumeclaims" | "persistentvolumes") => verb == "get",
            _ => true,
        };
    }
    match (group, resource, subresource) {
        ("", "nodes", _) if verb == "create" => true,
        ("", "nodes", None | Some("status")) => name == Some(node) && matches!(verb, "update" | "patch"),
        ("coordination.k8s.io", "leases", None) => {
            namespace == Some("kube-node-lease") && (verb == "create" || name == Some(node))
        }
        ("", "pods", Some("status")) => matches!(verb, "update" | "patch"),
        // Only for pods bound to it (`token::create` checks the bound pod).
        ("", "serviceaccounts", Some("token")) => verb == "create",
        ("", "pods", None) => verb == "delete",
        ("", "events", None) | ("events.k8s.io", "events", None) => {
            matches!(verb, "create" | "update" | "patch")
        }
        _ => false,
    }
}

/// The node a request comes from, when it is a node's (`system:node:<name>` in `system:nodes`).
pub fn node_of(who: &Identity) -> Option<&str> {
    who.user
        .strip_prefix("system:node:")
        .filter(|_| who.groups.iter().any(|g| g == "system:nodes"))
}

/// Checks that `who` may do `verb` on the call's resource.
pub async fn authorize(app: &App, who: &Identity, verb: &str, call: &Call) -> Result<(), ApiError> {
    // A list or watch pinned to one name by `fieldSelector=metadata.name=NAME` is a request for
    // that object, as upstream's request info reads it (informers of one ConfigMap rely on it).
    let pinned = match (&call.name, verb) {
        (None, "list" | "watch") => call
            .query
            .get("fieldSelector")
            .and_then(|f| crate::objects::selector::FieldSelector::parse(f).ok())
            .and_then(|f| f.pinned("metadata.name").map(str::to_owned)),
        _ => None,
    };
    let target = Target::Resource {
        group: &call.info.group,
        resource: &call.info.plural,
        subresource: call.sub.as_deref(),
        namespace: call.ns.as_deref(),
        name: call.name.as_deref().or(pinned.as_deref()),
    };
    if node_of(who).is_some_and(|node| node_may(node, verb, &target)) {
        super::audit::note_decision("allow", "the node authorizer".into());
        return Ok(());
    }
    let decision = allow(app, who, verb, &target).await;
    let verdict = if decision.is_ok() { "allow" } else { "forbid" };
    super::audit::note_decision(verdict, String::new());
    decision
}

/// Checks that `who` may do `verb` on `target`: `system:masters` always, else RBAC.
pub async fn allow(app: &App, who: &Identity, verb: &str, target: &Target<'_>) -> Result<(), ApiError> {
    if who.groups.iter().any(|g| g == "system:masters")
        || app
            .rbac
            .allows(&app.objects, &Subject::of(who), verb, target)
            .await
    {
        return Ok(());
    }
    Err(forbidden(&who.user, verb, target))
}

/// Upstream's refusal: `pods "web" is forbidden: User "jane" cannot get resource "pods" in API
/// group "" in the namespace "default"`.
pub fn forbidden(user: &str, verb: &str, target: &Target<'_>) -> ApiError {
    let message = match *target {
        Target::Path(path) => format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\""),
        Target::Resource {
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let shown = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_owned(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_owned(),
            };
            let subject = match name {
                Some(name) => format!("{resource} \"{name}\" is forbidden"),
                None => format!("{resource} is forbidden"),
            };
            format!(
                "{subject}: User \"{user}\" cannot {verb} resource \"{shown}\" in API group \"{group}\" {scope}"
            )
        }
    };
    ApiError::new(403, "Forbidden", message)
}
