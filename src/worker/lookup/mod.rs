//! `--lookup`: stream–table joins. jq reads a lookup as `lookup("NAME"; KEY)`, which gives the row with that key as
//! an object, or null.
//!
//! A table lookup is fetched a batch at a time: the transform runs over a slice of events with what the cache holds,
//! and each key it missed is noted (the call gives null meanwhile). The missed keys are then fetched in one statement
//! per lookup (`WHERE key IN (...)`), kept for the slice, and the slice runs again, every output of the first run
//! dropped. jq has no side effects, so the second run gives what one run with every row at hand would have. A key
//! that only a fetched row reveals (a lookup of a lookup) costs one more round. Rows stay in the worker's cache for
//! `--lookup-ttl`, at most `--lookup-cache-rows` of them.
//!
//! A compacted topic is held whole, as Kafka Streams' KTable is: read to its end before the worker says it is ready,
//! then followed on a thread of its own ([`topic`]).
//!
//! The state is per worker process, on the thread that runs the transform: jaq's native functions are plain
//! function pointers, and its values are not `Send`.

pub mod cache;
pub mod topic;

use crate::channel::batch::Record;
use crate::config::lookups::{LookupDef, LookupTarget};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sql::key::{Key, KeyKind, Part};
use crate::sql::{Access, Resilient, Row, Schema};
use crate::telemetry::events::{emit, LookupsDone};
use crate::worker::transform::{Outputs, Transform};
use cache::Cache;
use jaq_json::Val;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

thread_local! {
    static LOOKUPS: RefCell<Option<Lookups>> = const { RefCell::new(None) };
}

struct Lookups {
    each: Vec<Lookup>,
    /// Inside [`Fetching`]: a miss is fetched and its event run again. Outside it (`--route`, `--output-key`) a
    /// miss could only be a silent null, so `lookup()` is refused there.
    fetching: bool,
    /// Running events again: their hits were counted the first time.
    rerun: bool,
    /// Keys a run missed, by lookup: fetched before the slice runs again.
    missed: Vec<Vec<Key>>,
    hits: u64,
    misses: u64,
}

struct Lookup {
    name: String,
    source: Source,
}

enum Source {
    Table(Box<TableLookup>),
    Topic(Arc<topic::Followed>),
}

struct TableLookup {
    conn: Resilient,
    schema: Schema,
    cache: Cache<Key, Val>,
    /// What this slice fetched: kept until the slice is done whatever the cache lets go.
    fetched: HashMap<Key, Option<Val>>,
}

/// Connects to every `--lookup` (a table's schema checked, a topic read to its end) and makes them what `lookup()`
/// reads on this thread. Nothing to do without `--lookup`.
pub fn install(cfg: &Config) -> Result<()> {
    if cfg.lookups.is_empty() {
        return Ok(());
    }
    let mut each = Vec::new();
    for LookupDef { name, target } in &cfg.lookups {
        let source = match target {
            LookupTarget::Table(url) => {
                let mut conn = Resilient::connect(url, cfg.max_retries, format!("lookup {name}"))?;
                let schema = conn.conn()?.schema(url, Access::Read).map_err(|e| match e {
                    Error::DbSchema { message } => Error::DbSchema { message: format!("--lookup {name}: {message}") },
                    other => other,
                })?;
                let cache = Cache::new(cfg.lookup_cache_rows as usize, cfg.lookup_ttl);
                Source::Table(Box::new(TableLookup { conn, schema, cache, fetched: HashMap::new() }))
            }
            LookupTarget::Topic(topic) => Source::Topic(topic::follow(cfg, name, topic)?),
        };
        each.push(Lookup { name: name.clone(), source });
    }
    let missed = vec![Vec::new(); each.len()];
    let lookups = Lookups { each, fetching: false, rerun: false, missed, hits: 0, misses: 0 };
    LOOKUPS.with(|l| *l.borrow_mut() = Some(lookups));
    Ok(())
}

