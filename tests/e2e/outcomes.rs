//! Honest outcomes: a run whose dead letters are systematic (every row refused by the table, a transform that fails on
//! every event) stops with exit 7 and the reason, within seconds, and commits only what was written or dead-lettered;
//! the odd bad event still ends in exit 0.

use crate::harness::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Runs to its end; returns the exit code, the log and how long it took.
fn run_to_end(args: &[String], timeout: Duration) -> (i32, String, Duration) {
    let t0 = Instant::now();
    let (code, log) = crate::tables::run_to_end(args, timeout);
    (code, log, t0.elapsed())
}

/// The args of a table run, its state directory named after `name`.
fn table_args(source: &str, sink: &str, name: &str, extra: &[&str]) -> Vec<String> {
    crate::tables::args(source, sink, &scratch_dir(&format!("{name}-state")), extra)
}

/// The one error line that says why the run stopped.
fn too_many_line(log: &str) -> &str {
    log.lines().find(|l| l.contains("too many dead letters: ")).unwrap_or_else(|| panic!("no verdict line:\n{log}"))
}

/// Rows acknowledged by the table source, from the summary (`…, N rows in all`).
fn rows_in_all(log: &str) -> i64 {
    let summary = log.lines().find(|l| l.contains("summary: ")).unwrap_or_else(|| panic!("no summary:\n{log}"));
    let before = summary.split(" rows in all").next().unwrap_or_default();
    before.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no rows count: {summary}"))
}

#[test]
fn a_table_that_refuses_every_row_stops_the_run_with_exit_7() {
    // A PostgreSQL column of text that a MariaDB INT column refuses on every row ("n/a" is no integer).
    let pg = Db::start("postgres", "refuse-all-pg");
    pg.exec("CREATE TABLE readings (id BIGINT PRIMARY KEY, level TEXT NOT NULL)");
    pg.fill("readings", "id, level", "v, 'n/a'", 20_000);
    let maria = Db::start("mariadb", "refuse-all-maria");
    maria.exec("CREATE TABLE readings (id BIGINT PRIMARY KEY, level INT NOT NULL)");
    let a = table_args(&pg.url("readings"), &maria.url("readings"), "refuse-all", &["--chunk-rows", "2000"]);
    let (code, log, took) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 7, "{log}");
    assert!(took < Duration::from_secs(30), "stopped within seconds, not after the whole table: {took:?}");
    let line = too_many_line(&log);
    assert!(line.contains("of the last") && line.contains("more than --max-dead-letters 10%"), "{line}");
    assert!(line.contains("Incorrect integer value: 'n/a'"), "the database's own words: {line}");
    assert!(line.contains("e.g. the event at chunk "), "{line}");
    assert_eq!(error_lines(&log).iter().filter(|l| l.contains("too many dead letters")).count(), 1, "{log}");
    assert_eq!(maria.count("readings"), 0, "nothing written");
    let dead = maria.count("readings_dead_letter");
    assert!((100..20_000).contains(&dead), "stopped early: {dead} dead letters");
    // What the source checkpointed is no more than what went somewhere: every checkpointed row is a dead letter.
    let acked = rows_in_all(&log);
    assert!(acked <= dead, "checkpointed {acked} rows, dead-lettered {dead}:\n{log}");
}

#[test]
fn a_transform_that_makes_no_rows_stops_the_run_with_exit_7() {
    // `--jq '.name'` makes strings, and a table row is an object: every event would be a dead letter.
    let db = Db::start("sqlite", "jq-name");
    db.exec(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE people_out (id INTEGER PRIMARY KEY, name TEXT)",
    );
    db.fill("people", "id, name", "v, 'person ' || v", 50_000);
    let a = table_args(&db.url("people"), &db.url("people_out"), "jq-name", &["--jq", ".name"]);
    let (code, log, took) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 7, "{log}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let line = too_many_line(&log);
    assert!(line.contains("not a JSON object"), "the reason is named: {line}");
    assert_eq!(db.count("people_out"), 0);
    let dead = db.count("people_out_dead_letter");
    assert!((100..50_000).contains(&dead), "{dead}");
    assert!(rows_in_all(&log) <= dead, "{log}");
}

