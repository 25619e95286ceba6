//! Databases as sources and sinks: the one client type the stages use, whatever the engine.
//!
//! - [`url`]: what `--source`, `--sink` and `--checkpoint` name;
//! - [`key`]: the key a scan orders, splits and checkpoints on;
//! - [`types`]: the column types `--create-table` chooses, the source table's kept or mapped without loss;
//! - [`dialect`]: the engines' SQL text as one `Dialect` trait (placeholders, quoting, key comparison, upsert clause,
//!   type names, the clock): shared defaults, each engine overriding what it writes otherwise. Statements are built
//!   through it, by the table stages and by the checkpoint store alike, never rewritten from one engine's text;
//! - [`Conn`]: a connection to PostgreSQL ([`postgres`](self::pg)), MySQL/MariaDB ([`mysql`](self::my)) or SQLite
//!   ([`sqlite`](self::lite)), with what a scan and an upsert need of it: the table's schema, chunk boundaries, keyset
//!   pages, multi-row upserts. `Conn` stays an enum, and its matches remain where the engines need different client
//!   libraries (`postgres::Client`, `mysql::Conn`, `rusqlite::Connection`: parameters, rows, errors, transactions,
//!   PostgreSQL's `COPY` and arrays, SQLite's `json_each`); where they only chose SQL text, they ask the dialect.
//!
//! Every client is created in the process that uses it, after the fork: the PostgreSQL client runs a private runtime
//! thread, and SQLite handles must not cross a fork.

pub mod dialect;
pub mod key;
mod lite;
mod my;
mod pg;
mod pgpass;
pub mod time;
pub mod types;
pub mod url;

use crate::error::{Error, Result};
use dialect::{Compare, Dialect};
use key::{Key, KeyKind, Part};
use serde_json::value::RawValue;
use std::borrow::Cow;
use types::{Declared, SourceColumns};
use url::{Engine, TableName, TableUrl};

pub use lite::open_path as open_sqlite;

// Defined with the errors, which keep them as their causes: `error` sits below `sql` and imports nothing from it.
pub use crate::error::{DbError, Fault};

/// A table as a stage uses it.
#[derive(Debug, Clone)]
pub struct Schema {
    pub table: TableName,
    /// The columns a source reads (the key among them), or a sink may write.
    pub columns: Vec<Column>,
    /// The columns a scan orders and splits on, in order (a tuple when there are several); for a sink, the conflict
    /// target of its upserts. Never empty.
    pub key: Vec<KeyColumn>,
}

/// One column of a key.
#[derive(Debug, Clone)]
pub struct KeyColumn {
    pub name: String,
    pub kind: KeyKind,
    /// The column's type as the database names it.
    pub type_name: String,
}

impl Schema {
    /// Whether `name` is one of the key's columns.
    pub fn is_key(&self, name: &str) -> bool {
        self.key.iter().any(|k| k.name == name)
    }

    /// The key's columns, as a message names them: `"id"`, or `("tenant_id", "id")`.
    pub fn key_names(&self) -> String {
        match self.key.as_slice() {
            [one] => format!("{:?}", one.name),
            key => format!("({})", key.iter().map(|k| format!("{:?}", k.name)).collect::<Vec<_>>().join(", ")),
        }
    }

    /// The key's columns quoted, each behind `prefix` (`t.`), separated by commas: an `ORDER BY`, a conflict target.
    fn key_list(&self, prefix: &str) -> String {
        self.key.iter().map(|k| format!("{prefix}{}", quote(&k.name))).collect::<Vec<_>>().join(", ")
    }
}

/// What a stage does with a table, for the privileges it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A scan: SELECT.
    Read,
    /// A sink's upserts: INSERT and UPDATE.
    Write,
}

/// The privileges a role lacks on a table, and the statement that grants them.
pub struct Denied {
    pub missing: Vec<&'static str>,
    /// `GRANT SELECT ON t TO app`, the statement an administrator runs.
    pub grant: String,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// Binary: read as base64 text.
    pub binary: bool,
    /// Holds JSON (PostgreSQL json/jsonb, MySQL JSON, a MariaDB column checked with `json_valid`, a SQLite column
    /// declared JSON): read as the JSON value itself, written as the event's JSON value, strings and null included.
    pub json: bool,
    /// The type as the database names it, lower case.
    pub type_name: String,
}

/// Every column of a table with its type as the database names it, and the primary key's columns.
pub type TableColumns = (Vec<(Column, String)>, Vec<String>);

/// One row as a source reads it: its key and the row as a JSON object.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: Key,
    pub json: Vec<u8>,
}

/// A connection to one database.
pub enum Conn {
    Postgres(postgres::Client),
    Mysql(mysql::Conn),
    Sqlite(rusqlite::Connection),
}

/// Readies in this process what connecting to `urls` needs and costs the same in every process (PostgreSQL's TLS
/// context): called before the children are forked, so that they inherit it.
pub fn prepare<'a>(urls: impl IntoIterator<Item = &'a TableUrl>) {
    for url in urls {
        if url.engine == Engine::Postgres {
            pg::prepare_tls(url);
        }
    }
}

impl Conn {
    pub fn open(url: &TableUrl) -> Result<Conn> {
        match url.engine {
            Engine::Postgres => pg::open(url).map(Conn::Postgres),
            Engine::Sqlite => lite::open(url).map(Conn::Sqlite),
            Engine::Mysql => my::open(url).map(Conn::Mysql),
        }
    }

