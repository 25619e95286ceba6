//! `--follow`: a PostgreSQL table's snapshot, then its changes, from a logical replication slot, merged without loss
//! or disorder (DBLog, see [`merge`]).
//!
//! The slot is made at the first start, before the snapshot is planned, so that no change after the snapshot's
//! first page is missed. The chunked scan runs as without `--follow`, its readers writing watermarks around each page;
//! a [`wal`] thread reads the slot all along, and the source's main thread takes changes, watermarks and pages in the
//! log's order. Events are routed by key (a key's events always go through the same worker), numbered as they leave,
//! and the chunks' checkpoints and the slot's position move only past what every event before them has been
//! acknowledged. A restart resumes the unfinished chunks and the slot from its confirmed position.
//!
//! The slot is PostgreSQL's; MySQL's binlog would be another [`wal`] thread giving the same items.

pub mod merge;
pub mod slot;
pub mod wal;
pub mod wal2json;

use super::{forward_pages, FromReader, ReaderState, Scan, CHECKPOINT_EVERY, CLAIM_EVERY};
use crate::channel::batch::Record;
use crate::channel::ipc::{BatchReceiver, Page, Work, WorkSender};
use crate::config::{Config, SourceSpec};
use crate::error::{Error, Exit, Result};
use crate::position::{Lane, Position};
use crate::source::flow::Drained;
use crate::sql::key::Key;
use crate::sql::url::TableUrl;
use crate::sql::{Conn, Schema};
use crate::stage::Kind;
use crate::telemetry::count;
use crate::telemetry::events::{emit, SlotProgress};
use crossbeam_channel::{bounded, select, Receiver};
use merge::{Ledger, Token, Windows};
use serde_bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wal::{Item, Shared, Wal};
use wal2json::Lsn;

/// Lanes a followed table's keys are spread over: a key's events always take the same lane, so the same worker.
const KEY_LANES: u64 = 256;
/// Items the WAL thread may have sent ahead of the main thread.
const AHEAD: usize = 4096;

/// The lane of a key.
fn lane_of(key: &[u8]) -> Lane {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % KEY_LANES) as Lane
}

/// Before the snapshot: what the server and the table must allow, then the slot, made if this is the first start.
/// `planned`: the scan was planned before, with a slot that must still be there. Returns what following needs of the
/// slot, read on the source's own connection.
pub fn prepare(cfg: &Config, conn: &mut Conn, url: &TableUrl, schema: &Schema, planned: bool) -> Result<Prepared> {
    slot::check(conn, url, schema)?;
    let name = slot::name(url, &super::scan_id(cfg));
    let tables = slot::qualified(conn, schema)?;
    let prepared =
        |name: String, confirmed: Option<Lsn>| Prepared { name, tables, confirmed: confirmed.unwrap_or_default() };
    let mut waited = Duration::ZERO;
    loop {
        match slot::state(conn, &name)? {
            Some(s) if s.plugin != slot::PLUGIN => {
                return Err(Error::DbSchema {
                    message: format!(
                        "the replication slot {name} exists with the {} plugin, not {}: drop it, or name another with \
                         slot= in the --source URL",
                        s.plugin,
                        slot::PLUGIN
                    ),
                })
            }
            // The backend of a source killed in the middle of a peek holds the slot until its query ends.
            Some(s) if s.active_pid.is_some() && waited < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(200));
                waited += Duration::from_millis(200);
            }
            Some(s) if s.active_pid.is_some() => {
                return Err(Error::DbSchema {
                    message: format!(
                        "the replication slot {name} is in use by server process {}: one instance follows a slot",
                        s.active_pid.unwrap_or_default()
                    ),
                })
            }
            Some(s) => {
                log::info!(
                    "following {} from replication slot {name} (database {}), confirmed up to {}",
                    schema.table,
                    s.database,
                    s.confirmed.map_or("(nothing yet)".to_string(), |l| l.to_string())
                );
                return Ok(prepared(name, s.confirmed));
            }
            None if planned => {
                return Err(Error::DbSchema {
                    message: format!(
                        "the replication slot {name} is gone, but the scan of {} was planned with it: the changes \
                         since it went are lost to it; --rescan starts the snapshot and the slot over",
                        schema.table
                    ),
                })
            }
            None => {
                let at = slot::create(conn, &name)?;
                log::info!(
                    "made replication slot {name} at {at}: every change of {} from here on is followed",
                    schema.table
                );
                return Ok(prepared(name, Some(at)));
            }
        }
    }
}

