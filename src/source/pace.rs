//! `--max-rate`: the most events per second a source takes in, as a token bucket. The source asks before it takes an
//! event and, when the bucket is empty, holds as it does at the in-flight bound: it keeps polling its client (so it
//! stays in its group) but takes nothing until the next token.

use std::time::{Duration, Instant};

/// Up to a tenth of a second's worth of events may come in a burst after a pause, so that the rate holds on average
/// even though the source looks at the bucket between polls, not at every instant.
const BURST: f64 = 0.1;

#[derive(Debug)]
pub struct Pace {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pace {
    pub fn new(per_second: u64, now: Instant) -> Pace {
        let per_second = per_second.max(1) as f64;
        let burst = (per_second * BURST).max(1.0);
        Pace { per_second, burst, tokens: 1.0, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = now;
    }

    /// May an event be taken now?
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// An event was taken.
    pub fn took(&mut self) {
        self.tokens -= 1.0;
    }

    /// How long until the next event may be taken.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes events as fast as the bucket allows, looking every `step`, for `span`.
    fn taken(rate: u64, step: Duration, span: Duration) -> u64 {
        let t0 = Instant::now();
        let mut pace = Pace::new(rate, t0);
        let mut n = 0;
        let mut now = t0;
        while now < t0 + span {
            while pace.ready(now) {
                pace.took();
                n += 1;
            }
            now += step;
        }
        n
    }

    #[test]
    fn the_rate_holds_on_average_whatever_the_polling() {
        for (rate, step) in
            [(1000, Duration::from_micros(100)), (1000, Duration::from_millis(20)), (10, Duration::from_millis(1))]
        {
            let n = taken(rate, step, Duration::from_secs(10));
            let want = rate * 10;
            assert!(n.abs_diff(want) <= want / 100 + 2, "{n} events at {rate}/s looking every {step:?}");
        }
    }

    #[test]
    fn after_a_pause_only_a_short_burst_comes() {
        let t0 = Instant::now();
        let mut pace = Pace::new(1000, t0);
        let later = t0 + Duration::from_secs(60);
        let mut burst = 0;
        while pace.ready(later) {
            pace.took();
            burst += 1;
        }
        assert_eq!(burst, 100, "a tenth of a second's worth");
        assert!(pace.wait(later) > Duration::ZERO && pace.wait(later) <= Duration::from_millis(1));
    }
}
