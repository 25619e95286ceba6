//! A database table as the pipeline's sink: batches of events become multi-row upserts, one statement (one
//! transaction) each, on the table's primary key (or `key=A,B`, the columns of a unique index), every key column the
//! conflict target. A batch is acknowledged only once committed, so
//! the source checkpoints only rows that are in the table; a replay after a crash overwrites the same rows, so the
//! table ends with each row once.
//!
//! An event's top-level fields go to the columns of the same name; a field with no column is left out (said once). A
//! batch the database refuses for its data is written again around the row it names, else in halves, and each row
//! refused on its own goes, with the error, to the dead-letter table `<table>_dead_letter`, as do the events a worker
//! rejected and those no table can hold (not UTF-8, a lone surrogate): an error about one event is that event's dead
//! letter; only the database's own faults (away, refusing us) are the sink's.

use crate::channel::batch::Frame;
use crate::channel::ipc::AckMsg;
use crate::config::{Config, SinkSpec, SourceSpec};
use crate::error::{Error, Exit, Result};
use crate::position::Position;
use crate::sink::refusals::{Judge, TooMany};
use crate::sink::{feed, worker_ended, Acks, Input, SinkEnds};
use crate::sql::{Object, Resilient, Schema, CHANGE_FIELDS, CHANGE_OP};
use crate::stage::{Hooks, Stage};
use crate::telemetry::events::{emit, BatchReceived, Delivered};
use crate::telemetry::heartbeat;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Rows per upsert at most; a batch also goes when it holds [`MAX_BYTES`] or no more events are waiting.
const MAX_ROWS: usize = 10_000;
const MAX_BYTES: usize = 4 << 20;

/// The table writer as the pipeline's sink.
pub struct TableSink;

impl Stage for TableSink {
    type Ends = SinkEnds;

