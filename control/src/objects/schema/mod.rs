//! The schema of the built-in types: every message's fields with their JSON names, wire kinds
//! and patch strategies (`table.rs`, generated from upstream's `generated.proto` via the k8s-pb
//! crate). The protobuf codec decodes by it; writes check unknown fields, merge strategic
//! patches and track field ownership by it.

pub(crate) mod table;

/// The wire kind of a field.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// UTF-8 string.
    Str,
    /// Bytes (base64 in JSON).
    Bytes,
    /// Varint boolean.
    Bool,
    /// Varint integer (int32, int64, enumerations).
    Int,
    /// 64-bit float.
    F64,
    /// An embedded message, by full name.
    Message(&'static str),
    /// A map (repeated key/value entries).
    Map(&'static Kind, &'static Kind),
}

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    /// Field number.
    pub tag: u32,
    /// JSON name.
    pub name: &'static str,
    /// Wire kind.
    pub kind: Kind,
    /// Whether the field repeats (a JSON array).
    pub repeated: bool,
    /// Upstream marks the field `+optional`.
    pub optional: bool,
    /// Go embeds it with `json:",inline"`: its fields appear in the parent's JSON object.
    pub inline: bool,
    /// `x-kubernetes-patch-merge-key` ("" when none).
    pub merge_key: &'static str,
    /// `x-kubernetes-patch-strategy` (`merge`, `retainKeys`, `merge,retainKeys` or "").
    pub strategy: &'static str,
    /// `x-kubernetes-list-type` (`atomic`, `set`, `map` or "").
    pub list_type: &'static str,
    /// `x-kubernetes-list-map-keys`.
    pub map_keys: &'static [&'static str],
    /// Upstream's field documentation.
    pub doc: &'static str,
}

/// One message type.
#[derive(Debug)]
pub struct Message {
    /// Full name, e.g. `api.core.v1.Pod`.
    pub name: &'static str,
    /// Upstream's type documentation.
    pub doc: &'static str,
    /// Its fields.
    pub fields: &'static [Field],
}

impl Message {
    /// The field with this JSON name.
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.json_fields().into_iter().find(|f| f.name == name)
    }

    /// The fields as JSON shows them: inline (embedded) messages' fields in place of the inline field.
    pub fn json_fields(&self) -> Vec<&'static Field> {
        // Messages live in a static table, so their fields are 'static too.
        let fields: &'static [Field] = self.fields;
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            match (f.inline, message_of(f.kind)) {
                (true, Some(m)) => out.extend(m.json_fields()),
                _ => out.push(f),
            }
        }
        out
    }

    /// Whether values of this type are free-form JSON (CRD schemas, raw extensions), which have
    /// no fixed fields to check or merge by.
    /// The table spells them as k8s-pb does (`JsonSchemaProps`, `Json`).
    pub fn is_open(&self) -> bool {
        let type_name = self.name.rsplit('.').next().unwrap_or_default();
        type_name.starts_with("JsonSchemaProps")
            || type_name.starts_with("JSONSchemaProps")
            || type_name.eq_ignore_ascii_case("JSON")
            || type_name == "RawExtension"
    }
}

fn message_of(kind: Kind) -> Option<&'static Message> {
    match kind {
        Kind::Message(n) => message(n),
        _ => None,
    }
}

impl Field {
    /// The message type of the field's values (list items and map values included), unless it is
    /// a scalar or one of the types with a scalar JSON form (Time, Quantity, IntOrString, ...).
    pub fn message(&self) -> Option<&'static Message> {
        let name = match self.kind {
            Kind::Message(n) | Kind::Map(_, &Kind::Message(n)) => n,
            _ => return None,
        };
        if is_scalar_message(name) {
            return None;
        }
        message(name).filter(|m| !m.is_open())
    }

    /// Whether the field's JSON value is a map (object keyed by strings).
    pub fn is_map(&self) -> bool {
        matches!(self.kind, Kind::Map(..))
    }
}

/// Messages whose JSON form is a scalar (or free-form JSON).
fn is_scalar_message(name: &str) -> bool {
    matches!(
        name,
        "apimachinery.pkg.apis.meta.v1.Time"
            | "apimachinery.pkg.apis.meta.v1.MicroTime"
            | "apimachinery.pkg.apis.meta.v1.Duration"
            | "apimachinery.pkg.api.resource.Quantity"
            | "apimachinery.pkg.util.intstr.IntOrString"
            | "apimachinery.pkg.runtime.RawExtension"
            | "apimachinery.pkg.apis.meta.v1.FieldsV1"
    )
}

/// The message type with this full name.
pub fn message(name: &str) -> Option<&'static Message> {
    table::MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .map(|i| &table::MESSAGES[i])
}

/// The message that encodes `kind` in `apiVersion`.
pub fn message_for(api_version: &str, kind: &str) -> Option<&'static Message> {
    // The request options are registered in every group version, as upstream's
    // `metav1.AddToGroupVersion` does: client-go sends a core delete's DeleteOptions as `v1`.
    if matches!(
        kind,
        "DeleteOptions"
            | "ListOptions"
            | "GetOptions"
            | "CreateOptions"
            | "UpdateOptions"
            | "PatchOptions"
            | "WatchEvent"
    ) {
        return message(&format!("apimachinery.pkg.apis.meta.v1.{kind}"));
    }
    // Errors and discovery documents are `meta/v1` types served as `v1`.
    if api_version == "v1"
        && matches!(
            kind,
            "Status" | "APIVersions" | "APIGroupList" | "APIResourceList"
        )
    {
        return message(&format!("apimachinery.pkg.apis.meta.v1.{kind}"));
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    // Only built-in groups have messages: a custom resource's group has a dot and is not one of
    // Kubernetes' own (`*.k8s.io`), whatever its first label.
    if group.contains('.') && !group.ends_with(".k8s.io") {
        return None;
    }
    let package = match group {
        "" => format!("api.core.{version}"),
        "meta.k8s.io" => format!("apimachinery.pkg.apis.meta.{version}"),
        "apiextensions.k8s.io" => format!("apiextensions_apiserver.pkg.apis.apiextensions.{version}"),
        "apiregistration.k8s.io" => format!("kube_aggregator.pkg.apis.apiregistration.{version}"),
        g => format!("api.{}.{version}", g.split('.').next().unwrap_or(g)),
    };
    message(&format!("{package}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn crd_schemas_and_raw_json_are_open() {
        for open in [
            "apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps",
            "apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaPropsOrArray",
            "apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaPropsOrBool",
            "apiextensions_apiserver.pkg.apis.apiextensions.v1.Json",
            "apimachinery.pkg.runtime.RawExtension",
        ] {
            assert!(message(open).is_some_and(|m| m.is_open()), "{open}");
        }
        assert!(!message("api.core.v1.Pod").unwrap().is_open());
    }
}
