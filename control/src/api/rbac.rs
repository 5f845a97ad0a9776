//! RBAC, as upstream's authorizer: a request is allowed when a ClusterRoleBinding, or a
//! RoleBinding in the request's namespace, names the user (or one of its groups, or its service
//! account) and binds a role with a rule that covers the verb, API group, resource (with
//! `resource/subresource` and `*/subresource` forms), name and, for paths, the non-resource URL.
//! Roles and bindings are read from one cache of the `rbac.authorization.k8s.io` objects; a
//! denial first waits (briefly) for the cache to catch up with the store, so a binding just
//! written counts at once.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use super::server::Identity;
use crate::controllers::runtime::Cache;
use crate::objects::Objects;
use crate::objects::keys;

/// The RBAC group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What a request asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A resource request.
    Resource {
        /// API group.
        group: &'a str,
        /// Resource (plural).
        resource: &'a str,
        /// Subresource, if any.
        subresource: Option<&'a str>,
        /// Namespace, for namespaced requests.
        namespace: Option<&'a str>,
        /// Object name, when the request names one.
        name: Option<&'a str>,
    },
    /// A request for a path outside the resource API (`/healthz`, `/apis`, ...).
    Path(&'a str),
}

/// The user a decision is about: name and groups (with `system:authenticated`).
#[derive(Debug, Clone)]
pub struct Subject {
    /// User name.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl Subject {
    /// The authenticated caller.
    pub fn of(who: &Identity) -> Self {
        let mut groups = who.groups.clone();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".to_owned());
        }
        Self {
            user: who.user.clone(),
            groups,
        }
    }
}

fn strs(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// Whether a binding's subject is `who` (a service account's subject names its namespace, or
/// the binding's).
fn names(subject: &Value, who: &Subject, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => who.user == name,
        Some("Group") => who.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            who.user == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// Whether `rule` allows `verb` on `target`.
pub fn rule_allows(rule: &Value, verb: &str, target: &Target<'_>) -> bool {
    if !strs(&rule["verbs"]).any(|v| v == "*" || v == verb) {
        return false;
    }
    match *target {
        Target::Path(path) => strs(&rule["nonResourceURLs"]).any(|u| {
            u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
        }),
        Target::Resource {
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            if !strs(&rule["apiGroups"]).any(|g| g == "*" || g == group) {
                return false;
            }
            let combined = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_owned(),
            };
            let resource_ok = strs(&rule["resources"]).any(|r| {
                r == "*" || r == combined || subresource.is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
            });
            let names: Vec<&str> = strs(&rule["resourceNames"]).collect();
            resource_ok && (names.is_empty() || name.is_some_and(|n| names.contains(&n)))
        }
    }
}

/// The roles and bindings, and the decisions made from them.
#[derive(Debug, Default)]
pub struct Rbac {
    cache: OnceLock<Arc<Cache>>,
}

impl Rbac {
    fn cache(&self, objects: &Arc<Objects>) -> &Arc<Cache> {
        self.cache
            .get_or_init(|| Cache::start(objects.clone(), &keys::group_prefix(GROUP)))
    }

    /// The rules that apply to `who` in `namespace` (cluster-wide ones only when None): those of
    /// the roles its ClusterRoleBindings and, in the namespace, RoleBindings bind.
    pub fn rules(&self, objects: &Arc<Objects>, who: &Subject, namespace: Option<&str>) -> Vec<Value> {
        let cache = self.cache(objects);
        let role_rules = |binding: &Value, binding_ns: Option<&str>| -> Vec<Value> {
            let role = &binding["roleRef"];
            let name = role["name"].as_str().unwrap_or_default();
            let key = match (role["kind"].as_str(), binding_ns) {
                (Some("ClusterRole"), _) => keys::object(&keys::prefix(GROUP, "clusterroles"), None, name),
                (Some("Role"), Some(ns)) => keys::object(&keys::prefix(GROUP, "roles"), Some(ns), name),
                _ => return Vec::new(),
            };
            cache
                .get(&key)
                .and_then(|r| r["rules"].as_array().cloned())
                .unwrap_or_default()
        };
        let mut rules = Vec::new();
        for binding in cache.under(&keys::prefix(GROUP, "clusterrolebindings")) {
            if binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| names(s, who, ""))
            {
                rules.extend(role_rules(&binding, None));
            }
        }
        if let Some(ns) = namespace {
            for binding in cache.under(&keys::in_namespace(&keys::prefix(GROUP, "rolebindings"), ns)) {
                if binding["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| names(s, who, ns))
                {
                    rules.extend(role_rules(&binding, Some(ns)));
                }
            }
        }
        rules
    }

    /// Whether the roles bound to `who` allow `verb` on `target`.
    pub fn allows_now(&self, objects: &Arc<Objects>, who: &Subject, verb: &str, target: &Target<'_>) -> bool {
        let namespace = match target {
            Target::Resource { namespace, .. } => *namespace,
            Target::Path(_) => None,
        };
        self.rules(objects, who, namespace)
            .iter()
            .any(|rule| rule_allows(rule, verb, target))
    }

    /// Like [`allows_now`](Self::allows_now), after the cache has caught up with the store when
    /// the answer would be no (at most a second).
    pub async fn allows(
        &self,
        objects: &Arc<Objects>,
        who: &Subject,
        verb: &str,
        target: &Target<'_>,
    ) -> bool {
        if self.allows_now(objects, who, verb, target) {
            return true;
        }
        let cache = self.cache(objects);
        let current = objects.store.revision();
        if cache.revision() >= current {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), cache.wait_for(current)).await;
        self.allows_now(objects, who, verb, target)
    }
}