    fn run(cfg: &Config, ends: SinkEnds, hooks: &Hooks) -> Result<Exit> {
        let SinkSpec::Table(url) = cfg.sink() else {
            return Err(Error::DbSchema { message: "no --sink table given".into() });
        };
        let mut db = Resilient::connect(url, cfg.max_retries, "the table sink".into())?;
        let table = url.table().map_err(|message| Error::DbSchema { message })?;
        let (schema, key, source) = if cfg.create_table && !db.conn()?.exists(table)? {
            // The source table's declared types, read now, in this process: what the new table keeps.
            let source = match cfg.source() {
                SourceSpec::Table(from) => crate::sql::Conn::open(from)?.source_columns(from)?,
                SourceSpec::Topic(_) => None,
            };
            let key = match (&url.key, &source) {
                (Some(key), _) => key.clone(),
                (None, Some(source)) if !source.key.is_empty() => source.key.clone(),
                _ => {
                    let why = if source.is_some() { " (the source table has no primary key to take)" } else { "" };
                    return Err(Error::DbSchema {
                        message: format!(
                            "--create-table: name the key of table {table:?} with ?key=COLUMN (or ?key=A,B) in \
                             --sink{why}"
                        ),
                    });
                }
            };
            log::info!(
                "table {table:?} does not exist: it is created from the first events (--create-table){}",
                if source.is_some() { ", with the source table's column types" } else { "" }
            );
            (None, key, source)
        } else {
            (Some(db.conn()?.schema(url, crate::sql::Access::Write)?), Vec::new(), None)
        };
        hooks.ready();
        let workers = ends.inputs.len();
        let (inputs, acks) = feed(cfg, ends)?;
        let mut w = Writer {
            db,
            url: url.clone(),
            columns: schema.as_ref().map(|s| s.columns.iter().map(|c| c.name.clone()).collect()).unwrap_or_default(),
            schema: schema.unwrap_or_else(|| Schema {
                table: table.clone(),
                columns: Vec::new(),
                key: key
                    .iter()
                    .map(|name| crate::sql::KeyColumn {
                        name: name.clone(),
                        kind: crate::sql::key::KeyKind::Text,
                        type_name: String::new(),
                    })
                    .collect(),
            }),
            created: false,
            key_from_source: url.key.is_none(),
            source,
            acks,
            undelivered: HashMap::new(),
            unknown_fields: BTreeSet::new(),
            dead_letter_table: None,
            judge: Judge::new(cfg.max_dead_letters),
            too_many: None,
        };
        // A table source's rows are named by their key (the event's key) where they are dead letters.
        let keyed_at = cfg.source().is_table();
        // The database writes one batch while this thread takes the next: the sink's work and the server's overlap
        // instead of taking turns. A batch is handed over when the writer is free, and grows while it is not.
        let (to_writer, batches) = crossbeam_channel::bounded::<Pending>(1);
        let (done, written) = crossbeam_channel::bounded::<Result<bool>>(1);
        let writer = std::thread::Builder::new()
            .name("table-writer".into())
            .spawn(move || {
                for pending in batches {
                    let outcome = w.write(pending).map(|()| w.too_many.is_some());
                    let go_on = matches!(outcome, Ok(false));
                    if done.send(outcome).is_err() || !go_on {
                        break;
                    }
                }
                w
            })
            .map_err(|source| Error::SpawnThread { name: "table writer", source })?;
        let mut pending = Pending::default();
        let mut busy = false;
        let mut ended = 0;
        // Set once the writer stops taking batches: past --max-dead-letters, or gone.
        let mut stopped = false;
        loop {
            let full = pending.is_full();
            let all_in = ended == workers;
            // Nothing more waiting, a full batch, or the last one: write it now rather than wait for more.
            if !busy && !stopped && !pending.is_empty() && (inputs.is_empty() || full || all_in) {
                busy = to_writer.send(std::mem::take(&mut pending)).is_ok();
                stopped = !busy;
            }
            if stopped || (all_in && !busy) {
                break;
            }
            // A full batch takes no more until the writer is free.
            let take = if full || all_in { crossbeam_channel::never() } else { inputs.clone() };
            crossbeam_channel::select! {
                recv(take) -> input => match input {
                    Ok(Input::Batch(bytes)) => pending.take(bytes, keyed_at)?,
                    Ok(Input::Lanes { .. }) => {}
                    Ok(Input::End { worker, clean, .. }) => {
                        ended += 1;
                        worker_ended(worker, clean, "rows are read again");
                    }
                    Err(_) => ended = workers,
                },
                recv(written) -> outcome => {
                    busy = false;
                    match outcome {
                        Ok(Ok(too_many)) => stopped = too_many,
                        Ok(Err(e)) => return Err(e),
                        Err(_) => stopped = true,
                    }
                },
                default(Duration::from_millis(100)) => {
                    if busy {
                        // A write that never returns must look hung: the sink says it is alive only between writes.
                        continue;
                    }
                },
            }
            heartbeat::tick();
        }
        drop(to_writer);
        let mut w = writer.join().map_err(|_| Error::ThreadPanicked { name: "table writer" })?;
        if let Some(verdict) = w.too_many.take() {
            // The rows taken after the stop are neither written nor acknowledged: the source checkpoints up to them.
            let at = cfg.place(verdict.at).to_string();
            return Err(Error::TooManyDeadLetters { verdict: verdict.describe(&at) });
        }
        w.acks.finish()?;
        w.acks.send(&AckMsg::Done)?;
        log::debug!("done: every worker's output is written and acknowledged");
        Ok(Exit::Clean)
    }
}

/// A row to write: its source position, the event, and its key as written in the event.
type Keyed<'a> = (Position, Object<'a>, Cow<'a, str>);

