//! A database table as the pipeline's source: a parallel, resumable scan.
//!
//! The table's key range is cut into [chunks](chunks) of about `--chunk-rows` rows. `--readers` reader threads, each
//! with its own connection, take chunks one at a time and read each in key order with keyset pagination (`key >
//! last ORDER BY key LIMIT page`), so a page costs the same wherever it is. Each row becomes one JSON event, keyed by
//! its key, and flows like any source's event: chunk = lane (so a chunk's rows keep their order through one
//! worker), row number in the chunk = sequence number.
//!
//! The main thread dispatches the rows, applies the sink's acknowledgements, and moves each chunk's checkpoint to
//! the key below which every row is acknowledged (the same contiguous rule as Kafka offsets). When every chunk is
//! read and acknowledged it tells the supervisor, drains the pipeline and exits: a scan is finite.

pub mod checkpoint;
pub mod chunks;

use crate::channel::batch::Record;
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::position::{Lane, Position};
use crate::source::flow::{Drained, Flow};
use crate::source::pace::Pace;
use crate::source::{drain_flag, SourceEnds};
use crate::sql::key::Key;
use crate::sql::{Conn, Resilient, Row, Schema};
use crate::stage::{Hooks, Kind, Stage};
use crate::telemetry::count;
use crate::telemetry::events::{emit, ScanProgress};
use checkpoint::{Chunk, Store};
use chunks::InFlightKeys;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use serde_bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows per keyset page.
const PAGE_ROWS: usize = 2000;
/// How often checkpoints are written while the scan runs (and at every chunk's end, and at the drain).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// The table scan as the pipeline's source.
pub struct TableSource;

/// What identifies a scan in the checkpoint store: the table, its key and where its rows go. Never a password.
pub fn scan_id(cfg: &Config) -> String {
    let Some(url) = &cfg.tables.source else { return String::new() };
    format!(
        "{} table={} key={} -> {}",
        url.location(),
        url.table.as_deref().unwrap_or_default(),
        url.key.as_deref().unwrap_or("(primary key)"),
        cfg.sink_name()
    )
}

/// `--rescan`: forgets the scan's checkpoints.
pub fn forget_scan(cfg: &Config) -> Result<()> {
    let Some(store) = &cfg.tables.checkpoint else { return Ok(()) };
    let id = scan_id(cfg);
    Store::open(store, id.clone())?.forget()?;
    log::info!("--rescan: the checkpoints of \"{id}\" are forgotten; the scan starts over");
    Ok(())
}

impl Stage for TableSource {
    type Ends = SourceEnds;

    fn run(cfg: &Config, ends: SourceEnds, hooks: &Hooks) -> Result<Exit> {
        let (Some(url), Some(store_url)) = (&cfg.tables.source, &cfg.tables.checkpoint) else {
            return Err(Error::DbSchema { message: "no --source table given".into() });
        };
        let drain = drain_flag(ends.control)?;
        let mut conn = Conn::open(url)?;
        let schema = conn.schema(url)?;
        let mut store = Store::open(store_url, scan_id(cfg))?;
        let (estimate, chunks) = match store.load()? {
            Some(plan) => plan,
            None => {
                let started = Instant::now();
                let (estimate, bounds) = conn.boundaries(&schema, cfg.chunk_rows)?;
                store.plan(estimate, &chunks::plan(bounds))?;
                log::info!(
                    "planned the scan of {}: {} of about {} rows each, for {} rows (walking the key's index took \
                     {:.2?})",
                    cfg.source_name(),
                    count(store.load()?.map_or(0, |p| p.1.len()) as u64, "chunk"),
                    cfg.chunk_rows,
                    estimate,
                    started.elapsed()
                );
                store.load()?.ok_or_else(|| Error::DbSchema { message: "the scan's plan was not saved".into() })?
            }
        };
        drop(conn);
        let flow = Flow::new(cfg, ends.to_workers, ends.acks)?;
        let mut scan = Scan::new(cfg, schema, store, flow, estimate, chunks);
        hooks.ready();
        hooks.assigned(&scan.todo_lanes());
        let read = scan.run(url, &drain, hooks);
        if let Err(e) = &read {
            log::error!("stopping: {e}");
        }
        let exit = scan.drain(cfg);
        read.map(|()| exit)
    }
}

