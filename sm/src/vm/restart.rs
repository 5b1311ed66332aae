//! When a failed backend is started again, and when sm gives up on it: systemd's defaults
//! (`RestartSec` growing from 0, `StartLimitBurst=5` in `StartLimitIntervalSec=10s`), as a
//! pure function of the backend's history so it can be tested without processes.

use std::time::{Duration, Instant};

/// What to do after a backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this long.
    RestartIn(Duration),
    /// Stop trying: the VM stops.
    GiveUp,
}

/// Backoff and burst limit.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// The delay before the second consecutive restart; it doubles with each further one.
    pub first_backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
    /// A run that was ready this long resets the backoff.
    pub reset_after: Duration,
    /// At most this many restarts within [`RestartPolicy::window`].
    pub burst: usize,
    /// The burst limit's window.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            reset_after: Duration::from_secs(10),
            burst: 5,
            window: Duration::from_secs(10),
        }
    }
}

/// What a backend went through: its restarts and failures, and how many failures in a row
/// came without a long enough run between them.
#[derive(Clone, Debug, Default)]
pub struct History {
    restarts: Vec<Instant>,
    failures: Vec<Instant>,
    consecutive: u32,
}

impl History {
    /// It failed at `at`, after having been ready for `ready_for` (`None`: never ready).
    pub fn failed(&mut self, at: Instant, ready_for: Option<Duration>, policy: &RestartPolicy) {
        if ready_for.is_some_and(|r| r >= policy.reset_after) {
            self.consecutive = 0;
        }
        self.consecutive += 1;
        self.failures.push(at);
        self.forget_before(at, policy.window);
    }

    /// It was started again at `at`.
    pub fn restarted(&mut self, at: Instant) {
        self.restarts.push(at);
    }

    /// How many failures happened within `window` before `now`.
    pub fn failures_within(&self, window: Duration, now: Instant) -> usize {
        self.failures
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < window)
            .count()
    }

    /// Drops what is older than any window looks back (a long-running VM's history stays
    /// small).
    fn forget_before(&mut self, now: Instant, window: Duration) {
        let keep = |t: &Instant| now.saturating_duration_since(*t) < window;
        self.restarts.retain(keep);
        self.failures.retain(keep);
    }
}

impl RestartPolicy {
    /// What to do now that the backend with `history` (its latest failure recorded) failed.
    pub fn decide(&self, history: &History, now: Instant) -> Decision {
        let recent = history
            .restarts
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < self.window)
            .count();
        if recent >= self.burst {
            return Decision::GiveUp;
        }
        Decision::RestartIn(self.backoff(history.consecutive))
    }

    /// The delay before restart number `n` in a row: 0, then 100, 200, 400, 800 ms, ...,
    /// capped.
    fn backoff(&self, n: u32) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let doublings = (n - 2).min(16);
        (self.first_backoff * (1u32 << doublings)).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Fails at once after every start, as a backend that cannot start does; returns each
    /// decision and when it came.
    fn crash_loop(policy: &RestartPolicy, t0: Instant) -> Vec<(Duration, Decision)> {
        let mut h = History::default();
        let mut now = t0;
        let mut seen = vec![];
        loop {
            h.failed(now, None, policy);
            let d = policy.decide(&h, now);
            seen.push((now - t0, d));
            match d {
                Decision::GiveUp => return seen,
                Decision::RestartIn(delay) => {
                    now += delay;
                    h.restarted(now);
                    now += 5 * MS; // The start fails 5 ms later.
                }
            }
        }
    }

    #[test]
    fn a_crash_loop_backs_off_then_gives_up_after_five_restarts() {
        let p = RestartPolicy::default();
        let seen = crash_loop(&p, Instant::now());
        let delays: Vec<_> = seen
            .iter()
            .filter_map(|(_, d)| match d {
                Decision::RestartIn(d) => Some(d.as_millis()),
                Decision::GiveUp => None,
            })
            .collect();
        assert_eq!(delays, [0, 100, 200, 400, 800]);
        assert_eq!(seen.last().unwrap().1, Decision::GiveUp);
        // Six failures, the last about 1.5 s after the first.
        assert_eq!(seen.len(), 6);
        let end = seen.last().unwrap().0;
        assert!(end >= 1500 * MS && end < 1600 * MS, "{end:?}");
    }

    #[test]
    fn the_backoff_is_capped_at_two_seconds() {
        let p = RestartPolicy {
            burst: 100,
            ..RestartPolicy::default()
        };
        let mut h = History::default();
        let t = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            h.failed(t, None, &p);
            if let Decision::RestartIn(d) = p.decide(&h, t) {
                last = d;
            }
        }
        assert_eq!(last, 2000 * MS);
    }

    #[test]
    fn kills_three_seconds_apart_are_restarted_forever() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        let mut now = Instant::now();
        for i in 0..50 {
            h.failed(now, Some(3000 * MS), &p);
            let Decision::RestartIn(d) = p.decide(&h, now) else {
                panic!("gave up at kill {i}");
            };
            now += d;
            h.restarted(now);
            now += 3000 * MS;
        }
    }

    #[test]
    fn ten_seconds_ready_resets_the_backoff() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        let mut now = Instant::now();
        for _ in 0..3 {
            h.failed(now, None, &p);
            let _ = p.decide(&h, now);
            h.restarted(now);
        }
        now += 20_000 * MS;
        h.failed(now, Some(9_999 * MS), &p);
        assert_eq!(p.decide(&h, now), Decision::RestartIn(400 * MS));
        h.restarted(now);
        now += 20_000 * MS;
        h.failed(now, Some(10_000 * MS), &p);
        assert_eq!(p.decide(&h, now), Decision::RestartIn(Duration::ZERO));
    }

    #[test]
    fn restarts_older_than_the_window_do_not_count() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        let t = Instant::now();
        for i in 0..5 {
            h.restarted(t + i * MS);
        }
        h.failed(t + 9_000 * MS, None, &p);
        assert_eq!(p.decide(&h, t + 9_000 * MS), Decision::GiveUp);
        h.failed(t + 10_005 * MS, None, &p);
        assert!(matches!(
            p.decide(&h, t + 10_005 * MS),
            Decision::RestartIn(_)
        ));
        assert_eq!(h.failures_within(p.window, t + 10_005 * MS), 2);
    }
}
