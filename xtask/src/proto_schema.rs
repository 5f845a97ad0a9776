//! `cargo xtask gen-proto-schema`: derives the field table the API server decodes Kubernetes
//! protobuf bodies with, from the prost code of the `k8s-pb` crate (the generated Rust mirrors
//! upstream's `generated.proto` files: message names, field numbers and wire types).
//!
//! JSON names are the prost field names in lowerCamelCase with upstream's initialisms restored
//! (`pod_ips` -> `podIPs`, `host_ipc` -> `hostIPC`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The packages kubectl's typed clients send bodies for.
const PACKAGES: &[&str] = &[
    "api/core/v1",
    "api/apps/v1",
    "api/batch/v1",
    "api/autoscaling/v1",
    "api/autoscaling/v2",
    "api/coordination/v1",
    "api/discovery/v1",
    "api/policy/v1",
    "api/scheduling/v1",
    "api/storage/v1",
    "api/authentication/v1",
    "api/authorization/v1",
    "api/events/v1",
    "api/networking/v1",
    "api/node/v1",
    "api/certificates/v1",
    "api/flowcontrol/v1",
    "api/rbac/v1",
    "api/admissionregistration/v1",
    "kube_aggregator/pkg/apis/apiregistration/v1",
    "apimachinery/pkg/apis/meta/v1",
    "apimachinery/pkg/api/resource",
    "apimachinery/pkg/util/intstr",
    "apimachinery/pkg/runtime",
    "apiextensions_apiserver/pkg/apis/apiextensions/v1",
];

/// Second and later words that upstream writes as initialisms.
const INITIALISMS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("ip", "IP"),
    ("ips", "IPs"),
    ("ipc", "IPC"),
    ("pid", "PID"),
    ("uid", "UID"),
    ("cidr", "CIDR"),
    ("cidrs", "CIDRs"),
    ("uuid", "UUID"),
    ("fqdn", "FQDN"),
    ("tls", "TLS"),
    ("io", "IO"),
    ("api", "API"),
    ("url", "URL"),
    ("dns", "DNS"),
];

/// Upstream's JSON field names, keyed by their letters lowercased (`podips` -> `podIPs`), read
/// from k8s-openapi's serde code, which carries them exactly.
type JsonNames = std::collections::HashMap<String, String>;

fn normalize(name: &str) -> String {
    name.trim_start_matches("r#")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn read_json_names(dir: &Path, out: &mut JsonNames) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            read_json_names(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let src = std::fs::read_to_string(&path)?;
            for line in src.lines() {
                let line = line.trim();
                if let Some((lit, rest)) = line.strip_prefix('"').and_then(|l| l.split_once('"'))
                    && rest.trim_start().starts_with("=> Field::Key_")
                {
                    out.entry(normalize(lit)).or_insert_with(|| lit.to_owned());
                }
            }
        }
    }
    Ok(())
}

/// Fields Go embeds with `json:",inline"`: in JSON their message's fields sit in the parent object,
/// while protobuf still nests them under the field's tag.
const INLINE: &[(&str, &str)] = &[
    ("api.core.v1.ConfigMapEnvSource", "localObjectReference"),
    ("api.core.v1.ConfigMapKeySelector", "localObjectReference"),
    ("api.core.v1.ConfigMapProjection", "localObjectReference"),
    ("api.core.v1.ConfigMapVolumeSource", "localObjectReference"),
    ("api.core.v1.SecretEnvSource", "localObjectReference"),
    ("api.core.v1.SecretKeySelector", "localObjectReference"),
    ("api.core.v1.SecretProjection", "localObjectReference"),
    ("api.core.v1.EphemeralContainer", "ephemeralContainerCommon"),
    ("api.core.v1.PersistentVolumeSpec", "persistentVolumeSource"),
    ("api.core.v1.Probe", "handler"),
    ("api.core.v1.Volume", "volumeSource"),
    ("api.networking.v1.IngressRule", "ingressRuleValue"),
    ("api.admissionregistration.v1.RuleWithOperations", "rule"),
    (
        "api.admissionregistration.v1.NamedRuleWithOperations",
        "ruleWithOperations",
    ),
    ("apimachinery.pkg.runtime.Unknown", "typeMeta"),
];

fn json_name_with(names: &JsonNames, snake: &str) -> String {
    names
        .get(&normalize(snake))
        .cloned()
        .unwrap_or_else(|| json_name(snake))
}

fn json_name(snake: &str) -> String {
    let snake = snake.trim_start_matches("r#");
    let mut out = String::new();
    for (i, word) in snake.split('_').enumerate() {
        if i == 0 {
            out.push_str(word);
        } else if let Some((_, up)) = INITIALISMS.iter().find(|(w, _)| *w == word) {
            out.push_str(up);
        } else {
            let mut c = word.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
        }
    }
    out
}

