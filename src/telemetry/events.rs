//! Everything a stage does that someone may want to count or read, as typed events in the style of vector's
//! `internal_events`: a stage says what happened with [`emit`], and the event counts itself in this process's
//! [`COUNTERS`] and writes its log line, if it has one, at a bounded rate. Counting and wording live here only.
//!
//! Events that happen once per record are plain counter bumps: cheap enough for the hot path.

use super::counters::{add, set, COUNTERS};
use super::rate_limit::{held_back, RateLimit, EVERY};
use crate::position::{Lane, Listed, Position, Seq};
use std::fmt::Display;

/// Something that happened in a stage.
pub trait InternalEvent {
    fn emit(self);
}

/// Counts the event and logs it if it has a line to log.
#[inline]
pub fn emit(event: impl InternalEvent) {
    event.emit();
}

// What every stage does with its channels.

/// A batch was read from an input channel.
pub struct BatchReceived {
    pub events: u64,
}

impl InternalEvent for BatchReceived {
    fn emit(self) {
        add(&COUNTERS.batches_in, 1);
        add(&COUNTERS.received, self.events);
    }
}

/// A table reader read a page of rows from the database and handed it on to the source.
pub struct PageRead {
    pub rows: u64,
}

impl InternalEvent for PageRead {
    fn emit(self) {
        // The database is the reader's input: its rows are what it took in, and passed on.
        add(&COUNTERS.received, self.rows);
        add(&COUNTERS.sent, self.rows);
        add(&COUNTERS.batches_out, 1);
    }
}

/// A batch was written to an output channel.
pub struct BatchSent {
    pub events: u64,
}

impl InternalEvent for BatchSent {
    fn emit(self) {
        add(&COUNTERS.batches_out, 1);
        add(&COUNTERS.sent, self.events);
    }
}

// The source.

/// Events taken from the source into the pipeline.
pub struct Consumed {
    pub events: u64,
}

impl InternalEvent for Consumed {
    #[inline]
    fn emit(self) {
        add(&COUNTERS.consumed, self.events);
    }
}

/// Events whose output was acknowledged, as the source counted them for its commits.
pub struct Acked {
    pub events: u64,
}

impl InternalEvent for Acked {
    #[inline]
    fn emit(self) {
        add(&COUNTERS.acked, self.events);
    }
}

/// How many events are in the pipeline now: taken from the source, not yet acknowledged.
pub struct InFlight {
    pub events: usize,
}

impl InternalEvent for InFlight {
    fn emit(self) {
        set(&COUNTERS.in_flight, self.events as u64);
    }
}

/// The source skipped positions of a lane: a Kafka broker no longer had them (retention, compaction).
pub struct PositionsSkipped {
    pub lane: Lane,
    pub first: Seq,
    pub last: Seq,
}

impl InternalEvent for PositionsSkipped {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "partition {}: offsets {}..{} were skipped by the broker (deleted by retention before they were read, \
                 or compacted){}",
                self.lane,
                self.first,
                self.last,
                held_back(n)
            );
        }
    }
}

/// The source went back in a lane and hands out again what it had already given: librdkafka reset a partition's
/// fetch position (to its earliest offset, after a fetch refused as out of range). What follows is delivered again.
pub struct LaneRewound {
    pub lane: Lane,
    pub from: Seq,
    pub to: Seq,
    /// Events of the lane still in flight from before.
    pub in_flight: usize,
}

impl InternalEvent for LaneRewound {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "partition {} went back from offset {} to {} (its fetch position was reset) with {} of its events in \
                 flight; the events from {} on are delivered again{}",
                self.lane,
                self.from,
                self.to,
                self.in_flight,
                self.to,
                held_back(n)
            );
        }
    }
}

/// The source's client reported an error it retries by itself.
pub struct SourceError<'a, E: Display> {
    pub error: &'a E,
}

impl<E: Display> InternalEvent for SourceError<'_, E> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        if let Some(n) = LIMIT.check() {
            log::warn!("consumer error (retrying): {}{}", self.error, held_back(n));
        }
    }
}

/// The source was given lanes: a Kafka consumer's assignment. (The supervisor hears of it at once, through the
/// stage's hooks.)
pub struct LanesAssigned<'a> {
    pub added: &'a [Lane],
}

impl InternalEvent for LanesAssigned<'_> {
    fn emit(self) {
        log::info!("partitions {:?} assigned", self.added);
    }
}

/// Lanes were taken from the source (a rebalance): what was acknowledged in them is committed first.
pub struct LanesRevoked<'a, E: Display> {
    pub lanes: &'a [Lane],
    /// The group moved on without this consumer: its commits would be refused.
    pub lost: bool,
    /// What was committed for them, or why it could not be.
    pub commit: Option<Result<&'a [Position], E>>,
    /// Events of these lanes still unacknowledged: their next owner reads them again.
    pub unacked: usize,
}