/// A page of rows from a reader.
enum FromReader {
    Page { lane: Lane, rows: Vec<Row>, last: bool },
    Failed(Error),
}

/// The scan's state in the main thread.
struct Scan {
    schema: Arc<Schema>,
    store: Store,
    flow: Flow,
    readers: usize,
    max_retries: u32,
    capacity: usize,
    max_rate: Option<u64>,
    estimate: u64,
    /// Every chunk of the plan.
    chunks: Vec<Chunk>,
    /// The chunks this run reads, by lane, until finished.
    open: BTreeMap<Lane, OpenChunk>,
    last_checkpoint: Instant,
}

#[derive(Default)]
struct OpenChunk {
    keys: InFlightKeys,
    read_all: bool,
    /// Rows acknowledged since the last checkpoint.
    acked_since: u64,
    /// Sequence number below which rows were acknowledged, as last seen.
    passed: i64,
}

impl Scan {
    fn new(cfg: &Config, schema: Schema, store: Store, flow: Flow, estimate: u64, chunks: Vec<Chunk>) -> Scan {
        let open = chunks.iter().filter(|c| !c.finished).map(|c| (c.index, OpenChunk::default())).collect();
        Scan {
            schema: Arc::new(schema),
            store,
            flow,
            readers: cfg.readers,
            max_retries: cfg.max_retries,
            capacity: cfg.queue_capacity,
            max_rate: cfg.max_rate,
            estimate,
            chunks,
            open,
            last_checkpoint: Instant::now(),
        }
    }

    fn todo_lanes(&self) -> Vec<Lane> {
        self.open.keys().copied().collect()
    }