    /// The table's columns and key, checked against what the URL asks for and the privileges `access` needs: a
    /// missing table, key or column, a key that is not unique, or a privilege the role lacks is an error here, before
    /// anything is read or written.
    pub fn schema(&mut self, url: &TableUrl, access: Access) -> Result<Schema> {
        let table = url.table().map_err(|message| Error::DbSchema { message })?;
        let (columns, primary) = self.columns(table)?;
        if columns.is_empty() {
            if let Some(denied) = self.hidden(table)? {
                return Err(denied);
            }
            let hint = match self {
                Conn::Postgres(c) => pg::similar(c, table).unwrap_or_default(),
                _ => None,
            };
            return Err(Error::DbSchema {
                message: format!(
                    "table {table:?} does not exist in {}{}",
                    url.location(),
                    hint.map(|h| format!(" (did you mean {h})")).unwrap_or_default()
                ),
            });
        }
        let has = |name: &str| columns.iter().any(|c| c.0.name == name);
        let key: Vec<String> = match (&url.key, primary.as_slice()) {
            (Some(key), _) => {
                if let Some(k) = key.iter().find(|k| !has(k)) {
                    return Err(Error::DbSchema {
                        message: format!("table {table:?} has no column {k:?} (key={})", key.join(",")),
                    });
                }
                key.clone()
            }
            (None, []) => {
                let unique = self.unique_keys(table)?;
                let message = if unique.is_empty() {
                    format!(
                        "table {table:?} has no primary key or unique index: add one, or name unique columns with \
                         ?key=a,b"
                    )
                } else {
                    let sets: Vec<String> = unique.iter().map(|u| u.join(",")).collect();
                    format!(
                        "table {table:?} has no primary key: name the columns of one of its unique indexes with ?key= \
                         ({})",
                        sets.join(" or ")
                    )
                };
                return Err(Error::DbSchema { message });
            }
            (None, primary) => primary.to_vec(),
        };
        if let Some(k) = key.iter().enumerate().find(|(i, k)| key[..*i].contains(k)).map(|(_, k)| k) {
            return Err(Error::DbSchema { message: format!("key= names column {k:?} twice") });
        }
        // Keyset pages skip rows that share a key, and upserts need a key that can conflict: it must be unique, the
        // whole column set of the primary key or of a unique index.
        let same = |set: &[String]| set.len() == key.len() && set.iter().all(|c| key.contains(c));
        if !same(&primary) && !self.unique_keys(table)?.iter().any(|u| same(u)) {
            return Err(Error::DbSchema {
                message: format!(
                    "{} of table {table:?} {} neither its primary key nor unique: key= must name the columns of its \
                     primary key or of a unique index",
                    if key.len() == 1 { format!("column {:?}", key[0]) } else { format!("columns {}", key.join(",")) },
                    if key.len() == 1 { "is" } else { "are" },
                ),
            });
        }
        let mut key_columns = Vec::with_capacity(key.len());
        for name in &key {
            let type_name = columns.iter().find(|c| c.0.name == *name).map(|c| c.1.clone()).unwrap_or_default();
            let mut kind = key_kind(&type_name);
            if let Conn::Sqlite(c) = &mut *self {
                // SQLite keeps what it is given where its type affinity cannot convert it (a REAL in an INTEGER
                // column, a BLOB anywhere), and a column declared without a type keeps anything: the values say what
                // the key is. One pass over the key's index; a key that is not all integers or all text is an error
                // now, not a reader failing on it again after every restart.
                kind = lite::key_kind_of(c, table, name, kind)
                    .map_err(|source| Error::DbQuery { doing: format!("reading the keys of {table}"), source })?
                    .map_err(|message| Error::DbSchema { message })?;
            }
            key_columns.push(KeyColumn { name: name.clone(), kind, type_name });
        }
        let wanted: Vec<Column> = match &url.columns {
            Some(names) => {
                let mut picked = Vec::new();
                for n in names {
                    let Some((c, _)) = columns.iter().find(|c| &c.0.name == n) else {
                        return Err(Error::DbSchema {
                            message: format!("table {table:?} has no column {n:?} (columns={})", names.join(",")),
                        });
                    };
                    picked.push(c.clone());
                }
                for (i, k) in key.iter().filter(|k| !names.contains(k)).enumerate() {
                    if let Some((c, _)) = columns.iter().find(|c| c.0.name == *k) {
                        picked.insert(i, c.clone());
                    }
                }
                picked
            }
            None => columns.into_iter().map(|c| c.0).collect(),
        };
        let schema = Schema { table: table.clone(), columns: wanted, key: key_columns };
        let denied = match self {
            Conn::Postgres(c) => pg::denied(c, &schema, access),
            Conn::Mysql(c) => my::denied(c, &schema, access),
            Conn::Sqlite(_) => Ok(None),
        }
        .map_err(|source| Error::DbQuery { doing: format!("reading the privileges on {table}"), source })?;
        if let Some(d) = denied {
            return Err(permission_denied(table, &d));
        }
        Ok(schema)
    }

    /// For a table the catalog does not show: whether the role may not see it (MySQL shows no table to a role with
    /// no privilege on it), as the error to report.
    fn hidden(&mut self, table: &TableName) -> Result<Option<Error>> {
        let Conn::Mysql(c) = self else { return Ok(None) };
        let denied = my::hidden(c, table)
            .map_err(|source| Error::DbQuery { doing: format!("reading the privileges on {table}"), source })?;
        Ok(denied.map(|d| permission_denied(table, &d)))
    }

    /// The full column sets of the table's unique indexes (the primary key's too), each in index order.
    fn unique_keys(&mut self, table: &TableName) -> Result<Vec<Vec<String>>> {
        match self {
            Conn::Postgres(c) => pg::unique_keys(c, table),
            Conn::Mysql(c) => my::unique_keys(c, table),
            Conn::Sqlite(c) => lite::unique_keys(c, table),
        }
        .map_err(|source| Error::DbQuery { doing: format!("reading the unique keys of {table}"), source })
    }

