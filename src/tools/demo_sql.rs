//! `supervisor demo sql`: the article's SQL pipeline on embedded SQLite, with no server to install.
//!
//! `SOURCE(VALUE)` holds 1..N; the real supervisor scans it with its readers, the workers compute the square root (a
//! jq filter), and the sink upserts `DESTINATION(VALUE, ROOT)`. Then every row is checked: each value once, each
//! root right. The database and the checkpoints stay in the demo's directory, so Ctrl-C and a second run resume the
//! scan where it stopped; a run after a finished one starts over.

use crate::config::{default_state_dir, Cli, Config, JqSpec, SqlDemoArgs, Tables, TransformSpec, DEMO_SQL_ROWS};
use crate::error::{Error, Exit, Result};
use crate::sql::url::TableUrl;
use crate::supervisor::{Signals, Supervisor};
use std::path::Path;

const SQRT: &str = ".ROOT = (.VALUE | sqrt)";

pub fn run(cli: &Cli, args: &SqlDemoArgs, signals: Signals) -> Exit {
    match run_inner(cli, args, signals) {
        Ok(exit) => exit,
        Err(e) => {
            log::error!("demo sql: {e}");
            e.exit()
        }
    }
}

fn failed(doing: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::DbQuery { doing: format!("demo sql: {doing}"), source: e.into() }
}

