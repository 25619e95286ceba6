//! Database tables as source and sink, against real servers: a PostgreSQL cluster per test, SQLite files, and tansu
//! where a topic is one end. Every row is checked: what arrived, its content, what the checkpoints say, the exit code.

use crate::harness::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// The args of a table run: source, sink, state directory, and more.
fn args(source: &str, sink: &str, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["--source".to_string(), source.to_string(), "--sink".into(), sink.to_string()];
    a.extend(["--state-dir".to_string(), state.display().to_string(), "--hashers".into(), "2".into()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs to its end; returns the exit code and the log.
fn run_to_end(args: &[String], timeout: Duration) -> (i32, String) {
    let mut r = start(args);
    let status = r.wait_timeout(timeout);
    if status.is_none() {
        let _ = r.stop(Signal::SIGKILL, Duration::from_secs(5));
        panic!("did not finish within {timeout:?}:\n{}", r.log());
    }
    (status.and_then(|s| s.code()).unwrap_or(-1), r.log())
}

fn until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

const SQRT: &str = ".root = (.value | sqrt)";

/// The article's tables in SQLite: `source(value)` 1..=n and an empty `destination(value, root)`.
fn sqlite_article(name: &str, n: i64) -> (String, String, std::path::PathBuf) {
    let (path, c) = sqlite_file(name);
    c.execute_batch(
        "CREATE TABLE source (value INTEGER PRIMARY KEY);
         CREATE TABLE destination (value INTEGER PRIMARY KEY, root REAL NOT NULL);",
    )
    .unwrap();
    c.execute("WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < ?1) INSERT INTO source SELECT v FROM s", [n])
        .unwrap();
    let p = path.display().to_string();
    (format!("sqlite:{p}?table=source"), format!("sqlite:{p}?table=destination"), path)
}

/// Every destination row, checked: its root is the square root of its value. Returns how many there are.
fn check_roots_sqlite(path: &Path) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    let bad: i64 = c
        .query_row("SELECT count(*) FROM destination WHERE abs(root * root - value) > 1e-6 * value", [], |r| r.get(0))
        .unwrap();
    assert_eq!(bad, 0, "every root is right");
    c.query_row("SELECT count(*) FROM destination", [], |r| r.get(0)).unwrap()
}

fn count_sqlite(path: &Path, table: &str) -> i64 {
    rusqlite::Connection::open(path)
        .and_then(|c| c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)))
        .unwrap_or(0)
}

