//! One pod's reconciliation loop: its sandbox and volumes (`sandbox.rs`), images (`images.rs`),
//! containers started, probed, restarted with back-off and stopped (here), and the status it
//! reports (`../status.rs`).

mod images;
mod sandbox;
mod termination;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::Method;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::Shared;
use super::containers::{Attempt, Ctr, is_sidecar};
use super::env::{ConfigError, Lookup};
use super::spec::{self, Bind, Plan};
use super::status::trim_ts;
use super::volumes;
use crate::image::{Image, Reference};
use crate::runtime::shim::{EXITED, Exited, STARTED, Started, now_rfc3339};
use images::{PullFailure, image_env};

/// `namespace/name`, as the pod's log lines say which pod they are about.
fn pod_key(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Pods saved on disk by a previous run of the agent.
pub fn saved_pods(shared: &Shared) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(shared.cfg.data_dir.join("pods")) else {
        return out;
    };
    for e in rd.flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        if let Ok(b) = std::fs::read(e.path().join("pod.json"))
            && let Ok(pod) = serde_json::from_slice::<Value>(&b)
        {
            out.push((uid, pod));
        }
    }
    out
}

struct Pod {
    shared: Arc<Shared>,
    uid: String,
    dir: PathBuf,
    pod: Value,
    ctrs: HashMap<String, Ctr>,
    ip: Option<String>,
    sandbox_ready: bool,
    last_status: Value,
    exits: Arc<Notify>,
    volume_sync: Option<Instant>,
    start_time: Option<String>,
    /// resourceVersion of the pod last written to `pod.json`.
    saved: String,
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Runs one pod's worker until its pod is gone and cleaned up.
#[tracing::instrument(name = "pod", skip_all, fields(pod = %pod_key(&initial), uid = %uid))]
pub async fn run(shared: Arc<Shared>, uid: String, initial: Value, mut rx: watch::Receiver<Option<Value>>) {
    // The pod may be gone before this task first runs; then it is cleaned up as it was last known.
    let latest = rx.borrow_and_update().clone();
    let mut gone = latest.is_none();
    let initial = latest.unwrap_or(initial);
    let dir = shared.pod_dir(&uid);
    let mut pod = Pod {
        shared,
        uid,
        dir,
        pod: initial,
        ctrs: HashMap::new(),
        ip: None,
        sandbox_ready: false,
        last_status: Value::Null,
        exits: Arc::new(Notify::new()),
        volume_sync: None,
        start_time: None,
        saved: String::new(),
    };
    pod.load();
    loop {
        let wake = if gone || pod.pod["metadata"]["deletionTimestamp"].is_string() {
            match pod.terminate(gone, &mut rx).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "pod clean-up failed; retrying");
                    Duration::from_secs(2)
                }
            }
        } else {
            match pod.sync().await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "pod sync failed");
                    Duration::from_secs(2)
                }
            }
        };
        let exits = pod.exits.clone();
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    gone = true;
                    continue;
                }
                match rx.borrow_and_update().clone() {
                    Some(p) => pod.pod = p,
                    None => gone = true,
                }
            }
            _ = exits.notified() => {}
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

