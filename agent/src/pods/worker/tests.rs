//! Whole passes of the worker against a fake runtime on tokio's paused clock: no root, no
//! containers, no sleeps. The fake records what the worker asked for (sandbox, starts, signals,
//! events, status writes) and plays what the test scripts (pull failures, exits, a bad volume).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::*;
use crate::pods::containers::Attempt;
use crate::pods::probe::{Report, Target, Verdict};
use crate::pods::runtime::Saved;
use crate::runtime::shim::{Exited, Started};

#[derive(Default)]
struct State {
    /// Scripted: images that fail to pull (by name), failing how.
    pull_fails: HashMap<String, fn(String) -> PullFailure>,
    /// Scripted: the next volume sync fails with this.
    volume_error: Option<String>,
    /// Scripted: env resolution fails with a config error.
    env_error: Option<String>,
    /// Scripted: every hook fails with this.
    hook_error: Option<String>,
    /// Scripted: containers whose process exits with this code (seen on the next observe).
    exits: HashMap<String, i32>,
    /// Scripted: processes that ignore SIGTERM.
    ignore_term: HashSet<i32>,
    /// Scripted: the other pods running on the node.
    neighbours: Vec<Value>,
    /// Scripted: the pod's namespace.
    namespace: Option<Value>,
    /// Scripted: the node's pressure.
    pressure: crate::pods::pressure::Pressure,
    /// Scripted: a node-pressure eviction decided for the pod.
    eviction: Option<String>,
    /// Recorded.
    sandboxes: u32,
    pulls: Vec<String>,
    starts: Vec<(String, u32)>,
    signals: Vec<(i32, Signal)>,
    events: Vec<(String, String)>,
    statuses: Vec<Value>,
    torn_down: bool,
    deleted: bool,
    /// pid → container, for the processes started.
    pids: HashMap<i32, String>,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<State>>,
    epoch: Instant,
}

impl Fake {
    fn new() -> Self {
        Fake {
            state: Arc::default(),
            epoch: tokio::time::Instant::now().into_std(),
        }
    }
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
    fn reasons(&self) -> Vec<String> {
        self.with(|s| s.events.iter().map(|(r, _)| r.clone()).collect())
    }
    fn last_status(&self) -> Value {
        self.with(|s| s.statuses.last().cloned().unwrap_or_default())
    }
}

