//! The previous release's agent, for the version-skew test: an agent one minor version older than
//! this control plane must keep working with it and upgrade in place under running pods.
//!
//! `xtask/previous-release` names the release (`VERSION COMMIT`, the commit tagged `vVERSION`);
//! its sources come out of this checkout's history (`git archive`), its eBPF object and agent are
//! built as that release built them, into `target/previous/VERSION/skiff-agent`. The agent's
//! dependencies are compiled in this workspace's target directory, so what both releases share
//! is built once.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// `(version, commit)` of the previous release.
pub fn release(root: &Path) -> anyhow::Result<(String, String)> {
    let path = root.join("xtask/previous-release");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(version), Some(commit)) => Ok((version.to_owned(), commit.to_owned())),
        _ => bail!("{}: expected `VERSION COMMIT`", path.display()),
    }
}

/// Builds the previous release's agent unless it is there already; returns its path.
pub fn agent(root: &Path) -> anyhow::Result<PathBuf> {
    let (version, commit) = release(root)?;
    let dir = root.join("target/previous").join(&version);
    let out = dir.join("skiff-agent");
    if out.exists() {
        return Ok(out);
    }
    eprintln!("xtask: building the previous release's agent ({version}, {commit}) for the version-skew test");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let have = || git(&["cat-file", "-e", &format!("{commit}^{{commit}}")]);
    if !have() {
        // A shallow clone lacks the release's commit: fetch its tag (or else the commit itself)
        // from where this checkout came from.
        let tag = format!("refs/tags/v{version}:refs/tags/v{version}");
        let fetched = [tag.as_str(), commit.as_str()]
            .iter()
            .any(|what| git(&["fetch", "--quiet", "origin", what]))
            && have();
        if !fetched {
            bail!(
                "the previous release's commit {commit} (v{version}) is not in this checkout and could not be \
                 fetched from origin: clone with history (not --depth)"
            );
        }
    }
    let src = dir.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    std::fs::create_dir_all(&src)?;
    let archive = Command::new("sh")
        .arg("-c")
        .arg("git -C \"$1\" archive --format=tar \"$2\" | tar -x -C \"$3\"")
        .args([
            "sh",
            &root.display().to_string(),
            &commit,
            &src.display().to_string(),
        ])
        .status()
        .context("running git archive | tar")?;
    if !archive.success() {
        bail!("extracting {commit} into {} failed ({archive})", src.display());
    }
    let object = super::ebpf::build(&src)?;
    super::run(
        super::cargo()
            .args(["build", "--locked", "-p", "skiff-agent", "--manifest-path"])
            .arg(src.join("Cargo.toml"))
            // This workspace's target directory: the dependencies both releases share (the same
            // lock file, mostly) are compiled once. The release's binary lands where this
            // workspace's agent does; the build of this workspace's agent after it puts that back.
            .arg("--target-dir")
            .arg(root.join("target"))
            .env("SKIFF_EBPF_OBJECT", &object),
    )?;
    let built = root.join("target/debug/skiff-agent");
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    // The sources (and the release's eBPF build under them) are not needed again.
    let _ = std::fs::remove_dir_all(&src);
    Ok(out)
}