/// Resolves a Rust type path used in module `module` to a dotted message name.
fn resolve(module: &[String], path: &str) -> String {
    let mut parts: Vec<String> = module.to_vec();
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    for (i, seg) in segs.iter().enumerate() {
        if *seg == "super" {
            parts.pop();
        } else {
            parts.extend(segs[i..].iter().map(|s| s.to_string()));
            break;
        }
    }
    parts.join(".")
}

/// The last generic argument of a field type that names a message (not a std/prost type).
fn message_type(ty: &str) -> Option<String> {
    let cleaned: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
    cleaned
        .split(['<', '>', ','])
        .filter(|s| !s.is_empty())
        .rfind(|s| {
            !s.starts_with("::prost")
                && !s.starts_with("::core")
                && !s.starts_with("::std")
                && *s != "String"
                && *s != "i32"
                && *s != "i64"
                && *s != "bool"
        })
        .map(str::to_owned)
}

fn scalar(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "string" => "Str",
        "bytes" => "Bytes",
        "bool" => "Bool",
        "int32" | "int64" | "uint32" | "uint64" => "Int",
        "double" => "F64",
        _ => return None,
    })
}

struct Field {
    tag: u32,
    name: String,
    kind: String,
    repeated: bool,
    doc: Doc,
}

/// A doc comment split into its text and upstream's `+marker=value` lines.
#[derive(Default)]
struct Doc {
    text: Vec<String>,
    markers: Vec<(String, String)>,
}

impl Doc {
    fn add(&mut self, line: &str) {
        let line = line.trim();
        if let Some(marker) = line.strip_prefix('+') {
            let (k, v) = marker.split_once('=').unwrap_or((marker, ""));
            self.markers.push((k.trim().to_owned(), v.trim().to_owned()));
        } else if !line.starts_with("---") {
            self.text.push(line.to_owned());
        }
    }

    fn marker(&self, name: &str) -> Option<&str> {
        self.markers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        self.text.join("\n").trim().to_owned()
    }
}

type Parsed = (String, Doc, Vec<Field>);

fn parse_file(module: &[String], src: &str, names: &JsonNames, out: &mut Vec<Parsed>) -> anyhow::Result<()> {
    let lines: Vec<&str> = src.lines().collect();
    let mut i = 0;
    let mut current: Option<Parsed> = None;
    let mut doc = Doc::default();
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(comment) = line.strip_prefix("///") {
            doc.add(comment);
            i += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let empty = rest.ends_with("{}");
            let name = rest.trim_end_matches("{}").trim_end_matches(" {").trim();
            let parsed = (
                format!("{}.{name}", module.join(".")),
                std::mem::take(&mut doc),
                Vec::new(),
            );
            if empty {
                out.push(parsed);
            } else {
                current = Some(parsed);
            }
        } else if line == "}" {
            if let Some(done) = current.take() {
                out.push(done);
            }
        } else if let (Some(attr), Some((_, _, fields))) = (line.strip_prefix("#[prost("), current.as_mut()) {
            let attr = attr.trim_end_matches(")]");
            let tag: u32 = attr
                .split("tag = \"")
                .nth(1)
                .and_then(|t| t.split('"').next())
                .and_then(|t| t.parse().ok())
                .with_context(|| format!("no tag in {line}"))?;
            // Gather the declaration `pub name: Type,` that may span lines.
            let mut decl = String::new();
            let mut j = i + 1;
            while j < lines.len() {
                decl.push_str(lines[j].trim());
                decl.push(' ');
                let depth = decl.matches('<').count() as i64 - decl.matches('>').count() as i64;
                if depth == 0 && decl.trim_end().ends_with(',') {
                    break;
                }
                j += 1;
            }
            i = j;
            let decl = decl.trim().trim_start_matches("pub ").trim_end_matches(',');
            let (fname, ty) = decl
                .split_once(':')
                .with_context(|| format!("bad field {decl}"))?;
            let first = attr.split([',', ' ']).next().unwrap_or_default();
            let repeated = attr.contains("repeated");
            let kind = if let Some(map) = attr
                .strip_prefix("btree_map = \"")
                .or_else(|| attr.strip_prefix("map = \""))
            {
                let spec = map.split('"').next().unwrap_or_default();
                let (k, v) = spec.split_once(", ").with_context(|| format!("bad map {spec}"))?;
                let kk = scalar(k).with_context(|| format!("map key {k}"))?;
                let vk = match v {
                    "message" => format!(
                        "Kind::Message(\"{}\")",
                        resolve(module, &message_type(ty).context("map value type")?)
                    ),
                    other => format!(
                        "Kind::{}",
                        scalar(other).with_context(|| format!("map value {other}"))?
                    ),
                };
                format!("Kind::Map(&Kind::{kk}, &{vk})")
            } else if first == "message" {
                format!(
                    "Kind::Message(\"{}\")",
                    resolve(module, &message_type(ty).context("message type")?)
                )
            } else if first.starts_with("bytes") {
                "Kind::Bytes".to_owned()
            } else if first == "enumeration" {
                "Kind::Int".to_owned()
            } else {
                format!(
                    "Kind::{}",
                    scalar(first).with_context(|| format!("unknown prost kind {first}"))?
                )
            };
            fields.push(Field {
                tag,
                name: json_name_with(names, fname.trim()),
                kind,
                repeated,
                doc: std::mem::take(&mut doc),
            });
        } else if !line.starts_with("#[") {
            doc = Doc::default();
        }
        i += 1;
    }
    Ok(())
}

