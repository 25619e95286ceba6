//! The checkpoint store: a scan's plan (its chunks) and, per chunk, the key up to which every row was acknowledged
//! by the sink, and whether the chunk is finished. A SQLite file, written in WAL mode with full sync, so that what
//! it says survives `kill -9` and a power cut. A row is re-read after a crash only if it was read and not yet
//! checkpointed: at-least-once, and an upserting sink makes the replay harmless.

use super::chunks::Range;
use crate::error::{Error, Result};
use crate::sql::key::Key;
use crate::sql::url::TableUrl;
use rusqlite::{params, Connection, OptionalExtension};

/// A chunk as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: i32,
    pub range: Range,
    /// Every row up to this key is acknowledged: reading resumes after it.
    pub done_upto: Option<Key>,
    pub finished: bool,
    /// Rows acknowledged in this chunk, across runs.
    pub rows: u64,
}

impl Chunk {
    /// Where reading resumes: after the checkpoint, or after the lower bound.
    pub fn resume_after(&self) -> Option<&Key> {
        self.done_upto.as_ref().or(self.range.lo.as_ref())
    }
}

pub struct Store {
    conn: Connection,
    scan: String,
}

fn failed(doing: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Checkpoint { doing: doing.to_string(), source: e.into() }
}

impl Store {
    /// Opens (creating them if needed) the store at `url` and the scan named `scan` in it.
    pub fn open(url: &TableUrl, scan: String) -> Result<Store> {
        let path = std::path::Path::new(&url.connect);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Checkpoint {
                doing: format!("creating the directory {}", dir.display()),
                source: e.into(),
            })?;
        }
        let conn = crate::sql::open_sqlite(&url.connect, true)
            .map_err(|source| Error::Checkpoint { doing: format!("opening {url}"), source })?;
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS supervisor_scan (
               scan TEXT PRIMARY KEY, rows_estimate INTEGER NOT NULL, chunks INTEGER NOT NULL,
               planned TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
             CREATE TABLE IF NOT EXISTS supervisor_chunk (
               scan TEXT NOT NULL, chunk INTEGER NOT NULL, lo TEXT, hi TEXT, done_upto TEXT,
               finished INTEGER NOT NULL DEFAULT 0, rows INTEGER NOT NULL DEFAULT 0,
               updated TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
               PRIMARY KEY (scan, chunk));",
        )
        .map_err(failed("creating its tables"))?;
        Ok(Store { conn, scan })
    }

    /// The scan's chunks and its row estimate, if it was planned before.
    pub fn load(&self) -> Result<Option<(u64, Vec<Chunk>)>> {
        let estimate: Option<i64> = self
            .conn
            .query_row("SELECT rows_estimate FROM supervisor_scan WHERE scan = ?1", [&self.scan], |r| r.get(0))
            .optional()
            .map_err(failed("reading the scan"))?;
        let Some(estimate) = estimate else { return Ok(None) };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT chunk, lo, hi, done_upto, finished, rows FROM supervisor_chunk WHERE scan = ?1 ORDER BY chunk",
            )
            .map_err(failed("reading the chunks"))?;
        let rows = stmt
            .query_map([&self.scan], |r| {
                Ok((
                    r.get::<_, i32>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, bool>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(failed("reading the chunks"))?;
        let key = |k: Option<String>| -> Result<Option<Key>> {
            k.map(|t| Key::from_json(&t))
                .transpose()
                .map_err(|e| Error::Checkpoint { doing: "reading the chunks".into(), source: e.into() })
        };
        let mut chunks = Vec::new();
        for row in rows {
            let (index, lo, hi, done_upto, finished, count) = row.map_err(failed("reading the chunks"))?;
            chunks.push(Chunk {
                index,
                range: Range { lo: key(lo)?, hi: key(hi)? },
                done_upto: key(done_upto)?,
                finished,
                rows: count.max(0) as u64,
            });
        }
        Ok(Some((estimate.max(0) as u64, chunks)))
    }

    /// Saves a new scan's plan, all in one transaction: a crash leaves no half plan.
    pub fn plan(&mut self, estimate: u64, ranges: &[Range]) -> Result<()> {
        let tx = self.conn.transaction().map_err(failed("saving the plan"))?;
        tx.execute(
            "INSERT INTO supervisor_scan (scan, rows_estimate, chunks) VALUES (?1, ?2, ?3)",
            params![self.scan, estimate as i64, ranges.len() as i64],
        )
        .map_err(failed("saving the plan"))?;
        for (i, r) in ranges.iter().enumerate() {
            tx.execute(
                "INSERT INTO supervisor_chunk (scan, chunk, lo, hi) VALUES (?1, ?2, ?3, ?4)",
                params![self.scan, i as i64, r.lo.as_ref().map(Key::to_json), r.hi.as_ref().map(Key::to_json)],
            )
            .map_err(failed("saving the plan"))?;
        }
        tx.commit().map_err(failed("saving the plan"))
    }

    /// Moves checkpoints on, all in one transaction: per chunk, the key up to which all is acknowledged, the rows
    /// newly acknowledged, and whether the chunk is now finished.
    pub fn advance(&mut self, moves: &[(i32, Option<Key>, u64, bool)]) -> Result<()> {
        if moves.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(failed("saving checkpoints"))?;
        for (chunk, key, rows, finished) in moves {
            tx.execute(
                "UPDATE supervisor_chunk SET done_upto = coalesce(?3, done_upto), rows = rows + ?4, \
                 finished = finished OR ?5, updated = CURRENT_TIMESTAMP WHERE scan = ?1 AND chunk = ?2",
                params![self.scan, chunk, key.as_ref().map(Key::to_json), *rows as i64, finished],
            )
            .map_err(failed("saving checkpoints"))?;
        }
        tx.commit().map_err(failed("saving checkpoints"))
    }

    /// Forgets the scan: the next run plans it afresh and reads every row again.
    pub fn forget(&mut self) -> Result<()> {
        let tx = self.conn.transaction().map_err(failed("forgetting the scan"))?;
        tx.execute("DELETE FROM supervisor_chunk WHERE scan = ?1", [&self.scan])
            .map_err(failed("forgetting the scan"))?;
        tx.execute("DELETE FROM supervisor_scan WHERE scan = ?1", [&self.scan])
            .map_err(failed("forgetting the scan"))?;
        tx.commit().map_err(failed("forgetting the scan"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::table::chunks::plan;

    fn store(dir: &std::path::Path, scan: &str) -> Store {
        let url = TableUrl::parse(&format!("sqlite:{}/state/checkpoints.db", dir.display())).unwrap();
        Store::open(&url, scan.to_string()).unwrap()
    }

    #[test]
    fn checkpoints_survive_a_reopen_and_scans_are_apart() {
        let dir = std::env::temp_dir().join(format!("supervisor-checkpoint-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = store(&dir, "a");
        assert_eq!(s.load().unwrap(), None, "a new scan has no plan");
        s.plan(30, &plan(vec![Key::Int(10), Key::Int(20)])).unwrap();
        s.advance(&[(0, Some(Key::Int(7)), 7, false), (1, Some(Key::Int(20)), 10, true)]).unwrap();
        s.advance(&[(0, None, 0, false)]).unwrap();
        drop(s);

        let s = store(&dir, "a");
        let (estimate, chunks) = s.load().unwrap().unwrap();
        assert_eq!((estimate, chunks.len()), (30, 3));
        assert_eq!((chunks[0].resume_after(), chunks[0].rows, chunks[0].finished), (Some(&Key::Int(7)), 7, false));
        assert!(chunks[1].finished);
        assert_eq!(chunks[2].resume_after(), Some(&Key::Int(20)), "an untouched chunk resumes after its bound");
        assert_eq!(store(&dir, "b").load().unwrap(), None, "another scan's plan is its own");

        let mut s = store(&dir, "a");
        s.forget().unwrap();
        assert_eq!(s.load().unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
