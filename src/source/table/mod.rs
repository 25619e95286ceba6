//! A database table as the pipeline's source: a parallel, resumable scan.
//!
//! The table's key range is cut into [chunks](chunks) of about `--chunk-rows` rows. The source hands chunks, one at
//! a time, to `--readers` [reader](reader) processes, each with its own connection, which read them in key order with
//! keyset pagination (`key > last ORDER BY key LIMIT page`), so a page costs the same wherever it is, and send the
//! pages back. Each row becomes one JSON event, keyed by its key, and flows like any source's event: chunk = lane (so
//! a chunk's rows keep their order through one worker), row number in the chunk = sequence number.
//!
//! The source's main thread dispatches the rows, applies the sink's acknowledgements, and moves each chunk's
//! checkpoint to the key below which every row is acknowledged (the same contiguous rule as Kafka offsets). When
//! every chunk is read and acknowledged it tells the supervisor, drains the pipeline and exits: a scan is finite.

pub mod checkpoint;
pub mod chunks;
pub mod follow;
pub mod reader;

use crate::channel::batch::Record;
use crate::channel::ipc::{BatchReceiver, Page, Work, WorkSender};
use crate::config::{Config, SourceSpec};
use crate::error::{Error, Exit, Result};
use crate::position::{Lane, Position};
use crate::source::flow::{Drained, Flow};
use crate::source::pace::Pace;
use crate::source::{drain_flag, SourceEnds};
use crate::sql::{Conn, Schema};
use crate::stage::{Hooks, Kind, Role, Stage};
use crate::telemetry::count;
use crate::telemetry::events::{emit, ScanProgress};
use checkpoint::{Chunk, Store};
use chunks::InFlightKeys;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use serde_bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often checkpoints are written (and leases renewed) while the scan runs; also at every chunk's end and at the
/// drain.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How often idle readers look for a chunk to claim (one another instance left, its lease run out), and the
/// progress is refreshed from the store.
const CLAIM_EVERY: Duration = Duration::from_millis(500);

/// The table scan as the pipeline's source.
pub struct TableSource;

/// What identifies a scan in the checkpoint store: the table, its key and where its rows go. Never a password.
pub fn scan_id(cfg: &Config) -> String {
    let SourceSpec::Table(url) = cfg.source() else { return String::new() };
    format!(
        "{} table={} key={} -> {}",
        url.location(),
        url.table.as_ref().map(ToString::to_string).unwrap_or_default(),
        url.key.as_ref().map_or("(primary key)".to_string(), |k| k.join(",")),
        cfg.sink_name()
    )
}

/// The file in the state directory that says the scan's plan was saved in its store (the scan and the store's URL
/// name it): a store that comes back without the plan was deleted or replaced, and the scan does not start over
/// unseen.
fn plan_marker(cfg: &Config) -> Option<std::path::PathBuf> {
    use md5::{Digest, Md5};
    let (dir, store) = (cfg.tables.state_dir.as_ref()?, cfg.tables.checkpoint.as_ref()?);
    let digest = Md5::digest(format!("{}\n{}", scan_id(cfg), store.location()).as_bytes());
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join("scans").join(name))
}

/// Notes that the store holds the scan's plan (once; a failure to is said, and changes nothing else).
fn mark_planned(cfg: &Config, store: &Store) {
    let Some(marker) = plan_marker(cfg) else { return };
    if marker.exists() {
        return;
    }
    let text = format!(
        "scan: {}\nstore: {}\nstore id: {}\n",
        scan_id(cfg),
        cfg.tables.checkpoint.as_ref().map(crate::sql::url::TableUrl::location).unwrap_or_default(),
        store.id()
    );
    let written = marker.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&marker, text));
    if let Err(e) = written {
        log::warn!("cannot note the scan's plan in {}: {e}", marker.display());
    }
}

/// `--rescan`: forgets the scan's checkpoints.
pub fn forget_scan(cfg: &Config) -> Result<()> {
    let Some(store) = &cfg.tables.checkpoint else { return Ok(()) };
    let id = scan_id(cfg);
    if let Some(marker) = plan_marker(cfg) {
        let _ = std::fs::remove_file(marker);
    }
    Store::open(store, id.clone(), cfg.chunk_lease)?.forget()?;
    log::info!("--rescan: the checkpoints of \"{id}\" are forgotten; the scan starts over");
    Ok(())
}

