//! Restart and pull back-off, as the kubelet's CrashLoopBackOff and ImagePullBackOff: the first
//! restart of an exited container is immediate, the next waits 10 s, then 20 s, 40 s, ... up to
//! 5 min, and a container that ran for 10 min starts over; failed pulls wait 10 s doubling to
//! 5 min. Time is a parameter (`now`), so the state machine is tested without a clock or sleeps.

use std::time::{Duration, Instant};

/// The first wait.
const START: Duration = Duration::from_secs(10);
/// The longest wait.
const MAX: Duration = Duration::from_secs(300);
/// A container that ran this long has its restart back-off reset.
const RESET: Duration = Duration::from_secs(600);
/// How soon an image that cannot be pulled at all (a bad name, `Never` policy) is looked at again.
const IMAGE_RECHECK: Duration = Duration::from_secs(5);

/// One container's back-off.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Earliest next (re)start or pull.
    not_before: Option<Instant>,
    /// The restart back-off in force (None: the next restart is immediate).
    restart: Option<Duration>,
    /// The pull back-off in force.
    pull: Option<Duration>,
}

impl Backoff {
    /// How long before the container may be tried again; `None` when it may be now.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.not_before.filter(|t| *t > now).map(|t| t - now)
    }

    /// A pull failed and will be retried: the wait before the next one.
    pub fn pull_failed(&mut self, now: Instant) -> Duration {
        let next = self.pull.map_or(START, |b| (b * 2).min(MAX));
        self.pull = Some(next);
        self.not_before = Some(now + next);
        next
    }

    /// The image cannot be had as named or by policy: the wait before looking again.
    pub fn image_unavailable(&mut self, now: Instant) -> Duration {
        self.not_before = Some(now + IMAGE_RECHECK);
        IMAGE_RECHECK
    }

    /// The image is there: pulls start over.
    pub fn pulled(&mut self) {
        self.pull = None;
    }

    /// The container's last attempt exited after running for `ran`: `Some(wait)` when its
    /// restart must wait (CrashLoopBackOff), `None` when it may start now.
    pub fn restart(&mut self, ran: Duration, now: Instant) -> Option<Duration> {
        if ran >= RESET {
            self.restart = None;
        }
        match (self.restart, self.not_before) {
            (None, _) => self.restart = Some(START),
            (Some(b), None) => {
                self.not_before = Some(now + b);
                return Some(b);
            }
            (Some(b), Some(_)) => self.restart = Some((b * 2).min(MAX)),
        }
        None
    }

    /// The container is being started: nothing holds it back any more.
    pub fn starting(&mut self) {
        self.not_before = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a container `restarts` times, each attempt exiting after `ran`, as the worker
    /// does: it asks whether the restart may go, and comes back when told to wait. Returns how
    /// long each restart waited.
    fn waits(b: &mut Backoff, now: &mut Instant, restarts: usize, ran: Duration) -> Vec<u64> {
        (0..restarts)
            .map(|_| {
                let mut waited = 0;
                loop {
                    if let Some(due) = b.due_in(*now) {
                        *now += due;
                        waited += due.as_secs();
                    }
                    match b.restart(ran, *now) {
                        Some(wait) => {
                            *now += wait;
                            waited += wait.as_secs();
                        }
                        None => {
                            b.starting();
                            return waited;
                        }
                    }
                }
            })
            .collect()
    }

    #[test]
    fn restarts_wait_ten_seconds_doubling_to_five_minutes() {
        let mut b = Backoff::default();
        let mut now = Instant::now();
        assert_eq!(
            waits(&mut b, &mut now, 8, Duration::ZERO),
            [0, 10, 20, 40, 80, 160, 300, 300]
        );
    }

    #[test]
    fn a_long_run_starts_the_back_off_over() {
        let mut b = Backoff::default();
        let mut now = Instant::now();
        waits(&mut b, &mut now, 5, Duration::ZERO);
        assert_eq!(
            b.restart(Duration::from_secs(600), now),
            None,
            "a restart right away"
        );
        b.starting();
        assert_eq!(b.restart(Duration::from_secs(1), now), Some(START));
    }

    #[test]
    fn a_wait_holds_the_container_until_it_is_due() {
        let mut b = Backoff::default();
        let now = Instant::now();
        assert_eq!(b.restart(Duration::ZERO, now), None);
        b.starting();
        assert_eq!(b.restart(Duration::ZERO, now), Some(START));
        assert_eq!(
            b.due_in(now + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(b.due_in(now + START), None);
    }

    #[test]
    fn pulls_back_off_and_start_over_once_pulled() {
        let mut b = Backoff::default();
        let now = Instant::now();
        let pulls: Vec<u64> = (0..7).map(|_| b.pull_failed(now).as_secs()).collect();
        assert_eq!(pulls, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.due_in(now), Some(MAX));
        b.pulled();
        assert_eq!(b.pull_failed(now), START);
        assert_eq!(b.image_unavailable(now), IMAGE_RECHECK);
        assert_eq!(b.due_in(now), Some(IMAGE_RECHECK));
    }
}
