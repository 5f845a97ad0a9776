//! Upstream's ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` holds
//! the rules of every other ClusterRole its selectors match (in name order, without repeats), so
//! `admin`, `edit` and `view` grow with the `aggregate-to-*` roles that CRD and operator authors
//! label. Runs on every ClusterRole change (and every 5 s, as the shared loop does).

use std::sync::Arc;

use serde_json::{Value, json};

use super::runtime::{Caches, sync_on_changes};
use super::write::put_object;
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::selector::LabelSelector;

const MANAGER: &str = "clusterrole-aggregation-controller";

/// The rules `role`'s aggregation rule gathers from `roles`.
pub fn aggregate(role: &Value, roles: &[Arc<Value>]) -> Vec<Value> {
    let selectors: Vec<LabelSelector> = role["aggregationRule"]["clusterRoleSelectors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| LabelSelector::from_object(s).ok())
        .collect();
    let mut sources: Vec<&Arc<Value>> = roles
        .iter()
        .filter(|r| meta_str(r, "name") != meta_str(role, "name"))
        .filter(|r| {
            selectors
                .iter()
                .any(|s| !s.is_empty() && s.matches(r["metadata"].get("labels")))
        })
        .collect();
    sources.sort_by_key(|r| meta_str(r, "name").to_owned());
    let mut rules: Vec<Value> = Vec::new();
    for rule in sources
        .iter()
        .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
    {
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    rules
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let roles = caches.get(&app, &keys::prefix("rbac.authorization.k8s.io", "clusterroles"));
    let cache = roles.clone();
    sync_on_changes(app.clone(), &cache, move || {
        let (app, roles) = (app.clone(), roles.clone());
        async move {
            let all = roles.list(None);
            for role in all.iter().filter(|r| r["aggregationRule"].is_object()) {
                let rules = aggregate(role, &all);
                if role["rules"] == json!(rules) || (role["rules"].is_null() && rules.is_empty()) {
                    continue;
                }
                let mut next = (**role).clone();
                next["rules"] = json!(rules);
                if let Err(e) = put_object(
                    &app,
                    next,
                    "rbac.authorization.k8s.io",
                    "clusterroles",
                    None,
                    MANAGER,
                )
                .await
                {
                    tracing::debug!(error = %e, role = meta_str(role, "name"), "aggregating a ClusterRole");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_roles_gather_the_rules_of_the_roles_they_select() {
        let view = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]}});
        let rule = |r: &str| json!({"apiGroups": [""], "resources": [r], "verbs": ["get"]});
        let labelled = |name: &str, rules: Vec<Value>| {
            Arc::new(json!({"metadata": {"name": name,
                "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}, "rules": rules}))
        };
        let roles = vec![
            labelled("widgets-view", vec![rule("widgets")]),
            labelled("a-pods", vec![rule("pods"), rule("widgets")]),
            Arc::new(json!({"metadata": {"name": "other"}, "rules": [rule("secrets")]})),
        ];
        assert_eq!(aggregate(&view, &roles), vec![rule("pods"), rule("widgets")]);
    }
}
