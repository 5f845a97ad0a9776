//! Bounds on what one request may make the server do: how deep objects nest, how large they and
//! their data may be, and how much a YAML body may expand. Every decoder and every write checks
//! here, so no input reaches a recursive walker (validation, patches, field sets) deeper than
//! [`MAX_DEPTH`] and nothing stored is too deep for the JSON decoder to read back.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// How deep an object's JSON may nest (objects and arrays). The JSON decoder stops at 128, so
/// anything stored within this reads back, with room for the wrappers (lists, watch events)
/// around it.
pub const MAX_DEPTH: usize = 100;

/// The largest object the store keeps, as etcd's default request limit (1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024 + 512 * 1024;

/// The most a ConfigMap's or Secret's data may hold (upstream's `MaxSecretSize`, 1 MiB).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Whether `v` nests deeper than `max` levels of objects and arrays (walked without recursion).
pub fn too_deep(v: &Value, max: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(v, 1)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(_) | Value::Object(_) if depth > max => return true,
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, depth + 1))),
            Value::Object(m) => stack.extend(m.values().map(|c| (c, depth + 1))),
            _ => {}
        }
    }
    false
}

/// The message for an object that nests too deeply.
pub fn too_deep_message() -> String {
    format!("the object nests deeper than the limit of {MAX_DEPTH} levels")
}

/// Why a YAML body was refused.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// Flow collections (`[`, `{`) nest deeper than [`MAX_DEPTH`]; refused before parsing, since
    /// the YAML parser's cost grows with the square of that depth.
    #[error("the document nests deeper than the limit of {MAX_DEPTH} levels")]
    TooDeep,
    /// Aliases expand the document far beyond its own size.
    #[error("the document expands beyond the limit of {0} bytes (excessive aliasing)")]
    TooLarge(usize),
    /// Not YAML, or not a JSON-compatible document.
    #[error("{0}")]
    Syntax(#[from] serde_yaml::Error),
}

/// Decodes a YAML document into JSON with nesting bounded by [`MAX_DEPTH`] and the expanded
/// result bounded to a multiple of the input's size, so aliases cannot blow it up.
pub fn decode_yaml(body: &[u8]) -> Result<Value, YamlError> {
    if flow_depth(body) > MAX_DEPTH {
        return Err(YamlError::TooDeep);
    }
    let limit = body.len().saturating_mul(8).saturating_add(64 * 1024);
    let budget = Budget {
        left: Cell::new(limit),
        depth: Cell::new(0),
    };
    let de = serde_yaml::Deserializer::from_slice(body);
    match (&budget).deserialize(de) {
        Ok(v) => Ok(v),
        Err(_) if budget.left.get() == 0 => Err(YamlError::TooLarge(limit)),
        Err(_) if budget.depth.get() > MAX_DEPTH => Err(YamlError::TooDeep),
        Err(e) => Err(YamlError::Syntax(e)),
    }
}

