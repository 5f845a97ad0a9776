//! How long a terminating pod's containers get before SIGKILL (kubelet's `killContainer` rules).

use serde_json::Value;
use std::time::{Duration, Instant};

/// The shortest time between SIGTERM and SIGKILL, however long the preStop hooks took (kubelet's
/// `minimumGracePeriodInSeconds`): a hook that uses up the grace period must not turn SIGTERM into an
/// immediate SIGKILL.
pub const MINIMUM_AFTER_HOOKS: Duration = Duration::from_secs(2);

/// The grace period of a pod being stopped: the deletion's, else the spec's, else 30 s; at most 2 s
/// when the pod is already gone from the API server (nobody waits for it any more).
pub fn grace_period(pod: &Value, gone: bool) -> Duration {
    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
        .as_u64()
        .or(pod["spec"]["terminationGracePeriodSeconds"].as_u64())
        .unwrap_or(30);
    Duration::from_secs(if gone { grace.min(2) } else { grace })
}

/// When the containers that ignore SIGTERM are killed: the grace period counts from the start of
/// the preStop hooks, and SIGTERM (sent when they finished) always gets at least
/// [`MINIMUM_AFTER_HOOKS`].
pub fn kill_deadline(hooks_started: Instant, grace: Duration, terminated_at: Instant) -> Instant {
    (hooks_started + grace).max(terminated_at + MINIMUM_AFTER_HOOKS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_deletion_grace_wins_over_the_spec_and_a_gone_pod_waits_at_most_two_seconds() {
        let pod = json!({"metadata": {"deletionGracePeriodSeconds": 7},
                         "spec": {"terminationGracePeriodSeconds": 60}});
        assert_eq!(grace_period(&pod, false), Duration::from_secs(7));
        assert_eq!(grace_period(&pod, true), Duration::from_secs(2));
        let spec_only = json!({"spec": {"terminationGracePeriodSeconds": 1}});
        assert_eq!(grace_period(&spec_only, false), Duration::from_secs(1));
        assert_eq!(grace_period(&json!({}), false), Duration::from_secs(30));
    }

    #[test]
    fn sigterm_gets_two_seconds_even_when_the_hooks_used_the_whole_grace_period() {
        let start = Instant::now();
        let grace = Duration::from_secs(5);
        // Quick hooks: the grace period ends the wait.
        let quick = start + Duration::from_millis(100);
        assert_eq!(kill_deadline(start, grace, quick), start + grace);
        // Hooks that took 4.9 s of 5: SIGTERM still gets 2 s, not 100 ms.
        let slow = start + Duration::from_millis(4900);
        assert_eq!(kill_deadline(start, grace, slow), slow + MINIMUM_AFTER_HOOKS);
        // No grace at all: 2 s.
        assert_eq!(
            kill_deadline(start, Duration::ZERO, start),
            start + MINIMUM_AFTER_HOOKS
        );
    }
}