/// Whether the rules `have` cover every permission of `rule` (in `namespace`): each verb on each
/// group, resource and name it names, or each path. Wildcards are covered only by wildcards.
pub fn covers(have: &[Value], rule: &Value, namespace: Option<&str>) -> bool {
    let list = |v: &Value| -> Vec<String> { strs(v).map(str::to_owned).collect() };
    let verbs = list(&rule["verbs"]);
    let urls = list(&rule["nonResourceURLs"]);
    let allowed = |verb: &str, target: &Target<'_>| have.iter().any(|r| rule_allows(r, verb, target));
    if !urls.is_empty() {
        return verbs
            .iter()
            .all(|v| urls.iter().all(|u| allowed(v, &Target::Path(u))));
    }
    let names = list(&rule["resourceNames"]);
    let names: Vec<Option<&str>> = if names.is_empty() {
        vec![None]
    } else {
        names.iter().map(|n| Some(n.as_str())).collect()
    };
    let groups = list(&rule["apiGroups"]);
    let resources = list(&rule["resources"]);
    verbs.iter().all(|verb| {
        groups.iter().all(|group| {
            resources.iter().all(|resource| {
                let (resource, subresource) = match resource.split_once('/') {
                    Some((r, s)) => (r, Some(s)),
                    None => (resource.as_str(), None),
                };
                names.iter().all(|name| {
                    allowed(
                        verb,
                        &Target::Resource {
                            group,
                            resource,
                            subresource,
                            namespace,
                            name: *name,
                        },
                    )
                })
            })
        })
    })
}