/// A run of a batch's events: upserts grouped by the fields they have, or deletes.
enum Segment<'a> {
    Upserts(Vec<(Vec<String>, Vec<Keyed<'a>>)>),
    Deletes(Vec<Keyed<'a>>),
}

/// An event for the dead-letter table: its position, why, and its bytes as they came.
type Rejected = (Position, String, Vec<u8>);

/// Events waiting to be written, in the batches they came in: a row is a range of its batch, not a copy.
#[derive(Default)]
struct Pending {
    batches: Vec<Vec<u8>>,
    /// The batches' bytes in all.
    size: usize,
    /// Per row: its source position, and where its bytes are.
    rows: Vec<(Position, Span)>,
    /// Rejected by a worker: position, reason, event.
    rejected: Vec<Rejected>,
    /// Filtered out: acknowledged with the next write.
    filtered: Vec<Position>,
    /// For each of `rejected`, how many of `filtered` came before it: an aggregation's inputs count as written, in
    /// their order among its dead letters.
    filtered_before: Vec<usize>,
    /// Inputs that became several rows, and how many.
    fanned_out: Vec<(Position, u32)>,
    /// Rows' keys where the dead-letter table names rows by them (a table source's): looked up only when a row is
    /// refused, so a write with no dead letter pays for no map or string per row.
    keys: Vec<(Position, Span)>,
}

/// Where bytes are in [`Pending`]: which batch, and which range of it.
type Span = (usize, std::ops::Range<usize>);

impl Pending {
    /// The keys of the rows, by position, as the dead-letter table names them.
    fn keys_by_position(&self) -> HashMap<Position, String> {
        self.keys.iter().map(|(at, span)| (*at, String::from_utf8_lossy(self.bytes(span)).into_owned())).collect()
    }

    fn bytes(&self, (batch, range): &Span) -> &[u8] {
        &self.batches[*batch][range.clone()]
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.rejected.is_empty() && self.filtered.is_empty()
    }

    fn is_full(&self) -> bool {
        self.rows.len() >= MAX_ROWS || self.size >= MAX_BYTES
    }

    /// Keeps a batch, and notes where its events are.
    fn take(&mut self, bytes: Vec<u8>, keyed_at: bool) -> Result<()> {
        let Frame::Records(records) = Frame::parse(&bytes)? else { return Ok(()) };
        let batch = self.batches.len();
        // Where a slice of `bytes` is in it.
        let span = |part: &[u8]| {
            let start = part.as_ptr() as usize - bytes.as_ptr() as usize;
            (batch, start..start + part.len())
        };
        let mut received = 0;
        for record in records {
            let r = record?;
            received += 1;
            if r.outputs == 0 {
                self.filtered.push(r.at);
                continue;
            }
            if r.outputs > 1 {
                self.fanned_out.push((r.at, r.outputs));
            }
            if let (true, Some(key)) = (keyed_at, r.key) {
                self.keys.push((r.at, span(key)));
            }
            let payload = r.payload.map_or((batch, 0..0), |p| span(p));
            if let Some(why) = r.dead_letter {
                self.rejected.push((r.at, why.to_string(), bytes[payload.1].to_vec()));
                self.filtered_before.push(self.filtered.len());
                continue;
            }
            self.rows.push((r.at, payload));
        }
        self.size += bytes.len();
        self.batches.push(bytes);
        emit(BatchReceived { events: received });
        Ok(())
    }
}

struct Writer {
    db: Resilient,
    url: crate::sql::url::TableUrl,
    schema: Schema,
    /// The table is still to be created from the first events (`--create-table`): its schema has no columns yet.
    created: bool,
    /// The key to create the table with is the source table's (the sink's URL names none).
    key_from_source: bool,
    /// The source table's columns, whose types a table created here keeps.
    source: Option<crate::sql::types::SourceColumns>,
    columns: BTreeSet<String>,
    acks: Acks,
    /// Inputs that became several rows: how many are not written yet.
    undelivered: HashMap<Position, u32>,
    unknown_fields: BTreeSet<String>,
    dead_letter_table: Option<crate::sql::url::TableName>,
    /// Whether the dead letters are past `--max-dead-letters`.
    judge: Judge,
    /// They are: no more rows are written.
    too_many: Option<TooMany>,
}

impl Writer {
    /// Writes a batch, then acknowledges it.
    fn write(&mut self, mut pending: Pending) -> Result<()> {
        // Past --max-dead-letters nothing more is written: what is pending stays unacknowledged.
        if pending.is_empty() || self.too_many.is_some() {
            return Ok(());
        }
        for (at, outputs) in pending.fanned_out.drain(..) {
            self.undelivered.entry(at).or_insert(outputs);
        }
        if self.schema.columns.is_empty() && !self.created {
            let events: Vec<&[u8]> = pending.rows.iter().map(|(_, span)| pending.bytes(span)).collect();
            self.create_table(&events)?;
        }
        // Set aside before any statement (a worker's rejection, an event that is no row): judged after the batch's
        // statements, whose written rows the judge must see too. Judged first, a batch of 10,000 rows with 150 bad
        // events would have looked like 150 dead letters in a row.
        let mut rejected = std::mem::take(&mut pending.rejected);
        let mut written = Vec::with_capacity(pending.rows.len());
        // Rows by the columns they have: a row is written with its own fields only, never NULLs for the fields
        // other events of the batch have. Each group keeps the batch's order; the groups go in the order they first
        // appear. Events of a batch mostly have the same fields: each is compared with the last group before any other.
        // A followed table's deletes (`"__op": "d"`) split the batch: what comes before a delete is written before
        // it, and what comes after, after it, so that a key's last change is what the table ends with.
        let mut segments: Vec<Segment<'_>> = Vec::new();
        let mut last = 0;
        // The group of the current run that last took each key.
        let mut group_of: HashMap<String, usize> = HashMap::new();
        for (at, span) in &pending.rows {
            let event = pending.bytes(span);
            let object = match Object::parse(event) {
                Ok(object) => object,
                Err(why) => {
                    rejected.push((*at, why, event.to_vec()));
                    continue;
                }
            };
            // The key as the event writes it, a composite one as the array of its parts' JSON: what tells two
            // rows of one statement apart.
            let mut parts = Vec::with_capacity(self.schema.key.len());
            for k in &self.schema.key {
                match object.fields.get(k.name.as_str()).map(|v| v.get()) {
                    Some(v) if v != "null" => parts.push(v),
                    _ => break,
                }
            }
            let key: Cow<'_, str> = match parts.as_slice() {
                [one] if self.schema.key.len() == 1 => Cow::Borrowed(one),
                all if all.len() == self.schema.key.len() => Cow::Owned(format!("[{}]", all.join(","))),
                _ => {
                    let missing = &self.schema.key[parts.len()].name;
                    let of = if self.schema.key.len() == 1 { "the key" } else { "part of the key" };
                    let why = format!("no {missing:?} field, {of} of table {}", self.schema.table);
                    rejected.push((*at, why, event.to_vec()));
                    continue;
                }
            };
            if object.fields.get(CHANGE_OP).is_some_and(|op| op.get() == "\"d\"") {
                match segments.last_mut() {
                    Some(Segment::Deletes(rows)) => rows.push((*at, object, key)),
                    _ => segments.push(Segment::Deletes(vec![(*at, object, key)])),
                }
                continue;
            }
            if !matches!(segments.last(), Some(Segment::Upserts(_))) {
                segments.push(Segment::Upserts(Vec::new()));
                last = 0;
                group_of.clear();
            }
            let Some(Segment::Upserts(groups)) = segments.last_mut() else { continue };
            // The object's fields are in name order already.
            let known = || object.fields.keys().map(|name| name.as_ref()).filter(|name| self.columns.contains(*name));
            let group = match groups.get(last) {
                Some((fields, _)) if known().eq(fields.iter().map(String::as_str)) => last,
                _ => {
                    let unknown = |name: &&Cow<'_, str>| {
                        !self.columns.contains(name.as_ref()) && !CHANGE_FIELDS.contains(&name.as_ref())
                    };
                    for name in object.fields.keys().filter(unknown) {
                        if self.unknown_fields.insert(name.to_string()) {
                            log::warn!(
                                "events have a field {name:?} that table {} has no column for: it is not written",
                                self.schema.table
                            );
                        }
                    }
                    let fields: Vec<String> = known().map(str::to_string).collect();
                    match groups.iter().position(|(f, _)| *f == fields) {
                        Some(i) => i,
                        None => {
                            groups.push((fields, Vec::new()));
                            groups.len() - 1
                        }
                    }
                }
            };
            // A key written by a group that goes after this one (groups go in the order they first appear) would end
            // with its older event: this one starts a run of its own.
            if group_of.get(key.as_ref()).is_some_and(|&g| g > group) {
                let fields = groups[group].0.clone();
                group_of.clear();
                group_of.insert(key.to_string(), 0);
                segments.push(Segment::Upserts(vec![(fields, vec![(*at, object, key)])]));
                last = 0;
                continue;
            }
            group_of.insert(key.to_string(), group);
            last = group;
            groups[group].1.push((*at, object, key));
        }
        let set_aside = rejected.len();
        for segment in &segments {
            match segment {
                Segment::Upserts(groups) => {
                    for (fields, rows) in groups {
                        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                        let all: Vec<(Position, &Object<'_>, &str)> =
                            rows.iter().map(|(at, o, k)| (*at, o, k.as_ref())).collect();
                        self.upsert(&all, &fields, &mut written, &mut rejected)?;
                    }
                }
                Segment::Deletes(rows) => self.delete(rows, &mut written, &mut rejected)?,
            }
        }
        // An aggregation's inputs (filtered out here: they went into its state) count as written, each in its place
        // among the dead letters, so that a few late events among many inputs are judged as the few they are.
        let aggregating = self.acks.bare_counts();
        let mut judged = 0;
        for (i, (at, why, _)) in rejected[..set_aside].iter().enumerate() {
            if let (true, Some(&before)) = (aggregating, pending.filtered_before.get(i)) {
                self.judge.written(before.saturating_sub(judged) as u64);
                judged = judged.max(before);
            }
            self.judge.dead_lettered(why, *at);
        }
        if aggregating {
            self.judge.written(pending.filtered.len().saturating_sub(judged) as u64);
        }
        if self.too_many.is_none() {
            self.too_many = self.judge.verdict();
        }
        if !rejected.is_empty() {
            self.dead_letter(&rejected, &pending.keys_by_position())?;
        }
        let dead = rejected.len() as u64;
        let mut acked = pending.filtered;
        for at in written.iter().chain(rejected.iter().map(|r| &r.0)) {
            match self.undelivered.get_mut(at) {
                Some(left) if *left > 1 => *left -= 1,
                Some(_) => {
                    self.undelivered.remove(at);
                    acked.push(*at);
                }
                None => acked.push(*at),
            }
        }
        // Written and dead-lettered apart, as the Kafka sink counts them: a run that refused every row delivered none.
        emit(Delivered { events: written.len() as u64, dead_letters: dead });
        self.acks.send(&AckMsg::Acked(acked))?;
        Ok(())
    }

    /// Upserts `rows` in order. A statement the database refuses for its data is split: around the row it names
    /// (PostgreSQL's COPY, MySQL), the rows before it, it alone, and the rest; else in halves, and so on down. Only a
    /// row refused on its own is set aside. After a refusal the next statement tries about twice as many rows as came
    /// before the named one, growing while statements succeed, so that dense refusals do not send the whole rest again
    /// each time. Where writing row by row cost n statements, k refused rows in n cost about 2n rows written with a
    /// named row, and (log2(k) + 1) n without.
    fn upsert(
        &mut self,
        rows: &[(Position, &Object<'_>, &str)],
        fields: &[&str],
        written: &mut Vec<Position>,
        rejected: &mut Vec<Rejected>,
    ) -> Result<()> {
        let mut rest = rows;
        let mut span = rows.len();
        while !rest.is_empty() && self.too_many.is_none() {
            // A batch with many refused rows takes many statements: the supervisor must still see this stage alive.
            heartbeat::tick();
            let (attempt, after) = rest.split_at(span.clamp(1, rest.len()));
            let Some((e, named)) = self.statement(attempt, fields)? else {
                written.extend(attempt.iter().map(|(at, _, _)| *at));
                self.judge.written(attempt.len() as u64);
                rest = after;
                span = span.saturating_mul(2);
                continue;
            };
            if let [(at, o, _)] = attempt {
                let why = crate::error::db_message(e.as_ref());
                crate::telemetry::events::emit(crate::telemetry::events::RowRefused {
                    table: &self.schema.table.to_string(),
                    at: *at,
                    error: &why,
                });
                self.refused((*at, why, o.raw.to_vec()), rejected);
                rest = after;
                continue;
            }
            match named {
                Some(at) => {
                    log::debug!("{} rows were refused for row {at} ({e}); writing it alone", attempt.len());
                    // The rows before it hold no refused row: one statement (split again should the database have
                    // named another row than the first it refused).
                    self.upsert(&attempt[..at], fields, written, rejected)?;
                    self.upsert(&attempt[at..=at], fields, written, rejected)?;
                    rest = &rest[at + 1..];
                    span = (2 * (at + 1)).max(16);
                }
                None => {
                    log::debug!("{} rows were refused ({e}); writing them in halves", attempt.len());
                    let (first, second) = attempt.split_at(attempt.len() / 2);
                    self.upsert(first, fields, written, rejected)?;
                    self.upsert(second, fields, written, rejected)?;
                    rest = after;
                }
            }
        }
        Ok(())
    }

    /// Deletes the rows of a followed table's deletes; keys the database refuses go to the dead letters.
    fn delete(&mut self, rows: &[Keyed<'_>], written: &mut Vec<Position>, rejected: &mut Vec<Rejected>) -> Result<()> {
        heartbeat::tick();
        let objects: Vec<&Object<'_>> = rows.iter().map(|(_, o, _)| o).collect();
        let schema = &self.schema;
        let doing = || format!("deleting {} rows from {}", objects.len(), schema.table);
        match self.db.run(&doing, |conn| conn.delete(schema, &objects))? {
            Ok(()) => {
                written.extend(rows.iter().map(|(at, _, _)| *at));
                self.judge.written(rows.len() as u64);
            }
            Err(e) => {
                let why = crate::error::db_message(e.as_ref());
                for (at, o, _) in rows {
                    self.refused((*at, format!("the delete was refused: {why}"), o.raw.to_vec()), rejected);
                }
            }
        }
        Ok(())
    }

    /// Sets an event aside for the dead-letter table, and judges whether that is one too many.
    fn refused(&mut self, r: Rejected, rejected: &mut Vec<Rejected>) {
        self.judge.dead_lettered(&r.1, r.0);
        if self.too_many.is_none() {
            self.too_many = self.judge.verdict();
        }
        rejected.push(r);
    }

    /// One statement upserting `rows`: `None` once it is committed, or the database's refusal of their data, with
    /// the index in `rows` of the row it named, if it did. Only faults of the database itself are errors.
    fn statement(
        &mut self,
        rows: &[(Position, &Object<'_>, &str)],
        fields: &[&str],
    ) -> Result<Option<(crate::sql::DbError, Option<usize>)>> {
        // One statement cannot write a key twice (PostgreSQL refuses it): the last row of a key is what the table
        // ends with, and every one of them is acknowledged.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
        for (i, (_, _, key)) in rows.iter().enumerate() {
            last.insert(key, i);
        }
        let kept: Vec<usize> = (0..rows.len()).filter(|i| last.get(rows[*i].2) == Some(i)).collect();
        let objects: Vec<&Object<'_>> = kept.iter().map(|&i| rows[i].1).collect();
        let schema = &self.schema;
        let doing = || format!("writing {} rows to {}", objects.len(), schema.table);
        Ok(match self.db.run(&doing, |conn| conn.upsert(schema, &objects, fields))? {
            Ok(()) => None,
            Err(e) => {
                let named = e.downcast_ref::<crate::sql::RefusedRow>().and_then(|r| kept.get(r.index).copied());
                Some((e, named))
            }
        })
    }

    /// `--create-table`: the table, from the fields of these events: a field the source table has as a column keeps
    /// that column's type (the same on the same engine, the nearest that loses nothing on another), any other is
    /// typed by its first non-null value.
    fn create_table(&mut self, events: &[&[u8]]) -> Result<()> {
        let mut fields: Vec<(String, Option<serde_json::Value>)> = Vec::new();
        for e in events {
            let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(e) else { continue };
            for (k, v) in map.into_iter().filter(|(k, _)| !CHANGE_FIELDS.contains(&k.as_str())) {
                match fields.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, seen @ None)) if !v.is_null() => *seen = Some(v),
                    Some(_) => {}
                    None => fields.push((k, (!v.is_null()).then_some(v))),
                }
            }
        }
        if fields.is_empty() {
            return Ok(());
        }
        let key: Vec<String> = self.schema.key.iter().map(|k| k.name.clone()).collect();
        if let Some(k) = key.iter().find(|k| !fields.iter().any(|(name, _)| name == *k)) {
            return Err(Error::DbSchema {
                message: format!(
                    "--create-table: the events have no {k:?} field, {} of table {}{}",
                    if key.len() == 1 { "the key" } else { "part of the key" },
                    self.schema.table,
                    if self.key_from_source {
                        " (the source table's key): name the key with ?key=COLUMN (or ?key=A,B) in --sink"
                    } else {
                        ""
                    }
                ),
            });
        }
        // The source's columns in the source's order, then the events' other fields.
        if let Some(source) = &self.source {
            let place = |name: &str| source.columns.iter().position(|c| c.name == name).unwrap_or(usize::MAX);
            fields.sort_by_key(|(name, _)| place(name));
        }
        let target = self.db.conn()?.engine();
        let mut columns: Vec<(String, String)> = Vec::with_capacity(fields.len());
        let mut described = Vec::with_capacity(fields.len());
        for (name, value) in &fields {
            let is_key = key.contains(name);
            let declared = self.source.as_ref().and_then(|s| s.get(name).map(|d| (s.engine, d.clone())));
            let ty = match declared {
                // A type of the source's database alone (an enum, an extension's): kept where this one has it too.
                Some((from, d)) if from == target && !d.builtin && self.db.conn()?.has_type(&d.type_name)? => {
                    d.type_name
                }
                Some((from, d)) => crate::sql::types::convert(from, &d, target, is_key),
                None => crate::sql::types::inferred(value.as_ref(), target, is_key).to_string(),
            };
            let from = if self.source.as_ref().is_some_and(|s| s.get(name).is_some()) { "source" } else { "events" };
            described.push(format!("{name} {ty} ({from})"));
            columns.push((name.clone(), ty));
        }
        let table = self.schema.table.clone();
        self.db.conn()?.create_table(&table, &key, &columns)?;
        self.schema = self.db.conn()?.schema(&self.url, crate::sql::Access::Write)?;
        self.columns = self.schema.columns.iter().map(|c| c.name.clone()).collect();
        self.created = true;
        log::info!("created table {table:?} with columns {}", described.join(", "));
        Ok(())
    }

    /// Writes rows to the dead-letter table, each named by its key where `keys` has it, else by its position.
    fn dead_letter(&mut self, rows: &[Rejected], keys: &HashMap<Position, String>) -> Result<()> {
        let table = match &self.dead_letter_table {
            Some(t) => t.clone(),
            None => {
                let t = self.db.conn()?.dead_letter_table(&self.schema.table)?;
                self.dead_letter_table = Some(t.clone());
                t
            }
        };
        let rows: Vec<crate::sql::DeadLetter<'_>> = rows
            .iter()
            .map(|(at, why, event)| {
                let at = keys.get(at).cloned().unwrap_or_else(|| at.to_string());
                crate::sql::DeadLetter::new(at, why, event)
            })
            .collect();
        let doing = || format!("writing {} rows to the dead-letter table {table}", rows.len());
        self.db
            .run(&doing, |conn| conn.dead_letters(&table, &rows))?
            .map_err(|source| Error::DbQuery { doing: doing(), source })
    }
}