fn run_inner(cli: &Cli, args: &SqlDemoArgs, signals: Signals) -> Result<Exit> {
    let dir =
        args.dir.clone().unwrap_or_else(|| cli.state_dir.clone().unwrap_or_else(default_state_dir).join("demo-sql"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::DbQuery { doing: format!("creating {}", dir.display()), source: e.into() })?;
    let db = dir.join("article.sqlite");
    let n = args.rows;
    // In this process, and closed again before the supervisor forks: SQLite starts no thread.
    let resuming = prepare(&db, n)?;
    let mut cfg = Config::from_cli(cli);
    let url = |table: &str| TableUrl::parse(&format!("sqlite:{}?table={table}", db.display()));
    let (source, sink, store) = (
        url("SOURCE"),
        url("DESTINATION"),
        TableUrl::parse(&format!("sqlite:{}", dir.join("checkpoints.db").display())),
    );
    let (Ok(source), Ok(sink), Ok(store)) = (source, sink, store) else {
        return Err(Error::DbSchema { message: format!("demo sql: {} cannot be named in a URL", dir.display()) });
    };
    cfg.tables = Tables {
        source: Some(source),
        sink: Some(sink),
        checkpoint: Some(store),
        state_dir: Some(dir.to_path_buf()),
        sinks: vec![],
    };
    let default_transform = matches!(cfg.transform, TransformSpec::Md5);
    if default_transform {
        cfg.transform =
            TransformSpec::Jq(JqSpec { filter: SQRT.into(), file: None, hmac_key: None, hmac_key_file: None });
    }
    // A finished scan stays finished; the demo starts a new one instead (a new directory has none to forget).
    cfg.rescan = !resuming && dir.join("checkpoints.db").exists();
    // The command that resumes this run: the same rows, in the same directory.
    let again = format!(
        "supervisor demo sql{}{}",
        if n == DEMO_SQL_ROWS { String::new() } else { format!(" --rows {n}") },
        args.dir.as_ref().map_or_else(String::new, |d| format!(" --dir {}", d.display()))
    );
    log::info!(
        "demo sql: SOURCE(VALUE) 1..{n} → {} ({}) → DESTINATION(VALUE, ROOT), in {}, with {} readers and {} workers; \
         Ctrl-C stops it, running it again resumes",
        cfg.transform.label(),
        if default_transform { SQRT } else { "your transform" },
        db.display(),
        cfg.readers,
        cfg.hashers
    );
    if resuming {
        log::info!("demo sql: resuming the scan an earlier run left unfinished");
    }
    let (exit, _) = Supervisor::run_counted(cfg, signals);
    let (rows, verdict) = check(&db, n, default_transform)?;
    println!();
    println!("  rows in SOURCE            {n}");
    println!("  rows in DESTINATION       {rows}");
    // A pipeline that failed never gets an OK, whatever the check found.
    let (said, exit) = match (exit, verdict) {
        (Exit::Clean, Verdict::Complete) => ("OK: nothing lost".to_string(), Exit::Clean),
        (Exit::Clean, Verdict::Partial) => {
            (format!("stopped after {rows} of {n} rows, each right; run `{again}` to resume"), Exit::Clean)
        }
        (_, Verdict::Wrong(why)) => (format!("FAILED: {why}"), Exit::Failure),
        (exit, Verdict::Partial) => {
            (format!("FAILED: the pipeline exited {} after {rows} of {n} rows (each right)", exit.code()), exit)
        }
        (exit, Verdict::Complete) => {
            (format!("FAILED: every row is there, but the pipeline exited {}", exit.code()), exit)
        }
    };
    println!("  verdict                   {said}");
    Ok(exit)
}

/// Creates the tables unless they are there with the right rows; returns whether an unfinished scan is to resume.
fn prepare(db: &Path, n: u64) -> Result<bool> {
    let c = crate::sql::open_sqlite(&db.display().to_string(), true)
        .map_err(|source| Error::DbQuery { doing: format!("demo sql: opening {}", db.display()), source })?;
    let rows: Option<i64> = c.query_row("SELECT count(*) FROM SOURCE", [], |r| r.get(0)).ok();
    if rows == Some(n as i64) {
        let done: i64 =
            c.query_row("SELECT count(*) FROM DESTINATION", [], |r| r.get(0)).map_err(failed("counting"))?;
        if done < n as i64 {
            return Ok(true);
        }
        c.execute("DELETE FROM DESTINATION", []).map_err(failed("emptying DESTINATION"))?;
        return Ok(false);
    }
    log::info!("demo sql: writing {n} rows into SOURCE in {}", db.display());
    c.execute_batch(
        "DROP TABLE IF EXISTS SOURCE; DROP TABLE IF EXISTS DESTINATION; DROP TABLE IF EXISTS DESTINATION_dead_letter;
         CREATE TABLE SOURCE (VALUE INTEGER PRIMARY KEY);
         CREATE TABLE DESTINATION (VALUE INTEGER PRIMARY KEY, ROOT REAL);",
    )
    .map_err(failed("creating the tables"))?;
    c.execute(
        "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < ?1) INSERT INTO SOURCE SELECT v FROM s",
        [n as i64],
    )
    .map_err(failed("filling SOURCE"))?;
    Ok(false)
}

enum Verdict {
    Complete,
    Partial,
    Wrong(String),
}

/// Every row of DESTINATION against SOURCE: each value of 1..N at most once (the key sees to it), none outside, and
/// each root right.
fn check(db: &Path, n: u64, roots: bool) -> Result<(u64, Verdict)> {
    let c = crate::sql::open_sqlite(&db.display().to_string(), false)
        .map_err(|source| Error::DbQuery { doing: format!("demo sql: opening {}", db.display()), source })?;
    let (rows, outside, wrong): (i64, i64, i64) = c
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE VALUE < 1 OR VALUE > ?1),
                    count(*) FILTER (WHERE ROOT IS NULL OR abs(ROOT * ROOT - VALUE) > 1e-6 * VALUE)
             FROM DESTINATION",
            [n as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(failed("checking DESTINATION"))?;
    let rows = rows.max(0) as u64;
    if outside > 0 {
        return Ok((rows, Verdict::Wrong(format!("{outside} rows in DESTINATION have a VALUE not in SOURCE"))));
    }
    if roots && wrong > 0 {
        return Ok((rows, Verdict::Wrong(format!("{wrong} rows in DESTINATION have a wrong ROOT"))));
    }
    Ok((rows, if rows == n { Verdict::Complete } else { Verdict::Partial }))
}
