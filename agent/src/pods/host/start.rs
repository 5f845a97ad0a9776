//! One attempt of a container: its overlay root over the image's layers, its mounts, the OCI
//! spec, and the shim that starts and watches it.

use anyhow::{Context, bail};

use super::*;
use crate::pods::spec::{self, Bind, Plan};
use crate::runtime::shim::Started;

impl Host {
    /// The host PID of a running container of the pod (its latest attempt's).
    fn running_pid(&self, name: &str) -> Option<i32> {
        let latest = std::fs::read_dir(self.dir.join("containers").join(name))
            .ok()?
            .flatten()
            .filter_map(|a| a.file_name().to_string_lossy().parse::<u32>().ok())
            .max()?;
        let status = self.ctr_dir(name, latest).join("status");
        if status.join(EXITED).exists() {
            return None;
        }
        let started: Started = read_json(&status.join(STARTED))?;
        pid_alive(started.pid).then_some(started.pid)
    }

    /// Creates attempt `number` of container `c` and starts it through the shim; returns once the
    /// shim says the process runs or that it could not start.
    pub(super) async fn start_attempt(
        &self,
        pod: &Value,
        c: &Value,
        image: &Image,
        env: Vec<(String, String)>,
        number: u32,
        wake: &Arc<Notify>,
    ) -> anyhow::Result<Attempt> {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        // A profile that cannot be read fails the attempt before anything of it exists.
        let privileged = c["securityContext"]["privileged"].as_bool() == Some(true);
        let seccomp = if privileged {
            None
        } else {
            spec::seccomp_profile(pod, c, &self.shared.cfg.seccomp_profile_root)?
        };
        let dir = self.ctr_dir(&name, number);
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in [
            &rootfs,
            &dir.join("upper"),
            &dir.join("work"),
            &dir.join("status"),
        ] {
            std::fs::create_dir_all(d)?;
        }
        let short: String = self
            .uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let id = format!("{short}-{name}-{number}");
        std::fs::write(dir.join("id"), &id)?;
        // The root filesystem: image layers (shared, read-only) under this attempt's upper dir.
        // A pod in a user namespace sees the layers through idmapped mounts, owned by its IDs,
        // and owns the upper directory (so its root owns the image's files as without one).
        let userns = crate::runtime::userns::base_of(&self.dir);
        let mut lower: Vec<String> = Vec::new();
        for layer in image.layers.iter().rev() {
            let dir = self.shared.images.layer_dir(layer)?;
            let Some(_) = userns else {
                lower.push(dir.display().to_string());
                continue;
            };
            let view = crate::runtime::userns::layer_view(&self.dir, layer);
            if !skiff_common::fs::is_mountpoint(&view) {
                std::fs::create_dir_all(&view)?;
                crate::runtime::userns::mount_idmapped(&dir, &view, &self.sandbox().join("user"))?;
            }
            lower.push(view.display().to_string());
        }
        if let Some(base) = userns {
            for d in [dir.join("upper"), dir.join("work")] {
                std::os::unix::fs::chown(&d, Some(base), Some(base))?;
            }
        }
        if !skiff_common::fs::is_mountpoint(&rootfs) {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                dir.join("upper").display(),
                dir.join("work").display()
            );
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            )
            .context("mounting the container's overlay root")?;
        }
        let mut binds = vec![
            Bind {
                target: "/etc/hosts".into(),
                source: self.dir.join("hosts"),
                read_only: false,
            },
            Bind {
                target: "/etc/hostname".into(),
                source: self.dir.join("hostname"),
                read_only: false,
            },
            Bind {
                target: "/etc/resolv.conf".into(),
                source: self.dir.join("resolv.conf"),
                read_only: false,
            },
        ];
        let term = dir.join("termination-log");
        std::fs::write(&term, b"")?;
        // Any user the container runs as may write its message, as the kubelet makes it (0666).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&term, std::fs::Permissions::from_mode(0o666))?;
        }
        if let Some(base) = userns {
            std::os::unix::fs::chown(&term, Some(base), Some(base))?;
        }
        binds.push(Bind {
            target: c["terminationMessagePath"]
                .as_str()
                .unwrap_or("/dev/termination-log")
                .to_string(),
            source: term,
            read_only: false,
        });
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let (mut source, ro) = self.volume_source(pod, m["name"].as_str().unwrap_or_default())?;
            // `subPathExpr` takes the container's environment, as `$(VAR)` in commands.
            let sub = match (
                m["subPath"].as_str().filter(|s| !s.is_empty()),
                m["subPathExpr"].as_str().filter(|s| !s.is_empty()),
            ) {
                (Some(sub), _) => Some(sub.to_owned()),
                (None, Some(expr)) => Some(spec::expand(expr, &env)),
                (None, None) => None,
            };
            if let Some(sub) = sub {
                if sub.split('/').any(|p| p == "..") {
                    bail!("subPath {sub:?} may not contain '..'");
                }
                if sub.starts_with('/') {
                    bail!("subPath {sub:?} must be a relative path");
                }
                source = source.join(&sub);
                if !source.exists() {
                    std::fs::create_dir_all(&source)?;
                }
            }
            binds.push(Bind {
                target: m["mountPath"].as_str().unwrap_or_default().to_string(),
                source,
                read_only: ro || m["readOnly"].as_bool().unwrap_or(false),
            });
        }
        let cgroups_path = format!("{}/{id}", self.cgroup_parent());
        let plan = Plan {
            pod,
            container: c,
            image,
            rootfs: rootfs.clone(),
            sandbox: self.sandbox(),
            env,
            binds,
            cgroups_path: cgroups_path.clone(),
            pids_limit: self.shared.cfg.pids_limit,
            // An ephemeral container sees the processes of the container it targets.
            pid_namespace: c["targetContainerName"]
                .as_str()
                .and_then(|target| self.running_pid(target))
                .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/pid"))),
            seccomp,
        };
        let mut config = spec::build(&plan);
        // hostPID and hostIPC: the host's processes (its /proc too) and its IPC objects.
        for (field, kind) in [("hostPID", "pid"), ("hostIPC", "ipc")] {
            if pod["spec"][field].as_bool() == Some(true)
                && let Some(ns) = config["linux"]["namespaces"].as_array_mut()
            {
                ns.retain(|n| n["type"].as_str() != Some(kind));
            }
        }
        if host_network(pod)
            && let Some(ns) = config["linux"]["namespaces"].as_array_mut()
        {
            ns.retain(|n| !matches!(n["type"].as_str(), Some("network" | "uts")));
            // The node's network is the host network of its pods.
            if let Some(node) = crate::network::pod_net::node_netns() {
                ns.push(serde_json::json!({"type": "network", "path": node}));
            }
        }
        if userns.is_some()
            && let Some(ns) = config["linux"]["namespaces"].as_array_mut()
        {
            ns.insert(
                0,
                serde_json::json!({"type": "user", "path": self.sandbox().join("user")}),
            );
        }
        std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
        let log = self.log_path(&name, number);
        std::fs::create_dir_all(log.parent().context("log path")?)?;
        let status_dir = dir.join("status");
        let memory_cgroup = crate::runtime::cgroups::memory_dir(&cgroups_path);
        let mut cmd = crate::runtime::helper::command("shim");
        cmd.arg("--root")
            .arg(self.shared.run_root())
            .arg("--id")
            .arg(&id)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--log")
            .arg(&log)
            .arg("--status-dir")
            .arg(&status_dir)
            .arg("--memory-cgroup")
            .arg(memory_cgroup)
            .arg("--cgroups-path")
            .arg(&cgroups_path)
            .args(spec::oom_score_adj(pod).map(|a| format!("--oom-score-adj={a}")))
            .arg(format!("--log-max-size={}", self.shared.cfg.log_max_size))
            .arg(format!("--log-max-files={}", self.shared.cfg.log_max_files))
            .args(
                [
                    ("--stdin", "stdin"),
                    ("--stdin-once", "stdinOnce"),
                    ("--tty", "tty"),
                ]
                .into_iter()
                .filter(|(_, field)| c[*field].as_bool() == Some(true))
                .map(|(flag, _)| flag),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().context("starting the container shim")?;
        let wake = wake.clone();
        let shim = tokio::spawn(async move {
            let _ = child.wait().await;
            wake.notify_one();
        });
        // Wait until the shim says the process runs (or that it could not start).
        let mut attempt = Attempt {
            number,
            id,
            started: None,
            exited: None,
            message: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let started: Option<Started> = read_json(&status_dir.join(STARTED));
            let exited: Option<Exited> = read_json(&status_dir.join(EXITED));
            if started.is_some() || exited.is_some() || shim.is_finished() || Instant::now() > deadline {
                attempt.started = started.or_else(|| read_json(&status_dir.join(STARTED)));
                attempt.exited = exited.or_else(|| read_json(&status_dir.join(EXITED)));
                return Ok(attempt);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
