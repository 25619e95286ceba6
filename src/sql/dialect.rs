//! What the three engines' SQL text differs in, as one trait: the shared form is the default method, and each engine
//! overrides only what it writes otherwise (sea-query's shape). Statements are built through it, never by rewriting
//! one engine's text into another's.
//!
//! Only text lives here. Talking to a server (`postgres::Client`, `mysql::Conn`, `rusqlite::Connection`: their
//! parameters, rows and errors) stays per client, in `pg.rs`, `my.rs` and `lite.rs` behind [`super::Conn`].

use super::url::Engine;

/// How a keyset page compares a composite key with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// As a row value, `(a, b) > ($1, $2)`: PostgreSQL and SQLite walk the key's index from the bound.
    RowValue,
    /// Column by column, `a >= ? AND (a > ? OR (a = ? AND b > ?))`: MySQL and MariaDB scan the whole index for a
    /// row value (`EXPLAIN`: type index, no key), a page near the end costing as much as the table; this form is a
    /// range on the index.
    Expanded,
}

/// An engine's SQL text.
pub trait Dialect: Sync {
    /// The engine this is the text of.
    fn engine(&self) -> Engine;

    /// The `n`-th statement parameter (from 1): `?`, as MySQL and SQLite read it.
    fn param(&self, _n: usize) -> String {
        "?".to_string()
    }

    /// Parameters `range` as a list: `$1, $2, $3`.
    fn params(&self, range: std::ops::RangeInclusive<usize>) -> String {
        range.map(|n| self.param(n)).collect::<Vec<_>>().join(", ")
    }

    /// `INSERT INTO table (columns) VALUES (...)`, a parameter for each column.
    fn insert(&self, table: &str, columns: &[&str]) -> String {
        format!("INSERT INTO {table} ({}) VALUES ({})", columns.join(", "), self.params(1..=columns.len()))
    }

    /// The `n`-th parameter, read as SQL type `ty` where the engine must be told (PostgreSQL infers a parameter's
    /// type from its context, and a bare `$1 = 1` would be an `int4`).
    fn typed_param(&self, n: usize, _ty: &str) -> String {
        self.param(n)
    }

    /// An identifier quoted (standard double quotes: MySQL and MariaDB read them in ANSI_QUOTES mode, which our
    /// connections set).
    fn quote(&self, name: &str) -> String {
        super::quote(name)
    }

    /// How a page compares a composite key with its bounds.
    fn key_compare(&self) -> Compare {
        Compare::RowValue
    }

    /// What an upsert does with a row whose `key` (quoted columns) is there: sets the `update` columns (quoted) to the
    /// new row's, or keeps the row as it is when there are none.
    fn on_conflict(&self, key: &[String], update: &[String]) -> String {
        let action = if update.is_empty() {
            "DO NOTHING".to_string()
        } else {
            let sets: Vec<String> = update.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
            format!("DO UPDATE SET {}", sets.join(", "))
        };
        format!("ON CONFLICT ({}) {action}", key.join(", "))
    }

    /// `INSERT ... VALUES (...)` that does nothing where a row with the same `key` is there.
    fn insert_ignore(&self, table: &str, columns: &str, values: &str, key: &str) -> String {
        format!("INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT ({key}) DO NOTHING")
    }

    /// The clock, in seconds since the epoch as a float, read when the statement runs.
    fn epoch_now(&self) -> &'static str;

    /// The clause that locks a selected row for this transaction and skips rows others hold.
    fn skip_locked(&self) -> &'static str {
        " FOR UPDATE SKIP LOCKED"
    }

    /// Starts a transaction.
    fn begin(&self) -> &'static str {
        "BEGIN"
    }

    /// Type names: a short key (indexed) text, a long text, bytes, a point in time.
    fn key_text_type(&self) -> &'static str {
        "TEXT"
    }
    fn text_type(&self) -> &'static str {
        "TEXT"
    }
    fn bytes_type(&self) -> &'static str {
        "BLOB"
    }
    fn timestamp_type(&self) -> &'static str {
        "TIMESTAMP"
    }

    /// What follows a `CREATE TABLE (...)`: the character set, where the engine's default may not hold any text.
    fn table_options(&self) -> &'static str {
        ""
    }
}

pub struct Postgres;
pub struct Mysql;
pub struct Sqlite;

impl Dialect for Postgres {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }
    fn param(&self, n: usize) -> String {
        format!("${n}")
    }
    fn typed_param(&self, n: usize, ty: &str) -> String {
        format!("${n}::{ty}")
    }
    fn epoch_now(&self) -> &'static str {
        "extract(epoch from clock_timestamp())::float8"
    }
    fn bytes_type(&self) -> &'static str {
        "BYTEA"
    }
    fn timestamp_type(&self) -> &'static str {
        "TIMESTAMPTZ"
    }
}

