//! Which positions may be committed: per lane, the end of the contiguous run of acknowledged events.
//!
//! With N workers and keys spread over the destination, acknowledgements come back out of order. Committing the
//! highest acknowledged position would lose the gaps below it on a crash, so each lane keeps its in-flight sequence
//! numbers in the order they were taken and advances only past a prefix that is wholly acknowledged. Sequence numbers
//! need not be consecutive (Kafka's compaction and transaction markers).
//!
//! A source may also go back and hand out again what it had already given (librdkafka resets a partition to its
//! earliest offset when a fetch is refused as out of range). The events taken twice are both tracked and both
//! acknowledged, each acknowledgement marking the oldest copy still open, and the position never moves back: what lies
//! below it was delivered the first time.

use crate::position::{Lane, Position, Seq};
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
struct LaneMarks {
    /// In-flight sequence numbers in the order they were taken, with whether each was acknowledged.
    in_flight: VecDeque<(Seq, bool)>,
    /// How many entries at the front were taken before the last rewind. Until they are gone, `in_flight` is not in
    /// order and an acknowledgement looks for its entry by scanning; at 0 it is strictly increasing again, and a
    /// binary search finds it.
    before_rewind: usize,
    /// The next sequence number to read after the acknowledged prefix: what a commit stores.
    position: Option<Seq>,
    /// The position moved since it was last taken.
    advanced: bool,
    /// The last sequence number tracked.
    last: Option<Seq>,
}

#[derive(Debug, Default)]
pub struct Watermarks {
    lanes: HashMap<Lane, LaneMarks>,
    in_flight: usize,
}

