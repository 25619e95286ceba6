//! SQLite: rows are read with their storage classes and written as JSON here; events are written with
//! `json_each`/`json_extract`, one statement per batch. Files are opened in WAL mode, so that a scan's readers and a
//! sink in another process share one file.

use super::dialect::Dialect;
use super::key::{Key, KeyKind, Part};
use super::url::{TableName, TableUrl};
use super::{
    condition, quote, Column, DbError, DeadLetter, Fault, Object, ObjectWriter, Row, Schema, TableColumns, Which,
};
use crate::error::{Error, Result};
use base64::Engine as _;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::time::Duration;

/// This engine's SQL text.
const D: &dyn Dialect = &super::dialect::Sqlite;

pub fn open(url: &TableUrl) -> Result<Connection> {
    open_path(&url.connect, false).map_err(|source| Error::DbConnect {
        url: url.to_string(),
        fault: Fault::Refused,
        source,
    })
}

/// Opens (or with `create`, creates) a database file in WAL mode, waiting on locks rather than failing.
///
/// WAL lets a scan's readers go on while the sink, in another process, writes to the same file; in a rollback
/// journal each commit waits for every reader. The mode belongs to the file and outlives the run: it cannot be set
/// back while another process has the file open, and a crashed run could not set it back at all. So the switch is
/// said, once, by the process that makes it (README: Tables).
pub fn open_path(path: &str, create: bool) -> Result<Connection, DbError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let c = Connection::open_with_flags(path, flags).map_err(|e| format!("cannot open {path}: {e}"))?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.create_scalar_function(UNBASE64, 1, FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_UTF8, |ctx| {
        Ok(unbase64(ctx.get_raw(0)))
    })?;
    let was: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !was.eq_ignore_ascii_case("wal") {
        let now: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        // A file just created has nothing to tell: only a user's file that changes is worth a line.
        if now.eq_ignore_ascii_case("wal") && !(create && was.eq_ignore_ascii_case("delete") && is_empty(&c)) {
            log::info!(
                "switched {path} from journal mode {was} to WAL, so that readers and the writer share it; it stays \
                 so (PRAGMA journal_mode = {was} sets it back when nothing has it open)"
            );
        }
    }
    Ok(c)
}

/// The SQL function that turns a base64 string back into the bytes it stands for (SQLite has none of its own).
const UNBASE64: &str = "supervisor_unbase64";

/// A BLOB column's value: bytes travel as base64 (as a table source writes them), so a string that is base64 is stored
/// as its bytes; anything else as it is, for the column to take or refuse.
fn unbase64(v: ValueRef<'_>) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match v {
        ValueRef::Text(t) => match base64::engine::general_purpose::STANDARD.decode(t) {
            Ok(bytes) => Value::Blob(bytes),
            Err(_) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        },
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Whether the database has no tables yet.
fn is_empty(c: &Connection) -> bool {
    c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0)).is_ok_and(|n| n == 0)
}

/// A table-valued pragma's arguments for `table`: its name, and its schema (an attached database) when named.
fn pragma_args(table: &TableName) -> (&'static str, Vec<String>) {
    match &table.schema {
        Some(schema) => ("?1, ?2", vec![table.name.clone(), schema.clone()]),
        None => ("?1", vec![table.name.clone()]),
    }
}

pub fn columns(c: &mut Connection, table: &TableName) -> Result<TableColumns, DbError> {
    let (args, params) = pragma_args(table);
    let mut stmt = c.prepare(&format!("SELECT name, type, pk FROM pragma_table_info({args}) ORDER BY cid"))?;
    let mut columns = Vec::new();
    let mut primary: Vec<(i64, String)> = Vec::new();
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(r) = rows.next()? {
        let (name, ty, pk): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if pk > 0 {
            primary.push((pk, name.clone()));
        }
        let binary = ty.to_ascii_uppercase().contains("BLOB");
        // SQLite keeps JSON as text: a column declared JSON holds it, and is read and written as JSON.
        let json = ty.to_ascii_uppercase().contains("JSON");
        columns.push((Column { name, binary, json, type_name: ty.to_ascii_lowercase() }, ty));
    }
    primary.sort();
    Ok((columns, primary.into_iter().map(|p| p.1).collect()))
}

