//! Fixtures for Skiff's end-to-end suites: a real `skiff-control` process in a temporary directory
//! and real `kubectl` pointed at it.

pub mod image;
pub mod node;
pub mod partition;
pub mod raw;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `skiff-control` binary under test (built by `cargo xtask test`).
pub fn control_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SKIFF_CONTROL_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target.join("debug").join("skiff-control");
    assert!(
        bin.exists(),
        "{} is missing: run the suite through `cargo xtask test`",
        bin.display()
    );
    bin
}

/// The venv with the official Kubernetes Python client (`kubernetes` 32) that `cargo xtask test`
/// makes under `target/python-client` from Debian's python3.
pub fn python_venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-client");
    std::fs::canonicalize(&venv).unwrap_or_else(|_| {
        panic!(
            "{} is missing: `cargo xtask test` makes it (python3 -m venv, pip install kubernetes)",
            venv.display()
        )
    })
}

/// Runs `script` with the Python client's interpreter against the cluster of `kubeconfig`
/// (bounded like every command); returns its output.
#[track_caller]
pub fn python(kubeconfig: &Path, script: &str) -> Output {
    output_within(
        Command::new(python_venv().join("bin/python"))
            .arg("-c")
            .arg(script)
            .env("KUBECONFIG", kubeconfig),
        None,
        COMMAND_LIMIT,
    )
}

/// `text` (Prometheus' text format) read with the Prometheus project's own parser
/// (`prometheus_client`): `{family: {"type": T, "samples": [[name, labels, value], ...]}}`.
pub fn prometheus_families(kubeconfig: &Path, text: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let script = format!(
        r#"
import json
from prometheus_client.parser import text_string_to_metric_families
out = {{}}
for family in text_string_to_metric_families(open({file:?}).read()):
    out[family.name] = {{"type": family.type, "samples": [[s.name, s.labels, s.value] for s in family.samples]}}
print(json.dumps(out))
"#,
        file = file.display().to_string()
    );
    let out = python(kubeconfig, &script);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of sample `name` of `family` whose labels include `want`.
pub fn prometheus_sample(
    families: &serde_json::Value,
    family: &str,
    name: &str,
    want: &[(&str, &str)],
) -> Option<f64> {
    families[family]["samples"].as_array()?.iter().find_map(|s| {
        let labels = &s[1];
        (s[0] == name && want.iter().all(|(k, v)| labels[*k] == *v)).then(|| s[2].as_f64().unwrap_or(0.0))
    })
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running control plane; killed (by PID) and its directory removed when dropped.
#[derive(Debug)]
pub struct Control {
    bin: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    ip: String,
    port: u16,
    /// Whether `port` was asked for (kept when a start is retried).
    fixed_port: bool,
    fixed_raft_port: bool,
    raft_port: u16,
    extra: Vec<String>,
    /// A filesystem the fixture mounted over the data directory, unmounted on drop.
    mount: Option<PathBuf>,
}

/// How long one command a suite runs (kubectl, curl, a helper) may take before the test fails
/// with what the command printed so far, instead of hanging the whole run.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// Runs `cmd` with `stdin` written to it and returns its output (bounded by [`COMMAND_LIMIT`]).
#[track_caller]
pub fn output_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    output_within(&mut cmd, Some(stdin), COMMAND_LIMIT)
}

/// Processes whose command line names `dir` (an agent's helpers and its containers' shims).
pub fn processes_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&dir).then_some(cmd)
        })
        .collect()
}

