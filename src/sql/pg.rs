//! PostgreSQL: rows leave the server as JSON (`row_to_json`), and arrive as JSON (`json_populate_recordset`), so
//! that the server maps types both ways and no value is converted here.

use super::key::{Key, KeyKind};
use super::url::TableUrl;
use super::{quote, Column, DbError, Fault, Row, Schema, TableColumns};
use crate::error::{Error, Result};
use postgres::{Client, Config, NoTls};
use std::str::FromStr;
use std::time::Duration;

pub fn open(url: &TableUrl) -> Result<Client> {
    let mut config = Config::from_str(&url.connect).map_err(|e| Error::DbConnect {
        url: url.to_string(),
        fault: Fault::Refused,
        source: e.into(),
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("supervisor");
    }
    config.connect(NoTls).map_err(|e| {
        let source: DbError = e.into();
        Error::DbConnect { url: url.to_string(), fault: fault(&source), source }
    })
}

/// Every column with its type, and the primary key's columns; no columns when the table does not exist.
pub fn columns(c: &mut Client, table: &str) -> Result<TableColumns, DbError> {
    let rows = c.query(
        "SELECT column_name::text, udt_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        &[&table],
    )?;
    let columns = rows
        .iter()
        .map(|r| {
            let (name, udt): (String, String) = (r.get(0), r.get(1));
            (Column { name, binary: udt == "bytea", type_name: udt.clone() }, udt)
        })
        .collect();
    let primary = c
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indisprimary",
            &[&table],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((columns, primary))
}

fn key_of(s: &Schema, text: String) -> Result<Key, DbError> {
    match s.key_kind {
        KeyKind::Int => Ok(Key::Int(text.parse().map_err(|e| format!("key {text:?} is not an integer: {e}"))?)),
        KeyKind::Text => Ok(Key::Text(text)),
    }
}

/// A key as a statement parameter: integers as int8, the rest as text cast to the column's type.
fn param(s: &Schema, n: usize) -> String {
    match s.key_kind {
        KeyKind::Int => format!("${n}::int8"),
        KeyKind::Text => format!("${n}::text::{}", quote(&s.key_type)),
    }
}

fn key_text(k: &Key) -> String {
    match k {
        Key::Int(i) => i.to_string(),
        Key::Text(t) => t.clone(),
    }
}

pub fn boundaries(c: &mut Client, s: &Schema, every: u64) -> Result<(u64, Vec<Key>), DbError> {
    let (t, k) = (quote(&s.table), quote(&s.key));
    let total: i64 = c.query_one(&format!("SELECT count(*) FROM {t}"), &[])?.get(0);
    let rows = c.query(
        &format!(
            // Ordered by n, not by the text: "10" sorts before "9".
            "SELECT k::text FROM (SELECT {k} AS k, row_number() OVER (ORDER BY {k}) AS n FROM {t}) s \
             WHERE n % $1 = 0 ORDER BY n"
        ),
        &[&(every.max(1) as i64)],
    )?;
    let keys = rows.into_iter().map(|r| key_of(s, r.get(0))).collect::<Result<_, _>>()?;
    Ok((total.max(0) as u64, keys))
}

pub fn page(
    c: &mut Client,
    s: &Schema,
    after: Option<&Key>,
    upto: Option<&Key>,
    limit: usize,
    out: &mut Vec<Row>,
) -> Result<(), DbError> {
    let k = quote(&s.key);
    let select: Vec<String> = s
        .columns
        .iter()
        .map(|col| {
            let q = quote(&col.name);
            if col.binary {
                format!("encode(t.{q}, 'base64') AS {q}")
            } else {
                format!("t.{q}")
            }
        })
        .collect();
    let mut conds = Vec::new();
    let mut params: Vec<String> = Vec::new();
    if let Some(a) = after {
        params.push(key_text(a));
        conds.push(format!("t.{k} > {}", param(s, params.len())));
    }
    if let Some(u) = upto {
        params.push(key_text(u));
        conds.push(format!("t.{k} <= {}", param(s, params.len())));
    }
    let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    let sql = format!(
        "SELECT r.{k}::text, row_to_json(r)::text FROM \
         (SELECT {} FROM {} t {filter} ORDER BY t.{k} LIMIT {}) r ORDER BY r.{k}",
        select.join(", "),
        quote(&s.table),
        limit.max(1)
    );
    let ints: Vec<i64> = match s.key_kind {
        KeyKind::Int => params.iter().map(|p| p.parse().unwrap_or_default()).collect(),
        KeyKind::Text => Vec::new(),
    };
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = match s.key_kind {
        KeyKind::Int => ints.iter().map(|i| i as &(dyn postgres::types::ToSql + Sync)).collect(),
        KeyKind::Text => params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect(),
    };
    for row in c.query(&sql, &refs)? {
        let json: String = row.get(1);
        out.push(Row { key: key_of(s, row.get(0))?, json: json.into_bytes() });
    }
    Ok(())
}

pub fn upsert(c: &mut Client, s: &Schema, objects: &[&[u8]], fields: &[&str]) -> Result<(), DbError> {
    let mut array = Vec::with_capacity(objects.iter().map(|o| o.len() + 1).sum::<usize>() + 2);
    array.push(b'[');
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            array.push(b',');
        }
        array.extend_from_slice(o);
    }
    array.push(b']');
    let array = String::from_utf8(array).map_err(|_| "an event is not UTF-8")?;
    let t = quote(&s.table);
    let cols: Vec<String> = fields.iter().map(|f| quote(f)).collect();
    let updates: Vec<String> =
        fields.iter().filter(|f| **f != s.key).map(|f| format!("{0} = EXCLUDED.{0}", quote(f))).collect();
    let action =
        if updates.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {}", updates.join(", ")) };
    let sql = format!(
        "INSERT INTO {t} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{t}, $1::text::json) \
         ON CONFLICT ({}) {action}",
        quote(&s.key),
        cols = cols.join(", ")
    );
    c.execute(&sql, &[&array])?;
    Ok(())
}

pub fn dead_letters(c: &mut Client, table: &str, rows: &[(String, String, String)]) -> Result<(), DbError> {
    let mut tx = c.transaction()?;
    let sql = format!("INSERT INTO {} (at, reason, event) VALUES ($1, $2, $3)", quote(table));
    for (at, reason, event) in rows {
        tx.execute(&sql, &[at, reason, event])?;
    }
    tx.commit()?;
    Ok(())
}

/// By SQLSTATE class: 08 connection, 57 operator intervention (a restart), 28/3D credentials and catalog, 22/23
/// data and constraints.
pub fn fault(e: &DbError) -> Fault {
    let Some(pe) = e.downcast_ref::<postgres::Error>() else {
        return Fault::Other;
    };
    let Some(db) = pe.as_db_error() else {
        return Fault::Unreachable;
    };
    let code = db.code().code();
    match (code.get(..2).unwrap_or_default(), code) {
        (_, "42501") => Fault::Refused,
        (_, "42804") => Fault::Data,
        ("08" | "57" | "53" | "40", _) => Fault::Unreachable,
        ("28" | "3D", _) => Fault::Refused,
        ("22" | "23", _) => Fault::Data,
        _ => Fault::Other,
    }
}
