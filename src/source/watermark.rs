//! Which offsets may be committed: per partition, the end of the contiguous run of acknowledged events.
//!
//! With N hashers and keys spread over destination partitions, acknowledgements come back out of order. Committing
//! the highest acked offset would lose the gaps below it on a crash, so each partition keeps its in-flight offsets in
//! order and advances only past a prefix that is wholly acked. Offsets need not be consecutive (compaction,
//! transaction markers): only the order in which they were consumed matters.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
struct Partition {
    /// In-flight offsets in consumption order, with whether each was acked.
    in_flight: VecDeque<(i64, bool)>,
    /// The next offset to read after the acked prefix: what a commit stores.
    position: Option<i64>,
    /// The position moved since it was last taken.
    advanced: bool,
    /// The last offset tracked.
    last: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Watermarks {
    partitions: HashMap<i32, Partition>,
    in_flight: usize,
}

impl Watermarks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` of `partition` was sent into the pipeline. Returns the previous offset when this one
    /// does not follow it, so a skip the broker made (retention, compaction, transaction markers) can be reported.
    pub fn track(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.entry(partition).or_default();
        let skipped = p.last.filter(|&last| offset != last + 1);
        p.last = Some(offset);
        debug_assert!(p.in_flight.back().is_none_or(|&(o, _)| o < offset), "offsets must be tracked in order");
        p.in_flight.push_back((offset, false));
        self.in_flight += 1;
        skipped
    }

    /// Records an acknowledgement; returns false for one that is unknown or already counted (a revoked partition,
    /// a duplicate ack), which is then ignored.
    pub fn ack(&mut self, partition: i32, offset: i64) -> bool {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return false;
        };
        let Ok(i) = p.in_flight.binary_search_by_key(&offset, |&(o, _)| o) else {
            return false;
        };
        if p.in_flight[i].1 {
            return false;
        }
        p.in_flight[i].1 = true;
        self.in_flight -= 1;
        while let Some(&(o, true)) = p.in_flight.front() {
            p.in_flight.pop_front();
            p.position = Some(o + 1);
            p.advanced = true;
        }
        true
    }

    /// Events sent into the pipeline and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn in_flight_of(&self, partition: i32) -> usize {
        self.partitions.get(&partition).map_or(0, |p| p.in_flight.iter().filter(|(_, acked)| !acked).count())
    }

    /// The committable position of every partition whose position moved since the last call.
    pub fn take_advanced(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&id, p) in &mut self.partitions {
            if std::mem::take(&mut p.advanced) {
                out.extend(p.position.map(|pos| (id, pos)));
            }
        }
        out
    }

    /// The committable position of every partition that has one.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        let mut out: Vec<_> = self.partitions.iter().filter_map(|(&id, p)| p.position.map(|pos| (id, pos))).collect();
        out.sort_unstable();
        out
    }

    pub fn position(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.position)
    }

    /// Drops a partition that is no longer ours; its unacked events are re-read by its next owner.
    pub fn forget(&mut self, partition: i32) {
        if let Some(p) = self.partitions.remove(&partition) {
            self.in_flight -= p.in_flight.iter().filter(|(_, acked)| !acked).count();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_acks_advance_one_by_one() {
        let mut w = Watermarks::new();
        for o in 0..3 {
            w.track(0, o);
        }
        assert_eq!(w.in_flight(), 3);
        assert!(w.ack(0, 0));
        assert_eq!(w.position(0), Some(1));
        assert!(w.ack(0, 1));
        assert!(w.ack(0, 2));
        assert_eq!(w.position(0), Some(3), "the position is the next offset to read");
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn out_of_order_acks_wait_for_the_gap() {
        let mut w = Watermarks::new();
        for o in 10..15 {
            w.track(1, o);
        }
        assert!(w.ack(1, 12));
        assert!(w.ack(1, 14));
        assert_eq!(w.position(1), None, "nothing below 12 is acked yet");
        assert!(w.ack(1, 10));
        assert_eq!(w.position(1), Some(11));
        assert!(w.ack(1, 11));
        assert_eq!(w.position(1), Some(13), "the run 10..=12 is complete, 13 is the gap");
        assert!(w.ack(1, 13));
        assert_eq!(w.position(1), Some(15));
    }

    #[test]
    fn offsets_with_holes_are_fine() {
        let mut w = Watermarks::new();
        let skips: Vec<_> = [3, 7, 8, 20].into_iter().map(|o| w.track(2, o)).collect();
        assert_eq!(skips, vec![None, Some(3), None, Some(8)], "each skip names the offset before it");
        assert!(w.ack(2, 8));
        assert!(w.ack(2, 3));
        assert_eq!(w.position(2), Some(4));
        assert!(w.ack(2, 7));
        assert_eq!(w.position(2), Some(9));
        assert!(!w.ack(2, 5), "an offset never tracked is ignored");
        assert!(w.ack(2, 20));
        assert_eq!(w.position(2), Some(21));
    }

    #[test]
    fn partitions_are_independent() {
        let mut w = Watermarks::new();
        w.track(0, 0);
        w.track(1, 0);
        w.track(0, 1);
        assert!(w.ack(0, 1));
        assert!(w.ack(1, 0));
        assert_eq!(w.positions(), vec![(1, 1)]);
        assert_eq!(w.in_flight_of(0), 1);
        assert_eq!(w.in_flight_of(1), 0);
    }

    #[test]
    fn duplicate_and_unknown_acks_are_ignored() {
        let mut w = Watermarks::new();
        w.track(0, 5);
        w.track(0, 6);
        assert!(w.ack(0, 6));
        assert!(!w.ack(0, 6));
        assert!(!w.ack(9, 0));
        assert_eq!(w.in_flight(), 1);
    }

    #[test]
    fn advanced_positions_are_taken_once() {
        let mut w = Watermarks::new();
        w.track(0, 0);
        w.track(3, 0);
        assert!(w.take_advanced().is_empty());
        w.ack(0, 0);
        w.ack(3, 0);
        let mut got = w.take_advanced();
        got.sort_unstable();
        assert_eq!(got, vec![(0, 1), (3, 1)]);
        assert!(w.take_advanced().is_empty());
    }

    #[test]
    fn forgetting_a_partition_releases_its_events() {
        let mut w = Watermarks::new();
        w.track(0, 0);
        w.track(0, 1);
        w.track(1, 0);
        w.ack(0, 1);
        w.forget(0);
        assert_eq!(w.in_flight(), 1);
        assert!(!w.ack(0, 0), "acks of a revoked partition are stale");
        assert_eq!(w.positions(), vec![]);
    }

    #[test]
    fn many_random_acks_end_at_the_last_offset() {
        // A deterministic shuffle: every ack order ends with the position one past the last offset.
        let mut w = Watermarks::new();
        let n = 1000i64;
        for o in 0..n {
            w.track(0, o);
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
            w.ack(0, o);
            let p = w.position(0);
            assert!(p >= last, "the position never moves back");
            last = p;
        }
        assert_eq!(w.position(0), Some(n));
        assert_eq!(w.in_flight(), 0);
    }
}