impl Watermarks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the event at `at` was sent into the pipeline. Returns the previous sequence number of its lane
    /// when this one does not follow it, so that a skip (Kafka's retention, compaction, transaction markers) or a
    /// rewind of the source can be reported.
    pub fn track(&mut self, at: Position) -> Option<Seq> {
        let p = self.lanes.entry(at.lane).or_default();
        let jumped = p.last.filter(|&last| at.seq != last + 1);
        p.last = Some(at.seq);
        if p.in_flight.back().is_some_and(|&(s, _)| s >= at.seq) {
            p.before_rewind = p.in_flight.len();
        }
        p.in_flight.push_back((at.seq, false));
        self.in_flight += 1;
        jumped
    }

    /// Records an acknowledgement; returns false for one that is unknown or already counted (a revoked lane, a
    /// duplicate), which is then ignored.
    pub fn ack(&mut self, at: Position) -> bool {
        let Some(p) = self.lanes.get_mut(&at.lane) else {
            return false;
        };
        let found = if p.before_rewind == 0 {
            p.in_flight.binary_search_by_key(&at.seq, |&(s, _)| s).ok().filter(|&i| !p.in_flight[i].1)
        } else {
            p.in_flight.iter().position(|&(s, acked)| s == at.seq && !acked)
        };
        let Some(i) = found else {
            return false;
        };
        p.in_flight[i].1 = true;
        self.in_flight -= 1;
        while let Some(&(s, true)) = p.in_flight.front() {
            p.in_flight.pop_front();
            p.before_rewind = p.before_rewind.saturating_sub(1);
            if p.position.is_none_or(|pos| pos < s + 1) {
                p.position = Some(s + 1);
                p.advanced = true;
            }
        }
        true
    }

    /// Whether the lane is tracked (taken, and not let go since).
    pub fn tracks(&self, lane: Lane) -> bool {
        self.lanes.contains_key(&lane)
    }

    /// Events sent into the pipeline and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn in_flight_of(&self, lane: Lane) -> usize {
        self.lanes.get(&lane).map_or(0, |p| p.in_flight.iter().filter(|(_, acked)| !acked).count())
    }

    /// The lowest sequence number still unacknowledged in any lane: for a source that numbers its events across
    /// lanes, everything below it is acknowledged.
    pub fn oldest_in_flight(&self) -> Option<Seq> {
        self.lanes.values().filter_map(|p| p.in_flight.iter().find(|(_, acked)| !acked).map(|(s, _)| *s)).min()
    }

    /// The committable position of every lane whose position moved since the last call.
    pub fn take_advanced(&mut self) -> Vec<Position> {
        let mut out = Vec::new();
        for (&lane, p) in &mut self.lanes {
            if std::mem::take(&mut p.advanced) {
                out.extend(p.position.map(|seq| Position { lane, seq }));
            }
        }
        out
    }

    /// The committable position of every lane that has one, by lane.
    pub fn positions(&self) -> Vec<Position> {
        let mut out: Vec<_> =
            self.lanes.iter().filter_map(|(&lane, p)| p.position.map(|seq| Position { lane, seq })).collect();
        out.sort_unstable();
        out
    }

    pub fn position(&self, lane: Lane) -> Option<Seq> {
        self.lanes.get(&lane).and_then(|p| p.position)
    }

    /// Drops a lane that is no longer ours; its unacknowledged events are re-read by its next owner.
    pub fn forget(&mut self, lane: Lane) {
        if let Some(p) = self.lanes.remove(&lane) {
            self.in_flight -= p.in_flight.iter().filter(|(_, acked)| !acked).count();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lane: Lane, seq: Seq) -> Position {
        Position { lane, seq }
    }

    #[test]
    fn in_order_acks_advance_one_by_one() {
        let mut w = Watermarks::new();
        for o in 0..3 {
            w.track(at(0, o));
        }
        assert_eq!(w.in_flight(), 3);
        assert!(w.ack(at(0, 0)));
        assert_eq!(w.position(0), Some(1));
        assert!(w.ack(at(0, 1)));
        assert!(w.ack(at(0, 2)));
        assert_eq!(w.position(0), Some(3), "the position is the next offset to read");
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn out_of_order_acks_wait_for_the_gap() {
        let mut w = Watermarks::new();
        for o in 10..15 {
            w.track(at(1, o));
        }
        assert!(w.ack(at(1, 12)));
        assert!(w.ack(at(1, 14)));
        assert_eq!(w.position(1), None, "nothing below 12 is acked yet");
        assert!(w.ack(at(1, 10)));
        assert_eq!(w.position(1), Some(11));
        assert!(w.ack(at(1, 11)));
        assert_eq!(w.position(1), Some(13), "the run 10..=12 is complete, 13 is the gap");
        assert!(w.ack(at(1, 13)));
        assert_eq!(w.position(1), Some(15));
    }

    #[test]
    fn offsets_with_holes_are_fine() {
        let mut w = Watermarks::new();
        let skips: Vec<_> = [3, 7, 8, 20].into_iter().map(|o| w.track(at(2, o))).collect();
        assert_eq!(skips, vec![None, Some(3), None, Some(8)], "each skip names the offset before it");
        assert!(w.ack(at(2, 8)));
        assert!(w.ack(at(2, 3)));
        assert_eq!(w.position(2), Some(4));
        assert!(w.ack(at(2, 7)));
        assert_eq!(w.position(2), Some(9));
        assert!(!w.ack(at(2, 5)), "an offset never tracked is ignored");
        assert!(w.ack(at(2, 20)));
        assert_eq!(w.position(2), Some(21));
    }

    #[test]
    fn partitions_are_independent() {
        let mut w = Watermarks::new();
        w.track(at(0, 0));
        w.track(at(1, 0));
        w.track(at(0, 1));
        assert!(w.ack(at(0, 1)));
        assert!(w.ack(at(1, 0)));
        assert_eq!(w.positions(), vec![at(1, 1)]);
        assert_eq!(w.in_flight_of(0), 1);
        assert_eq!(w.in_flight_of(1), 0);
    }

    #[test]
    fn duplicate_and_unknown_acks_are_ignored() {
        let mut w = Watermarks::new();
        w.track(at(0, 5));
        w.track(at(0, 6));
        assert!(w.ack(at(0, 6)));
        assert!(!w.ack(at(0, 6)));
        assert!(!w.ack(at(9, 0)));
        assert_eq!(w.in_flight(), 1);
    }

    #[test]
    fn advanced_positions_are_taken_once() {
        let mut w = Watermarks::new();
        w.track(at(0, 0));
        w.track(at(3, 0));
        assert!(w.take_advanced().is_empty());
        w.ack(at(0, 0));
        w.ack(at(3, 0));
        let mut got = w.take_advanced();
        got.sort_unstable();
        assert_eq!(got, vec![at(0, 1), at(3, 1)]);
        assert!(w.take_advanced().is_empty());
    }

    #[test]
    fn forgetting_a_partition_releases_its_events() {
        let mut w = Watermarks::new();
        w.track(at(0, 0));
        w.track(at(0, 1));
        w.track(at(1, 0));
        w.ack(at(0, 1));
        w.forget(0);
        assert_eq!(w.in_flight(), 1);
        assert!(!w.ack(at(0, 0)), "acks of a revoked partition are stale");
        assert_eq!(w.positions(), vec![]);
    }

    #[test]
    fn a_rewind_while_events_are_in_flight_acks_every_copy_and_never_moves_back() {
        let mut w = Watermarks::new();
        for o in 0..6 {
            w.track(at(0, o));
        }
        assert!(w.ack(at(0, 0)) && w.ack(at(0, 1)));
        assert_eq!(w.position(0), Some(2));
        // The source goes back to 0 while 2..=5 are in flight: 0..=3 come again.
        assert_eq!(w.track(at(0, 0)), Some(5), "the rewind is reported with where it came from");
        for o in 1..4 {
            w.track(at(0, o));
        }
        assert_eq!(w.in_flight(), 8);
        // Acks come in any order; each marks the oldest open copy.
        for o in [3, 2, 0, 5, 1, 4, 3, 2] {
            assert!(w.ack(at(0, o)), "ack of {o}");
            assert!(w.position(0) >= Some(2), "the position never moves back");
        }
        assert!(!w.ack(at(0, 3)), "both copies of 3 are acked already");
        assert_eq!((w.in_flight(), w.in_flight_of(0), w.position(0)), (0, 0, Some(6)));
        w.track(at(0, 6));
        assert!(w.ack(at(0, 6)));
        assert_eq!(w.position(0), Some(7));
    }

    #[test]
    fn a_busy_lane_is_in_order_again_once_what_came_before_the_rewind_is_gone() {
        let mut w = Watermarks::new();
        for o in 0..4 {
            w.track(at(0, o));
        }
        w.track(at(0, 1)); // the rewind, with 0..=3 in flight
        w.track(at(0, 2));
        for o in 0..4 {
            assert!(w.ack(at(0, o)));
        }
        assert_eq!(w.lanes[&0].before_rewind, 0, "the entries from before the rewind are gone");
        // Never empty, yet in order: the copies of 1 and 2 and what follows are found by binary search.
        w.track(at(0, 4));
        for o in [2, 1, 4] {
            assert!(w.ack(at(0, o)), "ack of {o}");
        }
        assert_eq!((w.in_flight(), w.position(0)), (0, Some(5)));
    }

    #[test]
    fn a_rewind_of_an_idle_lane_does_not_move_its_position_back() {
        let mut w = Watermarks::new();
        w.track(at(1, 10));
        w.ack(at(1, 10));
        assert_eq!(w.take_advanced(), vec![at(1, 11)]);
        w.track(at(1, 0));
        assert!(w.ack(at(1, 0)));
        assert_eq!(w.position(1), Some(11));
        assert!(w.take_advanced().is_empty(), "nothing new to commit");
    }

    #[test]
    fn many_random_acks_end_at_the_last_offset() {
        // A deterministic shuffle: every ack order ends with the position one past the last offset.
        let mut w = Watermarks::new();
        let n = 1000i64;
        for o in 0..n {
            w.track(at(0, o));
        }
        let mut order: Vec<i64> = (0..n).collect();
        let mut x: u64 = 42;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut last = None;
        for o in order {
            w.ack(at(0, o));
            let p = w.position(0);
            assert!(p >= last, "the position never moves back");
            last = p;
        }
        assert_eq!(w.position(0), Some(n));
        assert_eq!(w.in_flight(), 0);
    }
}