    /// Rows whose key is NULL: a scan in key order never reaches them.
    pub fn null_keys(&mut self, s: &Schema) -> Result<u64> {
        let nulls: Vec<String> = s.key.iter().map(|k| format!("{} IS NULL", quote(&k.name))).collect();
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {}", s.table.quoted(), nulls.join(" OR "));
        let n: Result<i64, DbError> = match self {
            Conn::Postgres(c) => c.query_one(sql.as_str(), &[]).map(|r| r.get(0)).map_err(DbError::from),
            Conn::Mysql(c) => mysql::prelude::Queryable::query_first::<i64, _>(c, sql)
                .map(Option::unwrap_or_default)
                .map_err(DbError::from),
            Conn::Sqlite(c) => c.query_row(&sql, [], |r| r.get(0)).map_err(DbError::from),
        };
        n.map(|n| n.max(0) as u64)
            .map_err(|source| Error::DbQuery { doing: format!("counting NULL keys of {}", s.table), source })
    }

    /// About how many rows the table holds, and the keys that end every run of `every` rows in key order: the
    /// boundaries of chunks of even size however the keys are spread. One pass over the key's index.
    pub fn boundaries(&mut self, s: &Schema, every: u64) -> Result<(u64, Vec<Key>)> {
        match self {
            Conn::Postgres(c) => pg::boundaries(c, s, every),
            Conn::Mysql(c) => my::boundaries(c, s, every),
            Conn::Sqlite(c) => lite::boundaries(c, s, every),
        }
        .map_err(|source| Error::DbQuery { doing: format!("splitting {} into chunks", s.table), source })
    }

    /// The next page of a chunk in key order: up to `limit` rows with a key above `after` and at most `upto`.
    pub fn page(
        &mut self,
        s: &Schema,
        after: Option<&Key>,
        upto: Option<&Key>,
        limit: usize,
        out: &mut Vec<Row>,
    ) -> Result<(), DbError> {
        // A checkpoint of a scan keyed otherwise (the table's key changed under a scan's plan) cannot be resumed.
        if let Some(k) = after.iter().chain(upto.iter()).find(|k| k.0.len() != s.key.len()) {
            return Err(format!(
                "the key {k} has {} parts, but the key {} of table {:?} has {}: the scan's plan is of another key \
                 (--rescan plans it again)",
                k.0.len(),
                s.key_names(),
                s.table,
                s.key.len()
            )
            .into());
        }
        let which = Which::Range { after, upto };
        match self {
            Conn::Postgres(c) => pg::page(c, s, which, limit, out),
            Conn::Mysql(c) => my::page(c, s, which, limit, out),
            Conn::Sqlite(c) => lite::page(c, s, which, limit, out),
        }
    }

    /// The rows whose key is one of `keys` (a lookup's batch), in key order: one statement.
    /// Rows written as [`page`](Self::page) writes them, from their columns' text in a JSON array of objects
    /// (PostgreSQL: what logical decoding gives).
    pub fn populated(&mut self, s: &Schema, objects: &str, out: &mut Vec<Row>) -> Result<(), DbError> {
        match self {
            Conn::Postgres(c) => pg::populated(c, s, objects, out),
            _ => Err("rows from a change are PostgreSQL's only".into()),
        }
    }

    pub fn rows_with_keys(&mut self, s: &Schema, keys: &[Key], out: &mut Vec<Row>) -> Result<(), DbError> {
        if keys.is_empty() {
            return Ok(());
        }
        let which = Which::Keys(keys);
        match self {
            Conn::Postgres(c) => pg::page(c, s, which, keys.len(), out),
            Conn::Mysql(c) => my::page(c, s, which, keys.len(), out),
            Conn::Sqlite(c) => lite::page(c, s, which, keys.len(), out),
        }
    }

