//! Custom resources against their CRD's structural schema: fields the schema does not declare are
//! pruned (or, under `fieldValidation=Strict`, refused with 400), defaults are filled and type,
//! `required` and `enum` errors are 422s. The schema walk itself is `objects/crd.rs`.

use serde_json::Value;

use super::{Attributes, Lookup, Plugin};
use crate::objects::status::ApiError;

/// Holds custom resources to their schema.
pub struct CustomResources;

#[tonic::async_trait]
impl Plugin for CustomResources {
    fn name(&self) -> &'static str {
        "CustomResourceSchema"
    }

    async fn admit(&self, _: &dyn Lookup, attrs: &Attributes<'_>, obj: &mut Value) -> Result<(), ApiError> {
        if attrs.info.crd.is_none() {
            return Ok(());
        }
        let report = crate::objects::crd::validate_custom(attrs.info, obj, attrs.old, attrs.strict);
        if !report.unknown.is_empty() {
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                report.unknown.join(", ")
            )));
        }
        attrs.invalid(obj, report.causes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::objects::admission::testing::{Objects, block_on, create};

    fn widgets() -> crate::objects::registry::ResourceInfo {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer"}
            }}}}}}]}});
        crate::objects::crd::resources(&crd).remove(0).as_ref().clone()
    }

    #[test]
    fn unknown_fields_are_pruned_or_refused_and_schema_errors_are_invalid() {
        let info = widgets();
        let mut attrs = create(&info, "default");
        let mut widget = json!({"metadata": {"name": "w"}, "spec": {"size": 3, "shape": "round"}});
        block_on(CustomResources.admit(&Objects::default(), &attrs, &mut widget)).unwrap();
        assert_eq!(
            widget["spec"],
            json!({"size": 3}),
            "the undeclared field is pruned"
        );

        attrs.strict = true;
        let mut widget = json!({"metadata": {"name": "w"}, "spec": {"size": 3, "shape": "round"}});
        let err = block_on(CustomResources.admit(&Objects::default(), &attrs, &mut widget)).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.starts_with("strict decoding error: "),
            "{}",
            err.message
        );

        attrs.strict = false;
        let mut widget = json!({"metadata": {"name": "w"}, "spec": {"size": "big"}});
        let err = block_on(CustomResources.admit(&Objects::default(), &attrs, &mut widget)).unwrap_err();
        assert_eq!(err.code, 422);
    }
}
