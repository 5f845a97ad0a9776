//! The seam between a pod's state machine (`worker/`) and the node it runs on. Every effect the
//! worker has goes through [`Runtime`]: the clock, the sandbox, volumes, images, container starts
//! through the shim, signals, hooks and probes, the pod's files on disk, events and status writes.
//! `host/` is the real one, one per pod (it knows the pod's uid, directory and name); the worker's
//! unit tests run whole passes against a fake one with a hand-set clock, without root or sleeps.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::containers::{Attempt, Ctr};
use super::probe::{Report, Target, Verdict};
use crate::image::Image;

/// What a previous agent left of the pod on this node.
#[derive(Debug, Default)]
pub(super) struct Saved {
    /// The pod's own address, once its sandbox had one.
    pub ip: Option<String>,
    /// When the pod was first taken up (RFC 3339).
    pub start_time: Option<String>,
    /// Whether its sandbox is still there.
    pub sandbox_ready: bool,
    /// Its containers' attempts, by container name.
    pub ctrs: HashMap<String, Ctr>,
}

/// Why a container's image could not be made available.
#[derive(Debug, thiserror::Error)]
pub(super) enum PullFailure {
    /// The name does not parse.
    #[error("{0}")]
    InvalidName(String),
    /// Not present, and the policy is `Never`.
    #[error("{0}")]
    NeverPull(String),
    /// The pull failed (retried with back-off).
    #[error("{0}")]
    Pull(String),
}

/// One pod's view of the node. Cloned into the tasks the worker spawns (hooks, probe reports), so
/// clones are cheap and share everything.
pub(super) trait Runtime: Clone + Send + Sync + 'static {
    /// The monotonic clock that back-off and termination deadlines read.
    fn now(&self) -> Instant;
    /// The wall clock, RFC 3339, as status and attempt times are written.
    fn timestamp(&self) -> String;

    /// What a previous agent left on disk (nothing for a new pod).
    fn load(&self) -> Saved;
    /// The other pods this node runs (admitted, not ended).
    fn neighbours(&self) -> Vec<Value>;
    /// The pod's namespace, as the API server has it (`None` when it is gone).
    fn namespace(&self) -> impl Future<Output = anyhow::Result<Option<Value>>> + Send;
    /// Keeps the pod's latest version where a restarted agent finds it.
    fn save(&self, pod: &Value) -> anyhow::Result<()>;
    /// Records when the pod was first taken up.
    fn save_start_time(&self, at: &str);

    /// Creates the pod's sandbox (namespaces, address, hosts/hostname/resolv.conf); returns the
    /// pod's own address (`None` on the host network).
    fn create_sandbox(&self, pod: &Value) -> impl Future<Output = anyhow::Result<Option<String>>> + Send;
    /// Creates and refreshes the pod's volumes; `pod` carries the addresses the downward API reads.
    fn sync_volumes(&self, pod: &Value) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// A container's image, pulled as its policy says; a [`PullFailure`] when it cannot be had.
    fn image(&self, pod: &Value, c: &Value) -> impl Future<Output = anyhow::Result<Image>> + Send;
    /// A container's environment; a `ConfigError` when a reference in it cannot be resolved.
    fn env(
        &self,
        pod: &Value,
        c: &Value,
        image: &Image,
    ) -> impl Future<Output = anyhow::Result<Vec<(String, String)>>> + Send;
    /// Creates attempt `number` of container `c` and starts it; returns once it runs or could not
    /// start (then its `exited` says why); `wake` is notified when it ends. An error means nothing
    /// was started.
    fn start(
        &self,
        pod: &Value,
        c: &Value,
        image: &Image,
        env: Vec<(String, String)>,
        number: u32,
        wake: &Arc<Notify>,
    ) -> impl Future<Output = anyhow::Result<Attempt>> + Send;
    /// Re-reads a running attempt: whether it started, whether it ended (a vanished shim ends it).
    fn observe(&self, container: &str, attempt: &mut Attempt);
    /// Sends a signal to a container's process.
    fn signal(&self, pid: i32, signal: Signal);

    /// How probes and hooks reach a container attempt.
    fn target(&self, c: &Value, id: &str, pid: i32, grace: Duration, ip: &str) -> Target;
    /// Runs a lifecycle hook within `budget`.
    fn run_hook(
        &self,
        target: &Target,
        hook: &Value,
        budget: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Starts an attempt's probes; they write `verdict` and wake the worker on changes.
    fn probe(
        &self,
        target: Target,
        verdict: Arc<Mutex<Verdict>>,
        wake: Arc<Notify>,
        report: Report,
    ) -> AbortHandle;

    /// Records an event about the pod.
    fn event(&self, kind: &str, reason: &str, message: &str) -> impl Future<Output = ()> + Send;
    /// The pod's use of the node's disk (containers' writable layers and logs, emptyDirs).
    fn local_storage(&self, pod: &Value) -> super::eviction::Usage;
    /// The node's memory and disk pressure (`pressure.rs`), for admission.
    fn node_pressure(&self) -> super::pressure::Pressure;
    /// The node-pressure eviction decided for this pod, taken once.
    fn take_eviction(&self) -> Option<String>;
    /// Records an event about the node (`OOMKilling`).
    fn node_event(&self, kind: &str, reason: &str, message: &str) -> impl Future<Output = ()> + Send;
    /// Writes the pod's status; returns the pod as updated (`None` when it is gone).
    fn post_status(&self, status: &Value) -> impl Future<Output = anyhow::Result<Option<Value>>> + Send;
    /// Removes everything of the pod from the node.
    fn teardown(&self, pod: &Value) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Confirms the pod's deletion to the API server once it is gone from the node.
    fn finish_deletion(&self, pod: &Value) -> impl Future<Output = anyhow::Result<()>> + Send;
}
