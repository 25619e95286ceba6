//! `supervisor demo cdc`: `--follow` on a throwaway PostgreSQL cluster, copied into SQLite, then checked row by row.
//!
//! It needs PostgreSQL's server programs (`initdb`, `pg_ctl`) and the wal2json plugin, and says how to install them
//! otherwise. The cluster (`wal_level=logical`) lives in the demo's directory and is removed at the end. A writer
//! process inserts, updates (a key too), and deletes rows of `accounts` during the snapshot and after it; when it has
//! stopped and the replication slot confirms everything it wrote, it asks the pipeline to stop. Then the SQLite copy
//! is compared with the source, row by row: `verdict OK: tables equal`.

use crate::config::{default_state_dir, CdcDemoArgs, Cli, Config, JqSpec, Tables, TransformSpec};
use crate::error::{Error, Exit, Result};
use crate::sql::url::TableUrl;
use crate::supervisor::{Signals, Supervisor};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn run(cli: &Cli, args: &CdcDemoArgs, signals: Signals) -> Exit {
    match run_inner(cli, args, signals) {
        Ok(exit) => exit,
        Err(e) => {
            log::error!("demo cdc: {e}");
            e.exit()
        }
    }
}

fn schema_error(message: String) -> Error {
    Error::DbSchema { message }
}

/// The directory of PostgreSQL's server programs, newest version first; `PG_BIN` names another.
fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return dir.join("initdb").is_file().then_some(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("initdb").is_file()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    })
}