/// The column sets of the unique indexes (not partial), each in index order.
pub fn unique_keys(c: &mut Connection, table: &TableName) -> Result<Vec<Vec<String>>, DbError> {
    let (args, params) = pragma_args(table);
    let info = if table.schema.is_some() { "il.name, ?2" } else { "il.name" };
    let mut stmt = c.prepare(&format!(
        "SELECT il.name, ii.name FROM pragma_index_list({args}) il, pragma_index_info({info}) ii \
         WHERE il.\"unique\" = 1 AND il.partial = 0 AND ii.name IS NOT NULL ORDER BY il.name, ii.seqno"
    ))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for row in rows {
        let (index, column) = row?;
        match out.last_mut() {
            Some((name, columns)) if *name == index => columns.push(column),
            _ => out.push((index, vec![column])),
        }
    }
    Ok(out.into_iter().map(|(_, columns)| columns).collect())
}

/// A key column's kind from the values it holds (SQLite keeps what it is given where the column's affinity cannot
/// convert it): integers only, or text; the declared kind when the table is empty. `Ok(Err)`: a key of other values,
/// or of both, which a scan cannot order and split.
pub fn key_kind_of(
    c: &mut Connection,
    table: &TableName,
    key: &str,
    declared: KeyKind,
) -> Result<Result<KeyKind, String>, DbError> {
    let mut stmt = c.prepare(&format!(
        "SELECT DISTINCT typeof({k}) FROM {t} WHERE {k} IS NOT NULL LIMIT 3",
        k = quote(key),
        t = table.quoted()
    ))?;
    let types: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(match types.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => Ok(declared),
        ["integer"] => Ok(KeyKind::Int),
        ["text"] => Ok(KeyKind::Text),
        other => Err(format!(
            "key column {key:?} of table {table:?} holds values of types {}: a key must be all integers or all text \
             (SQLite keeps a REAL or a BLOB in any column whose type cannot convert it)",
            other.join(", ")
        )),
    })
}

/// A row's key, from its first columns.
fn key_at(s: &Schema, r: &rusqlite::Row<'_>) -> Result<Key, DbError> {
    let mut parts = Vec::with_capacity(s.key.len());
    for (i, k) in s.key.iter().enumerate() {
        parts.push(match (k.kind, r.get_ref(i)?) {
            (KeyKind::Int, ValueRef::Integer(i)) => Part::Int(i),
            (KeyKind::Text, ValueRef::Text(t)) => Part::Text(String::from_utf8_lossy(t).into_owned()),
            (KeyKind::Text, ValueRef::Integer(i)) => Part::Text(i.to_string()),
            (_, other) => {
                return Err(format!("key column {:?} holds {:?}, not a usable key", k.name, other.data_type()).into())
            }
        });
    }
    Ok(Key(parts))
}

