//! One pod's state machine: its sandbox and volumes made ready, images pulled, containers started
//! in the order the pass plans (`../pass.rs`), probed, restarted with back-off (`../backoff.rs`)
//! and stopped (`termination.rs`), and the status it reports (`../status.rs`). Every effect goes
//! through the pod's [`Runtime`] (`../host/` on a node), so whole passes are unit-tested (`tests.rs`).

mod termination;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::Shared;
use super::containers::{Ctr, is_sidecar};
use super::env::ConfigError;
use super::host::Host;
use super::runtime::{PullFailure, Runtime};
use crate::image::{Image, Reference};

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

struct Pod<R> {
    rt: R,
    uid: String,
    /// The node's address (the pod's too, on the host network).
    node_ip: String,
    pod: Value,
    ctrs: HashMap<String, Ctr>,
    ip: Option<String>,
    sandbox_ready: bool,
    last_status: Value,
    exits: Arc<Notify>,
    volume_sync: Option<Instant>,
    start_time: Option<String>,
    /// resourceVersion of the pod last saved.
    saved: String,
    /// Refused at admission: never started, reported Failed with this status.
    refused: Option<Value>,
    /// Ended by the node — evicted (local storage) or past its `activeDeadlineSeconds` — with the
    /// kubelet's reason and message: its containers are killed and stay down, the pod is
    /// reported Failed.
    evicted: Option<(&'static str, String)>,
    /// When this agent first saw the pod, until it reports it Running (a pod an earlier agent
    /// started has none): `kubelet_pod_start_duration_seconds`.
    first_seen: Option<Instant>,
}

/// Runs one pod's worker on this node until its pod is gone and cleaned up.
#[tracing::instrument(name = "pod", skip_all, fields(pod = %pod_key(&initial), uid = %uid))]
pub async fn run(shared: Arc<Shared>, uid: String, initial: Value, rx: watch::Receiver<Option<Value>>) {
    let rt = Host::new(shared.clone(), &uid, &initial);
    drive(Pod::new(rt, uid, shared.cfg.node_ip.clone(), initial), rx).await
}

async fn drive<R: Runtime>(mut pod: Pod<R>, mut rx: watch::Receiver<Option<Value>>) {
    // The pod may be gone before this task first runs; then it is cleaned up as it was last known.
    let latest = rx.borrow_and_update().clone();
    let mut gone = latest.is_none();
    if let Some(latest) = latest {
        pod.pod = latest;
    }
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

impl<R: Runtime> Pod<R> {
    /// The worker of `pod`, picking up what a previous agent left of it.
    fn new(rt: R, uid: String, node_ip: String, pod: Value) -> Self {
        let saved = rt.load();
        Pod {
            rt,
            uid,
            node_ip,
            pod,
            ctrs: saved.ctrs,
            ip: saved.ip,
            sandbox_ready: saved.sandbox_ready,
            last_status: Value::Null,
            exits: Arc::new(Notify::new()),
            volume_sync: None,
            first_seen: saved.start_time.is_none().then(Instant::now),
            start_time: saved.start_time,
            saved: String::new(),
            refused: None,
            evicted: None,
        }
    }

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
        self.ip.clone().unwrap_or_else(|| self.node_ip.clone())
    }
    fn containers(&self, key: &str) -> Vec<Value> {
        self.pod["spec"][key].as_array().cloned().unwrap_or_default()
    }

    /// The containers that run while the pod does: the app containers and the sidecars.
    fn long_running(&self) -> Vec<Value> {
        self.containers("containers")
            .into_iter()
            .chain(self.containers("initContainers").into_iter().filter(is_sidecar))
            .collect()
    }

    /// The pod's grace period for stopping a container (the spec's, 30 s by default).
    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.pod["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        )
    }

    /// Re-reads the running attempts: started, ended, or their shim gone. Returns the containers
    /// the kernel's OOM killer ended since the last look (with their process).
    fn refresh(&mut self) -> Vec<(String, i32)> {
        let mut oom_killed = Vec::new();
        for (name, c) in &mut self.ctrs {
            if let Some(a) = &mut c.current
                && a.exited.is_none()
            {
                self.rt.observe(name, a);
                if a.exited.as_ref().is_some_and(|e| e.oom_killed) {
                    oom_killed.push((name.clone(), a.started.as_ref().map_or(0, |s| s.pid)));
                }
            }
        }
        oom_killed
    }

    /// Keeps the saved pod (what a restarted agent adopts) at its latest version.
    fn save(&mut self) -> anyhow::Result<()> {
        let version = self.pod["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !self.saved.is_empty() && self.saved == version {
            return Ok(());
        }
        self.rt.save(&self.pod)?;
        self.saved = version.to_string();
        Ok(())
    }

    /// The kubelet's admission, before anything of a new pod exists on the node: host ports taken
    /// by a running pod, or privileges its namespace's enforced Pod Security level forbids, refuse
    /// it (`admission.rs`). A pod refused before (by a previous agent too) stays refused.
    async fn admit(&mut self) -> anyhow::Result<bool> {
        if self.refused.is_some() {
            return Ok(false);
        }
        let new = !self.sandbox_ready && self.ctrs.is_empty() && self.saved.is_empty();
        if !new {
            return Ok(true);
        }
        let status = &self.pod["status"];
        if status["phase"] == "Failed"
            && matches!(status["reason"].as_str(), Some("NodePorts" | "PodSecurity"))
        {
            self.refused =
                Some(json!({"phase": "Failed", "reason": status["reason"], "message": status["message"]}));
            return Ok(false);
        }
        if super::admission::wants_host_ports(&self.pod)
            && super::admission::host_port_conflict(&self.pod, &self.rt.neighbours())
        {
            self.refused = Some(super::admission::host_ports_refused());
            return Ok(false);
        }
        if let Some(refused) = super::pressure::admission_refusal(&self.pod, self.rt.node_pressure()) {
            let message = refused["message"].as_str().unwrap_or_default().to_owned();
            self.rt.event("Warning", "Evicted", &message).await;
            self.refused = Some(refused);
            return Ok(false);
        }
        let privileges = super::admission::privileges(&self.pod);
        if !privileges.is_empty()
            && let Some(ns) = self.rt.namespace().await?
            && let Some(refused) = super::admission::pod_security_refusal(&privileges, &ns)
        {
            let message = refused["message"].as_str().unwrap_or_default().to_owned();
            self.rt.event("Warning", "PodSecurity", &message).await;
            self.refused = Some(refused);
            return Ok(false);
        }
        Ok(true)
    }

    /// One reconciliation pass; returns when to look again at the latest.
    async fn sync(&mut self) -> anyhow::Result<Duration> {
        if !self.admit().await? {
            let status = self.refused.clone().unwrap_or_default();
            if status != self.last_status && self.rt.post_status(&status).await?.is_some() {
                self.last_status = status;
            }
            return Ok(Duration::from_secs(60));
        }
        self.save()?;
        for (container, pid) in self.refresh() {
            // The kubelet's OOM watcher reports on the node what the kernel killed.
            let message = format!(
                "Memory cgroup out of memory: Killed process {pid} of container {container} of pod {}/{}",
                self.ns(),
                self.name()
            );
            self.rt.node_event("Warning", "OOMKilling", &message).await;
        }
        if let Some(wake) = self.evict().await? {
            return Ok(wake);
        }
        if self.start_time.is_none() {
            let t = self.rt.timestamp();
            self.rt.save_start_time(&t);
            self.start_time = Some(t);
        }
        let mut wake = Duration::from_secs(10);
        if let Some(d) = self.replace_changed().await {
            wake = wake.min(d);
        }
        if !self.sandbox_ready {
            self.ip = self.rt.create_sandbox(&self.pod).await?;
            self.sandbox_ready = true;
        }
        // The downward API reads the pod's addresses, which this node knows before the pod's
        // status (written at the end of this pass) says so.
        let mut pod_for_lookup = self.pod.clone();
        let (pod_ip, node_ip) = (self.address(), self.node_ip.clone());
        pod_for_lookup["status"]["podIP"] = json!(pod_ip);
        pod_for_lookup["status"]["podIPs"] = json!([{"ip": pod_ip}]);
        pod_for_lookup["status"]["hostIP"] = json!(node_ip);
        pod_for_lookup["status"]["hostIPs"] = json!([{"ip": node_ip}]);
        // Volumes: created before any container, refreshed (configMap/secret updates) every pass.
        let now = self.rt.now();
        let due = self
            .volume_sync
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(2));
        if due {
            match self.rt.sync_volumes(&pod_for_lookup).await {
                Ok(()) => self.volume_sync = Some(now),
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
                    self.rt.event("Warning", "FailedMount", &msg).await;
                    self.post_status().await?;
                    return Ok(Duration::from_secs(2));
                }
            }
        }
        wake = wake.min(Duration::from_secs(2));

