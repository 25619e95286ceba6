//! What this process's stage has done: counters bumped by its [events](super::events) and nowhere else, and the
//! snapshot of them that its heartbeats carry to the supervisor for the status line, systemd's STATUS=, `/metrics`
//! and the summary on exit.

use crate::position::{Lane, Position};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A stage's counters since its process started. Each child process has its own, in [`COUNTERS`].
pub struct Counters {
    pub(super) consumed: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) transformed: AtomicU64,
    /// Events a worker found unfit to transform and marked for the dead-letter destination.
    pub(super) rejected: AtomicU64,
    /// Output events a worker's transform made (an input may become none, one or many).
    pub(super) outputs: AtomicU64,
    /// Inputs the transform filtered out (no output).
    pub(super) filtered: AtomicU64,
    /// Inputs that became more than one output.
    pub(super) fanned_out: AtomicU64,
    /// Outputs `--route` sent to no sink (null or []).
    pub(super) dropped: AtomicU64,
    /// `lookup()` calls answered at hand (a cached row, a topic's), and those that waited for a fetch.
    pub(super) lookup_hits: AtomicU64,
    pub(super) lookup_misses: AtomicU64,
    /// Restarts of a worker's `--exec` command.
    pub(super) command_restarts: AtomicU64,
    /// Microseconds a worker spent in its transform.
    pub(super) transform_us: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) retried: AtomicU64,
    /// Deliveries that failed, whether then retried or dead-lettered.
    pub(super) produce_errors: AtomicU64,
    /// Events read from the stage's input channels (workers, sink).
    pub(super) received: AtomicU64,
    /// Events written to the stage's output channels (source, workers).
    pub(super) sent: AtomicU64,
    pub(super) batches_in: AtomicU64,
    pub(super) batches_out: AtomicU64,
    /// Gauge: events taken from the source and not yet acknowledged.
    pub(super) in_flight: AtomicU64,
    /// Gauge: events handed to the sink's client and not yet acknowledged by its destination.
    pub(super) sink_queue: AtomicU64,
    /// Events an aggregation took into its state.
    pub(super) aggregated: AtomicU64,
    /// Events an aggregation found too late for their window, dead-lettered.
    pub(super) late: AtomicU64,
    /// Gauges of an aggregation: open windows, keys holding one, the state's bytes on disk, and the watermark (ms
    /// since the epoch; 0 before there is one).
    pub(super) open_windows: AtomicU64,
    pub(super) keys_held: AtomicU64,
    pub(super) state_bytes: AtomicU64,
    pub(super) watermark_ms: AtomicU64,
    pub(super) lanes: Mutex<Lanes>,
}

/// Where the source stands on its lanes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Lanes {
    /// Per lane, events in the source not yet taken, from the client's statistics; absent while unknown.
    pub lag: Vec<(Lane, i64)>,
    /// Per lane, the highest position this process committed, as the commit was acknowledged.
    pub committed: Vec<Position>,
    /// Per lane, the committed position as the client's statistics have it (the group's, fetched at assignment;
    /// up to a second old).
    pub group_committed: Vec<Position>,
    /// A table scan's progress, across runs.
    pub scan: Option<Scan>,
    /// A followed table's replication slot.
    #[serde(default)]
    pub slot: Option<Slot>,
}

/// Where a followed table's replication slot stands.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    /// The server's WAL the slot keeps; -1 while unknown.
    pub lag_bytes: i64,
    /// How long the oldest transaction passed on has waited for its acknowledgement, in milliseconds.
    pub lag_ms: u64,
    /// The slot's confirmed position, as an LSN's 64 bits.
    pub confirmed: u64,
    /// Changes passed on by this process.
    pub changes: u64,
}

/// Where a table scan stands.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    pub chunks: u64,
    pub done: u64,
    /// Rows acknowledged, this run and earlier ones.
    pub rows: u64,
    /// Rows the table held when the scan was planned.
    pub estimate: u64,
}

/// A snapshot of [`Counters`], as the heartbeats carry it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StageStats {
    pub consumed: u64,
    pub acked: u64,
    pub transformed: u64,
    pub rejected: u64,
    pub outputs: u64,
    pub filtered: u64,
    pub fanned_out: u64,
    #[serde(default)]
    pub dropped: u64,
    #[serde(default)]
    pub lookup_hits: u64,
    #[serde(default)]
    pub lookup_misses: u64,
    pub command_restarts: u64,
    pub transform_us: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub retried: u64,
    pub produce_errors: u64,
    pub received: u64,
    pub sent: u64,
    pub batches_in: u64,
    pub batches_out: u64,
    pub in_flight: u64,
    pub sink_queue: u64,
    pub aggregated: u64,
    pub late: u64,
    pub open_windows: u64,
    pub keys_held: u64,
    pub state_bytes: u64,
    pub watermark_ms: u64,
    pub lanes: Lanes,
}

/// This process's counters.
pub static COUNTERS: Counters = Counters::new();