impl Pod {
    fn ns(&self) -> &str {
        self.pod["metadata"]["namespace"].as_str().unwrap_or("default")
    }
    fn name(&self) -> &str {
        self.pod["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn host_network(&self) -> bool {
        self.pod["spec"]["hostNetwork"].as_bool().unwrap_or(false)
    }
    /// Where the pod is reached: its own address, or the node's.
    fn address(&self) -> String {
        self.ip.clone().unwrap_or_else(|| self.shared.cfg.node_ip.clone())
    }
    fn sandbox(&self) -> PathBuf {
        self.dir.join("ns")
    }
    fn containers(&self, key: &str) -> Vec<Value> {
        self.pod["spec"][key].as_array().cloned().unwrap_or_default()
    }
    fn ctr_dir(&self, name: &str, attempt: u32) -> PathBuf {
        self.dir.join("containers").join(name).join(attempt.to_string())
    }
    fn log_path(&self, name: &str, attempt: u32) -> PathBuf {
        self.shared
            .log_dir(self.ns(), self.name(), &self.uid)
            .join(name)
            .join(format!("{attempt}.log"))
    }
    fn cgroup_parent(&self) -> String {
        format!("/{}/pod{}", self.shared.cfg.cgroup_root, self.uid)
    }

    /// Reads what a previous agent left: attempts, their status files, the pod's address.
    fn load(&mut self) {
        if let Ok(ip) = std::fs::read_to_string(self.dir.join("ip")) {
            self.ip = Some(ip.trim().to_string());
        }
        self.start_time = std::fs::read_to_string(self.dir.join("start-time")).ok();
        self.sandbox_ready = crate::network::pod_net::sandbox_alive(&self.sandbox());
        let Ok(rd) = std::fs::read_dir(self.dir.join("containers")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut numbers: Vec<u32> = std::fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|a| a.file_name().to_string_lossy().parse().ok())
                .collect();
            numbers.sort();
            let mut c = Ctr::default();
            let attempt = |n: u32| {
                let st = self.ctr_dir(&name, n).join("status");
                Attempt {
                    number: n,
                    id: std::fs::read_to_string(self.ctr_dir(&name, n).join("id")).unwrap_or_default(),
                    started: read_json(&st.join(STARTED)),
                    exited: read_json(&st.join(EXITED)),
                }
            };
            if let Some(&n) = numbers.last() {
                c.current = Some(attempt(n));
            }
            if numbers.len() > 1 {
                c.previous = Some(attempt(numbers[numbers.len() - 2]));
            }
            self.ctrs.insert(name, c);
        }
    }

    /// Re-reads the status files of running attempts; notices shims that died without a word.
    fn refresh(&mut self) {
        let dir = self.dir.clone();
        for (name, c) in &mut self.ctrs {
            let Some(a) = &mut c.current else { continue };
            if a.exited.is_some() {
                continue;
            }
            let st = dir
                .join("containers")
                .join(name)
                .join(a.number.to_string())
                .join("status");
            a.exited = read_json(&st.join(EXITED));
            if a.started.is_none() {
                a.started = read_json(&st.join(STARTED));
            }
            if a.exited.is_none()
                && let Some(s) = &a.started
                && !pid_alive(s.pid)
                && !pid_alive(s.shim_pid)
            {
                a.exited = Some(Exited {
                    exit_code: 137,
                    finished_at: now_rfc3339(),
                    error: Some("the container's shim is gone".into()),
                    ..Exited::default()
                });
            }
        }
    }

