//! Upstream's Priority plugin: a new pod's `priorityClassName` (or, without one, the class marked
//! `globalDefault`) becomes its `spec.priority` and `spec.preemptionPolicy`; a class that does not
//! exist is refused.

use serde_json::{Value, json};

use super::{Attributes, Lookup, Operation, Plugin};
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::status::ApiError;

/// Resolves a new pod's priority class.
pub struct Priority;

#[tonic::async_trait]
impl Plugin for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    async fn admit(
        &self,
        lookup: &dyn Lookup,
        attrs: &Attributes<'_>,
        pod: &mut Value,
    ) -> Result<(), ApiError> {
        if attrs.operation != Operation::Create || !attrs.is("", "Pod") {
            return Ok(());
        }
        let name = pod["spec"]["priorityClassName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let class = if name.is_empty() {
            let all = lookup.list_local(keys::PRIORITY_CLASSES)?;
            all.into_iter().find(|c| c["globalDefault"] == json!(true))
        } else {
            let key = keys::object(keys::PRIORITY_CLASSES, None, &name);
            let class = match lookup.get_local(&key)? {
                Some(class) => Some(class),
                None => lookup.get(&key).await?,
            };
            let Some(class) = class else {
                let pod_name = if attrs.url_name.is_empty() {
                    meta_str(pod, "name")
                } else {
                    attrs.url_name
                };
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!("pods \"{pod_name}\" is forbidden: no PriorityClass with name {name} was found"),
                ));
            };
            Some(class)
        };
        if let Some(class) = class {
            pod["spec"]["priorityClassName"] = json!(meta_str(&class, "name"));
            pod["spec"]["priority"] = class["value"].clone();
            pod["spec"]["preemptionPolicy"] = class["preemptionPolicy"].clone();
            if pod["spec"]["preemptionPolicy"].is_null() {
                pod["spec"]["preemptionPolicy"] = json!("PreemptLowerPriority");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::admission::testing::{Objects, block_on, create, resource};

    fn classes() -> Objects {
        let mut objects = Objects::default();
        for (name, value, default, policy) in [
            ("low", 10, false, None),
            ("everyday", 100, true, None),
            ("polite", 1000, false, Some("Never")),
        ] {
            let mut class = json!({"metadata": {"name": name}, "value": value, "globalDefault": default});
            if let Some(p) = policy {
                class["preemptionPolicy"] = json!(p);
            }
            objects
                .0
                .insert(keys::object(keys::PRIORITY_CLASSES, None, name), class);
        }
        objects
    }

    fn admit(objects: &Objects, pod: &mut Value) -> Result<(), ApiError> {
        let pods = resource("", "v1", "pods");
        block_on(Priority.admit(objects, &create(&pods, "default"), pod))
    }

    #[test]
    fn a_named_class_sets_priority_and_preemption_policy() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"priorityClassName": "polite"}});
        admit(&classes(), &mut pod).unwrap();
        assert_eq!(pod["spec"]["priority"], 1000);
        assert_eq!(pod["spec"]["preemptionPolicy"], "Never");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"priorityClassName": "low"}});
        admit(&classes(), &mut pod).unwrap();
        assert_eq!(pod["spec"]["priority"], 10);
        assert_eq!(pod["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    }

    #[test]
    fn without_a_class_the_global_default_applies_and_without_one_nothing() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {}});
        admit(&classes(), &mut pod).unwrap();
        assert_eq!(pod["spec"]["priorityClassName"], "everyday");
        assert_eq!(pod["spec"]["priority"], 100);
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {}});
        admit(&Objects::default(), &mut pod).unwrap();
        assert_eq!(pod, json!({"metadata": {"name": "p"}, "spec": {}}));
    }

    #[test]
    fn an_unknown_class_is_forbidden() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"priorityClassName": "gold"}});
        let err = admit(&classes(), &mut pod).unwrap_err();
        assert_eq!(err.code, 403);
        assert!(
            err.message
                .contains("pods \"p\" is forbidden: no PriorityClass with name gold")
        );
    }

    #[test]
    fn updates_and_other_kinds_are_left_alone() {
        let pods = resource("", "v1", "pods");
        let mut attrs = create(&pods, "default");
        attrs.operation = Operation::Update;
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"priorityClassName": "gold"}});
        block_on(Priority.admit(&classes(), &attrs, &mut pod)).unwrap();
        let configmaps = resource("", "v1", "configmaps");
        let mut cm = json!({"metadata": {"name": "c"}, "spec": {"priorityClassName": "gold"}});
        block_on(Priority.admit(&classes(), &create(&configmaps, "default"), &mut cm)).unwrap();
    }
}