impl<E: Display> InternalEvent for LanesRevoked<'_, E> {
    fn emit(self) {
        let lanes = self.lanes;
        if self.lost {
            log::warn!(
                "partitions {lanes:?} lost: the group moved on without us (an outage or a stall longer than the session \
                 timeout); their events after the last commit are re-read"
            );
        }
        match self.commit {
            Some(Ok(positions)) => {
                log::info!("partitions {lanes:?} revoked: committed {}", Listed(positions));
                COUNTERS.lanes().commit(positions);
            }
            Some(Err(e)) => log::warn!("partitions {lanes:?} revoked: commit failed ({e}); they are re-read"),
            None => {}
        }
        if self.unacked > 0 {
            log::warn!(
                "partitions {lanes:?} revoked with {} events unacknowledged: the next owner re-reads them",
                self.unacked
            );
        }
    }
}

/// Positions were committed in the background (a Kafka consumer's auto-commit), as its broker acknowledged them.
pub struct Committed<'a> {
    pub positions: &'a [Position],
}

impl InternalEvent for Committed<'_> {
    fn emit(self) {
        log::debug!("committed {}", Listed(self.positions));
        COUNTERS.lanes().commit(self.positions);
    }
}

/// The final commit of a drain went through.
pub struct FinalCommit<'a> {
    pub positions: &'a [Position],
}

impl InternalEvent for FinalCommit<'_> {
    fn emit(self) {
        log::info!("committed {}", Listed(self.positions));
        COUNTERS.lanes().commit(self.positions);
    }
}

/// A background commit failed; the next one carries the same positions or later ones.
pub struct CommitFailed<'a, E: Display> {
    pub error: &'a E,
}

impl<E: Display> InternalEvent for CommitFailed<'_, E> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        if let Some(n) = LIMIT.check() {
            log::warn!("background commit failed ({}); the next one tries again{}", self.error, held_back(n));
        }
    }
}

/// The source client's statistics, per lane: its lag, and the group's committed position, where known.
pub struct ClientStats {
    pub lag: Vec<(Lane, i64)>,
    pub committed: Vec<Position>,
}

impl InternalEvent for ClientStats {
    fn emit(self) {
        let (mut lag, mut committed) = (self.lag, self.committed);
        lag.sort_unstable();
        committed.sort_unstable();
        let mut lanes = COUNTERS.lanes();
        (lanes.lag, lanes.group_committed) = (lag, committed);
    }
}

/// The source was held back at the bound for `after`, and paused its lanes.
pub struct Paused {
    pub after: std::time::Duration,
}

impl InternalEvent for Paused {
    fn emit(self) {
        log::info!("held back at the bound for {:?}: paused the partitions, still polling", self.after);
    }
}

/// Below the bound again, the source resumed its lanes.
pub struct Resumed;

impl InternalEvent for Resumed {
    fn emit(self) {
        log::info!("below the bound again: resumed the partitions");
    }
}

// The workers.

/// A worker transformed an event.
/// A worker ran its transform on a batch: what became of the inputs that were not rejected, and the time it took.
#[derive(Debug, Default)]
pub struct Transformed {
    pub took: std::time::Duration,
    /// Inputs transformed (not rejected).
    pub inputs: u64,
    pub outputs: u64,
    /// Inputs that became no output.
    pub filtered: u64,
    /// Inputs that became more than one output.
    pub fanned_out: u64,
}

impl Transformed {
    /// One input became `outputs` output events.
    #[inline]
    pub fn count(&mut self, outputs: usize) {
        self.inputs += 1;
        self.outputs += outputs as u64;
        self.filtered += u64::from(outputs == 0);
        self.fanned_out += u64::from(outputs > 1);
    }
}

impl InternalEvent for Transformed {
    fn emit(self) {
        add(&COUNTERS.transformed, self.inputs);
        add(&COUNTERS.outputs, self.outputs);
        add(&COUNTERS.filtered, self.filtered);
        add(&COUNTERS.fanned_out, self.fanned_out);
        add(&COUNTERS.transform_us, self.took.as_micros() as u64);
    }
}

/// Outputs `--route` sent to no sink: null or [] for them.
pub struct RouteDropped {
    pub outputs: u64,
}

impl InternalEvent for RouteDropped {
    #[inline]
    fn emit(self) {
        add(&COUNTERS.dropped, self.outputs);
    }
}

/// A worker's lookups over one slice of a batch: calls answered at hand, and calls that waited for a fetch.
pub struct LookupsDone {
    pub hits: u64,
    pub misses: u64,
}

impl InternalEvent for LookupsDone {
    #[inline]
    fn emit(self) {
        add(&COUNTERS.lookup_hits, self.hits);
        add(&COUNTERS.lookup_misses, self.misses);
    }
}

