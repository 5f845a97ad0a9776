//! Discovery (`/api`, `/apis`, per group-version resource lists), `/version`, and the OpenAPI
//! documents kubectl reads: `/openapi/v3` to learn that the server validates fields itself and
//! which resources take which patch types, `/openapi/v2` for older clients.

use serde_json::{Value, json};

use super::protobuf::{Kind, Message};
use crate::objects::registry::Registry;

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-skiff",
        "gitCommit": env!("SKIFF_GIT_COMMIT"),
        "gitTreeState": env!("SKIFF_GIT_TREE_STATE"),
        "buildDate": "2026-11-26T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

/// `/skiff/v1/version`: Skiff's own version, which agents check theirs against when they start
/// (an agent may be one minor version older than the control plane, never newer).
pub fn skiff_version() -> Value {
    json!({
        "version": skiff_common::version::VERSION,
        "kubernetes": version()["gitVersion"],
    })
}

/// `/api`.
pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0]})
}

/// `/apis`.
pub fn groups(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_entry(&g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`.
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    registry
        .groups()
        .into_iter()
        .find(|(g, _)| g == name)
        .map(|(g, vs)| {
            let mut e = group_entry(&g, &vs);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        })
}

/// `/api/v1` or `/apis/GROUP/VERSION`.
pub fn resources(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let rs = registry.in_group_version(group, version);
    if rs.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let list: Vec<Value> = rs.iter().flat_map(|r| r.discovery()).collect();
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per group-version.
pub fn openapi_v3_root(registry: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, vs) in registry.groups() {
        for v in vs {
            let p = gv_path(&g, &v);
            let hash = registry.in_group_version(&g, &v).len();
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash:016X}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// The GVK extension: a single object on operations, a list on schemas (as upstream).
fn gvk_ext(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// `/openapi/v3/api/v1` etc.: paths (with the `fieldValidation` parameter kubectl checks for) and a
/// schema per kind (properties are open; the server validates).
pub fn openapi_v3_doc(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let rs = registry.in_group_version(group, version);
    if rs.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        {"name": "force", "in": "query", "schema": {"type": "boolean"}},
    ]);
    for r in &rs {
        let schema_name = match r.schema() {
            Some(root) => component_name(root.name),
            None => schema_name(group, version, &r.kind),
        };
        let reference = json!({"$ref": format!("#/components/schemas/{schema_name}")});
        let body = |types: &[&str]| {
            let content: serde_json::Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": reference.clone()})))
                .collect();
            json!({"content": content, "required": true})
        };
        let ext = gvk_ext(group, version, &r.kind);
        let base = if r.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, version),
                r.plural
            )
        } else {
            format!("/{}/{}", gv_path(group, version), r.plural)
        };
        // Strategic merge patch is accepted for built-in kinds but not advertised here: kubectl then
        // builds its patches from its compiled-in patch metadata, which is exact.
        let patch_types = [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ];
        paths.insert(
            base.clone(),
            json!({
                "get": {"x-kubernetes-group-version-kind": ext, "x-kubernetes-action": "list", "responses": {"200": {"description": "OK"}}},
                "post": {"x-kubernetes-group-version-kind": ext, "x-kubernetes-action": "post", "parameters": params, "requestBody": body(&["*/*"]), "responses": {"201": {"description": "Created"}}},
            }),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": {"x-kubernetes-group-version-kind": ext, "x-kubernetes-action": "get", "responses": {"200": {"description": "OK"}}},
                "put": {"x-kubernetes-group-version-kind": ext, "x-kubernetes-action": "put", "parameters": params, "requestBody": body(&["*/*"]), "responses": {"200": {"description": "OK"}}},
                "patch": {"x-kubernetes-group-version-kind": ext, "x-kubernetes-action": "patch", "parameters": params, "requestBody": body(&patch_types), "responses": {"200": {"description": "OK"}}},
                "delete": {"x-kubernetes-group-version-kind": ext, "x-kubernetes-action": "delete", "responses": {"200": {"description": "OK"}}},
            }),
        );
        if let Some(root) = r.schema() {
            // Built-in kinds: the full schema, from the same table the server validates with.
            add_message_schemas(root, &mut schemas);
            if let Some(root_schema) = schemas.get_mut(&schema_name) {
                root_schema["x-kubernetes-group-version-kind"] = json!([ext]);
            }
            continue;
        }
        // A custom resource's definition is its CRD's schema as written (no schema: any object),
        // as upstream publishes it.
        let mut schema = match crd_schema(r) {
            Some(mut schema) => {
                kube_native(&mut schema, true, &mut schemas);
                schema
            }
            None => json!({"type": "object"}),
        };
        schema["x-kubernetes-group-version-kind"] = json!([ext]);
        schemas.insert(schema_name, schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-skiff"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The component name upstream uses for a message (`io.k8s.api.core.v1.Pod`).
fn component_name(message: &str) -> String {
    format!(
        "io.k8s.{}",
        message.replace("apiextensions_apiserver", "apiextensions-apiserver")
    )
}

/// The JSON schema of one field's values (without list wrapping).
fn value_schema(kind: Kind, defs: &mut serde_json::Map<String, Value>) -> Value {
    match kind {
        Kind::Str => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int => json!({"type": "integer", "format": "int64"}),
        Kind::F64 => json!({"type": "number", "format": "double"}),
        Kind::Map(_, v) => json!({"type": "object", "additionalProperties": value_schema(*v, defs)}),
        Kind::Message(name) => match name {
            "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
                json!({"type": "string", "format": "date-time"})
            }
            "apimachinery.pkg.apis.meta.v1.Duration" => json!({"type": "string"}),
            "apimachinery.pkg.api.resource.Quantity" => {
                json!({"type": "string", "x-kubernetes-int-or-string": true})
            }
            "apimachinery.pkg.util.intstr.IntOrString" => json!({"x-kubernetes-int-or-string": true}),
            "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
                json!({"type": "object"})
            }
            _ => match super::protobuf::message(name) {
                Some(m) if !m.is_open() => {
                    add_message_schemas(m, defs);
                    json!({"allOf": [{"$ref": format!("#/components/schemas/{}", component_name(name))}]})
                }
                _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            },
        },
    }
}

/// Adds the schema of `message` and every message it reaches to `defs`.
fn add_message_schemas(message: &'static Message, defs: &mut serde_json::Map<String, Value>) {
    let name = component_name(message.name);
    if defs.contains_key(&name) {
        return;
    }
    defs.insert(name.clone(), json!({}));
    let mut properties = serde_json::Map::new();
    for f in message.json_fields() {
        let mut prop = if f.repeated {
            json!({"type": "array", "items": value_schema(f.kind, defs)})
        } else {
            value_schema(f.kind, defs)
        };
        if !f.doc.is_empty() {
            prop["description"] = json!(f.doc);
        }
        for (key, value) in [
            ("x-kubernetes-patch-merge-key", f.merge_key),
            ("x-kubernetes-patch-strategy", f.strategy),
            ("x-kubernetes-list-type", f.list_type),
        ] {
            if !value.is_empty() {
                prop[key] = json!(value);
            }
        }
        if !f.map_keys.is_empty() {
            prop["x-kubernetes-list-map-keys"] = json!(f.map_keys);
        }
        properties.insert(f.name.to_owned(), prop);
    }
    // Kinds (what has object or list metadata) carry their type meta, as upstream's TypeMeta.
    let kind = message.json_fields().into_iter().any(|f| {
        f.name == "metadata"
            && matches!(f.kind, Kind::Message(m) if m == OBJECT_META || m == "apimachinery.pkg.apis.meta.v1.ListMeta")
    });
    if kind {
        let mut with_type_meta = type_meta();
        with_type_meta.extend(properties);
        properties = with_type_meta;
    }
    defs.insert(
        name,
        json!({"type": "object", "description": message.doc, "properties": properties}),
    );
}

const OBJECT_META: &str = "apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// `apiVersion` and `kind`, as upstream's TypeMeta documents them.
fn type_meta() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object.\nServers should convert recognized schemas to the latest internal value, and\nmay reject unrecognized values.\nMore info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
    m.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents.\nServers may infer this from the endpoint the client submits requests to.\nCannot be updated.\nIn CamelCase.\nMore info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
    m
}

/// A custom resource's schema as upstream publishes it (`buildKubeNative`): its type meta and
/// object metadata added at the root and on every embedded resource.
fn kube_native(schema: &mut Value, root: bool, defs: &mut serde_json::Map<String, Value>) {
    let Some(m) = schema.as_object_mut() else { return };
    for k in ["additionalProperties", "items"] {
        if let Some(s) = m.get_mut(k) {
            kube_native(s, false, defs);
        }
    }
    for s in m
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|p| p.values_mut())
    {
        kube_native(s, false, defs);
    }
    let embedded = m.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true));
    if !root && !embedded {
        return;
    }
    if let Some(meta) = super::protobuf::message(OBJECT_META) {
        add_message_schemas(meta, defs);
    }
    let props = m.entry("properties").or_insert_with(|| json!({}));
    if let Some(props) = props.as_object_mut() {
        props.extend(type_meta());
        props.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": format!("#/components/schemas/{}", component_name(OBJECT_META))}],
                   "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}),
        );
    }
    if embedded {
        let required = m.entry("required").or_insert_with(|| json!([]));
        if let Some(required) = required.as_array_mut() {
            for k in ["kind", "apiVersion"] {
                if !required.iter().any(|r| r == k) {
                    required.push(json!(k));
                }
            }
        }
    }
}

fn crd_schema(r: &crate::objects::registry::ResourceInfo) -> Option<Value> {
    let crd = r.crd.as_ref()?;
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == r.version.as_str())
        .and_then(|v| v["schema"]["openAPIV3Schema"].as_object().cloned())
        .map(Value::Object)
}

fn schema_name(group: &str, version: &str, kind: &str) -> String {
    let g = match group {
        "" => "io.k8s.api.core".to_owned(),
        "apps" | "batch" => format!("io.k8s.api.{group}"),
        "discovery.k8s.io" => "io.k8s.api.discovery".to_owned(),
        "coordination.k8s.io" => "io.k8s.api.coordination".to_owned(),
        "apiextensions.k8s.io" => "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_owned(),
        other => other.split('.').rev().collect::<Vec<_>>().join("."),
    };
    format!("{g}.{version}.{kind}")
}

/// The Content-Type of aggregated discovery responses.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Aggregated discovery (`apidiscovery.k8s.io/v2`): every group, version and resource in one
/// response, for `/api` (`core`) or `/apis` (the named groups).
pub fn aggregated(registry: &Registry, core: bool) -> Value {
    let mut items = Vec::new();
    for (group, versions) in registry.groups() {
        if group.is_empty() != core {
            continue;
        }
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                let resources: Vec<Value> = registry
                    .in_group_version(&group, v)
                    .iter()
                    .map(|r| {
                        let subresources: Vec<Value> = r
                            .subresources
                            .iter()
                            .map(|s| {
                                let (g, ver, kind, verbs): (&str, &str, &str, &[&str]) = match s.as_str() {
                                    "scale" => ("autoscaling", "v1", "Scale", &["get", "patch", "update"]),
                                    "binding" => ("", "v1", "Binding", &["create"]),
                                    "eviction" => ("policy", "v1", "Eviction", &["create"]),
                                    _ => (&r.group, &r.version, &r.kind, &["get", "patch", "update"]),
                                };
                                json!({"subresource": s, "responseKind": {"group": g, "version": ver, "kind": kind}, "verbs": verbs})
                            })
                            .collect();
                        let mut entry = json!({
                            "resource": r.plural,
                            "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": r.singular,
                            "verbs": if r.is_review() { json!(["create"]) } else {
                                json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"])
                            },
                        });
                        if !r.short_names.is_empty() {
                            entry["shortNames"] = json!(r.short_names);
                        }
                        if !r.categories.is_empty() {
                            entry["categories"] = json!(r.categories);
                        }
                        if !subresources.is_empty() {
                            entry["subresources"] = json!(subresources);
                        }
                        entry
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(json!({"metadata": {"name": group}, "versions": versions}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