/// Runs `cmd` in a process group of its own, feeding it `stdin` (or nothing), and returns its
/// output. Past `limit` the group is killed and the test fails with the command and what it
/// printed so far.
#[track_caller]
pub fn output_within(cmd: &mut Command, stdin: Option<&str>, limit: Duration) -> Output {
    try_output_within(cmd, stdin, limit).unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// [`output_within`], with an error if the command cannot be started.
#[track_caller]
pub fn try_output_within(cmd: &mut Command, stdin: Option<&str>, limit: Duration) -> std::io::Result<Output> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let what = format!("{:?}", cmd);
    let mut child = cmd
        .process_group(0)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let feeder = child.stdin.take().map(|mut pipe| {
        let input = stdin.unwrap_or_default().as_bytes().to_vec();
        // A command that exits without reading its input closes the pipe: not an error here.
        std::thread::spawn(move || drop(pipe.write_all(&input)))
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.is_none() {
        kill_group(child.id());
        let _ = child.wait();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => panic!(
            "{what} did not finish within {} s and was killed\nstdout so far: {}\nstderr so far: {}",
            limit.as_secs(),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// The last `lines` lines of `text`: what a failing test prints of a process's log.
pub fn tail(text: &str, lines: usize) -> &str {
    let start = text.rmatch_indices('\n').nth(lines).map_or(0, |(i, _)| i + 1);
    &text[start..]
}

/// Kills a process group started by [`output_within`] (its leader's id is the group's).
fn kill_group(leader: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{leader}")])
        .status();
}

/// Bounded `output()` for the commands the suites run: see [`output_within`].
pub trait BoundedOutput {
    /// Runs the command with no input and returns its output, failing the test past
    /// [`COMMAND_LIMIT`].
    fn bounded_output(&mut self) -> std::io::Result<Output>;
}

impl BoundedOutput for Command {
    #[track_caller]
    fn bounded_output(&mut self) -> std::io::Result<Output> {
        try_output_within(self, None, COMMAND_LIMIT)
    }
}

impl Control {
    /// Starts `skiff-control` on loopback with a fresh data directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra flags.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_bin(&control_bin(), extra)
    }

    /// Starts the `skiff-control` binary `bin` (a release build, for benchmarks) with extra flags.
    pub fn start_bin(bin: &Path, extra: &[&str]) -> Self {
        Self::start_full(bin, extra, None)
    }

    /// Starts with extra flags and the data directory on a tmpfs of `size_mb` MiB of its own
    /// (root only), so a test can fill it.
    pub fn start_on_tmpfs(size_mb: u32, extra: &[&str]) -> Self {
        Self::start_full(&control_bin(), extra, Some(size_mb))
    }

    /// Starts with the API and Raft on loopback address `ip` (`127.0.0.2`: a second host, as
    /// far as addresses go), the API on `port` (API servers of one cluster share their port).
    pub fn start_at(ip: &str, port: u16, extra: &[&str]) -> Self {
        Self::start_inner(&control_bin(), extra, None, Some((ip, port)), None)
    }

    /// As [`Control::start_at`], with the data directory on a tmpfs of `size_mb` MiB of its own
    /// (root only), so a test can fill it.
    pub fn start_at_on_tmpfs(ip: &str, port: u16, size_mb: u32, extra: &[&str]) -> Self {
        Self::start_inner(&control_bin(), extra, Some(size_mb), Some((ip, port)), None)
    }

    /// As [`Control::start_at`], with the Raft transport on `raft_port` (which a test put a
    /// link in front of before the member starts).
    pub fn start_at_raft(ip: &str, port: u16, raft_port: u16, extra: &[&str]) -> Self {
        Self::start_inner(&control_bin(), extra, None, Some((ip, port)), Some(raft_port))
    }

    /// The address its Raft transport listens on.
    pub fn raft_addr(&self) -> String {
        format!("{}:{}", self.ip, self.raft_port)
    }

    fn start_full(bin: &Path, extra: &[&str], tmpfs: Option<u32>) -> Self {
        Self::start_inner(bin, extra, tmpfs, None, None)
    }

    fn start_inner(
        bin: &Path,
        extra: &[&str],
        tmpfs: Option<u32>,
        at: Option<(&str, u16)>,
        raft_port: Option<u16>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skiff-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut c = Self {
            bin: bin.to_owned(),
            child: None,
            dir,
            ip: at.map_or("127.0.0.1", |a| a.0).to_owned(),
            port: at.map_or_else(free_port, |a| a.1),
            fixed_port: at.is_some(),
            raft_port: raft_port.unwrap_or_else(free_port),
            fixed_raft_port: raft_port.is_some(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            mount: None,
        };
        if let Some(size) = tmpfs {
            let data = c.data_dir();
            std::fs::create_dir_all(&data).expect("data dir");
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}m,mode=0700"), "tmpfs"])
                .arg(&data)
                .output()
                .expect("running mount");
            assert!(
                out.status.success(),
                "mounting a tmpfs needs root: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            c.mount = Some(data);
        }
        // A free port is only free until someone binds it: another test may take it between
        // `free_port` and the server's bind. Then start over with fresh ports and state.
        for attempt in 0.. {
            c.launch();
            match c.wait_ready() {
                Ok(()) => break,
                Err(log) if log.contains("Address already in use") && attempt < 5 => {
                    c.kill9();
                    // Empty the data directory (it may be a mount point).
                    for entry in std::fs::read_dir(c.data_dir()).into_iter().flatten().flatten() {
                        let _ = std::fs::remove_dir_all(entry.path())
                            .or_else(|_| std::fs::remove_file(entry.path()));
                    }
                    let _ = std::fs::remove_file(c.dir.path().join("control.log"));
                    if !c.fixed_port {
                        c.port = free_port();
                    }
                    if !c.fixed_raft_port {
                        c.raft_port = free_port();
                    }
                }
                Err(log) => panic!("skiff-control did not start: {log}"),
            }
        }
        c
    }

    fn spawn(&mut self) {
        self.launch();
        if let Err(log) = self.wait_ready() {
            panic!("skiff-control did not start: {log}");
        }
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("control.log"))
            .expect("log file");
        let child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen")
            .arg(format!("{}:{}", self.ip, self.port))
            .arg("--raft-listen")
            .arg(format!("{}:{}", self.ip, self.raft_port))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff-control");
        self.child = Some(child);
    }

    /// Waits until the server answers; on failure, says why with its log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("skiff-control exited with {status}: {}", self.log()));
            }
            if self.kubeconfig().exists() && self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("skiff-control did not become ready: {}", self.log()))
    }

    /// The control plane's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control.log")).unwrap_or_default()
    }

    /// The admin kubeconfig it wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The API server's URL.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// Kills the process with SIGKILL (no clean shutdown) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process has exited by itself.
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Starts the process again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A `kubectl` command using the admin kubeconfig.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        // A discovery cache of its own: another test's control plane on a reused port must not
        // answer for this one (kubectl would skip the discovery requests a test looks for).
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kubectl-cache"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(args);
        cmd
    }

    /// Runs kubectl and returns its output.
    #[track_caller]
    pub fn kubectl(&self, args: &[&str]) -> Output {
        output_within(&mut self.kubectl_cmd(args), None, COMMAND_LIMIT)
    }

    /// Runs kubectl with `stdin` and returns its output.
    #[track_caller]
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        output_with_stdin(self.kubectl_cmd(args), stdin)
    }

    /// Runs kubectl, asserts success, returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (bounded) until the scheduler has bound `pod`, and returns its node.
    #[track_caller]
    pub fn scheduled_node(&self, pod: &str) -> String {
        for _ in 0..200 {
            let node = self.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
            if !node.is_empty() {
                return node;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pod {pod} was never scheduled");
    }

    /// Merge-patches a pod's status subresource, as a kubelet would write it.
    #[track_caller]
    pub fn patch_pod_status(&self, pod: &str, patch: &str) -> String {
        self.ok(&[
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ])
    }

    /// Runs kubectl with stdin, asserts success, returns stdout.
    #[track_caller]
    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl, asserts failure, returns stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs kubectl with stdin, asserts failure, returns stderr.
    #[track_caller]
    pub fn fails_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- skiff-control's log, last lines ---\n{}",
                tail(&self.log(), 200)
            );
        }
        self.kill9();
        if let Some(mount) = self.mount.take() {
            let _ = Command::new("umount").arg(&mount).status();
        }
    }
}
