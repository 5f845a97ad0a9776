//! `cargo xtask build-ebpf`: builds `agent-ebpf/` for `bpfel-unknown-none` with nightly, `build-std`
//! and `bpf-linker`, installing what is missing first. The agent's build script embeds the object.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The bpf-linker release known to work with the nightly toolchain's LLVM here.
const BPF_LINKER: &str = "0.10.3";

/// Where the object lands; `agent/build.rs` reads it from here.
pub fn object(root: &Path) -> PathBuf {
    root.join("target/ebpf/bpfel-unknown-none/release/skiff-ebpf")
}

/// A command with the variables that cargo/rustup set for the host build removed, so that the
/// nightly toolchain and its own flags are used.
pub(crate) fn clean(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub(crate) fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); see the output above");
    }
    Ok(())
}

/// Installs the nightly toolchain when missing (the eBPF build and the fuzz targets need it).
pub(crate) fn ensure_nightly() -> anyhow::Result<()> {
    let toolchains = output(clean("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF programs (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step(
            "installing the nightly toolchain (eBPF programs need build-std)",
            clean("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
        )?;
    }
    Ok(())
}

/// Installs the nightly toolchain, its `rust-src` and `bpf-linker` when missing.
fn ensure_toolchain() -> anyhow::Result<()> {
    ensure_nightly()?;
    let components =
        output(clean("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step(
            "adding rust-src to nightly (build-std=core for bpfel-unknown-none)",
            clean("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        )?;
    }
    let linker = output(clean("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER) {
        step(
            &format!("installing bpf-linker {BPF_LINKER} (takes a few minutes, once)"),
            clean("cargo").args(["install", &format!("bpf-linker@{BPF_LINKER}"), "--locked"]),
        )?;
    }
    Ok(())
}

/// Builds the programs and returns the object's path.
pub fn build(root: &Path) -> anyhow::Result<PathBuf> {
    ensure_toolchain()?;
    let flags = ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\u{1f}");
    step(
        "building agent-ebpf for bpfel-unknown-none",
        clean("rustup")
            .args(["run", "nightly", "cargo", "build", "--release", "--locked"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(root.join("target/ebpf"))
            .current_dir(root.join("agent-ebpf"))
            .env("CARGO_ENCODED_RUSTFLAGS", flags),
    )?;
    let object = object(root);
    if !object.exists() {
        bail!("the eBPF build finished but {} is missing", object.display());
    }
    Ok(object)
}