/// The cluster, run as `postgres` when we are root (the server refuses root).
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.as_postgres {
            true => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            false => Command::new(path),
        }
    }

    fn run(&self, c: &mut Command, what: &str) -> Result<()> {
        let out = c.output().map_err(|e| schema_error(format!("{what}: {e}")))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(schema_error(format!("{what} failed: {}", said.trim())));
        }
        Ok(())
    }

    fn start(bin: PathBuf, dir: &Path) -> Result<Cluster> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| schema_error(format!("creating {}: {e}", dir.display())))?;
        let as_postgres = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").map_err(|e| schema_error(format!("reading /proc/self: {e}")))?,
        ) == 0;
        if as_postgres {
            let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status();
            if !chown.is_ok_and(|s| s.success()) {
                return Err(schema_error(
                    "PostgreSQL refuses to run as root, and there is no postgres user to run it as".into(),
                ));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| schema_error(format!("finding a free port: {e}")))?;
        let cluster = Cluster { bin, dir: dir.to_path_buf(), port, as_postgres };
        let mut init = cluster.command("initdb");
        init.arg("-D").arg(dir.join("data")).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]);
        cluster.run(&mut init, "initdb")?;
        let mut start = cluster.command("pg_ctl");
        start.arg("-D").arg(dir.join("data")).args(["-w", "-l"]).arg(dir.join("log")).arg("-o").arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off",
            dir.display()
        ));
        if let Err(e) = cluster.run(start.arg("start"), "pg_ctl start") {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            let last: Vec<&str> = log.lines().rev().take(3).collect();
            let said = last.into_iter().rev().collect::<Vec<_>>().join(" / ");
            return Err(schema_error(format!("{e} (the server's log: {said})")));
        }
        Ok(cluster)
    }

    fn connect_string(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    fn client(&self) -> Result<postgres::Client> {
        postgres::Client::connect(&self.connect_string(), postgres::NoTls)
            .map_err(|e| schema_error(format!("connecting to the demo's cluster: {e}")))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.dir.join("data")).args(["-m", "fast", "stop"]);
        let _ = stop.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn query_failed(doing: &'static str) -> impl Fn(postgres::Error) -> Error {
    move |e| Error::DbQuery { doing: doing.to_string(), source: e.into() }
}

fn run_inner(cli: &Cli, args: &CdcDemoArgs, signals: Signals) -> Result<Exit> {
    let Some(bin) = pg_bin() else {
        return Err(schema_error(
            "it needs a PostgreSQL server (initdb and pg_ctl) with the wal2json plugin, and finds none: install them \
             (Debian: apt-get install postgresql postgresql-15-wal2json; or set PG_BIN to the server's bin directory)"
                .into(),
        ));
    };
    let dir =
        args.dir.clone().unwrap_or_else(|| cli.state_dir.clone().unwrap_or_else(default_state_dir).join("demo-cdc"));
    // The cluster in a directory of its own under the system's temporary one: the server (as `postgres`, when this
    // is root) must be able to reach it, which a home directory may not let it.
    let pg_dir = std::env::temp_dir().join(format!("supervisor-demo-cdc-{}", std::process::id()));
    log::info!("demo cdc: starting a throwaway PostgreSQL cluster ({}) in {}", bin.display(), pg_dir.display());
    let cluster = Cluster::start(bin, &pg_dir)?;
    let n = args.rows as i64;
    let mut c = cluster.client()?;
    c.batch_execute(&format!(
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, balance NUMERIC(14, 2) NOT NULL, \
           updated TIMESTAMPTZ NOT NULL);
         INSERT INTO accounts SELECT v, 'owner ' || v, v % 1000 + 0.25, now() FROM generate_series(1, {n}) v;"
    ))
    .map_err(query_failed("filling accounts"))?;
    drop(c);
    std::fs::create_dir_all(&dir).map_err(|e| schema_error(format!("creating {}: {e}", dir.display())))?;
    let copy = dir.join("copy.sqlite");
    let _ = std::fs::remove_file(&copy);
    let lite = crate::sql::open_sqlite(&copy.display().to_string(), true)
        .map_err(|source| Error::DbQuery { doing: format!("opening {}", copy.display()), source })?;
    lite.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT, balance TEXT, updated TEXT)")
        .map_err(|e| Error::DbQuery { doing: "creating the copy".into(), source: e.into() })?;
    drop(lite);
    let store = dir.join("checkpoints.db");
    let _ = std::fs::remove_file(&store);
    let url = |u: String| TableUrl::parse(&u).map_err(schema_error);
    let source = url(format!("postgres://postgres@127.0.0.1:{}/postgres?table=accounts", cluster.port))?;
    let sink = url(format!("sqlite:{}?table=accounts", copy.display()))?;
    let checkpoint = url(format!("sqlite:{}", store.display()))?;
    let mut cfg = Config::from_cli(cli);
    cfg.tables = Tables {
        source: Some(source),
        sink: Some(sink),
        checkpoint: Some(checkpoint),
        state_dir: Some(dir.clone()),
        sinks: vec![],
    };
    cfg.follow = true;
    if matches!(cfg.transform, TransformSpec::Md5) {
        cfg.transform =
            TransformSpec::Jq(JqSpec { filter: ".".into(), file: None, hmac_key: None, hmac_key_file: None });
    }
    // Chunks of a twentieth of the table, unless told: the snapshot is read by every reader at once.
    if cfg.chunk_rows == 100_000 {
        cfg.chunk_rows = (args.rows / 20).max(1000);
    }
    log::info!(
        "demo cdc: accounts ({n} rows) → --follow → {} → {}; a writer inserts, updates and deletes for {}s, during \
         the snapshot and after it",
        cfg.transform.label(),
        copy.display(),
        args.seconds
    );
    // Forked before the pipeline starts any thread; it asks the pipeline to stop once the slot has it all.
    let writer = fork_writer(&cluster, n, Duration::from_secs(args.seconds), &signals)?;
    let (exit, _) = Supervisor::run_counted(cfg, signals.clone());
    // A pipeline that ended first (it failed, or was stopped) ends the writer too.
    let _ = nix::sys::signal::kill(writer, nix::sys::signal::Signal::SIGTERM);
    let written = wait_writer(writer);
    let verdict = compare(&cluster, &copy)?;
    println!();
    let said_writer = match written {
        Writer::Finished => "finished",
        Writer::Failed => "failed",
        Writer::Stopped => "stopped by you",
    };
    println!("  writer                    {said_writer}");
    println!("  rows in the source        {}", verdict.source);
    println!("  rows in the copy          {}", verdict.copy);
    // A pipeline that failed never gets an OK, whatever the check found.
    let (said, exit) = match (exit, written, &verdict.differ) {
        (Exit::Clean, Writer::Finished, None) => ("OK: tables equal".to_string(), Exit::Clean),
        (Exit::Clean, Writer::Stopped, _) => {
            ("stopped before the writer finished: not checked".to_string(), Exit::Clean)
        }
        (Exit::Clean, Writer::Failed, _) => {
            ("FAILED: the writer failed (its error is above)".to_string(), Exit::Failure)
        }
        (Exit::Clean, Writer::Finished, Some(d)) => (format!("FAILED: {d}"), Exit::Failure),
        (exit, _, _) => (format!("FAILED: the pipeline exited {}", exit.code()), exit),
    };
    println!("  verdict                   {said}");
    Ok(exit)
}

/// The writer: waits for the slot, then writes for `seconds`, then waits until the slot confirms all of it and sends
/// the parent SIGTERM. It exits 0 once it did all that, 1 if it failed, 2 if the user stopped it first.
fn fork_writer(cluster: &Cluster, n: i64, seconds: Duration, signals: &Signals) -> Result<nix::unistd::Pid> {
    use nix::unistd::{fork, ForkResult};
    let connect = cluster.connect_string();
    // SAFETY: no thread runs yet in this process; the child only connects, writes and exits.
    match unsafe { fork() }.map_err(|e| schema_error(format!("forking the writer: {e}")))? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = match write(&connect, n, seconds, signals) {
                Ok(true) => 0,
                Ok(false) => 2,
                Err(e) => {
                    let why = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
                    log::error!("demo cdc: the writer failed: {why}");
                    1
                }
            };
            // Done or failed, the pipeline is asked to stop: the verdict says which.
            let _ = nix::sys::signal::kill(nix::unistd::getppid(), nix::sys::signal::Signal::SIGTERM);
            std::process::exit(code)
        }
    }
}

