use std::collections::HashSet;

use prost::Message;
use serde_json::{Value, json};

use super::*;

/// The parts of gnostic's `OpenAPIv2.proto` that kubectl reads, to decode what is served.
mod gnostic {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
        #[prost(message, optional, tag = "9")]
        pub definitions: Option<Definitions>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathItem {
        #[prost(message, optional, tag = "2")]
        pub get: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Operation {
        /// ParametersItem → Parameter → NonBodyParameter → QueryParameterSubSchema, each a
        /// one-field oneof here.
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<Wrapped<Wrapped<Query>>>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }
    /// A oneof whose member is at tag 1, or (for `Parameter`'s non-body member) tag 2.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Wrapped<T: prost::Message + Default + PartialEq + std::fmt::Debug> {
        #[prost(message, optional, tag = "1")]
        pub first: Option<T>,
        #[prost(message, optional, tag = "2")]
        pub second: Option<T>,
    }
    /// NonBodyParameter with its query member (tag 3).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Query {
        #[prost(message, optional, tag = "3")]
        pub query: Option<QueryParameterSubSchema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Definitions {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedSchema {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Schema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Schema {
        #[prost(string, tag = "1")]
        pub xref: String,
        #[prost(string, tag = "2")]
        pub format: String,
        #[prost(string, tag = "4")]
        pub description: String,
        #[prost(message, optional, tag = "5")]
        pub default: Option<Any>,
        #[prost(double, tag = "9")]
        pub minimum: f64,
        #[prost(int64, tag = "11")]
        pub max_length: i64,
        #[prost(message, repeated, tag = "20")]
        pub r#enum: Vec<Any>,
        #[prost(message, optional, boxed, tag = "21")]
        pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
        #[prost(message, optional, tag = "22")]
        pub r#type: Option<TypeItem>,
        #[prost(message, optional, tag = "23")]
        pub items: Option<ItemsItem>,
        #[prost(message, optional, tag = "25")]
        pub properties: Option<Properties>,
        #[prost(message, repeated, tag = "31")]
        pub vendor_extension: Vec<NamedAny>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AdditionalPropertiesItem {
        #[prost(oneof = "Additional", tags = "1, 2")]
        pub oneof: Option<Additional>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Additional {
        #[prost(message, tag = "1")]
        Schema(Box<Schema>),
        #[prost(bool, tag = "2")]
        Boolean(bool),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeItem {
        #[prost(string, repeated, tag = "1")]
        pub value: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ItemsItem {
        #[prost(message, repeated, tag = "1")]
        pub schema: Vec<Schema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Properties {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }
}

fn converted(mut v: Value) -> Value {
    to_v2(&mut v);
    v
}

#[test]
fn a_described_reference_is_a_ref_with_its_description() {
    let v3 = json!({"type": "object", "properties": {
        "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.Meta"}], "description": "Standard.", "default": {}},
        "list": {"type": "array", "items": {"allOf": [{"$ref": "#/components/schemas/io.k8s.Item"}], "default": {}}},
    }});
    assert_eq!(
        converted(v3),
        json!({"type": "object", "properties": {
            "metadata": {"$ref": "#/definitions/io.k8s.Meta", "description": "Standard.", "default": {}},
            "list": {"type": "array", "items": {"$ref": "#/definitions/io.k8s.Item", "default": {}}},
        }})
    );
}

#[test]
fn upstream_v2_rules_for_nullable_preserved_and_itemless_values() {
    let v3 = json!({"type": "object", "required": ["a", "b"], "properties": {
        "a": {"type": "object", "nullable": true, "properties": {"x": {"type": "string"}}},
        "b": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"y": {"type": "string"}}},
        "c": {"type": "array", "x-kubernetes-preserve-unknown-fields": true, "items": {"type": "string"}},
        "d": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true},
        // Field names that are also keywords stay fields.
        "not": {"type": "string"},
        "type": {"type": "string", "enum": ["A", "B"]},
    }});
    assert_eq!(
        converted(v3),
        json!({"type": "object", "required": ["b"], "properties": {
            "a": {},
            "b": {},
            "c": {},
            "d": {"x-kubernetes-int-or-string": true},
            "not": {"type": "string"},
            "type": {"type": "string", "enum": ["A", "B"]},
        }})
    );
}

/// What kubectl's `proto.NewOpenAPIData` refuses (kube-openapi `pkg/util/proto/document.go`),
/// checked over one schema; returns the first problem.
fn kubectl_refuses(s: &Value, names: &HashSet<&str>, path: &str) -> Option<String> {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        if s.get("type").is_some() || s.get("properties").is_some_and(|p| p != &json!({})) {
            return Some(format!("{path}: a $ref with a type or fields"));
        }
        let name = r.strip_prefix("#/definitions/")?;
        return (!names.contains(name)).then(|| format!("{path}: unknown model {name}"));
    }
    let types: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(t) => t.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if types.len() > 1 {
        return Some(format!("{path}: several types"));
    }
    match types.first().copied() {
        Some("array") => match &s["items"] {
            Value::Object(_) => kubectl_refuses(&s["items"], names, &format!("{path}[]")),
            _ => Some(format!("{path}: an array without one item schema")),
        },
        Some("object") | None => {
            for (k, p) in s["properties"].as_object().into_iter().flatten() {
                if let Some(e) = kubectl_refuses(p, names, &format!("{path}.{k}")) {
                    return Some(e);
                }
            }
            match &s["additionalProperties"] {
                a @ Value::Object(_) => kubectl_refuses(a, names, &format!("{path}{{}}")),
                _ => None,
            }
        }
        Some("string" | "number" | "integer" | "boolean") => None,
        Some(other) => Some(format!("{path}: unknown primitive type {other}")),
    }
}

