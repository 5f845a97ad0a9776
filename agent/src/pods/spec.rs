//! The OCI runtime spec (`config.json`) for one container of a pod.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::image::Image;

/// A bind mount into the container.
#[derive(Debug, Clone)]
pub struct Bind {
    /// Where it appears in the container.
    pub target: String,
    /// What is mounted there (on the host).
    pub source: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything the spec is made from.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The pod.
    pub pod: &'a Value,
    /// The container (from `spec.containers`, `spec.initContainers` or `spec.ephemeralContainers`).
    pub container: &'a Value,
    /// Its image.
    pub image: &'a Image,
    /// The prepared root filesystem (an overlay mount).
    pub rootfs: PathBuf,
    /// The pod's namespace files directory.
    pub sandbox: PathBuf,
    /// Resolved environment, in order.
    pub env: Vec<(String, String)>,
    /// Volume mounts and pod files (`/etc/hosts`, ...).
    pub binds: Vec<Bind>,
    /// cgroups path (relative to each hierarchy's root).
    pub cgroups_path: String,
    /// `pids.max` for the container, when limited.
    pub pids_limit: Option<i64>,
    /// A PID namespace to join instead of a new one (an ephemeral container's target's).
    pub pid_namespace: Option<PathBuf>,
    /// The seccomp filter its `seccompProfile` asks for ([`seccomp_profile`]); a privileged
    /// container runs without one whatever it says.
    pub seccomp: Option<Value>,
}

/// Capabilities a container has by default: containerd's set without `NET_RAW`, as CRI-O and
/// Podman leave it out (raw and packet sockets let a container forge traffic on the pod network;
/// a container that needs them adds the capability, which the baseline Pod Security level
/// refuses).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The capabilities of this process's bounding set (`CapBnd` of `/proc/self/status`), as a mask.
fn own_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Every capability the kernel knows that the agent holds itself (for privileged containers: as
/// containerd's and CRI-O's, a privileged container gets the runtime's own capabilities; one the
/// agent lacks could not be given, and the container would fail to start).
fn all_caps() -> Vec<String> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let held = own_bounding_set().unwrap_or(u64::MAX);
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES
        .iter()
        .enumerate()
        .take(last as usize + 1)
        .filter(|(bit, _)| held & (1u64 << bit) != 0)
        .map(|(_, n)| format!("CAP_{n}"))
        .collect()
}

/// Syscalls RuntimeDefault refuses (with EPERM): the ones containerd's and Docker's default profiles
/// keep from unprivileged containers.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapon",
    "swapoff",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
];

/// The `RuntimeDefault` profile.
pub fn seccomp_default() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    })
}

/// Why a container's seccomp profile cannot be had (the container is not created; its status says
/// `CreateContainerError` with this message, as upstream's runtime reports it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProfileError(pub String);

/// The seccomp filter of container `c` of `pod`: its `seccompProfile`, else the pod's, else
/// `RuntimeDefault`. `Unconfined` is none; `Localhost` reads `localhostProfile` under `root` (the
/// kubelet's `--seccomp-profile-root`), in the OCI runtime spec's format or Docker's (`archMap`,
/// `name` for one syscall, `defaultErrnoRet`).
pub fn seccomp_profile(
    pod: &Value,
    c: &Value,
    root: &std::path::Path,
) -> Result<Option<Value>, ProfileError> {
    let own = &c["securityContext"]["seccompProfile"];
    let profile = if own["type"].is_string() {
        own
    } else {
        &pod["spec"]["securityContext"]["seccompProfile"]
    };
    match profile["type"].as_str().unwrap_or("RuntimeDefault") {
        "Unconfined" => Ok(None),
        "Localhost" => {
            let name = profile["localhostProfile"].as_str().unwrap_or_default();
            if name.is_empty() || name.starts_with('/') || name.split('/').any(|p| p == "..") {
                return Err(ProfileError(format!(
                    "localhostProfile {name:?} must be a path relative to the seccomp profile root, without \"..\""
                )));
            }
            let path = root.join(name);
            let text = std::fs::read(&path).map_err(|e| {
                ProfileError(format!(
                    "cannot load seccomp profile {:?}: {e}",
                    path.display().to_string()
                ))
            })?;
            let invalid = |e: String| {
                ProfileError(format!(
                    "cannot load seccomp profile {:?}: {e}",
                    path.display().to_string()
                ))
            };
            let docker: Value = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
            let oci = oci_profile(docker);
            serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(oci.clone())
                .map_err(|e| invalid(e.to_string()))?;
            Ok(Some(oci))
        }
        _ => Ok(Some(seccomp_default())),
    }
}

