//! Real database servers for the table tests: a PostgreSQL cluster of its own per test (Debian's `postgresql-15`,
//! run as the `postgres` user when the tests run as root) on a free loopback port, stopped on drop; and SQLite files.
//! Either server may be TLS-only (`start_tls`): a CA and server certificate made per test, plain TCP refused; the
//! harness itself then connects through the server's Unix socket.

use super::broker::{free_port, scratch_dir, wait_listening};
use super::secured::Certs;
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
    /// A TLS-only cluster's certificates: `ssl=on`, and a `pg_hba.conf` with `hostssl` lines only.
    pub certs: Option<Certs>,
    /// `wal_level`: `logical` (what `--follow` needs) unless a test wants a server without it.
    wal_level: &'static str,
}

impl Postgres {
    pub fn start(name: &str) -> Postgres {
        Postgres::start_with(name, false)
    }

    /// A cluster that takes TCP connections over TLS only, its certificate for 127.0.0.1 and localhost.
    pub fn start_tls(name: &str) -> Postgres {
        Postgres::start_with(name, true)
    }

    /// A cluster whose `wal_level` is `replica`, PostgreSQL's default: no logical decoding.
    pub fn start_without_logical(name: &str) -> Postgres {
        Postgres::start_at(name, false, "replica")
    }

    fn start_with(name: &str, tls: bool) -> Postgres {
        Postgres::start_at(name, tls, "logical")
    }

    fn start_at(name: &str, tls: bool, wal_level: &'static str) -> Postgres {
        let dir = scratch_dir(&format!("pg-{name}"));
        let port = free_port();
        std::fs::write(dir.join("pwfile"), PG_PASSWORD).unwrap();
        let certs = tls.then(|| {
            std::fs::create_dir_all(dir.join("certs")).unwrap();
            Certs::make(&dir.join("certs"))
        });
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
        if let Some(certs) = &certs {
            // The server wants its key readable by itself alone.
            std::fs::set_permissions(&certs.server_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
                 host all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
        }
        let pg = Postgres { port, dir, certs, wal_level };
        pg.pg_ctl("start");
        let mut admin = pg.client("postgres");
        admin.batch_execute("CREATE DATABASE test").unwrap();
        pg
    }

    fn pg_ctl(&self, action: &str) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D").arg(self.dir.join("data")).args(["-w", "-m", "fast", "-l"]).arg(self.dir.join("log"));
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50 -c wal_level={}",
            self.port,
            self.dir.display(),
            self.wal_level
        );
        if let Some(certs) = &self.certs {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                certs.server_cert.display(),
                certs.server_key.display()
            ));
        }
        c.arg("-o").arg(options);
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

    /// The harness's own connection string: over TCP, or through the Unix socket to a TLS-only cluster.
    pub fn connect_string(&self, db: &str) -> String {
        let host = if self.certs.is_some() { self.dir.display().to_string() } else { "127.0.0.1".to_string() };
        format!("host={host} port={} user=postgres password={PG_PASSWORD} dbname={db}", self.port)
    }

    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.connect_string(db), postgres::NoTls).unwrap()
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

pub const MARIA_PASSWORD: &str = "maria-test-secret";

/// A MariaDB server with its own data directory on a free loopback port, user `test` with a password, database
/// `test`; killed and removed on drop.
pub struct Mariadb {
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
    /// A TLS-only server's certificates: `--require-secure-transport=ON`.
    pub certs: Option<Certs>,
}

impl Mariadb {
    pub fn start(name: &str) -> Mariadb {
        Mariadb::start_with(name, false)
    }

    /// A server that takes TCP connections over TLS only, its certificate for 127.0.0.1 and localhost.
    pub fn start_tls(name: &str) -> Mariadb {
        Mariadb::start_with(name, true)
    }

