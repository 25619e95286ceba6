//! Restart pacing, as pure logic shared by everything that restarts: the supervisor's children and a worker's
//! `--exec` command. The delay before each restart grows, and a budget of restarts within a window says when
//! restarting has stopped helping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The first restart's delay; it doubles with every restart within the window, up to `BACKOFF_MAX`.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The delay before restart number `n` within the window (n ≥ 1): 100 ms, doubling, at most 10 s.
pub fn backoff(n: usize) -> Duration {
    let doublings = n.saturating_sub(1).min(16) as u32;
    BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// At most `max` restarts within any `window`.
#[derive(Debug)]
pub struct Window {
    max: u32,
    window: Duration,
    /// When the restarts still inside the window happened.
    recent: VecDeque<Instant>,
}

/// What the window allows after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart after `delay`; this is restart number `n` within the window.
    Restart { delay: Duration, n: usize },
    /// `n` restarts within the window did not help: give up.
    GiveUp { n: usize },
}

impl Window {
    pub fn new(max: u32, window: Duration) -> Window {
        Window { max, window, recent: VecDeque::new() }
    }

    /// Something failed at `now`: may it be restarted?
    pub fn on_failure(&mut self, now: Instant) -> Verdict {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max as usize {
            return Verdict::GiveUp { n: self.recent.len() };
        }
        self.recent.push_back(now);
        let n = self.recent.len();
        Verdict::Restart { delay: backoff(n), n }
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
    fn the_window_gives_up_once_max_restarts_came_within_it() {
        let mut w = Window::new(2, 60 * SEC);
        let t = Instant::now();
        assert_eq!(w.on_failure(t), Verdict::Restart { delay: backoff(1), n: 1 });
        assert_eq!(w.on_failure(t + SEC), Verdict::Restart { delay: backoff(2), n: 2 });
        assert_eq!(w.on_failure(t + 2 * SEC), Verdict::GiveUp { n: 2 });
    }

    #[test]
    fn restarts_older_than_the_window_no_longer_count() {
        let mut w = Window::new(1, 10 * SEC);
        let t = Instant::now();
        assert!(matches!(w.on_failure(t), Verdict::Restart { n: 1, .. }));
        assert!(matches!(w.on_failure(t + 5 * SEC), Verdict::GiveUp { n: 1 }));
        assert_eq!(w.on_failure(t + 11 * SEC), Verdict::Restart { delay: backoff(1), n: 1 }, "the backoff too");
    }

    #[test]
    fn zero_max_restarts_never_restarts() {
        assert_eq!(Window::new(0, 60 * SEC).on_failure(Instant::now()), Verdict::GiveUp { n: 0 });
    }
}
