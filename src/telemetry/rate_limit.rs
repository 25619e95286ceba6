//! Log lines for things that may happen by the million: at most one per interval, each saying how many were held
//! back since the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A limit on how often one kind of line is written. Lock-free, so each event kind keeps its own in a `static` and
/// any thread may use it.
#[derive(Debug)]
pub struct RateLimit {
    every_ms: u64,
    /// Milliseconds since this process's clock started before which no line may be written.
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

/// The interval every rate-limited line of the pipeline uses.
pub const EVERY: Duration = Duration::from_secs(5);

impl RateLimit {
    pub const fn every(every: Duration) -> RateLimit {
        RateLimit { every_ms: every.as_millis() as u64, next_ms: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// `Some(held back since the last line)` when a line may be written now; `None` (and one more held back) if not.
    pub fn check(&self) -> Option<u64> {
        self.check_at(now_ms())
    }

    fn check_at(&self, now: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next
            || self.next_ms.compare_exchange(next, now + self.every_ms, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

fn now_ms() -> u64 {
    static CLOCK: OnceLock<Instant> = OnceLock::new();
    CLOCK.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What a line that held others back ends with: ` (N more not logged)`, or nothing when it held none back.
pub fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more not logged)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_what_was_held_back() {
        let limit = RateLimit::every(Duration::from_secs(5));
        assert_eq!(limit.check_at(1_000), Some(0));
        assert_eq!(limit.check_at(1_001), None);
        assert_eq!(limit.check_at(5_999), None);
        assert_eq!(limit.check_at(6_000), Some(2), "the next line says how many were held back");
        assert_eq!(limit.check_at(6_001), None);
        assert_eq!(limit.check_at(60_000), Some(1));
    }

    #[test]
    fn the_suffix_says_nothing_when_nothing_was_held_back() {
        assert_eq!(held_back(0), "");
        assert_eq!(held_back(3), " (3 more not logged)");
    }
}
