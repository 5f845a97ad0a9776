//! The real upstream components the peer benchmarks run beside Skiff, built on this machine from
//! Debian's Kubernetes 1.20 source package (`apt-get source kubernetes`, which carries `vendor/`)
//! with Debian's Go 1.19 and upstream's own `make` (which runs its code generators in GOPATH
//! mode), offline once the package is fetched. Everything lives under
//! `target/peers/` (`debsrc/` the package, `src/` the unpacked tree, `bin/` the binaries) and
//! is reused by later runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const VERSION: &str = "v1.20.2";
const GO: &str = "/usr/lib/go-1.19/bin/go";
const SOURCES: &str = "/etc/apt/sources.list.d/skiff-peers-src.sources";

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Debian's source package of Kubernetes, fetched once (with a `deb-src` entry for Debian's
/// archive when the host has none).
fn tarball(peers: &Path) -> anyhow::Result<PathBuf> {
    let debsrc = peers.join("debsrc");
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&debsrc)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kubernetes_") && n.ends_with(".orig.tar.gz"))
            })
    };
    if let Some(t) = find() {
        return Ok(t);
    }
    std::fs::create_dir_all(&debsrc)?;
    let fetch = || {
        Command::new("apt-get")
            .args(["source", "--download-only", "kubernetes"])
            .current_dir(&debsrc)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !fetch() {
        if !Path::new(SOURCES).exists() {
            eprintln!("peers: adding a deb-src entry for Debian's archive ({SOURCES})");
            std::fs::write(
                SOURCES,
                "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            )?;
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        if !fetch() {
            bail!("apt-get source --download-only kubernetes failed (Debian's source package is needed)");
        }
    }
    find().context("apt-get source left no kubernetes_*.orig.tar.gz")
}

/// The unpacked, prepared source tree.
fn source(peers: &Path) -> anyhow::Result<PathBuf> {
    let tree = peers.join("src").join(format!("kubernetes-{}", &VERSION[1..]));
    if tree.join(".prepared").exists() {
        return Ok(tree);
    }
    let tarball = tarball(peers)?;
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(peers.join("src"))?;
    eprintln!("peers: unpacking {}", tarball.display());
    run(Command::new("tar")
        .arg("-C")
        .arg(peers.join("src"))
        .arg("-xzf")
        .arg(&tarball))?;
    if !tree.join("vendor").is_dir() {
        bail!(
            "{} has no vendor/ (is {} Kubernetes {VERSION}?)",
            tree.display(),
            tarball.display()
        );
    }
    std::fs::write(tree.join(".prepared"), "")?;
    Ok(tree)
}

/// Builds (once) the upstream commands `names` (`kube-apiserver`, `kube-scheduler`, ...; `pause`
/// is the sandbox process of upstream's pause image, compiled from its C source) and returns the
/// directory that holds them.
pub fn binaries(root: &Path, names: &[&str]) -> anyhow::Result<PathBuf> {
    let peers = root.join("target/peers");
    let bin = peers.join("bin");
    let missing: Vec<&str> = names.iter().copied().filter(|n| !bin.join(n).exists()).collect();
    if missing.is_empty() {
        return Ok(bin);
    }
    if !Path::new(GO).exists() {
        bail!("{GO} is missing: apt-get install golang-1.19-go");
    }
    let tree = source(&peers)?;
    std::fs::create_dir_all(&bin)?;
    eprintln!(
        "peers: building {} {VERSION} with Go 1.19 (upstream's `make`, generators included; about 10 minutes the first time)",
        missing.join(", ")
    );
    if missing.contains(&"pause") {
        run(Command::new("gcc")
            .args(["-Os", "-Wall", "-Werror", "-static", "-DVERSION=v3.4.1", "-o"])
            .arg(bin.join("pause"))
            .arg(tree.join("build/pause/linux/pause.c")))?;
    }
    let missing: Vec<&str> = missing.into_iter().filter(|n| *n != "pause").collect();
    if missing.is_empty() {
        return Ok(bin);
    }
    let what: Vec<String> = missing.iter().map(|n| format!("cmd/{n}")).collect();
    let path = format!(
        "{}:{}",
        Path::new(GO).parent().unwrap_or(Path::new("/")).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("make")
        .current_dir(&tree)
        .env("PATH", path)
        .env("CGO_ENABLED", "0")
        .arg(format!("WHAT={}", what.join(" "))))?;
    for name in missing {
        std::fs::copy(tree.join("_output/bin").join(name), bin.join(name))
            .with_context(|| format!("copying the built {name}"))?;
    }
    Ok(bin)
}