/// `lookup(NAME; KEY)`: the row, null when there is none, or (a table's row not at hand yet) null and the key noted
/// for the next fetch.
pub fn lookup(name: &Val, key: &Val) -> std::result::Result<Val, String> {
    let Val::Str(name) = name else {
        return Err(format!("lookup(NAME; KEY): NAME must be a string, not {name}"));
    };
    LOOKUPS.with(|l| {
        let mut l = l.borrow_mut();
        let Some(l) = l.as_mut() else {
            return Err(format!("lookup({name:?}; ...): no --lookup is named {name:?} (none is given)"));
        };
        if !l.fetching {
            return Err(format!(
                "lookup({name:?}; ...) is read by the --jq filter only, not by --route, --output-key or --aggregate: \
                 add the row to the event in --jq"
            ));
        }
        let hit = u64::from(!l.rerun);
        let Some(i) = l.each.iter().position(|x| x.name.as_str() == name.as_str()) else {
            let names: Vec<&str> = l.each.iter().map(|x| x.name.as_str()).collect();
            return Err(format!(
                "lookup({name:?}; ...): no --lookup is named {name:?} (the lookups: {})",
                names.join(", ")
            ));
        };
        match &mut l.each[i].source {
            Source::Topic(followed) => {
                l.hits += hit;
                Ok(followed
                    .get(&topic_key(key))
                    .map_or(Val::Null, |row| crate::worker::transform::jq::parse(&row).unwrap_or(Val::Null)))
            }
            Source::Table(t) => {
                let Some(k) = key_of(&t.schema, key) else {
                    // No row can have it (text for an integer key, the wrong number of parts).
                    l.hits += hit;
                    return Ok(Val::Null);
                };
                if let Some(row) = t.fetched.get(&k) {
                    return Ok(row.clone().unwrap_or(Val::Null));
                }
                if let Some(row) = t.cache.get(&k, Instant::now()) {
                    l.hits += hit;
                    return Ok(row.unwrap_or(Val::Null));
                }
                l.misses += 1;
                l.missed[i].push(k);
                Ok(Val::Null)
            }
        }
    })
}

