//! `--follow`: a PostgreSQL table's snapshot and then its changes, against a real cluster with `wal_level=logical` and
//! Debian's wal2json. What is checked is what a user relies on: the destination equals the source, row by row,
//! whatever was inserted, updated or deleted during the snapshot or after it, through kill -9 of any process and a
//! restart of the server; the slot never confirms what was not written; bad setups are refused with one line.

use crate::harness::*;
use crate::tables::{args, run_to_end, until};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `items` with `n` rows of several types, and an empty `copy` of the same shape.
fn items(pg: &Postgres, n: i64) {
    pg.client("test")
        .batch_execute(&format!(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, amount NUMERIC(30, 10), tags TEXT[], \
               doc JSONB, at TIMESTAMPTZ, version INT NOT NULL DEFAULT 0);
             INSERT INTO items SELECT v, 'item ' || v, v * 1.25, ARRAY['t' || (v % 7), 'a,b'], \
               jsonb_build_object('v', v, 'big', 12345678901234567890), now() FROM generate_series(1, {n}) v;
             CREATE TABLE copy (LIKE items INCLUDING ALL);"
        ))
        .unwrap();
}

/// Rows in one table and not the other, both ways: 0 when the copy equals the source.
fn differ(pg: &Postgres) -> i64 {
    let mut c = pg.client("test");
    c.query_one(
        "SELECT (SELECT COUNT(*) FROM (SELECT * FROM items EXCEPT SELECT * FROM copy) a) + \
                (SELECT COUNT(*) FROM (SELECT * FROM copy EXCEPT SELECT * FROM items) b)",
        &[],
    )
    .map(|r| r.get(0))
    .unwrap_or(-1)
}

fn follow_args(pg: &Postgres, state: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut more = vec!["--follow", "--jq", ".", "--chunk-rows", "4000", "--readers", "3", "--status-interval", "1"];
    more.extend_from_slice(extra);
    args(&pg.url("items"), &pg.url("copy"), state, &more)
}

/// The slot's confirmed position, and the server's WAL end, as LSNs' numbers.
fn slot_lsn(pg: &Postgres) -> Option<(i64, i64)> {
    let mut c = pg.client("test");
    c.query_opt(
        "SELECT (confirmed_flush_lsn - '0/0')::bigint, (pg_current_wal_lsn() - '0/0')::bigint \
         FROM pg_replication_slots WHERE NOT temporary",
        &[],
    )
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1)))
}

/// Inserts, updates (a key too now and then) and deletes, in transactions of a few statements, until stopped;
/// returns how many transactions committed. Ids above `n` are new rows.
fn writer(pg: &Postgres, n: i64, stop: Arc<AtomicBool>, pause: Duration) -> std::thread::JoinHandle<u64> {
    let connect = pg.connect_string("test");
    let next = Arc::new(AtomicI64::new(n + 1));
    std::thread::spawn(move || {
        let mut rng = Random::from_env();
        let mut committed = 0;
        while !stop.load(Ordering::Relaxed) {
            // The server may be restarting: the writer waits for it.
            let Ok(mut c) = postgres::Client::connect(&connect, postgres::NoTls) else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut tx) = c.transaction() else { break };
                let mut ok = true;
                for _ in 0..1 + rng.below(4) {
                    let id = 1 + rng.below(next.load(Ordering::Relaxed) as u64) as i64;
                    let sql = match rng.below(10) {
                        0..=3 => {
                            let new = next.fetch_add(1, Ordering::Relaxed);
                            format!(
                                "INSERT INTO items VALUES ({new}, 'new {new}', {new}.5, ARRAY['n'], '{{\"n\": {new}}}', \
                                 now(), 0)"
                            )
                        }
                        4..=7 => format!(
                            "UPDATE items SET name = name || '+', amount = amount + 0.0000000001, version = version + 1, \
                             doc = doc || '{{\"u\": true}}', tags = tags || 'u'::text WHERE id = {id}"
                        ),
                        8 => format!("DELETE FROM items WHERE id = {id}"),
                        _ => {
                            let new = next.fetch_add(1, Ordering::Relaxed);
                            format!("UPDATE items SET id = {new}, version = version + 1 WHERE id = {id}")
                        }
                    };
                    ok &= tx.batch_execute(&sql).is_ok();
                }
                if ok && tx.commit().is_ok() {
                    committed += 1;
                } else {
                    break;
                }
                std::thread::sleep(pause);
            }
        }
        committed
    })
}