/// `; a; b; …` for the first `most` items, and how many more there are: a line, not a page, whatever the count.
fn listed(items: &[String], most: usize) -> String {
    let mut out: String = items.iter().take(most).map(|i| format!("; {i}")).collect();
    if items.len() > most {
        out.push_str(&format!("; and {} more", items.len() - most));
    }
    out
}

impl Stage for TableSource {
    type Ends = SourceEnds;

    fn run(cfg: &Config, ends: SourceEnds, hooks: &Hooks) -> Result<Exit> {
        let (SourceSpec::Table(url), Some(store_url)) = (cfg.source(), &cfg.tables.checkpoint) else {
            return Err(Error::DbSchema { message: "no --source table given".into() });
        };
        let drain = drain_flag(ends.control)?;
        let mut conn = Conn::open(url)?;
        let schema = conn.schema(url, crate::sql::Access::Read)?;
        let nulls = conn.null_keys(&schema)?;
        if nulls > 0 {
            return Err(Error::DbSchema {
                message: format!(
                    "{} of table {:?} have a NULL in key {}: a scan in key order cannot reach them (key= must name \
                     columns without NULLs)",
                    count(nulls, "row"),
                    schema.table,
                    schema.key_names()
                ),
            });
        }
        let mut store = Store::open(store_url, scan_id(cfg), cfg.chunk_lease)?;
        let planned = store.load()?;
        // Made before the plan: a change after the snapshot's first page is in the slot.
        let slot = match cfg.follow {
            true => Some(follow::prepare(cfg, &mut conn, url, &schema, planned.is_some())?),
            false => None,
        };
        let (estimate, chunks) = match planned {
            Some(plan) => plan,
            None => {
                if let Some(marker) = plan_marker(cfg).filter(|m| m.exists()) {
                    return Err(Error::DbSchema {
                        message: format!(
                            "the checkpoint store {} has no plan for the scan of {}, but {} says it had one: the \
                             store was deleted or replaced, and starting over would read every row again; \
                             --rescan starts the scan over",
                            store_url.location(),
                            cfg.source_name(),
                            marker.display()
                        ),
                    });
                }
                let started = Instant::now();
                let (estimate, bounds) = conn.boundaries(&schema, cfg.chunk_rows)?;
                let ranges = chunks::plan(chunks::without_empty_end(bounds, estimate, cfg.chunk_rows));
                if store.plan(estimate, &ranges)? {
                    log::info!(
                        "planned the scan of {}: {} of about {} rows each, for {} rows (walking the key's index took \
                         {:.2?})",
                        cfg.source_name(),
                        count(ranges.len() as u64, "chunk"),
                        cfg.chunk_rows,
                        estimate,
                        started.elapsed()
                    );
                } else {
                    log::info!("another instance planned the scan of {} first: sharing its plan", cfg.source_name());
                }
                store.load()?.ok_or_else(|| Error::DbSchema { message: "the scan's plan was not saved".into() })?
            }
        };
        drop(conn);
        mark_planned(cfg, &store);
        store.adopt_orphans()?;
        let flow = Flow::new(cfg, ends.to_workers, ends.acks)?;
        if let Some(slot) = slot {
            let mut following = follow::Follow::start(cfg, url, &schema, slot)?;
            let mut scan = Scan::new(cfg, schema, store, flow, estimate, chunks);
            hooks.ready();
            let lanes: Vec<Lane> = scan.chunks.iter().filter(|c| !c.finished).map(|c| c.index).collect();
            hooks.assigned(&lanes);
            let read = scan.follow(&mut following, ends.readers, &drain);
            if let Err(e) = &read {
                log::error!("stopping: {e}");
            }
            let exit = scan.follow_drain(cfg, &mut following, url);
            return read.map(|()| exit);
        }
        let mut scan = Scan::new(cfg, schema, store, flow, estimate, chunks);
        hooks.ready();
        let lanes: Vec<Lane> = scan.chunks.iter().filter(|c| !c.finished).map(|c| c.index).collect();
        hooks.assigned(&lanes);
        let read = scan.run(ends.readers, &drain, hooks);
        if let Err(e) = &read {
            log::error!("stopping: {e}");
        }
        let exit = scan.drain(cfg);
        read.map(|()| exit)
    }
}

