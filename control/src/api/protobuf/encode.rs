//! Encoding responses as Kubernetes protobuf for clients that ask for it first in `Accept`
//! (client-go's protobuf mode: kubectl's typed commands, Kubernetes' own components, many
//! controllers). The inverse of the decoder, by the same field table: every field present in
//! the JSON is written (zero values too, so Go's optional pointers keep them), unknown fields are
//! left out, and `Time`, `Quantity`, `IntOrString`, `Duration`, `RawExtension` and `FieldsV1`
//! take their message forms. Objects are wrapped as upstream's serializer wraps them: the magic
//! `k8s\0`, then a `runtime.Unknown` naming the type and carrying the object's bytes.

use base64::Engine;
use serde_json::Value;

use super::{Kind, MAGIC, Message, message, message_for};

/// The media type of protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The media type of a protobuf watch: length-prefixed `WatchEvent` frames.
pub const WATCH_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf;stream=watch";

/// Whether the client prefers protobuf: the first media type in `Accept` it will take (q > 0)
/// is plain `application/vnd.kubernetes.protobuf` (no `as=` conversion, not a stream).
pub fn preferred(accept: &str) -> bool {
    for media in accept.split(',') {
        let mut params = media.split(';').map(str::trim);
        let ty = params.next().unwrap_or_default();
        let params: Vec<&str> = params.collect();
        if params.iter().any(|p| p.replace(' ', "") == "q=0") || ty.is_empty() {
            continue;
        }
        return ty.eq_ignore_ascii_case(CONTENT_TYPE) && !params.iter().any(|p| p.starts_with("as="));
    }
    false
}

/// The message of a built-in kind that protobuf can carry. Custom resources have none, and
/// CustomResourceDefinitions are left to JSON (their schemas' JSON forms are not their
/// messages' field by field).
pub fn message_of_kind(api_version: &str, kind: &str) -> Option<&'static Message> {
    message_for(api_version, kind).filter(|m| !m.name.starts_with("apiextensions"))
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(tag) << 3, out);
    varint(v, out);
}

/// Writes a length-delimited field.
pub(super) fn put_bytes(tag: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(tag) << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// An integer as JSON may spell it (a whole float from YAML included).
fn int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|u| u as i64))
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
}

/// Go's `time.ParseDuration` forms (`1h2m3.5s`, `300ms`, `-1s`) in nanoseconds.
fn parse_duration(s: &str) -> Option<i64> {
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|n| *n > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some((sign * total).round() as i64)
}

/// The fields of a message whose JSON form is a scalar (or free-form JSON), or None for a
/// message with ordinary fields. An unreadable value encodes as nothing.
fn special(name: &str, v: &Value) -> Option<Option<Vec<u8>>> {
    let mut out = Vec::new();
    match name {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let Some(t) = v.as_str().and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            }) else {
                return Some(None);
            };
            put_varint(1, t.unix_timestamp() as u64, &mut out);
            if t.nanosecond() > 0 {
                put_varint(2, u64::from(t.nanosecond()), &mut out);
            }
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let Some(ns) = v.as_str().and_then(parse_duration) else {
                return Some(None);
            };
            put_varint(1, ns as u64, &mut out);
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Some(None),
            };
            put_bytes(1, s.as_bytes(), &mut out);
        }
        "apimachinery.pkg.util.intstr.IntOrString" => match v {
            Value::String(s) => {
                put_varint(1, 1, &mut out);
                put_bytes(3, s.as_bytes(), &mut out);
            }
            other => {
                let Some(i) = int(other) else {
                    return Some(None);
                };
                put_varint(1, 0, &mut out);
                put_varint(2, i as u64, &mut out);
            }
        },
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            put_bytes(1, &serde_json::to_vec(v).unwrap_or_default(), &mut out);
        }
        _ => return None,
    }
    Some(Some(out))
}

