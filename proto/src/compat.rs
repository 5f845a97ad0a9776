//! The wire-compatibility check of Skiff's own contracts: every message field (number, name, label,
//! type), enum value and RPC that the last release had is still here, unchanged. Adding is free;
//! renumbering, retyping or removing fails the test, which is what keeps an agent one minor version
//! older than its control plane working (see `skiff_common::version`).
//!
//! The listing of a release is kept in `compat/<version>.txt`. When a release is cut, write the
//! new one with `cargo test -p skiff-proto -- --ignored write_release_listing` and point
//! `RELEASED` at it.

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

/// The descriptors of the contracts as built now.
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/skiff_descriptors.bin"));

/// The listing of the last release.
const RELEASED: &str = include_str!("../compat/0.1.txt");

/// One line per field, enum value and RPC of the `skiff.*` packages, sorted.
fn listing() -> Vec<String> {
    let set = FileDescriptorSet::decode(DESCRIPTORS).expect("the build's descriptors decode");
    let mut lines = Vec::new();
    for file in set.file.iter().filter(|f| f.package().starts_with("skiff.")) {
        let package = file.package();
        for m in &file.message_type {
            message(&mut lines, package, m);
        }
        for e in &file.enum_type {
            for v in &e.value {
                lines.push(format!(
                    "enum {package}.{} {} = {}",
                    e.name(),
                    v.name(),
                    v.number()
                ));
            }
        }
        for s in &file.service {
            for m in &s.method {
                let stream = |yes: bool| if yes { "stream " } else { "" };
                lines.push(format!(
                    "rpc {package}.{}.{}({}{}) returns ({}{})",
                    s.name(),
                    m.name(),
                    stream(m.client_streaming()),
                    m.input_type().trim_start_matches('.'),
                    stream(m.server_streaming()),
                    m.output_type().trim_start_matches('.'),
                ));
            }
        }
    }
    lines.sort();
    lines
}

fn message(lines: &mut Vec<String>, scope: &str, m: &DescriptorProto) {
    let name = format!("{scope}.{}", m.name());
    for f in &m.field {
        let label = match f.label() {
            Label::Repeated => "repeated ",
            _ if f.proto3_optional() => "optional ",
            _ => "",
        };
        let ty = match f.r#type() {
            Type::Message | Type::Enum => f.type_name().trim_start_matches('.').to_owned(),
            t => t.as_str_name().trim_start_matches("TYPE_").to_lowercase(),
        };
        let oneof = f
            .oneof_index
            .filter(|_| !f.proto3_optional())
            .and_then(|i| m.oneof_decl.get(i as usize))
            .map(|o| format!(" (oneof {})", o.name()))
            .unwrap_or_default();
        lines.push(format!(
            "message {name} {label}{ty} {} = {}{oneof}",
            f.name(),
            f.number()
        ));
    }
    for nested in &m.nested_type {
        message(lines, &name, nested);
    }
    for e in &m.enum_type {
        for v in &e.value {
            lines.push(format!("enum {name}.{} {} = {}", e.name(), v.name(), v.number()));
        }
    }
}

#[test]
fn everything_the_last_release_spoke_is_still_spoken_the_same_way() {
    let now = listing();
    let gone: Vec<&str> = RELEASED
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter(|l| !now.iter().any(|n| n == l))
        .collect();
    assert!(
        gone.is_empty(),
        "changed or removed since the last release (add new fields with new numbers instead):\n{}\n\nnow:\n{}",
        gone.join("\n"),
        now.join("\n")
    );
}

#[test]
#[ignore = "run when a release is cut"]
fn write_release_listing() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/compat/next.txt");
    let header =
        "# The contracts of a release, one line per field, enum value and RPC (see src/compat.rs).\n";
    std::fs::write(path, format!("{header}{}\n", listing().join("\n"))).expect("writing the listing");
}
