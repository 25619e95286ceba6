//! The checkpoint store: a scan's plan (its chunks) and, per chunk, the key up to which every row was acknowledged
//! by the sink, whether the chunk is finished, and which instance holds it until when (its lease).
//!
//! It lives in SQLite (the default: a file under `--state-dir`, for one machine), or in PostgreSQL or MySQL, where
//! several instances share one scan: each claims chunks one at a time (`FOR UPDATE SKIP LOCKED`), renews its leases
//! while it works, and a chunk whose lease ran out (its instance died) is claimed by another, which resumes it after
//! its checkpoint. The database is the coordinator.
//!
//! A row is read again after a crash only if it was read and not yet checkpointed: at-least-once, and an upserting
//! sink makes the replay harmless. An instance that lost a lease (it stalled past it) stops checkpointing that chunk.

use super::chunks::Range;
use crate::error::{Error, Result};
use crate::sql::dialect::{self, Dialect};
use crate::sql::key::Key;
use crate::sql::url::{Engine, TableUrl};
use crate::sql::{Conn, DbError};
use mysql::prelude::Queryable;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// A chunk as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: i32,
    pub range: Range,
    /// Every row up to this key is acknowledged: reading resumes after it.
    pub done_upto: Option<Key>,
    pub finished: bool,
    /// Rows acknowledged in this chunk, across runs and instances.
    pub rows: u64,
}

impl Chunk {
    /// Where reading resumes: after the checkpoint, or after the lower bound.
    pub fn resume_after(&self) -> Option<&Key> {
        self.done_upto.as_ref().or(self.range.lo.as_ref())
    }
}

/// A checkpoint moving on: the chunk, its new key (if it moved), rows newly acknowledged, and whether it is finished.
pub type Move = (i32, Option<Key>, u64, bool);

/// A statement parameter.
#[derive(Debug, Clone)]
enum P {
    S(Option<String>),
    I(i64),
    F(f64),
}

pub struct Store {
    conn: Conn,
    /// The engine's SQL text: every statement is built through it.
    d: &'static dyn Dialect,
    scan: String,
    /// This instance, as its leases name it: host and supervisor pid.
    owner: String,
    lease: Duration,
    /// The store's own id, made once when its tables are: a store deleted and made again has another.
    id: String,
    /// A SQLite store's file as it was opened (device, inode): a file deleted or replaced under an open connection
    /// goes on working on the old one, unseen, unless looked at.
    file: Option<(std::path::PathBuf, u64, u64)>,
    /// Where it is, for the log (no credentials).
    location: String,
}

fn failed(doing: &str) -> impl Fn(DbError) -> Error + '_ {
    move |e| Error::Checkpoint { doing: doing.to_string(), source: e }
}

/// The store this run opened is not there any more: saving checkpoints into a store nobody will read again would end
/// in a "finished" scan that the next run starts over.
fn gone(why: String) -> Error {
    Error::DbSchema {
        message: format!(
            "the checkpoint store {why} during the run: the checkpoints of this run cannot be kept, and the scan \
             stops here (the next run says what to do)"
        ),
    }
}