    /// Writes events as rows in one transaction: inserted, or updated where the key is already there. Only `fields`
    /// are written.
    pub fn upsert(&mut self, s: &Schema, objects: &[&Object<'_>], fields: &[&str]) -> Result<(), DbError> {
        match self {
            Conn::Postgres(c) => pg::upsert(c, s, objects, fields),
            Conn::Mysql(c) => my::upsert(c, s, objects, fields),
            Conn::Sqlite(c) => lite::upsert(c, s, objects, fields),
        }
    }

    /// Deletes the rows with the keys of `objects` (events whose fields hold the key's columns): a followed table's
    /// deletes.
    pub fn delete(&mut self, s: &Schema, objects: &[&Object<'_>]) -> Result<(), DbError> {
        if objects.is_empty() {
            return Ok(());
        }
        let mut keys = String::from("[");
        for (i, o) in objects.iter().enumerate() {
            keys.push_str(if i > 0 { ",{" } else { "{" });
            for (j, k) in s.key.iter().enumerate() {
                if j > 0 {
                    keys.push(',');
                }
                keys.push_str(&serde_json::to_string(&k.name)?);
                keys.push(':');
                keys.push_str(o.fields.get(k.name.as_str()).map_or("null", |v| v.get()));
            }
            keys.push('}');
        }
        keys.push(']');
        match self {
            Conn::Postgres(c) => pg::delete(c, s, &keys),
            Conn::Mysql(c) => my::delete(c, s, objects),
            Conn::Sqlite(c) => lite::delete(c, s, &keys),
        }
    }

    /// Whether the table exists (or is there, but hidden from this role: then the error says so).
    pub fn exists(&mut self, table: &TableName) -> Result<bool> {
        if !self.columns(table)?.0.is_empty() {
            return Ok(true);
        }
        match self.hidden(table)? {
            Some(denied) => Err(denied),
            None => Ok(false),
        }
    }

    /// The table's columns and primary key; none when it does not exist.
    fn columns(&mut self, table: &TableName) -> Result<TableColumns> {
        match self {
            Conn::Postgres(c) => pg::columns(c, table),
            Conn::Mysql(c) => my::columns(c, table),
            Conn::Sqlite(c) => lite::columns(c, table),
        }
        .map_err(|source| match self.fault(&source) {
            // A schema the role may not use.
            Fault::Refused => Error::DbSchema {
                message: format!(
                    "permission denied reading the columns of table {table:?}: {}",
                    crate::error::db_message(source.as_ref())
                ),
            },
            _ => Error::DbQuery { doing: format!("reading the columns of {table}"), source },
        })
    }

    /// Runs a statement that returns nothing (DDL).
    fn execute(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Postgres(c) => c.batch_execute(sql).map_err(DbError::from),
            Conn::Mysql(c) => mysql::prelude::Queryable::query_drop(c, sql).map_err(DbError::from),
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(DbError::from),
        }
    }

    /// The engine this connection speaks to.
    pub fn engine(&self) -> Engine {
        match self {
            Conn::Postgres(_) => Engine::Postgres,
            Conn::Mysql(_) => Engine::Mysql,
            Conn::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// A source table's columns with their full declared types, and its key (the URL's `key=`, else its primary
    /// key): what `--create-table` keeps. `None` when the table is not there (the source says so itself).
    pub fn source_columns(&mut self, url: &TableUrl) -> Result<Option<SourceColumns>> {
        let table = url.table().map_err(|message| Error::DbSchema { message })?;
        let (columns, primary) = self.columns(table)?;
        if columns.is_empty() {
            return Ok(None);
        }
        let doing = || format!("reading the column types of {table}");
        let declared: Vec<Declared> = match self {
            Conn::Postgres(c) => pg::declared(c, table)
                .map_err(|source| Error::DbQuery { doing: doing(), source })?
                .into_iter()
                .map(|(name, type_name, builtin)| {
                    let json = columns.iter().any(|c| c.0.name == name && c.0.json);
                    Declared { name, type_name, json, builtin }
                })
                .collect(),
            Conn::Mysql(c) => my::declared(c, table)
                .map_err(|source| Error::DbQuery { doing: doing(), source })?
                .into_iter()
                .map(|(name, type_name)| {
                    // MariaDB's JSON is a LONGTEXT with a json_valid check, which `columns` found.
                    let json = columns.iter().any(|c| c.0.name == name && c.0.json);
                    Declared { name, type_name, json, builtin: true }
                })
                .collect(),
            Conn::Sqlite(_) => columns
                .iter()
                .map(|(c, declared)| Declared {
                    name: c.name.clone(),
                    type_name: declared.clone(),
                    json: c.json,
                    builtin: true,
                })
                .collect(),
        };
        let key = url.key.clone().unwrap_or(primary);
        Ok(Some(SourceColumns { engine: self.engine(), columns: declared, key }))
    }

    /// Whether a type a PostgreSQL source declared (an enum, an extension's type) is known here too.
    pub fn has_type(&mut self, name: &str) -> Result<bool> {
        match self {
            Conn::Postgres(c) => pg::has_type(c, name)
                .map_err(|source| Error::DbQuery { doing: format!("looking up type {name}"), source }),
            _ => Ok(false),
        }
    }

    /// The engine's SQL text.
    pub fn dialect(&self) -> &'static dyn Dialect {
        dialect::of(self.engine())
    }

    /// Creates `table` with `columns` (a name and its SQL type each), `key` its primary key. On MySQL the table is
    /// utf8mb4 with a binary collation: any text fits, and keys that differ only in case or accents stay apart, as
    /// they are on PostgreSQL and SQLite.
    pub fn create_table(&mut self, table: &TableName, key: &[String], columns: &[(String, String)]) -> Result<()> {
        let columns: Vec<String> = columns.iter().map(|(name, ty)| format!("{} {ty}", quote(name))).collect();
        let primary: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let options = self.dialect().table_options();
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({})){options}",
            table.quoted(),
            columns.join(", "),
            primary.join(", ")
        );
        self.execute(&sql).map_err(|source| Error::DbQuery { doing: format!("creating table {table}"), source })
    }

    /// Creates the dead-letter table beside `table` if it is missing, and returns its name. An event is kept as it
    /// came: in `event` when it is text, else its bytes in `event_bytes`. On MySQL the table is utf8mb4 whatever the
    /// database's default, so that any text fits; a table from an earlier version gets the column, and utf8mb4.
    pub fn dead_letter_table(&mut self, table: &TableName) -> Result<TableName> {
        let name = table.beside("_dead_letter");
        let doing = || format!("creating the dead-letter table {name}");
        // MySQL's TEXT holds 64 KiB; an event may be longer.
        let d = self.dialect();
        let (text, bytes, charset) = (d.text_type(), d.bytes_type(), d.table_options());
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (at {text} NOT NULL, reason {text} NOT NULL, event {text}, \
             event_bytes {bytes}, written TIMESTAMP DEFAULT CURRENT_TIMESTAMP){charset}",
            name.quoted()
        );
        self.execute(&sql).map_err(|source| Error::DbQuery { doing: doing(), source })?;
        let (columns, _) = self.columns(&name)?;
        if !columns.iter().any(|c| c.0.name == "event_bytes") {
            let sql = format!("ALTER TABLE {} ADD COLUMN event_bytes {bytes}", name.quoted());
            self.execute(&sql).map_err(|source| Error::DbQuery { doing: doing(), source })?;
        }
        if let Conn::Mysql(c) = self {
            my::utf8mb4(c, &name).map_err(|source| Error::DbQuery { doing: doing(), source })?;
        }
        Ok(name)
    }

    /// Writes refused events to the dead-letter table, in one transaction.
    pub fn dead_letters(&mut self, table: &TableName, rows: &[DeadLetter<'_>]) -> Result<(), DbError> {
        match self {
            Conn::Postgres(c) => pg::dead_letters(c, table, rows),
            Conn::Mysql(c) => my::dead_letters(c, table, rows),
            Conn::Sqlite(c) => lite::dead_letters(c, table, rows),
        }
    }

    /// What a failed call means: retry, stop, or set the rows aside.
    pub fn fault(&self, e: &DbError) -> Fault {
        match self {
            Conn::Postgres(_) => pg::fault(e),
            Conn::Mysql(_) => my::fault(e),
            Conn::Sqlite(_) => lite::fault(e),
        }
    }
}