/// The message key a topic's row is found by: a string's bytes, any other value's compact JSON.
fn topic_key(key: &Val) -> Vec<u8> {
    match key {
        Val::Str(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

/// KEY as the table's key: for an integer column an integer (or a string of one), for any other its text; for a key
/// of several columns an array of them in order. `None`: no row can have it.
fn key_of(schema: &Schema, key: &Val) -> Option<Key> {
    let values: Vec<&Val> = match (schema.key.len(), key) {
        (1, v) => vec![v],
        (n, Val::Arr(parts)) if parts.len() == n => parts.iter().collect(),
        _ => return None,
    };
    let mut parts = Vec::with_capacity(values.len());
    for (column, v) in schema.key.iter().zip(values) {
        parts.push(match (column.kind, v) {
            (KeyKind::Int, Val::Int(i)) => Part::Int(*i as i64),
            (KeyKind::Int, Val::Num(n)) => Part::Int(n.parse::<i64>().ok()?),
            (KeyKind::Int, Val::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Part::Int(*f as i64),
            (KeyKind::Int, Val::Str(s)) => Part::Int(s.trim().parse().ok()?),
            (KeyKind::Text, Val::Str(s)) => Part::Text(s.to_string()),
            (KeyKind::Text, Val::Null) | (KeyKind::Int, _) => return None,
            (KeyKind::Text, other) => Part::Text(other.to_string()),
        });
    }
    Some(Key(parts))
}

/// Fetches every key the last run missed, one statement per lookup; false when nothing was missed.
fn fetch_missed() -> Result<bool> {
    LOOKUPS.with(|l| {
        let mut l = l.borrow_mut();
        let Some(l) = l.as_mut() else { return Ok(false) };
        let mut any = false;
        for (lookup, missed) in l.each.iter_mut().zip(&mut l.missed) {
            let Source::Table(t) = &mut lookup.source else { continue };
            if missed.is_empty() {
                continue;
            }
            any = true;
            missed.sort_unstable();
            missed.dedup();
            let mut rows: Vec<Row> = Vec::new();
            // Parameters are bounded per statement on every engine (PostgreSQL's 65535, SQLite's 32766).
            for keys in missed.chunks(1000) {
                rows.clear();
                fetch(t, &lookup.name, keys, &mut rows)?;
                let now = Instant::now();
                let mut found: HashMap<Key, Val> = HashMap::with_capacity(rows.len());
                for row in rows.drain(..) {
                    found.entry(row.key).or_insert(parse_row(&lookup.name, &row.json)?);
                }
                // A row the database found for a key it holds otherwise (a case-insensitive collation, a uuid in
                // capitals) is not that key's by equality here: such keys are asked for one at a time.
                let unmatched = found.len() > keys.iter().filter(|k| found.contains_key(k)).count();
                for k in keys {
                    let mut row = found.get(k).cloned();
                    if row.is_none() && unmatched {
                        let mut one = Vec::new();
                        fetch(t, &lookup.name, std::slice::from_ref(k), &mut one)?;
                        row = one.first().map(|r| parse_row(&lookup.name, &r.json)).transpose()?;
                    }
                    t.cache.put(k.clone(), row.clone(), now);
                    t.fetched.insert(k.clone(), row);
                }
            }
            missed.clear();
        }
        Ok(any)
    })
}

/// A fetched row as a jq value.
fn parse_row(name: &str, json: &[u8]) -> Result<Val> {
    crate::worker::transform::jq::parse(json)
        .map_err(|e| Error::DbSchema { message: format!("--lookup {name}: a row is not JSON: {e}") })
}

/// The rows of `keys`, retried while the database is away. A key the database refuses (text that is no uuid for a
/// uuid key) fails the whole statement: the keys are then asked for in halves, and one refused alone is taken as
/// having no row, so that one odd key gives its events null rather than stop the worker.
fn fetch(t: &mut TableLookup, name: &str, keys: &[Key], rows: &mut Vec<Row>) -> Result<()> {
    let doing = || format!("looking up {} keys in {} (--lookup {name})", keys.len(), t.schema.table);
    let (schema, conn) = (&t.schema, &mut t.conn);
    let mut got = Vec::new();
    let fetched = conn.run(&doing, |c| {
        got.clear();
        c.rows_with_keys(schema, keys, &mut got)
    })?;
    match fetched {
        Ok(()) => rows.append(&mut got),
        Err(e) if keys.len() == 1 => log::warn!(
            "--lookup {name}: {} refused a key, which is taken as having no row: {}",
            t.schema.table,
            crate::error::db_message(e.as_ref())
        ),
        Err(_) => {
            let (a, b) = keys.split_at(keys.len() / 2);
            fetch(t, name, a, rows)?;
            fetch(t, name, b, rows)?;
        }
    }
    Ok(())
}

/// The slice is done: what it fetched goes back to being only in the cache; the counts are told.
fn slice_done() {
    LOOKUPS.with(|l| {
        if let Some(l) = l.borrow_mut().as_mut() {
            for lookup in &mut l.each {
                if let Source::Table(t) = &mut lookup.source {
                    t.fetched.clear();
                }
            }
            emit(LookupsDone { hits: std::mem::take(&mut l.hits), misses: std::mem::take(&mut l.misses) });
        }
    });
}

/// Whether this thread has lookups installed.
pub fn installed() -> bool {
    LOOKUPS.with(|l| l.borrow().is_some())
}

/// Changes this thread's lookups, if any.
fn set(change: impl FnOnce(&mut Lookups)) {
    LOOKUPS.with(|l| {
        if let Some(l) = l.borrow_mut().as_mut() {
            change(l);
        }
    });
}

/// Keys noted for fetching so far on this thread: an event that adds to it missed a row.
fn missed_so_far() -> usize {
    LOOKUPS.with(|l| l.borrow().as_ref().map_or(0, |l| l.missed.iter().map(Vec::len).sum()))
}

/// The transform with its lookups fetched a batch at a time: runs the slice event by event with the rows at hand,
/// fetches every row the events missed, and runs again only the events that missed one, keeping the others' outputs.
pub struct Fetching<T: ?Sized>(pub Box<T>);

/// Rounds of fetching per slice before the rows still missing are taken as missing: a lookup of a lookup of ... ends.
const ROUNDS: usize = 8;

impl<T: Transform + ?Sized> Transform for Fetching<T> {
    fn run(&mut self, batch: &[Record<'_>], out: &mut Outputs) -> Result<()> {
        set(|l| (l.fetching, l.rerun) = (true, false));
        let ran = self.run_fetching(batch, out);
        set(|l| l.fetching = false);
        slice_done();
        ran
    }

    fn finish(&mut self) {
        self.0.finish();
    }
}

impl<T: Transform + ?Sized> Fetching<T> {
    fn run_fetching(&mut self, batch: &[Record<'_>], out: &mut Outputs) -> Result<()> {
        let mut again: Vec<usize> = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let before = missed_so_far();
            self.0.run(std::slice::from_ref(record), out)?;
            if missed_so_far() > before {
                again.push(i);
            }
        }
        let mut round = 0;
        while !again.is_empty() && fetch_missed()? {
            round += 1;
            set(|l| l.rerun = true);
            // The events that missed a row run again, now with it; every other event's outputs are kept as they are.
            let mut fresh = Outputs::default();
            let mut next = Vec::new();
            let mut redo = again.iter().peekable();
            for (i, (record, verdict)) in batch.iter().zip(out.verdicts()).enumerate() {
                if redo.next_if(|&&r| r == i).is_none() {
                    fresh.copy(out, verdict);
                    continue;
                }
                let before = missed_so_far();
                self.0.run(std::slice::from_ref(record), &mut fresh)?;
                if missed_so_far() > before {
                    next.push(i);
                }
            }
            *out = fresh;
            again = if round < ROUNDS { next } else { Vec::new() };
            if round == ROUNDS {
                // What is still missing is taken as missing: drop the keys noted.
                LOOKUPS.with(|l| l.borrow_mut().as_mut().map(|l| l.missed.iter_mut().for_each(Vec::clear)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::KeyColumn;

    fn schema(kinds: &[KeyKind]) -> Schema {
        let key = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| KeyColumn { name: format!("k{i}"), kind, type_name: "x".into() })
            .collect();
        Schema { table: crate::sql::url::TableName { schema: None, name: "t".into() }, columns: vec![], key }
    }

    fn val(json: &str) -> Val {
        Val::from(serde_json::from_str::<serde_json::Value>(json).unwrap())
    }

    /// A SQLite table of customers, installed as the lookup "c" on this thread.
    fn customers(dir: &std::path::Path) -> rusqlite::Connection {
        let path = dir.join("c.db");
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, tier TEXT);").unwrap();
        for i in 0..50 {
            db.execute(
                "INSERT INTO customers VALUES (?1, ?2, ?3)",
                (i, format!("n{i}"), if i % 2 == 0 { "gold" } else { "tin" }),
            )
            .unwrap();
        }
        let args = ["supervisor", "--jq", ".", "--lookup", &format!("c=sqlite:{}?table=customers", path.display())];
        let cli = crate::config::Cli::load(args.iter().map(Into::into).collect()).unwrap_or_else(|_| panic!("refused"));
        install(&Config::from_cli(&cli)).unwrap();
        db
    }

    fn run(filter: &str, payloads: &[&str]) -> Vec<Vec<String>> {
        use crate::config::JqSpec;
        use crate::worker::transform::{jq, Verdict};
        let spec = JqSpec { filter: filter.into(), file: None, hmac_key: None, hmac_key_file: None };
        let inner: Box<dyn Transform> = Box::new(jq::Jq::compile(&spec, jq::MetaSource::Topic("t".into())).unwrap());
        let mut t = Fetching(inner);
        let records: Vec<Record<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Record {
                at: crate::position::Position::new(0, i as i64),
                timestamp: None,
                key: None,
                headers: vec![],
                payload: Some(serde_bytes::Bytes::new(p.as_bytes())),
                dead_letter: None,
                topic: None,
                outputs: 1,
            })
            .collect();
        let mut out = Outputs::default();
        t.run(&records, &mut out).unwrap();
        out.verdicts()
            .iter()
            .map(|v| match v {
                Verdict::Outputs(r) => r.clone().map(|i| String::from_utf8(out.output(i).to_vec()).unwrap()).collect(),
                Verdict::Rejected(why) => vec![format!("rejected: {why}")],
            })
            .collect()
    }

    #[test]
    fn a_slice_is_joined_with_one_fetch_and_then_from_the_cache() {
        let dir = std::env::temp_dir().join(format!("lookup-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = customers(&dir);
        let filter = r#".customer = (lookup("c"; .id) | if . then {name, tier} else null end) | .tier = ((.customer // {}).tier // "none")"#;
        let got = run(filter, &[r#"{"id": 2}"#, r#"{"id": 3}"#, r#"{"id": 99}"#, r#"{"id": "2"}"#]);
        assert_eq!(got[0], [r#"{"id":2,"customer":{"name":"n2","tier":"gold"},"tier":"gold"}"#]);
        assert_eq!(got[1], [r#"{"id":3,"customer":{"name":"n3","tier":"tin"},"tier":"tin"}"#]);
        assert_eq!(got[2], [r#"{"id":99,"customer":null,"tier":"none"}"#], "no such row: null");
        assert_eq!(got[3][0], r#"{"id":"2","customer":{"name":"n2","tier":"gold"},"tier":"gold"}"#);
        // From the cache now: a changed row is seen only after the TTL (60 s here).
        db.execute("UPDATE customers SET tier = 'lead' WHERE id = 2", ()).unwrap();
        assert!(run(filter, &[r#"{"id": 2}"#])[0][0].contains("gold"));
        // A lookup of a lookup: the second key is known only once the first row is fetched.
        let got = run(r#"lookup("c"; lookup("c"; .id).name | ltrimstr("n") | tonumber + 1).name"#, &[r#"{"id": 4}"#]);
        assert_eq!(got[0], ["\"n5\""]);
        // Outside the --jq filter (a --route, an --output-key) a miss could only be a silent null: refused.
        let e = lookup(&Val::from("c".to_string()), &val("2")).unwrap_err();
        assert!(e.contains("read by the --jq filter only"), "{e}");
        let got = run(r#"lookup("nope"; 1)"#, &["{}"]);
        assert!(got[0][0].starts_with("rejected: the jq filter failed: lookup(\"nope\"; ...): no --lookup"), "{got:?}");
    }

    #[test]
    fn a_key_is_read_as_its_column_holds_it() {
        let int = schema(&[KeyKind::Int]);
        assert_eq!(key_of(&int, &val("7")), Some(Key(vec![Part::Int(7)])));
        assert_eq!(key_of(&int, &val("\"7\"")), Some(Key(vec![Part::Int(7)])), "a string of digits");
        assert_eq!(key_of(&int, &val("\"x\"")), None, "no integer row has it");
        assert_eq!(key_of(&int, &val("7.5")), None);
        let text = schema(&[KeyKind::Text]);
        assert_eq!(key_of(&text, &val("\"c1\"")), Some(Key(vec![Part::Text("c1".into())])));
        assert_eq!(key_of(&text, &val("7")), Some(Key(vec![Part::Text("7".into())])));
        assert_eq!(key_of(&text, &val("null")), None);
        let two = schema(&[KeyKind::Text, KeyKind::Int]);
        assert_eq!(key_of(&two, &val("[\"a\", 1]")), Some(Key(vec![Part::Text("a".into()), Part::Int(1)])));
        assert_eq!(key_of(&two, &val("\"a\"")), None, "a key of two columns is an array of two");
    }
}