impl Store {
    /// Opens (creating its tables if needed) the store at `url`, for the scan named `scan`.
    pub fn open(url: &TableUrl, scan: String, lease: Duration) -> Result<Store> {
        let conn = match url.engine {
            Engine::Sqlite => {
                let path = std::path::Path::new(&url.connect);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| Error::Checkpoint {
                        doing: format!("creating the directory {}", dir.display()),
                        source: e.into(),
                    })?;
                }
                let c = crate::sql::open_sqlite(&url.connect, true)
                    .map_err(|source| Error::Checkpoint { doing: format!("opening {url}"), source })?;
                c.pragma_update(None, "synchronous", "FULL")
                    .map_err(|e| Error::Checkpoint { doing: format!("opening {url}"), source: e.into() })?;
                Conn::Sqlite(c)
            }
            _ => Conn::open(url)?,
        };
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        // The supervisor, on this host, as started: a pid reused later is another process.
        let supervisor = nix::unistd::getppid().as_raw();
        let owner = format!("{host}:{supervisor}.{}", start_time(supervisor).unwrap_or_default());
        let file = match url.engine {
            Engine::Sqlite => {
                std::fs::metadata(&url.connect).ok().map(|m| (std::path::PathBuf::from(&url.connect), m.dev(), m.ino()))
            }
            _ => None,
        };
        let location = url.location();
        let d = dialect::of(url.engine);
        let mut store = Store { conn, d, scan, owner, lease, id: String::new(), file, location };
        store.create_tables()?;
        store.id = store.read_id().map_err(failed("reading its id"))?.unwrap_or_default();
        Ok(store)
    }

    /// The store's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn read_id(&mut self) -> Result<Option<String>, DbError> {
        let sql = "SELECT id FROM supervisor_store WHERE one = 1";
        Ok(match &mut self.conn {
            Conn::Postgres(c) => c.query_opt(sql, &[])?.map(|r| r.get(0)),
            Conn::Mysql(c) => c.query_first(sql)?,
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare(sql)?;
                let mut rows = stmt.query([])?;
                match rows.next()? {
                    Some(r) => Some(r.get(0)?),
                    None => None,
                }
            }
        })
    }

    /// Fails if the store is no longer the one this run opened: its file deleted or replaced, or its id changed (its
    /// tables dropped and made again). Saving checkpoints into a store nobody will read again would end in a
    /// "finished" scan that the next run starts over.
    pub fn watch(&mut self) -> Result<()> {
        if let Some((path, dev, ino)) = &self.file {
            match std::fs::metadata(path) {
                Ok(m) if m.dev() == *dev && m.ino() == *ino => {}
                Ok(_) => return Err(gone(format!("{} was replaced by another file", path.display()))),
                Err(_) => return Err(gone(format!("{} was deleted", path.display()))),
            }
        }
        match self.read_id() {
            Ok(Some(id)) if id == self.id => Ok(()),
            Ok(other) => Err(gone(format!(
                "{} changed: its id is {} where it was {}",
                self.location,
                other.as_deref().unwrap_or("(none)"),
                self.id
            ))),
            Err(e) => Err(self.failed_in_run("reading its id")(e)),
        }
    }

    /// As `failed`, for a store this run has opened: its tables gone (dropped by hand while the scan ran) is said as
    /// such whichever statement meets it first, a failure no restart mends.
    fn failed_in_run<'a>(&'a self, doing: &'a str) -> impl Fn(DbError) -> Error + 'a {
        move |e| match no_such_table(&e) {
            true => gone(format!("{} lost its tables", self.location)),
            false => failed(doing)(e),
        }
    }

    fn create_tables(&mut self) -> Result<()> {
        let d = self.d;
        for sql in tables(d) {
            self.exec(&sql, vec![]).map_err(failed("creating its tables"))?;
        }
        // Made once, by whichever instance comes first.
        let insert = d.insert_ignore("supervisor_store", "one, id", &format!("1, {}", d.param(1)), "one");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let id = format!("{}-{}-{nanos:x}", self.owner, std::process::id());
        self.exec(&insert, vec![P::S(Some(id))]).map_err(failed("creating its id"))?;
        Ok(())
    }

    /// The database's clock, in seconds since the epoch: every instance's leases are measured on it.
    fn now(&self) -> &'static str {
        self.d.epoch_now()
    }

    fn exec(&mut self, sql: &str, params: Vec<P>) -> Result<u64, DbError> {
        match &mut self.conn {
            Conn::Postgres(c) => {
                let boxed = pg_params(&params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
                Ok(c.execute(sql, &refs)?)
            }
            Conn::Mysql(c) => {
                c.exec_drop(sql, my_params(&params))?;
                Ok(c.affected_rows())
            }
            Conn::Sqlite(c) => Ok(c.execute(sql, rusqlite::params_from_iter(lite_params(&params)))? as u64),
        }
    }

    fn begin(&mut self) -> Result<(), DbError> {
        let sql = self.d.begin();
        match &mut self.conn {
            Conn::Postgres(c) => c.batch_execute(sql)?,
            Conn::Mysql(c) => c.query_drop(sql)?,
            Conn::Sqlite(c) => c.execute_batch(sql)?,
        }
        Ok(())
    }

    fn end(&mut self, commit: bool) -> Result<(), DbError> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        match &mut self.conn {
            Conn::Postgres(c) => c.batch_execute(sql)?,
            Conn::Mysql(c) => c.query_drop(sql)?,
            Conn::Sqlite(c) => c.execute_batch(sql)?,
        }
        Ok(())
    }

    /// Runs `body` in a transaction, rolled back if it fails.
    fn transaction<T>(&mut self, body: impl FnOnce(&mut Store) -> Result<T, DbError>) -> Result<T, DbError> {
        self.begin()?;
        match body(self) {
            Ok(t) => {
                self.end(true)?;
                Ok(t)
            }
            Err(e) => {
                let _ = self.end(false);
                Err(e)
            }
        }
    }

    fn query_i64(&mut self, sql: &str, params: Vec<P>) -> Result<Option<i64>, DbError> {
        match &mut self.conn {
            Conn::Postgres(c) => {
                let boxed = pg_params(&params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
                Ok(c.query_opt(sql, &refs)?.map(|r| r.get::<_, i64>(0)))
            }
            Conn::Mysql(c) => Ok(c.exec_first::<i64, _, _>(sql, my_params(&params))?),
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(lite_params(&params)))?;
                Ok(match rows.next()? {
                    Some(r) => Some(r.get::<_, i64>(0)?),
                    None => None,
                })
            }
        }
    }

    /// Chunks from a `SELECT chunk, lo, hi, done_upto, finished, row_count ...`.
    fn query_chunks(&mut self, sql: &str, params: Vec<P>) -> Result<Vec<Chunk>, DbError> {
        type Raw = (i64, Option<String>, Option<String>, Option<String>, i64, i64);
        let raw: Vec<Raw> = match &mut self.conn {
            Conn::Postgres(c) => {
                let boxed = pg_params(&params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
                c.query(sql, &refs)?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
                    .collect()
            }
            Conn::Mysql(c) => c.exec(sql, my_params(&params))?,
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare(sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(lite_params(&params)), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })?;
                rows.collect::<Result<_, _>>()?
            }
        };
        let key =
            |k: Option<String>| -> Result<Option<Key>, DbError> { Ok(k.map(|t| Key::from_json(&t)).transpose()?) };
        raw.into_iter()
            .map(|(index, lo, hi, done_upto, finished, rows)| {
                Ok(Chunk {
                    index: i32::try_from(index)?,
                    range: Range { lo: key(lo)?, hi: key(hi)? },
                    done_upto: key(done_upto)?,
                    finished: finished != 0,
                    rows: rows.max(0) as u64,
                })
            })
            .collect()
    }

    /// The scan's chunks and its row estimate, if it was planned before.
    pub fn load(&mut self) -> Result<Option<(u64, Vec<Chunk>)>> {
        let (d, scan) = (self.d, P::S(Some(self.scan.clone())));
        let estimate = self
            .query_i64(
                &format!("SELECT rows_estimate FROM supervisor_scan WHERE scan = {}", d.param(1)),
                vec![scan.clone()],
            )
            .map_err(failed("reading the scan"))?;
        let Some(estimate) = estimate else { return Ok(None) };
        let chunks = self
            .query_chunks(
                &format!(
                    "SELECT chunk, lo, hi, done_upto, finished, row_count FROM supervisor_chunk WHERE scan = {} \
                     ORDER BY chunk",
                    d.param(1)
                ),
                vec![scan],
            )
            .map_err(failed("reading the chunks"))?;
        Ok(Some((estimate.max(0) as u64, chunks)))
    }

    /// Saves a new scan's plan in one transaction; false if another instance planned it first (then load theirs).
    pub fn plan(&mut self, estimate: u64, ranges: &[Range]) -> Result<bool> {
        let d = self.d;
        let insert = d.insert_ignore("supervisor_scan", "scan, rows_estimate, chunks", &d.params(1..=3), "scan");
        let chunk = format!("INSERT INTO supervisor_chunk (scan, chunk, lo, hi) VALUES ({})", d.params(1..=4));
        let scan = self.scan.clone();
        self.transaction(|s| {
            let ours =
                s.exec(&insert, vec![P::S(Some(scan.clone())), P::I(estimate as i64), P::I(ranges.len() as i64)])?;
            if ours == 0 {
                return Ok(false);
            }
            for (i, r) in ranges.iter().enumerate() {
                s.exec(
                    &chunk,
                    vec![
                        P::S(Some(scan.clone())),
                        P::I(i as i64),
                        P::S(r.lo.as_ref().map(Key::to_json)),
                        P::S(r.hi.as_ref().map(Key::to_json)),
                    ],
                )?;
            }
            Ok(true)
        })
        .map_err(failed("saving the plan"))
    }

    /// Takes back, for claiming, the unfinished chunks that this instance held in an earlier generation, or that an
    /// instance on this host which is no longer running held: no need to wait for their leases.
    pub fn adopt_orphans(&mut self) -> Result<()> {
        let host = self.owner.split(':').next().unwrap_or_default().to_string();
        let holders = self.owners().map_err(self.failed_in_run("reading the leases"))?;
        for holder in holders {
            let Some((h, pid)) = holder.rsplit_once(':') else { continue };
            // Alive: its process is there (EPERM: there, another user's) and started when the holder's did.
            let alive = holder != self.owner
                && pid
                    .split_once('.')
                    .and_then(|(pid, started)| Some((pid.parse::<i32>().ok()?, started)))
                    .is_some_and(|(pid, started)| {
                        let there = !matches!(
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                            Err(nix::errno::Errno::ESRCH)
                        );
                        there && start_time(pid).is_none_or(|t| t.to_string() == started)
                    });
            if h == host && !alive {
                let sql = format!(
                    "UPDATE supervisor_chunk SET owner = NULL, lease_until = NULL WHERE scan = {} AND owner = {} \
                     AND finished = 0",
                    self.d.param(1),
                    self.d.param(2)
                );
                self.exec(&sql, vec![P::S(Some(self.scan.clone())), P::S(Some(holder.clone()))])
                    .map_err(self.failed_in_run("adopting chunks"))?;
            }
        }
        Ok(())
    }

    fn owners(&mut self) -> Result<Vec<String>, DbError> {
        let sql = format!(
            "SELECT DISTINCT owner FROM supervisor_chunk WHERE scan = {} AND finished = 0 AND owner IS NOT NULL",
            self.d.param(1)
        );
        let scan = self.scan.clone();
        Ok(match &mut self.conn {
            Conn::Postgres(c) => c.query(sql.as_str(), &[&scan])?.iter().map(|r| r.get(0)).collect(),
            Conn::Mysql(c) => c.exec(sql, (scan,))?,
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map([scan], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            }
        })
    }

    /// Claims the first chunk that is neither finished nor leased to a live instance, for this instance's lease.
    pub fn claim(&mut self) -> Result<Option<Chunk>> {
        let (d, lock, now) = (self.d, self.d.skip_locked(), self.now());
        let (scan, owner, lease) = (self.scan.clone(), self.owner.clone(), self.lease.as_secs_f64());
        self.transaction(|s| {
            // Never one of ours, even with its lease run out (we stalled): it is still being read here.
            let free = format!(
                "SELECT chunk FROM supervisor_chunk WHERE scan = {} AND finished = 0 AND \
                 (owner IS NULL OR (lease_until < {now} AND owner <> {})) ORDER BY chunk LIMIT 1{lock}",
                d.param(1),
                d.param(2)
            );
            let Some(chunk) = s.query_i64(&free, vec![P::S(Some(scan.clone())), P::S(Some(owner.clone()))])? else {
                return Ok(None);
            };
            s.exec(
                &format!(
                    "UPDATE supervisor_chunk SET owner = {}, lease_until = {now} + {} WHERE scan = {} AND chunk = {}",
                    d.param(1),
                    d.typed_param(2, "float8"),
                    d.param(3),
                    d.typed_param(4, "bigint")
                ),
                vec![P::S(Some(owner.clone())), P::F(lease), P::S(Some(scan.clone())), P::I(chunk)],
            )?;
            let claimed = s.query_chunks(
                &format!(
                    "SELECT chunk, lo, hi, done_upto, finished, row_count FROM supervisor_chunk WHERE scan = {} AND \
                     chunk = {}",
                    d.param(1),
                    d.typed_param(2, "bigint")
                ),
                vec![P::S(Some(scan.clone())), P::I(chunk)],
            )?;
            Ok(claimed.into_iter().next())
        })
        .map_err(self.failed_in_run("claiming a chunk"))
    }

    /// Moves checkpoints on and renews this instance's leases, in one transaction. Returns the chunks whose lease
    /// this instance lost (another took them over): they are no longer its to checkpoint.
    pub fn advance(&mut self, moves: &[Move]) -> Result<Vec<i32>> {
        self.watch()?;
        let (d, now) = (self.d, self.now());
        let (scan, owner, lease) = (self.scan.clone(), self.owner.clone(), self.lease.as_secs_f64());
        self.transaction(|s| {
            let mut lost = Vec::new();
            for (chunk, key, rows, finished) in moves {
                let updated = s.exec(
                    &format!(
                        "UPDATE supervisor_chunk SET done_upto = COALESCE({}, done_upto), row_count = row_count + {}, \
                         finished = CASE WHEN {} = 1 THEN 1 ELSE finished END, lease_until = {now} + {}, \
                         updated = CURRENT_TIMESTAMP WHERE scan = {} AND chunk = {} AND owner = {}",
                        d.param(1),
                        d.typed_param(2, "bigint"),
                        d.typed_param(3, "bigint"),
                        d.typed_param(4, "float8"),
                        d.param(5),
                        d.typed_param(6, "bigint"),
                        d.param(7)
                    ),
                    vec![
                        P::S(key.as_ref().map(Key::to_json)),
                        P::I(*rows as i64),
                        P::I(i64::from(*finished)),
                        P::F(lease),
                        P::S(Some(scan.clone())),
                        P::I(i64::from(*chunk)),
                        P::S(Some(owner.clone())),
                    ],
                )?;
                if updated == 0 {
                    lost.push(*chunk);
                }
            }
            s.exec(
                &format!(
                    "UPDATE supervisor_chunk SET lease_until = {now} + {} WHERE scan = {} AND owner = {} \
                     AND finished = 0",
                    d.typed_param(1, "float8"),
                    d.param(2),
                    d.param(3)
                ),
                vec![P::F(lease), P::S(Some(scan.clone())), P::S(Some(owner.clone()))],
            )?;
            Ok(lost)
        })
        .map_err(self.failed_in_run("saving checkpoints"))
    }

    /// Gives up this instance's unfinished chunks at once (a clean stop), so that another may take them now.
    pub fn release(&mut self) -> Result<()> {
        let sql = format!(
            "UPDATE supervisor_chunk SET owner = NULL, lease_until = NULL WHERE scan = {} AND owner = {} AND \
             finished = 0",
            self.d.param(1),
            self.d.param(2)
        );
        self.exec(&sql, vec![P::S(Some(self.scan.clone())), P::S(Some(self.owner.clone()))])
            .map(|_| ())
            .map_err(self.failed_in_run("releasing chunks"))
    }

    /// Chunks of the scan not finished yet, whoever holds them.
    pub fn unfinished(&mut self) -> Result<u64> {
        self.watch()?;
        let n = self
            .query_i64(
                &format!("SELECT COUNT(*) FROM supervisor_chunk WHERE scan = {} AND finished = 0", self.d.param(1)),
                vec![P::S(Some(self.scan.clone()))],
            )
            .map_err(self.failed_in_run("reading the chunks"))?;
        Ok(n.unwrap_or_default().max(0) as u64)
    }

    /// Forgets the scan: the next run plans it afresh and reads every row again.
    pub fn forget(&mut self) -> Result<()> {
        let (scan, p) = (self.scan.clone(), self.d.param(1));
        self.transaction(|s| {
            s.exec(&format!("DELETE FROM supervisor_chunk WHERE scan = {p}"), vec![P::S(Some(scan.clone()))])?;
            s.exec(&format!("DELETE FROM supervisor_scan WHERE scan = {p}"), vec![P::S(Some(scan.clone()))])?;
            Ok(())
        })
        .map_err(failed("forgetting the scan"))
    }
}