impl Runtime for Fake {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
    fn timestamp(&self) -> String {
        let at = time::OffsetDateTime::UNIX_EPOCH
            + time::Duration::days(20_000)
            + self.now().duration_since(self.epoch);
        at.format(&time::format_description::well_known::Rfc3339).unwrap()
    }
    fn load(&self) -> Saved {
        Saved::default()
    }
    fn neighbours(&self) -> Vec<Value> {
        self.with(|s| s.neighbours.clone())
    }
    async fn namespace(&self) -> anyhow::Result<Option<Value>> {
        Ok(self.with(|s| s.namespace.clone()))
    }
    fn save(&self, _: &Value) -> anyhow::Result<()> {
        Ok(())
    }
    fn save_start_time(&self, _: &str) {}
    async fn create_sandbox(&self, _: &Value) -> anyhow::Result<Option<String>> {
        self.with(|s| s.sandboxes += 1);
        Ok(Some("10.244.0.7".into()))
    }
    async fn sync_volumes(&self, _: &Value) -> anyhow::Result<()> {
        match self.with(|s| s.volume_error.take()) {
            Some(e) => anyhow::bail!(e),
            None => Ok(()),
        }
    }
    async fn image(&self, _: &Value, c: &Value) -> anyhow::Result<Image> {
        let name = c["image"].as_str().unwrap_or_default().to_string();
        self.with(|s| s.pulls.push(name.clone()));
        if let Some(fail) = self.with(|s| s.pull_fails.get(&name).copied()) {
            return Err(fail(format!("cannot have {name}")).into());
        }
        Ok(Image {
            digest: "sha256:abc".into(),
            config_digest: "sha256:def".into(),
            layers: vec![],
            config: json!({}),
            size: 0,
        })
    }
    async fn env(&self, _: &Value, _: &Value, _: &Image) -> anyhow::Result<Vec<(String, String)>> {
        match self.with(|s| s.env_error.clone()) {
            Some(e) => Err(ConfigError(e).into()),
            None => Ok(vec![]),
        }
    }
    async fn start(
        &self,
        _: &Value,
        c: &Value,
        _: &Image,
        _: Vec<(String, String)>,
        number: u32,
        _: &Arc<Notify>,
    ) -> anyhow::Result<Attempt> {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let started_at = self.timestamp();
        let pid = self.with(|s| {
            s.starts.push((name.clone(), number));
            let pid = 100 + s.starts.len() as i32;
            s.pids.insert(pid, name.clone());
            pid
        });
        Ok(Attempt {
            number,
            id: format!("{name}-{number}"),
            started: Some(Started {
                pid,
                shim_pid: pid + 1000,
                started_at,
            }),
            exited: None,
            message: None,
        })
    }
    fn observe(&self, container: &str, a: &mut Attempt) {
        if let Some(code) = self.with(|s| s.exits.remove(container)) {
            a.exited = Some(Exited {
                exit_code: code,
                finished_at: self.timestamp(),
                ..Exited::default()
            });
        }
    }
    fn signal(&self, pid: i32, signal: Signal) {
        self.with(|s| {
            s.signals.push((pid, signal));
            let ends = signal == Signal::SIGKILL || !s.ignore_term.contains(&pid);
            if ends && let Some(name) = s.pids.get(&pid).cloned() {
                s.exits.insert(name, 128 + signal as i32);
            }
        });
    }
    fn target(&self, c: &Value, id: &str, pid: i32, grace: Duration, ip: &str) -> Target {
        Target {
            ip: ip.into(),
            container: c.clone(),
            root: "/nonexistent".into(),
            id: id.into(),
            pid,
            grace,
        }
    }
    async fn run_hook(&self, _: &Target, _: &Value, _: Duration) -> Result<(), String> {
        match self.with(|s| s.hook_error.clone()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn probe(&self, _: Target, _: Arc<Mutex<Verdict>>, _: Arc<Notify>, _: Report) -> AbortHandle {
        tokio::spawn(std::future::pending::<()>()).abort_handle()
    }
    async fn event(&self, _: &str, reason: &str, message: &str) {
        self.with(|s| s.events.push((reason.into(), message.into())));
    }
    fn local_storage(&self, _: &Value) -> crate::pods::eviction::Usage {
        crate::pods::eviction::Usage::default()
    }
    fn node_pressure(&self) -> crate::pods::pressure::Pressure {
        self.with(|s| s.pressure)
    }
    fn take_eviction(&self) -> Option<String> {
        self.with(|s| s.eviction.take())
    }
    async fn node_event(&self, _: &str, reason: &str, message: &str) {
        self.with(|s| s.events.push((reason.to_owned(), message.to_owned())));
    }
    async fn post_status(&self, status: &Value) -> anyhow::Result<Option<Value>> {
        self.with(|s| s.statuses.push(status.clone()));
        Ok(Some(Value::Null))
    }
    async fn teardown(&self, _: &Value) -> anyhow::Result<()> {
        self.with(|s| s.torn_down = true);
        Ok(())
    }
    async fn finish_deletion(&self, _: &Value) -> anyhow::Result<()> {
        self.with(|s| s.deleted = true);
        Ok(())
    }
}

fn pod(spec: Value) -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "1"},
        "spec": spec,
    })
}

fn worker(fake: &Fake, spec: Value) -> Pod<Fake> {
    Pod::new(fake.clone(), "u1".into(), "192.0.2.10".into(), pod(spec))
}

