//! `/openapi/v2`: the Swagger 2.0 document older clients read, as JSON and in gnostic's protobuf
//! form (`OpenAPIv2.proto`), which kubectl up to 1.26 asks for by default for `kubectl explain`,
//! client-side validation and the strategic-merge patch metadata of `kubectl apply`.
//!
//! Each definition is the OpenAPI 3 schema of `/openapi/v3` turned into what upstream publishes
//! for v2: references point at `#/definitions/`, a reference with a description is a `$ref` with
//! siblings (not OpenAPI 3's one-element `allOf`), and the rules of upstream's
//! `ToStructuralOpenAPIV2` apply, so kubectl's schema parser (which rejects arrays without items,
//! several types, or a `$ref` beside a type) accepts every definition.

use serde_json::{Map, Value, json};

use super::discovery::openapi_v3_doc;
use crate::objects::registry::Registry;

/// The Content-Type of the protobuf document.
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The whole document, as JSON.
pub fn document(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for (g, vs) in registry.groups() {
        for v in vs {
            let Some(doc) = openapi_v3_doc(registry, &g, &v) else {
                continue;
            };
            for (p, item) in doc["paths"].as_object().into_iter().flatten() {
                let mut item = item.clone();
                for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                    if let Some(m) = op.as_object_mut() {
                        m.remove("requestBody");
                        // Swagger 2.0 query parameters carry their type themselves.
                        for param in m
                            .get_mut("parameters")
                            .and_then(Value::as_array_mut)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(schema) = param.as_object_mut().and_then(|p| p.remove("schema")) {
                                param["type"] = schema["type"].clone();
                            }
                        }
                    }
                }
                paths.insert(p.clone(), item);
            }
            for (k, s) in doc["components"]["schemas"].as_object().into_iter().flatten() {
                // A custom resource that keeps unknown fields at its root is any object in v2:
                // kubectl would refuse the fields its schema does not list.
                let s = if s["x-kubernetes-preserve-unknown-fields"] == true {
                    json!({"type": "object", "x-kubernetes-group-version-kind": s["x-kubernetes-group-version-kind"]})
                } else {
                    let mut s = s.clone();
                    to_v2(&mut s);
                    s
                };
                definitions.insert(k.clone(), s);
            }
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0-skiff"}, "paths": paths, "definitions": definitions})
}

/// Turns an OpenAPI 3 schema into its Swagger 2.0 form, as upstream publishes it.
fn to_v2(schema: &mut Value) {
    let Value::Object(m) = schema else { return };
    // A reference with a description: OpenAPI 3 wraps it in a one-element allOf.
    if !m.contains_key("$ref")
        && let Some(Value::Array(all)) = m.get("allOf")
        && let [only] = all.as_slice()
        && let Some(only) = only.as_object()
        && only.len() == 1
        && let Some(r) = only.get("$ref").cloned()
    {
        m.remove("allOf");
        m.insert("$ref".into(), r);
    }
    if let Some(Value::String(r)) = m.get_mut("$ref") {
        if let Some(name) = r.strip_prefix("#/components/schemas/") {
            *r = format!("#/definitions/{name}");
        }
        // A `$ref` may carry a description, never a type or fields (kubectl refuses both).
        m.remove("type");
        m.remove("properties");
    }
    // The rest is upstream's ToStructuralOpenAPIV2: no junctors,
    for k in ["allOf", "anyOf", "oneOf", "not"] {
        m.remove(k);
    }
    // nullable values untyped and without fields, and not required,
    let nullable = |s: &Value| s["nullable"] == true;
    let nullable_fields: Vec<String> = m
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, s)| nullable(s))
        .map(|(k, _)| k.clone())
        .collect();
    if m.get("additionalProperties").is_some_and(nullable) {
        m.remove("required");
    }
    if let Some(Value::Array(required)) = m.get_mut("required") {
        required.retain(|r| !r.as_str().is_some_and(|r| nullable_fields.iter().any(|f| f == r)));
    }
    if m.remove("nullable") == Some(Value::Bool(true)) {
        m.remove("type");
        m.remove("items");
        m.remove("properties");
    }
    // values that keep unknown fields without a field list,
    if m.remove("x-kubernetes-preserve-unknown-fields") == Some(Value::Bool(true)) {
        m.remove("items");
        m.remove("properties");
        if m.get("type").and_then(Value::as_str) == Some("object") {
            m.remove("type");
        }
    }
    // and no arrays without items.
    if !m.contains_key("items") && m.get("type").and_then(Value::as_str) == Some("array") {
        m.remove("type");
    }
    for s in m
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|p| p.values_mut())
    {
        to_v2(s);
    }
    for k in ["additionalProperties", "items"] {
        match m.get_mut(k) {
            Some(Value::Array(items)) => items.iter_mut().for_each(to_v2),
            Some(s) => to_v2(s),
            None => {}
        }
    }
}