/// The store's tables, in `d`'s types. An existing store is read as it is: these never change.
fn tables(d: &dyn Dialect) -> [String; 3] {
    let (key, text, ts) = (d.key_text_type(), d.text_type(), d.timestamp_type());
    [
        format!(
            "CREATE TABLE IF NOT EXISTS supervisor_scan (scan {key} PRIMARY KEY, rows_estimate BIGINT NOT NULL, \
             chunks BIGINT NOT NULL, planned {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        ),
        format!("CREATE TABLE IF NOT EXISTS supervisor_store (one BIGINT PRIMARY KEY, id {text} NOT NULL)"),
        format!(
            "CREATE TABLE IF NOT EXISTS supervisor_chunk (scan {key} NOT NULL, chunk BIGINT NOT NULL, lo {text}, \
             hi {text}, done_upto {text}, finished BIGINT NOT NULL DEFAULT 0, row_count BIGINT NOT NULL DEFAULT 0, \
             owner {text}, lease_until DOUBLE PRECISION, updated {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP, \
             PRIMARY KEY (scan, chunk))"
        ),
    ]
}

/// Whether `e` says a table is not there: the store's tables were dropped.
fn no_such_table(e: &DbError) -> bool {
    if let Some(pe) = e.downcast_ref::<postgres::Error>() {
        return pe.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE);
    }
    if let Some(mysql::Error::MySqlError(m)) = e.downcast_ref::<mysql::Error>() {
        return m.code == 1146;
    }
    e.to_string().contains("no such table")
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`, field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

fn pg_params(params: &[P]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|p| -> Box<dyn postgres::types::ToSql + Sync> {
            match p {
                P::S(s) => Box::new(s.clone()),
                P::I(i) => Box::new(*i),
                P::F(f) => Box::new(*f),
            }
        })
        .collect()
}

fn my_params(params: &[P]) -> Vec<mysql::Value> {
    params
        .iter()
        .map(|p| match p {
            P::S(Some(s)) => mysql::Value::Bytes(s.clone().into_bytes()),
            P::S(None) => mysql::Value::NULL,
            P::I(i) => mysql::Value::Int(*i),
            P::F(f) => mysql::Value::Double(*f),
        })
        .collect()
}

fn lite_params(params: &[P]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|p| match p {
            P::S(Some(s)) => rusqlite::types::Value::Text(s.clone()),
            P::S(None) => rusqlite::types::Value::Null,
            P::I(i) => rusqlite::types::Value::Integer(*i),
            P::F(f) => rusqlite::types::Value::Real(*f),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::table::chunks::plan;

    fn store(dir: &std::path::Path, scan: &str) -> Store {
        let url = TableUrl::parse(&format!("sqlite:{}/state/checkpoints.db", dir.display())).unwrap();
        Store::open(&url, scan.to_string(), Duration::from_secs(30)).unwrap()
    }

    #[test]
    fn statements_are_built_for_each_engine() {
        assert_eq!(dialect::of(Engine::Postgres).params(1..=3), "$1, $2, $3");
        assert_eq!(dialect::of(Engine::Mysql).params(1..=3), "?, ?, ?");
        assert_eq!(dialect::of(Engine::Sqlite).params(1..=3), "?1, ?2, ?3");
    }

    #[test]
    fn the_store_keeps_its_column_types_on_every_engine() {
        // (key, text, time) as the store has always made them: existing stores are read as they are.
        for (engine, key, text, ts) in [
            (Engine::Postgres, "TEXT", "TEXT", "TIMESTAMPTZ"),
            (Engine::Mysql, "VARCHAR(512)", "LONGTEXT", "TIMESTAMP"),
            (Engine::Sqlite, "TEXT", "TEXT", "TEXT"),
        ] {
            let [scan, store, chunk] = tables(dialect::of(engine));
            assert!(scan.contains(&format!("(scan {key} PRIMARY KEY")) && scan.contains(&format!("planned {ts} NOT")));
            assert!(store.contains(&format!("id {text} NOT NULL")), "{engine:?}");
            assert!(chunk.contains(&format!("lo {text}, hi {text}")) && chunk.contains(&format!("updated {ts} NOT")));
        }
    }

    #[test]
    fn a_chunk_whose_lease_ran_out_is_not_claimed_again_by_its_holder() {
        let dir = std::env::temp_dir().join(format!("supervisor-lease-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let url = TableUrl::parse(&format!("sqlite:{}/checkpoints.db", dir.display())).unwrap();
        let mut s = Store::open(&url, "lease".into(), Duration::ZERO).unwrap();
        assert!(s.plan(2, &plan(vec![Key::int(1)])).unwrap());
        assert_eq!(s.claim().unwrap().map(|c| c.index), Some(0));
        // Its lease is over at once, but it is still being read here: another chunk, then none.
        assert_eq!(s.claim().unwrap().map(|c| c.index), Some(1));
        assert_eq!(s.claim().unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn checkpoints_survive_a_reopen_and_scans_are_apart() {
        let dir = std::env::temp_dir().join(format!("supervisor-checkpoint-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = store(&dir, "a");
        assert_eq!(s.load().unwrap(), None, "a new scan has no plan");
        assert!(s.plan(30, &plan(vec![Key::int(10), Key::int(20)])).unwrap());
        assert!(!s.plan(30, &plan(vec![Key::int(10)])).unwrap(), "planned once");
        let (c0, c1) = (s.claim().unwrap().unwrap(), s.claim().unwrap().unwrap());
        assert_eq!((c0.index, c1.index), (0, 1), "claimed in order, each once");
        let lost =
            s.advance(&[(0, Some(Key::int(7)), 7, false), (1, Some(Key::int(20)), 10, true), (2, None, 0, false)]);
        assert_eq!(lost.unwrap(), vec![2], "chunk 2 is not ours");
        drop(s);

        let mut s = store(&dir, "a");
        let (estimate, chunks) = s.load().unwrap().unwrap();
        assert_eq!((estimate, chunks.len()), (30, 3));
        assert_eq!((chunks[0].resume_after(), chunks[0].rows, chunks[0].finished), (Some(&Key::int(7)), 7, false));
        assert!(chunks[1].finished);
        assert_eq!(chunks[2].resume_after(), Some(&Key::int(20)), "an untouched chunk resumes after its bound");
        assert_eq!(s.unfinished().unwrap(), 2);
        assert_eq!(s.claim().unwrap().map(|c| c.index), Some(2), "chunk 0 is still leased");
        s.release().unwrap();
        assert_eq!(s.claim().unwrap().map(|c| c.index), Some(0), "released, it is free again");
        assert_eq!(store(&dir, "b").load().unwrap(), None, "another scan's plan is its own");

        s.forget().unwrap();
        assert_eq!(s.load().unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_whose_tables_are_dropped_says_so_whichever_statement_meets_it_first() {
        let dir = std::env::temp_dir().join(format!("supervisor-dropped-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = store(&dir, "a");
        assert!(s.plan(30, &plan(vec![Key::int(10)])).unwrap());
        let path = dir.join("state/checkpoints.db");
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch("DROP TABLE supervisor_chunk; DROP TABLE supervisor_scan; DROP TABLE supervisor_store")
            .unwrap();
        let said = |r: Result<()>| r.err().map(|e| e.to_string()).unwrap_or_default();
        for (doing, message) in [
            ("claim", said(s.claim().map(drop))),
            ("advance", said(s.advance(&[(0, Some(Key::int(7)), 7, false)]).map(drop))),
            ("release", said(s.release())),
            ("unfinished", said(s.unfinished().map(drop))),
            ("adopt", said(s.adopt_orphans())),
        ] {
            assert!(message.contains("lost its tables during the run"), "{doing}: {message}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
