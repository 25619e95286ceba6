//! Tables as people have them: composite keys, tables with no unique key, schema-qualified, quoted and mixed-case
//! names, and roles without the privileges a scan or a sink needs. Run against real servers, as `tables::` is
//! (`real_tables::composite_keys::mariadb`).

use crate::harness::*;
use crate::tables::{args, for_each_engine, run_to_end, until};
use std::time::Duration;

/// A name quoted for a statement the test itself runs (the harness's MariaDB client is not in ANSI_QUOTES mode).
fn q(db: &Db, name: &str) -> String {
    match db {
        Db::Mariadb(_) => format!("`{name}`"),
        _ => format!("\"{name}\""),
    }
}

for_each_engine!(composite_keys);
/// A table keyed on (tenant, id), text then integer, copied to a table of the same key in several chunks: stopped in
/// the middle and resumed from its tuple checkpoints, then scanned again over the rows already there (the upserts'
/// conflict target is both columns). Every row is checked.
fn composite_keys(engine: &str) {
    let n = 12_000;
    let db = Db::start(engine, "composite");
    let text = db.text_key();
    db.exec(&format!(
        "CREATE TABLE orders (tenant {text} NOT NULL, id BIGINT NOT NULL, amount INTEGER, PRIMARY KEY (tenant, id));
         CREATE TABLE orders_copy (tenant {text} NOT NULL, id BIGINT NOT NULL, amount INTEGER, hash {text},
                                   PRIMARY KEY (tenant, id))"
    ));
    db.fill("orders", "tenant, id, amount", "CONCAT('t', v % 7), v, v * 3", n);
    let every_row = || {
        db.one(
            "SELECT COUNT(*) FROM orders o JOIN orders_copy c ON c.tenant = o.tenant AND c.id = o.id \
             AND c.amount = o.amount AND c.hash IS NOT NULL",
        )
    };
    let state = scratch_dir(&format!("composite-state-{engine}"));
    let a = args(&db.url("orders"), &db.url("orders_copy"), &state, &["--readers", "3", "--chunk-rows", "2500"]);

    // Paced, and stopped in the middle of a chunk (after its first page of 2000 rows): its checkpoint is a tuple.
    let mut r = start(&[a.clone(), vec!["--max-rate".into(), "500".into()]].concat());
    assert!(until(Duration::from_secs(60), || db.count("orders_copy") >= 2000), "{}", r.log());
    assert_eq!(r.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", r.log());
    let first = db.count("orders_copy");
    assert!(first < n, "stopped in the middle ({first} rows)");
    assert!(r.log().contains("planned the scan") && r.log().contains("5 chunks"), "{}", r.log());

    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("resumes after key (\"t"), "resumed from a tuple checkpoint: {log}");
    assert!(log.contains("5 of 5 chunks finished, 12000 rows acknowledged"), "{log}");
    assert_eq!(db.count("orders_copy"), n);
    assert_eq!(every_row(), n, "every row, with its amount and its hash");

    // Scanned again onto the same rows: upserted on both key columns, each row still once.
    db.exec("UPDATE orders SET amount = amount + 1");
    let (code, log) = run_to_end(&[a, vec!["--rescan".into()]].concat(), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(db.count("orders_copy"), n);
    assert_eq!(every_row(), n, "every row updated in place");

    // --create-table keyed on both columns; the event's key is the JSON array of the key's parts.
    let made = format!("{}&key=tenant,id", db.url("made"));
    let a = args(&db.url("orders"), &made, &state, &["--create-table", "--jq", ".event_key = $meta.key"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let keyed = db.one(
        "SELECT COUNT(*) FROM orders o JOIN made m ON m.tenant = o.tenant AND m.id = o.id \
         AND m.event_key = CONCAT('[\"', o.tenant, '\",', o.id, ']')",
    );
    assert_eq!(keyed, n, "every row, its event keyed [\"tenant\",id]");
}

for_each_engine!(no_unique_key);
/// A table with no primary key and no unique index is refused, as a source and as a sink, with how to name a key; a
/// unique index's columns named with key= (in any order) are a key; a column of it alone is not.
fn no_unique_key(engine: &str) {
    let db = Db::start(engine, "nokey");
    let text = db.text_key();
    db.exec(&format!(
        "CREATE TABLE heap (a INTEGER, b INTEGER);
         CREATE TABLE source (id BIGINT PRIMARY KEY, a INTEGER);
         CREATE TABLE pairs (a INTEGER NOT NULL, b INTEGER NOT NULL, v INTEGER, UNIQUE (a, b));
         CREATE TABLE pairs_copy (a INTEGER NOT NULL, b INTEGER NOT NULL, v INTEGER, hash {text}, UNIQUE (a, b))"
    ));
    db.fill("heap", "a, b", "v, v", 10);
    db.fill("source", "id, a", "v, v", 10);
    db.fill("pairs", "a, b, v", "v % 10, v, v", 1000);
    let state = scratch_dir(&format!("nokey-state-{engine}"));
    let no_key = "table \"heap\" has no primary key or unique index: add one, or name unique columns with ?key=a,b";
    let copy = format!("{}&key=a,b", db.url("pairs_copy"));
    let cases = [
        (db.url("heap"), copy.clone(), no_key),
        (db.url("source"), db.url("heap"), no_key),
        (db.url("pairs"), copy.clone(), "table \"pairs\" has no primary key: name the columns of one of its unique"),
        (format!("{}&key=a", db.url("pairs")), copy.clone(), "column \"a\" of table \"pairs\" is neither"),
    ];
    for (source, sink, says) in cases {
        let (code, log) = run_to_end(&args(&source, &sink, &state, &[]), Duration::from_secs(60));
        assert_eq!(code, 2, "{source} → {sink}: {log}");
        assert!(log.contains(says), "{source} → {sink}: wanted {says:?} in {log}");
        assert!(!log.contains("pipeline running"), "{log}");
    }
    assert_eq!(db.count("pairs_copy"), 0, "nothing written");

    let a = args(
        &format!("{}&key=b,a", db.url("pairs")),
        &format!("{}&key=a,b", db.url("pairs_copy")),
        &state,
        &["--chunk-rows", "300"],
    );
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("4 of 4 chunks finished, 1000 rows acknowledged"), "{log}");
    assert_eq!(db.one("SELECT COUNT(*) FROM pairs p JOIN pairs_copy c ON c.a = p.a AND c.b = p.b AND c.v = p.v"), 1000);
}

for_each_engine!(names);
/// A table in another schema (MySQL: database; SQLite: `main`) copied into one with a space in its quoted name, whose
/// dead-letter table is made beside it and names the refused row by its key; a quoted mixed-case table copied into a
/// table `--create-table` makes in another schema, keyed on a quoted mixed-case column. PostgreSQL folds an unquoted
/// name to lower case.
fn names(engine: &str) {
    let db = Db::start(engine, "names");
    let text = db.text_key();
    let schema = match engine {
        "sqlite" => "main",
        _ => "sales",
    };
    if engine != "sqlite" {
        db.exec("CREATE SCHEMA sales");
    }
    let (items, mixed, id, val) = (q(&db, "Order Items"), q(&db, "MixedCase"), q(&db, "Id"), q(&db, "Val"));
    db.exec(&format!(
        "CREATE TABLE {schema}.orders (id BIGINT PRIMARY KEY, v INTEGER);
         CREATE TABLE {items} (id BIGINT PRIMARY KEY, v INTEGER CHECK (v <> 77), hash {text});
         CREATE TABLE {mixed} ({id} BIGINT PRIMARY KEY, {val} INTEGER)"
    ));
    db.fill(&format!("{schema}.orders"), "id, v", "v, v", 500);
    db.fill(&mixed, &format!("{id}, {val}"), "v, v * 2", 300);
    let state = scratch_dir(&format!("names-state-{engine}"));

    let source = db.url(&format!("{schema}.orders"));
    let sink = db.url("%22Order%20Items%22");
    let (code, log) = run_to_end(&args(&source, &sink, &state, &["--chunk-rows", "200"]), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(db.count(&items), 499, "every row but the one the CHECK refuses");
    let dead = q(&db, "Order Items_dead_letter");
    assert_eq!(db.one(&format!("SELECT COUNT(*) FROM {dead} WHERE at = '77'")), 1, "named by its key: {log}");

    let made = format!("{schema}.{}", q(&db, "Made Here"));
    let sink = format!("{}&key=%22Id%22", db.url(&format!("{schema}.%22Made%20Here%22")));
    let a = args(&db.url("%22MixedCase%22"), &sink, &state, &["--create-table"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert_eq!(db.one(&format!("SELECT COUNT(*) FROM {made} WHERE {val} = 2 * {id} AND hash IS NOT NULL")), 300);

    if engine == "postgres" {
        let (code, log) = run_to_end(&args(&db.url("MixedCase"), &sink, &state, &[]), Duration::from_secs(60));
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("table \"mixedcase\" does not exist"), "an unquoted name is folded: {log}");
        assert!(
            log.contains("(did you mean table=%22MixedCase%22; an unquoted name is folded to lower case)"),
            "{log}"
        );
        let (code, log) = run_to_end(&args(&db.url("orders"), &sink, &state, &[]), Duration::from_secs(60));
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("table \"orders\" does not exist in postgres://"), "{log}");
        assert!(log.contains("(did you mean table=sales.orders)"), "{log}");
    }
}

/// A role without SELECT on the source and one without INSERT and UPDATE on the sink: each refused at start with
/// what to grant, exit 2, nothing written.
fn permission_denied(engine: &str) {
    let db = Db::start(engine, "denied");
    db.exec(
        "CREATE TABLE secret (id BIGINT PRIMARY KEY, v INTEGER);
         CREATE TABLE target (id BIGINT PRIMARY KEY, v INTEGER, hash VARCHAR(64))",
    );
    db.fill("secret", "id, v", "v, v", 100);
    let as_role = |role: &str, table: &str| match &db {
        Db::Postgres(_) => db.url(table).replace(&format!("postgres:{PG_PASSWORD}@"), &format!("{role}:app-secret@")),
        _ => db.url(table).replace(&format!("test:{MARIA_PASSWORD}@"), &format!("{role}:app-secret@")),
    };
    match &db {
        Db::Postgres(_) => db.exec(
            "CREATE ROLE app LOGIN PASSWORD 'app-secret'; GRANT SELECT ON target TO app;
             CREATE ROLE writer LOGIN PASSWORD 'app-secret'; GRANT INSERT, UPDATE ON target TO writer",
        ),
        _ => db.exec(
            "CREATE USER 'app'@'%' IDENTIFIED BY 'app-secret'; GRANT SELECT ON test.target TO 'app'@'%';
             CREATE USER 'writer'@'%' IDENTIFIED BY 'app-secret'; GRANT INSERT, UPDATE ON test.target TO 'writer'@'%'",
        ),
    }
    let state = scratch_dir(&format!("denied-state-{engine}"));
    // What to run to grant it, as the engine's own client reads it.
    let grant = |what: &str, table: &str, role: &str| match &db {
        Db::Postgres(_) => format!("GRANT {what} ON \"{table}\" TO \"{role}\""),
        _ => format!("GRANT {what} ON `test`.`{table}` TO '{role}'@'%'"),
    };
    let cases = [
        (
            as_role("app", "secret"),
            db.url("target"),
            "permission denied for table \"secret\": the role lacks SELECT on it",
            grant("SELECT", "secret", "app"),
        ),
        (
            db.url("secret"),
            as_role("app", "target"),
            "permission denied for table \"target\": the role lacks INSERT and UPDATE on it",
            grant("INSERT, UPDATE", "target", "app"),
        ),
        // An upsert reads the key and the values it replaces (PostgreSQL's ON CONFLICT ... EXCLUDED, MySQL's ON
        // DUPLICATE KEY UPDATE ... VALUES()): a role that may only INSERT and UPDATE would copy a fresh table with
        // PostgreSQL's COPY and fail at the first replay.
        (
            db.url("secret"),
            as_role("writer", "target"),
            "permission denied for table \"target\": the role lacks SELECT on it",
            grant("SELECT", "target", "writer"),
        ),
    ];
    for (source, sink, says, grant) in cases {
        let (code, log) = run_to_end(&args(&source, &sink, &state, &[]), Duration::from_secs(60));
        assert_eq!(code, 2, "{log}");
        assert!(log.contains(says) && log.contains(&grant), "wanted {says:?} and {grant:?} in {log}");
        assert!(!log.contains("does not exist"), "{log}");
    }
    assert_eq!(db.count("target"), 0, "nothing written");
}

#[test]
fn postgres_permission_denied() {
    permission_denied("postgres")
}

#[test]
fn mariadb_permission_denied() {
    permission_denied("mariadb")
}

/// PostgreSQL's sink copies integers, floats, booleans and text in COPY's binary form: every value arrives as it was,
/// extremes, signed zeros, the smallest floats and escaped text included.
#[test]
fn postgres_binary_copy_changes_no_value() {
    let db = Db::start("postgres", "binary");
    let columns = "id INTEGER PRIMARY KEY, s SMALLINT, i INTEGER, b BIGINT, r REAL, d DOUBLE PRECISION, t BOOLEAN, \
                   x TEXT, v VARCHAR(12)";
    db.exec(&format!("CREATE TABLE kinds ({columns}); CREATE TABLE kinds_out ({columns}, hash TEXT)"));
    db.exec(
        r#"INSERT INTO kinds VALUES
           (1, -32768, -2147483648, -9223372036854775808, 3.4028235e38, 1.7976931348623157e308, true,
            E'tab\there \\ back "q" é 😀', 'short'),
           (2, 32767, 2147483647, 9223372036854775807, 1.4e-45, 5e-324, false, '', ''),
           (3, 0, 0, 0, '-0', '-0', NULL, E'line\nbreak\r', NULL),
           (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (5, 1, 2, 3, 0.1, 0.1, true, '{"a": 1}', '[1,2]'),
           (6, -1, -2, -3, 1.17549435e-38, 2.2250738585072014e-308, false, 'null', '12 chars ...')"#,
    );
    let state = scratch_dir("binary-state");
    let (code, log) = run_to_end(&args(&db.url("kinds"), &db.url("kinds_out"), &state, &[]), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let all = "id, s, i, b, r, d, t, x, v, r::text, d::text";
    for (a, b) in [("kinds", "kinds_out"), ("kinds_out", "kinds")] {
        let differ = db.one(&format!("SELECT COUNT(*) FROM (SELECT {all} FROM {a} EXCEPT SELECT {all} FROM {b}) d"));
        assert_eq!(differ, 0, "{a} has rows {b} has not: every value as it was\n{log}");
    }
    assert_eq!(db.count("kinds_out"), 6);
    assert_eq!(db.one("SELECT COUNT(*) FROM kinds_out WHERE id = 3 AND r::text = '-0' AND d::text = '-0'"), 1);
}

/// A value the binary form cannot carry (a fraction or an out-of-range number for an integer column, a number past
/// a double's range) goes as text, where the server refuses that row alone, with its own words: the others arrive.
#[test]
fn postgres_refuses_out_of_range_values_row_by_row() {
    let db = Db::start("postgres", "range");
    db.exec(
        "CREATE TABLE wide (id INTEGER PRIMARY KEY, n NUMERIC); \
         CREATE TABLE narrow (id INTEGER PRIMARY KEY, n INTEGER, hash TEXT); \
         CREATE TABLE narrow_f (id INTEGER PRIMARY KEY, n DOUBLE PRECISION, hash TEXT); \
         INSERT INTO wide VALUES (1, 1.5), (2, 1e400), (3, 42), (4, 1e-400), (5, 2147483648)",
    );
    for (table, written, refused) in [("narrow", vec![3], vec![1, 2, 4, 5]), ("narrow_f", vec![1, 3, 5], vec![2, 4])] {
        let state = scratch_dir(&format!("range-state-{table}"));
        let (code, log) = run_to_end(&args(&db.url("wide"), &db.url(table), &state, &[]), Duration::from_secs(120));
        assert_eq!(code, 0, "{log}");
        let ids = |sql: &str| (1..=5).filter(|id| db.one(&format!("{sql} '{id}'")) == 1).collect::<Vec<i64>>();
        assert_eq!(ids(&format!("SELECT COUNT(*) FROM {table} WHERE id::text =")), written, "{log}");
        assert_eq!(ids(&format!("SELECT COUNT(*) FROM {table}_dead_letter WHERE at =")), refused, "{log}");
        let reasons = db.one(&format!(
            "SELECT COUNT(*) FROM {table}_dead_letter WHERE reason LIKE '%out of range%' OR reason LIKE '%invalid input%'"
        ));
        assert_eq!(reasons, refused.len() as i64, "the server's own words");
    }
}
