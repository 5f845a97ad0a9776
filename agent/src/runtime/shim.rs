//! The container shim: a single-threaded process, re-exec'd from the agent's own binary, that creates
//! one container through libcontainer, stays its parent and reaper, copies its stdout/stderr into a
//! CRI-format log file, and records how it ended.
//!
//! libcontainer forks with raw `clone3`, `chdir`s the whole process and changes the dumpable flag, so it
//! must never run inside the agent's multi-threaded tokio runtime. The shim calls `setsid` so it
//! outlives an agent restart; the agent finds the container again through the files written here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// What the shim is asked to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ShimArgs {
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
    /// The container id (unique on the node).
    #[arg(long)]
    pub id: String,
    /// The OCI bundle (config.json and rootfs).
    #[arg(long)]
    pub bundle: PathBuf,
    /// The CRI-format log file the container's output is appended to.
    #[arg(long)]
    pub log: PathBuf,
    /// Directory where `started.json` and `exit.json` are written.
    #[arg(long)]
    pub status_dir: PathBuf,
    /// The container's memory cgroup directory, read after exit to tell an OOM kill.
    #[arg(long)]
    pub memory_cgroup: Option<PathBuf>,
    /// The container's cgroups path: on a hybrid host the shim joins its cgroup2 directory first, so
    /// that the container is there for the service proxy's socket hooks.
    #[arg(long)]
    pub cgroups_path: Option<String>,
    /// Size at which the log is rotated (0: never).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub log_max_size: u64,
    /// Log files kept, the current one included.
    #[arg(long, default_value_t = 5)]
    pub log_max_files: u32,
    /// OOM score adjustment of the container's process.
    #[arg(long, allow_hyphen_values = true)]
    pub oom_score_adj: Option<i32>,
    /// The container reads stdin, which attached clients write (`stdin: true`).
    #[arg(long)]
    pub stdin: bool,
    /// Stdin ends when the first attached client leaves (`stdinOnce: true`).
    #[arg(long)]
    pub stdin_once: bool,
    /// The container's stdio is a terminal (`tty: true`).
    #[arg(long)]
    pub tty: bool,
}

/// Written once the container's process runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// The container's init process, as seen from the host.
    pub pid: i32,
    /// The shim's own pid.
    pub shim_pid: i32,
    /// RFC 3339.
    pub started_at: String,
}

/// Written when the container has ended (or could not start).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exited {
    /// Exit code; 128+N for a signal, as a shell reports it.
    pub exit_code: i32,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
    /// RFC 3339.
    pub finished_at: String,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// The container could not be created or started: the reason.
    pub error: Option<String>,
}

impl Exited {
    /// Exit code 0 after a real start.
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0 && self.error.is_none()
    }
}

/// File names inside the status directory.
pub const STARTED: &str = "started.json";
/// File names inside the status directory.
pub const EXITED: &str = "exit.json";

/// Now, in RFC 3339 with nanoseconds, as CRI logs and Kubernetes timestamps use.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(value).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join(name))
}

/// Runs the shim; returns the process exit code.
pub fn main(args: ShimArgs) -> i32 {
    // Own session: an agent restart (or its process group being signalled) leaves us alone.
    let _ = nix::unistd::setsid();
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            let exited = Exited {
                exit_code: 128,
                finished_at: now_rfc3339(),
                error: Some(format!("{e:#}")),
                ..Exited::default()
            };
            let _ = write_json(&args.status_dir, EXITED, &exited);
            1
        }
    }
}

