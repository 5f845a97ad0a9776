//! The agent's helpers (the shim, `exec`, the sandbox) are its own binary run again. They start
//! from the binary that runs (`/proc/self/exe`), not from its path: after an upgrade replaces the
//! file on disk, `kubectl exec` and new containers keep working, and a running agent never starts
//! another version's helpers. Their `argv[0]` stays the path the agent was started from.

use std::path::PathBuf;
use std::sync::OnceLock;

static PATH: OnceLock<PathBuf> = OnceLock::new();

fn path() -> &'static PathBuf {
    PATH.get_or_init(|| std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff-agent")))
}

/// Remembers the binary's path while it still names it (at start, before an upgrade can replace
/// the file).
pub fn init() {
    path();
}

/// A command that runs the agent's binary with `subcommand`.
pub fn command(subcommand: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0(path()).arg(subcommand);
    cmd
}

/// The path the agent's binary was started from (what an in-place upgrade replaces).
pub fn binary() -> &'static std::path::Path {
    path()
}
