//! The whole run's figures, from the counts every child there has been sent with its heartbeats.

use crate::position::{Lane, Position, Seq};
use crate::stage::{Kind, Role};
use crate::telemetry::counters::{Scan, StageStats};
use std::collections::BTreeMap;

/// Every child's last counts, in the order the children were started. Counters only go up across restarts, pid
/// reuse included; gauges come from the newest source and sink only.
#[derive(Debug, Default)]
pub struct Counts {
    children: Vec<Counted>,
}

#[derive(Debug)]
struct Counted {
    pid: i32,
    role: Role,
    stats: StageStats,
    /// A newer child has this pid now: its reports are no longer this one's.
    retired: bool,
}

impl Counts {
    pub fn spawned(&mut self, pid: i32, role: Role) {
        for c in self.children.iter_mut().filter(|c| c.pid == pid) {
            c.retired = true;
        }
        self.children.push(Counted { pid, role, stats: StageStats::default(), retired: false });
    }

    /// A child's latest counts.
    pub fn update(&mut self, pid: i32, stats: StageStats) {
        if let Some(c) = self.children.iter_mut().rev().find(|c| c.pid == pid && !c.retired) {
            c.stats = stats;
        }
    }

    /// The newest child of `kind`: its gauges are the pipeline's.
    fn newest(&self, kind: Kind) -> Option<&StageStats> {
        self.children.iter().rev().find(|c| c.role.kind() == kind).map(|c| &c.stats)
    }

    pub fn source(&self) -> Option<&StageStats> {
        self.newest(Kind::Source)
    }

    pub fn sink(&self) -> Option<&StageStats> {
        self.newest(Kind::Sink)
    }

    /// Each sink's counters, by its place in `--sink`'s order, summed over every generation; its gauges from its
    /// newest process.
    pub fn by_sink(&self, sinks: usize) -> Vec<StageStats> {
        let mut out = vec![StageStats::default(); sinks];
        for c in &self.children {
            if let Role::Sink(i) = c.role {
                if let Some(total) = out.get_mut(i) {
                    total.absorb(&c.stats);
                    total.sink_queue = c.stats.sink_queue;
                }
            }
        }
        out
    }

    /// Each kind's counters, summed over its processes and over every generation since the start, in [`Kind::ALL`]
    /// order.
    pub fn by_kind(&self) -> [StageStats; 4] {
        let mut out: [StageStats; 4] = Default::default();
        for c in &self.children {
            let i = Kind::ALL.iter().position(|&k| k == c.role.kind()).unwrap_or_default();
            out[i].absorb(&c.stats);
        }
        out
    }

    /// One kind's counters, summed over its processes and over every generation since the start.
    pub fn of(&self, kind: Kind) -> StageStats {
        let mut out = StageStats::default();
        for c in self.children.iter().filter(|c| c.role.kind() == kind) {
            out.absorb(&c.stats);
        }
        out
    }

    /// Every counter summed over every child, with the newest source's gauges.
    pub fn totals(&self) -> StageStats {
        let mut total = StageStats::default();
        for c in &self.children {
            total.absorb(&c.stats);
        }
        if let Some(source) = self.source() {
            total.in_flight = source.in_flight;
            total.lanes = source.lanes.clone();
        }
        total.lanes.scan = self.scan();
        total.lanes.slot =
            self.children.iter().rev().filter(|c| c.role.kind() == Kind::Source).find_map(|c| c.stats.lanes.slot);
        // An aggregation's gauges, from the newest sink (its process runs the operator).
        if let Some(sink) = self.sink() {
            total.open_windows = sink.open_windows;
            total.keys_held = sink.keys_held;
            total.state_bytes = sink.state_bytes;
            total.watermark_ms = sink.watermark_ms;
        }
        total
    }

    /// Where the table scan stands, as the newest source that said so had it (a restarted one may not have yet).
    pub fn scan(&self) -> Option<Scan> {
        self.children.iter().rev().filter(|c| c.role.kind() == Kind::Source).find_map(|c| c.stats.lanes.scan)
    }

