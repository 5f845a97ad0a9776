//! Decoding Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) to JSON
//! (encoding responses: [`encode`]).
//!
//! kubectl's typed commands (`create namespace`, `create configmap`, `run`, `expose`, ...) send
//! protobuf and do not fall back to JSON. A body is the magic `k8s\0` followed by a
//! `runtime.Unknown` envelope naming the type and carrying the object's encoding; the object is
//! decoded with the field table in `objects/schema/table.rs` (generated from upstream's `generated.proto` via
//! the k8s-pb crate) into the JSON upstream would have produced: empty strings are dropped (Go's
//! `omitempty`), and `Time`, `Quantity`, `IntOrString`, `RawExtension` and `FieldsV1` take their
//! JSON forms.

pub mod encode;

pub use crate::objects::schema::{Field, Kind, Message, message, message_for};

use base64::Engine;
use serde_json::{Map, Value, json};

/// A malformed or unknown protobuf body.
#[derive(Debug, thiserror::Error)]
#[error("protobuf: {0}")]
pub struct ProtoError(String);

fn err(m: impl Into<String>) -> ProtoError {
    ProtoError(m.into())
}

/// How deep messages may nest in a body. Each message is at least one level of the JSON it
/// becomes, so this keeps decoded objects within what the JSON decoder accepts (128 levels), and
/// the decoder's recursion far from the end of its thread's stack.
pub const MAX_MESSAGE_DEPTH: usize = 64;