/// What comes from the readers' channels.
enum FromReader {
    Page {
        reader: usize,
        page: Page,
    },
    /// The reader's channel closed: it exited, or died.
    Gone {
        reader: usize,
    },
    Failed(Error),
}

/// Where a reader stands, as the source sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Reading(Lane),
    /// No chunk to give it now: others hold the rest.
    Idle,
    /// Told to stop.
    Stopped,
}

/// The scan's state in the source's main thread.
struct Scan {
    schema: Schema,
    store: Store,
    flow: Flow,
    capacity: usize,
    max_rate: Option<u64>,
    estimate: u64,
    /// Every chunk of the plan, as last seen: those this instance works on are current, the others as the store
    /// last said.
    chunks: Vec<Chunk>,
    /// The chunks this instance claimed and has not finished, by lane.
    open: BTreeMap<Lane, OpenChunk>,
    last_checkpoint: Instant,
    last_claim: Instant,
    /// Said once: the rest of the scan is in other instances' hands.
    told_waiting: bool,
    /// Claims made by this process, numbered.
    epochs: u64,
    /// Per chunk opened before and let go, where its sequence numbers stopped.
    seq_next: BTreeMap<Lane, i64>,
}

struct OpenChunk {
    /// Which claim of the chunk this is: pages of another are dropped.
    epoch: u64,
    keys: InFlightKeys,
    read_all: bool,
    /// Rows acknowledged since the last checkpoint.
    acked_since: u64,
    /// Sequence number below which rows were acknowledged, as last seen.
    passed: i64,
}

impl Scan {
    fn new(cfg: &Config, schema: Schema, store: Store, flow: Flow, estimate: u64, chunks: Vec<Chunk>) -> Scan {
        Scan {
            schema,
            store,
            flow,
            capacity: cfg.queue_capacity,
            max_rate: cfg.max_rate,
            estimate,
            chunks,
            open: BTreeMap::new(),
            last_checkpoint: Instant::now(),
            last_claim: Instant::now(),
            told_waiting: false,
            // Never the same in two runs: a followed table's watermarks of an earlier run are not this one's.
            epochs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            seq_next: BTreeMap::new(),
        }
    }

    /// Reads until every chunk of the scan is finished (then tells the supervisor), or the drain is asked for.
    fn run(&mut self, readers: Vec<(WorkSender, BatchReceiver)>, drain: &AtomicBool, hooks: &Hooks) -> Result<()> {
        self.report_progress();
        let done_before = self.chunks.iter().filter(|c| c.finished).count();
        let rows_before: u64 = self.chunks.iter().map(|c| c.rows).sum();
        if self.store.unfinished()? == 0 {
            log::info!(
                "the scan of {} is finished: {} read in an earlier run; --rescan starts it over",
                self.schema.table,
                count(rows_before, "row")
            );
            hooks.finished();
            stop_readers(&readers);
            return Ok(());
        }
        log::info!(
            "scanning {}: {} to read{}, with {}",
            self.schema.table,
            count((self.chunks.len() - done_before) as u64, "chunk"),
            if done_before > 0 || rows_before > 0 {
                format!(" (resuming: {done_before} finished earlier, {rows_before} rows acknowledged earlier)")
            } else {
                String::new()
            },
            count(readers.len() as u64, "reader")
        );
        let (work, rx) = forward_pages(readers)?;
        let mut states = vec![ReaderState::Idle; work.len()];
        for reader in 0..work.len() {
            self.give_work(reader, &work, &mut states)?;
        }
        let outcome = self.pump(&rx, &work, &mut states, drain, hooks);
        for w in &work {
            let _ = w.send(Work::Stop);
        }
        outcome
    }