/// The consumed count of a run's summary line.
fn consumed(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("summary: ").nth(1))
        .filter_map(|s| s.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn sqlite_table_to_table_writes_every_row_once_and_a_finished_scan_stays_finished() {
    let n = 30_000;
    let (src, dst, path) = sqlite_article("article", n);
    let state = scratch_dir("article-state");
    let a = args(&src, &dst, &state, &["--jq", SQRT, "--readers", "4", "--chunk-rows", "4000"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(check_roots_sqlite(&path), n, "every row, once");
    assert!(log.contains("8 of 8 chunks finished, 30000 rows acknowledged"), "{log}");
    assert_eq!(consumed(&log), n as u64, "each row read once");

    // Finished stays finished: nothing is read again, even with the destination emptied.
    rusqlite::Connection::open(&path).unwrap().execute("DELETE FROM destination", []).unwrap();
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("is finished"), "{log}");
    assert_eq!(count_sqlite(&path, "destination"), 0);

    // --rescan starts over.
    let mut again = a.clone();
    again.push("--rescan".into());
    let (code, log) = run_to_end(&again, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(check_roots_sqlite(&path), n);
}

#[test]
fn a_scan_resumes_after_sigterm_and_after_kill_9_of_its_source_and_the_table_has_every_row_once() {
    let n = 300_000;
    let (src, dst, path) = sqlite_article("resume", n);
    let state = scratch_dir("resume-state");
    let a = args(&src, &dst, &state, &["--jq", SQRT, "--readers", "3", "--chunk-rows", "20000"]);

    // SIGTERM in the middle: drained, exit 0, partly done. Progress shows on /metrics meanwhile.
    let mut r = start(&[a.clone(), vec!["--status-interval".into(), "1".into()]].concat());
    let progress = r.wait_metrics(Duration::from_secs(60), |m| {
        m.get("supervisor_scan_rows{state=\"acknowledged\"}").is_some_and(|rows| rows > 0.0)
    });
    let progress = progress.unwrap_or_else(|| panic!("no scan progress on /metrics: {}", r.log()));
    assert_eq!(progress.get("supervisor_scan_chunks{state=\"total\"}"), Some(16.0), "300000 rows in chunks of 20000");
    assert_eq!(progress.get("supervisor_scan_rows{state=\"estimate\"}"), Some(n as f64));
    assert!(r.wait_for_log("status: in ", Duration::from_secs(30)));
    assert!(r.log().contains(" of 16 chunks, "), "the status line shows the scan: {}", r.log());
    assert!(until(Duration::from_secs(60), || count_sqlite(&path, "destination") > 20_000), "{}", r.log());
    assert_eq!(r.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", r.log());
    let first = consumed(&r.log());
    let after_stop = count_sqlite(&path, "destination");
    assert!(after_stop < n, "stopped in the middle ({after_stop} rows)");
    assert_eq!(first, after_stop as u64, "a drained stop leaves nothing read and unwritten");

    // kill -9 of the source in the middle of the next run: the supervisor restarts it and the scan goes on.
    let mut r = start(&a);
    assert!(r.wait_for_log("resuming", Duration::from_secs(30)), "{}", r.log());
    assert!(until(Duration::from_secs(60), || count_sqlite(&path, "destination") > after_stop + 20_000));
    kill(r.child_pid("consumer"), Signal::SIGKILL).unwrap();
    let status = r.wait_timeout(Duration::from_secs(120));
    let log = r.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("restarting the pipeline"), "{log}");
    assert_eq!(check_roots_sqlite(&path), n, "every row, and each once: upserts overwrite a replay");
    // What is read again after a kill -9 is at most what was in flight, not the scan so far.
    let read_again = first + consumed(&log) - n as u64;
    assert!(read_again <= 10_000 + 3 * 2000 * 3, "{read_again} rows read again");
}

#[test]
fn skewed_sparse_and_text_keys_split_into_even_chunks() {
    let (path, c) = sqlite_file("skewed");
    // Dense keys, then keys a billion apart, then text keys in a second table.
    c.execute_batch(
        "CREATE TABLE skewed (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 6000)
           INSERT INTO skewed SELECT i, 'dense' FROM s;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 6000)
           INSERT INTO skewed SELECT 1000000000 * i, 'sparse' FROM s;
         CREATE TABLE texts (name TEXT PRIMARY KEY, v INTEGER);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 9000)
           INSERT INTO texts SELECT printf('%c-%05d', 97 + (i % 3) * (i % 3), i), i FROM s;
         CREATE TABLE out_skewed (id INTEGER PRIMARY KEY, v TEXT, hash TEXT);
         CREATE TABLE out_texts (name TEXT PRIMARY KEY, v INTEGER, hash TEXT);",
    )
    .unwrap();
    let p = path.display().to_string();
    for (table, rows) in [("skewed", 12_000), ("texts", 9_000)] {
        let state = scratch_dir(&format!("skewed-state-{table}"));
        let a = args(
            &format!("sqlite:{p}?table={table}"),
            &format!("sqlite:{p}?table=out_{table}"),
            &state,
            &["--chunk-rows", "1000"],
        );
        let (code, log) = run_to_end(&a, Duration::from_secs(120));
        assert_eq!(code, 0, "{log}");
        assert_eq!(count_sqlite(&path, &format!("out_{table}")), rows);
        let store = rusqlite::Connection::open(state.join("checkpoints.db")).unwrap();
        let sizes: Vec<i64> = store
            .prepare("SELECT rows FROM supervisor_chunk ORDER BY chunk")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let last = sizes.len() - 1;
        assert!(
            sizes[..last].iter().all(|&s| s == 1000),
            "{table}: every chunk but the last holds 1000 rows: {sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<i64>(), rows);
    }
}

#[test]
fn rows_the_table_refuses_go_to_the_dead_letter_table_with_the_error() {
    let (path, c) = sqlite_file("refused");
    c.execute_batch(
        "CREATE TABLE source (value INTEGER PRIMARY KEY);
         WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 5000) INSERT INTO source SELECT v FROM s;
         CREATE TABLE destination (value INTEGER PRIMARY KEY, root REAL NOT NULL CHECK (root < 50));",
    )
    .unwrap();
    let p = path.display().to_string();
    let state = scratch_dir("refused-state");
    let a =
        args(&format!("sqlite:{p}?table=source"), &format!("sqlite:{p}?table=destination"), &state, &["--jq", SQRT]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    // sqrt(v) < 50 for v < 2500
    assert_eq!(count_sqlite(&path, "destination"), 2499);
    assert_eq!(count_sqlite(&path, "destination_dead_letter"), 5000 - 2499);
    let c = rusqlite::Connection::open(&path).unwrap();
    let (reason, event): (String, String) = c
        .query_row("SELECT reason, event FROM destination_dead_letter ORDER BY rowid LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(reason.contains("CHECK constraint failed"), "{reason}");
    assert!(event.contains("\"root\":"), "{event}");
}

#[test]
fn bad_urls_missing_tables_and_columns_are_one_clear_error_and_nothing_is_written() {
    let (src, dst, path) = sqlite_article("bad", 100);
    let state = scratch_dir("bad-state");
    let p = path.display().to_string();
    let cases: [(String, String, i32, &str); 5] = [
        ("kafka://x".into(), dst.clone(), 2, "is not a database URL"),
        (format!("sqlite:{p}"), dst.clone(), 2, "which table? add ?table=NAME"),
        (format!("sqlite:{p}?table=nope"), dst.clone(), 2, "table \"nope\" does not exist"),
        (format!("sqlite:{p}?table=source&key=nope"), dst.clone(), 2, "has no column \"nope\""),
        (src.clone(), format!("sqlite:{p}?table=missing"), 2, "table \"missing\" does not exist"),
    ];
    for (source, sink, expected, says) in cases {
        let (code, log) = run_to_end(&args(&source, &sink, &state, &[]), Duration::from_secs(60));
        assert_eq!(code, expected, "{source} → {sink}: {log}");
        assert!(log.contains(says), "{source} → {sink}: wanted {says:?} in {log}");
        assert!(!log.contains("pipeline running"), "{log}");
    }
    assert_eq!(count_sqlite(&path, "destination"), 0, "nothing written");
}

#[test]
fn postgres_table_to_table_keeps_types_and_text_keys_and_a_wrong_password_is_refused() {
    let pg = Postgres::start("types");
    let mut c = pg.client("test");
    c.batch_execute(
        "CREATE TABLE items (id text PRIMARY KEY, n int, x double precision, price numeric(10,2), note text,
                             at timestamptz, raw bytea, missing int);
         INSERT INTO items SELECT 'item-' || lpad(i::text, 5, '0'), i, i / 4.0, i * 1.25, 'note ' || i,
                                  timestamptz '2026-01-02 03:04:05+00' + i * interval '1 minute',
                                  decode(lpad(to_hex(i), 4, '0'), 'hex'), NULL
           FROM generate_series(1, 5000) AS i;
         CREATE TABLE items_out (id text PRIMARY KEY, n int, x double precision, price numeric(10,2), note text,
                                 at timestamptz, raw text, missing int, hash text NOT NULL);",
    )
    .unwrap();
    let state = scratch_dir("types-state");
    let a = args(&pg.url("items"), &pg.url("items_out"), &state, &["--chunk-rows", "700", "--readers", "3"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains(PG_PASSWORD), "the password is never printed");
    let same: i64 = c
        .query_one(
            "SELECT count(*) FROM items i JOIN items_out o USING (id)
             WHERE o.n = i.n AND o.x = i.x AND o.price = i.price AND o.note = i.note AND o.at = i.at
               AND decode(o.raw, 'base64') = i.raw AND o.missing IS NULL AND length(o.hash) = 32",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(same, 5000, "every row, every value as it was");

    // A wrong password: refused at start, exit 2, the password not printed.
    let wrong = pg.url("items").replace(PG_PASSWORD, "not-the-password");
    let (code, log) = run_to_end(&args(&wrong, &pg.url("items_out"), &state, &["--rescan"]), Duration::from_secs(60));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("refused") && !log.contains("not-the-password"), "{log}");
    // Nobody listening: exit 3.
    let down = format!("postgres://postgres@127.0.0.1:{}/test?table=items", free_port());
    let (code, log) = run_to_end(&args(&down, &pg.url("items_out"), &state, &[]), Duration::from_secs(60));
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("cannot reach the database"), "{log}");
}

#[test]
fn a_postgres_restart_in_the_middle_of_a_scan_only_holds_it_back() {
    let pg = Postgres::start("restart");
    let mut c = pg.client("test");
    let n = 200_000i64;
    c.batch_execute(&format!(
        "CREATE TABLE source (value bigint PRIMARY KEY);
         INSERT INTO source SELECT generate_series(1, {n});
         CREATE TABLE destination (value bigint PRIMARY KEY, root double precision NOT NULL);"
    ))
    .unwrap();
    let state = scratch_dir("restart-state");
    let a = args(&pg.url("source"), &pg.url("destination"), &state, &["--jq", SQRT, "--chunk-rows", "20000"]);
    let mut r = start(&a);
    let count = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM destination", &[]).map(|r| r.get(0)).unwrap_or(0)
    };
    assert!(until(Duration::from_secs(60), || count(&mut c) > 10_000), "{}", r.log());
    drop(c);
    pg.restart_after(Duration::from_secs(3));
    let status = r.wait_timeout(Duration::from_secs(180));
    let log = r.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("retry"), "the restart was seen and retried: {log}");
    let mut c = pg.client("test");
    let (rows, bad): (i64, i64) = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE abs(root * root - value) > 1e-6 * value) FROM destination",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((rows, bad), (n, 0));
}