    fn start_with(name: &str, tls: bool) -> Mariadb {
        let dir = scratch_dir(&format!("maria-{name}"));
        let certs = tls.then(|| {
            std::fs::create_dir_all(dir.join("certs")).unwrap();
            Certs::make(&dir.join("certs"))
        });
        // Under the load of the whole suite, mariadb-install-db now and then fails to bootstrap its system tables
        // (its bootstrap server gives up waiting): a fresh data directory and another try, as an operator would.
        for attempt in 1..=3 {
            let _ = std::fs::remove_dir_all(dir.join("data"));
            let mut init = Command::new("mariadb-install-db");
            init.arg("--no-defaults").arg(format!("--datadir={}", dir.join("data").display()));
            init.args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
            if is_root() {
                init.arg("--user=root");
            }
            let what = "mariadb-install-db (scripts/install-deps installs mariadb-server)";
            if attempt == 3 {
                run(init, what);
            } else if init.output().is_ok_and(|o| o.status.success()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        let mut m = Mariadb { port: free_port(), dir, child: None, certs };
        m.spawn();
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults").arg(format!("--socket={}", m.dir.join("sock").display())).args(["-u", "root", "-e"]);
        c.arg(format!(
            "CREATE DATABASE test; CREATE USER 'test'@'%' IDENTIFIED BY '{MARIA_PASSWORD}'; \
             GRANT ALL ON *.* TO 'test'@'%' WITH GRANT OPTION;"
        ));
        run(c, "creating the test user");
        m
    }

    fn spawn(&mut self) {
        let mut c = Command::new("mariadbd");
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve", "--skip-log-bin"])
            .args(["--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2"])
            .arg(format!("--log-error={}", self.dir.join("error.log").display()));
        if let Some(certs) = &self.certs {
            c.arg(format!("--ssl-cert={}", certs.server_cert.display()))
                .arg(format!("--ssl-key={}", certs.server_key.display()))
                .arg(format!("--ssl-ca={}", certs.ca.display()))
                .arg("--require-secure-transport=ON");
        }
        if is_root() {
            c.arg("--user=root");
        }
        self.child = Some(c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap());
        wait_listening("MariaDB", &format!("127.0.0.1:{}", self.port));
    }

    /// Stops the server (as a clean shutdown), waits `down`, and starts it again.
    pub fn restart_after(&mut self, down: std::time::Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        std::thread::sleep(down);
        self.spawn();
    }

    pub fn url(&self, table: &str) -> String {
        format!("mysql://test:{MARIA_PASSWORD}@127.0.0.1:{}/test?table={table}", self.port)
    }

    /// The harness's own connection settings: over TCP, or through the Unix socket to a TLS-only server.
    pub fn opts(&self) -> mysql::Opts {
        let url = format!("mysql://test:{MARIA_PASSWORD}@127.0.0.1:{}/test", self.port);
        let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&url).unwrap());
        match self.certs {
            Some(_) => opts.socket(Some(self.dir.join("sock").display().to_string())).into(),
            None => opts.into(),
        }
    }

