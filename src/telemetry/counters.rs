//! What each stage has done, counted where it happens and carried to the supervisor in the heartbeats, for the
//! status line, systemd's STATUS=, the `/metrics` endpoint and the summary on exit.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A stage's counters since it started; each child process has its own.
pub struct Counters {
    pub consumed: AtomicU64,
    pub acked: AtomicU64,
    pub in_flight: AtomicU64,
    pub hashed: AtomicU64,
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
    /// Events read from the stage's input channel (hashers, producer).
    pub received: AtomicU64,
    /// Events written to the stage's output channel (consumer, hashers).
    pub sent: AtomicU64,
    pub batches_in: AtomicU64,
    pub batches_out: AtomicU64,
    /// Events a hasher found unfit to transform and marked for the dead-letter topic.
    pub invalid: AtomicU64,
    /// Deliveries librdkafka reported as failed, whether then retried or dead-lettered.
    pub produce_errors: AtomicU64,
    /// Events handed to librdkafka and not yet acknowledged by the brokers: a gauge.
    pub producer_queue: AtomicU64,
    partitions: Mutex<Vec<PartitionStats>>,
}

/// Where the consumer stands on one source partition, from librdkafka's statistics.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionStats {
    pub partition: i32,
    /// -1001 (librdkafka's "invalid") before the first commit.
    pub committed: i64,
    /// Events on the broker not yet consumed; -1 when unknown.
    pub lag: i64,
}

/// A snapshot of `Counters`, as sent over IPC.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StageStats {
    pub consumed: u64,
    pub acked: u64,
    pub in_flight: u64,
    pub hashed: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub retried: u64,
    pub received: u64,
    pub sent: u64,
    pub batches_in: u64,
    pub batches_out: u64,
    pub invalid: u64,
    pub produce_errors: u64,
    pub producer_queue: u64,
    pub partitions: Vec<PartitionStats>,
}

pub static STAGE: Counters = Counters::new();

impl Counters {
    pub const fn new() -> Counters {
        Counters {
            consumed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            hashed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            batches_out: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            produce_errors: AtomicU64::new(0),
            producer_queue: AtomicU64::new(0),
            partitions: Mutex::new(Vec::new()),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One batch of `events` read from the stage's input channel.
    pub fn received_batch(&self, events: u64) {
        Counters::add(&self.batches_in, 1);
        Counters::add(&self.received, events);
    }

    pub fn set_partitions(&self, mut partitions: Vec<PartitionStats>) {
        partitions.sort_by_key(|p| p.partition);
        *self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = partitions;
    }

    /// Records offsets just committed, ahead of librdkafka's next statistics.
    pub fn set_committed(&self, positions: &[(i32, i64)]) {
        let mut parts = self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for &(partition, offset) in positions {
            match parts.iter_mut().find(|p| p.partition == partition) {
                Some(p) => p.committed = offset,
                None => parts.push(PartitionStats { partition, committed: offset, lag: -1 }),
            }
        }
        parts.sort_by_key(|p| p.partition);
    }

    pub fn snapshot(&self) -> StageStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StageStats {
            consumed: get(&self.consumed),
            acked: get(&self.acked),
            in_flight: get(&self.in_flight),
            hashed: get(&self.hashed),
            delivered: get(&self.delivered),
            dead_lettered: get(&self.dead_lettered),
            retried: get(&self.retried),
            received: get(&self.received),
            sent: get(&self.sent),
            batches_in: get(&self.batches_in),
            batches_out: get(&self.batches_out),
            invalid: get(&self.invalid),
            produce_errors: get(&self.produce_errors),
            producer_queue: get(&self.producer_queue),
            partitions: self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

impl StageStats {
    /// Adds another stage's counters. Not its gauges (in flight, producer queue, partitions): those say where one
    /// stage stands now, and a dead stage's last values must not linger in a sum.
    pub fn absorb(&mut self, other: &StageStats) {
        self.consumed += other.consumed;
        self.acked += other.acked;
        self.hashed += other.hashed;
        self.delivered += other.delivered;
        self.dead_lettered += other.dead_lettered;
        self.retried += other.retried;
        self.received += other.received;
        self.sent += other.sent;
        self.batches_in += other.batches_in;
        self.batches_out += other.batches_out;
        self.invalid += other.invalid;
        self.produce_errors += other.produce_errors;
    }

    /// Total lag over the known partitions, `None` before librdkafka has said.
    pub fn lag(&self) -> Option<i64> {
        let known: Vec<i64> = self.partitions.iter().map(|p| p.lag).filter(|&l| l >= 0).collect();
        (!known.is_empty()).then(|| known.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_add_up() {
        let c = Counters::new();
        Counters::add(&c.consumed, 3);
        Counters::add(&c.delivered, 2);
        c.set_partitions(vec![
            PartitionStats { partition: 1, committed: 10, lag: 5 },
            PartitionStats { partition: 0, committed: 7, lag: -1 },
        ]);
        let snapshot = c.snapshot();
        assert_eq!(snapshot.partitions[0].partition, 0, "sorted by partition");
        assert_eq!(snapshot.lag(), Some(5), "unknown lag is left out");
        let mut total = StageStats::default();
        total.absorb(&snapshot);
        total.absorb(&StageStats {
            consumed: 1,
            dead_lettered: 4,
            in_flight: 9,
            producer_queue: 7,
            sent: 5,
            ..StageStats::default()
        });
        assert_eq!((total.consumed, total.delivered, total.dead_lettered, total.sent), (4, 2, 4, 5));
        assert_eq!((total.in_flight, total.producer_queue, total.partitions.len()), (0, 0, 0), "gauges are not summed");
    }
}