/// The container's log file, rotated like the kubelet's (`containerLogMaxSize`/`MaxFiles`): when it
/// grows past `max_size`, it becomes `NAME.1` (older ones shift up) and a fresh file starts.
struct Log {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl Log {
    fn open(path: &Path, max_size: u64, max_files: u32) -> std::io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Log {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files,
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.max_size > 0 && self.size > 0 && self.size + bytes.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        let keep = self.max_files.max(1) - 1;
        if keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(name(keep));
        for i in (1..keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// One output stream of the container, copied into the log line by line.
struct Stream {
    fd: OwnedFd,
    name: &'static str,
    /// The attach channel of this stream.
    channel: u8,
    pending: Vec<u8>,
    open: bool,
}

/// Longest line written as one log record; longer ones are split into partial (`P`) records.
const MAX_LINE: usize = 16 * 1024;

impl Stream {
    fn read(&mut self, log: &mut Log, attach: Option<&mut crate::runtime::attach::Server>) -> bool {
        let mut buf = [0u8; 32 * 1024];
        match nix::unistd::read(self.fd.as_raw_fd(), &mut buf) {
            Ok(0) => {
                self.open = false;
                self.flush(log, true);
                false
            }
            Ok(n) => {
                if let Some(attach) = attach {
                    attach.output(self.channel, &buf[..n]);
                }
                self.pending.extend_from_slice(&buf[..n]);
                self.flush(log, false);
                true
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => false,
            Err(_) => {
                self.open = false;
                self.flush(log, true);
                false
            }
        }
    }

    /// Writes complete lines (and, at the end or when too long, the partial rest).
    fn flush(&mut self, log: &mut Log, eof: bool) {
        let mut out = Vec::new();
        let mut start = 0;
        let ts = now_rfc3339();
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + nl];
            for (i, chunk) in line.chunks(MAX_LINE).enumerate() {
                let last = (i + 1) * MAX_LINE >= line.len();
                record(&mut out, &ts, self.name, if last { "F" } else { "P" }, chunk);
            }
            if line.is_empty() {
                record(&mut out, &ts, self.name, "F", b"");
            }
            start += nl + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE || (eof && !self.pending.is_empty()) {
            let take = self.pending.len().min(MAX_LINE);
            let chunk: Vec<u8> = self.pending.drain(..take).collect();
            record(&mut out, &ts, self.name, "P", &chunk);
        }
        if !out.is_empty() {
            let _ = log.write_all(&out);
        }
    }
}

fn record(out: &mut Vec<u8>, ts: &str, stream: &str, tag: &str, content: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_bytes());
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

fn run(args: &ShimArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&args.status_dir)?;
    let mut log = Log::open(&args.log, args.log_max_size, args.log_max_files)
        .with_context(|| format!("opening {}", args.log.display()))?;
    let devnull = OpenOptions::new().read(true).write(true).open("/dev/null")?;
    // The container inherits fds 0-2 when libcontainer forks it: pipes (and /dev/null as stdin
    // unless it reads stdin). With a terminal, the container's init makes one in the container and
    // sends us its master side over the console socket (see `console`).
    let mut outputs: Vec<(OwnedFd, &'static str, u8)> = Vec::new();
    let mut stdin_w: Option<OwnedFd> = None;
    let mut tty_master: Option<OwnedFd> = None;
    let console = if args.tty {
        for fd in 0..3 {
            nix::unistd::dup2(devnull.as_raw_fd(), fd)?;
        }
        Some(crate::runtime::console::Socket::bind().context("binding the console socket")?)
    } else {
        let (out_r, out_w) = nix::unistd::pipe()?;
        let (err_r, err_w) = nix::unistd::pipe()?;
        if args.stdin {
            let (in_r, in_w) = nix::unistd::pipe()?;
            nix::unistd::dup2(in_r.as_raw_fd(), 0)?;
            stdin_w = Some(in_w);
        } else {
            nix::unistd::dup2(devnull.as_raw_fd(), 0)?;
        }
        nix::unistd::dup2(out_w.as_raw_fd(), 1)?;
        nix::unistd::dup2(err_w.as_raw_fd(), 2)?;
        outputs.push((out_r, "stdout", crate::runtime::attach::STDOUT));
        outputs.push((err_r, "stderr", crate::runtime::attach::STDERR));
        None
    };

    // The container inherits the score from its parent at fork; the shim takes its own back after.
    // Lowering it needs CAP_SYS_RESOURCE, which a restricted host may withhold: then it stays as is.
    let own_oom = match args.oom_score_adj {
        Some(adj) => {
            let own = std::fs::read_to_string("/proc/self/oom_score_adj").ok();
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .ok()
                .and(own)
        }
        None => None,
    };
    if let Some(path) = &args.cgroups_path {
        crate::runtime::cgroups::join_hybrid_unified(path).context("joining the pod's cgroup2 directory")?;
    }
    // Rust ignores SIGPIPE in its processes, and an ignored signal stays ignored across exec: the
    // container starts with the default, as under runc; the shim takes its own back after the fork.
    set_sigpipe(SigHandler::SigDfl);
    let created = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.root)
        .and_then(|b| b.validate_id())
        .and_then(|b| {
            b.with_console_socket(console.as_ref().map(|c| c.path()))
                .as_init(&args.bundle)
                .with_systemd(false)
                // libcontainer asks for a console socket only of "detached" containers; the flag
                // changes nothing else (the shim stays the container's parent either way).
                .with_detach(console.is_some())
                .build()
        });
    let started = created.and_then(|mut c| c.start().map(|()| c));
    set_sigpipe(SigHandler::SigIgn);
    // Our copies of the container's ends go, so the pipes (or the terminal) reach EOF when the
    // container's processes close them.
    for fd in 0..3 {
        nix::unistd::dup2(devnull.as_raw_fd(), fd)?;
    }
    let mut container = started.map_err(|e| anyhow::anyhow!("{e}"))?;
    let pid = container.pid().context("the container has no pid")?;
    if let Some(console) = console {
        let master = crate::runtime::console::receive(&console.listener, std::time::Duration::from_secs(10))
            .context("receiving the container's terminal")?;
        if args.stdin {
            stdin_w = Some(master.try_clone()?);
        }
        outputs.push((master.try_clone()?, "stdout", crate::runtime::attach::STDOUT));
        tty_master = Some(master);
    }
    if let Some(own) = &own_oom {
        let _ = std::fs::write("/proc/self/oom_score_adj", own);
    }
    write_json(
        &args.status_dir,
        STARTED,
        &Started {
            pid: pid.as_raw(),
            shim_pid: std::process::id() as i32,
            started_at: now_rfc3339(),
        },
    )?;

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let mut streams: Vec<Stream> = outputs
        .into_iter()
        .map(|(fd, name, channel)| Stream {
            fd,
            name,
            channel,
            pending: Vec::new(),
            open: true,
        })
        .collect();
    // Attaching is best effort: the container runs whether or not its socket could be made (then
    // `kubectl attach` finds no socket, and a stdin nobody can write is closed).
    let mut attach =
        crate::runtime::attach::Server::bind(&args.status_dir, stdin_w, args.stdin_once, tty_master).ok();
    let mut status = reap(pid)?;
    while status.is_none() || streams.iter().any(|s| s.open) {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let open: Vec<usize> = (0..streams.len()).filter(|&i| streams[i].open).collect();
        for &i in &open {
            fds.push(PollFd::new(streams[i].fd.as_fd(), PollFlags::POLLIN));
        }
        let attach_at = fds.len();
        if let Some(a) = &attach {
            fds.extend(a.poll_fds());
        }
        // Once the process is gone, what remains in the pipes is drained; a grandchild that keeps
        // them open does not keep the shim (and the pod) waiting longer than a moment.
        let timeout = if status.is_some() {
            PollTimeout::from(200u16)
        } else {
            PollTimeout::NONE
        };
        let n = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        if ready[0] {
            while let Ok(Some(_)) = sfd.read_signal() {}
            if status.is_none() {
                status = reap(pid)?;
            }
        }
        for (k, &i) in open.iter().enumerate() {
            if ready[k + 1] {
                streams[i].read(&mut log, attach.as_mut());
            }
        }
        if let Some(a) = attach.as_mut() {
            a.handle(&ready[attach_at..]);
        }
        if n == 0 && status.is_some() {
            for s in &mut streams {
                s.open = false;
                s.flush(&mut log, true);
            }
        }
    }
    let (exit_code, signal) = status.unwrap_or((128, None));
    let oom_killed = signal == Some(Signal::SIGKILL as i32) && oom_kills(args.memory_cgroup.as_deref()) > 0;
    drop(attach);
    let _ = std::fs::remove_file(args.status_dir.join(crate::runtime::attach::SOCKET));
    let _ = container.delete(true);
    write_json(
        &args.status_dir,
        EXITED,
        &Exited {
            exit_code,
            signal,
            finished_at: now_rfc3339(),
            oom_killed,
            error: None,
        },
    )?;
    Ok(())
}

/// Sets the disposition of SIGPIPE (default or ignored; no handler).
#[expect(unsafe_code, reason = "sigaction has no safe wrapper")]
fn set_sigpipe(handler: SigHandler) {
    // SAFETY: SigDfl and SigIgn install no handler function, and the shim and the exec helper are
    // single-threaded.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, handler) };
}

/// Reaps `pid` if it has ended: its exit code and the signal that ended it.
fn reap(pid: Pid) -> anyhow::Result<Option<(i32, Option<i32>)>> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(Some((code, None))),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                return Ok(Some((128 + sig as i32, Some(sig as i32))));
            }
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// OOM kills recorded by the container's memory cgroup (v2 `memory.events`, v1 `memory.oom_control`).
fn oom_kills(dir: Option<&Path>) -> u64 {
    let Some(dir) = dir else { return 0 };
    for file in ["memory.events", "memory.oom_control"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            for line in text.lines() {
                if let Some(n) = line.strip_prefix("oom_kill ") {
                    return n.trim().parse().unwrap_or(0);
                }
            }
        }
    }
    0
}

/// `skiff-agent exec`: runs a command inside a running container (exec probes, `kubectl exec`),
/// single-threaded like the shim, with this process's stdio.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
    /// The container id.
    #[arg(long)]
    pub id: String,
    /// Run the command on a terminal made in the container, whose master side is sent to the
    /// console socket listening here (see `console`).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The process an exec'd command runs as with a terminal: the container's own (user,
/// capabilities, environment, working directory, no_new_privs), with the command's arguments and
/// `terminal` set, as containerd writes it for `runc exec`. Written beside `console`.
fn terminal_process(
    container: &libcontainer::container::Container,
    command: &[String],
    console: &Path,
) -> anyhow::Result<PathBuf> {
    let config = container.bundle().join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(command);
    process["terminal"] = serde_json::json!(true);
    let path = console.with_extension("process.json");
    std::fs::write(&path, serde_json::to_vec(&process)?)?;
    Ok(path)
}

/// Joins the user namespace the container's spec names, if it names one.
fn join_user_namespace(container: &libcontainer::container::Container) -> anyhow::Result<()> {
    let config = container.bundle().join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    let Some(path) = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ns| ns["type"] == "user")
        .and_then(|ns| ns["path"].as_str())
    else {
        return Ok(());
    };
    let file = std::fs::File::open(path)?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWUSER)?;
    Ok(())
}