    /// Reads until every chunk is read and acknowledged (then tells the supervisor), or the drain is asked for.
    fn run(&mut self, url: &crate::sql::url::TableUrl, drain: &AtomicBool, hooks: &Hooks) -> Result<()> {
        self.report_progress();
        let done_before = self.chunks.len() - self.open.len();
        let rows_before: u64 = self.chunks.iter().map(|c| c.rows).sum();
        if self.open.is_empty() {
            log::info!(
                "the scan of {} is finished: {} read in an earlier run; --rescan starts it over",
                self.schema.table,
                count(rows_before, "row")
            );
            hooks.finished();
            return Ok(());
        }
        log::info!(
            "scanning {}: {} to read{}, with {}",
            self.schema.table,
            count(self.open.len() as u64, "chunk"),
            if done_before > 0 || rows_before > 0 {
                format!(" (resuming: {done_before} finished earlier, {rows_before} rows acknowledged earlier)")
            } else {
                String::new()
            },
            count(self.readers.min(self.open.len()) as u64, "reader")
        );
        let (work_tx, work_rx) = unbounded();
        for c in self.chunks.iter().filter(|c| !c.finished) {
            let _ = work_tx.send((c.index, c.resume_after().cloned(), c.range.hi.clone()));
        }
        drop(work_tx);
        let stop = Arc::new(AtomicBool::new(false));
        let (page_tx, pages) = bounded(self.readers * 2);
        for i in 0..self.readers.min(self.open.len()) {
            let reader = Reader {
                who: format!("reader-{i}"),
                db: Resilient::connect(url, self.max_retries, format!("reader-{i}"))?,
                schema: self.schema.clone(),
                work: work_rx.clone(),
                pages: page_tx.clone(),
                stop: stop.clone(),
            };
            std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || reader.run())
                .map_err(|source| Error::SpawnThread { name: "reader", source })?;
        }
        drop(page_tx);
        let outcome = self.pump(&pages, drain, hooks);
        stop.store(true, Ordering::SeqCst);
        outcome
    }

    fn pump(&mut self, pages: &Receiver<FromReader>, drain: &AtomicBool, hooks: &Hooks) -> Result<()> {
        let mut pace = self.max_rate.map(|rate| Pace::new(rate, Instant::now()));
        while !drain.load(Ordering::Relaxed) {
            self.flow.apply_acks(Duration::ZERO);
            if self.flow.finished() {
                return Err(Error::PeerGone { peer: Kind::Sink.label() });
            }
            self.checkpoint(false)?;
            if self.open.is_empty() {
                log::info!("every chunk is read and acknowledged");
                hooks.finished();
                return Ok(());
            }
            // At the bound, or out of --max-rate's tokens, no page is taken: the readers wait, and so does the database.
            let wait = pace.as_mut().map_or(Duration::ZERO, |p| p.wait(Instant::now()));
            if self.flow.marks().in_flight() >= self.capacity || !wait.is_zero() {
                self.flow.flush_all()?;
                self.flow.apply_acks(wait.clamp(Duration::from_millis(1), Duration::from_millis(20)));
                continue;
            }
            match pages.recv_timeout(Duration::from_millis(20)) {
                Ok(FromReader::Page { lane, rows, last }) => {
                    for row in rows {
                        let Some(open) = self.open.get_mut(&lane) else { break };
                        let key = row.key.to_bytes();
                        let seq = open.keys.push(row.key);
                        if let Some(p) = &mut pace {
                            p.took();
                        }
                        self.flow.dispatch(&Record {
                            at: Position::new(lane, seq),
                            timestamp: None,
                            key: Some(Bytes::new(&key)),
                            headers: Vec::new(),
                            payload: Some(Bytes::new(&row.json)),
                            dead_letter: None,
                            outputs: 1,
                        })?;
                    }
                    if last {
                        if let Some(open) = self.open.get_mut(&lane) {
                            open.read_all = true;
                        }
                    }
                    self.flow.flush_due(Instant::now())?;
                }
                Ok(FromReader::Failed(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => self.flow.flush_all()?,
                Err(RecvTimeoutError::Disconnected) => {
                    // Every reader is done: what is left is in flight.
                    self.flow.flush_all()?;
                    self.flow.apply_acks(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }

    /// Saves each chunk's new checkpoint, at most every [`CHECKPOINT_EVERY`] unless `now`, and at once when a chunk
    /// finished; forgets finished chunks.
    fn checkpoint(&mut self, now: bool) -> Result<()> {
        let advanced = self.flow.marks_mut().take_advanced();
        let mut moves = Vec::new();
        let mut any_finished = false;
        for p in &advanced {
            if let Some(open) = self.open.get_mut(&p.lane) {
                let key = open.keys.passed(p.seq);
                open.acked_since += (p.seq - open.passed).max(0) as u64;
                open.passed = p.seq;
                if key.is_some() {
                    moves.push((p.lane, key));
                }
            }
        }
        // Moves not yet written are kept as the chunk's pending key.
        let mut pending: BTreeMap<Lane, Option<Key>> = BTreeMap::new();
        for (lane, key) in moves {
            pending.insert(lane, key);
        }
        for (lane, open) in &self.open {
            if open.read_all && open.keys.is_empty() && self.flow.marks().in_flight_of(*lane) == 0 {
                any_finished = true;
                pending.entry(*lane).or_insert(None);
            }
        }
        self.carry(pending);
        if !(now || any_finished || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY) {
            return Ok(());
        }
        self.write_checkpoints()
    }

    /// Remembers the newest unwritten key of each chunk until the next write.
    fn carry(&mut self, pending: BTreeMap<Lane, Option<Key>>) {
        for (lane, key) in pending {
            if let Some(c) = self.chunks.iter_mut().find(|c| c.index == lane) {
                if key.is_some() {
                    c.done_upto = key;
                }
            }
        }
    }

    fn write_checkpoints(&mut self) -> Result<()> {
        self.last_checkpoint = Instant::now();
        let mut moves = Vec::new();
        let mut finished = Vec::new();
        for (lane, open) in self.open.iter_mut() {
            let done = open.read_all && open.keys.is_empty() && self.flow.marks().in_flight_of(*lane) == 0;
            if open.acked_since == 0 && !done {
                continue;
            }
            let Some(c) = self.chunks.iter_mut().find(|c| c.index == *lane) else { continue };
            moves.push((*lane, c.done_upto.clone(), open.acked_since, done));
            c.rows += open.acked_since;
            open.acked_since = 0;
            if done {
                c.finished = true;
                finished.push(*lane);
            }
        }
        self.store.advance(&moves)?;
        for lane in finished {
            self.open.remove(&lane);
            self.flow.marks_mut().forget(lane);
            let c = self.chunks.iter().find(|c| c.index == lane);
            log::debug!("chunk {lane} finished: {} rows", c.map_or(0, |c| c.rows));
        }
        self.report_progress();
        Ok(())
    }

    fn report_progress(&self) {
        let done = self.chunks.iter().filter(|c| c.finished).count();
        let rows: u64 = self.chunks.iter().map(|c| c.rows).sum();
        emit(ScanProgress { chunks: self.chunks.len() as u64, done: done as u64, rows, estimate: self.estimate });
    }

    /// The drain: the flow's handshake with the sink, then the last checkpoints. Names every chunk's checkpoint.
    fn drain(&mut self, cfg: &Config) -> Exit {
        let budget = cfg.drain_timeout.saturating_sub(Duration::from_secs(1).min(cfg.drain_timeout / 4));
        let drained = self.flow.drain(Instant::now() + budget);
        let saved = self.checkpoint(true);
        let finished = self.chunks.iter().filter(|c| c.finished).count();
        let rows: u64 = self.chunks.iter().map(|c| c.rows).sum();
        let mut lines = Vec::new();
        for c in &self.chunks {
            let at = match (&c.finished, &c.done_upto) {
                (true, _) => "finished".to_string(),
                (false, Some(k)) => format!("up to key {k}"),
                (false, None) => "not started".to_string(),
            };
            lines.push(format!("{}: {at} ({} rows)", c.index, c.rows));
        }
        log::info!(
            "checkpoints of {}: {finished} of {} finished, {} acknowledged; chunk {}",
            self.schema.table,
            count(self.chunks.len() as u64, "chunk"),
            count(rows, "row"),
            lines.join("; chunk ")
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

/// A reader thread: takes chunks, reads them page by page, hands the pages to the main thread.
struct Reader {
    who: String,
    db: Resilient,
    schema: Arc<Schema>,
    work: Receiver<(Lane, Option<Key>, Option<Key>)>,
    pages: Sender<FromReader>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(mut self) {
        while let Ok((lane, after, upto)) = self.work.recv() {
            if let Err(e) = self.read_chunk(lane, after, upto) {
                let _ = self.pages.send(FromReader::Failed(e));
                return;
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    fn read_chunk(&mut self, lane: Lane, mut after: Option<Key>, upto: Option<Key>) -> Result<()> {
        log::debug!("{} reads chunk {lane} after {after:?}", self.who);
        loop {
            let schema = self.schema.clone();
            let doing = || {
                format!(
                    "reading chunk {lane} of {} after key {}",
                    schema.table,
                    after.as_ref().map_or("(start)".to_string(), |k| k.to_string())
                )
            };
            let mut rows = Vec::with_capacity(PAGE_ROWS);
            let read = self.db.run(&doing, |conn| {
                rows.clear();
                conn.page(&schema, after.as_ref(), upto.as_ref(), PAGE_ROWS, &mut rows)
            })?;
            read.map_err(|source| Error::DbQuery { doing: doing(), source })?;
            let last = rows.len() < PAGE_ROWS;
            if let Some(r) = rows.last() {
                after = Some(r.key.clone());
            }
            // Waits while the main thread is behind: that is the back-pressure on the database.
            let mut page = FromReader::Page { lane, rows, last };
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match self.pages.send_timeout(page, Duration::from_millis(100)) {
                    Ok(()) => break,
                    Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => page = back,
                    Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return Ok(()),
                }
            }
            if last {
                return Ok(());
            }
        }
    }
}