impl Dialect for Mysql {
    fn engine(&self) -> Engine {
        Engine::Mysql
    }
    fn insert_ignore(&self, table: &str, columns: &str, values: &str, _key: &str) -> String {
        format!("INSERT IGNORE INTO {table} ({columns}) VALUES ({values})")
    }
    // A row value makes MySQL and MariaDB scan the whole index.
    fn key_compare(&self) -> Compare {
        Compare::Expanded
    }
    // With nothing else to update, the first key column is set to itself: the row stays as it is.
    fn on_conflict(&self, key: &[String], update: &[String]) -> String {
        let sets: Vec<String> = match (update, key.first()) {
            ([], Some(k)) => vec![format!("{k} = {k}")],
            _ => update.iter().map(|c| format!("{c} = VALUES({c})")).collect(),
        };
        format!("ON DUPLICATE KEY UPDATE {}", sets.join(", "))
    }
    fn epoch_now(&self) -> &'static str {
        "UNIX_TIMESTAMP(NOW(6))"
    }
    fn begin(&self) -> &'static str {
        "START TRANSACTION"
    }
    // MySQL's TEXT holds 64 KiB, and a TEXT cannot be a key without a length.
    fn key_text_type(&self) -> &'static str {
        "VARCHAR(512)"
    }
    fn text_type(&self) -> &'static str {
        "LONGTEXT"
    }
    fn bytes_type(&self) -> &'static str {
        "LONGBLOB"
    }
    fn table_options(&self) -> &'static str {
        " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    }
}

impl Dialect for Sqlite {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }
    fn param(&self, n: usize) -> String {
        format!("?{n}")
    }
    fn insert_ignore(&self, table: &str, columns: &str, values: &str, _key: &str) -> String {
        format!("INSERT OR IGNORE INTO {table} ({columns}) VALUES ({values})")
    }
    fn epoch_now(&self) -> &'static str {
        "((julianday('now') - 2440587.5) * 86400.0)"
    }
    // No lock to take: a transaction that writes (`BEGIN IMMEDIATE`) has the whole file.
    fn skip_locked(&self) -> &'static str {
        ""
    }
    // At once the writer: two instances claiming on one file take turns.
    fn begin(&self) -> &'static str {
        "BEGIN IMMEDIATE"
    }
    // No time type: a point in time is ISO 8601 text, as `CURRENT_TIMESTAMP` writes it.
    fn timestamp_type(&self) -> &'static str {
        "TEXT"
    }
}

/// The dialect of `engine`.
pub fn of(engine: Engine) -> &'static dyn Dialect {
    match engine {
        Engine::Postgres => &Postgres,
        Engine::Mysql => &Mysql,
        Engine::Sqlite => &Sqlite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_inserts_per_engine() {
        let [pg, my, lite] = [of(Engine::Postgres), of(Engine::Mysql), of(Engine::Sqlite)];
        assert_eq!((pg.param(10), my.param(10), lite.param(10)), ("$10".into(), "?".into(), "?10".into()));
        assert_eq!(pg.typed_param(2, "bigint"), "$2::bigint");
        assert_eq!(my.typed_param(2, "bigint"), "?");
        assert_eq!(lite.typed_param(2, "bigint"), "?2");
        assert_eq!(
            pg.insert_ignore("t", "a, b", "$1, $2", "a"),
            "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO NOTHING"
        );
        assert_eq!(my.insert_ignore("t", "a", "?", "a"), "INSERT IGNORE INTO t (a) VALUES (?)");
        assert_eq!(lite.insert_ignore("t", "a", "?1", "a"), "INSERT OR IGNORE INTO t (a) VALUES (?1)");
        assert_eq!(pg.quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(lite.insert("t", &["a", "b"]), "INSERT INTO t (a, b) VALUES (?1, ?2)");
        assert_eq!(my.params(1..=3), "?, ?, ?");
    }

    #[test]
    fn upserts_per_engine() {
        let [pg, my, lite] = [of(Engine::Postgres), of(Engine::Mysql), of(Engine::Sqlite)];
        let (key, v) = (vec!["\"k\"".to_string()], vec!["\"v\"".to_string()]);
        assert_eq!(pg.on_conflict(&key, &v), "ON CONFLICT (\"k\") DO UPDATE SET \"v\" = EXCLUDED.\"v\"");
        assert_eq!(lite.on_conflict(&key, &[]), "ON CONFLICT (\"k\") DO NOTHING");
        assert_eq!(my.on_conflict(&key, &v), "ON DUPLICATE KEY UPDATE \"v\" = VALUES(\"v\")");
        assert_eq!(my.on_conflict(&key, &[]), "ON DUPLICATE KEY UPDATE \"k\" = \"k\"");
        assert_eq!((pg.key_compare(), my.key_compare()), (Compare::RowValue, Compare::Expanded));
    }
}