    /// Claims the next chunk for `reader` and sends it; leaves the reader idle when there is none to claim now.
    fn give_work(&mut self, reader: usize, work: &[WorkSender], states: &mut [ReaderState]) -> Result<()> {
        let Some(chunk) = self.store.claim()? else {
            states[reader] = ReaderState::Idle;
            return Ok(());
        };
        let lane = chunk.index;
        self.epochs += 1;
        let epoch = self.epochs;
        let next = Work::Chunk { lane, epoch, after: chunk.resume_after().cloned(), upto: chunk.range.hi.clone() };
        match &chunk.done_upto {
            Some(k) => {
                log::info!(
                    "chunk {lane} resumes after key {k}, its checkpoint ({} rows acknowledged before)",
                    chunk.rows
                )
            }
            _ => log::debug!("chunk {lane} goes to {}", Role::Reader(reader)),
        }
        match self.chunks.iter_mut().find(|c| c.index == lane) {
            Some(c) => *c = chunk,
            None => self.chunks.push(chunk),
        }
        let base = self.seq_next.get(&lane).copied().unwrap_or(0);
        let open =
            OpenChunk { epoch, keys: InFlightKeys::starting_at(base), read_all: false, acked_since: 0, passed: base };
        self.open.insert(lane, open);
        states[reader] = ReaderState::Reading(lane);
        work[reader].send(next).map_err(|_| Error::ReaderGone { reader: Role::Reader(reader).to_string() })
    }