impl Counters {
    pub const fn new() -> Counters {
        Counters {
            consumed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            transformed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            outputs: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            fanned_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lookup_hits: AtomicU64::new(0),
            lookup_misses: AtomicU64::new(0),
            command_restarts: AtomicU64::new(0),
            transform_us: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            produce_errors: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            batches_out: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            sink_queue: AtomicU64::new(0),
            aggregated: AtomicU64::new(0),
            late: AtomicU64::new(0),
            open_windows: AtomicU64::new(0),
            keys_held: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
            watermark_ms: AtomicU64::new(0),
            lanes: Mutex::new(Lanes {
                lag: Vec::new(),
                committed: Vec::new(),
                group_committed: Vec::new(),
                scan: None,
                slot: None,
            }),
        }
    }

    pub(super) fn lanes(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn snapshot(&self) -> StageStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StageStats {
            consumed: get(&self.consumed),
            acked: get(&self.acked),
            transformed: get(&self.transformed),
            rejected: get(&self.rejected),
            outputs: get(&self.outputs),
            filtered: get(&self.filtered),
            fanned_out: get(&self.fanned_out),
            dropped: get(&self.dropped),
            lookup_hits: get(&self.lookup_hits),
            lookup_misses: get(&self.lookup_misses),
            command_restarts: get(&self.command_restarts),
            transform_us: get(&self.transform_us),
            delivered: get(&self.delivered),
            dead_lettered: get(&self.dead_lettered),
            retried: get(&self.retried),
            produce_errors: get(&self.produce_errors),
            received: get(&self.received),
            sent: get(&self.sent),
            batches_in: get(&self.batches_in),
            batches_out: get(&self.batches_out),
            in_flight: get(&self.in_flight),
            sink_queue: get(&self.sink_queue),
            aggregated: get(&self.aggregated),
            late: get(&self.late),
            open_windows: get(&self.open_windows),
            keys_held: get(&self.keys_held),
            state_bytes: get(&self.state_bytes),
            watermark_ms: get(&self.watermark_ms),
            lanes: self.lanes().clone(),
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(super) fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Ordering::Relaxed);
}

impl Lanes {
    /// Records positions just committed. A lane's position never moves back, so a commit acknowledged late (a
    /// background one, reported after the drain's last) cannot undo a later one.
    pub fn commit(&mut self, positions: &[Position]) {
        for &p in positions {
            match self.committed.iter_mut().find(|c| c.lane == p.lane) {
                Some(c) => c.seq = c.seq.max(p.seq),
                None => self.committed.push(p),
            }
        }
        self.committed.sort_unstable();
    }

    /// Total lag over the lanes whose lag is known (only those are listed), `None` while none is.
    pub fn total_lag(&self) -> Option<i64> {
        (!self.lag.is_empty()).then(|| self.lag.iter().map(|&(_, l)| l).sum())
    }
}

impl StageStats {
    /// Adds another process's counters. Not its gauges (in flight, the sink's queue, lanes): those say where one
    /// process stands now, and a dead process's last values must not linger in a sum.
    pub fn absorb(&mut self, other: &StageStats) {
        self.consumed += other.consumed;
        self.acked += other.acked;
        self.transformed += other.transformed;
        self.rejected += other.rejected;
        self.outputs += other.outputs;
        self.filtered += other.filtered;
        self.fanned_out += other.fanned_out;
        self.dropped += other.dropped;
        self.lookup_hits += other.lookup_hits;
        self.lookup_misses += other.lookup_misses;
        self.command_restarts += other.command_restarts;
        self.transform_us += other.transform_us;
        self.delivered += other.delivered;
        self.dead_lettered += other.dead_lettered;
        self.retried += other.retried;
        self.produce_errors += other.produce_errors;
        self.received += other.received;
        self.sent += other.sent;
        self.batches_in += other.batches_in;
        self.batches_out += other.batches_out;
        self.aggregated += other.aggregated;
        self.late += other.late;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_gauges_do_not() {
        let c = Counters::new();
        add(&c.consumed, 3);
        add(&c.delivered, 2);
        set(&c.in_flight, 9);
        let snapshot = c.snapshot();
        assert_eq!((snapshot.consumed, snapshot.delivered, snapshot.in_flight), (3, 2, 9));
        let mut total = StageStats::default();
        total.absorb(&snapshot);
        total.absorb(&StageStats { consumed: 1, dead_lettered: 4, sent: 5, sink_queue: 7, ..StageStats::default() });
        assert_eq!((total.consumed, total.delivered, total.dead_lettered, total.sent), (4, 2, 4, 5));
        assert_eq!((total.in_flight, total.sink_queue), (0, 0), "gauges are not summed");
    }

    #[test]
    fn a_lane_keeps_its_highest_commit() {
        let mut lanes = Lanes::default();
        lanes.commit(&[Position::new(3, 10), Position::new(1, 5)]);
        lanes.commit(&[Position::new(3, 12)]);
        assert_eq!(lanes.committed, vec![Position::new(1, 5), Position::new(3, 12)], "sorted by lane");
        lanes.commit(&[Position::new(3, 11)]);
        assert_eq!(lanes.committed[1], Position::new(3, 12), "an older commit acknowledged late changes nothing");
    }

    #[test]
    fn unknown_lag_is_left_out() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.total_lag(), None);
        lanes.lag = vec![(0, 5), (2, 0)];
        assert_eq!(lanes.total_lag(), Some(5));
    }
}