/// The document in gnostic's protobuf form (`openapi_v2.Document`): the header, the paths (kubectl
/// 1.20 looks for the `dryRun` parameter of a kind's PATCH before `kubectl diff` and server-side
/// dry runs) and every definition with all of its schema keywords and vendor extensions.
pub fn protobuf(doc: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer(&mut out);
    w.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    w.message(2, |w| {
        w.string(1, doc["info"]["title"].as_str().unwrap_or_default());
        w.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    });
    // Paths { repeated NamedPathItem path = 2; }
    w.message(8, |w| {
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            w.message(2, |w| {
                w.string(1, path);
                w.message(2, |w| path_item(w, item));
            });
        }
    });
    w.message(9, |w| {
        for (name, schema) in doc["definitions"].as_object().into_iter().flatten() {
            named_schema(w, 1, name, schema);
        }
    });
    out
}

/// `PathItem`: its operations by method.
fn path_item(w: &mut Writer<'_>, item: &Value) {
    for (field, method) in [
        (2, "get"),
        (3, "put"),
        (4, "post"),
        (5, "delete"),
        (6, "options"),
        (7, "head"),
        (8, "patch"),
    ] {
        if let Some(op) = item.get(method).filter(|op| op.is_object()) {
            w.message(field, |w| operation(w, op));
        }
    }
}

/// `Operation`: parameters, responses and vendor extensions.
fn operation(w: &mut Writer<'_>, op: &Value) {
    for (field, key) in [(2, "summary"), (3, "description"), (5, "operationId")] {
        if let Some(v) = op[key].as_str() {
            w.string(field, v);
        }
    }
    for (field, key) in [(1, "tags"), (6, "produces"), (7, "consumes")] {
        for v in op[key].as_array().into_iter().flatten().filter_map(Value::as_str) {
            w.string(field, v);
        }
    }
    for p in op["parameters"].as_array().into_iter().flatten() {
        // ParametersItem { Parameter parameter = 1; } → Parameter { body = 1 | non_body = 2 }
        w.message(8, |w| w.message(1, |w| parameter(w, p)));
    }
    // Responses { repeated NamedResponseValue response_code = 1; }
    if let Some(responses) = op["responses"].as_object() {
        w.message(9, |w| {
            for (code, r) in responses {
                w.message(1, |w| {
                    w.string(1, code);
                    // ResponseValue { Response response = 1; } → Response { description = 1; schema = 2 }
                    w.message(2, |w| {
                        w.message(1, |w| {
                            w.string(1, r["description"].as_str().unwrap_or_default());
                            if r["schema"].is_object() {
                                w.message(2, |w| w.message(1, |w| schema_fields(w, &r["schema"])));
                            }
                        })
                    });
                });
            }
        });
    }
    extensions(w, 13, op);
}

/// `Parameter`: a body parameter with its schema, or a query, path, header or form parameter.
fn parameter(w: &mut Writer<'_>, p: &Value) {
    let text = |w: &mut Writer<'_>, field: u32, key: &str| {
        if let Some(v) = p[key].as_str() {
            w.string(field, v);
        }
    };
    let required = |w: &mut Writer<'_>, field: u32| {
        if p["required"] == true {
            w.varint_field(field, 1);
        }
    };
    let location = p["in"].as_str().unwrap_or_default();
    if location == "body" {
        // BodyParameter { description = 1; name = 2; in = 3; required = 4; schema = 5; }
        return w.message(1, |w| {
            text(w, 1, "description");
            text(w, 2, "name");
            text(w, 3, "in");
            required(w, 4);
            if p["schema"].is_object() {
                w.message(5, |w| schema_fields(w, &p["schema"]));
            }
        });
    }
    // NonBodyParameter { header = 1; form_data = 2; query = 3; path = 4; }: each starts with
    // required = 1, in = 2, description = 3, name = 4; the type follows at 6 for query and form
    // parameters (after allow_empty_value = 5) and at 5 for the others.
    let (which, type_field) = match location {
        "header" => (1, 5),
        "formData" => (2, 6),
        "path" => (4, 5),
        _ => (3, 6),
    };
    w.message(2, |w| {
        w.message(which, |w| {
            required(w, 1);
            text(w, 2, "in");
            text(w, 3, "description");
            text(w, 4, "name");
            text(w, type_field, "type");
            text(w, type_field + 1, "format");
        })
    });
}

