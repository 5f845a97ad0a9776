//! Records the commit skiff-control is built from, for `/version`'s `gitCommit` (40 hex digits as
//! upstream; zeros outside a git checkout).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<std::process::Output> {
    Command::new("git").args(args).output().ok()
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"])
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "0".repeat(40));
    let tree = match git(&["diff", "--quiet", "HEAD"]).map(|o| o.status.code()) {
        Some(Some(0)) => "clean",
        Some(Some(1)) => "dirty",
        _ => "archive",
    };
    println!("cargo:rustc-env=SKIFF_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SKIFF_GIT_TREE_STATE={tree}");
    // Rebuilt when the checkout moves to another commit (paths that do not exist would make
    // Cargo rerun this on every build).
    println!("cargo:rerun-if-changed=build.rs");
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