fn state_of(status: &Value, name: &str) -> Value {
    status["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(status["containerStatuses"].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .map(|c| c["state"].clone())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_new_pod_gets_its_sandbox_then_init_containers_in_order_then_its_app() {
    let fake = Fake::new();
    let mut w = worker(
        &fake,
        json!({
            "initContainers": [{"name": "migrate", "image": "tools:1"}],
            "containers": [{"name": "app", "image": "app:1"}],
        }),
    );
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| s.sandboxes), 1);
    assert_eq!(fake.with(|s| s.starts.clone()), [("migrate".to_string(), 0)]);
    let status = fake.last_status();
    assert_eq!(status["podIP"], "10.244.0.7");
    assert!(state_of(&status, "migrate")["running"].is_object());
    assert_eq!(state_of(&status, "app")["waiting"]["reason"], "PodInitializing");

    // The init container succeeds: the app starts on the next pass, the sandbox is not remade.
    fake.with(|s| s.exits.insert("migrate".into(), 0));
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| s.sandboxes), 1);
    assert_eq!(
        fake.with(|s| s.starts.clone()),
        [("migrate".to_string(), 0), ("app".to_string(), 0)]
    );
    let status = fake.last_status();
    assert_eq!(state_of(&status, "migrate")["terminated"]["reason"], "Completed");
    assert!(state_of(&status, "app")["running"].is_object());
    assert_eq!(status["phase"], "Running");
    assert_eq!(fake.reasons(), ["Created", "Started", "Created", "Started"]);
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_restarts_at_once_then_backs_off_ten_then_twenty_seconds() {
    let fake = Fake::new();
    let mut w = worker(&fake, json!({"containers": [{"name": "app", "image": "app:1"}]}));
    let starts = |f: &Fake| f.with(|s| s.starts.len());
    w.sync().await.unwrap();
    assert_eq!(starts(&fake), 1);

    // First exit: restarted in the same pass.
    fake.with(|s| s.exits.insert("app".into(), 1));
    w.sync().await.unwrap();
    assert_eq!(starts(&fake), 2);

    // Second exit: CrashLoopBackOff for 10 s.
    fake.with(|s| s.exits.insert("app".into(), 1));
    w.sync().await.unwrap();
    assert_eq!(starts(&fake), 2);
    let waiting = &state_of(&fake.last_status(), "app")["waiting"];
    assert_eq!(waiting["reason"], "CrashLoopBackOff");
    assert!(waiting["message"].as_str().unwrap().starts_with("back-off 10s"));
    assert_eq!(fake.last_status()["containerStatuses"][0]["restartCount"], 1);

    // Not before it is due.
    tokio::time::advance(Duration::from_secs(9)).await;
    w.sync().await.unwrap();
    assert_eq!(starts(&fake), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    w.sync().await.unwrap();
    assert_eq!(starts(&fake), 3);
    assert_eq!(fake.last_status()["containerStatuses"][0]["restartCount"], 2);

    // Third exit: 20 s.
    fake.with(|s| s.exits.insert("app".into(), 1));
    w.sync().await.unwrap();
    let waiting = &state_of(&fake.last_status(), "app")["waiting"];
    assert!(waiting["message"].as_str().unwrap().starts_with("back-off 20s"));
    tokio::time::advance(Duration::from_secs(19)).await;
    w.sync().await.unwrap();
    assert_eq!(starts(&fake), 3);
    assert_eq!(
        fake.with(|s| s.events.iter().filter(|e| e.0 == "BackOff").count()),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_pull_waits_ten_seconds_and_a_bad_name_is_not_pulled_again_at_once() {
    let fake = Fake::new();
    fake.with(|s| {
        s.pull_fails.insert("gone:1".into(), PullFailure::Pull);
        s.pull_fails.insert("Bad Name".into(), PullFailure::InvalidName);
    });
    let mut w = worker(
        &fake,
        json!({"containers": [{"name": "a", "image": "gone:1"}, {"name": "b", "image": "Bad Name"}]}),
    );
    w.sync().await.unwrap();
    let status = fake.last_status();
    assert_eq!(state_of(&status, "a")["waiting"]["reason"], "ErrImagePull");
    assert_eq!(state_of(&status, "b")["waiting"]["reason"], "InvalidImageName");
    assert_eq!(fake.reasons(), ["Failed", "InspectFailed"]);

    // Five seconds on: only the bad name is looked at again; the pull waits its ten.
    tokio::time::advance(Duration::from_secs(5)).await;
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| s.pulls.clone()), ["gone:1", "Bad Name", "Bad Name"]);
    // The image appears: the next try after the back-off starts the container.
    fake.with(|s| s.pull_fails.remove("gone:1"));
    tokio::time::advance(Duration::from_secs(5)).await;
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| s.starts.clone()), [("a".to_string(), 0)]);
    assert!(state_of(&fake.last_status(), "a")["running"].is_object());
}