/// Whether it wrote all it was to and saw the slot confirm it (not stopped first).
fn write(connect: &str, n: i64, seconds: Duration, signals: &Signals) -> std::result::Result<bool, postgres::Error> {
    let mut c = postgres::Client::connect(connect, postgres::NoTls)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.query("SELECT 1 FROM pg_replication_slots WHERE NOT temporary", &[])?.is_empty() {
        if Instant::now() > deadline || signals.received() {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut next, mut seed, mut count) = (n + 1, 0x2545_f491_4f6c_dd1du64, 0u64);
    let mut random = |below: i64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % below.max(1) as u64) as i64
    };
    let until = Instant::now() + seconds;
    while Instant::now() < until && !signals.received() {
        let mut tx = c.transaction()?;
        for _ in 0..1 + random(4) {
            let id = 1 + random(next - 1);
            match random(10) {
                0..=3 => {
                    let owner = format!("new owner {next}");
                    tx.execute("INSERT INTO accounts VALUES ($1, $2, 0.5, now())", &[&next, &owner])?;
                    next += 1;
                }
                4..=7 => {
                    tx.execute("UPDATE accounts SET balance = balance + 1.25, updated = now() WHERE id = $1", &[&id])?;
                }
                8 => {
                    tx.execute("DELETE FROM accounts WHERE id = $1", &[&id])?;
                }
                _ => {
                    tx.execute(
                        "UPDATE accounts SET id = $1, owner = owner || ' (moved)' WHERE id = $2",
                        &[&next, &id],
                    )?;
                    next += 1;
                }
            }
        }
        tx.commit()?;
        count += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let end: String = c.query_one("SELECT pg_current_wal_lsn()::text", &[])?.get(0);
    log::info!("demo cdc: the writer wrote {count} transactions; waiting for the slot to confirm them (up to {end})");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let caught_up: bool = c
            .query_one(
                "SELECT COALESCE(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false) FROM pg_replication_slots \
                 WHERE NOT temporary",
                &[&end],
            )?
            .get(0);
        if caught_up {
            return Ok(!signals.received());
        }
        if signals.received() || Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Finished,
    Failed,
    Stopped,
}

fn wait_writer(pid: nix::unistd::Pid) -> Writer {
    use nix::sys::wait::{waitpid, WaitStatus};
    match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, 0)) => Writer::Finished,
        Ok(WaitStatus::Exited(_, 2)) => Writer::Stopped,
        _ => Writer::Failed,
    }
}

struct Compared {
    source: u64,
    copy: u64,
    differ: Option<String>,
}

/// Every row of the copy against the source, as text, in key order.
fn compare(cluster: &Cluster, copy: &Path) -> Result<Compared> {
    let mut c = cluster.client()?;
    let source: Vec<[String; 4]> = c
        .query("SELECT id::text, owner, balance::text, to_json(updated) #>> '{}' FROM accounts a ORDER BY a.id", &[])
        .map_err(query_failed("reading accounts"))?
        .iter()
        .map(|r| [r.get(0), r.get(1), r.get(2), r.get(3)])
        .collect();
    let lite = crate::sql::open_sqlite(&copy.display().to_string(), false)
        .map_err(|source| Error::DbQuery { doing: format!("opening {}", copy.display()), source })?;
    let failed = |e: rusqlite::Error| Error::DbQuery { doing: "reading the copy".into(), source: e.into() };
    let mut stmt = lite
        .prepare("SELECT CAST(id AS TEXT), owner, CAST(balance AS TEXT), updated FROM accounts ORDER BY id")
        .map_err(failed)?;
    let copied: Vec<[String; 4]> = stmt
        .query_map([], |r| {
            let text = |i| r.get::<_, Option<String>>(i).map(Option::unwrap_or_default);
            Ok([text(0)?, text(1)?, text(2)?, text(3)?])
        })
        .map_err(failed)?
        .collect::<std::result::Result<_, _>>()
        .map_err(failed)?;
    let (s, k) = (source.len() as u64, copied.len() as u64);
    // Both in key order: the first key where they part.
    let (mut a, mut b) = (source.iter().peekable(), copied.iter().peekable());
    let id = |row: &[String; 4]| row[0].parse::<i64>().unwrap_or(i64::MIN);
    let differ = loop {
        match (a.peek(), b.peek()) {
            (None, None) => break None,
            (Some(x), Some(y)) if x == y => {
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if id(x) == id(y) => {
                break Some(format!("row {} is {x:?} in the source, {y:?} in the copy", x[0]))
            }
            (Some(x), y) if y.is_none_or(|y| id(x) < id(y)) => {
                break Some(format!("row {} of the source is not in the copy: {x:?}", x[0]))
            }
            (_, Some(y)) => break Some(format!("row {} of the copy is not in the source: {y:?}", y[0])),
            (Some(x), None) => break Some(format!("row {} of the source is not in the copy: {x:?}", x[0])),
        }
    };
    Ok(Compared { source: s, copy: k, differ })
}