#[test]
fn every_served_definition_is_one_kubectl_parses() {
    let doc = document(&Registry::new());
    let defs = doc["definitions"].as_object().unwrap();
    assert!(defs.len() > 200, "{} definitions", defs.len());
    let names: HashSet<&str> = defs.keys().map(String::as_str).collect();
    for (name, s) in defs {
        assert_eq!(kubectl_refuses(s, &names, name), None);
    }
    assert!(!doc.to_string().contains("allOf"));
}

#[test]
fn the_protobuf_document_carries_every_definition_with_its_fields_and_extensions() {
    let doc = document(&Registry::new());
    let bytes = protobuf(&doc);
    let decoded = gnostic::Document::decode(bytes.as_slice()).expect("a gnostic Document");
    assert_eq!(decoded.swagger, "2.0");
    assert_eq!(decoded.info.unwrap().title, "Kubernetes");
    let defs = decoded.definitions.unwrap().additional_properties;
    assert_eq!(defs.len(), doc["definitions"].as_object().unwrap().len());
    let find = |name: &str| {
        defs.iter()
            .find(|d| d.name == name)
            .and_then(|d| d.value.clone())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let field = |s: &gnostic::Schema, name: &str| {
        s.properties
            .as_ref()
            .and_then(|p| p.additional_properties.iter().find(|f| f.name == name))
            .and_then(|f| f.value.clone())
            .unwrap_or_else(|| panic!("no field {name}"))
    };

    let pod = find("io.k8s.api.core.v1.Pod");
    assert_eq!(pod.r#type.as_ref().unwrap().value, ["object"]);
    assert!(pod.description.starts_with("Pod is a collection of containers"));
    let gvk = pod
        .vendor_extension
        .iter()
        .find(|e| e.name == "x-kubernetes-group-version-kind")
        .and_then(|e| e.value.clone())
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&gvk.yaml).unwrap(),
        json!([{"group": "", "version": "v1", "kind": "Pod"}])
    );
    assert_eq!(
        field(&pod, "spec").xref,
        "#/definitions/io.k8s.api.core.v1.PodSpec"
    );

    let spec = find("io.k8s.api.core.v1.PodSpec");
    let containers = field(&spec, "containers");
    assert_eq!(containers.r#type.unwrap().value, ["array"]);
    assert_eq!(
        containers.items.unwrap().schema[0].xref,
        "#/definitions/io.k8s.api.core.v1.Container"
    );
    let merge_key = containers
        .vendor_extension
        .iter()
        .find(|e| e.name == "x-kubernetes-patch-merge-key")
        .and_then(|e| e.value.clone())
        .unwrap();
    assert_eq!(merge_key.yaml, "\"name\"");
    let node_selector = field(&spec, "nodeSelector");
    match node_selector.additional_properties.unwrap().oneof {
        Some(gnostic::Additional::Schema(s)) => assert_eq!(s.r#type.unwrap().value, ["string"]),
        other => panic!("nodeSelector's values: {other:?}"),
    }
}

#[test]
fn a_kinds_patch_path_says_it_takes_dry_run_as_kubectl_1_20_checks_before_diff() {
    let doc = document(&Registry::new());
    let decoded = gnostic::Document::decode(protobuf(&doc).as_slice()).unwrap();
    let paths = decoded.paths.unwrap().path;
    assert_eq!(paths.len(), doc["paths"].as_object().unwrap().len());
    let item = paths
        .iter()
        .find(|p| p.name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        .and_then(|p| p.value.clone())
        .unwrap();
    let patch = item.patch.unwrap();
    let gvk = patch
        .vendor_extension
        .iter()
        .find(|e| e.name == "x-kubernetes-group-version-kind")
        .and_then(|e| e.value.clone())
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&gvk.yaml).unwrap(),
        json!({"group": "apps", "version": "v1", "kind": "Deployment"})
    );
    let dry_run = patch
        .parameters
        .iter()
        .filter_map(|p| p.first.as_ref()?.second.as_ref()?.query.clone())
        .find(|q| q.name == "dryRun")
        .expect("a dryRun query parameter");
    assert_eq!(
        (dry_run.r#in.as_str(), dry_run.r#type.as_str()),
        ("query", "string")
    );
}
