//! `cargo xtask fuzz`: runs the API server's fuzz targets (`fuzz/`, cargo-fuzz with libFuzzer on
//! nightly) for a bounded time each, starting from the corpora kept in `fuzz/corpus/`. New inputs
//! go to a scratch directory, so a run leaves the tree as it was; a crash fails the run and leaves
//! its input under `fuzz/artifacts/`.

use std::path::Path;

use anyhow::Context;

use crate::ebpf::{clean, ensure_nightly, output, step};

/// The cargo-fuzz release used.
const CARGO_FUZZ: &str = "0.13.2";

/// The targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 4] = ["json", "yaml", "protobuf", "patch"];

/// Fuzzes each target for `seconds`.
pub fn run(root: &Path, seconds: u32) -> anyhow::Result<()> {
    ensure_nightly()?;
    let installed = output(clean("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if !installed.contains(CARGO_FUZZ) {
        step(
            &format!("installing cargo-fuzz {CARGO_FUZZ} (once)"),
            clean("cargo").args(["install", &format!("cargo-fuzz@{CARGO_FUZZ}"), "--locked"]),
        )?;
    }
    let scratch = tempfile::Builder::new()
        .prefix("skiff-fuzz-")
        .tempdir()
        .context("a scratch corpus directory")?;
    for target in TARGETS {
        let new_inputs = scratch.path().join(target);
        std::fs::create_dir_all(&new_inputs)?;
        step(
            &format!("fuzzing {target} for {seconds} s"),
            clean("rustup")
                .args([
                    "run",
                    "nightly",
                    "cargo",
                    "fuzz",
                    "run",
                    "--dev",
                    "--sanitizer",
                    "none",
                    target,
                ])
                .arg(&new_inputs)
                .arg(root.join("fuzz/corpus").join(target))
                .args(["--", "-rss_limit_mb=2048", "-timeout=10", "-max_len=65536"])
                .arg(format!("-max_total_time={seconds}"))
                .current_dir(root),
        )?;
    }
    Ok(())
}
