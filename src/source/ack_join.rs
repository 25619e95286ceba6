//! With several sinks, an input is done only once every sink has acknowledged it: each sink acknowledges every input
//! position it was sent (a bare record where the route gave it none of the input's outputs), so the source counts
//! each position's acknowledgements per sink and lets one through when every sink has one.
//!
//! Counted per sink, not in all, so that an input taken twice (a source that went back) is let through once per
//! copy that every sink acknowledged, never because one sink acknowledged both copies.

use crate::position::{Lane, Position};
use std::collections::HashMap;

#[derive(Debug)]
pub struct AckJoin {
    sinks: usize,
    /// Positions some sinks acknowledged and others not yet: per sink, how many times.
    partial: HashMap<Position, Vec<u32>>,
}

impl AckJoin {
    pub fn new(sinks: usize) -> AckJoin {
        AckJoin { sinks: sinks.max(1), partial: HashMap::new() }
    }

    /// Sink `sink` acknowledged `at`: true when that completes it, every sink having acknowledged it.
    pub fn ack(&mut self, sink: usize, at: Position) -> bool {
        if self.sinks == 1 {
            return true;
        }
        let counts = self.partial.entry(at).or_insert_with(|| vec![0; self.sinks]);
        if let Some(c) = counts.get_mut(sink) {
            *c += 1;
        }
        if counts.contains(&0) {
            return false;
        }
        counts.iter_mut().for_each(|c| *c -= 1);
        if counts.iter().all(|&c| c == 0) {
            self.partial.remove(&at);
        }
        true
    }

    /// A lane that is no longer ours: its partial acknowledgements go with it.
    pub fn forget(&mut self, lane: Lane) {
        self.partial.retain(|at, _| at.lane != lane);
    }

    /// Positions waiting on some sink.
    pub fn waiting(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sink_passes_every_acknowledgement() {
        let mut j = AckJoin::new(1);
        assert!(j.ack(0, Position::new(0, 1)));
        assert_eq!(j.waiting(), 0);
    }

    #[test]
    fn an_input_is_done_when_every_sink_acknowledged_it() {
        let mut j = AckJoin::new(3);
        let at = Position::new(2, 7);
        assert!(!j.ack(1, at));
        assert!(!j.ack(1, at), "the same sink twice is not two sinks");
        assert!(!j.ack(0, at));
        assert!(j.ack(2, at));
        // The second copy from sink 1 waits for the others' second acknowledgements.
        assert_eq!(j.waiting(), 1);
        assert!(!j.ack(0, at));
        assert!(j.ack(2, at));
        assert_eq!(j.waiting(), 0);
    }

    #[test]
    fn a_forgotten_lane_drops_its_partial_acknowledgements() {
        let mut j = AckJoin::new(2);
        assert!(!j.ack(0, Position::new(1, 1)));
        assert!(!j.ack(0, Position::new(2, 1)));
        j.forget(1);
        assert_eq!(j.waiting(), 1);
        assert!(!j.ack(1, Position::new(1, 1)), "a forgotten position starts over");
    }
}