/// The dead-letter table's columns, as a row is written.
/// The fields a followed table's change adds to its row (`--follow`): what it did (`c`, `u`, `d`, or `r` for a
/// snapshot row), where it committed in the log and when, and the old row where `REPLICA IDENTITY FULL` gives it. A
/// table sink writes none of them as columns, and applies `"__op": "d"` as a delete.
pub const CHANGE_FIELDS: [&str; 4] = [CHANGE_OP, "__lsn", "__commit_time", "__before"];
pub const CHANGE_OP: &str = "__op";

const DEAD_LETTER_COLUMNS: [&str; 4] = ["at", "reason", "event", "event_bytes"];

/// A row of the dead-letter table: where the event came from, why it was refused, and the event as it came: as text
/// when it is UTF-8 with no NUL (which PostgreSQL's text cannot hold), else as bytes.
pub struct DeadLetter<'a> {
    pub at: String,
    pub reason: String,
    pub text: Option<&'a str>,
    pub bytes: Option<&'a [u8]>,
}

impl<'a> DeadLetter<'a> {
    pub fn new(at: String, reason: &str, event: &'a [u8]) -> DeadLetter<'a> {
        let text = std::str::from_utf8(event).ok().filter(|t| !t.contains('\0'));
        DeadLetter {
            at,
            // The reason is ours, but it may quote the event.
            reason: String::from_utf8_lossy(reason.as_bytes()).replace('\0', "\u{fffd}"),
            text,
            bytes: if text.is_some() { None } else { Some(event) },
        }
    }
}

/// An event the sink cannot put into a statement (what the database would refuse as no text or no number): the
/// event's fault, which sends it to the dead-letter table.
#[derive(Debug)]
pub struct Unencodable(pub String);

impl std::fmt::Display for Unencodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unencodable {}

/// A write refused for the data of one row that the database named: its index among the rows written. Lets a sink
/// set that row aside and write the others, without searching for it.
#[derive(Debug)]
pub struct RefusedRow {
    pub index: usize,
    pub error: DbError,
}

impl std::fmt::Display for RefusedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::error::db_message(self.error.as_ref()))
    }
}

impl std::error::Error for RefusedRow {}

/// A connection that comes back: statements that fail because the database is away (a restart, a lost connection, a
/// timeout) are retried on a fresh connection, after a growing delay, `max_retries` times.
pub struct Resilient {
    url: TableUrl,
    conn: Option<Conn>,
    max_retries: u32,
    /// Who retries, for the log: `reader-2`, `the sink`.
    who: String,
}

impl Resilient {
    /// Connects now: a wrong URL or password is an error at once, not after the retries.
    pub fn connect(url: &TableUrl, max_retries: u32, who: String) -> Result<Resilient> {
        let conn = Conn::open(url)?;
        Ok(Resilient { url: url.clone(), conn: Some(conn), max_retries, who })
    }

    pub fn conn(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(&self.url)?);
        }
        match &mut self.conn {
            Some(c) => Ok(c),
            None => unreachable!("connected above"),
        }
    }

    /// Runs `op`, retrying while the database is away. `Ok(Err(_))`: the statement failed on its data, which a retry
    /// would not mend; the caller decides. `Err`: the database stayed away, or refused us.
    pub fn run<T>(
        &mut self,
        doing: &dyn Fn() -> String,
        mut op: impl FnMut(&mut Conn) -> Result<T, DbError>,
    ) -> Result<Result<T, DbError>> {
        let mut attempt = 0u32;
        loop {
            let failure = match self.conn() {
                Ok(conn) => match op(conn) {
                    Ok(t) => return Ok(Ok(t)),
                    // An event that cannot be encoded is the event's fault, whatever the engine.
                    Err(e) if e.is::<Unencodable>() || e.is::<serde_json::Error>() || e.is::<RefusedRow>() => {
                        return Ok(Err(e))
                    }
                    Err(e) => match conn.fault(&e) {
                        Fault::Data => return Ok(Err(e)),
                        Fault::Refused => return Err(Error::DbQuery { doing: doing(), source: e }),
                        // Not the database being away: a retry would fail the same way.
                        Fault::Other => return Err(Error::DbQuery { doing: doing(), source: e }),
                        Fault::Unreachable => crate::error::db_message(e.as_ref()),
                    },
                },
                Err(e @ Error::DbConnect { fault: Fault::Unreachable, .. }) => e.to_string(),
                Err(e) => return Err(e),
            };
            // Whatever broke, the next attempt starts on a fresh connection.
            self.conn = None;
            attempt += 1;
            if attempt > self.max_retries {
                return Err(Error::DbQuery {
                    doing: format!("{} (gave up after {} retries, --max-retries)", doing(), self.max_retries),
                    source: failure.into(),
                });
            }
            let delay = crate::backoff::backoff(attempt as usize);
            crate::telemetry::events::emit(crate::telemetry::events::DatabaseRetried {
                who: &self.who,
                doing: &doing(),
                error: &failure,
                attempt,
                max: self.max_retries,
                delay,
            });
            crate::telemetry::heartbeat::waiting_on_peer(|| std::thread::sleep(delay));
        }
    }
}