    fn pump(
        &mut self,
        pages: &Receiver<FromReader>,
        work: &[WorkSender],
        states: &mut [ReaderState],
        drain: &AtomicBool,
        hooks: &Hooks,
    ) -> Result<()> {
        let mut pace = self.max_rate.map(|rate| Pace::new(rate, Instant::now()));
        while !drain.load(Ordering::Relaxed) {
            self.flow.apply_acks(Duration::ZERO);
            if self.flow.finished() {
                return Err(Error::PeerGone { peer: Kind::Sink.label() });
            }
            self.checkpoint(false)?;
            // Idle readers look for work now and then; the end of this instance's work is looked at at once.
            if self.last_claim.elapsed() >= CLAIM_EVERY || (self.open.is_empty() && !self.told_waiting) {
                self.last_claim = Instant::now();
                for reader in 0..states.len() {
                    if states[reader] == ReaderState::Idle {
                        self.give_work(reader, work, states)?;
                    }
                }
                if self.open.is_empty() {
                    match self.store.unfinished()? {
                        0 => {
                            log::info!("every chunk is read and acknowledged");
                            hooks.finished();
                            return Ok(());
                        }
                        left if !self.told_waiting => {
                            self.told_waiting = true;
                            log::info!(
                                "{} of the scan are held by other instances: waiting, to take over any whose \
                                 instance stops renewing its lease",
                                count(left, "chunk")
                            );
                        }
                        _ => {}
                    }
                    self.refresh();
                }
            }
            // At the bound, or out of --max-rate's tokens, no page is taken: the readers wait, and so does the database.
            // A page is taken whole, so only while a whole one fits under the bound (or nothing is in flight: a
            // --queue-capacity under one page still gets one at a time).
            let wait = pace.as_mut().map_or(Duration::ZERO, |p| p.wait(Instant::now()));
            let in_flight = self.flow.marks().in_flight();
            if (in_flight > 0 && in_flight + reader::PAGE_ROWS > self.capacity) || !wait.is_zero() {
                self.flow.flush_all()?;
                self.flow.apply_acks(wait.clamp(Duration::from_millis(1), Duration::from_millis(20)));
                continue;
            }
            match pages.recv_timeout(Duration::from_millis(20)) {
                Ok(FromReader::Page { reader, page: Page { lane, epoch, rows, last, .. } }) => {
                    for (row_key, json) in rows {
                        // A chunk whose lease was lost is another instance's now; a page of an earlier claim of it
                        // is not this claim's.
                        let Some(open) = self.open.get_mut(&lane).filter(|o| o.epoch == epoch) else { break };
                        let key = row_key.to_bytes();
                        let seq = open.keys.push(row_key);
                        if let Some(p) = &mut pace {
                            p.took();
                        }
                        self.flow.dispatch(&Record {
                            at: Position::new(lane, seq),
                            timestamp: None,
                            key: Some(Bytes::new(&key)),
                            headers: Vec::new(),
                            payload: Some(Bytes::new(&json)),
                            dead_letter: None,
                            topic: None,
                            outputs: 1,
                        })?;
                    }
                    if last {
                        if let Some(open) = self.open.get_mut(&lane).filter(|o| o.epoch == epoch) {
                            open.read_all = true;
                        }
                        self.give_work(reader, work, states)?;
                    }
                    self.flow.flush_due(Instant::now())?;
                }
                Ok(FromReader::Gone { reader }) => match states[reader] {
                    ReaderState::Reading(_) => {
                        return Err(Error::ReaderGone { reader: Role::Reader(reader).to_string() });
                    }
                    _ => states[reader] = ReaderState::Stopped,
                },
                Ok(FromReader::Failed(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => self.flow.flush_all()?,
                Err(RecvTimeoutError::Disconnected) => {
                    self.flow.flush_all()?;
                    self.flow.apply_acks(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }

    /// Moves each open chunk's checkpoint to the key below which all is acknowledged; writes them (renewing the
    /// leases) at most every [`CHECKPOINT_EVERY`] unless `now`, and at once when a chunk finished.
    fn checkpoint(&mut self, now: bool) -> Result<()> {
        let mut any_finished = false;
        for p in self.flow.marks_mut().take_advanced() {
            let Some(open) = self.open.get_mut(&p.lane) else { continue };
            let key = open.keys.passed(p.seq);
            open.acked_since += (p.seq - open.passed).max(0) as u64;
            open.passed = p.seq;
            if let (Some(key), Some(c)) = (key, self.chunks.iter_mut().find(|c| c.index == p.lane)) {
                c.done_upto = Some(key);
            }
        }
        for (lane, open) in &self.open {
            any_finished |= open.read_all && open.keys.is_empty() && self.flow.marks().in_flight_of(*lane) == 0;
        }
        if now || any_finished || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.write_checkpoints()?;
        }
        Ok(())
    }

    fn write_checkpoints(&mut self) -> Result<()> {
        self.last_checkpoint = Instant::now();
        let mut moves = Vec::new();
        for (lane, open) in self.open.iter_mut() {
            let done = open.read_all && open.keys.is_empty() && self.flow.marks().in_flight_of(*lane) == 0;
            if open.acked_since == 0 && !done {
                continue;
            }
            let Some(c) = self.chunks.iter_mut().find(|c| c.index == *lane) else { continue };
            moves.push((*lane, c.done_upto.clone(), open.acked_since, done));
            c.rows += open.acked_since;
            open.acked_since = 0;
            c.finished |= done;
        }
        let lost = self.store.advance(&moves)?;
        for lane in lost {
            log::warn!(
                "chunk {lane}: its lease ran out and another instance took it over (this one stalled longer than \
                 --chunk-lease); leaving it to that instance"
            );
            self.forget(lane);
        }
        for (lane, ..) in moves.iter().filter(|m| m.3) {
            self.forget(*lane);
            log::debug!("chunk {lane} finished");
        }
        self.report_progress();
        Ok(())
    }

    fn forget(&mut self, lane: Lane) {
        if let Some(open) = self.open.remove(&lane) {
            self.seq_next.insert(lane, open.keys.next());
        }
        self.flow.forget(lane);
    }

    /// The other instances' progress, from the store.
    fn refresh(&mut self) {
        if let Ok(Some((_, chunks))) = self.store.load() {
            for c in chunks.into_iter().filter(|c| !self.open.contains_key(&c.index)) {
                match self.chunks.iter_mut().find(|o| o.index == c.index) {
                    Some(o) => *o = c,
                    None => self.chunks.push(c),
                }
            }
        }
        self.report_progress();
    }

    fn report_progress(&self) {
        let done = self.chunks.iter().filter(|c| c.finished).count();
        let rows: u64 = self.chunks.iter().map(|c| c.rows).sum();
        emit(ScanProgress { chunks: self.chunks.len() as u64, done: done as u64, rows, estimate: self.estimate });
    }

    /// The drain: the flow's handshake with the sink, the last checkpoints, and the unfinished chunks released for
    /// others. Names every chunk's checkpoint.
    fn drain(&mut self, cfg: &Config) -> Exit {
        let budget = cfg.drain_timeout.saturating_sub(Duration::from_secs(1).min(cfg.drain_timeout / 4));
        // Every chunk finished: the input has ended, not only this run, and what waits for its end may end.
        let exhausted = self.chunks.iter().all(|c| c.finished);
        let drained = self.flow.drain(Instant::now() + budget, exhausted);
        let saved = self.checkpoint(true).and_then(|()| self.store.release());
        if let Err(Error::DbSchema { .. }) = &saved {
            // The store is gone (said where it was found): what it says is no one's to rely on.
            log::warn!("the checkpoints of this run are not kept: the store is gone");
            return Exit::Failure;
        }
        self.refresh();
        let finished = self.chunks.iter().filter(|c| c.finished).count();
        let rows: u64 = self.chunks.iter().map(|c| c.rows).sum();
        let started: Vec<String> = self
            .chunks
            .iter()
            .filter(|c| !c.finished)
            .filter_map(|c| Some(format!("chunk {}: up to key {} ({} rows)", c.index, c.done_upto.as_ref()?, c.rows)))
            .collect();
        let not_started = self.chunks.iter().filter(|c| !c.finished && c.done_upto.is_none()).count();
        log::info!(
            "checkpoints of {}: {finished} of {} finished, {} acknowledged{}{}",
            self.schema.table,
            count(self.chunks.len() as u64, "chunk"),
            count(rows, "row"),
            if not_started > 0 { format!(", {not_started} not started") } else { String::new() },
            listed(&started, 8)
        );
        if let Err(e) = saved {
            log::error!("the last checkpoints could not be saved ({e}); their rows are read again on the next start");
            return Exit::Failure;
        }
        match drained {
            Drained::Complete => Exit::Clean,
            Drained::TimedOut { unacked } => {
                log::warn!(
                    "the drain ran out of time with {unacked} rows unacknowledged; they are read again next time"
                );
                Exit::DrainTimeout
            }
            Drained::Broken { unacked } => {
                log::warn!("the pipeline broke with {unacked} rows unacknowledged; they are read again next time");
                Exit::Failure
            }
        }
    }
}

/// A thread per reader that passes its pages on to one channel, which the source's main thread reads.
fn forward_pages(readers: Vec<(WorkSender, BatchReceiver)>) -> Result<(Vec<WorkSender>, Receiver<FromReader>)> {
    let (work, pages): (Vec<WorkSender>, Vec<BatchReceiver>) = readers.into_iter().unzip();
    let (tx, rx) = bounded(pages.len() * 2);
    for (reader, channel) in pages.into_iter().enumerate() {
        let tx = tx.clone();
        let read = move || loop {
            let got = match channel.recv() {
                Ok(Some(bytes)) => Page::decode(&bytes).map(|page| FromReader::Page { reader, page }),
                Ok(None) => Ok(FromReader::Gone { reader }),
                Err(e) => Err(e),
            };
            let end = !matches!(got, Ok(FromReader::Page { .. }));
            if tx.send(got.unwrap_or_else(FromReader::Failed)).is_err() || end {
                return;
            }
        };
        std::thread::Builder::new()
            .name(format!("from-{}", Role::Reader(reader)))
            .spawn(read)
            .map_err(|source| Error::SpawnThread { name: "reader channel", source })?;
    }
    drop(tx);
    Ok((work, rx))
}

/// Tells every reader there is nothing to read.
fn stop_readers(readers: &[(WorkSender, BatchReceiver)]) {
    for (w, _) in readers {
        let _ = w.send(Work::Stop);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_lists_are_cut_with_a_count() {
        let items: Vec<String> = (0..31).map(|i| format!("chunk {i}")).collect();
        assert_eq!(super::listed(&items[..2], 8), "; chunk 0; chunk 1");
        assert_eq!(super::listed(&items, 2), "; chunk 0; chunk 1; and 29 more");
        assert_eq!(super::listed(&[], 8), "");
    }
}