/// The rows in one table and not the other, both ways, as text.
fn differing(pg: &Postgres) -> String {
    let mut c = pg.client("test");
    let rows = c
        .query(
            "(SELECT 'source' AS side, i::text FROM (SELECT * FROM items EXCEPT SELECT * FROM copy) i) UNION ALL \
             (SELECT 'copy', c::text FROM (SELECT * FROM copy EXCEPT SELECT * FROM items) c) LIMIT 20",
            &[],
        )
        .unwrap_or_default();
    rows.iter().map(|r| format!("{}: {}\n", r.get::<_, String>(0), r.get::<_, String>(1))).collect()
}

/// Waits for the copy to equal the source; what differs, and the log, on failure.
fn converges(pg: &Postgres, r: &Running, timeout: Duration) {
    let equal = until(timeout, || differ(pg) == 0);
    assert!(equal, "the copy never equalled the source:\n{}\n{}", differing(pg), r.log());
}

#[test]
/// Inserts, updates, key changes and deletes during the snapshot and after it: the copy equals the source, row by row
/// and type by type; a stop confirms the slot; a restart follows on from it; --drop-slot removes it.
fn changes_during_and_after_the_snapshot_are_copied_row_by_row() {
    let pg = Postgres::start("follow");
    items(&pg, 40_000);
    let state = scratch_dir("follow-state");
    let a = follow_args(&pg, &state, &["--max-rate", "20000"]);
    let mut r = start(&a);
    assert!(r.wait_for_log("made replication slot", Duration::from_secs(30)), "{}", r.log());
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pg, 40_000, stop.clone(), Duration::from_millis(2));
    assert!(r.wait_for_log("is taken", Duration::from_secs(90)), "the snapshot ends: {}", r.log());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let transactions = w.join().unwrap();
    assert!(transactions > 100, "the writer wrote during the snapshot and after it: {transactions}");
    converges(&pg, &r, Duration::from_secs(60));
    let m = r.wait_metrics(Duration::from_secs(10), |m| m.get("supervisor_slot_lag_bytes").is_some()).unwrap();
    assert!(m.get("supervisor_slot_changes").unwrap_or_default() > 100.0);
    assert_eq!(r.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", r.log());
    let log = r.log();
    assert!(log.contains("slot lag"), "the status line shows the slot: {log}");
    assert!(log.contains("and the replication slot up to"), "{log}");
    let (confirmed, end) = slot_lsn(&pg).unwrap();
    assert!(confirmed <= end);

    // A restart follows on: the changes made while it was down arrive, the snapshot is not taken again.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pg, 90_000, stop.clone(), Duration::from_millis(5));
    std::thread::sleep(Duration::from_secs(1));
    let mut r = start(&a);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    converges(&pg, &r, Duration::from_secs(60));
    assert_eq!(r.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", r.log());
    let log = r.log();
    assert!(log.contains("was taken in an earlier run"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");

    // --drop-slot: gone, and said so.
    let (code, log) = run_to_end(&[a.clone(), vec!["--drop-slot".into()]].concat(), Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("dropped replication slot"), "{log}");
    assert_eq!(slot_lsn(&pg), None, "no slot is left behind");
}

#[test]
/// kill -9 of the source, a reader, a worker and the sink at moments the writer does not wait for, a PostgreSQL
/// restart, and kill -9 of the supervisor itself: the copy still equals the source, and whenever the slot confirms
/// the end of everything written, everything is in the copy.
fn kill_9_anywhere_and_a_server_restart_lose_nothing() {
    let pg = Postgres::start("follow-kill");
    items(&pg, 30_000);
    let state = scratch_dir("follow-kill-state");
    let a = follow_args(&pg, &state, &["--max-rate", "10000", "--drain-timeout", "10"]);
    let mut r = start(&a);
    assert!(r.wait_for_log("made replication slot", Duration::from_secs(30)), "{}", r.log());
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pg, 30_000, stop.clone(), Duration::from_millis(3));
    let mut rng = Random::from_env();
    for (n, role) in ["source", "reader-1", "worker-0", "sink"].into_iter().enumerate() {
        assert!(r.wait_metrics(Duration::from_secs(30), |m| m.get("supervisor_ready") == Some(1.0)).is_some());
        std::thread::sleep(Duration::from_millis(300 + rng.below(900)));
        let pid = r.child_pid(role);
        kill(pid, Signal::SIGKILL).unwrap();
        assert!(r.wait_for_log_count("restarting the pipeline", n + 1, Duration::from_secs(30)), "{}", r.log());
    }
    pg.restart_after(Duration::from_millis(500));
    std::thread::sleep(Duration::from_secs(2));
    r.signal(Signal::SIGKILL);
    let _ = r.wait_timeout(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let mut r = start(&a);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let end =
        pg.client("test").query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[]).unwrap().get::<_, i64>(0);
    // The moment the slot confirms everything written, everything is in the copy.
    assert!(
        until(Duration::from_secs(90), || slot_lsn(&pg).is_some_and(|(confirmed, _)| confirmed >= end)),
        "the slot caught up: {:?} of {end}\n{}",
        slot_lsn(&pg),
        r.log()
    );
    assert_eq!(differ(&pg), 0, "the slot confirmed changes the copy does not have:\n{}\n{}", differing(&pg), r.log());
    assert_eq!(r.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", r.log());
}

#[test]
/// 100,000 rows in one transaction after the snapshot: all of them arrive, and the slot confirms the transaction's end
/// only once every one of them is written, through a kill -9 of the sink in the middle.
fn a_large_transaction_is_kept_whole() {
    let pg = Postgres::start("follow-large");
    items(&pg, 1_000);
    let state = scratch_dir("follow-large-state");
    let a = follow_args(&pg, &state, &[]);
    let mut r = start(&a);
    assert!(r.wait_for_log("is taken", Duration::from_secs(60)), "{}", r.log());
    converges(&pg, &r, Duration::from_secs(30));
    let mut c = pg.client("test");
    c.batch_execute(
        "INSERT INTO items SELECT v, 'bulk ' || v, v, ARRAY['b'], '{}', now(), 0 FROM generate_series(100001, 200000) v",
    )
    .unwrap();
    let end: i64 = c.query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[]).unwrap().get(0);
    assert!(until(Duration::from_secs(60), || pg_count(&pg, "copy") > 20_000), "{}", r.log());
    kill(r.child_pid("sink"), Signal::SIGKILL).unwrap();
    let mut seen_whole = false;
    let caught_up = until(Duration::from_secs(120), || {
        let copied = pg_count(&pg, "copy");
        let confirmed = slot_lsn(&pg).map_or(0, |(c, _)| c);
        // Never the transaction's end confirmed with part of it missing.
        assert!(confirmed < end || copied >= 101_000, "confirmed {confirmed} ≥ {end} with {copied} rows copied");
        seen_whole |= confirmed >= end;
        seen_whole && copied == 101_000
    });
    assert!(caught_up, "{}", r.log());
    assert_eq!(differ(&pg), 0);
    assert_eq!(r.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", r.log());
}

fn pg_count(pg: &Postgres, table: &str) -> i64 {
    pg.client("test").query_one(&format!("SELECT COUNT(*) FROM {table}"), &[]).map_or(0, |r| r.get(0))
}

/// One ERROR line that says `says`, exit 2, and nothing running.
fn refused(a: &[String], says: &str) {
    let (code, log) = run_to_end(a, Duration::from_secs(60));
    assert_eq!(code, 2, "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.starts_with("error:")).collect();
    assert!(errors.len() == 1 && errors[0].contains(says), "wanted one error {says:?} in {log}");
    assert!(!log.contains("pipeline running"), "{log}");
}

#[test]
/// wal_level not logical, a role without REPLICATION, a table whose deletes would not carry its key, and --follow on
/// MySQL: one clear line each, exit 2.
fn a_setup_that_cannot_be_followed_is_refused_with_one_line() {
    let state = scratch_dir("follow-bad-state");
    let plain = Postgres::start_without_logical("follow-replica");
    items(&plain, 10);
    refused(&follow_args(&plain, &state, &[]), "--follow needs wal_level=logical");
    drop(plain);

    let pg = Postgres::start("follow-bad");
    items(&pg, 10);
    pg.client("test")
        .batch_execute(
            "CREATE ROLE reader LOGIN PASSWORD 'reader-secret'; GRANT SELECT, INSERT, UPDATE, DELETE ON items, copy TO \
             reader; CREATE TABLE nokey (id BIGINT NOT NULL UNIQUE, v TEXT); INSERT INTO nokey VALUES (1, 'a');",
        )
        .unwrap();
    let as_reader = |table: &str| pg.url(table).replace(&format!("postgres:{PG_PASSWORD}@"), "reader:reader-secret@");
    let a = args(&as_reader("items"), &pg.url("copy"), &state, &["--follow"]);
    refused(&a, "has no REPLICATION");
    let a = args(&format!("{}&key=id", pg.url("nokey")), &pg.url("copy"), &state, &["--follow"]);
    refused(&a, "REPLICA IDENTITY");
    let a = args("mysql://someone:not-a-secret@127.0.0.1:1/db?table=t", &pg.url("copy"), &state, &["--follow"]);
    refused(&a, "--follow reads PostgreSQL's logical replication");
    assert_eq!(slot_lsn(&pg), None, "no slot was made for a refused setup");
}