/// The slot to follow, as the source found or made it before the snapshot.
pub struct Prepared {
    name: String,
    /// The table as wal2json's `add-tables` names it.
    tables: String,
    confirmed: Lsn,
}

/// `--drop-slot`, and `--rescan` with `--follow`: drops the slot. Before any fork.
pub fn drop_slot(cfg: &Config) -> Result<()> {
    let SourceSpec::Table(url) = cfg.source() else { return Ok(()) };
    let name = slot::name(url, &super::scan_id(cfg));
    let mut conn = Conn::open(url)?;
    match slot::drop(&mut conn, &name)? {
        true => log::info!("dropped replication slot {name} of {}", url.describe()),
        false => log::info!("no replication slot {name} on {}: nothing to drop", url.location()),
    }
    Ok(())
}

/// What holds once every event before it is acknowledged.
#[derive(Debug)]
enum Mark {
    /// A page of a chunk was sent: the chunk's checkpoint moves to its last key.
    Page { lane: Lane, epoch: u64, key: Option<Key>, rows: u64, last: bool },
    /// The slot may move to this position (a transaction's end); made at that instant.
    Slot(Lsn, Instant),
}

/// The follower's state in the source's main thread, beside the scan's.
pub struct Follow {
    slot: String,
    wal: Receiver<Item>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    windows: Windows,
    pages: HashMap<Token, Page>,
    /// A high watermark whose page has not come from its reader yet: the stream waits for it.
    waiting: Option<(Token, Lsn)>,
    ledger: Ledger<Mark>,
    /// Where the slot may go once the chunks' checkpoints before it are saved.
    advance: Lsn,
    /// Chunk checkpoints that hold and are not saved yet: (lane, key, rows, finished).
    moves: Vec<super::checkpoint::Move>,
    snapshot_done: bool,
    lag_warn: u64,
    changes: u64,
    pace: Option<crate::source::pace::Pace>,
    recent: merge::Recent,
    /// Claims numbered above it are this process's.
    epoch_base: u64,
    /// The pages sent, by token (a page is read again under a new claim, never under the same token).
    sent: std::collections::HashSet<Token>,
}

impl Follow {
    /// Starts the WAL thread.
    pub fn start(cfg: &Config, url: &TableUrl, schema: &Schema, slot: Prepared) -> Result<Follow> {
        let Prepared { name: slot_name, tables, confirmed } = slot;
        let shared = Arc::new(Shared::default());
        shared.confirmed.store(confirmed.0, Ordering::Relaxed);
        shared.advance_to.store(confirmed.0, Ordering::Relaxed);
        shared.lag_bytes.store(-1, Ordering::Relaxed);
        let (tx, rx) = bounded(AHEAD);
        let wal = Wal {
            url: url.clone(),
            schema: schema.clone(),
            slot: slot_name.clone(),
            tables,
            prefix: slot::watermark_prefix(&slot_name),
            max_retries: cfg.max_retries,
        };
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wal".into())
            .spawn(move || wal.run(tx, for_thread))
            .map_err(|source| Error::SpawnThread { name: "wal", source })?;
        Ok(Follow {
            slot: slot_name,
            wal: rx,
            shared,
            thread: Some(thread),
            windows: Windows::default(),
            pages: HashMap::new(),
            waiting: None,
            ledger: Ledger::new(),
            advance: confirmed,
            moves: Vec::new(),
            snapshot_done: false,
            lag_warn: cfg.slot_lag_warn.saturating_mul(1 << 20),
            changes: 0,
            pace: cfg.max_rate.map(|rate| crate::source::pace::Pace::new(rate, Instant::now())),
            recent: merge::Recent::default(),
            epoch_base: u64::MAX,
            sent: std::collections::HashSet::new(),
        })
    }

