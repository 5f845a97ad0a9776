//! Upstream's NamespaceLifecycle plugin: nothing is created in a namespace that does not exist
//! (404) or is being deleted (403).

use serde_json::Value;

use super::{Attributes, Lookup, Operation, Plugin};
use crate::objects::keys;
use crate::objects::status::{ApiError, Target};

/// Refuses creates in missing or terminating namespaces.
pub struct NamespaceLifecycle;

#[tonic::async_trait]
impl Plugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    async fn validate(&self, lookup: &dyn Lookup, attrs: &Attributes<'_>, _: &Value) -> Result<(), ApiError> {
        let Some(ns) = attrs
            .namespace
            .filter(|_| attrs.info.namespaced && attrs.operation == Operation::Create)
        else {
            return Ok(());
        };
        // As upstream's: this member's state first, a linearizable read only when the namespace
        // is not there (it may have just been created through another member).
        let key = keys::object(keys::NAMESPACES, None, ns);
        let deleting = match lookup.deleting_local(&key)? {
            Some(deleting) => Some(deleting),
            None => lookup
                .get(&key)
                .await?
                .map(|n| n["metadata"]["deletionTimestamp"].is_string()),
        };
        match deleting {
            None => Err(ApiError::not_found(Target {
                group: "",
                resource: "namespaces",
                kind: "Namespace",
                name: ns,
            })),
            Some(true) => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    attrs.info.plural, attrs.url_name
                ),
            )),
            Some(false) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::objects::admission::testing::{Objects, block_on, create, resource};

    fn namespaces() -> Objects {
        let mut objects = Objects::default();
        objects.0.insert(
            keys::object(keys::NAMESPACES, None, "live"),
            json!({"metadata": {"name": "live"}}),
        );
        objects.0.insert(
            keys::object(keys::NAMESPACES, None, "going"),
            json!({"metadata": {"name": "going", "deletionTimestamp": "2026-12-02T00:00:00Z"}}),
        );
        objects
    }

    #[test]
    fn creates_need_a_live_namespace() {
        let configmaps = resource("", "v1", "configmaps");
        let check =
            |ns| block_on(NamespaceLifecycle.validate(&namespaces(), &create(&configmaps, ns), &json!({})));
        check("live").unwrap();
        let missing = check("nowhere").unwrap_err();
        assert_eq!(missing.code, 404);
        assert_eq!(missing.message, "namespaces \"nowhere\" not found");
        let going = check("going").unwrap_err();
        assert_eq!(going.code, 403);
        assert!(
            going.message.contains("because it is being terminated"),
            "{}",
            going.message
        );
    }

    #[test]
    fn updates_and_cluster_scoped_objects_pass() {
        let configmaps = resource("", "v1", "configmaps");
        let mut attrs = create(&configmaps, "going");
        attrs.operation = Operation::Update;
        block_on(NamespaceLifecycle.validate(&namespaces(), &attrs, &json!({}))).unwrap();
        let nodes = resource("", "v1", "nodes");
        block_on(NamespaceLifecycle.validate(&namespaces(), &create(&nodes, "nowhere"), &json!({}))).unwrap();
    }
}