/// A seccomp profile in the OCI runtime spec's form, from that form or Docker's.
fn oci_profile(mut p: Value) -> Value {
    if let Some(arch_map) = p.get("archMap").and_then(Value::as_array).cloned() {
        let arches: Vec<Value> = arch_map
            .iter()
            .flat_map(|a| {
                std::iter::once(a["architecture"].clone())
                    .chain(a["subArchitectures"].as_array().cloned().unwrap_or_default())
            })
            .filter(Value::is_string)
            .collect();
        p["architectures"] = Value::Array(arches);
    }
    let default_errno = p.get("defaultErrnoRet").cloned();
    if let Some(o) = p.as_object_mut() {
        o.remove("archMap");
    }
    for rule in p["syscalls"].as_array_mut().into_iter().flatten() {
        let Some(o) = rule.as_object_mut() else { continue };
        if let Some(name) = o.remove("name") {
            o.insert("names".into(), json!([name]));
        }
        // Docker's filters by capability and kernel version: their rules apply as written.
        o.remove("includes");
        o.remove("excludes");
        o.remove("comment");
        if o.get("action").and_then(Value::as_str) == Some("SCMP_ACT_ERRNO")
            && !o.contains_key("errnoRet")
            && let Some(errno) = &default_errno
        {
            o.insert("errnoRet".into(), errno.clone());
        }
    }
    p
}

/// Parses a Kubernetes quantity of CPU into millicores.
pub fn cpu_millis(q: &str) -> Option<i64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    q.parse::<f64>().ok().map(|c| (c * 1000.0).round() as i64)
}

/// Parses a Kubernetes quantity of bytes.
pub fn bytes(q: &str) -> Option<i64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("m", 1e-3),
    ];
    for (s, mult) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<f64>().ok().map(|v| (v * mult).ceil() as i64);
        }
    }
    if let Some((m, e)) = q.split_once(['e', 'E']) {
        return Some((m.parse::<f64>().ok()? * 10f64.powi(e.parse().ok()?)) as i64);
    }
    q.parse::<f64>().ok().map(|v| v.ceil() as i64)
}

/// The process arguments: Kubernetes' command/args over the image's entrypoint/cmd.
pub fn argv(container: &Value, image: &Image, env: &[(String, String)]) -> Vec<String> {
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
    };
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    let entry = strings(&image.config["Entrypoint"]).unwrap_or_default();
    let cmd = strings(&image.config["Cmd"]).unwrap_or_default();
    let argv = match (command, args) {
        (Some(c), Some(a)) => c.into_iter().chain(a).collect(),
        (Some(c), None) => c,
        (None, Some(a)) => entry.into_iter().chain(a).collect(),
        (None, None) => entry.into_iter().chain(cmd).collect(),
    };
    argv.into_iter().map(|a| expand(&a, env)).collect()
}

/// Expands `$(VAR)` references as Kubernetes does (`$$` escapes; unknown references stay as written).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        if let Some(t) = tail.strip_prefix('$') {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix('(')
            && let Some(end) = t.find(')')
        {
            let name = &t[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Looks a user (or group) name up in the container's `/etc/passwd` (`/etc/group`).
fn lookup(rootfs: &std::path::Path, file: &str, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() != Some(&name) {
            return None;
        }
        Some((
            f.get(2)?.parse().ok()?,
            f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0),
        ))
    })
}

/// A pod's host name: `spec.hostname`, else its name, cut to 63 characters without a trailing
/// `-` or `.` (the kubelet's `truncatePodHostnameIfNeeded`: the kernel takes 64 at most).
pub fn pod_hostname(pod: &Value) -> String {
    let name = pod["spec"]["hostname"]
        .as_str()
        .filter(|h| !h.is_empty())
        .or(pod["metadata"]["name"].as_str())
        .unwrap_or_default();
    if name.len() <= 63 {
        return name.to_owned();
    }
    name[..63].trim_end_matches(['-', '.']).to_owned()
}