fn bind_key(k: &Part) -> rusqlite::types::Value {
    match k {
        Part::Int(i) => rusqlite::types::Value::Integer(*i),
        Part::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

pub fn boundaries(c: &mut Connection, s: &Schema, every: u64) -> Result<(u64, Vec<Key>), DbError> {
    let (t, k) = (s.table.quoted(), s.key_list(""));
    let total: i64 = c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
    let mut stmt = c.prepare(&format!(
        "SELECT {k} FROM (SELECT {k}, row_number() OVER (ORDER BY {k}) AS supervisor_n FROM {t}) \
         WHERE supervisor_n % ?1 = 0 ORDER BY supervisor_n"
    ))?;
    let mut rows = stmt.query([every.max(1) as i64])?;
    let mut keys = Vec::new();
    while let Some(r) = rows.next()? {
        keys.push(key_at(s, r)?);
    }
    Ok((total.max(0) as u64, keys))
}

pub fn page(c: &mut Connection, s: &Schema, which: Which<'_>, limit: usize, out: &mut Vec<Row>) -> Result<(), DbError> {
    let k = s.key_list("");
    let keys: Vec<String> = s.key.iter().map(|k| quote(&k.name)).collect();
    let cols: Vec<String> = s.columns.iter().map(|c| quote(&c.name)).collect();
    let (filter, bounds) = condition(&keys, which, D.key_compare(), |n, _| D.param(n));
    let params: Vec<rusqlite::types::Value> = bounds.into_iter().map(bind_key).collect();
    let sql = format!(
        "SELECT {k}, {} FROM {} {filter} ORDER BY {k} LIMIT {}",
        cols.join(", "),
        s.table.quoted(),
        limit.max(1)
    );
    let first = s.key.len();
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let writer = ObjectWriter::new(&s.columns);
    while let Some(r) = rows.next()? {
        let key = key_at(s, r)?;
        let json = writer.object(|i, out| write_value(out, r.get_ref(i + first)?, s.columns[i].json))?;
        out.push(Row { key, json });
    }
    Ok(())
}

/// A value as JSON: numbers stay numbers, NULL is null, text is a string, bytes are base64; a JSON column's text is
/// the JSON value it holds, and its NULL no field at all (returns false).
fn write_value(out: &mut Vec<u8>, v: ValueRef<'_>, json: bool) -> Result<bool, DbError> {
    match v {
        ValueRef::Null if json => return Ok(false),
        ValueRef::Text(t) if json && serde_json::from_slice::<serde::de::IgnoredAny>(t).is_ok() => {
            out.extend_from_slice(t)
        }
        ValueRef::Null => out.extend_from_slice(b"null"),
        ValueRef::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        ValueRef::Real(f) if f.is_finite() => serde_json::to_writer(&mut *out, &f)?,
        ValueRef::Real(_) => out.extend_from_slice(b"null"),
        ValueRef::Text(t) => serde_json::to_writer(&mut *out, &String::from_utf8_lossy(t))?,
        ValueRef::Blob(b) => serde_json::to_writer(&mut *out, &base64::engine::general_purpose::STANDARD.encode(b))?,
    }
    Ok(true)
}

pub fn upsert(c: &mut Connection, s: &Schema, objects: &[&Object<'_>], fields: &[&str]) -> Result<(), DbError> {
    let mut array = Vec::with_capacity(objects.iter().map(|o| o.raw.len() + 1).sum::<usize>() + 2);
    array.push(b'[');
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            array.push(b',');
        }
        array.extend_from_slice(o.raw);
    }
    array.push(b']');
    let array = String::from_utf8(array).map_err(|_| "an event is not UTF-8")?;
    let cols: Vec<String> = fields.iter().map(|f| quote(f)).collect();
    // A JSON column takes the value's JSON text as the event has it (`->` would give it re-written: SQLite has no
    // JSON type, the text is what it keeps), from a second array: per event, its JSON fields' texts as strings, taken
    // by the event's index in the first (`key`). The others take `json_extract`'s SQL values (a string's text, null as
    // NULL).
    let json: Vec<&str> = fields.iter().copied().filter(|f| s.columns.iter().any(|c| c.name == *f && c.json)).collect();
    let mut texts = Vec::with_capacity(objects.len());
    if !json.is_empty() {
        for o in objects {
            let row: Vec<&str> = json.iter().map(|f| o.fields.get(f).map_or("null", |v| v.get())).collect();
            texts.push(row);
        }
    }
    let texts = serde_json::to_string(&texts)?;
    let values: Vec<String> = fields
        .iter()
        .map(|f| match json.iter().position(|j| j == f) {
            Some(n) => format!("json_extract(?2, '$[' || key || '][{n}]')"),
            None if s.columns.iter().any(|c| c.name == *f && c.binary) => {
                format!("{UNBASE64}(json_extract(value, '$.{}'))", quote(f).replace('\'', "''"))
            }
            // A number into a text column is its text as the event writes it: json_extract would make a REAL of it
            // first, which keeps 15 significant digits (a PostgreSQL numeric(40,18) written into TEXT).
            None if s.columns.iter().any(|c| c.name == *f && text_affinity(&c.type_name)) => {
                let path = format!("'$.{}'", quote(f).replace('\'', "''"));
                format!(
                    "CASE WHEN json_type(value, {path}) IN ('integer', 'real') THEN value -> {path} \
                     ELSE json_extract(value, {path}) END"
                )
            }
            None => format!("json_extract(value, '$.{}')", quote(f).replace('\'', "''")),
        })
        .collect();
    let updates: Vec<String> = fields.iter().filter(|f| !s.is_key(f)).map(|f| quote(f)).collect();
    let keys: Vec<String> = s.key.iter().map(|k| quote(&k.name)).collect();
    // A WHERE tells the parser that ON CONFLICT is the upsert's, not a join's; this one also names ?2, which the
    // statement must, JSON columns or not.
    let sql = format!(
        "INSERT INTO {} ({}) SELECT {} FROM json_each(?1) WHERE ?2 IS NOT NULL {}",
        s.table.quoted(),
        cols.join(", "),
        values.join(", "),
        D.on_conflict(&keys, &updates)
    );
    c.prepare_cached(&sql)?.execute([array, texts])?;
    Ok(())
}

/// Deletes the rows whose keys `keys` holds: a JSON array of objects of the key's columns.
pub fn delete(c: &mut Connection, s: &Schema, keys: &str) -> Result<(), DbError> {
    let cols: Vec<String> = s.key.iter().map(|k| quote(&k.name)).collect();
    let values: Vec<String> =
        s.key.iter().map(|k| format!("json_extract(value, '$.{}')", quote(&k.name).replace('\'', "''"))).collect();
    let sql = format!(
        "DELETE FROM {} WHERE ({}) IN (SELECT {} FROM json_each(?1))",
        s.table.quoted(),
        cols.join(", "),
        values.join(", ")
    );
    c.prepare_cached(&sql)?.execute([keys])?;
    Ok(())
}

/// Whether a declared type gives a column TEXT affinity (SQLite's rules: no INT, and CHAR, CLOB or TEXT).
fn text_affinity(declared: &str) -> bool {
    let t = declared.to_ascii_uppercase();
    !t.contains("INT") && ["CHAR", "CLOB", "TEXT"].iter().any(|w| t.contains(w))
}

pub fn dead_letters(c: &mut Connection, table: &TableName, rows: &[DeadLetter<'_>]) -> Result<(), DbError> {
    let tx = c.transaction()?;
    {
        let mut stmt = tx.prepare(&D.insert(&table.quoted(), &super::DEAD_LETTER_COLUMNS))?;
        for d in rows {
            stmt.execute(rusqlite::params![d.at, d.reason, d.text, d.bytes])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub fn fault(e: &DbError) -> Fault {
    let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>() else {
        return Fault::Other;
    };
    match f.code {
        ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig => Fault::Data,
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure => Fault::Unreachable,
        ErrorCode::CannotOpen | ErrorCode::NotADatabase | ErrorCode::PermissionDenied | ErrorCode::ReadOnly => {
            Fault::Refused
        }
        _ => Fault::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_into_text_columns_keep_their_digits() {
        let mut c = open_path(":memory:", true).unwrap();
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, n TEXT, r REAL, b BLOB)").unwrap();
        let (columns, _) = columns(&mut c, &TableName { schema: None, name: "t".into() }).unwrap();
        let s = Schema {
            table: TableName { schema: None, name: "t".into() },
            columns: columns.into_iter().map(|c| c.0).collect(),
            key: vec![super::super::KeyColumn { name: "id".into(), kind: KeyKind::Int, type_name: "integer".into() }],
        };
        let raw = br#"{"id":1,"n":12345678901234567890.123456789012345678,"r":1.5,"b":"AAEC/w=="}"#;
        let o = Object::parse(raw).unwrap();
        let raw2 = br#"{"id":2,"n":"text","r":2,"b":null}"#;
        let o2 = Object::parse(raw2).unwrap();
        upsert(&mut c, &s, &[&o, &o2], &["b", "id", "n", "r"]).unwrap();
        let row: (String, String, f64, Vec<u8>) = c
            .query_row("SELECT typeof(n), n, r, b FROM t WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!(row, ("text".into(), "12345678901234567890.123456789012345678".into(), 1.5, vec![0, 1, 2, 255]));
        let n: String = c.query_row("SELECT n FROM t WHERE id = 2", [], |r| r.get(0)).unwrap();
        assert_eq!(n, "text");
    }
}
