//! The column types `--create-table` chooses, as pure logic: a source table's declared type kept on the same engine,
//! and mapped to the nearest type that loses nothing on another ([`convert`]); a field the source table does not have
//! typed by its first value ([`inferred`]). Never a float for an exact number.

use super::url::Engine;

/// A source table's column as its database declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    /// The full declared type: PostgreSQL's `format_type` (`numeric(40,18)`, `timestamp with time zone`,
    /// `integer[]`), MySQL's `COLUMN_TYPE` (`decimal(40,18)`, `int(10) unsigned`), SQLite's declared type.
    pub type_name: String,
    /// Holds JSON (MariaDB's JSON is a LONGTEXT with a `json_valid` check).
    pub json: bool,
    /// A type every database of its engine has (PostgreSQL: of `pg_catalog`, not a domain, an enum or an extension's
    /// type); another is kept on the same engine only where the sink's database has it too.
    pub builtin: bool,
}

/// A source table's columns and the key its rows are named by: what `--create-table` keeps.
#[derive(Debug, Clone)]
pub struct SourceColumns {
    pub engine: Engine,
    pub columns: Vec<Declared>,
    /// The source's key: its URL's `key=`, else its primary key.
    pub key: Vec<String>,
}

impl SourceColumns {
    pub fn get(&self, name: &str) -> Option<&Declared> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// What a value is, whatever the engine that declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Neutral {
    SmallInt,
    Int,
    BigInt,
    /// An unsigned 64-bit integer: more than a signed BIGINT holds.
    UnsignedBig,
    /// Exact, with its precision and scale if bounded.
    Decimal(Option<(u32, u32)>),
    Float32,
    Float64,
    Bool,
    /// Text of at most `len` characters, padded if `fixed`; unbounded when no length.
    Text {
        len: Option<u32>,
        fixed: bool,
    },
    Uuid,
    Bytes,
    Json,
    /// A PostgreSQL array: read as a JSON array.
    Array,
    Timestamp {
        zone: bool,
    },
    Date,
    /// A time of day.
    Time,
    /// MySQL's TIME: a duration of up to ±838 hours.
    Duration,
    /// Anything else: kept as its text.
    Other,
}

/// The type a column of `declared` (on `from`) gets on `to`: the same on the same engine (a MariaDB JSON column as
/// JSON again), else the nearest type that loses nothing. `key`: the column is part of the primary key (MySQL keys
/// cannot be TEXT or BLOB).
pub fn convert(from: Engine, declared: &Declared, to: Engine, key: bool) -> String {
    if from == to && declared.builtin {
        if from == Engine::Mysql && declared.json {
            return "JSON".into();
        }
        return declared.type_name.clone();
    }
    let neutral = if !declared.builtin {
        // An enum, a domain, an extension's type: its text (an array of them is a JSON array).
        if declared.type_name.ends_with("[]") {
            Neutral::Array
        } else {
            Neutral::Other
        }
    } else if declared.json {
        Neutral::Json
    } else {
        match from {
            Engine::Postgres => of_postgres(&declared.type_name.to_ascii_lowercase()),
            Engine::Mysql => of_mysql(&declared.type_name.to_ascii_lowercase()),
            Engine::Sqlite => of_sqlite(&declared.type_name.to_ascii_uppercase()),
        }
    };
    render(neutral, to, key)
}

/// The type of a field the source table does not have, from its first non-null value (text when there is none), as
/// `--create-table` has always typed them.
pub fn inferred(value: Option<&serde_json::Value>, to: Engine, key: bool) -> &'static str {
    use serde_json::Value;
    let (mysql, sqlite) = (to == Engine::Mysql, to == Engine::Sqlite);
    match value {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => "BIGINT",
        Some(Value::Number(_)) if mysql => "DOUBLE",
        Some(Value::Number(_)) => "DOUBLE PRECISION",
        Some(Value::Bool(_)) => "BOOLEAN",
        Some(Value::Object(_) | Value::Array(_)) if mysql => "JSON",
        Some(Value::Object(_) | Value::Array(_)) if !sqlite => "JSONB",
        // MySQL keys cannot be TEXT.
        _ if mysql && key => "VARCHAR(255)",
        _ if mysql => "LONGTEXT",
        _ => "TEXT",
    }
}