/// The kubelet's `verifyRunAsNonRoot`: with `runAsNonRoot`, the container must run as a user that
/// is known not to be root — an explicit non-zero `runAsUser`, or an image whose `User` is a
/// numeric non-zero uid (an image without a user runs as root; a user name cannot be verified).
/// The error is the container's `CreateContainerConfigError`, in upstream's words.
pub fn verify_run_as_non_root(pod: &Value, container: &Value, image_config: &Value) -> Result<(), String> {
    let (sc, psc) = (&container["securityContext"], &pod["spec"]["securityContext"]);
    let non_root = sc["runAsNonRoot"].as_bool().or(psc["runAsNonRoot"].as_bool());
    if non_root != Some(true) {
        return Ok(());
    }
    let who = format!(
        "pod: \"{}_{}({})\", container: {}",
        pod["metadata"]["name"].as_str().unwrap_or_default(),
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["uid"].as_str().unwrap_or_default(),
        container["name"].as_str().unwrap_or_default()
    );
    if let Some(uid) = sc["runAsUser"].as_i64().or(psc["runAsUser"].as_i64()) {
        return match uid {
            0 => Err(format!("container's runAsUser breaks non-root policy ({who})")),
            _ => Ok(()),
        };
    }
    let user = image_config["User"].as_str().unwrap_or_default();
    let user = user.split(':').next().unwrap_or_default();
    match user.parse::<i64>() {
        Ok(0) => Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        )),
        Ok(_) => Ok(()),
        Err(_) if user.is_empty() => Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        )),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root ({who})"
        )),
    }
}

/// The user the process runs as: securityContext first (container, then pod), then the image's `User`.
fn user(plan: &Plan<'_>) -> (u32, u32, Vec<u32>) {
    let sc = &plan.container["securityContext"];
    let psc = &plan.pod["spec"]["securityContext"];
    let image_user = plan.image.config["User"].as_str().unwrap_or("");
    let (iu, ig) = image_user.split_once(':').unwrap_or((image_user, ""));
    let (mut uid, mut gid) = match iu.parse::<u32>() {
        Ok(u) => (u, lookup(&plan.rootfs, "passwd", iu).map(|x| x.1).unwrap_or(0)),
        Err(_) if iu.is_empty() => (0, 0),
        Err(_) => lookup(&plan.rootfs, "passwd", iu).unwrap_or((0, 0)),
    };
    if !ig.is_empty() {
        gid = ig
            .parse()
            .ok()
            .or_else(|| lookup(&plan.rootfs, "group", ig).map(|x| x.0))
            .unwrap_or(gid);
    }
    if let Some(u) = sc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64()) {
        uid = u as u32;
    }
    if let Some(g) = sc["runAsGroup"].as_u64().or(psc["runAsGroup"].as_u64()) {
        gid = g as u32;
    }
    let mut extra: Vec<u32> = psc["supplementalGroups"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g.as_u64().map(|g| g as u32)).collect())
        .unwrap_or_default();
    if let Some(fs) = psc["fsGroup"].as_u64() {
        extra.push(fs as u32);
    }
    (uid, gid, extra)
}

