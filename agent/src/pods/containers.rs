//! The worker's model of a pod's containers: each one's attempts as found on disk, why it waits,
//! its back-off, pulled image and probes.

use std::sync::Arc;

use serde_json::Value;

use crate::runtime::shim::{Exited, Started};

/// One attempt of a container, as found on disk.
#[derive(Debug, Clone, Default)]
pub(super) struct Attempt {
    /// 0 for the first, then one more per restart.
    pub number: u32,
    /// The runtime's container id.
    pub id: String,
    /// Written when it started.
    pub started: Option<Started>,
    /// Written when it ended (or could not start).
    pub exited: Option<Exited>,
    /// Its termination message, read once it ended (`terminationMessagePath`, or the log's tail
    /// with `FallbackToLogsOnError`).
    pub message: Option<String>,
}

/// What the worker knows about one container.
#[derive(Debug, Default)]
pub(super) struct Ctr {
    /// The latest attempt (None: never created).
    pub current: Option<Attempt>,
    /// The attempt before it, for `lastState`.
    pub previous: Option<Attempt>,
    /// Why it is not running, when it is not.
    pub waiting: Option<(String, String)>,
    /// Restart and pull back-off.
    pub backoff: super::backoff::Backoff,
    pub image_id: Option<String>,
    /// The spec's image the current attempt was started from (None: adopted from a previous
    /// agent, which did not say).
    pub started_image: Option<String>,
    /// When the current attempt was told to stop because its spec changed (its image): it is
    /// killed at the deadline if still running, and started again whatever the restart policy.
    pub replacing: Option<std::time::Instant>,
    /// Probes of the current attempt: (attempt, task, verdict).
    pub probes: Option<(
        u32,
        tokio::task::AbortHandle,
        Arc<std::sync::Mutex<super::probe::Verdict>>,
    )>,
}

impl Ctr {
    pub fn running(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|a| a.started.is_some() && a.exited.is_none())
    }
    pub fn exited(&self) -> Option<&Exited> {
        self.current.as_ref().and_then(|a| a.exited.as_ref())
    }
    /// An init container is done once it succeeded; a sidecar once it runs.
    pub fn init_done(&self, sidecar: bool) -> bool {
        if sidecar {
            self.running()
        } else {
            self.exited().is_some_and(Exited::succeeded)
        }
    }
    pub fn restart_count(&self) -> u32 {
        self.current.as_ref().map(|a| a.number).unwrap_or(0)
    }
    pub fn verdict(&self) -> super::probe::Verdict {
        match &self.probes {
            Some((n, _, v)) if Some(*n) == self.current.as_ref().map(|a| a.number) => {
                v.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
            _ => super::probe::Verdict::default(),
        }
    }
    pub fn stop_probes(&mut self) {
        if let Some((_, task, _)) = self.probes.take() {
            task.abort();
        }
    }
}

/// A sidecar: an init container that keeps running beside the app containers.
pub(super) fn is_sidecar(c: &Value) -> bool {
    c["restartPolicy"].as_str() == Some("Always")
}