/// Why a TLS handshake's certificate check failed, when `text` (a client's error, OpenSSL's words in it) says it
/// did: OpenSSL's verify result, which the PostgreSQL client appends after `: ` and native-tls in parentheses.
fn verify_failure(text: &str) -> Option<String> {
    let at = text.find("certificate verify failed")?;
    // The MySQL client wraps it: `TlsError { ... }`.
    let after = text[at..].trim_end().trim_end_matches('}').trim_end();
    let why = match after.strip_suffix(')').and_then(|t| t.rsplit_once('(')) {
        Some((_, why)) => why,
        None => after.rsplit_once(": ").map_or("", |(_, why)| why),
    };
    let why = why.trim();
    Some(if why.is_empty() || why.starts_with("certificate verify failed") {
        "untrusted".to_string()
    } else {
        why.to_string()
    })
}

/// The line for a certificate the handshake refused: why, in OpenSSL's words, and what to check: the trusted roots
/// (`roots`, as the URL names them), or, for a name that does not match, the mode that skips the name check.
fn certificate_refused(why: &str, roots: &str, without_name_check: &str) -> String {
    if why.to_ascii_lowercase().contains("mismatch") {
        format!(
            "certificate verification failed ({why}): the server's certificate does not name the URL's host; connect \
             by a name it holds, or use {without_name_check}, which does not check the name"
        )
    } else {
        format!("certificate verification failed ({why}): the server's certificate is not trusted by {roots}")
    }
}

/// Integer columns split and compare as numbers; everything else as text.
fn key_kind(type_name: &str) -> KeyKind {
    let t = type_name.to_ascii_lowercase();
    if ["int", "serial"].iter().any(|w| t.contains(w)) {
        KeyKind::Int
    } else {
        KeyKind::Text
    }
}

/// An identifier quoted for every engine we speak to (MySQL in ANSI_QUOTES mode aside, double quotes are standard).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The error a stage reports for privileges the role lacks on `table`.
fn permission_denied(table: &TableName, d: &Denied) -> Error {
    Error::DbSchema {
        message: format!(
            "permission denied for table {table:?}: the role lacks {} on it ({}; or name another table)",
            match d.missing.split_last() {
                Some((last, [])) => last.to_string(),
                Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                None => String::new(),
            },
            d.grant
        ),
    }
}

/// Which rows a page reads: a run of keys (a scan's), or the rows with these keys (a lookup's).
#[derive(Debug, Clone, Copy)]
pub enum Which<'k> {
    Range { after: Option<&'k Key>, upto: Option<&'k Key> },
    Keys(&'k [Key]),
}

/// The `WHERE` of a page, and its parameters' parts in order; see [`keyset`] for a range. Keys are an `IN` list,
/// which every engine answers from the key's index: `k IN ($1, $2)`, `(a, b) IN (($1, $2), ($3, $4))`.
fn condition<'k>(
    key: &[String],
    which: Which<'k>,
    compare: Compare,
    placeholder: impl Fn(usize, usize) -> String,
) -> (String, Vec<&'k Part>) {
    let (after, upto) = match which {
        Which::Range { after, upto } => (after, upto),
        Which::Keys(keys) => {
            let mut parts: Vec<&Part> = Vec::new();
            let mut items = Vec::with_capacity(keys.len());
            for k in keys {
                let mut one = Vec::with_capacity(k.0.len());
                for (i, part) in k.0.iter().enumerate().take(key.len()) {
                    parts.push(part);
                    one.push(placeholder(parts.len(), i));
                }
                items.push(if one.len() == 1 { one.concat() } else { format!("({})", one.join(", ")) });
            }
            let row = if key.len() == 1 { key.concat() } else { format!("({})", key.join(", ")) };
            return (format!("WHERE {row} IN ({})", items.join(", ")), parts);
        }
    };
    keyset(key, after, upto, compare, placeholder)
}

/// The condition of a keyset page, `WHERE key > after AND key <= upto` with either bound left out when absent, a
/// composite key compared as `compare` says; its `n`-th parameter, for key column `i`, written by `placeholder(n, i)`.
/// Returns the condition and the bounds' parts, one per parameter, in the parameters' order.
fn keyset<'k>(
    key: &[String],
    after: Option<&'k Key>,
    upto: Option<&'k Key>,
    compare: Compare,
    placeholder: impl Fn(usize, usize) -> String,
) -> (String, Vec<&'k Part>) {
    let mut conds = Vec::new();
    let mut parts: Vec<&Part> = Vec::new();
    let param = |parts: &mut Vec<&'k Part>, b: &'k Key, i: usize| {
        parts.push(&b.0[i]);
        placeholder(parts.len(), i)
    };
    // The operator on a column before the last (strict), on the last, and on the first alone (a range's start).
    for (bound, strict, last, lead) in [(after, ">", ">", ">="), (upto, "<", "<=", "<=")] {
        let Some(b) = bound else { continue };
        let n = key.len().min(b.0.len());
        if n == 1 || compare == Compare::RowValue {
            let row =
                |items: Vec<String>| if items.len() == 1 { items.concat() } else { format!("({})", items.join(", ")) };
            let params: Vec<String> = (0..b.0.len()).map(|i| param(&mut parts, b, i)).collect();
            conds.push(format!("{} {last} {}", row(key.to_vec()), row(params)));
            continue;
        }
        let mut cond = format!("{} {lead} {} AND ", key[0], param(&mut parts, b, 0));
        for (i, k) in key.iter().enumerate().take(n - 1) {
            let p = param(&mut parts, b, i);
            let again = param(&mut parts, b, i);
            cond.push_str(&format!("({k} {strict} {p} OR ({k} = {again} AND "));
        }
        cond.push_str(&format!("{} {last} {}", key[n - 1], param(&mut parts, b, n - 1)));
        cond.push_str(&"))".repeat(n - 1));
        conds.push(cond);
    }
    let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    (filter, parts)
}