/// The magic prefix of Kubernetes protobuf bodies.
const MAGIC: &[u8] = b"k8s\0";

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| err("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(err("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| err("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// A field value as read from the wire.
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    /// A 32-bit value; no Kubernetes field uses one, so it is skipped.
    Fixed32,
    Bytes(&'a [u8]),
}

fn read_fields(buf: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, ProtoError> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Vec::new();
    while !r.done() {
        let key = r.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| err("bad tag"))?;
        let raw = match key & 7 {
            0 => Raw::Varint(r.varint()?),
            1 => Raw::Fixed64(u64::from_le_bytes(
                r.take(8)?.try_into().map_err(|_| err("fixed64"))?,
            )),
            2 => {
                let n = usize::try_from(r.varint()?).map_err(|_| err("length"))?;
                Raw::Bytes(r.take(n)?)
            }
            5 => {
                r.take(4)?;
                Raw::Fixed32
            }
            w => return Err(err(format!("unsupported wire type {w}"))),
        };
        out.push((tag, raw));
    }
    Ok(out)
}

fn scalar(kind: Kind, raw: &Raw<'_>, depth: usize) -> Result<Value, ProtoError> {
    Ok(match (kind, raw) {
        (Kind::Str, Raw::Bytes(b)) => json!(String::from_utf8_lossy(b)),
        (Kind::Bytes, Raw::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        (Kind::Bool, Raw::Varint(v)) => json!(*v != 0),
        (Kind::Int, Raw::Varint(v)) => json!(*v as i64),
        (Kind::F64, Raw::Fixed64(v)) => json!(f64::from_bits(*v)),
        (Kind::Message(name), Raw::Bytes(b)) => decode_message(name, b, depth + 1)?,
        _ => return Err(err("field has the wrong wire type")),
    })
}

/// Decodes the packed or unpacked values of a repeated scalar.
fn repeated_scalars(kind: Kind, raw: &Raw<'_>, depth: usize) -> Result<Vec<Value>, ProtoError> {
    match (kind, raw) {
        (Kind::Int | Kind::Bool, Raw::Bytes(b)) => {
            let mut r = Reader { buf: b, pos: 0 };
            let mut out = Vec::new();
            while !r.done() {
                out.push(scalar(kind, &Raw::Varint(r.varint()?), depth)?);
            }
            Ok(out)
        }
        _ => Ok(vec![scalar(kind, raw, depth)?]),
    }
}

fn format_time(seconds: i64, nanos: i64, micro: bool) -> Value {
    if seconds == 0 && nanos == 0 {
        return Value::Null;
    }
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(seconds) else {
        return Value::Null;
    };
    let base = crate::objects::meta::format_time(t);
    if micro {
        json!(format!("{}.{:06}Z", base.trim_end_matches('Z'), nanos / 1000))
    } else {
        json!(base)
    }
}

/// Messages whose JSON form is not an object.
fn special(name: &str, buf: &[u8]) -> Result<Option<Value>, ProtoError> {
    let fields = || read_fields(buf);
    let int = |f: &[(u32, Raw<'_>)], tag: u32| {
        f.iter().find(|(t, _)| *t == tag).and_then(|(_, r)| match r {
            Raw::Varint(v) => Some(*v as i64),
            _ => None,
        })
    };
    let bytes = |f: &[(u32, Raw<'_>)], tag: u32| -> Option<Vec<u8>> {
        f.iter().find(|(t, _)| *t == tag).and_then(|(_, r)| match r {
            Raw::Bytes(b) => Some(b.to_vec()),
            _ => None,
        })
    };
    Ok(Some(match name {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let f = fields()?;
            format_time(
                int(&f, 1).unwrap_or(0),
                int(&f, 2).unwrap_or(0),
                name.ends_with("MicroTime"),
            )
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let ns = int(&fields()?, 1).unwrap_or(0);
            json!(go_duration(ns))
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            json!(String::from_utf8_lossy(&bytes(&fields()?, 1).unwrap_or_default()))
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let f = fields()?;
            if int(&f, 1).unwrap_or(0) == 1 {
                json!(String::from_utf8_lossy(&bytes(&f, 3).unwrap_or_default()))
            } else {
                json!(int(&f, 2).unwrap_or(0) as i32)
            }
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let raw = bytes(&fields()?, 1).unwrap_or_default();
            if raw.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&raw).map_err(|e| err(format!("embedded JSON: {e}")))?
            }
        }
        _ => return Ok(None),
    }))
}

fn go_duration(ns: i64) -> String {
    let secs = ns / 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

fn decode_message(name: &str, buf: &[u8], depth: usize) -> Result<Value, ProtoError> {
    if depth > MAX_MESSAGE_DEPTH {
        return Err(err(format!(
            "exceeded the maximum nesting depth of {MAX_MESSAGE_DEPTH} messages"
        )));
    }
    if let Some(v) = special(name, buf)? {
        return Ok(v);
    }
    let msg = message(name).ok_or_else(|| err(format!("unknown message {name}")))?;
    let mut out = Map::new();
    for (tag, raw) in read_fields(buf)? {
        let Some(field) = msg.fields.iter().find(|f| f.tag == tag) else {
            continue;
        };
        match field.kind {
            Kind::Map(k, v) => {
                let Raw::Bytes(entry) = raw else {
                    return Err(err("map entry is not length-delimited"));
                };
                let mut key = Value::Null;
                let mut value = Value::Null;
                for (t, r) in read_fields(entry)? {
                    match t {
                        1 => key = scalar(*k, &r, depth)?,
                        2 => value = scalar(*v, &r, depth)?,
                        _ => {}
                    }
                }
                let key = match key {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                if value.is_null() {
                    value = match v {
                        Kind::Str | Kind::Bytes => json!(""),
                        _ => json!({}),
                    };
                }
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(key, value);
                }
            }
            _ if field.repeated => {
                let values = repeated_scalars(field.kind, &raw, depth)?;
                let list = out.entry(field.name).or_insert_with(|| json!([]));
                if let Some(l) = list.as_array_mut() {
                    l.extend(values);
                }
            }
            Kind::Message(n) if field.inline => {
                // An embedded struct: its fields belong to this object.
                let Raw::Bytes(inner) = raw else {
                    return Err(err("embedded message is not length-delimited"));
                };
                if let Value::Object(m) = decode_message(n, inner, depth + 1)? {
                    out.extend(m);
                }
            }
            kind => {
                let value = scalar(kind, &raw, depth)?;
                // Go's omitempty: empty strings and zero times are absent in upstream's JSON.
                if value.is_null() || value.as_str() == Some("") {
                    continue;
                }
                out.insert(field.name.to_owned(), value);
            }
        }
    }
    Ok(Value::Object(out))
}

/// Whether a body is a Kubernetes protobuf envelope.
pub fn is_protobuf(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// Decodes a Kubernetes protobuf body to the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("missing the k8s protobuf magic"))?;
    let fields = read_fields(envelope)?;
    let mut type_meta = (String::new(), String::new());
    let mut raw: &[u8] = &[];
    for (tag, r) in &fields {
        match (tag, r) {
            (1, Raw::Bytes(tm)) => {
                for (t, v) in read_fields(tm)? {
                    if let Raw::Bytes(s) = v {
                        let s = String::from_utf8_lossy(s).into_owned();
                        match t {
                            1 => type_meta.0 = s,
                            2 => type_meta.1 = s,
                            _ => {}
                        }
                    }
                }
            }
            (2, Raw::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let (api_version, kind) = type_meta;
    let msg = message_for(&api_version, &kind)
        .ok_or_else(|| err(format!("no protobuf schema for {kind} in {api_version}")))?;
    let mut obj = decode_message(msg.name, raw, 0)?;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The encoder's writer builds the bodies these tests decode.
    use super::encode::put_bytes as bytes_field;

    #[test]
    fn every_message_reference_resolves() {
        for m in crate::objects::schema::table::MESSAGES {
            for f in m.fields {
                let names: Vec<&str> = match f.kind {
                    Kind::Message(n) => vec![n],
                    Kind::Map(_, Kind::Message(n)) => vec![n],
                    _ => vec![],
                };
                for n in names {
                    assert!(
                        message(n).is_some() || special(n, &[]).ok().flatten().is_some(),
                        "{}.{} -> {n}",
                        m.name,
                        f.name
                    );
                }
            }
        }
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        // ObjectMeta{name: "cfg", namespace: ""}, data{"a": "1"}
        let mut meta = Vec::new();
        bytes_field(1, b"cfg", &mut meta);
        bytes_field(3, b"", &mut meta);
        let mut entry = Vec::new();
        bytes_field(1, b"a", &mut entry);
        bytes_field(2, b"1", &mut entry);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        bytes_field(2, &entry, &mut cm);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"ConfigMap", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &cm, &mut body);
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}, "apiVersion": "v1", "kind": "ConfigMap"})
        );
    }

    #[test]
    fn delete_options_decode_in_any_group_version() {
        // DeleteOptions{gracePeriodSeconds: 0, propagationPolicy: "Foreground"} as client-go
        // sends it for a core delete: tagged `v1`.
        let mut opts = Vec::new();
        opts.extend_from_slice(&[1 << 3, 0]);
        bytes_field(4, b"Foreground", &mut opts);
        for api_version in ["v1", "apps/v1", "meta.k8s.io/v1"] {
            let mut tm = Vec::new();
            bytes_field(1, api_version.as_bytes(), &mut tm);
            bytes_field(2, b"DeleteOptions", &mut tm);
            let mut body = MAGIC.to_vec();
            bytes_field(1, &tm, &mut body);
            bytes_field(2, &opts, &mut body);
            let obj = decode(&body).unwrap();
            assert_eq!(obj["propagationPolicy"], "Foreground", "{api_version}");
            assert_eq!(obj["gracePeriodSeconds"], 0, "{api_version}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        // JSONSchemaProps{not: JSONSchemaProps{not: ...}}, 2,000 levels in a few kilobytes.
        let mut inner = Vec::new();
        for _ in 0..2000 {
            let mut outer = Vec::new();
            bytes_field(28, &inner, &mut outer);
            inner = outer;
        }
        let name = "apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps";
        let e = decode_message(name, &inner, 0).unwrap_err();
        assert!(e.to_string().contains("maximum nesting depth"), "{e}");
        let mut ok = Vec::new();
        for _ in 0..MAX_MESSAGE_DEPTH {
            let mut outer = Vec::new();
            bytes_field(28, &ok, &mut outer);
            ok = outer;
        }
        assert!(decode_message(name, &ok, 0).is_ok());
    }
}
