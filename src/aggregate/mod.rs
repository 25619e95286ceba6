//! `--aggregate`: windows and running aggregates over the transform's outputs, exact across crashes.
//!
//! The operator runs in the sink process, on its own thread, between the workers' outputs and the writer
//! ([`crate::sink::feed`]). Every worker feeds it, so one process holds every key's state, whatever `--hashers` is
//! and however it changes between runs. Each lane still reaches it in order, through its one worker.
//!
//! Exactness rests on three rules:
//! - An input's position is acknowledged only after a checkpoint saved the state that includes it: the operator
//!   holds what it would send for the input (a bare record that only carries its position, or its dead letters) and
//!   lets it go to the writer once the store's transaction has committed.
//! - The store saves each lane's last applied position in that same transaction. After a restart, an input at or
//!   below it is already in the state: it is acknowledged again, not applied again.
//! - What the operator emits (results, and the dead letters of the events it refused) is saved with the state as
//!   pending until the writer acknowledges it, and sent again at the next start if it was not. Results carry
//!   positions on a lane of the operator's own ([`OPERATOR_LANE`]), whose acknowledgements never reach the source.
//!   A result is a function of its window's events, not of their order (see `acc.rs`), so one emitted again after a
//!   crash is the same bytes: the same row in a table, the same message in a topic.

mod acc;
pub mod clock;
mod store;
mod windows;

use crate::channel::batch::{BatchWriter, Frame, Record};
use crate::config::aggregate::{Agg, Emit, Named, Window};
use crate::config::{Aggregation, Config};
use crate::error::{Error, Result};
use crate::position::{Lane, Position, Seq};
use crate::sink::Input;
use crate::telemetry::events::{emit, Aggregated, LateEvent};
use crate::worker::transform::expr::Expr;
use crate::worker::transform::jq::{self, MetaSource};
use acc::Acc;
use crossbeam_channel::{Receiver, Sender};
use jaq_json::Val;
use serde_bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use windows::{Closed, Windows, FOREVER};

pub use store::IN_USE as STATE_IN_USE;

/// The dead-letter reason of an event that came after its window closed.
pub const LATE: &str = "late";

/// The lane of what the operator emits: its positions are acknowledged to the operator, never to the source.
pub const OPERATOR_LANE: Lane = -1;

/// How often held inputs are checkpointed and let go, at most: the commit waits this much longer. A checkpoint also
/// comes once half of `--queue-capacity` is held, before the source would have to wait for it.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The last input applied on a lane: its sequence number, and its key (a table row's, whose sequence numbers are
/// this run's only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    pub seq: Seq,
    pub key: Option<Vec<u8>>,
}

/// Something the operator emits, kept until acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp: Option<i64>,
    /// Set for a dead letter: why.
    pub dead_letter: Option<String>,
}

/// The path of the state store for this pipeline: one per source (topic and group, or table).
pub fn state_path(cfg: &Config) -> PathBuf {
    let dir = cfg.state_dir.clone().unwrap_or_else(crate::config::default_state_dir);
    let name = match cfg.source().table() {
        // The table's name, and which database it is in (its URL, password masked, hashed: FNV-1a).
        Some(url) => {
            let where_ = url
                .to_string()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            format!("table-{}-{:08x}", url.table.as_ref().map(ToString::to_string).unwrap_or_default(), where_ as u32)
        }
        None => format!("{}-{}", cfg.group_id, cfg.source_topic),
    };
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    dir.join(format!("aggregate-{safe}.db"))
}

/// Compiles every expression, so that a bad one is a configuration error before anything starts.
pub fn check(cfg: &Config) -> Result<()> {
    if let Some(a) = &cfg.aggregation {
        Compiled::new(a)?;
    }
    Ok(())
}

/// The aggregation's expressions, compiled.
struct Compiled {
    group_by: Option<Expr>,
    event_time: Option<Expr>,
    /// Per aggregate: its expression (none for count); a fold's UPDATE.
    args: Vec<Option<Expr>>,
    /// A fold's INIT value, evaluated once.
    inits: Vec<Option<Val>>,
    wants_meta: bool,
}