/// The deepest nesting of flow collections in a YAML text, found without parsing: in block
/// context a bracket opens a flow collection only where a value starts (after indentation, `: `,
/// `- `, `? `, a tag or an anchor); inside one every bracket outside quoted scalars and comments
/// counts. It may overcount (a block scalar's text), never undercount.
fn flow_depth(body: &[u8]) -> usize {
    let ws = |b: Option<&u8>| b.is_none_or(|b| b.is_ascii_whitespace());
    let skip_quoted = |mut i: usize, q: u8| {
        i += 1;
        while i < body.len() && body[i] != q {
            if q == b'"' && body[i] == b'\\' {
                i += 1;
            }
            i += 1;
        }
        i
    };
    let (mut depth, mut max) = (0usize, 0usize);
    // Block context: at the start of a value. Flow context: after an indicator (`[{,:`).
    let mut start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        let after_space = i == 0 || ws(body.get(i - 1));
        match b {
            b'#' if after_space => {
                while i < body.len() && body[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b' ' | b'\t' | b'\r' => {}
            b'\n' if depth == 0 => start = true,
            b'\n' => {}
            b'[' | b'{' if depth > 0 || start => {
                depth += 1;
                max = max.max(depth);
                start = true;
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                start = false;
            }
            b',' if depth > 0 => start = true,
            b'"' | b'\'' if start => {
                i = skip_quoted(i, b);
                start = false;
            }
            b':' | b'-' | b'?' if depth == 0 => start = ws(body.get(i + 1)),
            b':' => start = true,
            b'!' | b'&' if start => {
                while i < body.len()
                    && !body[i].is_ascii_whitespace()
                    && (depth == 0 || !matches!(body[i], b'[' | b'{'))
                {
                    i += 1;
                }
                continue;
            }
            _ => start = false,
        }
        i += 1;
    }
    max
}

/// What a YAML document may still cost while it is decoded: bytes left and the current depth.
struct Budget {
    left: Cell<usize>,
    depth: Cell<usize>,
}

impl Budget {
    fn spend<E: de::Error>(&self, n: usize) -> Result<(), E> {
        match self.left.get().checked_sub(n) {
            Some(left) if left > 0 => {
                self.left.set(left);
                Ok(())
            }
            _ => {
                self.left.set(0);
                Err(E::custom("document too large"))
            }
        }
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        let depth = self.depth.get() + 1;
        self.depth.set(depth);
        if depth > MAX_DEPTH {
            return Err(E::custom("document too deep"));
        }
        Ok(())
    }

    fn leave(&self) {
        self.depth.set(self.depth.get().saturating_sub(1));
    }
}

/// A node costs its bytes plus this much for itself.
const NODE_COST: usize = 16;

impl<'de> DeserializeSeed<'de> for &Budget {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &Budget {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend(NODE_COST)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend(NODE_COST)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend(NODE_COST)?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend(NODE_COST)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend(NODE_COST + v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.spend(NODE_COST + v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend(NODE_COST)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend(NODE_COST)?;
        self.enter()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        self.leave();
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend(NODE_COST)?;
        self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.spend(key.len())?;
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        self.leave();
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(depth: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..depth {
            v = json!([v]);
        }
        v
    }

    #[test]
    fn depth_is_counted_in_levels_of_collections() {
        assert!(!too_deep(&json!(1), 0));
        assert!(!too_deep(&nested(MAX_DEPTH), MAX_DEPTH));
        assert!(too_deep(&nested(MAX_DEPTH + 1), MAX_DEPTH));
        assert!(too_deep(&json!({"a": {"b": [nested(MAX_DEPTH - 2)]}}), MAX_DEPTH));
    }

    #[test]
    fn yaml_decodes_as_json_would() {
        let v = decode_yaml(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, labels: {a: '1'}}\ndata:\n  k: \"v\"\n  n: 3\nlist: [1, 2.5, true, null]\n").unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": "1"}}, "data": {"k": "v", "n": 3}, "list": [1, 2.5, true, null]})
        );
        // Brackets inside scalars, quotes and comments are not nesting.
        let text = format!(
            "a: \"{}\"\nb: x{}\n# {}\nc: '{}'\n",
            "[".repeat(500),
            "[".repeat(500),
            "{".repeat(500),
            "[".repeat(500)
        );
        assert!(decode_yaml(text.as_bytes()).is_ok());
    }

    #[test]
    fn deep_flow_and_block_nesting_is_refused() {
        let flow = format!("a: {}1{}", "[".repeat(5000), "]".repeat(5000));
        assert!(matches!(decode_yaml(flow.as_bytes()), Err(YamlError::TooDeep)));
        let flow = format!("{}{}", "[".repeat(64 * 1024), "]".repeat(64 * 1024));
        assert!(matches!(decode_yaml(flow.as_bytes()), Err(YamlError::TooDeep)));
        let mut block = String::new();
        for i in 0..MAX_DEPTH + 5 {
            block.push_str(&" ".repeat(i));
            block.push_str("a:\n");
        }
        block.push_str(&" ".repeat(MAX_DEPTH + 5));
        block.push_str("b: 1\n");
        assert!(decode_yaml(block.as_bytes()).is_err());
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let mut doc = String::from("a0: &a0 [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            doc.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        assert!(matches!(decode_yaml(doc.as_bytes()), Err(YamlError::TooLarge(_))));
        // A little aliasing is fine.
        let v = decode_yaml(b"base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(v["other"], json!({"x": 1}));
    }
}