/// Builds `config.json`.
pub fn build(plan: &Plan<'_>) -> Value {
    let c = plan.container;
    let sc = &c["securityContext"];
    let privileged = sc["privileged"].as_bool().unwrap_or(false);
    let (uid, gid, extra_gids) = user(plan);
    let mut caps: Vec<String> = if privileged {
        all_caps()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    let norm = |s: &str| {
        if s.starts_with("CAP_") {
            s.to_string()
        } else {
            format!("CAP_{s}")
        }
    };
    for add in sc["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if add == "ALL" {
            caps = all_caps();
        } else if !caps.contains(&norm(add)) {
            caps.push(norm(add));
        }
    }
    for drop in sc["capabilities"]["drop"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if drop == "ALL" {
            caps.clear();
        } else {
            caps.retain(|c| *c != norm(drop));
        }
    }
    let env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cwd = c["workingDir"]
        .as_str()
        .filter(|w| !w.is_empty())
        .or(plan.image.config["WorkingDir"].as_str().filter(|w| !w.is_empty()))
        .unwrap_or("/");
    let mut process = json!({
        "terminal": c["tty"].as_bool().unwrap_or(false),
        "user": {"uid": uid, "gid": gid, "additionalGids": extra_gids},
        "args": argv(c, plan.image, &plan.env),
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
    });
    // As the kubelet: `no_new_privs` only when `allowPrivilegeEscalation` is false, so setuid
    // binaries work by default. Only then is the field set at all: libcontainer loads the seccomp
    // filter before dropping privileges only when the field is absent (with `false` it loads it
    // after, where a non-root user may not, and the container fails to start).
    if !privileged && sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        process["noNewPrivileges"] = json!(true);
    }
    if uid != 0 {
        // A non-root user starts without effective capabilities, as with runc.
        process["capabilities"]["effective"] = json!([]);
        process["capabilities"]["permitted"] = json!([]);
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
    ];
    for b in &plan.binds {
        let mut options = vec!["rbind", "rprivate"];
        if b.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": b.target, "type": "bind", "source": b.source, "options": options}));
    }

    let mut linux = json!({
        "namespaces": [
            match &plan.pid_namespace {
                Some(path) => json!({"type": "pid", "path": path}),
                None => json!({"type": "pid"}),
            },
            {"type": "mount"},
            {"type": "cgroup"},
            {"type": "network", "path": plan.sandbox.join("net")},
            {"type": "ipc", "path": plan.sandbox.join("ipc")},
            {"type": "uts", "path": plan.sandbox.join("uts")},
        ],
        "cgroupsPath": plan.cgroups_path,
        "resources": resources(c, plan.pids_limit, crate::runtime::cgroups::is_unified()),
    });
    if privileged {
        linux["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        return finish(plan, process, mounts, linux);
    }
    // `procMount: Unmasked` leaves /proc as the kernel shows it (for nested container runtimes).
    if sc["procMount"].as_str() != Some("Unmasked") {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    if let Some(filter) = &plan.seccomp {
        linux["seccomp"] = filter.clone();
    }
    finish(plan, process, mounts, linux)
}

fn finish(plan: &Plan<'_>, process: Value, mounts: Vec<Value>, linux: Value) -> Value {
    let sc = &plan.container["securityContext"];
    json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": plan.rootfs, "readonly": sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false)},
        "hostname": null,
        "mounts": mounts,
        "linux": linux,
    })
}

/// The share of the room between a memory request and limit a container may use before the
/// kernel throttles it (the kubelet's `memoryThrottlingFactor` default).
const MEMORY_THROTTLING_FACTOR: f64 = 0.9;

/// cgroup resources from requests and limits. On a unified (cgroup v2) host a container whose memory
/// limit is above its request is also throttled before it reaches the limit, through the OCI
/// `unified` map, as the kubelet's Memory QoS does: `memory.high` is request + 0.9 × (limit −
/// request), rounded down to a page. Never for a Guaranteed container (request = limit), which
/// `memory.max` alone bounds. (Upstream also sets `memory.min` to the request on the container and
/// its pod and QoS cgroups; a container's alone protects nothing, so it is left out.)
pub fn resources(c: &Value, pids_limit: Option<i64>, unified_host: bool) -> Value {
    let req = &c["resources"]["requests"];
    let lim = &c["resources"]["limits"];
    let mut r = json!({});
    let cpu_req = req["cpu"]
        .as_str()
        .and_then(cpu_millis)
        .or(lim["cpu"].as_str().and_then(cpu_millis));
    // shares as the kubelet computes them: milliCPU * 1024 / 1000, at least 2.
    let shares = cpu_req.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2);
    r["cpu"] = json!({"shares": shares});
    if let Some(m) = lim["cpu"].as_str().and_then(cpu_millis) {
        let period = 100_000i64;
        r["cpu"]["quota"] = json!((m * period / 1000).max(1000));
        r["cpu"]["period"] = json!(period);
    }
    let mem_limit = lim["memory"].as_str().and_then(bytes);
    if let Some(b) = mem_limit {
        r["memory"] = json!({"limit": b});
    }
    if unified_host && let Some(high) = memory_high(req["memory"].as_str().and_then(bytes), mem_limit) {
        r["unified"] = json!({"memory.high": high.to_string()});
    }
    if let Some(p) = pids_limit {
        r["pids"] = json!({"limit": p});
    }
    r
}

