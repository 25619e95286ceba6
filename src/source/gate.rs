//! The event bound: how many events may be in flight (consumed, not yet acknowledged), and what the consumer does
//! at the bound.
//!
//! At the bound the consumer takes no more events. librdkafka's prefetch still fills up to its own limits, and its
//! background thread keeps the group session alive, so a short hold costs nothing. A long hold would exceed
//! `max.poll.interval.ms` unless poll is called, and poll would return more events: so after `pause_after` the
//! partitions are paused (which drops librdkafka's prefetched messages; they are fetched again on resume) and poll
//! goes on, returning nothing. Below the bound again, the partitions are resumed.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Take events.
    Take,
    /// Take events, after resuming the paused partitions.
    ResumeAndTake,
    /// Take no events; wait for acks.
    Hold,
    /// Take no events; pause the partitions now, then poll (it returns nothing) while waiting for acks.
    PauseAndHold,
    /// Take no events; already paused, so poll while waiting for acks.
    HoldPaused,
}

#[derive(Debug)]
pub struct Gate {
    capacity: usize,
    pause_after: Duration,
    held_since: Option<Instant>,
    paused: bool,
}

impl Gate {
    pub fn new(capacity: usize, pause_after: Duration) -> Gate {
        Gate { capacity: capacity.max(1), pause_after, held_since: None, paused: false }
    }

    pub fn step(&mut self, in_flight: usize, now: Instant) -> Step {
        if in_flight < self.capacity {
            self.held_since = None;
            return if std::mem::take(&mut self.paused) { Step::ResumeAndTake } else { Step::Take };
        }
        let since = *self.held_since.get_or_insert(now);
        if self.paused {
            Step::HoldPaused
        } else if now.duration_since(since) >= self.pause_after {
            self.paused = true;
            Step::PauseAndHold
        } else {
            Step::Hold
        }
    }

    /// Resuming failed: the partitions are still paused, so resume again on the next step.
    pub fn resume_failed(&mut self) {
        self.paused = true;
    }

    /// Pausing failed, or a rebalance brought partitions that are not paused yet: pause again on the next step.
    pub fn unpaused(&mut self) {
        self.paused = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn below_the_bound_events_are_taken() {
        let mut g = Gate::new(3, SEC);
        let t = Instant::now();
        assert_eq!(g.step(0, t), Step::Take);
        assert_eq!(g.step(2, t), Step::Take);
    }

    #[test]
    fn at_the_bound_the_consumer_holds_then_pauses_once() {
        let mut g = Gate::new(3, SEC);
        let t = Instant::now();
        assert_eq!(g.step(3, t), Step::Hold);
        assert_eq!(g.step(4, t + SEC / 2), Step::Hold);
        assert_eq!(g.step(3, t + SEC), Step::PauseAndHold);
        assert_eq!(g.step(3, t + 2 * SEC), Step::HoldPaused);
        assert_eq!(g.step(2, t + 3 * SEC), Step::ResumeAndTake);
        assert_eq!(g.step(2, t + 3 * SEC), Step::Take);
    }

    #[test]
    fn a_short_hold_does_not_pause_and_the_clock_restarts() {
        let mut g = Gate::new(10, SEC);
        let t = Instant::now();
        assert_eq!(g.step(10, t), Step::Hold);
        assert_eq!(g.step(9, t + SEC / 2), Step::Take);
        assert_eq!(g.step(10, t + SEC), Step::Hold, "a new hold starts its own clock");
        assert_eq!(g.step(10, t + 2 * SEC), Step::PauseAndHold);
    }

    #[test]
    fn a_failed_pause_is_tried_again() {
        let mut g = Gate::new(1, Duration::ZERO);
        let t = Instant::now();
        assert_eq!(g.step(1, t), Step::PauseAndHold);
        g.unpaused();
        assert_eq!(g.step(1, t), Step::PauseAndHold);
    }
}
