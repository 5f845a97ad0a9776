//! Upgrading the agent in place, pods kept running: a new binary staged at
//! `DATA_DIR/upgrade/skiff-agent` (by the DaemonSet of `deploy/agent-daemonset.yaml`, or by hand)
//! and `SIGUSR2` sent to the pid in `DATA_DIR/agent.pid` make the agent check that the binary runs
//! here (`--version`), rename it over its own binary and `execve` it with the same arguments. The
//! process keeps its pid (so systemd and the pid file stay right) and the new agent adopts the
//! pods' shims, as after any restart.
//!
//! The agent runs on the host, beside its pods rather than in one of them: as the kubelet, it is
//! what runs the DaemonSet's pod, and it cannot replace the container it runs in. The DaemonSet
//! delivers the binary and waits, Ready once the host runs exactly its binary.

use anyhow::Context;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a new binary is staged, under the data directory.
pub const STAGED: &str = "upgrade/skiff-agent";
/// The running agent's pid, under the data directory.
pub const PID_FILE: &str = "agent.pid";

/// Writes the pid file (replaced atomically: a reader never sees a partial pid).
pub fn write_pid(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!(".{PID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, data_dir.join(PID_FILE)).context("writing the pid file")
}

/// Listens for `SIGUSR2` from now on (its default action would end the agent) and returns what
/// upgrades to the staged binary on each; that future returns only if the signal stream ends. A
/// staged binary that does not run here is removed and the agent keeps running.
pub fn listen(
    data_dir: PathBuf,
    argv: Vec<std::ffi::OsString>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let usr2 = signal(SignalKind::user_defined2()).context("listening for SIGUSR2")?;
    Ok(serve(data_dir, argv, usr2))
}

async fn serve(data_dir: PathBuf, argv: Vec<std::ffi::OsString>, mut usr2: tokio::signal::unix::Signal) {
    while usr2.recv().await.is_some() {
        let staged = data_dir.join(STAGED);
        let err = match install(&staged).await {
            Ok(exe) => {
                tracing::info!(binary = %exe.display(), "upgrading in place: running the new binary");
                let mut cmd = std::process::Command::new(&exe);
                cmd.args(argv.iter().skip(1));
                if let Some(arg0) = argv.first() {
                    cmd.arg0(arg0);
                }
                // Only returns on failure; the old image keeps running then.
                anyhow::Error::new(cmd.exec()).context(format!("executing {}", exe.display()))
            }
            Err(e) => e,
        };
        tracing::error!(error = format!("{err:#}"), staged = %staged.display(), "upgrade failed; this version keeps running");
        let _ = std::fs::remove_file(&staged);
    }
}

/// Checks the staged binary and renames it over the agent's own; returns that path.
async fn install(staged: &Path) -> anyhow::Result<PathBuf> {
    let meta =
        std::fs::metadata(staged).with_context(|| format!("no binary staged at {}", staged.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", staged.display());
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o755))?;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(staged)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the staged binary's --version did not answer within 10 s")?
    .context("running the staged binary")?;
    let version = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && version.starts_with("skiff-agent "),
        "the staged binary is not a skiff-agent that runs here ({}; {})",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    tracing::info!(version = version.trim(), "staged binary checked");
    let exe = crate::runtime::helper::binary().to_owned();
    let dir = exe.parent().context("the agent's binary has no directory")?;
    let name = exe.file_name().context("the agent's binary has no name")?;
    // Beside the running one, then renamed over it: atomic on one filesystem.
    let tmp = dir.join(format!(".{}.upgrade", name.to_string_lossy()));
    std::fs::copy(staged, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &exe).with_context(|| format!("replacing {}", exe.display()))?;
    let _ = std::fs::remove_file(staged);
    Ok(exe)
}

/// Reaps the children an earlier image of this process left (after an in-place upgrade: its
/// shims and helpers, which the new image did not spawn and so never waits for). Called before
/// this image starts children of its own, so only those are found; they are waited for one by
/// one, never with `waitpid(-1)`, which would take statuses the runtime waits for.
pub fn reap_inherited_children() {
    let me = std::process::id() as i32;
    let inherited: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid) == Some(me))
        .collect();
    if inherited.is_empty() {
        return;
    }
    tracing::info!(
        children = inherited.len(),
        "reaping the children of the previous image"
    );
    let _ = std::thread::Builder::new()
        .name("reap-inherited".into())
        .spawn(move || {
            use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
            use nix::unistd::Pid;
            let mut left = inherited;
            while !left.is_empty() {
                left.retain(|pid| {
                    matches!(
                        waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)),
                        Ok(WaitStatus::StillAlive)
                    )
                });
                std::thread::sleep(Duration::from_millis(500));
            }
        });
}

/// The parent pid of `pid`, from `/proc/PID/stat` (the field after the command's closing paren).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ppid(&stat)
}

fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_pid_follows_a_command_with_spaces_and_parens() {
        assert_eq!(parse_ppid("42 (a b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parse_ppid("garbage"), None);
    }
}