fn locate(crate_dir: &str) -> anyhow::Result<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let src = home.join("registry").join("src");
    for index in std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let candidate = index?.path().join(crate_dir);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "k8s-pb 0.9.0 sources not found under {}; fetch them with `cargo add k8s-pb@0.9.0` in a scratch crate and `cargo fetch`, or pass --k8s-pb DIR",
        src.display()
    )
}

/// Writes the schema table to `out`.
pub fn generate(k8s_pb: Option<&Path>, out: &Path) -> anyhow::Result<()> {
    let root = match k8s_pb {
        Some(p) => p.to_owned(),
        None => locate("k8s-pb-0.9.0")?,
    };
    let mut names = JsonNames::new();
    read_json_names(
        &locate("k8s-openapi-0.26.1")?.join("src").join("v1_34"),
        &mut names,
    )?;
    let mut messages = Vec::new();
    for pkg in PACKAGES {
        let file = root.join("src").join(pkg).join("mod.rs");
        let src = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let module: Vec<String> = pkg.split('/').map(str::to_owned).collect();
        parse_file(&module, &src, &names, &mut messages)?;
    }
    messages.sort_by(|a, b| a.0.cmp(&b.0));
    let mut code = String::from(
        "//! Generated by `cargo xtask gen-proto-schema` from k8s-pb 0.9.0; do not edit.\n\
         //! Message name -> fields (tag, JSON name, wire kind, repeated), sorted by name.\n\n\
         use super::{Field, Kind, Message};\n\n\
         /// Every message the decoder knows, sorted by name.\n\
         pub static MESSAGES: &[Message] = &[\n",
    );
    for (name, doc, fields) in &messages {
        writeln!(
            code,
            "    Message {{\n        name: \"{name}\",\n        doc: {:?},\n        fields: &[",
            doc.text()
        )?;
        for f in fields {
            let keys: Vec<String> = f
                .doc
                .markers
                .iter()
                .filter(|(k, _)| k == "listMapKey")
                .map(|(_, v)| format!("{v:?}"))
                .collect();
            writeln!(
                code,
                "            Field {{ tag: {}, name: \"{}\", kind: {}, repeated: {}, optional: {}, inline: {}, merge_key: {:?}, strategy: {:?}, list_type: {:?}, map_keys: &[{}], doc: {:?} }},",
                f.tag,
                f.name,
                f.kind,
                f.repeated,
                f.doc.marker("optional").is_some(),
                INLINE.contains(&(name.as_str(), f.name.as_str())),
                f.doc.marker("patchMergeKey").unwrap_or_default(),
                f.doc.marker("patchStrategy").unwrap_or_default(),
                f.doc.marker("listType").unwrap_or_default(),
                keys.join(", "),
                f.doc.text(),
            )?;
        }
        writeln!(code, "        ],\n    }},")?;
    }
    code.push_str("];\n");
    std::fs::write(out, code).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} messages to {}", messages.len(), out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisms_come_back() {
        assert_eq!(json_name("pod_ips"), "podIPs");
        assert_eq!(json_name("host_ipc"), "hostIPC");
        assert_eq!(json_name("set_hostname_as_fqdn"), "setHostnameAsFQDN");
        assert_eq!(json_name("api_version"), "apiVersion");
        assert_eq!(json_name("r#type"), "type");
        assert_eq!(json_name("qos_class"), "qosClass");
    }

    #[test]
    fn paths_resolve_relative_to_the_module() {
        let m: Vec<String> = ["api", "core", "v1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            resolve(
                &m,
                "super::super::super::apimachinery::pkg::apis::meta::v1::ObjectMeta"
            ),
            "apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert_eq!(resolve(&m, "PodSpec"), "api.core.v1.PodSpec");
    }
}