    /// Stops the WAL thread and waits for it, so that the slot is this process's to advance.
    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // A thread blocked on a full channel gets an error once no one can receive.
        let (_, closed) = bounded(0);
        drop(std::mem::replace(&mut self.wal, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Scan {
    /// Follows the table until the drain is asked for: the snapshot's chunks first claimed as a scan's are, and the
    /// changes all along.
    pub(super) fn follow(
        &mut self,
        f: &mut Follow,
        readers: Vec<(WorkSender, BatchReceiver)>,
        drain: &AtomicBool,
    ) -> Result<()> {
        self.flow.number_across_lanes();
        f.epoch_base = self.epochs;
        self.report_progress();
        let (work, pages) = forward_pages(readers)?;
        let mut states = vec![ReaderState::Idle; work.len()];
        f.snapshot_done = self.store.unfinished()? == 0;
        if f.snapshot_done {
            log::info!("the snapshot of {} was taken in an earlier run: following its changes", self.schema.table);
        } else {
            for reader in 0..work.len() {
                self.give_work(reader, &work, &mut states)?;
            }
        }
        let outcome = self.follow_pump(f, &pages, &work, &mut states, drain);
        for w in &work {
            let _ = w.send(Work::Stop);
        }
        outcome
    }

    fn follow_pump(
        &mut self,
        f: &mut Follow,
        readers: &Receiver<FromReader>,
        work: &[WorkSender],
        states: &mut [ReaderState],
        drain: &AtomicBool,
    ) -> Result<()> {
        let (mut pages, gone) = (Some(readers), crossbeam_channel::never());
        while !drain.load(Ordering::Relaxed) {
            self.flow.apply_acks(Duration::ZERO);
            if self.flow.finished() {
                return Err(Error::PeerGone { peer: Kind::Sink.label() });
            }
            self.follow_checkpoint(f, false)?;
            // Out of --max-rate's tokens: neither changes nor pages are taken.
            let wait = f.pace.as_mut().map_or(Duration::ZERO, |p| p.wait(Instant::now()));
            if !wait.is_zero() {
                self.flow.flush_all()?;
                self.flow.apply_acks(wait.clamp(Duration::from_millis(1), Duration::from_millis(20)));
                continue;
            }
            if !f.snapshot_done && self.last_claim.elapsed() >= CLAIM_EVERY {
                self.last_claim = Instant::now();
                for reader in 0..states.len() {
                    if states[reader] == ReaderState::Idle {
                        self.give_work(reader, work, states)?;
                    }
                }
                if self.open.is_empty() && self.store.unfinished()? == 0 {
                    f.snapshot_done = true;
                    f.recent = merge::Recent::default();
                    let rows: u64 = self.chunks.iter().map(|c| c.rows).sum();
                    log::info!(
                        "the snapshot of {} is taken ({} acknowledged): following its changes",
                        self.schema.table,
                        count(rows, "row")
                    );
                }
            }
            if self.flow.marks().in_flight() >= self.capacity {
                self.flow.flush_all()?;
                self.flow.apply_acks(Duration::from_millis(5));
                continue;
            }
            if let Some((token, lsn)) = f.waiting {
                if f.pages.contains_key(&token) {
                    f.waiting = None;
                    self.send_page(f, token, lsn)?;
                } else {
                    match readers.recv_timeout(Duration::from_millis(20)) {
                        Ok(got) => self.took_page(f, got, work, states)?,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => self.flow.flush_all()?,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                            return Err(Error::ReaderGone { reader: "every reader".into() })
                        }
                    }
                }
                continue;
            }
            select! {
                recv(f.wal) -> item => match item {
                    Ok(item) => self.took_item(f, item)?,
                    Err(_) => return Err(Error::PeerGone { peer: "the replication slot's reader" }),
                },
                recv(pages.unwrap_or(&gone)) -> got => match got {
                    Ok(got) => self.took_page(f, got, work, states)?,
                    // Every reader's thread ended: only changes come now.
                    Err(_) => pages = None,
                },
                default(Duration::from_millis(20)) => self.flow.flush_all()?,
            }
            self.flow.flush_due(Instant::now())?;
        }
        Ok(())
    }

    fn took_page(
        &mut self,
        f: &mut Follow,
        got: FromReader,
        work: &[WorkSender],
        states: &mut [ReaderState],
    ) -> Result<()> {
        match got {
            FromReader::Page { reader, page } => {
                let last = page.last;
                f.pages.insert((page.epoch, page.number), page);
                if last {
                    self.give_work(reader, work, states)?;
                }
                Ok(())
            }
            FromReader::Gone { reader } => match states[reader] {
                ReaderState::Reading(_) => {
                    Err(Error::ReaderGone { reader: crate::stage::Role::Reader(reader).to_string() })
                }
                _ => {
                    states[reader] = ReaderState::Stopped;
                    Ok(())
                }
            },
            FromReader::Failed(e) => Err(e),
        }
    }

    fn took_item(&mut self, f: &mut Follow, item: Item) -> Result<()> {
        match item {
            Item::Change(c) => {
                log::trace!("change {:?} {} at {}", c.key, c.op.code(), c.lsn);
                f.windows.changed(&c.key);
                // Only pages need them: not kept once the snapshot is taken.
                if !f.snapshot_done {
                    f.recent.changed(&c.key);
                }
                f.changes += 1;
                let headers = [("op", c.op.code().to_string()), ("lsn", c.lsn.to_string()), ("commit_time", c.time)];
                self.send_event(f, &c.key, &c.json, &headers)?;
            }
            Item::Commit { end, xid } => {
                if let (Some(xid), false) = (xid, f.snapshot_done) {
                    f.recent.committed(xid);
                }
                f.ledger.mark(Mark::Slot(end, Instant::now()))
            }
            // Watermarks of an earlier run's pages (the slot gives again what it had not confirmed), and a page's
            // second high one (its reader retried it), have no page to come.
            Item::Low { token, .. } | Item::High { token, .. }
                if token.0 <= f.epoch_base || f.sent.contains(&token) => {}
            Item::Low { token, lsn } => {
                log::trace!("low {token:?} at {lsn}");
                f.windows.low(token)
            }
            Item::High { token, lsn } => match f.pages.contains_key(&token) {
                true => self.send_page(f, token, lsn)?,
                false => f.waiting = Some((token, lsn)),
            },
            Item::Reached(lsn) => f.ledger.mark(Mark::Slot(lsn, Instant::now())),
            Item::Failed(e) => return Err(e),
        }
        Ok(())
    }

    /// A page at its high watermark: its rows, less those whose key changed inside its window.
    fn send_page(&mut self, f: &mut Follow, token: Token, lsn: Lsn) -> Result<()> {
        let Some(page) = f.pages.remove(&token) else { return Ok(()) };
        f.sent.insert(token);
        let Some(mut changed) = f.windows.high(token) else {
            return Err(Error::DbSchema {
                message: format!(
                    "the high watermark of chunk {} page {} came at {lsn} without its low one: the page cannot be \
                     merged with the changes",
                    page.lane, page.number
                ),
            });
        };
        // A transaction whose commit came before the low watermark, but which the page's snapshot did not see yet:
        // its changes went first, and are newer than the page's rows.
        f.recent.keys_of(&page.unseen, &mut changed);
        // A page of a claim since lost (its lease ran out) is another instance's to send.
        if self.open.get(&page.lane).is_none_or(|o| o.epoch != page.epoch) {
            return Ok(());
        }
        log::trace!(
            "page {token:?} at {lsn}: keys {:?}..{:?}, dropped {changed:?}, unseen {:?}",
            page.rows.first().map(|r| &r.0),
            page.rows.last().map(|r| &r.0),
            page.unseen
        );
        let mut sent = 0u64;
        for (key, json) in &page.rows {
            if changed.contains(key) {
                continue;
            }
            let event = wal::with_fields(json.to_vec(), "\"__op\":\"r\"");
            self.send_event(f, key, &event, &[("op", "r".to_string())])?;
            sent += 1;
        }
        let key = page.rows.last().map(|(k, _)| k.clone());
        f.ledger.mark(Mark::Page { lane: page.lane, epoch: page.epoch, key, rows: sent, last: page.last });
        Ok(())
    }

    fn send_event(&mut self, f: &mut Follow, key: &Key, json: &[u8], headers: &[(&str, String)]) -> Result<()> {
        let key = key.to_bytes();
        let values: Vec<Vec<u8>> = headers.iter().map(|(_, v)| v.clone().into_bytes()).collect();
        let headers: Vec<(&str, Option<&Bytes>)> =
            headers.iter().zip(&values).map(|((name, _), v)| (*name, Some(Bytes::new(v)))).collect();
        if let Some(p) = &mut f.pace {
            p.took();
        }
        self.flow.dispatch(&Record {
            at: Position::new(lane_of(&key), f.ledger.take()),
            timestamp: None,
            key: Some(Bytes::new(&key)),
            headers,
            payload: Some(Bytes::new(json)),
            dead_letter: None,
            topic: None,
            outputs: 1,
        })
    }

    /// Applies what holds now; saves the chunks' checkpoints at most every [`CHECKPOINT_EVERY`] (at once when a
    /// chunk finished, or `now`), and only then lets the slot move past them.
    fn follow_checkpoint(&mut self, f: &mut Follow, now: bool) -> Result<()> {
        let oldest = self.flow.marks().oldest_in_flight();
        let mut finished = false;
        for mark in f.ledger.passed(oldest) {
            match mark {
                Mark::Slot(lsn, _) => f.advance = f.advance.max(lsn),
                Mark::Page { lane, epoch, key, rows, last } => {
                    if self.open.get(&lane).is_none_or(|o| o.epoch != epoch) {
                        continue;
                    }
                    if let Some(c) = self.chunks.iter_mut().find(|c| c.index == lane) {
                        if key.is_some() {
                            c.done_upto = key;
                        }
                        c.rows += rows;
                        c.finished |= last;
                        f.moves.push((lane, c.done_upto.clone(), rows, last));
                    }
                    finished |= last;
                }
            }
        }
        let due = now || finished || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if !due {
            return Ok(());
        }
        self.last_checkpoint = Instant::now();
        let moves = std::mem::take(&mut f.moves);
        if !moves.is_empty() || !f.snapshot_done {
            let lost = self.store.advance(&moves)?;
            for lane in lost {
                log::warn!(
                    "chunk {lane}: its lease ran out and another instance took it over; leaving it to that instance"
                );
                self.open.remove(&lane);
            }
            for (lane, ..) in moves.iter().filter(|m| m.3) {
                self.open.remove(lane);
            }
            self.report_progress();
        }
        // The checkpoints before it are saved: the slot may move.
        f.shared.advance_to.fetch_max(f.advance.0, Ordering::Relaxed);
        self.report_slot(f);
        Ok(())
    }

    fn report_slot(&self, f: &Follow) {
        let oldest = f.ledger.pending().find_map(|m| match m {
            Mark::Slot(_, at) => Some(at.elapsed()),
            Mark::Page { .. } => None,
        });
        emit(SlotProgress {
            slot: &f.slot,
            lag_bytes: f.shared.lag_bytes.load(Ordering::Relaxed),
            behind: oldest.unwrap_or_default(),
            confirmed: f.shared.confirmed.load(Ordering::Relaxed),
            changes: f.changes,
            warn_above: f.lag_warn,
        });
    }

    /// The drain: every event sent acknowledged (or the deadline), the last checkpoints saved, then the slot moved
    /// to them by this thread, the WAL thread stopped first.
    pub(super) fn follow_drain(&mut self, cfg: &Config, f: &mut Follow, url: &TableUrl) -> Exit {
        let budget = cfg.drain_timeout.saturating_sub(Duration::from_secs(1).min(cfg.drain_timeout / 4));
        let drained = self.flow.drain(Instant::now() + budget, false);
        f.stop();
        let saved = self.follow_checkpoint(f, true).and_then(|()| self.store.release());
        if let Err(e) = &saved {
            log::error!("the last checkpoints could not be saved ({e}); what follows them is read again next time");
            return Exit::Failure;
        }
        let target = Lsn(f.shared.advance_to.load(Ordering::Relaxed));
        if target.0 > f.shared.confirmed.load(Ordering::Relaxed) {
            let moved = Conn::open(url).and_then(|mut conn| match &mut conn {
                Conn::Postgres(c) => slot::advance(c, &f.slot, target),
                _ => Ok(()),
            });
            match moved {
                Ok(()) => f.shared.confirmed.store(target.0, Ordering::Relaxed),
                Err(e) => log::warn!("the slot {} stays where it was ({e}): changes after it come again", f.slot),
            }
        }
        self.report_slot(f);
        log::info!(
            "replication slot {} confirmed up to {} ({} followed this run); snapshot: {} of {} finished",
            f.slot,
            Lsn(f.shared.confirmed.load(Ordering::Relaxed)),
            count(f.changes, "change"),
            self.chunks.iter().filter(|c| c.finished).count(),
            count(self.chunks.len() as u64, "chunk"),
        );
        match drained {
            Drained::Complete => Exit::Clean,
            Drained::TimedOut { unacked } => {
                log::warn!("the drain ran out of time with {unacked} events unacknowledged; they come again next time");
                Exit::DrainTimeout
            }
            Drained::Broken { unacked } => {
                log::warn!("the pipeline broke with {unacked} events unacknowledged; they come again next time");
                Exit::Failure
            }
        }
    }
}
