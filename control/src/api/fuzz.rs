//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpora:
//! the request decoders and patch functions, driven with arbitrary bytes. Each must return (an
//! error is fine) without panicking, overflowing its stack or running away with time or memory.

use serde_json::Value;

use super::handlers::parse_body;
use super::protobuf::message_for;
use crate::objects::limits::{MAX_DEPTH, too_deep};
use crate::objects::patch::{apply_json_patch, apply_merge_patch, apply_strategic_patch};

/// Decodes `data` as a request body of `content_type` (JSON, YAML or Kubernetes protobuf).
pub fn decode(content_type: &str, data: &[u8]) {
    if let Ok(v) = parse_body(data, content_type) {
        assert!(
            !too_deep(&v, MAX_DEPTH),
            "a decoder returned an object past the depth limit"
        );
    }
}

/// Applies a patch: the first byte picks the kind (JSON patch, merge patch, strategic merge
/// patch on a Pod, a Service or an unknown kind), the rest is the target and the patch, both
/// JSON, separated by a 0xff byte.
pub fn patch(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some(split) = rest.iter().position(|b| *b == 0xff) else {
        return;
    };
    let (Ok(target), Ok(patch)) = (
        parse_body(&rest[..split], "application/json"),
        parse_body(&rest[split + 1..], "application/json"),
    ) else {
        return;
    };
    let _: Option<Value> = match kind % 5 {
        0 => apply_json_patch(&target, &patch).ok(),
        1 => Some(apply_merge_patch(&target, &patch)),
        2 => apply_strategic_patch(&target, &patch, message_for("v1", "Pod")).ok(),
        3 => apply_strategic_patch(&target, &patch, message_for("v1", "Service")).ok(),
        _ => apply_strategic_patch(&target, &patch, None).ok(),
    };
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every input in the fuzz corpora (the seeds and whatever a fuzzing run kept) still passes.
    #[test]
    fn the_fuzz_corpora_replay_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut count = 0;
        for (target, run) in [
            (
                "json",
                (|d: &[u8]| super::decode("application/json", d)) as fn(&[u8]),
            ),
            ("yaml", |d| super::decode("application/yaml", d)),
            ("protobuf", |d| {
                super::decode("application/vnd.kubernetes.protobuf", d)
            }),
            ("patch", super::patch),
        ] {
            let dir = root.join(target);
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                run(&std::fs::read(&path).unwrap());
                count += 1;
            }
        }
        assert!(count >= 4, "the corpora are missing");
    }
}