/// A worker's `--exec` command ended, hung or broke the protocol on some events and is being restarted.
pub struct CommandRestarted<'a> {
    pub command: &'a str,
    /// How it failed: "ended (exit status: 1)", "gave no reply within 30s and was killed", "wrote 2 lines for 1
    /// event".
    pub how: &'a str,
    /// The event it failed on.
    pub at: Position,
    /// What becomes of them: "the event is tried once more in a fresh process".
    pub next: &'a str,
    pub delay: std::time::Duration,
    pub n: usize,
    pub max: u32,
}

impl InternalEvent for CommandRestarted<'_> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        add(&COUNTERS.command_restarts, 1);
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "the --exec command {} {} on the event at partition {} offset {}; {}; restarting it in {:?} (restart \
                 {} of at most {} in a row){}",
                self.command,
                self.how,
                self.at.lane,
                self.at.seq,
                self.next,
                self.delay,
                self.n,
                self.max,
                held_back(n)
            );
        }
    }
}

/// A database statement failed because the database was away (restarting, unreachable, the connection lost); it is
/// retried on a fresh connection after `delay`.
pub struct DatabaseRetried<'a> {
    pub who: &'a str,
    pub doing: &'a str,
    pub error: &'a str,
    pub attempt: u32,
    pub max: u32,
    pub delay: std::time::Duration,
}

impl InternalEvent for DatabaseRetried<'_> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        add(&COUNTERS.retried, 1);
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "{}: {} failed ({}); retry {} of {} in {:?}{}",
                self.who,
                self.doing,
                self.error.trim_end(),
                self.attempt,
                self.max,
                self.delay,
                held_back(n)
            );
        }
    }
}

/// The table sink's database refused a row (a type, a constraint): it goes to the dead-letter table with the error.
pub struct RowRefused<'a> {
    pub table: &'a str,
    pub at: Position,
    pub error: &'a str,
}

impl InternalEvent for RowRefused<'_> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        add(&COUNTERS.produce_errors, 1);
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "table {} refused the row from {} ({}): it goes to the dead-letter table{}",
                self.table,
                self.at,
                self.error.trim_end(),
                held_back(n)
            );
        }
    }
}

/// Where a table scan stands: chunks finished of all, rows acknowledged of the estimate.
pub struct ScanProgress {
    pub chunks: u64,
    pub done: u64,
    pub rows: u64,
    pub estimate: u64,
}

impl InternalEvent for ScanProgress {
    fn emit(self) {
        COUNTERS.lanes().scan = Some(super::counters::Scan {
            chunks: self.chunks,
            done: self.done,
            rows: self.rows,
            estimate: self.estimate,
        });
    }
}

/// Where a followed table's replication slot stands; warns, at a bounded rate, when it keeps more WAL than allowed.
pub struct SlotProgress<'a> {
    pub slot: &'a str,
    pub lag_bytes: i64,
    /// The age of the oldest transaction not acknowledged yet.
    pub behind: std::time::Duration,
    pub confirmed: u64,
    pub changes: u64,
    pub warn_above: u64,
}

impl InternalEvent for SlotProgress<'_> {
    fn emit(self) {
        COUNTERS.lanes().slot = Some(super::counters::Slot {
            lag_bytes: self.lag_bytes,
            lag_ms: self.behind.as_millis() as u64,
            confirmed: self.confirmed,
            changes: self.changes,
        });
        static LIMIT: RateLimit = RateLimit::every(std::time::Duration::from_secs(60));
        if self.lag_bytes > 0 && self.lag_bytes as u64 > self.warn_above && LIMIT.check().is_some() {
            log::warn!(
                "replication slot {} keeps {:.1} MiB of the server's WAL (above --slot-lag-warn {} MiB): the \
                 pipeline is behind, or stopped; a slot nobody reads keeps WAL until the disk fills (--drop-slot \
                 drops it)",
                self.slot,
                self.lag_bytes as f64 / 1048576.0,
                self.warn_above >> 20
            );
        }
    }
}

/// A worker found an event unfit to transform: it goes to the dead-letter destination unchanged.
pub struct Rejected<'a> {
    pub at: crate::position::Place,
    pub reason: &'a str,
    /// Where dead letters go: the topic or the table.
    pub to: &'a str,
}

impl InternalEvent for Rejected<'_> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        let so_far = COUNTERS.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "event at {} goes to the dead letters ({}): {} ({so_far} bad {} so far){}",
                self.at,
                self.to,
                self.reason,
                if so_far == 1 { "event" } else { "events" },
                held_back(n)
            );
        }
    }
}

// An aggregation (in the sink's process).

/// Events taken into an aggregation's state.
pub struct Aggregated {
    pub events: u64,
}

