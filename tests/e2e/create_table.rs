//! `--create-table` from a table source keeps the source's types: the same on the same engine, the nearest type that
//! loses nothing on another. A PostgreSQL table of exact numbers, instants, uuids, bytes, JSON and arrays is copied
//! into a table the sink creates, on PostgreSQL, MariaDB (and back) and SQLite, and every value of every row is
//! compared.

use crate::harness::*;
use crate::tables::{args, run_to_end};
use std::time::Duration;

const ROWS: i64 = 3000;

/// The source table, on PostgreSQL: every column but the key NULL in one row of 500.
fn source(db: &Db) {
    db.exec(
        "CREATE TABLE src (id bigint PRIMARY KEY, n numeric(40,18), ts timestamptz, u uuid, b bytea, j jsonb,
                           v varchar(20), a integer[])",
    );
    let null = |e: &str| format!("CASE WHEN v % 500 = 0 THEN NULL ELSE {e} END");
    let exprs = [
        "v".to_string(),
        // 20 digits before the point and 18 after, negative in every other row: a double keeps 17.
        null("(12345678901234567890.123456789012345678 - v * 1000.000000000000000001) * (1 - 2 * (v % 2))"),
        // Microseconds, and an offset that is not UTC when written.
        null("'2024-03-10 10:41:00.123456+02'::timestamptz + v * interval '1 hour 0.000007 second'"),
        null("md5(v::text)::uuid"),
        // Bytes that are not text: NUL and 0xff among them.
        null("'\\x00ff'::bytea || decode(md5(v::text), 'hex')"),
        null(
            "jsonb_build_object('v', v, 'big', 12345678901234567890.5, 's', 'x' || v, 'l', jsonb_build_array(1, null))",
        ),
        null("'name-' || v"),
        null("ARRAY[v::int, -v::int]"),
    ];
    db.fill("src", "id, n, ts, u, b, j, v, a", &exprs.join(", "), ROWS);
}

fn pg(db: &Db) -> postgres::Client {
    match db {
        Db::Postgres(pg) => pg.client("test"),
        _ => panic!("not PostgreSQL"),
    }
}

/// Every row of a PostgreSQL query, each value as text.
fn pg_rows(db: &Db, sql: &str) -> Vec<Vec<Option<String>>> {
    let rows = pg(db).query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|r| (0..r.len()).map(|i| r.get::<_, Option<String>>(i)).collect()).collect()
}

/// Every row of a MariaDB query, each value as text (the text protocol).
fn maria_rows(db: &Db, sql: &str) -> Vec<Vec<Option<String>>> {
    let Db::Mariadb(m) = db else { panic!("not MariaDB") };
    let mut c = m.client();
    // TIMESTAMP columns shown in UTC.
    mysql::prelude::Queryable::query_drop(&mut c, "SET time_zone = '+00:00'").unwrap();
    let rows: Vec<mysql::Row> = mysql::prelude::Queryable::query(&mut c, sql).unwrap();
    rows.into_iter().map(|r| (0..r.len()).map(|i| r.get::<Option<String>, _>(i).flatten()).collect()).collect()
}

/// The source's values as text, in key order: numbers as written, instants in UTC, bytes in hex, an array as JSON (a
/// NULL array is read as JSON null, which a JSON column keeps as such).
fn source_values(db: &Db) -> Vec<Vec<Option<String>>> {
    pg_rows(
        db,
        "SELECT id::text, n::text, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), u::text, \
         encode(b, 'hex'), j::text, v, coalesce(array_to_json(a)::text, 'null') FROM src s ORDER BY s.id",
    )
}