impl Compiled {
    fn new(a: &Aggregation) -> Result<Compiled> {
        let mut wants_meta = false;
        let mut compile = |code: &str, origin: &str| {
            wants_meta |= Expr::wants_meta(code);
            Expr::compile(code, origin)
        };
        let group_by = a.group_by.as_deref().map(|c| compile(c, "--group-by")).transpose()?;
        let event_time = a.event_time.as_deref().map(|c| compile(c, "--event-time")).transpose()?;
        let (mut args, mut inits) = (Vec::new(), Vec::new());
        for Named { name, agg } in &a.aggregates {
            let origin = format!("--aggregate {name}");
            match agg {
                Agg::Count => {
                    args.push(None);
                    inits.push(None);
                }
                Agg::Fold(init, update) => {
                    let init = Expr::compile(init, &origin)?
                        .first(&Val::Null, &Val::Null, &Val::Null)
                        .map_err(|message| Error::JqCompile { origin: origin.clone(), message })?;
                    args.push(Some(compile(update, &origin)?));
                    inits.push(Some(init.unwrap_or(Val::Null)));
                }
                other => {
                    args.push(Some(compile(other.expressions()[0], &origin)?));
                    inits.push(None);
                }
            }
        }
        Ok(Compiled { group_by, event_time, args, inits, wants_meta })
    }
}

/// The operator: state, event time, and what waits for the next checkpoint.
pub struct Operator {
    aggregation: Aggregation,
    compiled: Compiled,
    windows: Windows,
    clock: clock::Clock,
    /// A table scan: finite, so every window closes at its end and nothing is late; and its lanes are chunks, whose
    /// replayed rows are known by their keys, not their sequence numbers.
    table: bool,
    meta_source: MetaSource,
    workers: usize,
    applied: BTreeMap<Lane, Applied>,
    /// Per lane, as restored: inputs up to here are in the state already.
    resume: HashMap<Lane, Applied>,
    /// Whether a table's key is made of integers, so that its rows can be compared with `resume`.
    int_keyed: bool,
    /// Per lane, the last position the store holds as applied: a replayed input above it is in the state only in
    /// memory, and waits for the next save like any other.
    saved: HashMap<Lane, Seq>,
    /// Lanes with dead letters restored at their inputs' positions, purged below the first input read again.
    restored_dead: std::collections::HashSet<Lane>,
    pending: BTreeMap<(Position, u32), Out>,
    added: Vec<(Position, u32)>,
    removed: Vec<(Position, u32)>,
    next_seq: Seq,
    /// Records for the writer that wait for the next checkpoint.
    held: BatchWriter,
    /// Records that need no checkpoint: inputs already in the state, the workers' own dead letters.
    direct: BatchWriter,
    /// Inputs held since the last checkpoint, and how many call for the next one.
    held_inputs: usize,
    checkpoint_at: usize,
    last_checkpoint: Instant,
    store: store::Store,
}

/// One output event of the transform, read for the aggregation.
struct Event {
    key_text: String,
    key: Val,
    time: i64,
    values: Vec<Val>,
    event: Val,
}