/// `repeated NamedAny vendor_extension`: the `x-` keys of a JSON object.
fn extensions(w: &mut Writer<'_>, field: u32, v: &Value) {
    for (k, v) in v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("x-"))
    {
        w.message(field, |w| {
            w.string(1, k);
            any(w, 2, v);
        });
    }
}

/// `NamedSchema { name = 1; value = 2 }`.
fn named_schema(w: &mut Writer<'_>, field: u32, name: &str, schema: &Value) {
    w.message(field, |w| {
        w.string(1, name);
        w.message(2, |w| schema_fields(w, schema));
    });
}

/// `Any { yaml = 2 }`: JSON is YAML, which is how gnostic's readers decode it.
fn any(w: &mut Writer<'_>, field: u32, value: &Value) {
    w.message(field, |w| w.string(2, &value.to_string()));
}

/// The fields of a gnostic `Schema`.
fn schema_fields(w: &mut Writer<'_>, s: &Value) {
    let Some(m) = s.as_object() else { return };
    let str_field = |w: &mut Writer<'_>, field: u32, key: &str| {
        if let Some(v) = m.get(key).and_then(Value::as_str) {
            w.string(field, v);
        }
    };
    let num_field = |w: &mut Writer<'_>, field: u32, key: &str| {
        if let Some(v) = m.get(key).and_then(Value::as_f64) {
            w.double(field, v);
        }
    };
    let int_field = |w: &mut Writer<'_>, field: u32, key: &str| {
        if let Some(v) = m.get(key).and_then(Value::as_i64) {
            w.varint_field(field, v as u64);
        }
    };
    let bool_field = |w: &mut Writer<'_>, field: u32, key: &str| {
        if m.get(key).and_then(Value::as_bool) == Some(true) {
            w.varint_field(field, 1);
        }
    };
    str_field(w, 1, "$ref");
    str_field(w, 2, "format");
    str_field(w, 3, "title");
    str_field(w, 4, "description");
    if let Some(d) = m.get("default") {
        any(w, 5, d);
    }
    num_field(w, 6, "multipleOf");
    num_field(w, 7, "maximum");
    bool_field(w, 8, "exclusiveMaximum");
    num_field(w, 9, "minimum");
    bool_field(w, 10, "exclusiveMinimum");
    int_field(w, 11, "maxLength");
    int_field(w, 12, "minLength");
    str_field(w, 13, "pattern");
    int_field(w, 14, "maxItems");
    int_field(w, 15, "minItems");
    bool_field(w, 16, "uniqueItems");
    int_field(w, 17, "maxProperties");
    int_field(w, 18, "minProperties");
    for r in m.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = r.as_str() {
            w.string(19, r);
        }
    }
    for e in m.get("enum").and_then(Value::as_array).into_iter().flatten() {
        any(w, 20, e);
    }
    // AdditionalPropertiesItem { oneof { Schema schema = 1; bool boolean = 2; } }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => w.message(21, |w| w.varint_field(2, u64::from(*b))),
        Some(s @ Value::Object(_)) => w.message(21, |w| w.message(1, |w| schema_fields(w, s))),
        _ => {}
    }
    // TypeItem { repeated string value = 1; }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        w.message(22, |w| types.iter().for_each(|t| w.string(1, t)));
    }
    // ItemsItem { repeated Schema schema = 1; }
    match m.get("items") {
        Some(Value::Array(items)) => w.message(23, |w| {
            for i in items {
                w.message(1, |w| schema_fields(w, i));
            }
        }),
        Some(i @ Value::Object(_)) => w.message(23, |w| w.message(1, |w| schema_fields(w, i))),
        _ => {}
    }
    for a in m.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        w.message(24, |w| schema_fields(w, a));
    }
    // Properties { repeated NamedSchema additional_properties = 1; }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        w.message(25, |w| {
            for (name, s) in props {
                named_schema(w, 1, name, s);
            }
        });
    }
    str_field(w, 26, "discriminator");
    bool_field(w, 27, "readOnly");
    if let Some(e) = m.get("example") {
        any(w, 30, e);
    }
    extensions(w, 31, s);
}

/// Protocol buffers' wire format, as far as the document needs it.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn varint_field(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
    fn double(&mut self, field: u32, v: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.key(field, 2);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
    }
    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    /// An embedded message, written by `body`.
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Writer<'_>)) {
        let mut inner = Vec::new();
        body(&mut Writer(&mut inner));
        self.bytes(field, &inner);
    }
}

#[cfg(test)]
mod tests;