impl InternalEvent for Aggregated {
    #[inline]
    fn emit(self) {
        add(&COUNTERS.aggregated, self.events);
    }
}

/// An event came after its window closed: it goes to the dead letters as "late".
pub struct LateEvent {
    pub at: Position,
    pub table: bool,
}

impl InternalEvent for LateEvent {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        let so_far = COUNTERS.late.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(n) = LIMIT.check() {
            let at = crate::position::Place { at: self.at, table: self.table };
            log::warn!(
                "event at {at} is late: its window closed (give more --lateness to take it); it goes to the dead \
                 letters ({so_far} late so far){}",
                held_back(n)
            );
        }
    }
}

/// An aggregation saved its state: how much it holds.
pub struct StateSaved {
    pub open_windows: u64,
    pub keys: u64,
    pub bytes: u64,
    pub watermark: Option<i64>,
}

impl InternalEvent for StateSaved {
    fn emit(self) {
        set(&COUNTERS.open_windows, self.open_windows);
        set(&COUNTERS.keys_held, self.keys);
        set(&COUNTERS.state_bytes, self.bytes);
        set(&COUNTERS.watermark_ms, self.watermark.map_or(0, |w| w.max(0) as u64));
    }
}

// The sink.

/// The destination acknowledged events: written where they belong, or to the dead-letter destination.
pub struct Delivered {
    pub events: u64,
    pub dead_letters: u64,
}

impl InternalEvent for Delivered {
    fn emit(self) {
        add(&COUNTERS.delivered, self.events);
        add(&COUNTERS.dead_lettered, self.dead_letters);
    }
}

/// A delivery failed; the sink retries it or dead-letters it.
pub struct DeliveryFailed;

impl InternalEvent for DeliveryFailed {
    fn emit(self) {
        add(&COUNTERS.produce_errors, 1);
    }
}

/// A failed delivery is sent again.
pub struct DeliveryRetried<'a, E: Display> {
    pub at: Position,
    pub error: &'a E,
}

impl<E: Display> InternalEvent for DeliveryRetried<'_, E> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        add(&COUNTERS.retried, 1);
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "delivery of partition {} offset {} failed ({}); sending it again{}",
                self.at.lane,
                self.at.seq,
                self.error,
                held_back(n)
            );
        }
    }
}

/// A delivery failed in a way no retry can fix: the event goes to the dead-letter destination instead.
pub struct DeadLetterRouted<'a, E: Display> {
    pub at: Position,
    pub destination: &'a str,
    pub error: &'a E,
}

impl<E: Display> InternalEvent for DeadLetterRouted<'_, E> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "event at partition {} offset {} cannot be written to \"{}\" ({}); it goes to the dead-letter topic{}",
                self.at.lane,
                self.at.seq,
                self.destination,
                self.error,
                held_back(n)
            );
        }
    }
}

/// A dead letter too large for the dead-letter topic is cut down to what fits (its key and value's first bytes,
/// why and where from, the sizes).
pub struct DeadLetterCut<'a, E: Display> {
    pub at: Position,
    pub size: usize,
    pub error: &'a E,
}

impl<E: Display> InternalEvent for DeadLetterCut<'_, E> {
    fn emit(self) {
        static LIMIT: RateLimit = RateLimit::every(EVERY);
        if let Some(n) = LIMIT.check() {
            log::warn!(
                "event at partition {} offset {} is too large for the dead-letter topic too ({}): it goes there cut \
                 down to its first {} bytes, with its sizes and the reason in its headers{}",
                self.at.lane,
                self.at.seq,
                self.error,
                self.size,
                held_back(n)
            );
        }
    }
}

/// Events handed to the sink's client and not yet acknowledged.
pub struct SinkQueue {
    pub events: u64,
}

impl InternalEvent for SinkQueue {
    fn emit(self) {
        set(&COUNTERS.sink_queue, self.events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_themselves() {
        // COUNTERS is this process's: other tests may add to it meanwhile, never take away.
        let before = COUNTERS.snapshot();
        emit(BatchSent { events: 7 });
        emit(Consumed { events: 2 });
        emit(Delivered { events: 3, dead_letters: 1 });
        let at = crate::position::Place { at: Position::new(0, 1), table: false };
        emit(Rejected { at, reason: "not JSON", to: "topic dst.dlq" });
        emit(DeliveryRetried { at: Position::new(0, 1), error: &"timed out" });
        let after = COUNTERS.snapshot();
        assert!(after.sent >= before.sent + 7 && after.batches_out > before.batches_out);
        assert!(after.consumed >= before.consumed + 2);
        assert!(after.delivered >= before.delivered + 3 && after.dead_lettered > before.dead_lettered);
        assert!(after.rejected > before.rejected && after.retried > before.retried);
    }
}