    /// Keeps `pod.json` (what a restarted agent adopts) at the latest version of the pod.
    fn save(&mut self) -> anyhow::Result<()> {
        let version = self.pod["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !self.saved.is_empty() && self.saved == version {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        skiff_common::fs::write_private(&self.dir.join("pod.json"), &serde_json::to_vec(&self.pod)?)?;
        self.saved = version.to_string();
        Ok(())
    }

    /// One reconciliation pass; returns when to look again at the latest.
    async fn sync(&mut self) -> anyhow::Result<Duration> {
        self.save()?;
        self.refresh();
        if self.start_time.is_none() {
            let t = now_rfc3339();
            let _ = std::fs::write(self.dir.join("start-time"), &t);
            self.start_time = Some(t);
        }
        let mut wake = Duration::from_secs(10);
        if !self.sandbox_ready {
            self.create_sandbox().await?;
        }
        let lookup_api = self.shared.api.clone();
        let ca = self.shared.ca_pem.clone();
        // The downward API reads the pod's addresses, which this node knows before the pod's
        // status (written at the end of this pass) says so.
        let mut pod_for_lookup = self.pod.clone();
        let (pod_ip, node_ip) = (self.address(), self.shared.cfg.node_ip.clone());
        pod_for_lookup["status"]["podIP"] = json!(pod_ip);
        pod_for_lookup["status"]["podIPs"] = json!([{"ip": pod_ip}]);
        pod_for_lookup["status"]["hostIP"] = json!(node_ip);
        pod_for_lookup["status"]["hostIPs"] = json!([{"ip": node_ip}]);
        let lookup = Lookup::new(&lookup_api, self.ns(), &ca);
        // Volumes: created before any container, refreshed (configMap/secret updates) every pass.
        let due = self
            .volume_sync
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if due {
            match self.sync_volumes(&lookup, &pod_for_lookup).await {
                Ok(()) => self.volume_sync = Some(Instant::now()),
                Err(e) => {
                    let msg = format!("{e:#}");
                    for c in self
                        .containers("initContainers")
                        .iter()
                        .chain(self.containers("containers").iter())
                    {
                        let name = c["name"].as_str().unwrap_or_default().to_string();
                        let entry = self.ctrs.entry(name).or_default();
                        if entry.current.is_none() {
                            entry.waiting = Some(("ContainerCreating".into(), msg.clone()));
                        }
                    }
                    self.event("Warning", "FailedMount", &msg).await;
                    self.post_status().await?;
                    return Ok(Duration::from_secs(2));
                }
            }
        }
        wake = wake.min(Duration::from_secs(2));

        for c in super::pass::plan(&self.pod, &self.ctrs).start {
            if let Some(d) = self.start_if_due(&c, &lookup, &pod_for_lookup).await? {
                wake = wake.min(d);
            }
        }
        self.sync_probes();
        self.post_status().await?;
        Ok(wake)
    }

    /// Starts probes for running attempts that have none; stops those of ended attempts.
    fn sync_probes(&mut self) {
        let specs: Vec<Value> = self
            .containers("containers")
            .into_iter()
            .chain(self.containers("initContainers").into_iter().filter(is_sidecar))
            .collect();
        let grace = Duration::from_secs(
            self.pod["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        );
        let ip = self.address();
        for c in specs {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let Some(state) = self.ctrs.get_mut(&name) else {
                continue;
            };
            let current = state.current.as_ref().map(|a| a.number);
            if !state.running() {
                state.stop_probes();
                continue;
            }
            if state.probes.as_ref().is_some_and(|(n, _, _)| Some(*n) == current) {
                continue;
            }
            state.stop_probes();
            let Some(a) = state.current.clone() else { continue };
            let Some(started) = a.started.clone() else {
                continue;
            };
            let target = target(&self.shared, &c, &a.id, started.pid, grace, &ip);
            let verdict = Arc::new(std::sync::Mutex::new(super::probe::Verdict::default()));
            let events = EventSink::new(&self.shared, &self.pod);
            let report: super::probe::Report = Arc::new(move |reason, msg| {
                let events = events.clone();
                let kind = if reason == "Killing" { "Normal" } else { "Warning" };
                tokio::spawn(async move { events.post(kind, reason, &msg).await });
            });
            let task = tokio::spawn(super::probe::run(
                target,
                verdict.clone(),
                self.exits.clone(),
                report,
            ));
            state.probes = Some((a.number, task.abort_handle(), verdict));
        }
    }

    /// Starts a container if its back-off allows; returns when to look again.
    async fn start_if_due(
        &mut self,
        c: &Value,
        lookup: &Lookup<'_>,
        pod: &Value,
    ) -> anyhow::Result<Option<Duration>> {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let state = self.ctrs.entry(name.clone()).or_default();
        if let Some(due) = state.backoff.due_in(Instant::now()) {
            return Ok(Some(due));
        }
        let image = match self.ensure_image(c).await {
            Ok(i) => i,
            Err(e) => {
                let state = self.ctrs.entry(name.clone()).or_default();
                let now = Instant::now();
                let (reason, msg, wait, retried) = match e.downcast_ref::<PullFailure>() {
                    Some(PullFailure::InvalidName(m)) => (
                        "InvalidImageName",
                        m.clone(),
                        state.backoff.image_unavailable(now),
                        false,
                    ),
                    Some(PullFailure::NeverPull(m)) => (
                        "ErrImageNeverPull",
                        m.clone(),
                        state.backoff.image_unavailable(now),
                        false,
                    ),
                    Some(PullFailure::Pull(m)) => {
                        ("ErrImagePull", m.clone(), state.backoff.pull_failed(now), true)
                    }
                    None => return Err(e),
                };
                self.event(
                    "Warning",
                    if reason == "ErrImagePull" {
                        "Failed"
                    } else {
                        "InspectFailed"
                    },
                    &msg,
                )
                .await;
                let state = self.ctrs.entry(name.clone()).or_default();
                state.waiting = Some((reason.to_owned(), msg));
                if retried {
                    // Shown while waiting for the next attempt, as upstream does after the first failure.
                    let exits = self.exits.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        exits.notify_one();
                    });
                }
                return Ok(Some(wait));
            }
        };
        let state = self.ctrs.entry(name.clone()).or_default();
        state.backoff.pulled();
        state.image_id = Some(format!(
            "{}@{}",
            Reference::parse(c["image"].as_str().unwrap_or_default())
                .map(|r| r.name())
                .unwrap_or_default(),
            image.digest
        ));
        // Restart back-off (upstream's CrashLoopBackOff) of a container that has exited.
        if let Some(a) = state.current.as_ref().filter(|a| a.exited.is_some()) {
            let ran = a
                .started
                .as_ref()
                .and_then(|s| skiff_common::time::parse(&s.started_at))
                .zip(
                    a.exited
                        .as_ref()
                        .and_then(|e| skiff_common::time::parse(&e.finished_at)),
                )
                .map(|(s, e)| (e - s).whole_seconds().max(0) as u64)
                .unwrap_or(0);
            if let Some(b) = state.backoff.restart(Duration::from_secs(ran), Instant::now()) {
                let msg = format!(
                    "back-off {}s restarting failed container={name} pod={}_{}({})",
                    b.as_secs(),
                    self.name(),
                    self.ns(),
                    self.uid
                );
                let state = self.ctrs.entry(name.clone()).or_default();
                state.waiting = Some(("CrashLoopBackOff".into(), msg));
                self.event("Warning", "BackOff", "Back-off restarting failed container")
                    .await;
                return Ok(Some(b));
            }
        }
        let state = self.ctrs.entry(name.clone()).or_default();
        state.backoff.starting();
        let services = self
            .shared
            .cfg
            .feeds
            .services
            .read(|all| super::service_env::service_env(pod, all.values()));
        let env = match super::env::resolve(lookup, pod, c, &image_env(&image), &services).await {
            Ok(e) => e,
            Err(e) => {
                let msg = format!("{e:#}");
                if e.downcast_ref::<ConfigError>().is_none() {
                    return Err(e);
                }
                let state = self.ctrs.entry(name.clone()).or_default();
                state.waiting = Some(("CreateContainerConfigError".into(), msg.clone()));
                self.event("Warning", "Failed", &format!("Error: {msg}")).await;
                return Ok(Some(Duration::from_secs(2)));
            }
        };
        match self.start(c, &image, env).await {
            Ok(()) => {
                let state = self.ctrs.entry(name.clone()).or_default();
                state.waiting = None;
                Ok(None)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                self.event("Warning", "Failed", &format!("Error: {msg}")).await;
                let state = self.ctrs.entry(name).or_default();
                state.waiting = Some(("CreateContainerError".into(), msg));
                Ok(Some(Duration::from_secs(2)))
            }
        }
    }

    /// Creates the next attempt of a container and starts it through the shim.
    async fn start(&mut self, c: &Value, image: &Image, env: Vec<(String, String)>) -> anyhow::Result<()> {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let number = self
            .ctrs
            .get(&name)
            .and_then(|s| s.current.as_ref())
            .map(|a| a.number + 1)
            .unwrap_or(0);
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
        let lower: Vec<String> = image
            .layers
            .iter()
            .rev()
            .map(|l| self.shared.images.layer_dir(l).map(|p| p.display().to_string()))
            .collect::<anyhow::Result<_>>()?;
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
        binds.push(Bind {
            target: c["terminationMessagePath"]
                .as_str()
                .unwrap_or("/dev/termination-log")
                .to_string(),
            source: term,
            read_only: false,
        });
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let (mut source, ro) = self.volume_source(m["name"].as_str().unwrap_or_default())?;
            if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
                if sub.split('/').any(|p| p == "..") {
                    bail!("subPath {sub:?} may not contain '..'");
                }
                source = source.join(sub);
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
            pod: &self.pod,
            container: c,
            image,
            rootfs: rootfs.clone(),
            sandbox: self.sandbox(),
            env,
            binds,
            cgroups_path: cgroups_path.clone(),
            pids_limit: self.shared.cfg.pids_limit,
        };
        let mut config = spec::build(&plan);
        if self.host_network()
            && let Some(ns) = config["linux"]["namespaces"].as_array_mut()
        {
            ns.retain(|n| !matches!(n["type"].as_str(), Some("network" | "uts")));
            // The node's network is the host network of its pods.
            if let Some(node) = crate::network::pod_net::node_netns() {
                ns.push(serde_json::json!({"type": "network", "path": node}));
            }
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
            .args(spec::oom_score_adj(&self.pod).map(|a| format!("--oom-score-adj={a}")))
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
        let state = self.ctrs.entry(name.clone()).or_default();
        state.previous = state.current.take();
        state.current = Some(Attempt {
            number,
            id: id.clone(),
            started: None,
            exited: None,
        });
        let exits = self.exits.clone();
        let shim = tokio::spawn(async move {
            let _ = child.wait().await;
            exits.notify_one();
        });
        // Wait until the shim says the process runs (or that it could not start).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let started: Option<Started> = read_json(&status_dir.join(STARTED));
            let exited: Option<Exited> = read_json(&status_dir.join(EXITED));
            if started.is_some() || exited.is_some() || shim.is_finished() || Instant::now() > deadline {
                let state = self.ctrs.entry(name.clone()).or_default();
                if let Some(a) = &mut state.current {
                    a.started = started.or_else(|| read_json(&status_dir.join(STARTED)));
                    a.exited = exited.or_else(|| read_json(&status_dir.join(EXITED)));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let state = self
            .ctrs
            .get(&name)
            .and_then(|s| s.current.clone())
            .unwrap_or_default();
        if let Some(e) = state.exited.as_ref().and_then(|e| e.error.clone()) {
            self.event(
                "Warning",
                "Failed",
                &format!("Error: failed to start container \"{name}\": {e}"),
            )
            .await;
        } else {
            self.event("Normal", "Started", &format!("Started container {name}"))
                .await;
            if let (Some(hook), Some(started)) = (c["lifecycle"].get("postStart"), state.started.as_ref()) {
                // As upstream: the hook runs right after the start; if it fails, the container is killed.
                let ip = self.address();
                let target = target(
                    &self.shared,
                    c,
                    &state.id,
                    started.pid,
                    Duration::from_secs(2),
                    &ip,
                );
                if let Err(e) = super::probe::run_handler(&target, hook, Duration::from_secs(30)).await {
                    self.event(
                        "Warning",
                        "FailedPostStartHook",
                        &format!("PostStartHook failed: {e}"),
                    )
                    .await;
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(started.pid), Signal::SIGKILL);
                }
            }
        }
        Ok(())
    }

    /// Stops everything of the pod and removes it from the node, then confirms the deletion.
    async fn terminate(&mut self, gone: bool, rx: &mut watch::Receiver<Option<Value>>) -> anyhow::Result<()> {
        self.refresh();
        let grace = termination::grace_period(&self.pod, gone);
        for c in self.ctrs.values_mut() {
            c.stop_probes();
        }
        let running: Vec<(String, i32)> = self
            .ctrs
            .iter()
            .filter(|(_, c)| c.running())
            .filter_map(|(n, c)| c.current.as_ref()?.started.as_ref().map(|s| (n.clone(), s.pid)))
            .collect();
        // preStop hooks run first, within the grace period, then SIGTERM.
        let started_at = Instant::now();
        let ip = self.address();
        let mut hooks = Vec::new();
        for (name, pid) in &running {
            let spec = self
                .containers("containers")
                .into_iter()
                .chain(self.containers("initContainers"))
                .find(|c| c["name"].as_str() == Some(name.as_str()));
            let id = self
                .ctrs
                .get(name)
                .and_then(|c| c.current.as_ref())
                .map(|a| a.id.clone())
                .unwrap_or_default();
            if let Some(c) = spec
                && let Some(hook) = c["lifecycle"].get("preStop").cloned()
            {
                let target = target(&self.shared, &c, &id, *pid, grace, &ip);
                let events = EventSink::new(&self.shared, &self.pod);
                hooks.push(tokio::spawn(async move {
                    if let Err(e) = super::probe::run_handler(&target, &hook, grace).await {
                        events
                            .post(
                                "Warning",
                                "FailedPreStopHook",
                                &format!("PreStopHook failed: {e}"),
                            )
                            .await;
                    }
                }));
            }
        }
        for h in hooks {
            let left = grace.saturating_sub(started_at.elapsed());
            let _ = tokio::time::timeout(left, h).await;
        }
        for (_, pid) in &running {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGTERM);
        }
        let deadline = termination::kill_deadline(started_at, grace, Instant::now());
        for (name, _) in &running {
            self.event("Normal", "Killing", &format!("Stopping container {name}"))
                .await;
        }
        let mut killed = false;
        loop {
            self.refresh();
            if !self.ctrs.values().any(Ctr::running) {
                break;
            }
            if Instant::now() >= deadline && !killed {
                for c in self.ctrs.values().filter(|c| c.running()) {
                    if let Some(s) = c.current.as_ref().and_then(|a| a.started.as_ref()) {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid), Signal::SIGKILL);
                    }
                }
                killed = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = self.exits.notified() => {}
                changed = rx.changed() => {
                    if changed.is_ok() && let Some(p) = rx.borrow_and_update().clone() { self.pod = p; }
                }
            }
        }
        self.post_status().await.ok();
        self.teardown().await?;
        if !gone {
            super::finish_deletion(&self.shared.api, &self.pod).await?;
        }
        tracing::info!("pod removed from the node");
        Ok(())
    }

    async fn event(&self, kind: &str, reason: &str, message: &str) {
        EventSink::new(&self.shared, &self.pod)
            .post(kind, reason, message)
            .await;
    }

    async fn post_status(&mut self) -> anyhow::Result<()> {
        let ip = if self.host_network() {
            Some(self.shared.cfg.node_ip.clone())
        } else {
            self.ip.clone()
        };
        let status = super::status::pod_status(
            &super::status::PodView {
                pod: &self.pod,
                ctrs: &self.ctrs,
                sandbox_ready: self.sandbox_ready,
                node_ip: &self.shared.cfg.node_ip,
                ip: ip.as_deref(),
                start_time: self.start_time.as_deref(),
            },
            &now_rfc3339(),
        );
        // Compare without timestamps that change every pass.
        if status == self.last_status {
            return Ok(());
        }
        let path = format!("/api/v1/namespaces/{}/pods/{}/status", self.ns(), self.name());
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        match self
            .shared
            .api
            .with_type(Method::PATCH, &path, "application/merge-patch+json", Some(&patch))
            .await
        {
            Ok(updated) => {
                self.last_status = status;
                if updated.is_object() {
                    self.pod = updated;
                }
                Ok(())
            }
            Err(e) if crate::node::client::status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// How probes and hooks reach a container attempt.
fn target(shared: &Shared, c: &Value, id: &str, pid: i32, grace: Duration, ip: &str) -> super::probe::Target {
    super::probe::Target {
        ip: ip.to_string(),
        container: c.clone(),
        root: shared.run_root(),
        id: id.to_string(),
        pid,
        grace,
    }
}

/// Posts events about one pod (from the worker and from its probe tasks).
#[derive(Clone)]
struct EventSink {
    api: crate::node::client::ApiClient,
    node: String,
    namespace: String,
    name: String,
    uid: Value,
}

impl EventSink {
    fn new(shared: &Shared, pod: &Value) -> Self {
        EventSink {
            api: shared.api.clone(),
            node: shared.cfg.node_name.clone(),
            namespace: pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            name: pod["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            uid: pod["metadata"]["uid"].clone(),
        }
    }

    async fn post(&self, kind: &str, reason: &str, message: &str) {
        let now = trim_ts(&now_rfc3339());
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{}.", self.name), "namespace": self.namespace},
            "involvedObject": {"kind": "Pod", "namespace": self.namespace, "name": self.name, "uid": self.uid, "apiVersion": "v1"},
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let path = format!("/api/v1/namespaces/{}/events", self.namespace);
        if let Err(e) = self.api.json(Method::POST, &path, Some(&ev)).await {
            tracing::debug!(error = %e, "posting an event failed");
        }
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}
