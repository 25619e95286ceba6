//! Restart pacing, as pure logic shared by everything that restarts: the supervisor's children and a worker's
//! `--exec` command. The delay before each restart grows, and a budget of restarts within a window says when
//! restarting has stopped helping.

use std::time::{Duration, Instant};

/// The first restart's delay; it doubles with every restart within the window, up to `BACKOFF_MAX`.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The delay before restart number `n` within the window (n ≥ 1): 100 ms, doubling, at most 10 s.
pub fn backoff(n: usize) -> Duration {
    let doublings = n.saturating_sub(1).min(16) as u32;
    BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// At most `max` restarts in a row, where a row ends once what was restarted runs a whole `window` without failing
/// and gets work done meanwhile.
///
/// The window is measured from the restart, not as a sliding window over failure times: a failure that takes longer
/// to show than the window divided by `max` would otherwise never fill the window, and a failure that repeats forever
/// would never give up. Time alone does not forgive: a run that got nothing done (stuck on the same event until the
/// liveness check or the drain timeout ended it) is the same failure again, however long it took.
#[derive(Debug)]
pub struct Window {
    max: u32,
    window: Duration,
    /// Restarts since the last run that lasted a whole window.
    streak: usize,
}

/// What the window allows after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart after `delay`; this is restart number `n` in a row.
    Restart { delay: Duration, n: usize },
    /// `n` restarts in a row did not help: give up.
    GiveUp { n: usize },
}

impl Window {
    pub fn new(max: u32, window: Duration) -> Window {
        Window { max, window, streak: 0 }
    }

    /// What was started at `started` failed at `failed`, having got work done (`progressed`) or not: may it be
    /// restarted?
    pub fn on_failure(&mut self, failed: Instant, started: Instant, progressed: bool) -> Verdict {
        if progressed && failed.saturating_duration_since(started) > self.window {
            self.streak = 0;
        }
        if self.streak >= self.max as usize {
            return Verdict::GiveUp { n: self.streak };
        }
        self.streak += 1;
        Verdict::Restart { delay: backoff(self.streak), n: self.streak }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_backoff_doubles_from_100_ms_up_to_10_s() {
        let delays: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(backoff(1000), BACKOFF_MAX, "no overflow");
    }

    #[test]
    fn the_window_gives_up_after_max_restarts_in_a_row() {
        let mut w = Window::new(2, 60 * SEC);
        let t = Instant::now();
        assert_eq!(w.on_failure(t, t, true), Verdict::Restart { delay: backoff(1), n: 1 });
        assert_eq!(w.on_failure(t + SEC, t, true), Verdict::Restart { delay: backoff(2), n: 2 });
        assert_eq!(w.on_failure(t + 2 * SEC, t + SEC, true), Verdict::GiveUp { n: 2 });
    }

    #[test]
    fn a_run_that_lasted_the_window_starts_the_count_afresh() {
        let mut w = Window::new(1, 10 * SEC);
        let t = Instant::now();
        assert!(matches!(w.on_failure(t, t, true), Verdict::Restart { n: 1, .. }));
        assert!(matches!(w.on_failure(t + 5 * SEC, t, true), Verdict::GiveUp { n: 1 }));
        assert_eq!(
            w.on_failure(t + 30 * SEC, t + 15 * SEC, true),
            Verdict::Restart { delay: backoff(1), n: 1 },
            "the backoff too"
        );
    }

    #[test]
    fn slow_failures_that_repeat_still_give_up() {
        // Each run fails after 37 s: never more than two failures in any 60 s, yet it is the same failure each time.
        let mut w = Window::new(3, 60 * SEC);
        let mut started = Instant::now();
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            let failed = started + 37 * SEC;
            verdicts.push(w.on_failure(failed, started, true));
            started = failed + SEC;
        }
        assert!(matches!(verdicts[2], Verdict::Restart { n: 3, .. }), "{verdicts:?}");
        assert_eq!(verdicts[3], Verdict::GiveUp { n: 3 });
    }

    #[test]
    fn a_long_run_that_got_nothing_done_is_not_forgiven() {
        // Stuck on one event each time, ended by the liveness check or the drain timeout after more than the window.
        let mut w = Window::new(2, 60 * SEC);
        let t = Instant::now();
        assert!(matches!(w.on_failure(t + 90 * SEC, t, false), Verdict::Restart { n: 1, .. }));
        assert!(matches!(w.on_failure(t + 190 * SEC, t + 100 * SEC, false), Verdict::Restart { n: 2, .. }));
        assert_eq!(w.on_failure(t + 290 * SEC, t + 200 * SEC, false), Verdict::GiveUp { n: 2 });
    }

    #[test]
    fn zero_max_restarts_never_restarts() {
        assert_eq!(Window::new(0, 60 * SEC).on_failure(Instant::now(), Instant::now(), true), Verdict::GiveUp { n: 0 });
    }
}