impl Operator {
    pub fn open(cfg: &Config, workers: usize) -> Result<Operator> {
        let aggregation = cfg
            .aggregation
            .clone()
            .ok_or_else(|| Error::StateMismatch { path: String::new(), saved: "no --aggregate given".into() })?;
        let compiled = Compiled::new(&aggregation)?;
        let path = state_path(cfg);
        let table = cfg.source().is_table();
        // The scan starts over: so does what it was aggregated into.
        let reset = table && cfg.rescan && cfg.generation <= 1;
        let (store, restored) = store::Store::open(&path, &aggregation.fingerprint(), &aggregation.aggregates, reset)?;
        // A table's rows are known again by their keys, comparable here only when every key column is an integer
        // (a text key's order is its collation's, and "10" travels as 10 does): the source's schema says.
        let int_keyed = match (table, restored.lanes.is_empty(), cfg.source().table()) {
            (true, false, Some(url)) => {
                let schema = crate::sql::Conn::open(url)?.schema(url, crate::sql::Access::Read)?;
                schema.key.iter().all(|k| k.kind == crate::sql::key::KeyKind::Int)
            }
            _ => false,
        };
        let now = Instant::now();
        let mut clock = clock::Clock::new(Duration::from_millis(aggregation.idle_timeout as u64));
        clock.restore(restored.watermark, restored.lanes.iter().map(|(l, _, mark)| (*l, *mark)), now);
        let mut windows = Windows::new(aggregation.window);
        let keys = restored.windows.len();
        for (key, w) in restored.windows {
            windows.restore(&key, w);
        }
        let resume: HashMap<Lane, Applied> = restored.lanes.iter().map(|(l, a, _)| (*l, a.clone())).collect();
        let saved: HashMap<Lane, Seq> = restored.lanes.iter().map(|(l, a, _)| (*l, a.seq)).collect();
        if keys > 0 || !restored.pending.is_empty() {
            log::info!(
                "aggregation state restored from {}: {} open windows of {keys} keys, {} outputs to send again",
                path.display(),
                windows.open_windows(),
                restored.pending.len()
            );
        }
        let mut op = Operator {
            compiled,
            windows,
            clock,
            table,
            meta_source: crate::worker::transform::meta_source(cfg),
            workers,
            applied: restored.lanes.into_iter().map(|(l, a, _)| (l, a)).collect(),
            resume,
            int_keyed,
            saved,
            restored_dead: Default::default(),
            pending: BTreeMap::new(),
            added: Vec::new(),
            removed: Vec::new(),
            next_seq: restored.next_seq,
            held: BatchWriter::new(usize::MAX, usize::MAX, Duration::ZERO),
            direct: BatchWriter::new(usize::MAX, usize::MAX, Duration::ZERO),
            last_checkpoint: now,
            held_inputs: 0,
            checkpoint_at: (cfg.queue_capacity / 2).max(1),
            store,
            aggregation,
        };
        // What was emitted and not acknowledged before is sent again (the same bytes). Results, on the operator's
        // lane, go at once. A topic's dead letters keep their input's position, which is read again (an input whose
        // dead letter was not delivered was not acknowledged, so not committed): they go with it, and their delivery
        // acknowledges it. A table's positions are one run's only: its dead letters move to the operator's lane and
        // go at once (a table's dead letters are named by the row's key).
        for ((at, n), out) in restored.pending {
            if at.lane == OPERATOR_LANE {
                op.direct.push(&out.record(at, 1))?;
                op.pending.insert((at, n), out);
            } else if op.table {
                op.removed.push((at, n));
                op.emit_out(out, true)?;
            } else {
                op.restored_dead.insert(at.lane);
                op.pending.insert((at, n), out);
            }
        }
        Ok(op)
    }

    /// One worker's batch: each input's records (its outputs of the transform come one after another).
    pub fn batch(&mut self, bytes: &[u8]) -> Result<()> {
        let Frame::Records(records) = Frame::parse(bytes)? else { return Ok(()) };
        let records: Vec<Record<'_>> = records.collect::<Result<_>>()?;
        let mut from = 0;
        while from < records.len() {
            let at = records[from].at;
            let to = records[from..].iter().position(|r| r.at != at).map_or(records.len(), |n| from + n);
            self.input(&records[from..to])?;
            from = to;
        }
        Ok(())
    }

    /// The lanes one worker carries now.
    pub fn lanes(&mut self, worker: usize, lanes: &[Lane]) {
        let workers = self.workers;
        self.clock.assigned(lanes, |l| crate::position::worker_of(l, workers) == worker, Instant::now());
    }