/// `(p,s)` or `(n)` after a type's name.
fn arguments(t: &str) -> Vec<u32> {
    let Some(open) = t.find('(') else { return Vec::new() };
    let close = t[open..].find(')').map_or(t.len(), |c| open + c);
    t[open + 1..close].split(',').filter_map(|a| a.trim().parse().ok()).collect()
}

fn decimal(t: &str) -> Neutral {
    match arguments(t).as_slice() {
        [p, s] => Neutral::Decimal(Some((*p, *s))),
        [p] => Neutral::Decimal(Some((*p, 0))),
        _ => Neutral::Decimal(None),
    }
}

/// From `format_type`'s words.
fn of_postgres(t: &str) -> Neutral {
    if t.ends_with("[]") {
        return Neutral::Array;
    }
    // The name without its arguments: `timestamp(3) with time zone` is a `timestamp with time zone`.
    let base = match (t.find('('), t.find(')')) {
        (Some(open), Some(close)) if open < close => format!("{}{}", &t[..open], &t[close + 1..]),
        _ => t.to_string(),
    };
    match base.trim() {
        "smallint" => Neutral::SmallInt,
        "integer" => Neutral::Int,
        "bigint" => Neutral::BigInt,
        "real" => Neutral::Float32,
        "double precision" => Neutral::Float64,
        "numeric" => decimal(t),
        "boolean" => Neutral::Bool,
        "text" | "bpchar" | "name" => Neutral::Text { len: None, fixed: false },
        "character varying" => Neutral::Text { len: arguments(t).first().copied(), fixed: false },
        "character" => Neutral::Text { len: arguments(t).first().copied(), fixed: true },
        "uuid" => Neutral::Uuid,
        "bytea" => Neutral::Bytes,
        "json" | "jsonb" => Neutral::Json,
        "date" => Neutral::Date,
        "timestamp with time zone" => Neutral::Timestamp { zone: true },
        "timestamp without time zone" => Neutral::Timestamp { zone: false },
        "time without time zone" => Neutral::Time,
        _ => Neutral::Other,
    }
}

/// From `COLUMN_TYPE`'s words: `int(10) unsigned`, `decimal(40,18)`, `enum('a','b')`.
fn of_mysql(t: &str) -> Neutral {
    let unsigned = t.contains(" unsigned");
    let base = t.split(['(', ' ']).next().unwrap_or_default();
    match base {
        "tinyint" | "year" => Neutral::SmallInt,
        "smallint" if unsigned => Neutral::Int,
        "smallint" => Neutral::SmallInt,
        "mediumint" => Neutral::Int,
        "int" | "integer" if unsigned => Neutral::BigInt,
        "int" | "integer" => Neutral::Int,
        "bigint" if unsigned => Neutral::UnsignedBig,
        "bigint" => Neutral::BigInt,
        // BIT(n) is read as an unsigned integer.
        "bit" if arguments(t).first().is_some_and(|n| *n < 64) => Neutral::BigInt,
        "bit" => Neutral::UnsignedBig,
        "decimal" | "numeric" | "dec" | "fixed" => decimal(t),
        "float" => Neutral::Float32,
        "double" | "real" => Neutral::Float64,
        "char" => Neutral::Text { len: arguments(t).first().copied(), fixed: true },
        "varchar" => Neutral::Text { len: arguments(t).first().copied(), fixed: false },
        "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => Neutral::Text { len: None, fixed: false },
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Neutral::Bytes,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
        | "geometrycollection" => Neutral::Bytes,
        "json" => Neutral::Json,
        "uuid" => Neutral::Uuid,
        "date" => Neutral::Date,
        "datetime" => Neutral::Timestamp { zone: false },
        // TIMESTAMP is an instant, read in UTC.
        "timestamp" => Neutral::Timestamp { zone: true },
        "time" => Neutral::Duration,
        _ => Neutral::Other,
    }
}