/// One value of a field of kind `kind`, tagged `tag`.
fn encode_value(tag: u32, kind: Kind, v: &Value, out: &mut Vec<u8>) {
    match kind {
        Kind::Str => {
            if let Some(s) = v.as_str() {
                put_bytes(tag, s.as_bytes(), out);
            }
        }
        Kind::Bytes => {
            if let Some(b) = v
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            {
                put_bytes(tag, &b, out);
            }
        }
        Kind::Bool => {
            if let Some(b) = v.as_bool() {
                put_varint(tag, u64::from(b), out);
            }
        }
        Kind::Int => {
            if let Some(i) = int(v) {
                put_varint(tag, i as u64, out);
            }
        }
        Kind::F64 => {
            if let Some(f) = v.as_f64() {
                varint(u64::from(tag) << 3 | 1, out);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
        }
        Kind::Message(name) => {
            if let Some(body) = encode_named(name, v) {
                put_bytes(tag, &body, out);
            }
        }
        Kind::Map(..) => {}
    }
}

/// A message by name: its special form, or its fields.
fn encode_named(name: &str, v: &Value) -> Option<Vec<u8>> {
    if let Some(special) = special(name, v) {
        return special;
    }
    let msg = message(name)?;
    v.is_object().then(|| encode_message(msg, v))
}

/// The fields of `msg` that `obj` holds.
pub fn encode_message(msg: &Message, obj: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for f in msg.fields {
        if let (true, Kind::Message(inner)) = (f.inline, f.kind) {
            // An embedded struct: its fields are the parent's in JSON.
            if let Some(body) = encode_named(inner, obj) {
                put_bytes(f.tag, &body, &mut out);
            }
            continue;
        }
        let Some(v) = map.get(f.name).filter(|v| !v.is_null()) else {
            continue;
        };
        match f.kind {
            Kind::Map(key_kind, value_kind) => {
                for (k, val) in v.as_object().into_iter().flatten() {
                    let mut entry = Vec::new();
                    encode_value(1, *key_kind, &Value::String(k.clone()), &mut entry);
                    encode_value(2, *value_kind, val, &mut entry);
                    put_bytes(f.tag, &entry, &mut out);
                }
            }
            kind if f.repeated => {
                for item in v.as_array().into_iter().flatten() {
                    encode_value(f.tag, kind, item, &mut out);
                }
            }
            kind => encode_value(f.tag, kind, v, &mut out),
        }
    }
    out
}

/// `obj` (with its `apiVersion` and `kind`) as a protobuf body, or None when its kind has no
/// message.
pub fn encode(obj: &Value) -> Option<Vec<u8>> {
    let api_version = obj["apiVersion"].as_str()?;
    let kind = obj["kind"].as_str()?;
    let msg = message_of_kind(api_version, kind)?;
    let raw = encode_message(msg, obj);
    let mut type_meta = Vec::new();
    put_bytes(1, api_version.as_bytes(), &mut type_meta);
    put_bytes(2, kind.as_bytes(), &mut type_meta);
    let mut out = MAGIC.to_vec();
    put_bytes(1, &type_meta, &mut out);
    put_bytes(2, &raw, &mut out);
    Some(out)
}

/// One frame of a protobuf watch: a 4-byte big-endian length, then a `WatchEvent` (without
/// envelope) whose object is the encoded `object` body.
pub fn watch_frame(event_type: &str, object: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    put_bytes(1, object, &mut raw);
    let mut event = Vec::new();
    put_bytes(1, event_type.as_bytes(), &mut event);
    put_bytes(2, &raw, &mut event);
    let mut out = (event.len() as u32).to_be_bytes().to_vec();
    out.extend(event);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn accept_headers_choose_as_upstream_negotiates() {
        assert!(preferred("application/vnd.kubernetes.protobuf,application/json"));
        assert!(preferred("application/vnd.kubernetes.protobuf, */*"));
        assert!(!preferred(
            "application/json, application/vnd.kubernetes.protobuf"
        ));
        assert!(!preferred(
            "application/vnd.kubernetes.protobuf;q=0, application/json"
        ));
        assert!(!preferred(
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!preferred(""));
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("1h2m3.5s"), Some(3_723_500_000_000));
        assert_eq!(parse_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_duration("-1s"), Some(-1_000_000_000));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("5x"), None);
    }

    #[test]
    fn objects_survive_the_round_trip_through_the_decoder() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"},
                "creationTimestamp": "2026-12-03T05:00:00Z", "generation": 0,
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                    "time": "2026-12-03T05:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]},
            "spec": {
                "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "sleep 1"],
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 5},
                    "livenessProbe": {"tcpSocket": {"port": 8080}}}],
                "volumes": [{"name": "v", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "x", "defaultMode": 420}}],
                "terminationGracePeriodSeconds": 0,
                "enableServiceLinks": false,
            },
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-03T05:00:01Z"}]},
        });
        let body = encode(&pod).unwrap();
        assert_eq!(super::super::decode(&body).unwrap(), pod);
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "type": "Opaque", "data": {"k": "aGVsbG8="}});
        assert_eq!(super::super::decode(&encode(&secret).unwrap()).unwrap(), secret);
        let status = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": "pods \"x\" not found", "reason": "NotFound",
            "details": {"name": "x", "kind": "pods"}, "code": 404});
        assert_eq!(super::super::decode(&encode(&status).unwrap()).unwrap(), status);
    }

    #[test]
    fn custom_resources_and_definitions_stay_json() {
        assert!(
            encode(&json!({"apiVersion": "batch.tutorial.kubebuilder.io/v1", "kind": "CronJob"})).is_none()
        );
        assert!(
            encode(&json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"}))
                .is_none()
        );
        assert!(encode(&json!({"apiVersion": "batch/v1", "kind": "CronJob"})).is_some());
    }
}
