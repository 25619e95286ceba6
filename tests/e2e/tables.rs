//! Database tables as source and sink, against real servers: a PostgreSQL cluster and a MariaDB server of its own per
//! test, SQLite files, and tansu where a topic is one end. Most tests run once per engine (`tables::resume::mariadb`).
//! Every row is checked: what arrived, its content, what the checkpoints say, the exit code.

use crate::harness::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// One test per engine, each calling `$name(engine)`.
macro_rules! for_each_engine {
    ($name:ident) => {
        mod $name {
            #[test]
            fn postgres() {
                super::$name("postgres")
            }
            #[test]
            fn mariadb() {
                super::$name("mariadb")
            }
            #[test]
            fn sqlite() {
                super::$name("sqlite")
            }
        }
    };
}
pub(crate) use for_each_engine;

/// The args of a table run: source, sink, state directory, and more.
pub(crate) fn args(source: &str, sink: &str, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["--source".to_string(), source.to_string(), "--sink".into(), sink.to_string()];
    a.extend(["--state-dir".to_string(), state.display().to_string(), "--hashers".into(), "2".into()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs to its end; returns the exit code and the log.
pub(crate) fn run_to_end(args: &[String], timeout: Duration) -> (i32, String) {
    run_to_end_with_env(args, &[], timeout)
}

/// Runs to its end with `env` set; returns the exit code and the log.
pub(crate) fn run_to_end_with_env(args: &[String], env: &[(&str, &str)], timeout: Duration) -> (i32, String) {
    let mut r = start_with_env(args, env);
    let status = r.wait_timeout(timeout);
    if status.is_none() {
        let _ = r.stop(Signal::SIGKILL, Duration::from_secs(5));
        panic!("did not finish within {timeout:?}:\n{}", r.log());
    }
    (status.and_then(|s| s.code()).unwrap_or(-1), r.log())
}

pub(crate) fn until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub(crate) const SQRT: &str = ".root = (.value | sqrt)";

/// The article's tables: `source(value)` 1..=n and an empty `destination(value, root)`.
pub(crate) fn article(db: &Db, n: i64) {
    db.exec(
        "CREATE TABLE source (value BIGINT PRIMARY KEY);
         CREATE TABLE destination (value BIGINT PRIMARY KEY, root DOUBLE PRECISION NOT NULL)",
    );
    db.fill("source", "value", "v", n);
}

/// Every destination row is checked (its root is the square root of its value); returns how many there are.
fn checked_roots(db: &Db) -> i64 {
    assert_eq!(db.one("SELECT COUNT(*) FROM destination WHERE ABS(root * root - value) > 1e-6 * value"), 0);
    db.count("destination")
}

/// The consumed count of a run's summary line.
fn consumed(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("summary: ").nth(1))
        .filter_map(|s| s.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

for_each_engine!(table_to_table);
fn table_to_table(engine: &str) {
    let n = 20_000;
    let db = Db::start(engine, "article");
    article(&db, n);
    let state = scratch_dir(&format!("article-state-{engine}"));
    let a = args(
        &db.url("source"),
        &db.url("destination"),
        &state,
        &["--jq", SQRT, "--readers", "4", "--chunk-rows", "3000"],
    );
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(checked_roots(&db), n, "every row, once");
    assert!(log.contains("7 of 7 chunks finished, 20000 rows acknowledged"), "{log}");
    assert_eq!(consumed(&log), n as u64, "each row read once");
    if let Some(password) = db.password() {
        assert!(!log.contains(password), "the password is never printed");
    }

    // Finished stays finished: nothing is read again, even with the destination emptied.
    db.exec("DELETE FROM destination");
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("is finished"), "{log}");
    assert_eq!(db.count("destination"), 0);

    // --rescan starts over.
    let (code, log) = run_to_end(&[a.clone(), vec!["--rescan".into()]].concat(), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(checked_roots(&db), n);
}

for_each_engine!(resume);
fn resume(engine: &str) {
    let n = 200_000;
    let db = Db::start(engine, "resume");
    article(&db, n);
    let state = scratch_dir(&format!("resume-state-{engine}"));
    let a = args(
        &db.url("source"),
        &db.url("destination"),
        &state,
        // Paced, so that the stops come in the middle however fast the machine.
        &["--jq", SQRT, "--readers", "3", "--chunk-rows", "20000", "--max-rate", "40000"],
    );

    // SIGTERM in the middle: drained, exit 0, partly done. Progress shows on /metrics meanwhile.
    let mut r = start(&[a.clone(), vec!["--status-interval".into(), "1".into()]].concat());
    let progress = r.wait_metrics(Duration::from_secs(60), |m| {
        m.get("supervisor_scan_rows{state=\"acknowledged\"}").is_some_and(|rows| rows > 0.0)
    });
    let progress = progress.unwrap_or_else(|| panic!("no scan progress on /metrics: {}", r.log()));
    // 200000 rows in chunks of 20000: ten, none of them empty (an eleventh after the last row was planned before).
    assert_eq!(progress.get("supervisor_scan_chunks{state=\"total\"}"), Some(10.0), "200000 rows in chunks of 20000");
    assert_eq!(progress.get("supervisor_scan_rows{state=\"estimate\"}"), Some(n as f64));
    // The first status line may come before the scan's first counts: wait for one that has them.
    assert!(r.wait_for_log(" of 10 chunks, ", Duration::from_secs(30)), "the status line shows the scan: {}", r.log());
    assert!(until(Duration::from_secs(60), || db.count("destination") > 20_000), "{}", r.log());
    assert_eq!(r.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", r.log());
    let first = consumed(&r.log());
    let after_stop = db.count("destination");
    assert!(after_stop < n, "stopped in the middle ({after_stop} rows)");
    assert_eq!(first, after_stop as u64, "a drained stop leaves nothing read and unwritten");

    // kill -9 of a reader in the middle of the next run: the supervisor restarts the pipeline and the scan goes on.
    let mut r = start(&a);
    assert!(r.wait_for_log("resuming", Duration::from_secs(30)), "{}", r.log());
    assert!(until(Duration::from_secs(60), || db.count("destination") > after_stop + 20_000));
    kill(r.child_pid("reader-0"), Signal::SIGKILL).unwrap();
    let status = r.wait_timeout(Duration::from_secs(120));
    let log = r.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("restarting the pipeline"), "{log}");
    assert_eq!(checked_roots(&db), n, "every row, and each once: upserts overwrite a replay");
    // What is read again after a kill -9 is at most what was in flight, not the scan so far.
    // (A killed process's last counts may be lost with it: the count is a lower bound.)
    let read_again = (first + consumed(&log)).saturating_sub(n as u64);
    assert!(read_again <= 10_000 + 3 * 2 * 2000, "{read_again} rows read again");
}

fn restart_mid_scan(engine: &str) {
    let n = 150_000;
    let mut db = Db::start(engine, "restart");
    article(&db, n);
    let state = scratch_dir(&format!("restart-state-{engine}"));
    let a = args(&db.url("source"), &db.url("destination"), &state, &["--jq", SQRT, "--chunk-rows", "20000"]);
    let mut r = start(&a);
    assert!(until(Duration::from_secs(60), || db.count("destination") > 10_000), "{}", r.log());
    db.restart_after(Duration::from_secs(3));
    let status = r.wait_timeout(Duration::from_secs(180));
    let log = r.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("retry"), "the restart was seen and retried: {log}");
    assert!(!log.contains("restarting the pipeline"), "a database away for 3 s only holds the scan back: {log}");
    assert_eq!(checked_roots(&db), n);
}

#[test]
fn a_postgres_restart_in_the_middle_of_a_scan_only_holds_it_back() {
    restart_mid_scan("postgres")
}

#[test]
fn a_mariadb_restart_in_the_middle_of_a_scan_only_holds_it_back() {
    restart_mid_scan("mariadb")
}

for_each_engine!(keys);
/// Dense keys then keys a billion apart, and text keys: every chunk but the last holds `--chunk-rows` rows.
fn keys(engine: &str) {
    let db = Db::start(engine, "keys");
    let text = db.text_key();
    db.exec(&format!(
        "CREATE TABLE skewed (id BIGINT PRIMARY KEY, v INTEGER);
         CREATE TABLE texts (name {text} PRIMARY KEY, v INTEGER);
         CREATE TABLE out_skewed (id BIGINT PRIMARY KEY, v INTEGER, hash {text});
         CREATE TABLE out_texts (name {text} PRIMARY KEY, v INTEGER, hash {text})"
    ));
    db.fill("skewed", "id, v", "v, v", 6000);
    db.fill("skewed", "id, v", "1000000000 * v, v", 6000);
    db.fill("texts", "name, v", "CONCAT(CASE v % 3 WHEN 0 THEN 'a' WHEN 1 THEN 'mm' ELSE 'zzz' END, '-', v), v", 9000);
    let mut tables = vec![("skewed", 12_000), ("texts", 9_000)];
    if engine == "sqlite" {
        // A key declared without a type holds integers as they were given.
        db.exec("CREATE TABLE untyped (id PRIMARY KEY, v INTEGER); CREATE TABLE out_untyped (id PRIMARY KEY, v INTEGER, hash TEXT)");
        db.fill("untyped", "id, v", "v * 7, v", 5000);
        tables.push(("untyped", 5000));
    }
    for (table, rows) in tables {
        let state = scratch_dir(&format!("keys-state-{engine}-{table}"));
        let a = args(&db.url(table), &db.url(&format!("out_{table}")), &state, &["--chunk-rows", "1000"]);
        let (code, log) = run_to_end(&a, Duration::from_secs(120));
        assert_eq!(code, 0, "{log}");
        assert_eq!(db.count(&format!("out_{table}")), rows);
        let store = rusqlite::Connection::open(state.join("checkpoints.db")).unwrap();
        let sizes: Vec<i64> = store
            .prepare("SELECT row_count FROM supervisor_chunk ORDER BY chunk")
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

for_each_engine!(refused_rows);
fn refused_rows(engine: &str) {
    let db = Db::start(engine, "refused");
    db.exec(
        "CREATE TABLE source (value BIGINT PRIMARY KEY);
         CREATE TABLE destination (value BIGINT PRIMARY KEY, root DOUBLE PRECISION NOT NULL CHECK (root < 50))",
    );
    db.fill("source", "value", "v", 5000);
    let state = scratch_dir(&format!("refused-state-{engine}"));
    // Half the rows refused is systematic: off here, to see every one of them set aside.
    let a = args(&db.url("source"), &db.url("destination"), &state, &["--jq", SQRT, "--max-dead-letters", "off"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    // sqrt(v) < 50 for v < 2500
    assert_eq!(db.count("destination"), 2499);
    assert_eq!(db.count("destination_dead_letter"), 5000 - 2499, "each refused row, with its event and the error");
    assert_eq!(
        db.one("SELECT COUNT(*) FROM destination_dead_letter WHERE event LIKE '%\"root\":%' AND reason <> ''"),
        2501
    );
    // The summary tells written from dead-lettered: a refused row was not delivered.
    assert!(log.contains("summary: 5000 consumed, 2499 delivered, 2501 dead-lettered"), "{log}");
}

for_each_engine!(bad_settings);
/// A missing table or column, a wrong password, no server: one clear error, a documented exit code, nothing written.
fn bad_settings(engine: &str) {
    let db = Db::start(engine, "bad");
    article(&db, 100);
    db.exec("CREATE TABLE twice (id INTEGER PRIMARY KEY, v INTEGER)");
    db.fill("twice", "id, v", "v, v % 3", 30);
    let state = scratch_dir(&format!("bad-state-{engine}"));
    let (src, dst) = (db.url("source"), db.url("destination"));
    let mut cases: Vec<(String, String, i32, &str)> = vec![
        ("kafka://x".into(), dst.clone(), 2, "is not a database URL"),
        (src.replace("?table=source", ""), dst.clone(), 2, "which table? add ?table=NAME"),
        (db.url("nope"), dst.clone(), 2, "table \"nope\" does not exist"),
        (format!("{src}&key=nope"), dst.clone(), 2, "has no column \"nope\""),
        (format!("{src}&columns=value,nope"), dst.clone(), 2, "has no column \"nope\""),
        (src.clone(), db.url("missing"), 2, "table \"missing\" does not exist"),
        (format!("{}&key=v", db.url("twice")), dst.clone(), 2, "is neither its primary key nor unique"),
    ];
    if let Some(wrong) = db.wrong_password("source") {
        cases.push((wrong, dst.clone(), 2, "refused this client"));
    }
    if engine == "postgres" {
        cases.push((format!("{src}&sslmode=require"), dst.clone(), 2, "the server does not offer TLS"));
        // A password may come as a parameter too: refused, and never printed.
        let as_parameter = src.replace(&format!(":{PG_PASSWORD}@"), "@") + "&password=not-the-password";
        cases.push((as_parameter, dst.clone(), 2, "refused this client"));
    }
    if let Some(down) = db.unreachable("source") {
        cases.push((down, dst.clone(), 3, "cannot reach the database"));
    }
    for (source, sink, expected, says) in cases {
        let (code, log) = run_to_end(&args(&source, &sink, &state, &[]), Duration::from_secs(60));
        assert_eq!(code, expected, "{source} → {sink}: {log}");
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.starts_with("error:")).collect();
        assert!(errors.len() == 1 && errors[0].contains(says), "{source} → {sink}: wanted one error {says:?} in {log}");
        assert!(!log.contains("pipeline running"), "{log}");
        assert!(!log.contains("not-the-password"), "{log}");
    }
    assert_eq!(db.count("destination"), 0, "nothing written");
}

for_each_engine!(topics);
/// Table → topic: every row arrives keyed by its key; topic → table: every event becomes a row, offsets committed.
fn topics(engine: &str) {
    let broker = Broker::with_topics(&format!("tables-{engine}"));
    let db = Db::start(engine, "topics");
    let text = db.text_key();
    db.exec(&format!(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name {text});
         CREATE TABLE copy (id INTEGER PRIMARY KEY, name {text}, hash {text})"
    ));
    db.fill("people", "id, name", "v, CONCAT('person ', v)", 3000);
    let state = scratch_dir(&format!("topics-state-{engine}"));
    let mut a = without(&base_args(&broker.addr, "to-topic"), &["source-topic", "group-id"]);
    a.extend(["--source".into(), db.url("people"), "--state-dir".into(), state.display().to_string()]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let out = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= 3000);
    assert_eq!(out.len(), 3000, "every row once");
    // Scanned again: the topic has every key twice, which the table below must take (the later of each wins).
    let (code, log) = run_to_end(&[a.clone(), vec!["--rescan".into()]].concat(), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    for m in &out {
        let v: serde_json::Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
        let id = v["id"].as_i64().unwrap();
        assert_eq!(m.key.as_deref(), Some(id.to_string().as_bytes()));
        assert_eq!(v["name"], format!("person {id}"));
        assert_eq!(v["hash"].as_str().map(str::len), Some(32));
    }

    // Topic → table: the topic's events become rows (they have their hash already: kept as they are).
    let mut a = without(&base_args(&broker.addr, "from-topic"), &["dest-topic"]);
    a.iter_mut().filter(|s| *s == "src").for_each(|s| *s = "dst".into());
    a.extend(["--sink".into(), db.url("copy"), "--jq".into(), ".".into()]);
    let mut r = start(&a);
    let all_committed = || committed(&broker.addr, "from-topic", "dst").iter().sum::<i64>() == 6000;
    assert!(until(Duration::from_secs(90), all_committed), "{}", r.log());
    assert_eq!(r.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", r.log());
    assert_eq!(db.count("copy"), 3000, "each key once, though every key came twice");
    assert_eq!(db.one("SELECT COUNT(*) FROM copy c JOIN people p ON p.id = c.id AND p.name = c.name"), 3000);
}

#[test]
fn postgres_values_keep_their_types() {
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
}

#[test]
fn mariadb_values_keep_their_types() {
    let db = Db::start("mariadb", "types");
    db.exec(
        "CREATE TABLE items (id VARCHAR(20) PRIMARY KEY, n INT, x DOUBLE, price DECIMAL(10,2), note TEXT,
                             at TIMESTAMP(3) NULL, born DATE, raw VARBINARY(8), missing INT);
         CREATE TABLE items_out (id VARCHAR(20) PRIMARY KEY, n INT, x DOUBLE, price DECIMAL(10,2), note TEXT,
                                 at VARCHAR(40), born DATE, raw TEXT, missing INT, hash CHAR(32) NOT NULL)",
    );
    db.fill(
        "items",
        "id, n, x, price, note, at, born, raw, missing",
        "CONCAT('item-', LPAD(v, 5, '0')), v, v / 4, v * 1.25, CONCAT('note ', v),
         TIMESTAMP('2026-01-02 03:04:05.250') + INTERVAL v MINUTE, DATE('2026-01-02') + INTERVAL v DAY,
         UNHEX(LPAD(HEX(v), 4, '0')), NULL",
        3000,
    );
    let state = scratch_dir("maria-types-state");
    let a = args(&db.url("items"), &db.url("items_out"), &state, &["--chunk-rows", "700"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let same = db.one(
        "SELECT COUNT(*) FROM items i JOIN items_out o ON o.id = i.id
         WHERE o.n = i.n AND o.x = i.x AND o.price = i.price AND o.note = i.note AND o.born = i.born
           AND o.at = CONCAT(DATE_FORMAT(i.at, '%Y-%m-%dT%H:%i:%s.%f'), 'Z')
           AND FROM_BASE64(o.raw) = i.raw AND o.missing IS NULL AND LENGTH(o.hash) = 32",
    );
    assert_eq!(same, 3000, "every row, every value as it was (timestamps in RFC 3339, bytes in base64)");
}

for_each_engine!(two_instances);
/// Two instances share one scan through one checkpoint store; one is killed, and its chunks go to the other when
/// their leases run out. Every row ends in the table once.
fn two_instances(engine: &str) {
    let n = 120_000;
    let db = Db::start(engine, "shared");
    article(&db, n);
    let store_file = scratch_dir("shared-store").join("checkpoints.db");
    let store = match engine {
        "sqlite" => format!("sqlite:{}", store_file.display()),
        _ => db.base_url(),
    };
    // What the checkpoint store says, wherever it is.
    let in_store = |sql: &str| match engine {
        "sqlite" => Db::Sqlite(store_file.clone()).one(sql),
        _ => db.one(sql),
    };
    let instance = |name: &str| {
        let state = scratch_dir(&format!("shared-{engine}-{name}"));
        let extra = ["--jq", SQRT, "--chunk-rows", "5000", "--readers", "2", "--max-rate", "15000"];
        let mut a = args(&db.url("source"), &db.url("destination"), &state, &extra);
        a.extend(["--checkpoint".into(), store.clone(), "--chunk-lease".into(), "2".into()]);
        start(&a)
    };
    let mut first = instance("a");
    assert!(first.wait_for_log("scanning source", Duration::from_secs(30)), "{}", first.log());
    let mut second = instance("b");
    assert!(second.wait_for_log("scanning source", Duration::from_secs(30)), "{}", second.log());
    // Killed once it has checkpointed a chunk it has not finished: that chunk is the other's to resume.
    let holding = format!(
        "SELECT COUNT(*) FROM supervisor_chunk WHERE finished = 0 AND done_upto IS NOT NULL AND owner LIKE '%:{}.%'",
        first.pid()
    );
    assert!(until(Duration::from_secs(60), || in_store(&holding) > 0), "{}", first.log());
    first.signal(Signal::SIGKILL);
    let _ = first.wait_timeout(Duration::from_secs(10));
    let status = second.wait_timeout(Duration::from_secs(180));
    let log = second.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("resumes after key"), "the killed instance's chunks were taken over: {log}\n{}", first.log());
    assert_eq!(checked_roots(&db), n, "every row, once");
    if let Some(password) = db.password() {
        assert!(!log.contains(password), "the password is never printed");
    }
}

for_each_engine!(create_table);
/// `--create-table` makes the sink's table from the first events, typed by their values, keyed as told.
fn create_table(engine: &str) {
    let db = Db::start(engine, "create");
    article(&db, 5000);
    let state = scratch_dir(&format!("create-state-{engine}"));
    let sink = format!("{}&key=value", db.url("made"));
    let (code, log) = run_to_end(&args(&db.url("source"), &sink, &state, &["--jq", SQRT]), Duration::from_secs(60));
    assert_eq!(code, 2, "without --create-table a missing table is an error: {log}");
    assert!(log.contains("table \"made\" does not exist"), "{log}");
    let a = args(&db.url("source"), &sink, &state, &["--jq", SQRT, "--create-table"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("created table \"made\""), "{log}");
    assert_eq!(db.count("made"), 5000);
    assert_eq!(db.one("SELECT COUNT(*) FROM made WHERE ABS(root * root - value) > 1e-6 * value"), 0, "typed: numbers");
}

for_each_engine!(json_values);
/// JSON columns keep every value as it was, table → table: a JSON string stays a string (`"123"`, `"s"`), JSON null
/// stays JSON null and SQL NULL stays SQL NULL, objects and arrays (and, for json, the text itself) unchanged.
fn json_values(engine: &str) {
    let db = Db::start(engine, "json");
    let values: [(i64, &str); 11] = [
        (1, r#""123""#),
        (2, r#""true""#),
        (3, r#""[1,2]""#),
        (4, r#""{\"a\":1}""#),
        (5, r#""s""#),
        (6, "null"),
        (8, r#"{"a":[1,"x",null],"b":{"c":false}}"#),
        (9, "123"),
        (10, r#""""#),
        (11, r#""é 😀 \\ \" \n""#),
        (12, "[]"),
    ];
    // MariaDB's string literals take backslash escapes.
    let literal = |v: &str| if engine == "mariadb" { v.replace('\\', "\\\\") } else { v.to_string() };
    let (ddl, compare) = match engine {
        "postgres" => ("jsonb, t json", "id, j, t::text"),
        _ => ("JSON, t JSON", "id, j, t"),
    };
    db.exec(&format!(
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, j {ddl}); CREATE TABLE docs_out (id INTEGER PRIMARY KEY, j {ddl}, \
         hash {})",
        db.text_key()
    ));
    for (id, v) in values {
        db.exec(&format!("INSERT INTO docs (id, j, t) VALUES ({id}, '{0}', '{0}')", literal(v)));
    }
    // SQL NULL, and (for json) text as the user wrote it, spaces and all.
    db.exec("INSERT INTO docs (id, j, t) VALUES (7, NULL, NULL)");
    db.exec(r#"INSERT INTO docs (id, j, t) VALUES (13, '{"k": [1, 2]}', '{"k" :  [1,2] }')"#);
    let state = scratch_dir(&format!("json-state-{engine}"));
    let (code, log) = run_to_end(&args(&db.url("docs"), &db.url("docs_out"), &state, &[]), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(db.count("docs_out"), 13, "{log}");
    for (a, b) in [("docs", "docs_out"), ("docs_out", "docs")] {
        let differ =
            db.one(&format!("SELECT COUNT(*) FROM (SELECT {compare} FROM {a} EXCEPT SELECT {compare} FROM {b}) d"));
        assert_eq!(differ, 0, "{a} has rows {b} has not: every JSON value as it was");
    }
    assert_eq!(db.one("SELECT COUNT(*) FROM docs_out WHERE j IS NULL AND t IS NULL"), 1, "SQL NULL stays SQL NULL");
    assert_eq!(db.one("SELECT COUNT(*) FROM docs_out WHERE id = 6 AND j IS NOT NULL"), 1, "JSON null stays a value");
    assert_eq!(db.one("SELECT COUNT(*) FROM docs_out WHERE LENGTH(hash) = 32"), 13);
    assert_eq!(db.one("SELECT COUNT(*) FROM docs_out_dead_letter"), 0, "nothing refused");

    // What the source emits, seen through text columns: a JSON string is a string (its text, unquoted), JSON null
    // and SQL NULL both SQL NULL there.
    db.exec(&format!("CREATE TABLE docs_text (id INTEGER PRIMARY KEY, j TEXT, t TEXT, hash {})", db.text_key()));
    let state = scratch_dir(&format!("json-text-state-{engine}"));
    let (code, log) = run_to_end(&args(&db.url("docs"), &db.url("docs_text"), &state, &[]), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    for (id, text) in [(1, "'123'"), (5, "'s'"), (9, "'123'"), (10, "''"), (3, "'[1,2]'")] {
        let sql = format!("SELECT COUNT(*) FROM docs_text WHERE id = {id} AND j = {text} AND t = {text}");
        assert_eq!(db.one(&sql), 1, "{sql}");
    }
    assert_eq!(db.one("SELECT COUNT(*) FROM docs_text WHERE id IN (6, 7) AND j IS NULL AND t IS NULL"), 2);
}

/// `hex` of a column, upper case, whatever the engine: text as its UTF-8 bytes.
fn hex_of(engine: &str, column: &str, text: bool) -> String {
    match (engine, text) {
        ("postgres", true) => format!("upper(encode(convert_to({column}, 'UTF8'), 'hex'))"),
        ("postgres", false) => format!("upper(encode({column}, 'hex'))"),
        _ => format!("HEX({column})"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

for_each_engine!(unencodable_events);
/// Topic → table: an event the table cannot hold (an escaped lone surrogate, bytes that are not UTF-8, not an object,
/// a row the table refuses: too long, an emoji in MariaDB's latin1) is dead-lettered with its reason and its bytes as
/// they came; every other event is written, and the run goes on.
fn unencodable_events(engine: &str) {
    // librdkafka's mock cluster: a real broker is not the point here.
    let (_cluster, addr) = mock_cluster();
    let db = Db::start(engine, "unencodable");
    let name = match engine {
        "postgres" => "varchar(10)",
        // The database's default charset, latin1: no emoji.
        "mariadb" => "VARCHAR(10)",
        _ => "TEXT CHECK (length(name) <= 10)",
    };
    let json = if engine == "postgres" { "jsonb" } else { "JSON" };
    db.exec(&format!("CREATE TABLE people (id INTEGER PRIMARY KEY, name {name}, j {json}, hash {})", db.text_key()));
    if engine == "mariadb" {
        // A dead-letter table as an earlier version made it: latin1 (the database's default), no event_bytes.
        db.exec(
            "CREATE TABLE people_dead_letter (at LONGTEXT NOT NULL, reason LONGTEXT NOT NULL, event LONGTEXT, \
             written TIMESTAMP DEFAULT CURRENT_TIMESTAMP) CHARACTER SET latin1",
        );
    }
    // JSON values from a topic keep their type: a string stays a string, null is JSON null, absent is SQL NULL.
    let j = ["\"123\"", "null", r#"{"a":["s",1]}"#];
    let good = |id: usize| match id % 4 {
        3 => format!(r#"{{"id":{id},"name":"ok {id}"}}"#).into_bytes(),
        k => format!(r#"{{"id":{id},"name":"ok {id}","j":{}}}"#, j[k]).into_bytes(),
    };
    let mut bad: Vec<(usize, Vec<u8>, &str)> = vec![
        (2, br#"{"id":2,"name":"lone \ud800"}"#.to_vec(), "lone surrogate"),
        (4, b"{\"id\":4,\"name\":\"\xff\xfe\"}".to_vec(), "UTF-8"),
        (5, r#"{"id":5,"name":"Zoë 😀 is far too long"}"#.as_bytes().to_vec(), ""),
        (6, br#"[6]"#.to_vec(), ""),
        (7, br#"{"id":7,"name":"\ud800\u0041"}"#.to_vec(), "lone surrogate"),
    ];
    if engine == "postgres" {
        // PostgreSQL's text holds no NUL.
        bad.push((9, br#"{"id":9,"name":"nul \u0000"}"#.to_vec(), "0x00"));
    }
    if engine == "mariadb" {
        // Short enough, but latin1 has no emoji.
        bad.push((8, r#"{"id":8,"name":"😀"}"#.as_bytes().to_vec(), "Incorrect string value"));
    }
    let n = 300;
    let events: Vec<Event> = (1..=n)
        .map(|id| {
            let payload = bad.iter().find(|b| b.0 == id).map_or_else(|| good(id), |b| b.1.clone());
            (Some(id.to_string().into_bytes()), Some(payload))
        })
        .collect();
    produce(&addr, "src", &events);
    let mut a = without(&base_args(&addr, "unencodable"), &["dest-topic"]);
    a.extend(["--sink".into(), db.url("people"), "--hashers".into(), "2".into()]);
    let mut r = start(&a);
    let all_committed = || committed(&addr, "unencodable", "src").iter().sum::<i64>() == n as i64;
    assert!(until(Duration::from_secs(90), all_committed), "{}", r.log());
    assert_eq!(r.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", r.log());
    let log = r.log();
    assert!(!log.contains("restarting the pipeline"), "one event never stops the sink: {log}");

    let written = n - bad.len();
    assert_eq!(db.count("people"), written as i64, "{log}");
    let rows = db.one("SELECT COUNT(*) FROM people WHERE name = CONCAT('ok ', id) AND LENGTH(hash) = 32");
    assert_eq!(rows, written as i64, "every good event written as it was");
    let (is_string, is_null) = match engine {
        "postgres" => ("j = '\"123\"'::jsonb", "j = 'null'::jsonb"),
        _ => ("j = '\"123\"'", "j = 'null'"),
    };
    let of_kind = |k: usize| {
        let bad_ids: Vec<usize> = bad.iter().map(|b| b.0).collect();
        (1..=n).filter(|id| id % 4 == k && !bad_ids.contains(id)).count() as i64
    };
    assert_eq!(
        db.one(&format!("SELECT COUNT(*) FROM people WHERE {is_string}")),
        of_kind(0),
        "strings stay strings: {}",
        db.one("SELECT COUNT(*) FROM people WHERE j = 123")
    );
    assert_eq!(db.one(&format!("SELECT COUNT(*) FROM people WHERE {is_null}")), of_kind(1), "null is JSON null");
    assert_eq!(db.one("SELECT COUNT(*) FROM people WHERE j IS NULL"), of_kind(3), "absent is SQL NULL");
    assert_eq!(db.count("people_dead_letter"), bad.len() as i64, "{log}");
    for (id, event, says) in &bad {
        let text = std::str::from_utf8(event).is_ok();
        let column = if text { "event" } else { "event_bytes" };
        let other = if text { "event_bytes" } else { "event" };
        // The event as the sink had it: the worker may have spliced its hash in before the closing brace.
        let sql = format!(
            "SELECT COUNT(*) FROM people_dead_letter WHERE {} LIKE '{}%' AND {other} IS NULL AND reason LIKE '%{says}%' \
             AND reason <> ''",
            hex_of(engine, column, text),
            hex(&event[..event.len() - 1])
        );
        assert_eq!(db.one(&sql), 1, "event {id} dead-lettered as it came, its reason saying {says:?}: {log}");
    }
}

#[test]
/// MariaDB BIT (and YEAR, geometry) read as values the same column takes back: BIT as an unsigned integer.
fn mariadb_bits_round_trip() {
    let db = Db::start("mariadb", "bits");
    let ddl = "id INT PRIMARY KEY, b BIT(8), b1 BIT(1), b64 BIT(64), y YEAR, g POINT";
    db.exec(&format!("CREATE TABLE bits ({ddl}); CREATE TABLE bits_out ({ddl}, hash CHAR(32))"));
    db.exec(
        "INSERT INTO bits VALUES (1, b'10101010', b'1', b'1111111111111111111111111111111111111111111111111111111111111111', \
         2026, POINT(1.5, -2)), (2, b'0', b'0', b'0', 1901, NULL), (3, NULL, NULL, b'1000000000000000000000000000000000000000000000000000000000000001', NULL, POINT(0, 0))",
    );
    let state = scratch_dir("bits-state");
    let (code, log) = run_to_end(&args(&db.url("bits"), &db.url("bits_out"), &state, &[]), Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert_eq!(db.count("bits_out"), 3);
    let cols = "id, b, b1, b64, y, ST_AsText(g)";
    for (a, b) in [("bits", "bits_out"), ("bits_out", "bits")] {
        let differ = db.one(&format!("SELECT COUNT(*) FROM (SELECT {cols} FROM {a} EXCEPT SELECT {cols} FROM {b}) d"));
        assert_eq!(differ, 0, "{a} has rows {b} has not: every value as it was");
    }
    assert_eq!(db.one("SELECT COUNT(*) FROM bits_out WHERE id = 1 AND b = 170 AND b64 = 18446744073709551615"), 1);
    assert_eq!(db.one("SELECT COUNT(*) FROM bits_out_dead_letter"), 0);

    // What a BIT is as JSON: an integer.
    db.exec("CREATE TABLE bits_text (id INT PRIMARY KEY, b TEXT, b1 TEXT, b64 TEXT, y TEXT, hash CHAR(32))");
    let state = scratch_dir("bits-text-state");
    let a = args(&format!("{}&columns=b,b1,b64,y", db.url("bits")), &db.url("bits_text"), &state, &[]);
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        db.one("SELECT COUNT(*) FROM bits_text WHERE id = 1 AND b = '170' AND b1 = '1' AND b64 = '18446744073709551615' AND y = '2026'"),
        1
    );
    assert_eq!(db.one("SELECT COUNT(*) FROM bits_text WHERE id = 2 AND b = '0' AND b1 = '0' AND b64 = '0'"), 1);
}

#[test]
/// PostgreSQL BC dates: ISO 8601 with a year sign (astronomical: 4713 BC is -4712, 1 BC is 0000), and back.
fn postgres_bc_dates_round_trip() {
    let db = Db::start("postgres", "bc");
    let ddl = "id int PRIMARY KEY, d date, ts timestamp, tz timestamptz";
    db.exec(&format!(
        "SET TIME ZONE 'UTC'; CREATE TABLE dates ({ddl}); CREATE TABLE dates_out ({ddl}, hash text);
         CREATE TABLE dates_text (id int PRIMARY KEY, d text, ts text, tz text, hash text);
         INSERT INTO dates VALUES
           (1, '4713-01-01 BC', '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC'),
           (2, '0001-12-31 BC', '0001-12-31 23:59:59.25 BC', '0001-06-30 12:00:00+00 BC'),
           (3, '2026-01-02', '2026-01-02 03:04:05.5', '2026-01-02 03:04:05+00'),
           (4, '0001-01-01', 'infinity', '-infinity'),
           (5, NULL, NULL, NULL)"
    ));
    let state = scratch_dir("bc-state");
    let (code, log) = run_to_end(&args(&db.url("dates"), &db.url("dates_out"), &state, &[]), Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert_eq!(db.count("dates_out"), 5);
    let cols = "id, d, ts, tz";
    for (a, b) in [("dates", "dates_out"), ("dates_out", "dates")] {
        let differ = db.one(&format!("SELECT COUNT(*) FROM (SELECT {cols} FROM {a} EXCEPT SELECT {cols} FROM {b}) d"));
        assert_eq!(differ, 0, "{a} has rows {b} has not: every date as it was");
    }
    let state = scratch_dir("bc-text-state");
    let (code, log) = run_to_end(&args(&db.url("dates"), &db.url("dates_text"), &state, &[]), Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    let expect = [
        "id = 1 AND d = '-4712-01-01' AND ts = '-4712-01-01T00:00:00' AND tz = '-4712-01-01T00:00:00+00:00'",
        "id = 2 AND d = '0000-12-31' AND ts = '0000-12-31T23:59:59.25' AND tz = '0000-06-30T12:00:00+00:00'",
        "id = 3 AND d = '2026-01-02' AND ts = '2026-01-02T03:04:05.5' AND tz = '2026-01-02T03:04:05+00:00'",
        "id = 4 AND d = '0001-01-01' AND ts = 'infinity' AND tz = '-infinity'",
        "id = 5 AND d IS NULL AND ts IS NULL AND tz IS NULL",
    ];
    for e in expect {
        assert_eq!(db.one(&format!("SELECT COUNT(*) FROM dates_text WHERE {e}")), 1, "{e}");
    }
}

for_each_engine!(refused_rows_bisected);
/// 100 refused rows in 100,000: a batch refused for its data is written again in halves, not row by row, so the
/// copy takes less than 3 times as long as a clean one; every good row is written, every refused one dead-lettered.
fn refused_rows_bisected(engine: &str) {
    let n = 100_000;
    let db = Db::start(engine, "bisect");
    let narrow = match engine {
        "sqlite" => "TEXT CHECK (length(v) <= 5)",
        _ => "VARCHAR(5)",
    };
    db.exec(&format!(
        "CREATE TABLE src (id BIGINT PRIMARY KEY, v VARCHAR(20));
         CREATE TABLE clean (id BIGINT PRIMARY KEY, v VARCHAR(20), hash CHAR(32));
         CREATE TABLE narrow (id BIGINT PRIMARY KEY, v {narrow}, hash CHAR(32))"
    ));
    db.fill("src", "id, v", "v, CASE WHEN v % 1000 = 0 THEN 'too long!' ELSE 'ok' END", n);
    let timed = |sink: &str| {
        let state = scratch_dir(&format!("bisect-state-{engine}-{sink}"));
        let t0 = Instant::now();
        let (code, log) = run_to_end(&args(&db.url("src"), &db.url(sink), &state, &[]), Duration::from_secs(300));
        let took = t0.elapsed();
        assert_eq!(code, 0, "{log}");
        assert!(log.contains("100000 rows acknowledged"), "{log}");
        took
    };
    let clean = timed("clean");
    assert_eq!(db.count("clean"), n);
    let refused = timed("narrow");
    eprintln!("{engine}: clean {clean:?}, with 100 refused rows {refused:?}");
    assert!(refused < clean * 3, "{engine}: with 100 refused rows {refused:?}, clean {clean:?}");
    assert_eq!(db.count("narrow"), n - 100);
    assert_eq!(db.one("SELECT COUNT(*) FROM narrow n JOIN src s ON s.id = n.id AND s.v = n.v AND s.v = 'ok'"), n - 100);
    assert_eq!(db.count("narrow_dead_letter"), 100);
    if engine == "mariadb" {
        let utf8mb4 = "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND \
                       TABLE_NAME = 'narrow_dead_letter' AND TABLE_COLLATION LIKE 'utf8mb4%'";
        assert_eq!(db.one(utf8mb4), 1, "the dead-letter table is made utf8mb4, whatever the database's default");
    }
    // Each refused row once, its event the source's row (and the hash), the reason the database's.
    // The database's own words (PostgreSQL's too, not its client's "db error").
    let says = if engine == "sqlite" { "CHECK constraint failed" } else { "too long" };
    let dead = db.one(&format!(
        "SELECT COUNT(DISTINCT s.id) FROM narrow_dead_letter d JOIN src s
           ON d.event LIKE CONCAT('{{\"id\":', s.id, ',\"v\":\"too long!\",%') AND d.reason LIKE '%{says}%'
         WHERE s.id % 1000 = 0"
    ));
    assert_eq!(dead, 100);
}

for_each_engine!(empty_and_finished_scans);
/// An empty table, and a scan run again once finished, end like any other run: exit 0 and a summary line.
fn empty_and_finished_scans(engine: &str) {
    let db = Db::start(engine, "empty");
    db.exec(
        "CREATE TABLE source (value BIGINT PRIMARY KEY);
         CREATE TABLE destination (value BIGINT PRIMARY KEY, root DOUBLE PRECISION NOT NULL)",
    );
    let state = scratch_dir(&format!("empty-state-{engine}"));
    let a = args(&db.url("source"), &db.url("destination"), &state, &["--jq", SQRT]);
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("summary: 0 consumed, 0 delivered, 0 dead-lettered"), "an empty table's summary: {log}");

    let other = scratch_dir(&format!("finished-state-{engine}"));
    db.fill("source", "value", "v", 500);
    let a = args(&db.url("source"), &db.url("destination"), &other, &["--jq", SQRT]);
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("summary: 500 consumed, 500 delivered"), "{log}");
    assert_eq!(checked_roots(&db), 500);
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("is finished"), "{log}");
    let summary = log.lines().find(|l| l.contains("summary: ")).unwrap_or_else(|| panic!("no summary: {log}"));
    assert!(summary.contains("0 consumed") && summary.contains("1 of 1 chunks finished, 500 rows in all"), "{log}");
}

#[test]
/// SQLite keeps a REAL in an INTEGER key column: one clear error at start (exit 2), not a reader failing after every
/// restart. And a user's file switched to WAL says so.
fn sqlite_real_key_and_journal_mode() {
    let dir = scratch_dir("sqlite-real-key");
    let path = dir.join("user.db");
    let _ = std::fs::remove_file(&path);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE src (id INTEGER NOT NULL UNIQUE, v INTEGER); INSERT INTO src VALUES (1, 1), (2.5, 2), (3, 3);
         CREATE TABLE ok (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO ok VALUES (1, 1), (2, 2);
         CREATE TABLE dst (id INTEGER PRIMARY KEY, v INTEGER, hash TEXT);",
    )
    .unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "delete");
    drop(c);
    let url = |t: &str| format!("sqlite:{}?table={t}", path.display());
    let state = scratch_dir("sqlite-real-key-state");
    let a = args(&format!("{}&key=id", url("src")), &url("dst"), &state, &[]);
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 2, "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.len() == 1 && errors[0].contains("holds values of types integer, real"), "{log}");
    assert!(!log.contains("restarting"), "{log}");
    assert!(log.contains("from journal mode delete to WAL"), "the switch is said: {log}");
    let dst = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(dst.query_row("SELECT count(*) FROM dst", [], |r| r.get::<_, i64>(0)).unwrap(), 0);

    let (code, log) = run_to_end(&args(&url("ok"), &url("dst"), &state, &[]), Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert_eq!(dst.query_row("SELECT count(*) FROM dst", [], |r| r.get::<_, i64>(0)).unwrap(), 2);
    assert!(!log.contains("journal mode"), "said once: {log}");
}

#[test]
/// `rm checkpoints.db*` in the middle of a scan: the run fails with a clear line and a non-zero exit, never
/// "finished"; the next run does not start over unseen (its state directory says the plan was there), and only
/// --rescan starts the scan over.
fn checkpoint_store_deleted_mid_scan() {
    let n = 100_000;
    let db = Db::start("sqlite", "store-gone");
    article(&db, n);
    let state = scratch_dir("store-gone-state");
    let store = state.join("checkpoints.db");
    let a = args(
        &db.url("source"),
        &db.url("destination"),
        &state,
        &["--jq", SQRT, "--chunk-rows", "10000", "--max-rate", "20000"],
    );
    let mut r = start(&a);
    assert!(until(Duration::from_secs(60), || db.count("destination") > 10_000), "{}", r.log());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
    }
    let status = r.wait_timeout(Duration::from_secs(60));
    let log = r.log();
    let code = status.and_then(|s| s.code());
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains(&format!("the checkpoint store {} was deleted during the run", store.display())), "{log}");
    assert!(!log.contains("every chunk is read and acknowledged"), "{log}");
    assert!(!log.contains("committed 10 of 10 chunks finished"), "{log}");
    assert!(!log.contains("restarting the pipeline"), "a store gone is not mended by a restart: {log}");
    let written = db.count("destination");
    assert!(written < n, "stopped in the middle: {written}");

    // The next run: the store is there again (empty), the state directory says the plan was in it.
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("has no plan for the scan of") && log.contains("--rescan starts the scan over"), "{log}");
    assert!(!log.contains("planned the scan"), "{log}");
    assert_eq!(db.count("destination"), written, "nothing read again");

    // --rescan: the user's choice, every row.
    let a = [a, vec!["--rescan".into()]].concat();
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(checked_roots(&db), n);
}

#[test]
/// PostgreSQL arrays, read as JSON arrays, are written back into array columns as they were.
fn postgres_arrays_round_trip() {
    let db = Db::start("postgres", "arrays");
    let ddl = "id int PRIMARY KEY, ints int[], texts text[], grid int[][], docs jsonb[], at timestamptz[], \
               flags boolean[], nums numeric[]";
    db.exec(&format!(
        r#"SET TIME ZONE 'UTC'; CREATE TABLE arrays ({ddl}); CREATE TABLE arrays_out ({ddl}, hash text);
         INSERT INTO arrays VALUES
           (1, '{{1,NULL,-3}}', ARRAY['a b', 'q"uote', 'back\slash', '{{,}}', '', NULL, 'NULL'], '{{{{1,2}},{{3,4}}}}',
            ARRAY['{{"a":[1,"x"]}}'::jsonb, '"s"'::jsonb, 'null'::jsonb, '12'::jsonb],
            ARRAY['2026-01-02 03:04:05.5+00'::timestamptz], '{{true,false}}', '{{1.50,-0.001}}'),
           (2, '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}'),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#
    ));
    let state = scratch_dir("arrays-state");
    let (code, log) = run_to_end(&args(&db.url("arrays"), &db.url("arrays_out"), &state, &[]), Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    assert_eq!(db.count("arrays_out"), 3, "{log}");
    assert_eq!(db.count("arrays_out_dead_letter"), 0, "{log}");
    let cols = "id, ints, texts, grid, docs, at, flags, nums";
    for (a, b) in [("arrays", "arrays_out"), ("arrays_out", "arrays")] {
        let differ = db.one(&format!("SELECT COUNT(*) FROM (SELECT {cols} FROM {a} EXCEPT SELECT {cols} FROM {b}) d"));
        assert_eq!(differ, 0, "{a} has rows {b} has not: every array as it was");
    }
}

#[test]
/// A PostgreSQL checkpoint store whose tables are dropped mid-scan: the run fails, never "finished", and the scan
/// does not start over unseen.
fn postgres_checkpoint_store_dropped_mid_scan() {
    let n = 100_000;
    let db = Db::start("postgres", "store-dropped");
    article(&db, n);
    let state = scratch_dir("store-dropped-state");
    let mut a = args(
        &db.url("source"),
        &db.url("destination"),
        &state,
        &["--jq", SQRT, "--chunk-rows", "10000", "--max-rate", "20000"],
    );
    a.extend(["--checkpoint".into(), db.base_url()]);
    let mut r = start(&a);
    assert!(until(Duration::from_secs(60), || db.count("destination") > 10_000), "{}", r.log());
    db.exec("DROP TABLE supervisor_chunk, supervisor_scan, supervisor_store");
    let status = r.wait_timeout(Duration::from_secs(90));
    let log = r.log();
    assert!(!log.contains("every chunk is read and acknowledged"), "{log}");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(
        log.contains("the checkpoint store postgres://") && log.contains("lost its tables during the run"),
        "{log}"
    );
    assert!(!log.contains("restarting the pipeline"), "a store gone is not mended by a restart: {log}");
    let written = db.count("destination");
    assert!(written < n, "stopped in the middle: {written}");
    let (code, log) = run_to_end(&a, Duration::from_secs(60));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("has no plan for the scan of"), "{log}");
    assert_eq!(db.count("destination"), written, "nothing read again");
}

#[test]
/// Events of one key with different fields in one batch (an update that leaves a column out, then one that has it):
/// the row ends as the last event says, whatever order the batch's field groups are written in.
fn a_key_ends_with_its_last_event_whatever_fields_its_events_have() {
    let broker = Broker::with_topics("tables-field-groups");
    let (path, lite) = sqlite_file("field-groups");
    lite.execute_batch("CREATE TABLE copy (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER)").unwrap();
    let n = 300;
    let mut events: Vec<Event> = Vec::new();
    for i in 0..n {
        let same = Some(b"one-partition".to_vec());
        let full_other = format!(r#"{{"id": {}, "a": 0, "b": 0}}"#, 1000 + i);
        let partial = format!(r#"{{"id": {i}, "a": 1}}"#);
        let full = format!(r#"{{"id": {i}, "a": 2, "b": 2}}"#);
        for e in [full_other, partial, full] {
            events.push((same.clone(), Some(e.into_bytes())));
        }
    }
    let mut a = without(&base_args(&broker.addr, "field-groups"), &["dest-topic"]);
    a.extend(["--sink".into(), format!("sqlite:{}?table=copy", path.display()), "--jq".into(), ".".into()]);
    let mut r = start(&a);
    assert!(r.wait_ready(Duration::from_secs(60)), "{}", r.log());
    produce_batched(&broker.addr, "src", &events);
    let all_committed =
        || committed(&broker.addr, "field-groups", "src").iter().filter(|o| **o > 0).sum::<i64>() == 3 * n;
    assert!(until(Duration::from_secs(90), all_committed), "{}", r.log());
    assert_eq!(r.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", r.log());
    let count = |sql: &str| lite.query_row(sql, [], |row| row.get::<_, i64>(0)).unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM copy"), 2 * n);
    assert_eq!(count("SELECT COUNT(*) FROM copy WHERE id < 1000 AND a = 2 AND b = 2"), n, "each key as its last event");
}
