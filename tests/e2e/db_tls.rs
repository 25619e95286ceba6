//! Real servers as users have them: TLS-only PostgreSQL and MariaDB (a CA and certificate made per test, plain TCP
//! refused), passwords that never sit on a command line (`PGPASSWORD`, a password file, `password=@FILE`,
//! `$CREDENTIALS_DIRECTORY`), a password that does is in no process's `ps` line, and the server's own words when it
//! refuses us.

use crate::harness::*;
use crate::tables::{args, article, run_to_end_with_env as run_to_end, SQRT};
use std::path::Path;
use std::time::Duration;

/// Every source row arrived once, its root right.
fn assert_copied(db: &Db, n: i64) {
    assert_eq!(db.count("destination"), n);
    assert_eq!(
        db.one("SELECT COUNT(*) FROM destination d JOIN source s ON s.value = d.value WHERE ABS(d.root * d.root - d.value) <= 1e-6 * d.value"),
        n,
        "every row, its root checked"
    );
}

/// A run that must fail at once: its exit code, and its one error line, which must say `says`.
fn assert_refused(source: &str, sink: &str, state: &Path, says: &str) {
    let (code, log) = run_to_end(&args(source, sink, state, &[]), &[], Duration::from_secs(60));
    assert_eq!(code, 2, "{source}: {log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.starts_with("error:")).collect();
    assert!(errors.len() == 1 && errors[0].contains(says), "{source}: wanted one error {says:?} in {log}");
    assert!(!log.contains("pipeline running"), "{log}");
}

mod tls {
    use super::*;

    #[test]
    fn postgres() {
        let pg = Postgres::start_tls("tls");
        let certs = pg.certs.as_ref().unwrap();
        let (ca, stranger) = (certs.ca.display().to_string(), certs.stranger_ca.display().to_string());
        let base = format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/test", pg.port);
        let db = Db::Postgres(pg);
        article(&db, 3000);
        let state = scratch_dir("tls-state-postgres");

        // Plain TCP is refused by the server: it says so, and how to ask for TLS.
        let plain = format!("{base}?table=source&sslmode=disable");
        assert_refused(
            &plain,
            &format!("{base}?table=destination"),
            &state,
            "the server requires TLS: add sslmode=require",
        );

        // A CA that did not sign the server's certificate: one clear line, exit 2, whatever the mode that verifies.
        for mode in ["verify-full", "verify-ca", "require"] {
            let wrong = format!("{base}?table=source&sslmode={mode}&sslrootcert={stranger}");
            assert_refused(&wrong, &format!("{base}?table=destination"), &state, "certificate verification failed");
        }
        let missing = format!("{base}?table=source&sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        assert_refused(
            &missing,
            &format!("{base}?table=destination"),
            &state,
            "sslrootcert=/nonexistent/ca.pem: cannot read it",
        );

        // Verified, host name included, for the source, the sink and the checkpoint store.
        // The sink by name (localhost), the source and the store by address: both are in the certificate.
        let by_name = base.replace("@127.0.0.1:", "@localhost:");
        let tls = |table: &str| {
            let base = if table == "destination" { &by_name } else { &base };
            format!("{base}?table={table}&sslmode=verify-full&sslrootcert={ca}")
        };
        let checkpoint = format!("{base}?sslmode=verify-full&sslrootcert={ca}");
        let a = args(&tls("source"), &tls("destination"), &state, &["--jq", SQRT, "--checkpoint", &checkpoint]);
        let (code, log) = run_to_end(&a, &[], Duration::from_secs(120));
        assert_eq!(code, 0, "{log}");
        assert_copied(&db, 3000);
        assert!(!log.contains(PG_PASSWORD), "the password is never printed");
    }

    #[test]
    fn mariadb() {
        let m = Mariadb::start_tls("tls");
        let certs = m.certs.as_ref().unwrap();
        let (ca, stranger) = (certs.ca.display().to_string(), certs.stranger_ca.display().to_string());
        let base = format!("mysql://test:{MARIA_PASSWORD}@127.0.0.1:{}/test", m.port);
        let db = Db::Mariadb(m);
        article(&db, 3000);
        let state = scratch_dir("tls-state-mariadb");

        let plain = format!("{base}?table=source&ssl-mode=DISABLED");
        assert_refused(&plain, &format!("{base}?table=destination"), &state, "drop ssl-mode=DISABLED");

        for mode in ["VERIFY_IDENTITY", "VERIFY_CA", "REQUIRED"] {
            let wrong = format!("{base}?table=source&ssl-mode={mode}&ssl-ca={stranger}");
            assert_refused(&wrong, &format!("{base}?table=destination"), &state, "certificate verification failed");
        }
        let missing = format!("{base}?table=source&ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem");
        assert_refused(
            &missing,
            &format!("{base}?table=destination"),
            &state,
            "ssl-ca=/nonexistent/ca.pem: cannot read",
        );

        let tls = |table: &str| format!("{base}?table={table}&ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}");
        let checkpoint = format!("{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}");
        let a = args(&tls("source"), &tls("destination"), &state, &["--jq", SQRT, "--checkpoint", &checkpoint]);
        let (code, log) = run_to_end(&a, &[], Duration::from_secs(120));
        assert_eq!(code, 0, "{log}");
        assert_copied(&db, 3000);
        assert!(!log.contains(MARIA_PASSWORD), "the password is never printed");
    }
}

/// Every process of the tree under `root`, itself included.
fn tree(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    out
}

mod passwords {
    use super::*;

    /// Runs the copy with `source` and `sink` and `env`, into an emptied destination; every row must arrive and the
    /// password never show.
    fn copies(db: &Db, what: &str, source: &str, sink: &str, env: &[(&str, &str)], password: &str) {
        db.exec("DELETE FROM destination");
        let state = scratch_dir(&format!("passwords-state-{}", what.replace(' ', "-")));
        let a = args(source, sink, &state, &["--jq", SQRT]);
        let (code, log) = run_to_end(&a, env, Duration::from_secs(120));
        assert_eq!(code, 0, "{what}: {log}");
        assert_copied(db, 500);
        assert!(!log.contains(password), "{what}: the password is never printed: {log}");
    }

    /// PostgreSQL: `PGPASSWORD`, `PGPASSFILE`, `~/.pgpass`, `password=@FILE`, `$CREDENTIALS_DIRECTORY`; a password
    /// file others may read is ignored with a warning. And the server's own words: a wrong password, an unknown
    /// database, a port nobody listens on.
    #[test]
    fn postgres() {
        let db = Db::start("postgres", "passwords");
        article(&db, 500);
        let Db::Postgres(pg) = &db else { unreachable!() };
        let port = pg.port;
        let dir = scratch_dir("passwords-postgres-files");
        let url = |table: &str| format!("postgres://postgres@127.0.0.1:{port}/test?table={table}");
        let (src, dst) = (url("source"), url("destination"));

        copies(&db, "PGPASSWORD", &src, &dst, &[("PGPASSWORD", PG_PASSWORD)], PG_PASSWORD);

        std::fs::write(dir.join("db-password"), format!("{PG_PASSWORD}\n")).unwrap();
        let file = dir.join("db-password").display().to_string();
        let with = |u: &str, p: &str| format!("{u}&password={p}");
        copies(
            &db,
            "password file",
            &with(&src, &format!("@{file}")),
            &with(&dst, &format!("@{file}")),
            &[],
            PG_PASSWORD,
        );
        let dir_s = dir.display().to_string();
        let credentials = [("CREDENTIALS_DIRECTORY", dir_s.as_str())];
        copies(&db, "credentials", &with(&src, "@db-password"), &with(&dst, "@db-password"), &credentials, PG_PASSWORD);

        // libpq's password file: host:port:database:user:password, `*` for any; mode 0600 or it is ignored.
        let pgpass = dir.join("pgpass");
        std::fs::write(&pgpass, format!("# ours\nelsewhere:*:*:*:no\n127.0.0.1:{port}:*:postgres:{PG_PASSWORD}\n"))
            .unwrap();
        let mode = |m| std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
        mode(0o600);
        let pgpass_s = pgpass.display().to_string();
        copies(&db, "PGPASSFILE", &src, &dst, &[("PGPASSFILE", pgpass_s.as_str())], PG_PASSWORD);
        std::fs::copy(&pgpass, dir.join(".pgpass")).unwrap();
        copies(&db, "home pgpass", &src, &dst, &[("HOME", dir_s.as_str())], PG_PASSWORD);
        mode(0o644);
        let state = scratch_dir("passwords-state-open-pgpass");
        let (code, log) =
            run_to_end(&args(&src, &dst, &state, &[]), &[("PGPASSFILE", pgpass_s.as_str())], Duration::from_secs(60));
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("has group or world access and is ignored"), "{log}");
        assert!(log.contains("no password given: add password=@FILE"), "{log}");

        // The server's own words, never the client's "db error".
        let dst = db.url("destination");
        let wrong = format!("postgres://postgres:not-the-password@127.0.0.1:{port}/test?table=source");
        assert_refused(&wrong, &dst, &state, "password authentication failed for user \"postgres\" (SQLSTATE 28P01)");
        let unknown = format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{port}/nope?table=source");
        assert_refused(&unknown, &dst, &state, "database \"nope\" does not exist (SQLSTATE 3D000)");
        let nobody = format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/test?table=source", free_port());
        let (code, log) = run_to_end(&args(&nobody, &dst, &state, &[]), &[], Duration::from_secs(60));
        assert_eq!(code, 3, "{log}");
        assert!(log.contains("cannot reach the database") && log.contains("Connection refused"), "{log}");
    }

    /// MariaDB: `password=@FILE` and `$CREDENTIALS_DIRECTORY`; the server's words.
    #[test]
    fn mariadb() {
        let db = Db::start("mariadb", "passwords");
        article(&db, 500);
        let Db::Mariadb(m) = &db else { unreachable!() };
        let port = m.port;
        let dir = scratch_dir("passwords-mariadb-files");
        std::fs::write(dir.join("db-password"), format!("{MARIA_PASSWORD}\n")).unwrap();
        let file = dir.join("db-password").display().to_string();
        let url = |table: &str, p: &str| format!("mysql://test@127.0.0.1:{port}/test?table={table}&password={p}");
        let at_file = format!("@{file}");
        copies(&db, "password file", &url("source", &at_file), &url("destination", &at_file), &[], MARIA_PASSWORD);
        let dir_s = dir.display().to_string();
        let credentials = [("CREDENTIALS_DIRECTORY", dir_s.as_str())];
        let (src, dst) = (url("source", "@db-password"), url("destination", "@db-password"));
        copies(&db, "credentials", &src, &dst, &credentials, MARIA_PASSWORD);

        let state = scratch_dir("passwords-state-mariadb-words");
        let dst = db.url("destination");
        let wrong = format!("mysql://test:not-the-password@127.0.0.1:{port}/test?table=source");
        assert_refused(&wrong, &dst, &state, "ERROR 1045 (28000): Access denied for user 'test'");
        let unknown = format!("mysql://test:{MARIA_PASSWORD}@127.0.0.1:{port}/nope?table=source");
        assert_refused(&unknown, &dst, &state, "Unknown database 'nope'");
        let nobody = format!("mysql://test:{MARIA_PASSWORD}@127.0.0.1:{}/test?table=source", free_port());
        let (code, log) = run_to_end(&args(&nobody, &dst, &state, &[]), &[], Duration::from_secs(60));
        assert_eq!(code, 3, "{log}");
        assert!(log.contains("cannot reach the database") && log.contains("Connection refused"), "{log}");
    }

    /// A password that does come in an argument (the URL's, a `password=` parameter, the checkpoint store's) is in
    /// no process's command line while the pipeline runs, and in none of its output.
    #[test]
    fn not_on_any_command_line() {
        let db = Db::start("postgres", "cmdline");
        article(&db, 20_000);
        let Db::Postgres(pg) = &db else { unreachable!() };
        let base = format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/test", pg.port);
        let as_parameter = format!("postgres://postgres@127.0.0.1:{}/test?password={PG_PASSWORD}", pg.port);
        let state = scratch_dir("cmdline-state");
        let a = args(
            &format!("{base}?table=source"),
            &format!("{as_parameter}&table=destination"),
            &state,
            &["--jq", SQRT, "--checkpoint", &base, "--readers", "2", "--max-rate", "4000"],
        );
        let mut r = start(&a);
        assert!(r.wait_ready(Duration::from_secs(60)), "{}", r.log());
        let mut seen = 0;
        for _ in 0..5 {
            let pids = tree(r.child.id() as i32);
            for pid in &pids {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                assert!(!cmdline.contains(PG_PASSWORD), "pid {pid}: {cmdline}");
                if *pid == r.child.id() as i32 {
                    assert!(cmdline.contains("--source postgres://postgres:********@127.0.0.1"), "{cmdline}");
                }
            }
            seen = seen.max(pids.len());
            std::thread::sleep(Duration::from_millis(200));
        }
        // The supervisor, its source, 2 readers, 2 hashers and its sink.
        assert!(seen >= 7, "{seen} processes: {}", r.log());
        let status = r.wait_timeout(Duration::from_secs(120));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", r.log());
        assert_copied(&db, 20_000);
        assert!(!r.log().contains(PG_PASSWORD), "{}", r.log());
    }
}