    fn input(&mut self, group: &[Record<'_>]) -> Result<()> {
        let first = &group[0];
        let at = first.at;
        if self.restored_dead.remove(&at.lane) {
            // The source starts a partition at its committed offset: restored dead letters below the first input it
            // reads were delivered (their inputs are committed). Those made in this run leave only when acknowledged.
            self.forget((Position::new(at.lane, Seq::MIN), 0)..(at, 0));
        }
        // The workers' own dead letters, and inputs the transform filtered out, pass as they are.
        if first.dead_letter.is_some() || first.outputs == 0 {
            for r in group {
                self.direct.push(r)?;
            }
            return Ok(());
        }
        if self.replayed(first)? {
            // Its dead letters, if they were never acknowledged, go again in its place; else it is only acknowledged.
            // Applied in this run and not saved yet (read again within the run): it waits for the save like any input.
            let unsaved = !self.table && self.saved.get(&at.lane).is_none_or(|s| at.seq > *s);
            let mine: Vec<Out> = self.pending.range((at, 0)..=(at, u32::MAX)).map(|(_, out)| out.clone()).collect();
            let to = if unsaved { &mut self.held } else { &mut self.direct };
            if mine.is_empty() {
                to.push(&bare(first))?;
            }
            let n = mine.len() as u32;
            for out in &mine {
                to.push(&out.record(at, n))?;
            }
            if unsaved {
                self.held_inputs += 1;
            }
            return Ok(());
        }
        let now = Instant::now();
        let mut dead: Vec<(&Record<'_>, String)> = Vec::new();
        let mut results = Vec::new();
        for r in group {
            match self.apply(r, now, &mut results) {
                Ok(()) => {}
                Err(why) => dead.push((r, why)),
            }
        }
        if !self.table {
            if let Some(w) = self.clock.advance(now) {
                for closed in self.windows.close(w, self.aggregation.lateness) {
                    results.push(self.result(&closed, None));
                }
            }
        }
        let applied = self.applied.entry(at.lane).or_default();
        applied.seq = at.seq;
        if self.table {
            // A table row is known again by its key (its sequence number is this run's only).
            applied.key = first.key.map(|k| k.to_vec());
        }
        self.held_inputs += 1;
        if dead.is_empty() {
            self.held.push(&bare(first))?;
        }
        let n = dead.len() as u32;
        for (i, (r, why)) in dead.into_iter().enumerate() {
            if why == LATE {
                emit(LateEvent { at: r.at, table: self.table });
            }
            let out = Out {
                key: r.key.map(|k| k.to_vec()),
                payload: r.payload.map(|p| p.to_vec()).unwrap_or_default(),
                timestamp: r.timestamp,
                dead_letter: Some(why),
            };
            self.held.push(&out.record(at, n))?;
            self.keep(at, i as u32, out);
        }
        for out in results {
            self.emit_out(out, false)?;
        }
        Ok(())
    }

    /// Whether this input is in the state already (and so only acknowledged again).
    fn replayed(&mut self, r: &Record<'_>) -> Result<bool> {
        if !self.table {
            // A partition's offsets are the same in every run: at or below the last one applied is in the state,
            // whether read again after a restart or rewound within this run.
            return Ok(self.applied.get(&r.at.lane).is_some_and(|a| r.at.seq <= a.seq));
        }
        // A chunk is read again from its checkpoint, in key order, with this run's numbers: its rows up to the last
        // one applied, by key, are in the state. Only an integer key can be compared here as the database orders it
        // (a text key's order is its collation's).
        let Some(resume) = self.resume.get(&r.at.lane) else { return Ok(false) };
        let (Some(saved), Some(row)) = (resume.key.as_deref(), r.key.map(|k| &k[..])) else { return Ok(false) };
        let keys = self.int_keyed.then(|| int_key(saved).zip(int_key(row))).flatten();
        match keys {
            Some((saved, row)) if row <= saved => Ok(true),
            Some(_) => {
                self.resume.remove(&r.at.lane);
                Ok(false)
            }
            None => Err(Error::DbSchema {
                message: format!(
                    "the aggregation's saved state cannot tell which rows of chunk {} it holds: the table's key is not \
                     made of integers, whose order alone is known here; start the scan and its aggregation over with \
                     --rescan",
                    r.at.lane
                ),
            }),
        }
    }

    /// Applies one output event of the transform; `Err` says why it is a dead letter.
    fn apply(&mut self, r: &Record<'_>, now: Instant, results: &mut Vec<Out>) -> std::result::Result<(), String> {
        let e = self.read(r)?;
        let a = &self.aggregation;
        let lane = r.at.lane;
        let session = self.windows.is_session();
        let targets: Vec<(i64, i64)> = match a.window {
            // An event at or before its lane's watermark less the lateness could join a session that closed: it is
            // late, whatever session it would make.
            Window::Session { .. } => {
                if !self.table && self.clock.late(lane, e.time, a.lateness) {
                    return Err(LATE.into());
                }
                Vec::new()
            }
            _ => {
                let all = self.windows.fixed(e.time);
                let open: Vec<_> =
                    all.into_iter().filter(|(_, end)| self.table || !self.clock.late(lane, *end, a.lateness)).collect();
                if open.is_empty() {
                    return Err(LATE.into());
                }
                open
            }
        };
        // A fold's new value in each window, computed before anything changes, so that an error changes nothing.
        let mut folds: Vec<Vec<Option<Val>>> = Vec::new();
        for &(start, _) in &targets {
            let mut per = Vec::new();
            for (i, arg) in self.compiled.args.iter().enumerate() {
                let Some(init) = &self.compiled.inits[i] else {
                    per.push(None);
                    continue;
                };
                let current = match self.windows.get(&e.key_text, start).map(|w| &w.accs[i]) {
                    Some(Acc::Fold(v)) => v.clone(),
                    _ => init.clone(),
                };
                let meta = self.meta(r);
                let update = arg.as_ref().map(|x| x.first(&current, &meta, &e.event));
                let name = &a.aggregates[i].name;
                let next = match update {
                    Some(Ok(v)) => v.unwrap_or(Val::Null),
                    Some(Err(why)) => return Err(format!("--aggregate {name}: {why}")),
                    None => Val::Null,
                };
                per.push(Some(next));
            }
            folds.push(per);
        }
        let (aggs, inits) = (&a.aggregates, &self.compiled.inits);
        let new = || aggs.iter().zip(inits).map(|(n, init)| Acc::new(&n.agg, init.clone())).collect::<Vec<Acc>>();
        let time = e.time;
        let apply = |accs: &mut [Acc], fold: Option<&Vec<Option<Val>>>| {
            for (i, acc) in accs.iter_mut().enumerate() {
                match fold.and_then(|f| f[i].clone()) {
                    Some(v) => acc.update(v, time),
                    None => acc.update(e.values[i].clone(), time),
                }
            }
        };
        let mut touched = Vec::new();
        if session {
            self.windows.update_session(&e.key_text, e.time, new, |accs| apply(accs, None));
            if let Some((start, w)) = self
                .windows
                .of(&e.key_text)
                .and_then(|ws| ws.iter().rev().find(|(s, _)| *s <= e.time))
                .map(|(s, w)| (*s, w.end))
            {
                touched.push((start, w));
            }
        } else {
            for (i, &target) in targets.iter().enumerate() {
                self.windows.update(&e.key_text, target, new, |accs| apply(accs, folds.get(i)));
                touched.push(target);
            }
        }
        self.clock.saw(lane, e.time, now);
        if a.emit == Emit::Every {
            for (start, end) in touched {
                if let Some(w) = self.windows.get(&e.key_text, start) {
                    let closed = Closed { key: e.key_text.as_str().into(), start, end, accs: w.accs.clone() };
                    results.push(self.result(&closed, Some((&e.key, e.time))));
                }
            }
        }
        emit(Aggregated { events: 1 });
        Ok(())
    }

    fn meta(&self, r: &Record<'_>) -> Val {
        if self.compiled.wants_meta {
            jq::meta(&self.meta_source, r)
        } else {
            Val::Null
        }
    }

    /// The event's group key, time and values, or why they cannot be had.
    fn read(&self, r: &Record<'_>) -> std::result::Result<Event, String> {
        let payload = r.payload.ok_or("null payload")?;
        let event = jq::parse(payload).map_err(|e| e.as_str().to_string())?;
        let meta = self.meta(r);
        let c = &self.compiled;
        let key = match &c.group_by {
            Some(x) => match x.first(&event, &meta, &Val::Null) {
                Ok(Some(k)) => k,
                Ok(None) => return Err("--group-by gave no value".into()),
                Err(why) => return Err(format!("--group-by: {why}")),
            },
            None => match r.key {
                Some(k) => Val::from(String::from_utf8_lossy(k).into_owned()),
                None => return Err("the event has no key to group by (give --group-by)".into()),
            },
        };
        let time = match &c.event_time {
            Some(x) => match x.first(&event, &meta, &Val::Null) {
                Ok(Some(t)) => millis(&t).ok_or_else(|| {
                    format!(
                        "--event-time gave {t}: not an RFC 3339 time or a number of seconds since the epoch (years 1 \
                         to 9999)"
                    )
                })?,
                Ok(None) => return Err("--event-time gave no value".into()),
                Err(why) => return Err(format!("--event-time: {why}")),
            },
            None => match r.timestamp {
                Some(ms) => ms,
                // A table row has no time of its own: the time it was read.
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            },
        };
        let mut values = Vec::with_capacity(c.args.len());
        for (i, arg) in c.args.iter().enumerate() {
            let name = &self.aggregation.aggregates[i].name;
            let v = match (arg, &c.inits[i]) {
                // A fold's UPDATE runs per window, on its running value.
                (_, Some(_)) | (None, _) => Val::Null,
                (Some(x), None) => match x.first(&event, &meta, &Val::Null) {
                    Ok(v) => v.unwrap_or(Val::Null),
                    Err(why) => return Err(format!("--aggregate {name}: {why}")),
                },
            };
            acc::check(&self.aggregation.aggregates[i].agg, &v).map_err(|why| format!("--aggregate {name}: {why}"))?;
            values.push(v);
        }
        Ok(Event { key_text: key.to_string(), key, time, values, event })
    }

    /// A window's result: `{"key":…,"window_start":…,"window_end":…,<aggregates>}` (no window for a running
    /// aggregate), the group key as the message key.
    fn result(&self, closed: &Closed, every: Option<(&Val, i64)>) -> Out {
        use crate::worker::transform::json_out::write_val;
        let key = match every {
            Some((k, _)) => k.clone(),
            None => serde_json::from_str::<serde_json::Value>(&closed.key).map(Val::from).unwrap_or(Val::Null),
        };
        let mut p = Vec::with_capacity(128);
        p.extend_from_slice(b"{\"key\":");
        write_val(&mut p, &key);
        let windowed = (closed.start, closed.end) != FOREVER;
        if windowed {
            p.extend_from_slice(b",\"window_start\":\"");
            p.extend_from_slice(crate::sql::time::rfc3339_millis(closed.start).as_bytes());
            p.extend_from_slice(b"\",\"window_end\":\"");
            p.extend_from_slice(crate::sql::time::rfc3339_millis(closed.end).as_bytes());
            p.push(b'"');
        }
        for (n, acc) in self.aggregation.aggregates.iter().zip(&closed.accs) {
            p.push(b',');
            p.extend_from_slice(serde_json::Value::String(n.name.clone()).to_string().as_bytes());
            p.push(b':');
            write_val(&mut p, &acc.result());
        }
        p.push(b'}');
        let message_key = match &key {
            Val::Str(s) => s.as_bytes().to_vec(),
            other => other.to_string().into_bytes(),
        };
        let timestamp = match (windowed, every) {
            (true, _) => Some(closed.end),
            (false, Some((_, t))) => Some(t),
            (false, None) => None,
        };
        Out { key: Some(message_key), payload: p, timestamp, dead_letter: None }
    }

    /// Emits on the operator's lane, kept until acknowledged: with the next checkpoint, or `at_once` (what is in the
    /// saved state already).
    fn emit_out(&mut self, out: Out, at_once: bool) -> Result<()> {
        let at = Position::new(OPERATOR_LANE, self.next_seq);
        self.next_seq += 1;
        let to = if at_once { &mut self.direct } else { &mut self.held };
        to.push(&out.record(at, 1))?;
        self.keep(at, 0, out);
        Ok(())
    }

    fn keep(&mut self, at: Position, n: u32, out: Out) {
        self.pending.insert((at, n), out);
        self.added.push((at, n));
    }

    /// Acknowledged by the writer: no longer to be sent again.
    pub fn acked(&mut self, positions: &[Position]) {
        for at in positions {
            self.forget((*at, 0)..=(*at, u32::MAX));
        }
    }

    /// Takes what is pending in `range` off the list, in memory now and in the store at the next save.
    fn forget(&mut self, range: impl std::ops::RangeBounds<(Position, u32)>) {
        let keys: Vec<(Position, u32)> = self.pending.range(range).map(|(k, _)| *k).collect();
        for k in keys {
            self.pending.remove(&k);
            self.removed.push(k);
        }
    }

    /// Time passing: idle lanes may let the watermark move and close windows.
    pub fn tick(&mut self) -> Result<()> {
        if self.table {
            return Ok(());
        }
        if let Some(w) = self.clock.advance(Instant::now()) {
            for closed in self.windows.close(w, self.aggregation.lateness) {
                let out = self.result(&closed, None);
                self.emit_out(out, false)?;
            }
        }
        Ok(())
    }

    /// A finite source has read everything: every window closes.
    pub fn end_of_input(&mut self) -> Result<()> {
        for closed in self.windows.close_all() {
            let out = self.result(&closed, None);
            self.emit_out(out, false)?;
        }
        Ok(())
    }

    pub fn checkpoint_due(&self) -> bool {
        !self.held.is_empty()
            && (self.held_inputs >= self.checkpoint_at || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
    }

    /// Saves the state with the positions it covers, then gives what it held to the writer.
    pub fn checkpoint(&mut self, to_sink: &Sender<Input>) -> Result<()> {
        self.forward_direct(to_sink)?;
        self.save()?;
        if !self.held.is_empty() {
            to_sink.send(Input::Batch(self.held.bytes().to_vec())).map_err(|_| Error::PeerGone { peer: "sink" })?;
            self.held.clear();
        }
        self.held_inputs = 0;
        Ok(())
    }

    /// Saves what changed since the last save, in one transaction.
    fn save(&mut self) -> Result<()> {
        let dirty = self.windows.take_dirty();
        let added: Vec<(Position, u32)> = std::mem::take(&mut self.added);
        let removed: Vec<(Position, u32)> = std::mem::take(&mut self.removed);
        let changed = !dirty.is_empty() || !added.is_empty() || !removed.is_empty() || !self.held.is_empty();
        if changed {
            let marks: HashMap<Lane, Option<i64>> = self.clock.marks().collect();
            let changes = store::Changes {
                watermark: self.clock.watermark(),
                next_seq: self.next_seq,
                lanes: self.applied.iter().map(|(l, a)| (*l, a, marks.get(l).copied().flatten())).collect(),
                keys: dirty.iter().map(|k| (&**k, self.windows.of(k))).collect(),
                added: added.iter().filter_map(|k| self.pending.get_key_value(k)).collect(),
                removed,
            };
            self.store.save(changes)?;
            for (l, a) in &self.applied {
                self.saved.insert(*l, a.seq);
            }
        }
        self.last_checkpoint = Instant::now();
        emit(crate::telemetry::events::StateSaved {
            open_windows: self.windows.open_windows() as u64,
            keys: self.windows.keys() as u64,
            bytes: self.store.bytes(),
            watermark: self.clock.watermark(),
        });
        Ok(())
    }

    /// Sends what needs no checkpoint.
    pub fn forward_direct(&mut self, to_sink: &Sender<Input>) -> Result<()> {
        if !self.direct.is_empty() {
            to_sink.send(Input::Batch(self.direct.bytes().to_vec())).map_err(|_| Error::PeerGone { peer: "sink" })?;
            self.direct.clear();
        }
        Ok(())
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

impl Out {
    fn record(&self, at: Position, outputs: u32) -> Record<'_> {
        Record {
            at,
            timestamp: self.timestamp,
            key: self.key.as_deref().map(Bytes::new),
            headers: Vec::new(),
            payload: Some(Bytes::new(&self.payload)),
            dead_letter: self.dead_letter.as_deref(),
            topic: None,
            outputs,
        }
    }
}

/// A table row's key (as it travels: `42`, or `[1,2]` for a composite one) as integers, if it is made of them.
fn int_key(bytes: &[u8]) -> Option<Vec<i64>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if let Ok(i) = text.parse::<i64>() {
        return Some(vec![i]);
    }
    let parts: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
    parts.iter().map(serde_json::Value::as_i64).collect()
}

/// An input's position alone, to be acknowledged.
fn bare<'a>(r: &Record<'a>) -> Record<'a> {
    Record { payload: None, headers: Vec::new(), key: None, outputs: 0, dead_letter: None, ..r.clone() }
}

/// The event times taken: the years 1 to 9999, as RFC 3339 has them (so window arithmetic cannot overflow).
const TIMES: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

/// An event time as milliseconds since the epoch: an RFC 3339 string, or seconds (fractions allowed); `None` for
/// anything else, or outside the years 1 to 9999.
fn millis(t: &Val) -> Option<i64> {
    let secs = match t {
        Val::Str(s) => return crate::sql::time::epoch_millis(s).filter(|ms| TIMES.contains(ms)),
        Val::Int(i) => return (*i as i64).checked_mul(1000).filter(|ms| TIMES.contains(ms)),
        Val::Float(f) => *f,
        Val::Num(n) => n.parse().ok()?,
        _ => return None,
    };
    let ms = (secs * 1000.0).floor();
    (ms.is_finite() && ms >= *TIMES.start() as f64 && ms <= *TIMES.end() as f64).then_some(ms as i64)
}

/// The operator's thread: reads the workers' outputs (`from_workers`) and the writer's acknowledgements (`acked`),
/// and feeds the writer (`to_sink`). It ends once every worker has ended and what it emitted is acknowledged (or
/// the writer is gone).
pub fn run(
    mut op: Operator,
    workers: usize,
    from_workers: Receiver<Input>,
    acked: Receiver<Vec<Position>>,
    to_sink: Sender<Input>,
) -> Result<()> {
    let mut ended: Vec<(usize, bool, bool)> = Vec::new();
    op.forward_direct(&to_sink)?;
    while ended.len() < workers {
        crossbeam_channel::select! {
            recv(from_workers) -> input => match input {
                Ok(Input::Batch(bytes)) => op.batch(&bytes)?,
                Ok(Input::Lanes { worker, lanes }) => op.lanes(worker, &lanes),
                Ok(Input::End { worker, clean, exhausted }) => ended.push((worker, clean, exhausted)),
                Err(_) => break,
            },
            recv(acked) -> positions => match positions {
                Ok(positions) => op.acked(&positions),
                Err(_) => return Ok(()),
            },
            default(Duration::from_millis(100)) => op.tick()?,
        }
        op.forward_direct(&to_sink)?;
        if op.checkpoint_due() {
            op.checkpoint(&to_sink)?;
        }
    }
    let exhausted = ended.len() == workers && ended.iter().all(|(_, clean, exhausted)| *clean && *exhausted);
    if exhausted {
        op.end_of_input()?;
    }
    op.checkpoint(&to_sink)?;
    for (worker, clean, exhausted) in ended {
        to_sink.send(Input::End { worker, clean, exhausted }).map_err(|_| Error::PeerGone { peer: "sink" })?;
    }
    drop(to_sink);
    // The writer flushes now; its acknowledgements take what was emitted off the pending list.
    for positions in acked.iter() {
        op.acked(&positions);
    }
    if op.pending() > 0 {
        log::info!("{} results not acknowledged at the end are sent again at the next start", op.pending());
    }
    op.save()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_read_as_milliseconds_within_the_years_1_to_9999() {
        assert_eq!(millis(&Val::from("2026-12-03T10:00:00.25Z".to_string())), Some(1_796_292_000_250));
        assert_eq!(millis(&Val::Int(10)), Some(10_000));
        assert_eq!(millis(&Val::Float(1.5)), Some(1_500));
        assert_eq!(millis(&Val::Float(-0.0005)), Some(-1));
        for bad in
            [Val::Int(9_223_372_036_854_775), Val::Float(1e300), Val::Float(f64::NAN), Val::Null, Val::Bool(true)]
        {
            assert_eq!(millis(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_table_key_is_compared_only_when_made_of_integers() {
        assert_eq!(int_key(b"42"), Some(vec![42]));
        assert_eq!(int_key(b"[7,-3]"), Some(vec![7, -3]));
        assert_eq!(int_key(b"abc"), None);
        assert_eq!(int_key(b"[7,\"x\"]"), None);
    }
}
