//! The thread that reads the slot: it consumes the changes from a temporary copy of the slot that its session holds
//! (so nothing is decoded twice, and the slot itself keeps everything not acknowledged), writes each changed row as
//! the snapshot writes rows, and sends changes, transaction ends and watermarks to the source's main thread in the
//! log's order. It advances the slot to where the main thread says everything is acknowledged. A new session starts
//! a new copy where the slot is, and what it gives again is passed over.

use super::merge::Token;
use super::slot;
use super::wal2json::{self, Line, Lsn, Op};
use crate::error::{Error, Result};
use crate::sql::key::Key;
use crate::sql::url::TableUrl;
use crate::sql::{Resilient, Row, Schema};
use crossbeam_channel::Sender;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows one read of the slot returns at most (a transaction comes whole, however large).
const PEEK_ROWS: i64 = 20_000;
/// How often the slot is advanced to what is acknowledged (each advance decodes the log from its restart point).
const ADVANCE_EVERY: Duration = Duration::from_secs(1);
/// Changes written into events with one query.
const RENDER_BATCH: usize = 2000;
/// How long an idle slot is left before the next peek.
const IDLE: Duration = Duration::from_millis(50);
/// How often the slot's lag is read.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// A change as an event.
#[derive(Debug)]
pub struct Change {
    pub op: Op,
    pub key: Key,
    /// The event: the row's columns as a snapshot row has them (for a delete: its key, or its old row under
    /// `REPLICA IDENTITY FULL`), and the change's fields.
    pub json: Vec<u8>,
    pub lsn: Lsn,
    pub time: String,
}

/// What the thread passes on, in the log's order.
#[derive(Debug)]
pub enum Item {
    Change(Change),
    /// A transaction's last change (or a message outside any) was passed on: once all of them are acknowledged the
    /// slot may move to `end`. `xid`: the transaction's (none for a message).
    Commit {
        end: Lsn,
        xid: Option<u32>,
    },
    Low {
        token: Token,
        lsn: Lsn,
    },
    High {
        token: Token,
        lsn: Lsn,
    },
    /// The log was read to `lsn` and nothing in it is ours: the slot may move there once what came before is done.
    Reached(Lsn),
    Failed(Error),
}

/// What the main thread and the WAL thread share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Where the slot may be advanced to (everything before it acknowledged), as an LSN.
    pub advance_to: AtomicU64,
    /// Where the slot was last advanced to.
    pub confirmed: AtomicU64,
    /// The server's WAL the slot keeps, in bytes; -1 while unknown.
    pub lag_bytes: AtomicI64,
    pub stop: AtomicBool,
}

pub struct Wal {
    pub url: TableUrl,
    pub schema: Schema,
    pub slot: String,
    pub tables: String,
    pub prefix: String,
    pub max_retries: u32,
}

impl Wal {
    /// Runs until told to stop or the main thread is gone; a failure is sent as `Item::Failed`.
    pub fn run(self, to: Sender<Item>, shared: Arc<Shared>) {
        // The changed rows are written as events on a connection of their own, by a thread of their own, while
        // this one reads on: the server decodes and writes at once.
        let (steps, render) = crossbeam_channel::bounded(4);
        let renderer = Renderer { url: self.url.clone(), schema: self.schema.clone(), max_retries: self.max_retries };
        let spawned = std::thread::Builder::new().name("wal-render".into()).spawn(move || renderer.run(render, to));
        let to = match spawned {
            Ok(_) => steps,
            Err(source) => {
                let _ = steps.send(Step::Item(Item::Failed(Error::SpawnThread { name: "wal-render", source })));
                return;
            }
        };
        if let Err(e) = self.follow(&to, &shared) {
            let _ = to.send(Step::Item(Item::Failed(e)));
        }
    }