#[tokio::test(start_paused = true)]
async fn a_volume_that_cannot_be_made_holds_every_container_in_container_creating() {
    let fake = Fake::new();
    fake.with(|s| s.volume_error = Some("configmap \"cfg\" not found".into()));
    let mut w = worker(&fake, json!({"containers": [{"name": "app", "image": "app:1"}]}));
    assert_eq!(w.sync().await.unwrap(), Duration::from_secs(2));
    assert!(fake.with(|s| s.starts.is_empty()));
    let waiting = &state_of(&fake.last_status(), "app")["waiting"];
    assert_eq!(waiting["reason"], "ContainerCreating");
    assert_eq!(waiting["message"], "configmap \"cfg\" not found");
    assert_eq!(fake.reasons(), ["FailedMount"]);
    // Two seconds on the volume is retried and the container starts.
    tokio::time::advance(Duration::from_secs(2)).await;
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| s.starts.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_missing_env_reference_is_a_config_error_and_a_failed_post_start_hook_kills() {
    let fake = Fake::new();
    fake.with(|s| s.env_error = Some("secret \"db\" not found".into()));
    let spec = json!({"containers": [{"name": "app", "image": "app:1",
        "lifecycle": {"postStart": {"exec": {"command": ["false"]}}}}]});
    let mut w = worker(&fake, spec);
    w.sync().await.unwrap();
    let waiting = &state_of(&fake.last_status(), "app")["waiting"];
    assert_eq!(waiting["reason"], "CreateContainerConfigError");
    assert!(fake.with(|s| s.starts.is_empty()));

    fake.with(|s| {
        s.env_error = None;
        s.hook_error = Some("exit status 1".into());
    });
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| s.signals.clone()), [(101, Signal::SIGKILL)]);
    assert_eq!(
        fake.reasons(),
        ["Failed", "Created", "Started", "FailedPostStartHook"]
    );
}