#[test]
fn postgres_table_to_topic_and_topic_to_sqlite_table() {
    let broker = Broker::with_topics("tables");
    let pg = Postgres::start("to-topic");
    let mut c = pg.client("test");
    c.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, name text);
         INSERT INTO people SELECT i, 'person ' || i FROM generate_series(1, 3000) AS i;",
    )
    .unwrap();
    // Table → topic: every row arrives, keyed by its key, as a JSON object with its hash.
    let state = scratch_dir("to-topic-state");
    let mut a = base_args(&broker.addr, "to-topic");
    a.extend(["--source".into(), pg.url("people"), "--state-dir".into(), state.display().to_string()]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let out = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= 3000);
    assert_eq!(out.len(), 3000, "every row once");
    for m in &out {
        let v: serde_json::Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
        let id = v["id"].as_i64().unwrap();
        assert_eq!(m.key.as_deref(), Some(id.to_string().as_bytes()));
        assert_eq!(v["name"], format!("person {id}"));
        assert_eq!(v["hash"].as_str().map(str::len), Some(32));
    }

    // Topic → table: the topic's events become rows; Ctrl-C drains and commits.
    let (path, sc) = sqlite_file("from-topic");
    sc.execute_batch("CREATE TABLE copy (id INTEGER PRIMARY KEY, name TEXT, hash TEXT)").unwrap();
    let mut a = base_args(&broker.addr, "from-topic");
    a.iter_mut().for_each(|s| {
        if s == "src" {
            *s = "dst".into()
        }
    });
    // The events have their hash already: keep them as they are.
    a.extend(["--sink".into(), format!("sqlite:{}?table=copy", path.display()), "--jq".into(), ".".into()]);
    let mut r = start(&a);
    assert!(until(Duration::from_secs(60), || count_sqlite(&path, "copy") == 3000), "{}", r.log());
    assert_eq!(r.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", r.log());
    let total: i64 = committed(&broker.addr, "from-topic", "dst").iter().sum();
    assert_eq!(total, 3000, "every offset committed once its row is in the table");
}