    fn follow(&self, to: &Sender<Step>, shared: &Shared) -> Result<()> {
        let who = format!("{} (slot {})", crate::telemetry::logging::process_name(), self.slot);
        let mut db = Resilient::connect(&self.url, self.max_retries, who)?;
        // What was passed on, in the order wal2json writes: a message at an LSN before a transaction that commits
        // there (wal2json gives a message the LSN where its record ends, which is where the next record starts).
        let mut seen = Seen::default();
        let mut advanced = Lsn(shared.confirmed.load(Ordering::Relaxed));
        let mut last_advance = Instant::now();
        let mut last_lag = Instant::now() - LAG_EVERY;
        let mut state = Decoding::default();
        // The changes are consumed from a temporary copy of the slot, which this session alone holds: consuming
        // moves it on, so nothing is decoded twice. The slot itself moves only to what is acknowledged; a crash
        // loses the copy with its session, and the next one starts from the slot.
        let reader = reader_slot(&self.slot);
        while !shared.stop.load(Ordering::Relaxed) {
            let target = Lsn(shared.advance_to.load(Ordering::Relaxed));
            // Advancing decodes the log from the slot's restart point: at most once a second.
            if target > advanced && last_advance.elapsed() >= ADVANCE_EVERY {
                last_advance = Instant::now();
                let moved = db.run(&|| "advancing the replication slot".to_string(), |conn| {
                    slot_client(conn).and_then(|c| slot::advance(c, &self.slot, target).map_err(Into::into))
                })?;
                moved.map_err(|source| Error::DbQuery { doing: "advancing the replication slot".into(), source })?;
                advanced = target;
                shared.confirmed.store(target.0, Ordering::Relaxed);
            }
            if last_lag.elapsed() >= LAG_EVERY {
                last_lag = Instant::now();
                let lag = db.run(&|| "reading the slot's lag".to_string(), |conn| {
                    slot_client(conn).and_then(|c| slot::lag_bytes(c, &self.slot).map_err(Into::into))
                })?;
                if let Ok(Some(bytes)) = lag {
                    shared.lag_bytes.store(bytes, Ordering::Relaxed);
                }
            }
            let limit = PEEK_ROWS;
            let (tables, prefix) = (&self.tables, &self.prefix);
            let peeked = db.run(&|| format!("reading the replication slot {}", self.slot), |conn| {
                let c = slot_client(conn)?;
                let flushed = slot::flushed(c)?;
                let get = |c: &mut postgres::Client| {
                    c.query(
                        "SELECT data FROM pg_logical_slot_get_changes($1, NULL, $2::int, 'format-version', '2', \
                         'include-lsn', '1', 'include-timestamp', '1', 'include-xids', '1', 'add-tables', $3, \
                         'add-msg-prefixes', $4)",
                        &[&reader, &(limit as i32), tables, prefix],
                    )
                };
                let rows = match get(c) {
                    // A new session (the first, or one after a reconnection) has no copy yet.
                    Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_OBJECT) => {
                        // The session holds the slot's lock while it follows: one instance follows a slot.
                        if !slot::lock(c, &self.slot)? {
                            return Err(format!(
                                "the replication slot {} is followed by another instance (one instance follows a \
                                 slot)",
                                self.slot
                            )
                            .into());
                        }
                        slot::copy_temporary(c, &self.slot, &reader)?;
                        get(c)?
                    }
                    got => got?,
                };
                Ok((flushed, rows))
            })?;
            let (flushed, rows) = peeked.map_err(|source| Error::DbQuery {
                doing: format!("reading the replication slot {}", self.slot),
                source,
            })?;
            let whole = (rows.len() as i64) < limit;
            let before = seen;
            for row in &rows {
                let data: &str = row.get(0);
                let Some(line) = wal2json::parse(data).map_err(|message| Error::DbSchema { message })? else {
                    continue;
                };
                log::trace!("wal: {:.300} (seen {seen}, skipping {})", data, state.skipping);
                match line {
                    Line::Begin { xid, commit, time, .. } => {
                        state.xid = xid;
                        state.skipping = Seen::commit(commit) <= seen;
                        state.time = time;
                        state.commit = commit;
                    }
                    Line::Change { .. } if state.skipping => {}
                    Line::Change { op, columns, identity } => {
                        state.pending.push(Pending::read(op, &columns, &identity)?);
                        if state.pending.len() >= RENDER_BATCH && !send_changes(&mut state, to) {
                            return Ok(());
                        }
                    }
                    Line::Commit { .. } if state.skipping => {}
                    Line::Commit { commit, end } => {
                        seen = Seen::commit(commit);
                        if !send_changes(&mut state, to)
                            || to.send(Step::Item(Item::Commit { end, xid: state.xid })).is_err()
                        {
                            return Ok(());
                        }
                    }
                    // A transactional message is its transaction's, passed on or skipped with it.
                    Line::Message { transactional: true, .. } if state.skipping => {}
                    Line::Message { transactional: false, lsn, .. } if Seen::message(lsn) <= seen => {}
                    Line::Message { lsn, prefix, content, transactional } => {
                        // In order with the transaction's changes: those before it go first.
                        if transactional && !send_changes(&mut state, to) {
                            return Ok(());
                        }
                        let item = (prefix == self.prefix).then(|| watermark(&content, lsn)).flatten();
                        if let Some(item) = item {
                            if to.send(Step::Item(item)).is_err() {
                                return Ok(());
                            }
                        }
                        if !transactional {
                            seen = Seen::message(lsn);
                            // Not past it: a transaction that commits right there is still to come.
                            let end = lsn;
                            if to.send(Step::Item(Item::Commit { end, xid: None })).is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            if whole && Seen::message(flushed) > seen {
                // Every transaction that committed before `flushed` was in this peek: none of them is left.
                seen = Seen::message(flushed);
                if to.send(Step::Item(Item::Reached(flushed))).is_err() {
                    return Ok(());
                }
            }
            if seen == before || Seen::message(flushed) <= seen {
                std::thread::sleep(IDLE);
            }
        }
        Ok(())
    }
}

/// What the reading thread hands the rendering one, in the log's order.
pub enum Step {
    Changes(Batch),
    Item(Item),
}

/// Changes of one transaction, still as wal2json's text.
pub struct Batch {
    pending: Vec<Pending>,
    commit: Lsn,
    time: String,
}

/// Hands the changes read so far to the rendering thread; false once it is gone.
fn send_changes(state: &mut Decoding, to: &Sender<Step>) -> bool {
    if state.pending.is_empty() {
        return true;
    }
    let batch = Batch { pending: std::mem::take(&mut state.pending), commit: state.commit, time: state.time.clone() };
    to.send(Step::Changes(batch)).is_ok()
}

/// The thread that writes changed rows as events, on its own connection, and passes everything on in order.
struct Renderer {
    url: TableUrl,
    schema: Schema,
    max_retries: u32,
}

impl Renderer {
    fn run(self, steps: crossbeam_channel::Receiver<Step>, to: Sender<Item>) {
        let who = format!("{} (writing changes)", crate::telemetry::logging::process_name());
        let mut db = match Resilient::connect(&self.url, self.max_retries, who) {
            Ok(db) => db,
            Err(e) => {
                let _ = to.send(Item::Failed(e));
                return;
            }
        };
        for step in steps {
            let went = match step {
                Step::Item(item) => to.send(item).is_ok(),
                Step::Changes(batch) => match self.render(&mut db, batch, &to) {
                    Ok(went) => went,
                    Err(e) => {
                        let _ = to.send(Item::Failed(e));
                        false
                    }
                },
            };
            if !went {
                return;
            }
        }
    }

    /// Writes a transaction's changes read so far as events, with one query, and sends them on; false once the
    /// source's main thread is gone.
    fn render(&self, db: &mut Resilient, batch: Batch, to: &Sender<Item>) -> Result<bool> {
        let Batch { pending, commit: lsn, time } = batch;
        let mut objects = String::from("[");
        for p in &pending {
            for o in [&p.new, &p.old].into_iter().flatten() {
                if objects.len() > 1 {
                    objects.push(',');
                }
                objects.push_str(o);
            }
        }
        objects.push(']');
        let schema = &self.schema;
        let mut rows: Vec<Row> = Vec::with_capacity(pending.len() * 2);
        let rendered = db.run(&|| format!("writing the changes of {} as events", schema.table), |conn| {
            rows.clear();
            conn.populated(schema, &objects, &mut rows)
        })?;
        rendered.map_err(|source| Error::DbQuery {
            doing: format!("writing the changes of {} as events", schema.table),
            source,
        })?;
        let mut rows = rows.into_iter();
        let fields = |op: Op, before: Option<&[u8]>| {
            let mut f = format!(
                "\"__op\":\"{}\",\"__lsn\":\"{lsn}\",\"__commit_time\":{}",
                op.code(),
                serde_json::to_string(&time).unwrap_or_default()
            );
            if let Some(before) = before {
                f.push_str(",\"__before\":");
                f.push_str(&String::from_utf8_lossy(before));
            }
            f
        };
        let mut out = Vec::new();
        for p in pending {
            let new = p.new.as_ref().and_then(|_| rows.next());
            let old = p.old.as_ref().and_then(|_| rows.next());
            let change = |op, key: Key, json: Vec<u8>| Change { op, key, json, lsn, time: time.clone() };
            match (p.op, new, old) {
                (Op::Delete, _, Some(old)) => {
                    let json = with_fields(only(&old.json, &p.old_names, schema), &fields(Op::Delete, None));
                    out.push(change(Op::Delete, old.key, json));
                }
                (op, Some(new), old) => {
                    let full_before = old.as_ref().filter(|_| p.old_names.len() > schema.key.len());
                    if let Some(old) = old.as_ref().filter(|o| o.key != new.key) {
                        // The key changed: the old one is deleted, as Debezium does.
                        let json = with_fields(only(&old.json, &p.old_names, schema), &fields(Op::Delete, None));
                        out.push(change(Op::Delete, old.key.clone(), json));
                    }
                    let every_column = schema.columns.iter().all(|c| p.new_names.contains(&c.name));
                    let body = match (every_column, full_before) {
                        (true, _) => new.json,
                        // An unchanged TOASTed value is not in the change, but the old row has it whole.
                        (false, Some(old)) => merged(&new.json, &p.new_names, &old.json, schema),
                        // Without the old row, what is not in the change is not written rather than set to NULL.
                        (false, None) => only(&new.json, &p.new_names, schema),
                    };
                    let json = with_fields(body, &fields(op, full_before.map(|o| o.json.as_slice())));
                    out.push(change(op, new.key, json));
                }
                _ => {}
            }
        }
        Ok(out.into_iter().all(|c| to.send(Item::Change(c)).is_ok()))
    }
}

fn slot_client(conn: &mut crate::sql::Conn) -> Result<&mut postgres::Client, crate::sql::DbError> {
    match conn {
        crate::sql::Conn::Postgres(c) => Ok(c),
        _ => Err("--follow reads PostgreSQL only".into()),
    }
}

/// How far the stream was passed on: an LSN, and whether a transaction that committed there was too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Seen(Lsn, bool);

impl Seen {
    fn message(at: Lsn) -> Seen {
        Seen(at, false)
    }

    fn commit(at: Lsn) -> Seen {
        Seen(at, true)
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.0, if self.1 { " (its commit)" } else { "" })
    }
}

/// The temporary copy of `slot` this process reads: its name, with the process's id.
fn reader_slot(slot: &str) -> String {
    let pid = std::process::id().to_string();
    let keep = slot.len().min(62 - pid.len());
    format!("{}_{pid}", &slot[..keep])
}

/// A watermark's content: `L EPOCH PAGE` or `H EPOCH PAGE`.
pub fn watermark_content(high: bool, token: Token) -> String {
    format!("{} {} {}", if high { "H" } else { "L" }, token.0, token.1)
}

fn watermark(content: &str, lsn: Lsn) -> Option<Item> {
    let mut parts = content.split(' ');
    let (kind, epoch, page) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    match kind {
        "L" => Some(Item::Low { token: (epoch, page), lsn }),
        "H" => Some(Item::High { token: (epoch, page), lsn }),
        _ => None,
    }
}

/// Where decoding stands inside the current transaction.
#[derive(Default)]
struct Decoding {
    /// The transaction was passed on by an earlier read (of an earlier copy).
    skipping: bool,
    xid: Option<u32>,
    commit: Lsn,
    time: String,
    pending: Vec<Pending>,
}

/// A change read, its rows still as wal2json's text.
struct Pending {
    op: Op,
    /// The new row, as an object for `json_populate_recordset`.
    new: Option<String>,
    new_names: Vec<String>,
    old: Option<String>,
    old_names: Vec<String>,
}

impl Pending {
    fn read(op: Op, columns: &[wal2json::Column<'_>], identity: &[wal2json::Column<'_>]) -> Result<Pending> {
        let object = |cols: &[wal2json::Column<'_>]| -> Result<Option<String>> {
            if cols.is_empty() {
                return Ok(None);
            }
            let mut o = String::from("{");
            for (i, c) in cols.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                let value: Box<RawValue> =
                    wal2json::populate_value(c).map_err(|message| Error::DbSchema { message })?;
                o.push_str(&serde_json::to_string(&c.name).unwrap_or_default());
                o.push(':');
                o.push_str(value.get());
            }
            o.push('}');
            Ok(Some(o))
        };
        Ok(Pending {
            op,
            new: object(columns)?,
            new_names: columns.iter().map(|c| c.name.clone()).collect(),
            old: object(identity)?,
            old_names: identity.iter().map(|c| c.name.clone()).collect(),
        })
    }
}

/// The object `json` with only the fields named in `names`, in the schema's order; values untouched.
fn only(json: &[u8], names: &[String], schema: &Schema) -> Vec<u8> {
    pick(json, names, None, schema)
}

/// The new row's fields named in `names`, and the old row's for the rest, in the schema's order; values untouched.
fn merged(new: &[u8], names: &[String], old: &[u8], schema: &Schema) -> Vec<u8> {
    pick(new, names, Some(old), schema)
}

/// The fields of `new` named in `names`, and those of `old` (if given) for the other columns, in the schema's order.
/// An object that does not parse is left as it is.
fn pick(new: &[u8], names: &[String], old: Option<&[u8]>, schema: &Schema) -> Vec<u8> {
    type Fields<'a> = std::collections::HashMap<String, &'a RawValue>;
    let Ok(new_map) = serde_json::from_slice::<Fields<'_>>(new) else { return new.to_vec() };
    let old_map = old.and_then(|o| serde_json::from_slice::<Fields<'_>>(o).ok()).unwrap_or_default();
    let mut out = Vec::with_capacity(new.len() + old.map_or(0, <[u8]>::len));
    out.push(b'{');
    for c in &schema.columns {
        let value = match names.contains(&c.name) {
            true => new_map.get(&c.name),
            false => old_map.get(&c.name),
        };
        if let Some(v) = value {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(serde_json::to_string(&c.name).unwrap_or_default().as_bytes());
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    out.push(b'}');
    out
}

/// `json` (an object) with `fields` (`"name":value,...`) added at its end.
pub fn with_fields(mut json: Vec<u8>, fields: &str) -> Vec<u8> {
    if json.last() != Some(&b'}') {
        return json;
    }
    json.pop();
    if json.len() > 1 {
        json.push(b',');
    }
    json.extend_from_slice(fields.as_bytes());
    json.push(b'}');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_keeps_its_own_columns_and_takes_the_rest_from_the_old_row_only_when_it_has_one() {
        let column =
            |name: &str| crate::sql::Column { name: name.into(), binary: false, json: false, type_name: "text".into() };
        let schema = Schema {
            table: crate::sql::url::TableName { schema: None, name: "t".into() },
            columns: vec![column("id"), column("big"), column("n")],
            key: vec![],
        };
        let names = vec!["id".to_string(), "n".to_string()];
        let new = br#"{"id":1,"big":null,"n":12345678901234567890.5}"#;
        assert_eq!(only(new, &names, &schema), br#"{"id":1,"n":12345678901234567890.5}"#.to_vec());
        let old = br#"{"id":1,"big":"a long text","n":1}"#;
        assert_eq!(
            merged(new, &names, old, &schema),
            br#"{"id":1,"big":"a long text","n":12345678901234567890.5}"#.to_vec()
        );
    }

    #[test]
    fn change_fields_are_added_to_any_object() {
        assert_eq!(with_fields(b"{\"a\":1}".to_vec(), "\"__op\":\"c\""), b"{\"a\":1,\"__op\":\"c\"}");
        assert_eq!(with_fields(b"{}".to_vec(), "\"__op\":\"d\""), b"{\"__op\":\"d\"}");
    }

    #[test]
    fn a_transaction_that_commits_where_a_message_ends_is_not_taken_for_passed() {
        let message = Seen::message(Lsn(0x24B13E0));
        assert!(Seen::commit(Lsn(0x24B13E0)) > message, "wal2json gives both the same LSN");
        assert!(Seen::commit(Lsn(0x24B13DF)) <= message);
        assert!(Seen::message(Lsn(0x24B13E0)) <= Seen::commit(Lsn(0x24B13E0)));
    }

    #[test]
    fn watermarks_read_back_as_written() {
        let l = watermark(&watermark_content(false, (17, 3)), Lsn(9));
        assert!(matches!(l, Some(Item::Low { token: (17, 3), lsn: Lsn(9) })));
        let h = watermark(&watermark_content(true, (17, 3)), Lsn(10));
        assert!(matches!(h, Some(Item::High { token: (17, 3), .. })));
        assert!(watermark("X 1 2", Lsn(1)).is_none());
    }
}