/// Runs the exec helper; returns the command's exit code (128+N for a signal, 126 if it could not
/// start).
pub fn exec_main(args: ExecArgs) -> i32 {
    // The command's sockets must be in the container's cgroup2 directory for the service proxy.
    let container = match libcontainer::container::Container::load(args.root.join(&args.id)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skiff-agent exec: {e}");
            return 126;
        }
    };
    let joined = container
        .pid()
        .ok_or_else(|| "the container is not running".to_string())
        .and_then(|pid| {
            crate::runtime::cgroups::join_hybrid_unified_of(pid.as_raw()).map_err(|e| e.to_string())
        });
    if let Err(e) = joined {
        eprintln!("skiff-agent exec: joining the container's cgroup2 directory: {e}");
        return 126;
    }
    // A pod in a user namespace of its own: the command joins it too (libcontainer's tenant
    // joins every namespace of the container's but that one). Joined here, first, while this
    // process may still write the container's cgroups: in it the process keeps its host IDs and
    // has every capability over the container's other namespaces, which the namespace owns.
    if let Err(e) = join_user_namespace(&container) {
        eprintln!("skiff-agent exec: joining the pod's user namespace: {e:#}");
        return 126;
    }
    let process = match &args.console_socket {
        Some(console) => match terminal_process(&container, &args.command, console) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("skiff-agent exec: writing the terminal's process: {e:#}");
                return 126;
            }
        },
        None => None,
    };
    // As for the container's first process (see `run`).
    set_sigpipe(SigHandler::SigDfl);
    let built = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.root)
        .map(|b| {
            b.with_console_socket(args.console_socket.as_ref())
                .as_tenant()
                .with_container_args(args.command.clone())
                .with_process(process.as_ref())
                // As in `run`: "detached" only lets libcontainer take the console socket.
                .with_detach(args.console_socket.is_some())
                .build()
        });
    let pid = match built {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) | Err(e) => {
            eprintln!("skiff-agent exec: {e}");
            return 126;
        }
    };
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("skiff-agent exec: {e}");
                return 126;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_and_keep_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = Log::open(&path, 100, 3).unwrap();
        for i in 0..10 {
            log.write_all(format!("{i:0>59}\n").as_bytes()).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["0.log", "0.log.1", "0.log.2"]);
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("00000000000000000000000000000000000000000000000000000000009\n")
        );
    }
}