    pub fn client(&self) -> mysql::Conn {
        mysql::Conn::new(self.opts()).unwrap()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A database of any engine the table tests run against, with what they need of it: URLs, statements, counts.
pub enum Db {
    Postgres(Postgres),
    Mariadb(Mariadb),
    Sqlite(PathBuf),
}

impl Db {
    /// `kind`: postgres, mariadb or sqlite.
    pub fn start(kind: &str, name: &str) -> Db {
        match kind {
            "postgres" => Db::Postgres(Postgres::start(name)),
            "mariadb" => Db::Mariadb(Mariadb::start(name)),
            _ => Db::Sqlite(sqlite_file(name).0),
        }
    }

    pub fn url(&self, table: &str) -> String {
        match self {
            Db::Postgres(pg) => pg.url(table),
            Db::Mariadb(m) => m.url(table),
            Db::Sqlite(path) => format!("sqlite:{}?table={table}", path.display()),
        }
    }

    /// The database's URL with no table: a checkpoint store.
    pub fn base_url(&self) -> String {
        let url = self.url("x");
        url.strip_suffix("?table=x").unwrap_or(&url).to_string()
    }

    /// Runs statements separated by `;`.
    pub fn exec(&self, sql: &str) {
        match self {
            Db::Postgres(pg) => pg.client("test").batch_execute(sql).unwrap(),
            Db::Mariadb(m) => {
                let mut c = m.client();
                for s in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    mysql::prelude::Queryable::query_drop(&mut c, s).unwrap_or_else(|e| panic!("{s}: {e}"));
                }
            }
            Db::Sqlite(path) => rusqlite::Connection::open(path).unwrap().execute_batch(sql).unwrap(),
        }
    }

    /// The integer the query returns; 0 when it fails (a table not there yet).
    pub fn one(&self, sql: &str) -> i64 {
        match self {
            Db::Postgres(pg) => postgres::Client::connect(&pg.connect_string("test"), postgres::NoTls)
                .ok()
                .and_then(|mut c| c.query_one(&format!("SELECT ({sql})::bigint"), &[]).ok())
                .map_or(0, |r| r.get(0)),
            Db::Mariadb(m) => mysql::Conn::new(m.opts())
                .ok()
                .and_then(|mut c| {
                    mysql::prelude::Queryable::query_first::<Option<i64>, _>(&mut c, sql).ok().flatten().flatten()
                })
                .unwrap_or(0),
            Db::Sqlite(path) => rusqlite::Connection::open(path)
                .and_then(|c| c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0)))
                .ok()
                .flatten()
                .unwrap_or(0),
        }
    }

    pub fn count(&self, table: &str) -> i64 {
        self.one(&format!("SELECT COUNT(*) FROM {table}"))
    }

    /// Inserts one row per v in 1..=n into `table (cols)`, the row being `exprs` of v.
    pub fn fill(&self, table: &str, cols: &str, exprs: &str, n: i64) {
        let sql = match self {
            Db::Postgres(_) => {
                format!("INSERT INTO {table} ({cols}) SELECT {exprs} FROM generate_series(1::bigint, {n}) AS s(v)")
            }
            Db::Mariadb(_) => {
                format!("INSERT INTO {table} ({cols}) SELECT {exprs} FROM (SELECT seq AS v FROM seq_1_to_{n}) s")
            }
            Db::Sqlite(_) => format!(
                "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < {n}) \
                 INSERT INTO {table} ({cols}) SELECT {exprs} FROM s"
            ),
        };
        self.exec(&sql);
    }

    /// A text column type that can be a key.
    pub fn text_key(&self) -> &'static str {
        match self {
            Db::Mariadb(_) => "VARCHAR(64)",
            _ => "TEXT",
        }
    }

    /// The URL with a wrong password, for the engines that have one.
    pub fn wrong_password(&self, table: &str) -> Option<String> {
        match self {
            Db::Postgres(_) => Some(self.url(table).replace(PG_PASSWORD, "not-the-password")),
            Db::Mariadb(_) => Some(self.url(table).replace(MARIA_PASSWORD, "not-the-password")),
            Db::Sqlite(_) => None,
        }
    }

    /// The URL of a server that is not there, for the engines that have servers.
    pub fn unreachable(&self, table: &str) -> Option<String> {
        let port = free_port();
        match self {
            Db::Postgres(_) => Some(format!("postgres://postgres@127.0.0.1:{port}/test?table={table}")),
            Db::Mariadb(_) => Some(format!("mysql://test@127.0.0.1:{port}/test?table={table}")),
            Db::Sqlite(_) => None,
        }
    }

    pub fn password(&self) -> Option<&'static str> {
        match self {
            Db::Postgres(_) => Some(PG_PASSWORD),
            Db::Mariadb(_) => Some(MARIA_PASSWORD),
            Db::Sqlite(_) => None,
        }
    }

    /// Stops the server for `down` and starts it again.
    pub fn restart_after(&mut self, down: std::time::Duration) {
        match self {
            Db::Postgres(pg) => pg.restart_after(down),
            Db::Mariadb(m) => m.restart_after(down),
            Db::Sqlite(_) => panic!("SQLite has no server to restart"),
        }
    }
}
