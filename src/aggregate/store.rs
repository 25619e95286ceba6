//! The aggregation's state on disk: a SQLite file under `--state-dir`. One transaction holds the open windows, each
//! lane's last applied position and watermark, and the outputs not yet acknowledged, so that the state and the
//! positions it covers are always saved together.

use super::windows::{KeyWindows, Win};
use super::{Applied, Out};
use crate::config::aggregate::Named;
use crate::error::{Error, Result};
use crate::position::{Lane, Position};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What taking the store failed at when another process holds it.
pub const IN_USE: &str = "taking it (is another pipeline with the same source, group and --state-dir running?)";

/// What a previous run saved.
#[derive(Debug, Default)]
pub struct Restored {
    pub watermark: Option<i64>,
    pub next_seq: i64,
    pub lanes: Vec<(Lane, Applied, Option<i64>)>,
    pub windows: Vec<(String, KeyWindows)>,
    pub pending: BTreeMap<(Position, u32), Out>,
}

/// What changed since the last save.
pub struct Changes<'a> {
    pub watermark: Option<i64>,
    pub next_seq: i64,
    pub lanes: Vec<(Lane, &'a Applied, Option<i64>)>,
    /// A key's windows now (none: it holds none any more).
    pub keys: Vec<(&'a str, Option<&'a KeyWindows>)>,
    pub added: Vec<(&'a (Position, u32), &'a Out)>,
    pub removed: Vec<(Position, u32)>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS lanes (lane INTEGER PRIMARY KEY, seq INTEGER NOT NULL, key BLOB, mark INTEGER);
    CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, windows TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS pending (lane INTEGER NOT NULL, seq INTEGER NOT NULL, n INTEGER NOT NULL,
        key BLOB, payload BLOB NOT NULL, timestamp INTEGER, dead_letter TEXT, PRIMARY KEY (lane, seq, n));
";

impl Store {
    /// Opens (or creates) the store and reads what it holds; a store made by another aggregation is refused.
    /// `reset`: start afresh (a table scan started over), emptying the store once this process holds it.
    pub fn open(path: &Path, fingerprint: &str, aggs: &[Named], reset: bool) -> Result<(Store, Restored)> {
        let shown = path.display().to_string();
        let fail = |doing: &'static str| {
            let path = shown.clone();
            // Busy or locked: another process holds the file.
            move |source: rusqlite::Error| {
                let held = matches!(
                    source.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                );
                Error::State { path, doing: if held { IN_USE } else { doing }, source }
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::State {
                path: shown.clone(),
                doing: "creating its directory",
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let conn = Connection::open(path).map_err(fail("opening"))?;
        // Durable at each commit: an input is acknowledged only once the state that holds it is on disk.
        // A cache that holds the state's pages (16 MiB: a million small windows' worth of index), so that a save
        // neither reads pages back nor spills them half-way through its transaction.
        // Exclusive: the first write takes the file for this process's life, so that two pipelines given the same
        // state directory, source and group cannot both write one state.
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA cache_size = -16384;",
        )
        .map_err(fail("setting up"))?;
        conn.execute_batch(SCHEMA).map_err(fail("creating its tables"))?;
        if reset {
            conn.execute_batch("DELETE FROM meta; DELETE FROM lanes; DELETE FROM state; DELETE FROM pending;")
                .map_err(fail("emptying it for a new scan"))?;
        }
        let saved: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE name = 'fingerprint'", [], |r| r.get(0))
            .optional()
            .map_err(fail("reading"))?;
        match saved {
            Some(saved) if saved != fingerprint => return Err(Error::StateMismatch { path: shown, saved }),
            Some(_) => {}
            None => {
                conn.execute("INSERT INTO meta VALUES ('fingerprint', ?1)", [fingerprint]).map_err(fail("writing"))?;
            }
        }
        let mut restored = Restored::default();
        let meta = |name: &str| -> Result<Option<i64>> {
            let v: Option<String> = conn
                .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(fail("reading"))?;
            Ok(v.and_then(|v| v.parse().ok()))
        };
        restored.watermark = meta("watermark")?;
        restored.next_seq = meta("next_seq")?.unwrap_or(0);
        {
            let mut q = conn.prepare("SELECT lane, seq, key, mark FROM lanes").map_err(fail("reading"))?;
            let rows = q
                .query_map([], |r| Ok((r.get(0)?, Applied { seq: r.get(1)?, key: r.get(2)? }, r.get(3)?)))
                .map_err(fail("reading"))?;
            for row in rows {
                restored.lanes.push(row.map_err(fail("reading"))?);
            }
            let mut q = conn.prepare("SELECT key, windows FROM state").map_err(fail("reading"))?;
            let rows =
                q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(fail("reading"))?;
            for row in rows {
                let (key, windows) = row.map_err(fail("reading"))?;
                let windows = decode(aggs, &windows).ok_or_else(|| Error::StateMismatch {
                    path: shown.clone(),
                    saved: format!("windows of key {key} that this build cannot read"),
                })?;
                restored.windows.push((key, windows));
            }
            let mut q = conn
                .prepare("SELECT lane, seq, n, key, payload, timestamp, dead_letter FROM pending")
                .map_err(fail("reading"))?;
            let rows = q
                .query_map([], |r| {
                    let at = Position::new(r.get(0)?, r.get(1)?);
                    let out = Out { key: r.get(3)?, payload: r.get(4)?, timestamp: r.get(5)?, dead_letter: r.get(6)? };
                    Ok(((at, r.get(2)?), out))
                })
                .map_err(fail("reading"))?;
            for row in rows {
                let (k, out) = row.map_err(fail("reading"))?;
                restored.pending.insert(k, out);
            }
        }
        Ok((Store { conn, path: path.to_path_buf() }, restored))
    }

    /// Saves the changes in one transaction.
    pub fn save(&mut self, changes: Changes<'_>) -> Result<()> {
        let path = self.path.display().to_string();
        let fail = |source| Error::State { path: path.clone(), doing: "saving", source };
        let tx = self.conn.transaction().map_err(fail)?;
        {
            // One row per key, all its windows in it: a checkpoint writes a row per key that changed.
            let mut drop_key = tx.prepare_cached("DELETE FROM state WHERE key = ?1").map_err(fail)?;
            let mut put = tx.prepare_cached("INSERT OR REPLACE INTO state VALUES (?1, ?2)").map_err(fail)?;
            let mut text = String::new();
            for (key, windows) in &changes.keys {
                match windows {
                    Some(w) if !w.is_empty() => {
                        encode(w, &mut text);
                        put.execute(params![key, text]).map_err(fail)?;
                    }
                    _ => {
                        drop_key.execute([key]).map_err(fail)?;
                    }
                }
            }
            let mut lane = tx.prepare_cached("INSERT OR REPLACE INTO lanes VALUES (?1, ?2, ?3, ?4)").map_err(fail)?;
            for (l, applied, mark) in &changes.lanes {
                lane.execute(params![l, applied.seq, applied.key, mark]).map_err(fail)?;
            }
            let mut add = tx
                .prepare_cached("INSERT OR REPLACE INTO pending VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .map_err(fail)?;
            for ((at, n), out) in &changes.added {
                add.execute(params![at.lane, at.seq, n, out.key, out.payload, out.timestamp, out.dead_letter])
                    .map_err(fail)?;
            }
            let mut remove =
                tx.prepare_cached("DELETE FROM pending WHERE lane = ?1 AND seq = ?2 AND n = ?3").map_err(fail)?;
            for (at, n) in &changes.removed {
                remove.execute(params![at.lane, at.seq, n]).map_err(fail)?;
            }
            let mut meta = tx.prepare_cached("INSERT OR REPLACE INTO meta VALUES (?1, ?2)").map_err(fail)?;
            if let Some(w) = changes.watermark {
                meta.execute(params!["watermark", w.to_string()]).map_err(fail)?;
            }
            meta.execute(params!["next_seq", changes.next_seq.to_string()]).map_err(fail)?;
        }
        tx.commit().map_err(fail)
    }

    /// The bytes the state takes on disk: the file and its write-ahead log.
    pub fn bytes(&self) -> u64 {
        let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        size(self.path.clone()) + size(PathBuf::from(wal))
    }
}

/// A key's windows as `[[start, end, [acc, ...]], ...]`.
fn encode(windows: &KeyWindows, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    out.push('[');
    for (i, (start, w)) in windows.iter().enumerate() {
        let _ = write!(out, "{}[{start},{},[", if i > 0 { "," } else { "" }, w.end);
        for (j, acc) in w.accs.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            acc.save_into(out);
        }
        out.push_str("]]");
    }
    out.push(']');
}

fn decode(aggs: &[Named], text: &str) -> Option<KeyWindows> {
    let saved: Vec<(i64, i64, Vec<serde_json::Value>)> = serde_json::from_str(text).ok()?;
    let mut windows = Vec::with_capacity(saved.len());
    for (start, end, accs) in saved {
        if accs.len() != aggs.len() {
            return None;
        }
        let accs = aggs.iter().zip(&accs).map(|(n, v)| super::acc::Acc::load(&n.agg, v)).collect::<Option<_>>()?;
        windows.push((start, Win { end, accs }));
    }
    Some(windows)
}
