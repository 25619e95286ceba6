//! Real servers as users have them: TLS-only PostgreSQL and MariaDB (a CA and certificate made per test, plain TCP
//! refused).

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

/// The args of a table run: source, sink, state directory, and more.
fn args(source: &str, sink: &str, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["--source".to_string(), source.to_string(), "--sink".into(), sink.to_string()];
    a.extend(["--state-dir".to_string(), state.display().to_string(), "--hashers".into(), "2".into()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs to its end with `env` set; returns the exit code and the log.
fn run_to_end(args: &[String], env: &[(&str, &str)], timeout: Duration) -> (i32, String) {
    let mut r = start_with_env(args, env);
    let status = r.wait_timeout(timeout);
    if status.is_none() {
        let _ = r.stop(Signal::SIGKILL, Duration::from_secs(5));
        panic!("did not finish within {timeout:?}:\n{}", r.log());
    }
    (status.and_then(|s| s.code()).unwrap_or(-1), r.log())
}

const SQRT: &str = ".root = (.value | sqrt)";

/// `source (value)` with `n` rows, and an empty `destination (value, root)`.
fn article(db: &Db, n: i64) {
    db.exec(
        "CREATE TABLE source (value BIGINT PRIMARY KEY);
         CREATE TABLE destination (value BIGINT PRIMARY KEY, root DOUBLE PRECISION NOT NULL)",
    );
    db.fill("source", "value", "v", n);
}

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

        // Verified, host name included, for the source, the sink and the checkpoint store.
        let tls = |table: &str| format!("{base}?table={table}&sslmode=verify-full&sslrootcert={ca}");
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

        let tls = |table: &str| format!("{base}?table={table}&ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}");
        let checkpoint = format!("{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}");
        let a = args(&tls("source"), &tls("destination"), &state, &["--jq", SQRT, "--checkpoint", &checkpoint]);
        let (code, log) = run_to_end(&a, &[], Duration::from_secs(120));
        assert_eq!(code, 0, "{log}");
        assert_copied(&db, 3000);
        assert!(!log.contains(MARIA_PASSWORD), "the password is never printed");
    }
}