#[test]
fn a_jq_filter_that_fails_on_every_event_stops_and_commits_only_the_dead_letters() {
    let broker = Broker::with_topics("jq-every");
    let events = name_events(5_000, 64);
    produce(&broker.addr, "src", &events);
    let mut args = base_args(&broker.addr, "jq-every");
    args.extend(["--hashers", "2", "--jq", r#"error("no tax rate for \(.name)")"#].map(String::from));
    let (code, log, took) = run_to_end(&args, Duration::from_secs(90));
    assert_eq!(code, 7, "{log}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    let line = too_many_line(&log);
    assert!(line.contains("no tax rate for") && line.contains("e.g. the event at partition "), "{line}");
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(10), |m| m.len() >= 100);
    let committed = committed(&broker.addr, "jq-every", "src");
    // Every offset below a committed one is in the dead-letter topic: nothing committed went nowhere.
    let mut dead: HashMap<i32, Vec<i64>> = HashMap::new();
    for m in &dlq {
        let p: i32 = m.headers["dlq.source.partition"].parse().unwrap();
        dead.entry(p).or_default().push(m.headers["dlq.source.offset"].parse().unwrap());
    }
    for (p, &c) in committed.iter().enumerate() {
        let have = dead.get(&(p as i32)).map_or(&[][..], Vec::as_slice);
        for o in 0..c.max(0) {
            assert!(have.contains(&o), "partition {p} committed to {c} but offset {o} is in no topic");
        }
    }
    let total: i64 = committed.iter().map(|c| c.max(&0)).sum();
    assert!(total >= 1 && (total as usize) < events.len(), "committed {committed:?} of {}", events.len());
    assert!(read_until(&broker.addr, "dst", Duration::from_secs(2), |_| false).is_empty());
}

#[test]
fn the_odd_bad_row_still_ends_in_exit_0() {
    let db = Db::start("sqlite", "odd-bad");
    db.exec(
        "CREATE TABLE source (value INTEGER PRIMARY KEY);
         CREATE TABLE destination (value INTEGER PRIMARY KEY CHECK (value % 1000 <> 0))",
    );
    db.fill("source", "value", "v", 5_000);
    let a = table_args(&db.url("source"), &db.url("destination"), "odd-bad", &[]);
    let (code, log, _) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(db.count("destination"), 4_995);
    assert_eq!(db.count("destination_dead_letter"), 5, "one row in a thousand refused");
    assert!(log.contains("summary: 5000 consumed, 4995 delivered, 5 dead-lettered"), "{log}");
}

#[test]
fn a_wrong_max_dead_letters_is_refused() {
    let out = command().args(["--max-dead-letters", "lots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-dead-letters") && err.contains("expected a share"), "{err}");
}

#[test]
fn a_jq_halt_error_fails_its_event_only() {
    let db = Db::start("sqlite", "halt-error");
    db.exec(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL);
         CREATE TABLE orders_out (id INTEGER PRIMARY KEY, total INTEGER)",
    );
    db.fill("orders", "id, total", "v, v * 10", 2_000);
    let filter =
        r#"if .id == 700 then "no tax rate for order \(.id)" | halt_error elif .id == 900 then halt else . end"#;
    let a = table_args(&db.url("orders"), &db.url("orders_out"), "halt-error", &["--jq", filter]);
    let (code, log, _) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("restarting"), "no worker ended: {log}");
    assert_eq!(db.one("SELECT COUNT(*) FROM orders_out o JOIN orders s ON s.id = o.id AND s.total = o.total"), 1_998);
    assert_eq!(db.count("orders_out_dead_letter"), 2);
    let said = "the jq filter failed: halt_error (exit code 5): no tax rate for order 700";
    assert_eq!(db.one(&format!("SELECT COUNT(*) FROM orders_out_dead_letter WHERE reason = '{said}'")), 1, "{log}");
    assert_eq!(db.one("SELECT COUNT(*) FROM orders_out_dead_letter WHERE reason = 'the jq filter failed: halt'"), 1);
}