#[tokio::test(start_paused = true)]
async fn termination_sends_sigterm_then_sigkill_after_the_grace_period_then_removes_the_pod() {
    let fake = Fake::new();
    let spec = json!({"terminationGracePeriodSeconds": 5, "containers": [
        {"name": "polite", "image": "app:1"}, {"name": "stubborn", "image": "app:1"}]});
    let mut w = worker(&fake, spec);
    w.sync().await.unwrap();
    let pid_of =
        |f: &Fake, name: &str| f.with(|s| s.pids.iter().find(|(_, n)| *n == name).map(|(p, _)| *p).unwrap());
    let (polite, stubborn) = (pid_of(&fake, "polite"), pid_of(&fake, "stubborn"));
    fake.with(|s| s.ignore_term.insert(stubborn));
    let begun = tokio::time::Instant::now();

    let (_tx, mut rx) = watch::channel(None);
    w.terminate(false, &mut rx).await.unwrap();
    let signals = fake.with(|s| s.signals.clone());
    assert!(signals.contains(&(polite, Signal::SIGTERM)));
    assert!(signals.contains(&(stubborn, Signal::SIGTERM)));
    assert_eq!(signals.last(), Some(&(stubborn, Signal::SIGKILL)));
    assert!(!signals.contains(&(polite, Signal::SIGKILL)));
    // SIGKILL came once the grace period was over, not before.
    let waited = begun.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert!(fake.with(|s| s.torn_down && s.deleted));
    assert_eq!(fake.reasons().iter().filter(|r| *r == "Killing").count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_host_port_is_taken_is_refused_and_never_started() {
    let fake = Fake::new();
    let port = json!([{"containerPort": 80, "hostPort": 21017}]);
    fake.with(|s| s.neighbours = vec![pod(json!({"containers": [{"name": "web", "ports": port}]}))]);
    let mut w = worker(
        &fake,
        json!({"containers": [{"name": "app", "image": "app:1", "ports": port}]}),
    );
    w.sync().await.unwrap();
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| (s.sandboxes, s.starts.len())), (0, 0));
    assert_eq!(
        fake.with(|s| s.statuses.clone()),
        [json!({"phase": "Failed", "reason": "NodePorts", "message": "Predicate NodePorts failed"})]
    );
    // Deleted, it is confirmed gone without a tear-down of what never existed.
    let (_tx, mut rx) = watch::channel(None);
    w.terminate(false, &mut rx).await.unwrap();
    assert!(fake.with(|s| s.deleted && !s.torn_down));
    // A pod with a free port is admitted.
    let free = Fake::new();
    fake.with(|s| {
        s.neighbours
            .clone_into(&mut free.state.lock().unwrap().neighbours)
    });
    let mut ok = worker(
        &free,
        json!({"containers": [{"name": "app", "image": "app:1",
        "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
    );
    ok.sync().await.unwrap();
    assert_eq!(free.with(|s| s.starts.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_privileged_pod_is_refused_where_its_namespace_enforces_pod_security() {
    let fake = Fake::new();
    fake.with(|s| {
        s.namespace = Some(json!({"metadata": {"name": "default",
            "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}))
    });
    let privileged = json!({"containers": [{"name": "app", "image": "app:1",
        "securityContext": {"privileged": true}}]});
    let mut w = worker(&fake, privileged.clone());
    w.sync().await.unwrap();
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| (s.sandboxes, s.starts.len())), (0, 0));
    let status = fake.last_status();
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], "PodSecurity");
    assert_eq!(
        status["message"],
        "Pod Security \"baseline\" of namespace \"default\" forbids this privileged pod: privileged (container \"app\" must not set securityContext.privileged=true)"
    );
    assert_eq!(fake.with(|s| s.statuses.len()), 1, "posted once");
    assert!(fake.reasons().contains(&"PodSecurity".to_string()));
    // Where the namespace enforces nothing, the same pod runs.
    let open = Fake::new();
    open.with(|s| s.namespace = Some(json!({"metadata": {"name": "default"}})));
    let mut ok = worker(&open, privileged);
    ok.sync().await.unwrap();
    assert_eq!(open.with(|s| s.starts.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn node_pressure_refuses_new_best_effort_pods_and_evicts_a_running_one_when_told() {
    use crate::pods::pressure::Pressure;
    let fake = Fake::new();
    fake.with(|s| {
        s.pressure = Pressure {
            memory: true,
            disk: false,
        }
    });
    let mut w = worker(&fake, json!({"containers": [{"name": "app", "image": "app:1"}]}));
    w.sync().await.unwrap();
    assert_eq!(fake.with(|s| (s.sandboxes, s.starts.len())), (0, 0));
    assert_eq!(
        fake.last_status(),
        json!({"phase": "Failed", "reason": "Evicted", "message": "The node had condition: [MemoryPressure]. "})
    );
    assert_eq!(fake.reasons(), ["Evicted"]);

    // A running pod the eviction manager picks is killed and reported evicted, once.
    let running = Fake::new();
    let mut w = worker(
        &running,
        json!({"containers": [{"name": "app", "image": "app:1",
            "resources": {"requests": {"memory": "1Mi"}}}]}),
    );
    w.sync().await.unwrap();
    assert_eq!(running.with(|s| s.starts.len()), 1);
    let message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 10Ki. ";
    running.with(|s| s.eviction = Some(message.into()));
    w.sync().await.unwrap();
    let status = running.last_status();
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], "Evicted");
    assert_eq!(status["message"], message);
    assert!(running.with(|s| s.signals.iter().any(|(_, sig)| *sig == Signal::SIGKILL)));
    assert_eq!(running.with(|s| s.eviction.clone()), None, "taken");
    w.sync().await.unwrap();
    assert_eq!(running.with(|s| s.starts.len()), 1, "not restarted");
}