/// Rows as JSON objects, the column names escaped once per page.
struct ObjectWriter {
    names: Vec<String>,
}

impl ObjectWriter {
    fn new(columns: &[Column]) -> ObjectWriter {
        ObjectWriter { names: columns.iter().map(|c| serde_json::to_string(&c.name).unwrap_or_default()).collect() }
    }

    /// One object; `value(i, out)` writes column `i`'s value, or returns false to leave the field out (a JSON
    /// column's SQL NULL, which JSON null would not tell apart from a JSON null value).
    fn object(&self, mut value: impl FnMut(usize, &mut Vec<u8>) -> Result<bool, DbError>) -> Result<Vec<u8>, DbError> {
        let mut json = Vec::with_capacity(16 * self.names.len() + 2);
        json.push(b'{');
        let mut first = true;
        for (i, name) in self.names.iter().enumerate() {
            let start = json.len();
            if !first {
                json.push(b',');
            }
            json.extend_from_slice(name.as_bytes());
            json.push(b':');
            if value(i, &mut json)? {
                first = false;
            } else {
                json.truncate(start);
            }
        }
        json.push(b'}');
        Ok(json)
    }
}

/// An event on its way into a table: its bytes, and its top-level fields, parsed once.
pub struct Object<'a> {
    pub raw: &'a [u8],
    pub fields: Fields<'a>,
}