        for c in super::pass::plan(&self.pod, &self.ctrs).start {
            if let Some(d) = self.start_if_due(&c, &pod_for_lookup).await? {
                wake = wake.min(d);
            }
        }
        self.sync_probes();
        self.post_status().await?;
        Ok(wake)
    }

    /// Stops each running container whose image the pod's spec has changed since it started
    /// (SIGTERM, SIGKILL after the pod's grace period), to be started again from the new image
    /// whatever the restart policy, as the kubelet does when a container's spec changes. Returns
    /// when to look again while one is stopping.
    async fn replace_changed(&mut self) -> Option<Duration> {
        let grace = self.grace();
        let now = self.rt.now();
        let mut wake = None;
        for c in self.long_running() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let Some(state) = self.ctrs.get_mut(&name) else {
                continue;
            };
            let pid = match state.current.as_ref().and_then(|a| a.started.as_ref()) {
                Some(s) if state.running() => s.pid,
                _ => continue,
            };
            if let Some(since) = state.replacing {
                if now.saturating_duration_since(since) >= grace {
                    self.rt.signal(pid, Signal::SIGKILL);
                } else {
                    wake = Some(grace - now.saturating_duration_since(since));
                }
                continue;
            }
            let image = c["image"].as_str().unwrap_or_default();
            if state.started_image.as_deref().is_none_or(|i| i == image) {
                continue;
            }
            state.replacing = Some(now);
            state.stop_probes();
            self.rt.signal(pid, Signal::SIGTERM);
            wake = Some(grace.min(Duration::from_secs(1)));
            self.rt
                .event(
                    "Normal",
                    "Killing",
                    &format!("Container {name} definition changed, will be restarted"),
                )
                .await;
        }
        wake
    }

    /// Starts probes for running attempts that have none; stops those of ended attempts.
    fn sync_probes(&mut self) {
        let grace = self.grace();
        let ip = self.address();
        for c in self.long_running() {
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
            let target = self.rt.target(&c, &a.id, started.pid, grace, &ip);
            let verdict = Arc::new(std::sync::Mutex::new(super::probe::Verdict::default()));
            let rt = self.rt.clone();
            let report: super::probe::Report = Arc::new(move |reason, msg| {
                let rt = rt.clone();
                let kind = if reason == "Killing" { "Normal" } else { "Warning" };
                tokio::spawn(async move { rt.event(kind, reason, &msg).await });
            });
            let task = self.rt.probe(target, verdict.clone(), self.exits.clone(), report);
            state.probes = Some((a.number, task, verdict));
        }
    }

    /// Starts a container if its back-off allows; returns when to look again.
    async fn start_if_due(&mut self, c: &Value, pod: &Value) -> anyhow::Result<Option<Duration>> {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let now = self.rt.now();
        let state = self.ctrs.entry(name.clone()).or_default();
        if let Some(due) = state.backoff.due_in(now) {
            return Ok(Some(due));
        }
        let image = match self.rt.image(&self.pod, c).await {
            Ok(i) => i,
            Err(e) => {
                let now = self.rt.now();
                let state = self.ctrs.entry(name.clone()).or_default();
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
                let event = if reason == "ErrImagePull" {
                    "Failed"
                } else {
                    "InspectFailed"
                };
                self.rt.event("Warning", event, &msg).await;
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
        // Restart back-off (upstream's CrashLoopBackOff) of a container that has exited (not
        // of one stopped to be replaced).
        if let Some(a) = state
            .current
            .as_ref()
            .filter(|a| a.exited.is_some() && state.replacing.is_none())
        {
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
            if let Some(b) = state.backoff.restart(Duration::from_secs(ran), self.rt.now()) {
                let msg = format!(
                    "back-off {}s restarting failed container={name} pod={}_{}({})",
                    b.as_secs(),
                    self.name(),
                    self.ns(),
                    self.uid
                );
                let state = self.ctrs.entry(name.clone()).or_default();
                state.waiting = Some(("CrashLoopBackOff".into(), msg));
                self.rt
                    .event("Warning", "BackOff", "Back-off restarting failed container")
                    .await;
                return Ok(Some(b));
            }
        }
        state.backoff.starting();
        if let Err(msg) = super::spec::verify_run_as_non_root(pod, c, &image.config) {
            let state = self.ctrs.entry(name.clone()).or_default();
            state.waiting = Some(("CreateContainerConfigError".into(), msg.clone()));
            self.rt.event("Warning", "Failed", &format!("Error: {msg}")).await;
            return Ok(Some(Duration::from_secs(2)));
        }
        let env = match self.rt.env(pod, c, &image).await {
            Ok(e) => e,
            Err(e) => {
                let msg = format!("{e:#}");
                if e.downcast_ref::<ConfigError>().is_none() {
                    return Err(e);
                }
                let state = self.ctrs.entry(name.clone()).or_default();
                state.waiting = Some(("CreateContainerConfigError".into(), msg.clone()));
                self.rt.event("Warning", "Failed", &format!("Error: {msg}")).await;
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
                self.rt.event("Warning", "Failed", &format!("Error: {msg}")).await;
                let state = self.ctrs.entry(name).or_default();
                state.waiting = Some(("CreateContainerError".into(), msg));
                Ok(Some(Duration::from_secs(2)))
            }
        }
    }

    /// Local storage eviction (`eviction.rs`) and `activeDeadlineSeconds`: decided once (an
    /// earlier agent's decision is read back from the pod's status), then the containers are kept
    /// down and the pod reported Failed. `None` while the pod stays.
    async fn evict(&mut self) -> anyhow::Result<Option<Duration>> {
        let status = &self.pod["status"];
        if self.evicted.is_none() && status["phase"] == "Failed" {
            let message = status["message"].as_str().unwrap_or_default().to_owned();
            match status["reason"].as_str() {
                Some("Evicted") => self.evicted = Some(("Evicted", message)),
                Some("DeadlineExceeded") => self.evicted = Some(("DeadlineExceeded", message)),
                _ => {}
            }
        }
        if self.evicted.is_none()
            && let Some(deadline) = self.pod["spec"]["activeDeadlineSeconds"].as_i64()
            && let Some(started) = self.start_time.as_deref().and_then(skiff_common::time::parse)
            && time::OffsetDateTime::now_utc() - started >= time::Duration::seconds(deadline)
        {
            let message = "Pod was active on the node longer than the specified deadline".to_owned();
            self.rt.event("Normal", "DeadlineExceeded", &message).await;
            self.evicted = Some(("DeadlineExceeded", message));
        }
        // Taken whether or not the pod is ended already, so that the next decision can follow.
        let pressure_eviction = self.rt.take_eviction();
        if self.evicted.is_none()
            && let Some(message) = pressure_eviction
        {
            tracing::info!(reason = %message.trim_end(), "evicting the pod for node pressure");
            self.rt.event("Warning", "Evicted", &message).await;
            self.evicted = Some(("Evicted", message));
        }
        if self.evicted.is_none() && self.sandbox_ready && super::eviction::watched(&self.pod) {
            let usage = self.rt.local_storage(&self.pod);
            if let Some(message) = super::eviction::reason(&self.pod, &usage) {
                tracing::info!(reason = %message.trim_end(), "evicting the pod");
                self.rt.event("Warning", "Evicted", &message).await;
                self.evicted = Some(("Evicted", message));
            }
        }
        if self.evicted.is_none() {
            return Ok(None);
        }
        let mut running = false;
        for c in self.ctrs.values_mut() {
            c.stop_probes();
            if c.running()
                && let Some(s) = c.current.as_ref().and_then(|a| a.started.as_ref())
            {
                self.rt.signal(s.pid, Signal::SIGKILL);
                running = true;
            }
        }
        self.post_status().await?;
        Ok(Some(Duration::from_secs(if running { 1 } else { 60 })))
    }

    /// Starts the next attempt of a container, then runs its postStart hook.
    async fn start(&mut self, c: &Value, image: &Image, env: Vec<(String, String)>) -> anyhow::Result<()> {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let number = self
            .ctrs
            .get(&name)
            .and_then(|s| s.current.as_ref())
            .map(|a| a.number + 1)
            .unwrap_or(0);
        let attempt = self
            .rt
            .start(&self.pod, c, image, env, number, &self.exits)
            .await?;
        let state = self.ctrs.entry(name.clone()).or_default();
        state.previous = state.current.replace(attempt.clone());
        state.started_image = c["image"].as_str().map(str::to_owned);
        state.replacing = None;
        if let Some(e) = attempt.exited.as_ref().and_then(|e| e.error.clone()) {
            self.rt
                .event(
                    "Warning",
                    "Failed",
                    &format!("Error: failed to start container \"{name}\": {e}"),
                )
                .await;
            return Ok(());
        }
        // The kubelet's two events (create, then start); the runtime does both in one call.
        self.rt
            .event("Normal", "Created", &format!("Created container {name}"))
            .await;
        self.rt
            .event("Normal", "Started", &format!("Started container {name}"))
            .await;
        if let (Some(hook), Some(started)) = (c["lifecycle"].get("postStart"), attempt.started.as_ref()) {
            // As upstream: the hook runs right after the start; if it fails, the container is killed.
            let target = self.rt.target(
                c,
                &attempt.id,
                started.pid,
                Duration::from_secs(2),
                &self.address(),
            );
            if let Err(e) = self.rt.run_hook(&target, hook, Duration::from_secs(30)).await {
                self.rt
                    .event(
                        "Warning",
                        "FailedPostStartHook",
                        &format!("PostStartHook failed: {e}"),
                    )
                    .await;
                self.rt.signal(started.pid, Signal::SIGKILL);
            }
        }
        Ok(())
    }

    /// Stops everything of the pod and removes it from the node, then confirms the deletion.
    async fn terminate(&mut self, gone: bool, rx: &mut watch::Receiver<Option<Value>>) -> anyhow::Result<()> {
        if self.refused.is_some() {
            // Nothing of it was ever made on the node.
            if !gone {
                self.rt.finish_deletion(&self.pod).await?;
            }
            return Ok(());
        }
        let _ = self.refresh();
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
        let started_at = self.rt.now();
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
                let target = self.rt.target(&c, &id, *pid, grace, &ip);
                let rt = self.rt.clone();
                hooks.push(tokio::spawn(async move {
                    if let Err(e) = rt.run_hook(&target, &hook, grace).await {
                        rt.event(
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
            let left = grace.saturating_sub(self.rt.now().saturating_duration_since(started_at));
            let _ = tokio::time::timeout(left, h).await;
        }
        for (_, pid) in &running {
            self.rt.signal(*pid, Signal::SIGTERM);
        }
        let deadline = termination::kill_deadline(started_at, grace, self.rt.now());
        for (name, _) in &running {
            self.rt
                .event("Normal", "Killing", &format!("Stopping container {name}"))
                .await;
        }
        let mut killed = false;
        loop {
            let _ = self.refresh();
            if !self.ctrs.values().any(Ctr::running) {
                break;
            }
            if self.rt.now() >= deadline && !killed {
                for c in self.ctrs.values().filter(|c| c.running()) {
                    if let Some(s) = c.current.as_ref().and_then(|a| a.started.as_ref()) {
                        self.rt.signal(s.pid, Signal::SIGKILL);
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
        self.rt.teardown(&self.pod).await?;
        if !gone {
            self.rt.finish_deletion(&self.pod).await?;
        }
        tracing::info!("pod removed from the node");
        Ok(())
    }

    async fn post_status(&mut self) -> anyhow::Result<()> {
        let ip = if self.host_network() {
            Some(self.node_ip.clone())
        } else {
            self.ip.clone()
        };
        let status = super::status::pod_status(
            &super::status::PodView {
                pod: &self.pod,
                ctrs: &self.ctrs,
                sandbox_ready: self.sandbox_ready,
                node_ip: &self.node_ip,
                ip: ip.as_deref(),
                start_time: self.start_time.as_deref(),
            },
            &self.rt.timestamp(),
        );
        let mut status = status;
        if let Some((reason, message)) = &self.evicted {
            status["phase"] = json!("Failed");
            status["reason"] = json!(reason);
            status["message"] = json!(message);
            if let Some(conditions) = status["conditions"]
                .as_array_mut()
                .filter(|_| *reason == "Evicted")
            {
                conditions.push(json!({"type": "DisruptionTarget", "status": "True",
                    "reason": "TerminationByKubelet", "message": message}));
            }
        }
        // Compare without timestamps that change every pass.
        if status == self.last_status {
            return Ok(());
        }
        if let Some(updated) = self.rt.post_status(&status).await? {
            if status["phase"] == "Running"
                && let Some(seen) = self.first_seen.take()
            {
                crate::metrics::POD_START.observe(&[], seen.elapsed().as_secs_f64());
            }
            self.last_status = status;
            if updated.is_object() {
                self.pod = updated;
            }
        }
        Ok(())
    }
}