/// Upstream's escalation check for a non-admin writing a role or binding: a role may grant only
/// what the writer holds (unless it may `escalate` roles), a binding may bind only a role whose
/// rules the writer holds (unless it may `bind` that role). `object` is the role or binding as
/// it would be stored; `rules_of` reads a bound role.
pub async fn check_escalation(
    app: &super::App,
    who: &Identity,
    kind: &str,
    namespace: Option<&str>,
    object: &Value,
) -> Result<(), crate::objects::status::ApiError> {
    let subject = Subject::of(who);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let binding = kind.ends_with("Binding");
    let (verb, role_kind, role_name) = if binding {
        let role = &object["roleRef"];
        (
            "bind",
            role["kind"].as_str().unwrap_or_default(),
            role["name"].as_str().unwrap_or_default(),
        )
    } else {
        ("escalate", kind, name)
    };
    let role_resource = if role_kind == "ClusterRole" {
        "clusterroles"
    } else {
        "roles"
    };
    let target = Target::Resource {
        group: GROUP,
        resource: role_resource,
        subresource: None,
        namespace,
        name: Some(role_name),
    };
    if app.rbac.allows(&app.objects, &subject, verb, &target).await {
        return Ok(());
    }
    let rules: Vec<Value> = if binding {
        let key = match role_kind {
            "ClusterRole" => keys::object(&keys::prefix(GROUP, "clusterroles"), None, role_name),
            _ => keys::object(&keys::prefix(GROUP, "roles"), namespace, role_name),
        };
        let role = app
            .objects
            .store
            .get(&key)
            .await
            .map_err(crate::objects::status::ApiError::internal)?
            .map(|kv| crate::objects::meta::from_kv(&kv));
        match role {
            Some(role) => role["rules"].as_array().cloned().unwrap_or_default(),
            None => {
                return Err(crate::objects::status::ApiError::new(
                    404,
                    "NotFound",
                    format!("{role_resource}.{GROUP} \"{role_name}\" not found"),
                ));
            }
        }
    } else {
        object["rules"].as_array().cloned().unwrap_or_default()
    };
    let have = app.rbac.rules(&app.objects, &subject, namespace);
    let missing: Vec<String> = rules
        .iter()
        .filter(|r| !covers(&have, r, namespace))
        .map(Value::to_string)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let resource = match kind {
        "Role" => "roles",
        "ClusterRole" => "clusterroles",
        "RoleBinding" => "rolebindings",
        _ => "clusterrolebindings",
    };
    Err(crate::objects::status::ApiError::new(
        403,
        "Forbidden",
        format!(
            "{resource}.{GROUP} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            subject.user,
            subject.groups,
            missing.join("\n")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pods(verb_name: Option<&str>) -> Target<'_> {
        Target::Resource {
            group: "",
            resource: "pods",
            subresource: None,
            namespace: Some("default"),
            name: verb_name,
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_names_and_paths_as_upstream() {
        let rule = json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]});
        assert!(rule_allows(&rule, "get", &pods(Some("a"))));
        assert!(!rule_allows(&rule, "delete", &pods(Some("a"))));
        let log = Target::Resource {
            group: "",
            resource: "pods",
            subresource: Some("log"),
            namespace: Some("default"),
            name: Some("a"),
        };
        assert!(rule_allows(&rule, "get", &log));
        let exec = Target::Resource {
            group: "",
            resource: "pods",
            subresource: Some("exec"),
            namespace: Some("default"),
            name: Some("a"),
        };
        assert!(!rule_allows(&rule, "create", &exec));
        assert!(rule_allows(
            &json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/exec"]}),
            "create",
            &exec
        ));
        let named =
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"]});
        assert!(rule_allows(&named, "get", &pods(Some("a"))));
        assert!(!rule_allows(&named, "get", &pods(Some("b"))));
        assert!(!rule_allows(&named, "get", &pods(None)));
        let apps = Target::Resource {
            group: "apps",
            resource: "deployments",
            subresource: None,
            namespace: None,
            name: None,
        };
        assert!(!rule_allows(&rule, "get", &apps));
        let urls = json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]});
        assert!(rule_allows(&urls, "get", &Target::Path("/healthz")));
        assert!(rule_allows(&urls, "get", &Target::Path("/apis/apps/v1")));
        assert!(!rule_allows(&urls, "get", &Target::Path("/metrics")));
        assert!(!rule_allows(&urls, "get", &pods(None)));
    }

    #[test]
    fn a_rule_is_covered_only_by_rules_that_grant_all_it_grants() {
        let have =
            vec![json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]})];
        assert!(covers(
            &have,
            &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
            Some("a")
        ));
        assert!(!covers(
            &have,
            &json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]}),
            Some("a")
        ));
        assert!(!covers(
            &have,
            &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*"]}),
            Some("a")
        ));
        assert!(!covers(
            &have,
            &json!({"verbs": ["get"], "nonResourceURLs": ["/metrics"]}),
            None
        ));
        let all = vec![json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})];
        assert!(covers(
            &all,
            &json!({"verbs": ["*"], "apiGroups": ["apps"], "resources": ["*"], "resourceNames": ["x"]}),
            None
        ));
    }

    #[test]
    fn subjects_name_users_groups_and_service_accounts() {
        let who = Subject {
            user: "system:serviceaccount:ci:builder".into(),
            groups: vec!["system:serviceaccounts".into(), "system:authenticated".into()],
        };
        assert!(names(
            &json!({"kind": "ServiceAccount", "name": "builder"}),
            &who,
            "ci"
        ));
        assert!(!names(
            &json!({"kind": "ServiceAccount", "name": "builder"}),
            &who,
            "other"
        ));
        assert!(names(
            &json!({"kind": "ServiceAccount", "name": "builder", "namespace": "ci"}),
            &who,
            "x"
        ));
        assert!(names(
            &json!({"kind": "Group", "name": "system:authenticated"}),
            &who,
            ""
        ));
        assert!(!names(&json!({"kind": "User", "name": "builder"}), &who, ""));
    }
}