/// An event's top-level fields with their values as JSON text, in name order, the last of a repeated name kept (as a
/// JSON map keeps it). One vector, names borrowed from the event unless escaped: an event has few fields, and the
/// sink parses every one.
pub struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    pub fn get(&self, name: &str) -> Option<&&'a RawValue> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name)).ok().map(|i| &self.0[i].1)
    }

    /// The names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Cow<'a, str>> + Clone {
        self.0.iter().map(|(k, _)| k)
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name<'a>(Cow<'a, str>);
        impl<'de: 'a, 'a> serde::Deserialize<'de> for Name<'a> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl<'de> serde::de::Visitor<'de> for Visit {
                    type Value = Name<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                        Ok(Name(Cow::Borrowed(v)))
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                        Ok(Name(Cow::Owned(v.to_string())))
                    }
                }
                d.deserialize_str(Visit)
            }
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Fields<'de>, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Name(name), value)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    fields.push((name, value));
                }
                // Stable: of a repeated name, the later value is kept.
                fields.sort_by(|a: &(Cow<'de, str>, _), b| a.0.cmp(&b.0));
                fields.dedup_by(|later, earlier| {
                    let same = later.0 == earlier.0;
                    if same {
                        std::mem::swap(&mut later.1, &mut earlier.1);
                    }
                    same
                });
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl<'a> Object<'a> {
    /// The event's fields; an error (the event's dead letter) when it is not a JSON object, or holds what no table
    /// can hold as text: bytes that are not UTF-8, or an escaped lone surrogate (`"\ud800"`, which Python's
    /// `json.dumps` writes), which is not a Unicode character.
    pub fn parse(raw: &'a [u8]) -> Result<Object<'a>, String> {
        // serde_json refuses bytes that are not UTF-8 (keys and raw values are str): only a refusal is looked at again,
        // to say so, so that an event that parses pays for no second pass.
        let fields = serde_json::from_slice(raw).map_err(|e| match std::str::from_utf8(raw) {
            Err(bad) => format!("not UTF-8 text, which a table cannot hold: {bad}"),
            Ok(_) => format!("not a JSON object: {e}"),
        })?;
        // The fields' values are kept raw, their escapes unchecked: a full parse checks them, only where a surrogate
        // escape may be.
        if escapes_a_surrogate(raw) {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(raw) {
                return Err(format!("not valid Unicode text, which a table cannot hold (a lone surrogate?): {e}"));
            }
        }
        Ok(Object { raw, fields })
    }
}

/// Whether `raw` may hold a `\uD800`..`\uDFFF` escape (half of a surrogate pair, or a lone one).
fn escapes_a_surrogate(raw: &[u8]) -> bool {
    raw.windows(4).any(|w| {
        w[0] == b'\\' && w[1] == b'u' && (w[2] | 0x20) == b'd' && matches!(w[3] | 0x20, b'8'..=b'9' | b'a'..=b'f')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_types_are_integer_keys() {
        for t in ["integer", "INTEGER", "bigint", "int8", "smallint", "bigserial"] {
            assert_eq!(key_kind(t), KeyKind::Int, "{t}");
        }
        for t in ["text", "character varying", "uuid", "TEXT", ""] {
            assert_eq!(key_kind(t), KeyKind::Text, "{t}");
        }
    }

    #[test]
    fn a_keyset_page_has_the_bounds_it_is_given() {
        let (a, b) = (Key::int(5), Key::int(9));
        let dollar = |n: usize, _| format!("${n}");
        let k = ["k".to_string()];
        for compare in [Compare::RowValue, Compare::Expanded] {
            assert_eq!(keyset(&k, None, None, compare, dollar), (String::new(), vec![]));
            assert_eq!(
                keyset(&k, Some(&a), Some(&b), compare, dollar),
                ("WHERE k > $1 AND k <= $2".to_string(), vec![&a.0[0], &b.0[0]])
            );
            assert_eq!(keyset(&k, None, Some(&b), compare, dollar), ("WHERE k <= $1".to_string(), vec![&b.0[0]]));
        }
        // A composite key is compared as a row value, each parameter knowing its column.
        let (c, d) = (Key(vec![Part::Int(1), Part::Text("x".into())]), Key(vec![Part::Int(2), Part::Text("y".into())]));
        let ab = ["a".to_string(), "b".to_string()];
        let (filter, parts) = keyset(&ab, Some(&c), Some(&d), Compare::RowValue, |n, i| format!("${n}:{i}"));
        assert_eq!(filter, "WHERE (a, b) > ($1:0, $2:1) AND (a, b) <= ($3:0, $4:1)");
        assert_eq!(parts.len(), 4);
        // Or column by column, which MySQL ranges on.
        let (filter, parts) = keyset(&ab, Some(&c), Some(&d), Compare::Expanded, |n, i| format!("${n}:{i}"));
        assert_eq!(
            filter,
            "WHERE a >= $1:0 AND (a > $2:0 OR (a = $3:0 AND b > $4:1)) AND a <= $5:0 AND (a < $6:0 OR (a = $7:0 AND b \
             <= $8:1))"
        );
        let expected: Vec<&Part> = [&c.0[0], &c.0[0], &c.0[0], &c.0[1], &d.0[0], &d.0[0], &d.0[0], &d.0[1]].to_vec();
        assert_eq!(parts, expected);
        let three = Key(vec![Part::Int(1), Part::Int(2), Part::Int(3)]);
        let abc = ["a".to_string(), "b".to_string(), "c".to_string()];
        let (filter, parts) = keyset(&abc, Some(&three), None, Compare::Expanded, |_, _| "?".to_string());
        assert_eq!(filter, "WHERE a >= ? AND (a > ? OR (a = ? AND (b > ? OR (b = ? AND c > ?))))");
        assert_eq!(parts.len(), 6);
        let w = ObjectWriter::new(&[
            Column { name: "a".into(), binary: false, json: false, type_name: String::new() },
            Column { name: "q\"".into(), binary: false, json: false, type_name: String::new() },
            Column { name: "c".into(), binary: false, json: true, type_name: String::new() },
        ]);
        let json = w
            .object(|i, out| {
                out.extend_from_slice(i.to_string().as_bytes());
                Ok(true)
            })
            .unwrap();
        assert_eq!(String::from_utf8(json).unwrap(), r#"{"a":0,"q\"":1,"c":2}"#);
        // A field left out leaves no comma behind, first or last.
        let json = w
            .object(|i, out| {
                Ok(i == 1 && {
                    out.push(b'1');
                    true
                })
            })
            .unwrap();
        assert_eq!(String::from_utf8(json).unwrap(), r#"{"q\"":1}"#);
    }

    #[test]
    fn certificate_failures_say_why() {
        let pg = "error performing TLS handshake: error:0A000086:SSL routines:tls_post_process_server_certificate:\
                  certificate verify failed:../ssl/statem/statem_clnt.c:1889:: unable to get local issuer certificate";
        assert_eq!(verify_failure(pg).as_deref(), Some("unable to get local issuer certificate"));
        let my = "TLS error: error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify \
                  failed:../ssl/statem/statem_clnt.c:1889: (Hostname mismatch)";
        assert_eq!(verify_failure(my).as_deref(), Some("Hostname mismatch"));
        let wrapped = "TlsError { error:0A000086:SSL routines::certificate verify failed:c:1889: (self-signed \
                       certificate in certificate chain) }";
        assert_eq!(verify_failure(wrapped).as_deref(), Some("self-signed certificate in certificate chain"));
        assert_eq!(verify_failure("Connection refused (os error 111)"), None);
        let line = certificate_refused("Hostname mismatch", "sslrootcert=ca.pem", "sslmode=verify-ca");
        assert!(line.contains("does not name the URL's host") && line.contains("sslmode=verify-ca"), "{line}");
        let line = certificate_refused("unable to get local issuer certificate", "ssl-ca=ca.pem", "x");
        assert!(line.ends_with("is not trusted by ssl-ca=ca.pem"), "{line}");
    }

    #[test]
    fn identifiers_are_quoted_and_fields_listed() {
        assert_eq!(quote("VALUE"), "\"VALUE\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        let o = Object::parse(br#"{"b":1,"a":{"x":2}}"#).unwrap();
        assert_eq!(o.fields.get("a").map(|v| v.get()), Some(r#"{"x":2}"#));
        assert!(Object::parse(b"[1]").err().unwrap().contains("not a JSON object"));
        // A surrogate pair is a character; half of one is not, wherever it is.
        assert!(Object::parse(br#"{"a":"\ud83d\ude00","b":"\\ud800"}"#).is_ok());
        for lone in [r#"{"id":2,"name":"lone \ud800"}"#, r#"{"a":{"b":["\uDC00x"]}}"#, r#"{"a":"\ud800\u0041"}"#] {
            let why = Object::parse(lone.as_bytes()).err().unwrap_or_default();
            assert!(why.contains("not valid Unicode text"), "{lone}: {why}");
        }
        let why = Object::parse(b"{\"a\":\"\xff\"}").err().unwrap_or_default();
        assert!(why.contains("not UTF-8"), "{why}");
    }

    #[test]
    fn fields_are_in_name_order_with_the_last_of_a_repeated_name() {
        let o = Object::parse(br#"{"c":1,"a":2,"\u0062":3,"a":4,"c":5,"a":6}"#).unwrap();
        let names: Vec<&str> = o.fields.keys().map(|k| k.as_ref()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let values: Vec<&str> = names.iter().map(|n| o.fields.get(n).unwrap().get()).collect();
        assert_eq!(values, ["6", "3", "5"]);
        assert!(o.fields.get("d").is_none());
        let why = Object::parse(br#""p1""#).err().unwrap_or_default();
        assert_eq!(why, "not a JSON object: invalid type: string \"p1\", expected a map at line 1 column 4");
    }
}