/// From SQLite's declared type, by its affinity rules: only what the declaration promises.
fn of_sqlite(t: &str) -> Neutral {
    if t.contains("INT") {
        Neutral::BigInt
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|w| t.contains(w)) {
        Neutral::Text { len: None, fixed: false }
    } else if t.contains("BLOB") {
        Neutral::Bytes
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|w| t.contains(w)) {
        Neutral::Float64
    } else {
        // NUMERIC affinity (NUMERIC, DECIMAL, BOOLEAN, DATETIME) or none: the values may be anything.
        Neutral::Other
    }
}

fn render(n: Neutral, to: Engine, key: bool) -> String {
    match to {
        Engine::Postgres => postgres(n),
        Engine::Mysql => mysql(n, key),
        Engine::Sqlite => sqlite(n).to_string(),
    }
}

fn postgres(n: Neutral) -> String {
    match n {
        Neutral::SmallInt => "smallint".into(),
        Neutral::Int => "integer".into(),
        Neutral::BigInt => "bigint".into(),
        Neutral::UnsignedBig => "numeric(20,0)".into(),
        Neutral::Decimal(Some((p, s))) if (1..=1000).contains(&p) && s <= p => format!("numeric({p},{s})"),
        Neutral::Decimal(_) => "numeric".into(),
        Neutral::Float32 => "real".into(),
        Neutral::Float64 => "double precision".into(),
        Neutral::Bool => "boolean".into(),
        Neutral::Text { len: Some(n), fixed: true } if n > 0 => format!("character({n})"),
        Neutral::Text { len: Some(n), fixed: false } if n > 0 => format!("character varying({n})"),
        Neutral::Text { .. } | Neutral::Other => "text".into(),
        Neutral::Uuid => "uuid".into(),
        Neutral::Bytes => "bytea".into(),
        Neutral::Json | Neutral::Array => "jsonb".into(),
        Neutral::Timestamp { zone: true } => "timestamp with time zone".into(),
        Neutral::Timestamp { zone: false } => "timestamp without time zone".into(),
        Neutral::Date => "date".into(),
        Neutral::Time => "time without time zone".into(),
        Neutral::Duration => "interval".into(),
    }
}

fn mysql(n: Neutral, key: bool) -> String {
    let text = if key { "VARCHAR(255)" } else { "LONGTEXT" };
    match n {
        Neutral::SmallInt => "SMALLINT".into(),
        Neutral::Int => "INT".into(),
        Neutral::BigInt => "BIGINT".into(),
        Neutral::UnsignedBig => "BIGINT UNSIGNED".into(),
        // MySQL's DECIMAL holds 65 digits, 30 after the point; a wider number is kept as its exact text.
        Neutral::Decimal(Some((p, s))) if (1..=65).contains(&p) && s <= 30 && s <= p => format!("DECIMAL({p},{s})"),
        Neutral::Decimal(_) => text.into(),
        Neutral::Float32 => "FLOAT".into(),
        Neutral::Float64 => "DOUBLE".into(),
        Neutral::Bool => "BOOLEAN".into(),
        Neutral::Text { len: Some(n), fixed: true } if (1..=255).contains(&n) => format!("CHAR({n})"),
        // A row holds 65,535 bytes: 16,383 characters of utf8mb4.
        Neutral::Text { len: Some(n), .. } if (1..=16_383).contains(&n) => format!("VARCHAR({n})"),
        Neutral::Text { .. } | Neutral::Other => text.into(),
        Neutral::Uuid => "CHAR(36)".into(),
        Neutral::Bytes if key => "VARBINARY(255)".into(),
        Neutral::Bytes => "LONGBLOB".into(),
        Neutral::Json | Neutral::Array if key => text.into(),
        Neutral::Json | Neutral::Array => "JSON".into(),
        // Values arrive in UTC: the sink converts an RFC 3339 offset.
        Neutral::Timestamp { .. } => "DATETIME(6)".into(),
        Neutral::Date => "DATE".into(),
        Neutral::Time | Neutral::Duration => "TIME(6)".into(),
    }
}

