//! The real [`Runtime`]: one pod on this host. Its sandbox and volumes (`sandbox.rs`), images
//! (`images.rs`), container attempts started through the shim (`start.rs`); the pod's files under
//! `DATA_DIR/pods/<uid>`, its events and status through the API server.

mod images;
mod sandbox;
mod start;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::Shared;
use super::containers::{Attempt, Ctr};
use super::env::Lookup;
use super::probe::{Report, Target, Verdict};
use super::runtime::{Runtime, Saved};
use super::status::trim_ts;
use crate::image::Image;
use crate::runtime::shim::{EXITED, Exited, STARTED, now_rfc3339};

/// One pod on this host. Clones share it.
#[derive(Clone)]
pub(super) struct Host(Arc<Inner>);

pub(super) struct Inner {
    shared: Arc<Shared>,
    uid: String,
    /// `DATA_DIR/pods/<uid>`.
    dir: PathBuf,
    namespace: String,
    name: String,
}

impl Deref for Host {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Host {
    pub fn new(shared: Arc<Shared>, uid: &str, pod: &Value) -> Self {
        Host(Arc::new(Inner {
            dir: shared.pod_dir(uid),
            shared,
            uid: uid.to_string(),
            namespace: pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            name: pod["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        }))
    }
}

impl Inner {
    fn sandbox(&self) -> PathBuf {
        self.dir.join("ns")
    }
    fn ctr_dir(&self, name: &str, attempt: u32) -> PathBuf {
        self.dir.join("containers").join(name).join(attempt.to_string())
    }
    fn log_path(&self, name: &str, attempt: u32) -> PathBuf {
        self.shared
            .log_dir(&self.namespace, &self.name, &self.uid)
            .join(name)
            .join(format!("{attempt}.log"))
    }
    /// The kubelet's termination message: the container's `terminationMessagePath` file (4 KiB at
    /// most), or with `FallbackToLogsOnError`, when that is empty and the container failed, the
    /// last 80 lines (2 KiB at most) of its log.
    fn termination_message(&self, name: &str, attempt: u32, exit_code: i32) -> String {
        use std::io::Read as _;
        let mut message = String::new();
        if let Ok(f) = std::fs::File::open(self.ctr_dir(name, attempt).join("termination-log")) {
            let _ = f.take(4096).read_to_string(&mut message);
        }
        if !message.is_empty() || exit_code == 0 {
            return message;
        }
        let policy = std::fs::read(self.dir.join("pod.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|pod| {
                pod["spec"]["containers"]
                    .as_array()?
                    .iter()
                    .chain(pod["spec"]["initContainers"].as_array().into_iter().flatten())
                    .find(|c| c["name"] == name)?["terminationMessagePolicy"]
                    .as_str()
                    .map(str::to_owned)
            });
        if policy.as_deref() != Some("FallbackToLogsOnError") {
            return message;
        }
        // CRI log lines: `TIMESTAMP STREAM TAG CONTENT`; `P` parts continue on the next line.
        let log = std::fs::read_to_string(self.log_path(name, attempt)).unwrap_or_default();
        let mut text = String::new();
        for line in log.lines() {
            let mut f = line.splitn(4, ' ');
            let (_, _, tag, content) = (f.next(), f.next(), f.next(), f.next().unwrap_or_default());
            text.push_str(content);
            if tag != Some("P") {
                text.push('\n');
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let start = tail.len().saturating_sub(2048);
        let start = (start..tail.len())
            .find(|i| tail.is_char_boundary(*i))
            .unwrap_or(tail.len());
        tail[start..].to_owned()
    }

    fn cgroup_parent(&self) -> String {
        format!("/{}/pod{}", self.shared.cfg.cgroup_root, self.uid)
    }
    fn lookup(&self) -> Lookup<'_> {
        Lookup::new(&self.shared.api, &self.namespace, &self.shared.ca_pem)
    }
}

fn host_network(pod: &Value) -> bool {
    pod["spec"]["hostNetwork"].as_bool().unwrap_or(false)
}

/// Whether the pod runs in a user namespace of its own (`hostUsers: false`; never with a host
/// namespace, which the API server refuses with it too).
fn own_users(pod: &Value) -> bool {
    let spec = &pod["spec"];
    spec["hostUsers"] == false
        && !["hostNetwork", "hostPID", "hostIPC"]
            .iter()
            .any(|k| spec[*k].as_bool() == Some(true))
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

impl Runtime for Host {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn timestamp(&self) -> String {
        now_rfc3339()
    }

    /// Reads what a previous agent left: attempts, their status files, the pod's address.
    fn load(&self) -> Saved {
        let mut saved = Saved {
            ip: std::fs::read_to_string(self.dir.join("ip"))
                .ok()
                .map(|ip| ip.trim().to_string()),
            start_time: std::fs::read_to_string(self.dir.join("start-time")).ok(),
            sandbox_ready: crate::network::pod_net::sandbox_alive(&self.sandbox()),
            ctrs: HashMap::new(),
        };
        let Ok(rd) = std::fs::read_dir(self.dir.join("containers")) else {
            return saved;
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
                    message: None,
                }
            };
            if let Some(&n) = numbers.last() {
                c.current = Some(attempt(n));
            }
            if numbers.len() > 1 {
                c.previous = Some(attempt(numbers[numbers.len() - 2]));
            }
            saved.ctrs.insert(name, c);
        }
        saved
    }

    async fn namespace(&self) -> anyhow::Result<Option<Value>> {
        let path = format!("/api/v1/namespaces/{}", self.namespace);
        match self.shared.api.json(hyper::Method::GET, &path, None).await {
            Ok(ns) => Ok(Some(ns)),
            Err(e) if crate::node::client::status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn neighbours(&self) -> Vec<Value> {
        self.shared.cfg.feeds.pods.read(|all| {
            all.values()
                .filter(|p| p["metadata"]["uid"].as_str().is_some_and(|u| u != self.uid))
                .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
                .filter(|p| {
                    // Admitted: its worker has written it down.
                    p["metadata"]["uid"]
                        .as_str()
                        .is_some_and(|u| self.shared.pod_dir(u).join("pod.json").exists())
                })
                .cloned()
                .collect()
        })
    }

    fn save(&self, pod: &Value) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        skiff_common::fs::write_private(&self.dir.join("pod.json"), &serde_json::to_vec(pod)?)?;
        Ok(())
    }

    fn save_start_time(&self, at: &str) {
        let _ = std::fs::write(self.dir.join("start-time"), at);
    }

    async fn create_sandbox(&self, pod: &Value) -> anyhow::Result<Option<String>> {
        self.make_sandbox(pod).await
    }

    async fn sync_volumes(&self, pod: &Value) -> anyhow::Result<()> {
        self.make_volumes(pod).await
    }

    async fn image(&self, pod: &Value, c: &Value) -> anyhow::Result<Image> {
        self.ensure_image(pod, c).await
    }

    async fn env(&self, pod: &Value, c: &Value, image: &Image) -> anyhow::Result<Vec<(String, String)>> {
        let services = self
            .shared
            .cfg
            .feeds
            .services
            .read(|all| super::service_env::service_env(pod, all.values()));
        super::env::resolve(&self.lookup(), pod, c, &images::image_env(image), &services).await
    }

    async fn start(
        &self,
        pod: &Value,
        c: &Value,
        image: &Image,
        env: Vec<(String, String)>,
        number: u32,
        wake: &Arc<Notify>,
    ) -> anyhow::Result<Attempt> {
        self.start_attempt(pod, c, image, env, number, wake).await
    }

    /// Re-reads the status files of a running attempt; notices a shim that died without a word.
    fn observe(&self, container: &str, a: &mut Attempt) {
        let st = self.ctr_dir(container, a.number).join("status");
        a.exited = read_json(&st.join(EXITED));
        if a.started.is_none() {
            a.started = read_json(&st.join(STARTED));
        }
        if a.message.is_none()
            && let Some(e) = &a.exited
        {
            a.message = Some(self.termination_message(container, a.number, e.exit_code));
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

    fn signal(&self, pid: i32, signal: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }

    fn target(&self, c: &Value, id: &str, pid: i32, grace: Duration, ip: &str) -> Target {
        Target {
            ip: ip.to_string(),
            container: c.clone(),
            root: self.shared.run_root(),
            id: id.to_string(),
            pid,
            grace,
        }
    }

    async fn run_hook(&self, target: &Target, hook: &Value, budget: Duration) -> Result<(), String> {
        super::probe::run_handler(target, hook, budget).await
    }

    fn probe(
        &self,
        target: Target,
        verdict: Arc<Mutex<Verdict>>,
        wake: Arc<Notify>,
        report: Report,
    ) -> AbortHandle {
        tokio::spawn(super::probe::run(target, verdict, wake, report)).abort_handle()
    }

    async fn event(&self, kind: &str, reason: &str, message: &str) {
        let now = trim_ts(&now_rfc3339());
        let (namespace, name, node) = (&self.namespace, &self.name, &self.shared.cfg.node_name);
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {"kind": "Pod", "namespace": namespace, "name": name, "uid": self.uid, "apiVersion": "v1"},
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let path = format!("/api/v1/namespaces/{namespace}/events");
        if let Err(e) = self.shared.api.json(Method::POST, &path, Some(&ev)).await {
            tracing::debug!(error = %e, "posting an event failed");
        }
    }

    fn local_storage(&self, pod: &Value) -> super::eviction::Usage {
        use super::eviction::disk_usage;
        let mut usage = super::eviction::Usage::default();
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            let attempt = std::fs::read_dir(self.dir.join("containers").join(name))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .max();
            if let Some(n) = attempt {
                let used =
                    disk_usage(&self.ctr_dir(name, n).join("upper")) + disk_usage(&self.log_path(name, n));
                usage.containers.insert(name.to_owned(), used);
            }
        }
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            if v.get("emptyDir").is_some() && v["emptyDir"]["medium"] != "Memory" {
                let name = v["name"].as_str().unwrap_or_default();
                usage
                    .empty_dirs
                    .insert(name.to_owned(), disk_usage(&self.dir.join("volumes").join(name)));
            }
        }
        usage
    }
    fn node_pressure(&self) -> super::pressure::Pressure {
        super::pressure::current()
    }
    fn take_eviction(&self) -> Option<String> {
        super::pressure::take_eviction(&self.uid)
    }
    async fn node_event(&self, kind: &str, reason: &str, message: &str) {
        let node = &self.shared.cfg.node_name;
        crate::node::heartbeat::node_event(&self.shared.api, node, kind, reason, message).await;
    }

    async fn post_status(&self, status: &Value) -> anyhow::Result<Option<Value>> {
        let path = format!("/api/v1/namespaces/{}/pods/{}/status", self.namespace, self.name);
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        match self
            .shared
            .api
            .with_type(Method::PATCH, &path, "application/merge-patch+json", Some(&patch))
            .await
        {
            Ok(updated) => Ok(Some(updated)),
            Err(e) if crate::node::client::status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn teardown(&self, pod: &Value) -> anyhow::Result<()> {
        self.remove(pod).await
    }

    async fn finish_deletion(&self, pod: &Value) -> anyhow::Result<()> {
        super::finish_deletion(&self.shared.api, pod).await
    }
}
