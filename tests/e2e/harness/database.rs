//! Real database servers for the table tests: a PostgreSQL cluster of its own per test (Debian's `postgresql-15`,
//! run as the `postgres` user when the tests run as root) on a free loopback port, stopped on drop; and SQLite files.

use super::broker::{free_port, scratch_dir, wait_listening};
use std::path::PathBuf;
use std::process::Command;

pub const PG_PASSWORD: &str = "pg-test-secret";

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`), newest version first.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("initdb").is_file()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("no PostgreSQL server: run scripts/install-deps (it installs postgresql)"))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// A PostgreSQL program, run as `postgres` when we are root (the server refuses to run as root).
fn pg_command(program: &str) -> Command {
    let path = pg_bin().join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL server with password authentication, database `test`, stopped and removed on drop.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
}

impl Postgres {
    pub fn start(name: &str) -> Postgres {
        let dir = scratch_dir(&format!("pg-{name}"));
        let port = free_port();
        std::fs::write(dir.join("pwfile"), PG_PASSWORD).unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir);
                    c
                },
                "chown",
            );
        }
        let data = dir.join("data");
        let mut init = pg_command("initdb");
        init.arg("-D").arg(&data).args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"]);
        init.arg(format!("--pwfile={}", dir.join("pwfile").display()));
        run(init, "initdb");
        let pg = Postgres { port, dir };
        pg.pg_ctl("start");
        let mut admin = pg.client("postgres");
        admin.batch_execute("CREATE DATABASE test").unwrap();
        pg
    }

    fn pg_ctl(&self, action: &str) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D").arg(self.dir.join("data")).args(["-w", "-m", "fast", "-l"]).arg(self.dir.join("log"));
        c.arg("-o").arg(format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.display()
        ));
        c.arg(action);
        run(c, &format!("pg_ctl {action}"));
        if action != "stop" {
            wait_listening("PostgreSQL", &format!("127.0.0.1:{}", self.port));
        }
    }

    /// Stops the server, waits `down`, and starts it again: a database restart in the middle of a run.
    pub fn restart_after(&self, down: std::time::Duration) {
        self.pg_ctl("stop");
        std::thread::sleep(down);
        self.pg_ctl("start");
    }

    /// The URL of a table in the `test` database.
    pub fn url(&self, table: &str) -> String {
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/test?table={table}", self.port)
    }

    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(
            &format!("host=127.0.0.1 port={} user=postgres password={PG_PASSWORD} dbname={db}", self.port),
            postgres::NoTls,
        )
        .unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "stop"]);
        let _ = c.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A SQLite file in a fresh directory.
pub fn sqlite_file(name: &str) -> (PathBuf, rusqlite::Connection) {
    let dir = scratch_dir(&format!("sqlite-{name}"));
    let path = dir.join("db.sqlite");
    let _ = std::fs::remove_file(&path);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    (path, c)
}