    /// What this run committed: per lane, the newest commit any of its sources reported.
    pub fn committed(&self) -> Vec<Position> {
        let mut by_lane: BTreeMap<Lane, Seq> = BTreeMap::new();
        for c in self.children.iter().filter(|c| c.role.kind() == Kind::Source) {
            for p in &c.stats.lanes.committed {
                by_lane.insert(p.lane, p.seq);
            }
        }
        by_lane.into_iter().map(|(lane, seq)| Position { lane, seq }).collect()
    }

    /// Whether any event was taken in at all.
    pub fn any_consumed(&self) -> bool {
        self.children.iter().any(|c| c.stats.consumed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::counters::Lanes;

    fn stats(consumed: u64, in_flight: u64, committed: &[(Lane, Seq)]) -> StageStats {
        let committed = committed.iter().map(|&(lane, seq)| Position { lane, seq }).collect();
        StageStats { consumed, in_flight, lanes: Lanes { committed, ..Lanes::default() }, ..StageStats::default() }
    }

    #[test]
    fn counters_carry_over_restarts_and_gauges_come_from_the_newest_source() {
        let mut c = Counts::default();
        c.spawned(10, Role::Source);
        c.spawned(11, Role::Worker(0));
        c.update(10, stats(100, 40, &[(0, 60)]));
        c.update(11, StageStats { received: 95, sent: 95, ..StageStats::default() });
        // A restart: the dead source's in-flight count must not linger.
        c.spawned(20, Role::Source);
        c.update(20, stats(30, 0, &[]));
        let t = c.totals();
        assert_eq!((t.consumed, t.received, t.in_flight), (130, 95, 0));
        assert_eq!(c.by_kind()[0].consumed, 130);
        assert_eq!(c.by_kind()[2].received, 95);
        assert_eq!(c.of(Kind::ALL[2]), c.by_kind()[2], "one kind's counters are its row of by_kind");
        assert!(c.any_consumed());
    }

    #[test]
    fn each_sink_is_counted_apart() {
        let mut c = Counts::default();
        c.spawned(1, Role::Sink(0));
        c.spawned(2, Role::Sink(1));
        c.update(1, StageStats { delivered: 5, sink_queue: 3, ..StageStats::default() });
        c.update(2, StageStats { delivered: 7, ..StageStats::default() });
        c.spawned(3, Role::Sink(1));
        c.update(3, StageStats { delivered: 1, sink_queue: 2, ..StageStats::default() });
        let each: Vec<(u64, u64)> = c.by_sink(2).iter().map(|s| (s.delivered, s.sink_queue)).collect();
        assert_eq!(each, [(5, 3), (8, 2)]);
        assert_eq!(c.of(Kind::Sink).delivered, 13);
    }

    #[test]
    fn a_reused_pid_starts_afresh_and_the_old_counts_stay() {
        let mut c = Counts::default();
        c.spawned(7, Role::Worker(0));
        c.update(7, StageStats { received: 5, ..StageStats::default() });
        c.spawned(7, Role::Worker(1));
        c.update(7, StageStats { received: 2, ..StageStats::default() });
        assert_eq!(c.totals().received, 7);
    }

    #[test]
    fn the_newest_commit_of_each_lane_is_what_the_run_committed() {
        let mut c = Counts::default();
        c.spawned(1, Role::Source);
        c.update(1, stats(10, 0, &[(0, 5), (1, 7)]));
        c.spawned(2, Role::Source);
        c.update(2, stats(10, 0, &[(1, 9), (2, 3)]));
        let committed: Vec<(Lane, Seq)> = c.committed().iter().map(|p| (p.lane, p.seq)).collect();
        assert_eq!(committed, [(0, 5), (1, 9), (2, 3)]);
        assert!(Counts::default().committed().is_empty());
    }
}