fn sqlite(n: Neutral) -> &'static str {
    match n {
        Neutral::SmallInt | Neutral::Int | Neutral::BigInt | Neutral::Bool => "INTEGER",
        Neutral::Float32 | Neutral::Float64 => "REAL",
        Neutral::Bytes => "BLOB",
        // Declared JSON: what the SQLite sink writes as the value's JSON text.
        Neutral::Json | Neutral::Array => "JSON",
        // Not NUMERIC: its affinity keeps 15 significant digits. An unsigned 64-bit integer may not fit INTEGER.
        _ => "TEXT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Engine::{Mysql, Postgres, Sqlite};

    fn col(t: &str) -> Declared {
        Declared { name: "c".into(), type_name: t.into(), json: false, builtin: true }
    }

    fn to(from: Engine, t: &str, to: Engine) -> String {
        convert(from, &col(t), to, false)
    }

    #[test]
    fn the_same_engine_keeps_the_declared_type() {
        for t in ["numeric(40,18)", "timestamp with time zone", "character varying(20)", "integer[]", "uuid", "bytea"] {
            assert_eq!(to(Postgres, t, Postgres), t);
        }
        for t in ["decimal(40,18)", "int(10) unsigned", "enum('a','b')", "datetime(6)"] {
            assert_eq!(to(Mysql, t, Mysql), t);
        }
        assert_eq!(to(Sqlite, "VARCHAR(3)", Sqlite), "VARCHAR(3)");
        // MariaDB's JSON is a LONGTEXT with a check: made as JSON again, which brings the check.
        let json = Declared { json: true, ..col("longtext") };
        assert_eq!(convert(Mysql, &json, Mysql, false), "JSON");
        // An enum or a domain of one database is kept only where the other has it (checked by the sink).
        let mood = Declared { builtin: false, ..col("mood") };
        assert_eq!(convert(Postgres, &mood, Mysql, false), "LONGTEXT");
        assert_eq!(convert(Postgres, &Declared { builtin: false, ..col("mood[]") }, Sqlite, false), "JSON");
    }

    #[test]
    fn postgresql_into_mysql_loses_nothing() {
        let cases = [
            ("numeric(40,18)", "DECIMAL(40,18)"),
            ("numeric(65,30)", "DECIMAL(65,30)"),
            ("numeric(66,2)", "LONGTEXT"),
            ("numeric(40,31)", "LONGTEXT"),
            ("numeric", "LONGTEXT"),
            ("timestamp with time zone", "DATETIME(6)"),
            ("timestamp(3) without time zone", "DATETIME(6)"),
            ("uuid", "CHAR(36)"),
            ("bytea", "LONGBLOB"),
            ("jsonb", "JSON"),
            ("json", "JSON"),
            ("integer[]", "JSON"),
            ("character varying(20)[]", "JSON"),
            ("text", "LONGTEXT"),
            ("character varying(20)", "VARCHAR(20)"),
            ("character varying", "LONGTEXT"),
            ("character(3)", "CHAR(3)"),
            ("boolean", "BOOLEAN"),
            ("smallint", "SMALLINT"),
            ("integer", "INT"),
            ("bigint", "BIGINT"),
            ("real", "FLOAT"),
            ("double precision", "DOUBLE"),
            ("date", "DATE"),
            ("time without time zone", "TIME(6)"),
            ("time with time zone", "LONGTEXT"),
            ("interval", "LONGTEXT"),
            ("inet", "LONGTEXT"),
        ];
        for (pg, my) in cases {
            assert_eq!(to(Postgres, pg, Mysql), my, "{pg}");
        }
        // Keys: MySQL keys cannot be TEXT or BLOB.
        assert_eq!(convert(Postgres, &col("text"), Mysql, true), "VARCHAR(255)");
        assert_eq!(convert(Postgres, &col("bytea"), Mysql, true), "VARBINARY(255)");
        assert_eq!(convert(Postgres, &col("numeric"), Mysql, true), "VARCHAR(255)");
        assert_eq!(convert(Postgres, &col("uuid"), Mysql, true), "CHAR(36)");
    }

    #[test]
    fn mysql_into_postgresql_loses_nothing() {
        let cases = [
            ("decimal(40,18)", "numeric(40,18)"),
            ("decimal(10,0) unsigned", "numeric(10,0)"),
            ("datetime(6)", "timestamp without time zone"),
            ("datetime", "timestamp without time zone"),
            ("timestamp(6)", "timestamp with time zone"),
            ("longblob", "bytea"),
            ("varbinary(16)", "bytea"),
            ("binary(16)", "bytea"),
            ("json", "jsonb"),
            ("tinyint(1)", "smallint"),
            ("tinyint(3) unsigned", "smallint"),
            ("smallint(5) unsigned", "integer"),
            ("int(11)", "integer"),
            ("int unsigned", "bigint"),
            ("bigint(20)", "bigint"),
            ("bigint(20) unsigned", "numeric(20,0)"),
            ("bit(1)", "bigint"),
            ("bit(64)", "numeric(20,0)"),
            ("float", "real"),
            ("double", "double precision"),
            ("enum('a','b')", "text"),
            ("set('a','b')", "text"),
            ("varchar(20)", "character varying(20)"),
            ("char(36)", "character(36)"),
            ("longtext", "text"),
            ("time(6)", "interval"),
            ("year(4)", "smallint"),
            ("date", "date"),
        ];
        for (my, pg) in cases {
            assert_eq!(to(Mysql, my, Postgres), pg, "{my}");
        }
        let json = Declared { json: true, ..col("longtext") };
        assert_eq!(convert(Mysql, &json, Postgres, false), "jsonb");
    }

    #[test]
    fn into_sqlite_never_numeric() {
        let cases = [
            (Postgres, "numeric(40,18)", "TEXT"),
            (Postgres, "numeric", "TEXT"),
            (Postgres, "integer", "INTEGER"),
            (Postgres, "bigint", "INTEGER"),
            (Postgres, "real", "REAL"),
            (Postgres, "double precision", "REAL"),
            (Postgres, "bytea", "BLOB"),
            (Postgres, "jsonb", "JSON"),
            (Postgres, "integer[]", "JSON"),
            (Postgres, "timestamp with time zone", "TEXT"),
            (Postgres, "uuid", "TEXT"),
            (Postgres, "boolean", "INTEGER"),
            (Mysql, "decimal(40,18)", "TEXT"),
            (Mysql, "bigint(20) unsigned", "TEXT"),
            (Mysql, "longblob", "BLOB"),
            (Mysql, "json", "JSON"),
            (Mysql, "int(11)", "INTEGER"),
        ];
        for (from, t, lite) in cases {
            assert_eq!(to(from, t, Sqlite), lite, "{t}");
        }
    }

    #[test]
    fn sqlite_by_affinity() {
        assert_eq!(to(Sqlite, "INTEGER", Postgres), "bigint");
        assert_eq!(to(Sqlite, "VARCHAR(10)", Postgres), "text");
        assert_eq!(to(Sqlite, "BLOB", Mysql), "LONGBLOB");
        assert_eq!(to(Sqlite, "REAL", Mysql), "DOUBLE");
        assert_eq!(to(Sqlite, "NUMERIC", Postgres), "text");
        assert_eq!(to(Sqlite, "", Mysql), "LONGTEXT");
        assert_eq!(convert(Sqlite, &Declared { json: true, ..col("JSON") }, Postgres, false), "jsonb");
    }

    #[test]
    fn fields_are_typed_by_their_first_value() {
        use serde_json::json;
        let v = |j: serde_json::Value, e| inferred(Some(&j), e, false);
        assert_eq!(v(json!(1), Postgres), "BIGINT");
        assert_eq!(v(json!(1.5), Postgres), "DOUBLE PRECISION");
        assert_eq!(v(json!(1.5), Mysql), "DOUBLE");
        assert_eq!(v(json!(true), Mysql), "BOOLEAN");
        assert_eq!(v(json!({"a": 1}), Postgres), "JSONB");
        assert_eq!(v(json!([1]), Mysql), "JSON");
        assert_eq!(v(json!("s"), Mysql), "LONGTEXT");
        assert_eq!(inferred(Some(&json!("s")), Mysql, true), "VARCHAR(255)");
        assert_eq!(inferred(None, Postgres, false), "TEXT");
        assert_eq!(v(json!(1), Sqlite), "BIGINT");
        assert_eq!(v(json!(1.5), Sqlite), "DOUBLE PRECISION");
        assert_eq!(v(json!("s"), Sqlite), "TEXT");
    }
}