#[test]
fn kafka_flags_next_to_tables_are_refused() {
    let db = "sqlite:/nonexistent/x.db?table=t";
    for (args, says) in [
        (vec!["--source", db, "--source-topic", "orders"], "--source-topic does not apply: --source is table t of"),
        (vec!["--source", db, "--group-id", "g"], "--group-id does not apply"),
        (vec!["--sink", db, "--dest-topic", "out"], "--dest-topic does not apply: --sink is table t of"),
        (vec!["--sink", db, "--dlq-topic", "bad"], "whose dead letters go to a table"),
        (vec!["--source", db, "--sink", "sqlite:/nonexistent/y.db?table=u", "--brokers", "k:9092"], "--brokers"),
    ] {
        let out = command().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && err.contains("leave it out"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let out = command().args(["--sink", db]).env("SUPERVISOR_DEST_TOPIC", "out").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dest-topic (from SUPERVISOR_DEST_TOPIC or the config file) does not apply"), "{err}");
}

/// PostgreSQL → MariaDB and → SQLite: a timestamptz into DATETIME(6) as the same instant in UTC with its fraction,
/// bytea into BLOB as the same bytes, booleans, numeric and JSON exactly.
#[test]
fn values_convert_without_loss_across_engines() {
    let pg = Db::start("postgres", "convert-pg");
    pg.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, at TIMESTAMPTZ NOT NULL, raw BYTEA NOT NULL, ok BOOLEAN NOT NULL,
                              amount NUMERIC(40,18) NOT NULL, doc JSONB NOT NULL)",
    );
    pg.fill(
        "events",
        "id, at, raw, ok, amount, doc",
        "v, timestamptz '2024-03-10 10:41:00.123456+02' + v * interval '1 hour 1.5 second',
         decode(lpad(to_hex(v * 7919), 8, '0'), 'hex'), v % 3 = 0,
         12345678901234567890.123456789012345678 + v, jsonb_build_object('v', v, 's', 'x' || v)",
        3_000,
    );
    let maria = Db::start("mariadb", "convert-maria");
    maria.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL, raw BLOB NOT NULL, ok BOOLEAN NOT NULL,
                              amount DECIMAL(40,18) NOT NULL, doc JSON NOT NULL)",
    );
    let a = table_args(&pg.url("events"), &maria.url("events"), "convert-maria", &["--jq", "."]);
    let (code, log, _) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(maria.count("events_dead_letter"), 0, "{log}");
    // Each value computed again on MariaDB's side, in UTC.
    let same = maria.one(
        "SELECT COUNT(*) FROM events WHERE
           at = TIMESTAMP('2024-03-10 08:41:00.123456') + INTERVAL id HOUR + INTERVAL id * 1500000 MICROSECOND
           AND raw = UNHEX(LPAD(HEX(id * 7919), 8, '0')) AND ok = (id % 3 = 0)
           AND amount = 12345678901234567890.123456789012345678 + id
           AND JSON_VALUE(doc, '$.v') = id AND JSON_VALUE(doc, '$.s') = CONCAT('x', id)",
    );
    assert_eq!(same, 3_000, "every value exact");

    let lite = Db::start("sqlite", "convert-lite");
    lite.exec("CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT, raw BLOB, ok INTEGER, amount TEXT, doc JSON)");
    let a = table_args(&pg.url("events"), &lite.url("events"), "convert-lite", &["--jq", "."]);
    let (code, log, _) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let blobs = lite.one("SELECT COUNT(*) FROM events WHERE typeof(raw) = 'blob' AND length(raw) = 4");
    assert_eq!(blobs, 3_000, "bytes stored as a BLOB of the same bytes, not base64 text");
    let v = 1234;
    let hex = format!("{:08X}", v * 7919);
    assert_eq!(lite.one(&format!("SELECT COUNT(*) FROM events WHERE id = {v} AND hex(raw) = '{hex}'")), 1);
    assert_eq!(lite.one("SELECT COUNT(*) FROM events WHERE ok = (id % 3 = 0)"), 3_000);
}

/// A time series keyed by (sensor, time) on MariaDB: a DATETIME key part reads, pages and checkpoints like any other.
#[test]
fn a_time_series_key_on_mariadb() {
    let db = Db::start("mariadb", "series");
    db.exec(
        "CREATE TABLE readings (sensor VARCHAR(20) NOT NULL, at DATETIME(6) NOT NULL, v INT NOT NULL,
                                PRIMARY KEY (sensor, at));
         CREATE TABLE readings_copy (sensor VARCHAR(20) NOT NULL, at DATETIME(6) NOT NULL, v INT NOT NULL,
                                     hash CHAR(32), PRIMARY KEY (sensor, at))",
    );
    db.fill(
        "readings",
        "sensor, at, v",
        "CONCAT('s', v % 5), TIMESTAMP('2026-01-01') + INTERVAL v * 1500000 MICROSECOND, v",
        9_000,
    );
    let a = table_args(&db.url("readings"), &db.url("readings_copy"), "series", &["--chunk-rows", "2000"]);
    let (code, log, _) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("5 of 5 chunks finished, 9000 rows acknowledged"), "{log}");
    let same = db.one(
        "SELECT COUNT(*) FROM readings r JOIN readings_copy c ON c.sensor = r.sensor AND c.at = r.at AND c.v = r.v",
    );
    assert_eq!(same, 9_000, "every row, its time to the microsecond");
}