/// Each column's type, by name, as `format_type` writes it.
fn pg_types(db: &Db, table: &str) -> Vec<(String, String)> {
    pg_rows(
        db,
        &format!(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
    )
    .into_iter()
    .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
    .collect()
}

#[test]
/// PostgreSQL → PostgreSQL: the created table has the source's very types (an enum the database has kept, a domain as
/// its base type) and the primary key, taken from the source as the sink's URL names none; the md5 worker's `hash` is
/// typed from the events; every value is equal.
fn postgres_keeps_the_types() {
    let db = Db::start("postgres", "types-pg");
    source(&db);
    // An enum, which this database has, is kept; a domain is made as its base type.
    db.exec(
        "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
         ALTER TABLE src ADD COLUMN m mood DEFAULT 'ok', ADD COLUMN p positive DEFAULT 7",
    );
    let state = scratch_dir("types-pg-state");
    let (code, log) =
        run_to_end(&args(&db.url("src"), &db.url("dst"), &state, &["--create-table"]), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("with the source table's column types"), "{log}");
    let mut expected = pg_types(&db, "src");
    let domain =
        expected.iter_mut().find(|(name, _)| name == "p").map(|(_, ty)| std::mem::replace(ty, "integer".into()));
    assert_eq!(domain.as_deref(), Some("positive"));
    expected.push(("hash".into(), "text".into()));
    assert_eq!(pg_types(&db, "dst"), expected, "{log}");
    assert_eq!(
        pg_rows(
            &db,
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                      AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'dst'::regclass AND i.indisprimary"
        ),
        vec![vec![Some("id".to_string())]],
        "keyed as the source"
    );
    let same = db.one(
        "SELECT COUNT(*) FROM src s JOIN dst d USING (id) WHERE s.n::text IS NOT DISTINCT FROM d.n::text \
         AND s.ts IS NOT DISTINCT FROM d.ts AND s.u IS NOT DISTINCT FROM d.u AND s.b IS NOT DISTINCT FROM d.b \
         AND s.j IS NOT DISTINCT FROM d.j AND s.v IS NOT DISTINCT FROM d.v AND s.a IS NOT DISTINCT FROM d.a \
         AND s.m = d.m AND s.p = d.p AND d.hash IS NOT NULL",
    );
    assert_eq!(same, ROWS, "every value of every row");

    // The source's key taken, but the events do not carry it: one line that says how to name a key.
    let a = args(&db.url("src"), &db.url("other"), &state, &["--create-table", "--jq", "{x: .n}", "--rescan"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("the events have no \"id\" field, the key of table other (the source table's key): name the key"),
        "{log}"
    );
}

#[test]
/// PostgreSQL → MariaDB: the mapped types (DECIMAL(40,18), DATETIME(6) in UTC, CHAR(36), LONGBLOB, JSON), every value
/// exact; and back into PostgreSQL's own types, the same values as the source's.
fn mariadb_gets_the_nearest_types() {
    let db = Db::start("postgres", "types-my-pg");
    let maria = Db::start("mariadb", "types-my");
    source(&db);
    let state = scratch_dir("types-my-state");
    let a = args(&db.url("src"), &maria.url("dst"), &state, &["--create-table"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let types = maria_rows(
        &maria,
        "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_KEY FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = 'dst' ORDER BY ORDINAL_POSITION",
    );
    let types: Vec<String> = types.iter().map(|r| r.iter().flatten().cloned().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        types,
        [
            "id bigint(20) PRI",
            "n decimal(40,18) ",
            "ts datetime(6) ",
            "u char(36) ",
            "b longblob ",
            "j longtext ",
            "v varchar(20) ",
            "a longtext ",
            "hash longtext ",
        ],
        "{log}"
    );
    // MariaDB's JSON is a LONGTEXT with a json_valid check: j and the array a.
    assert_eq!(
        maria.one(
            "SELECT COUNT(*) FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = 'test' \
             AND TABLE_NAME = 'dst' AND CHECK_CLAUSE LIKE '%json_valid%'"
        ),
        2
    );
    let copied = maria_rows(
        &maria,
        "SELECT CAST(id AS CHAR), CAST(n AS CHAR), DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f'), u, LOWER(HEX(b)), j, v, a \
         FROM dst ORDER BY id",
    );
    let expected = source_values(&db);
    assert_eq!(copied.len(), ROWS as usize);
    for (got, want) in copied.iter().zip(&expected) {
        assert_eq!(got, want, "numbers to the last digit, instants in UTC, bytes and JSON as they were");
    }

    // Back: MariaDB's DATETIME holds UTC, which a UTC session reads as the same instant.
    db.exec(
        "ALTER DATABASE test SET timezone = 'UTC';
         CREATE TABLE back (id bigint PRIMARY KEY, n numeric(40,18), ts timestamptz, u uuid, b bytea, j jsonb,
                            v varchar(20), a integer[])",
    );
    let a = args(&maria.url("dst"), &db.url("back"), &state, &[]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let same = db.one(
        "SELECT COUNT(*) FROM src s JOIN back d USING (id) WHERE s.n::text IS NOT DISTINCT FROM d.n::text \
         AND s.ts IS NOT DISTINCT FROM d.ts AND s.u IS NOT DISTINCT FROM d.u AND s.b IS NOT DISTINCT FROM d.b \
         AND s.j IS NOT DISTINCT FROM d.j AND s.v IS NOT DISTINCT FROM d.v AND s.a IS NOT DISTINCT FROM d.a",
    );
    assert_eq!(same, ROWS, "the round trip gives every value back: {log}");
}

#[test]
/// PostgreSQL → SQLite: exact numbers as TEXT (not NUMERIC, whose affinity keeps 15 digits), bytes as BLOBs, JSON
/// declared JSON, integers INTEGER.
fn sqlite_keeps_bytes_and_digits() {
    let db = Db::start("postgres", "types-lite-pg");
    let lite = Db::start("sqlite", "types-lite");
    source(&db);
    let state = scratch_dir("types-lite-state");
    let (code, log) =
        run_to_end(&args(&db.url("src"), &lite.url("dst"), &state, &["--create-table"]), Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let Db::Sqlite(path) = &lite else { unreachable!() };
    let c = rusqlite::Connection::open(path).unwrap();
    let mut stmt =
        c.prepare("SELECT name || ' ' || type || ' ' || pk FROM pragma_table_info('dst') ORDER BY cid").unwrap();
    let types: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(
        types,
        [
            "id INTEGER 1",
            "n TEXT 0",
            "ts TEXT 0",
            "u TEXT 0",
            "b BLOB 0",
            "j JSON 0",
            "v TEXT 0",
            "a JSON 0",
            "hash TEXT 0"
        ],
        "{log}"
    );
    let mut stmt = c
        .prepare(
            "SELECT CAST(id AS TEXT), n, CASE WHEN b IS NULL THEN NULL ELSE typeof(n) || ' ' || typeof(b) END, \
             CASE WHEN b IS NOT NULL THEN lower(hex(b)) END FROM dst ORDER BY id",
        )
        .unwrap();
    let copied: Vec<Vec<Option<String>>> = stmt
        .query_map([], |r| Ok((0..4).map(|i| r.get::<_, Option<String>>(i).unwrap()).collect()))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected = pg_rows(
        &db,
        "SELECT id::text, n::text, CASE WHEN b IS NULL THEN NULL ELSE 'text blob' END, encode(b, 'hex') FROM src s \
         ORDER BY s.id",
    );
    assert_eq!(copied.len(), ROWS as usize);
    for (got, want) in copied.iter().zip(&expected) {
        assert_eq!(got, want, "the exact numeric text, the bytes as a BLOB");
    }
}

#[test]
/// MariaDB → PostgreSQL: decimal(40,18) → numeric(40,18), datetime(6) → timestamp, timestamp(6) → timestamptz, blobs →
/// bytea, JSON → jsonb, tinyint(1) → smallint, enum → text, bigint unsigned → numeric(20,0); every value equal.
fn mariadb_source_into_postgres() {
    let maria = Db::start("mariadb", "types-from-my");
    let db = Db::start("postgres", "types-from-my-pg");
    maria.exec(
        "CREATE TABLE msrc (id INT PRIMARY KEY, d DECIMAL(40,18), dt DATETIME(6), ts TIMESTAMP(6) NULL, b LONGBLOB,
                            j JSON, f TINYINT(1), e ENUM('a','b','c'), big BIGINT UNSIGNED)",
    );
    maria.fill(
        "msrc",
        "id, d, dt, ts, b, j, f, e, big",
        "v, CAST('12345678901234567890.123456789012345678' AS DECIMAL(40,18)) - v * 1.000000000000000001, \
         TIMESTAMPADD(MICROSECOND, v * 7000007, '2024-03-10 10:41:00.123456'), \
         TIMESTAMPADD(MICROSECOND, v * 7000007, '2024-03-10 10:41:00.123456'), CONCAT(UNHEX('00ff'), UNHEX(MD5(v))), \
         JSON_OBJECT('v', v, 'big', 12345678901234567890.5), v % 2, ELT(v % 3 + 1, 'a', 'b', 'c'), \
         18446744073709551615 - v",
        ROWS,
    );
    let state = scratch_dir("types-from-my-state");
    let a = args(&maria.url("msrc"), &db.url("mdst"), &state, &["--create-table"]);
    let (code, log) = run_to_end(&a, Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let types: Vec<String> = pg_types(&db, "mdst").into_iter().map(|(n, t)| format!("{n} {t}")).collect();
    assert_eq!(
        types,
        [
            "id integer",
            "d numeric(40,18)",
            "dt timestamp without time zone",
            "ts timestamp with time zone",
            "b bytea",
            "j jsonb",
            "f smallint",
            "e text",
            "big numeric(20,0)",
            "hash text",
        ],
        "{log}"
    );
    let copied = pg_rows(
        &db,
        "SELECT id::text, d::text, to_char(dt, 'YYYY-MM-DD HH24:MI:SS.US'), \
         to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), encode(b, 'hex'), j::text, f::text, e, big::text \
         FROM mdst m ORDER BY m.id",
    );
    let expected = maria_rows(
        &maria,
        "SELECT CAST(id AS CHAR), CAST(d AS CHAR), DATE_FORMAT(dt, '%Y-%m-%d %H:%i:%s.%f'), \
         DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f'), LOWER(HEX(b)), j, CAST(f AS CHAR), e, CAST(big AS CHAR) \
         FROM msrc ORDER BY id",
    );
    assert_eq!(copied.len(), ROWS as usize);
    let json = |v: &Option<String>| v.as_deref().map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap());
    for (got, want) in copied.iter().zip(&expected) {
        assert_eq!(json(&got[5]), json(&want[5]), "the same JSON");
        let (mut got, mut want) = (got.clone(), want.clone());
        got.remove(5);
        want.remove(5);
        assert_eq!(got, want, "numbers to the last digit, the same times, bytes, flags, enums");
    }
}