/// `memory.high` for a container's memory request and limit (see [`resources`]).
fn memory_high(request: Option<i64>, limit: Option<i64>) -> Option<i64> {
    // A request defaults to the limit, as the API server's defaulting does.
    let request = request.or(limit)?;
    let limit = limit.filter(|&l| l > request)?;
    let page = rustix::param::page_size() as i64;
    let high = request as f64 + (limit - request) as f64 * MEMORY_THROTTLING_FACTOR;
    let high = (high / page as f64).floor() as i64 * page;
    (high > request).then_some(high)
}

/// The pod's QoS class, as upstream computes it.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        for res in ["cpu", "memory"] {
            let r = c["resources"]["requests"][res].as_str();
            let l = c["resources"]["limits"][res].as_str();
            if r.is_some() || l.is_some() {
                any = true;
            }
            match (r, l) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The OOM score adjustment of the pod's processes, by QoS class (set by the shim after start:
/// libcontainer 0.7 fails to create a container whose spec carries `oomScoreAdj`).
pub fn oom_score_adj(pod: &Value) -> Option<i32> {
    match qos_class(pod) {
        "Guaranteed" => Some(-997),
        "BestEffort" => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_pod_names_make_63_character_host_names() {
        let pod = json!({"metadata": {"name": format!("{}-{}", "a".repeat(62), "b".repeat(10))}});
        assert_eq!(
            pod_hostname(&pod),
            "a".repeat(62),
            "cut, without the trailing dash"
        );
        let named = json!({"metadata": {"name": "p"}, "spec": {"hostname": "h"}});
        assert_eq!(pod_hostname(&named), "h");
    }

    #[test]
    fn run_as_non_root_refuses_what_may_be_root() {
        let pod = |psc: Value| json!({"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": {"securityContext": psc}});
        let c = json!({"name": "app"});
        let image = |user: &str| json!({"User": user});
        assert_eq!(verify_run_as_non_root(&pod(json!({})), &c, &image("")), Ok(()));
        let err = verify_run_as_non_root(&pod(json!({"runAsNonRoot": true})), &c, &image("")).unwrap_err();
        assert_eq!(
            err,
            "container has runAsNonRoot and image will run as root (pod: \"p_n(u)\", container: app)"
        );
        assert!(verify_run_as_non_root(&pod(json!({"runAsNonRoot": true})), &c, &image("0:0")).is_err());
        assert_eq!(
            verify_run_as_non_root(&pod(json!({"runAsNonRoot": true})), &c, &image("1000")),
            Ok(())
        );
        assert!(
            verify_run_as_non_root(&pod(json!({"runAsNonRoot": true})), &c, &image("nobody"))
                .unwrap_err()
                .contains("image has non-numeric user (nobody), cannot verify user is non-root")
        );
        let explicit = |uid: i64| json!({"name": "app", "securityContext": {"runAsUser": uid}});
        assert!(
            verify_run_as_non_root(&pod(json!({"runAsNonRoot": true})), &explicit(0), &image("1000"))
                .unwrap_err()
                .starts_with("container's runAsUser breaks non-root policy")
        );
        assert_eq!(
            verify_run_as_non_root(&pod(json!({"runAsNonRoot": true})), &explicit(7), &image("")),
            Ok(())
        );
    }

    #[test]
    fn seccomp_profiles_come_from_the_container_the_pod_or_the_default() {
        let root = tempfile::tempdir().unwrap();
        let pod = |sc: Value| json!({"spec": {"securityContext": sc}});
        let plain = json!({"name": "c"});
        // RuntimeDefault unless asked otherwise; Unconfined is none.
        assert_eq!(
            seccomp_profile(&pod(json!({})), &plain, root.path()).unwrap(),
            Some(seccomp_default())
        );
        let unconfined = pod(json!({"seccompProfile": {"type": "Unconfined"}}));
        assert_eq!(seccomp_profile(&unconfined, &plain, root.path()).unwrap(), None);
        let own = json!({"name": "c", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}});
        assert!(seccomp_profile(&unconfined, &own, root.path()).unwrap().is_some());
        // Localhost: a file under the root, OCI's format or Docker's.
        std::fs::create_dir_all(root.path().join("profiles")).unwrap();
        std::fs::write(
            root.path().join("profiles/docker.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1,
                "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
                "syscalls": [{"name": "mkdir", "action": "SCMP_ACT_ERRNO", "comment": "no"},
                             {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
        )
        .unwrap();
        let local =
            |name: &str| pod(json!({"seccompProfile": {"type": "Localhost", "localhostProfile": name}}));
        let got = seccomp_profile(&local("profiles/docker.json"), &plain, root.path())
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            json!({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "syscalls": [{"action": "SCMP_ACT_ERRNO", "names": ["mkdir"], "errnoRet": 1},
                             {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]})
        );
        // A missing, malformed or escaping profile is an error that names it.
        let missing = seccomp_profile(&local("profiles/none.json"), &plain, root.path()).unwrap_err();
        assert!(missing.0.starts_with("cannot load seccomp profile"), "{missing}");
        assert!(missing.0.contains("profiles/none.json"), "{missing}");
        std::fs::write(
            root.path().join("bad.json"),
            r#"{"defaultAction": "SCMP_ACT_NOPE"}"#,
        )
        .unwrap();
        assert!(seccomp_profile(&local("bad.json"), &plain, root.path()).is_err());
        assert!(seccomp_profile(&local("../etc/passwd"), &plain, root.path()).is_err());
        assert!(seccomp_profile(&local("/etc/passwd"), &plain, root.path()).is_err());
    }

    #[test]
    fn default_capabilities_leave_raw_sockets_out_and_unmasked_proc_is_bare() {
        assert!(!DEFAULT_CAPS.contains(&"CAP_NET_RAW"));
        let image = Image {
            digest: String::new(),
            config_digest: String::new(),
            layers: vec![],
            config: json!({}),
            size: 0,
        };
        let pod = json!({"spec": {}});
        fn plan<'a>(pod: &'a Value, c: &'a Value, image: &'a Image) -> Plan<'a> {
            Plan {
                pod,
                container: c,
                image,
                rootfs: "/r".into(),
                sandbox: "/s".into(),
                env: vec![],
                binds: vec![],
                cgroups_path: "p".into(),
                pids_limit: None,
                pid_namespace: None,
                seccomp: Some(seccomp_default()),
            }
        }
        let plain = json!({"name": "c"});
        let spec = build(&plan(&pod, &plain, &image));
        assert!(
            spec["linux"]["maskedPaths"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(spec["linux"]["seccomp"].is_object());
        let unmasked = json!({"name": "c", "securityContext": {"procMount": "Unmasked"}});
        let spec = build(&plan(&pod, &unmasked, &image));
        assert!(spec["linux"]["maskedPaths"].is_null() && spec["linux"]["readonlyPaths"].is_null());
        assert!(spec["linux"]["seccomp"].is_object(), "still filtered");
        let privileged = json!({"name": "c", "securityContext": {"privileged": true}});
        let spec = build(&plan(&pod, &privileged, &image));
        assert!(spec["linux"]["seccomp"].is_null() && spec["linux"]["maskedPaths"].is_null());
        assert!(
            spec["process"]["capabilities"]["bounding"]
                .as_array()
                .is_some_and(|c| c.contains(&json!("CAP_NET_RAW")))
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(bytes("64Mi"), Some(64 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("128974848"), Some(128974848));
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }

    #[test]
    fn memory_high_follows_the_kubelet() {
        let c = json!({"resources": {"requests": {"memory": "8Mi"}, "limits": {"memory": "32Mi"}}});
        let r = resources(&c, None, true);
        assert_eq!(r["memory"]["limit"], 32 << 20);
        // 8 Mi + 0.9 × 24 Mi = 29.6 Mi, rounded down to a page.
        let page = rustix::param::page_size() as i64;
        let high = (8 << 20) + (24 << 20) * 9 / 10;
        assert_eq!(r["unified"]["memory.high"], (high / page * page).to_string());
        // Guaranteed (a limit alone, or equal to the request), or no limit: never throttled.
        for c in [
            json!({"resources": {"limits": {"memory": "32Mi"}}}),
            json!({"resources": {"requests": {"memory": "32Mi"}, "limits": {"memory": "32Mi"}}}),
            json!({"resources": {"requests": {"memory": "32Mi"}}}),
            json!({}),
        ] {
            assert!(resources(&c, None, true).get("unified").is_none(), "{c}");
        }
        // On v1 hosts the map is never set.
        let c = json!({"resources": {"requests": {"memory": "8Mi"}, "limits": {"memory": "32Mi"}}});
        assert!(resources(&c, None, false).get("unified").is_none());
    }

    #[test]
    fn qos() {
        let p = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&p), "Guaranteed");
        let p = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&p), "Burstable");
        assert_eq!(qos_class(&json!({"spec": {"containers": [{}]}})), "BestEffort");
    }
}

/// A pod's `/etc/resolv.conf`, as the kubelet writes it for its `dnsPolicy`: `ClusterFirst` (the
/// default; for host-network pods only as `ClusterFirstWithHostNet`) points at cluster DNS with the
/// namespace's search path, then the host's search domains, and `ndots:5`; `Default` (or no cluster
/// DNS on this node) copies the host's (minus loopback stubs a pod cannot reach); `None` starts
/// empty. `dnsConfig` nameservers, searches and options are merged in.
/// `dns`: the cluster DNS address and domain, when this node answers cluster DNS.
pub fn resolv_conf(
    pod: &Value,
    host_network: bool,
    dns: Option<(std::net::Ipv4Addr, &str)>,
    host: &str,
) -> String {
    let policy = pod["spec"]["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirst" if !host_network => dns,
        "ClusterFirstWithHostNet" => dns,
        _ => None,
    };
    let field = |line: &str, key: &str| -> Vec<String> {
        line.strip_prefix(key)
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map(|rest| rest.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let host_lines: Vec<&str> = host.lines().map(str::trim).collect();
    let host_searches: Vec<String> = host_lines
        .iter()
        .flat_map(|l| {
            let mut s = field(l, "search");
            s.extend(field(l, "domain"));
            s
        })
        .collect();
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match (policy, cluster) {
            ("None", _) => Default::default(),
            (_, Some((address, d))) => {
                let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
                let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
                searches.extend(host_searches);
                (vec![address.to_string()], searches, vec!["ndots:5".to_string()])
            }
            _ => (
                host_lines
                    .iter()
                    .flat_map(|l| field(l, "nameserver"))
                    .filter(|ip| !(ip.starts_with("127.") || ip == "::1"))
                    .collect(),
                host_searches,
                host_lines.iter().flat_map(|l| field(l, "options")).collect(),
            ),
        };
    let cfg = &pod["spec"]["dnsConfig"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    servers.extend(strings(&cfg["nameservers"]));
    searches.extend(strings(&cfg["searches"]));
    for o in cfg["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else { continue };
        options.retain(|existing| existing.split(':').next() != Some(name));
        options.push(match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        });
    }
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod resolv_tests {
    use serde_json::json;

    use super::*;

    fn dns() -> Option<(std::net::Ipv4Addr, &'static str)> {
        Some(("10.96.0.10".parse().unwrap(), "cluster.local"))
    }

    const HOST: &str = "search example.com\nnameserver 127.0.0.53\nnameserver 192.0.2.1\noptions edns0\n";

    #[test]
    fn cluster_first_points_at_cluster_dns_with_the_namespace_search_path() {
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {"dnsConfig": {"options": [{"name": "ndots", "value": "2"}], "searches": ["extra.local"]}}});
        assert_eq!(
            resolv_conf(&pod, false, dns(), HOST),
            "search shop.svc.cluster.local svc.cluster.local cluster.local example.com extra.local\nnameserver 10.96.0.10\noptions ndots:2\n"
        );
    }

    #[test]
    fn host_network_and_default_policy_resolve_like_the_host() {
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {}});
        let host_like = "search example.com\nnameserver 192.0.2.1\noptions edns0\n";
        assert_eq!(resolv_conf(&pod, true, dns(), HOST), host_like);
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {"dnsPolicy": "Default"}});
        assert_eq!(resolv_conf(&pod, false, dns(), HOST), host_like);
        assert_eq!(resolv_conf(&json!({"spec": {}}), false, None, HOST), host_like);
        let pod = json!({"spec": {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.9"]}}});
        assert_eq!(resolv_conf(&pod, false, dns(), HOST), "nameserver 192.0.2.9\n");
    }
}
