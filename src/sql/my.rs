//! MySQL and MariaDB: the session runs in ANSI_QUOTES mode, so identifiers are double-quoted as everywhere else, and
//! in UTC, so timestamps read as RFC 3339. Rows are read with the binary protocol and written as JSON here, by the
//! column's type; events are written as multi-row `INSERT ... ON DUPLICATE KEY UPDATE` with typed parameters.

use super::dialect::Dialect;
use super::key::{Key, KeyKind, Part};
use super::url::{TableName, TableUrl};
use super::{
    condition, quote, Access, Column, DbError, DeadLetter, Denied, Fault, Object, ObjectWriter, Row, Schema,
    TableColumns, Which,
};
use crate::error::{Error, Result};
use base64::Engine as _;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, SslOpts, TxOpts, Value};
use std::time::Duration;

/// This engine's SQL text.
const D: &dyn Dialect = &super::dialect::Mysql;

/// Placeholders one statement may hold.
const MAX_PARAMS: usize = 65_535;
/// Rows per `INSERT`: a batch is written as several, in one transaction, to keep each statement (and what the client
/// and the server hold for it) small.
const ROWS_PER_STATEMENT: usize = 1000;

/// Connects as the MySQL client would: TLS as `ssl-mode` says (PREFERRED by default), verified against `ssl-ca`.
pub fn open(url: &TableUrl) -> Result<Conn> {
    let given = url.connect.replacen("mariadb://", "mysql://", 1);
    let refused = |source: DbError| Error::DbConnect { url: url.to_string(), fault: Fault::Refused, source };
    // The client's parser knows neither: they are ours.
    let (rest, taken) = super::url::take_parameters(&given, &["ssl-mode", "ssl-ca"]).map_err(|e| refused(e.into()))?;
    let tls = Tls::from_parameters(&taken).map_err(|e| refused(e.into()))?;
    let opts = Opts::from_url(&rest).map_err(|e| refused(e.into()))?;
    let mut opts = OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(Duration::from_secs(10)))
        // Each batch size is a statement of its own: a small cache keeps few of them prepared, here and on the server.
        .stmt_cache_size(Some(8))
        .init(vec!["SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')", "SET time_zone = '+00:00'"]);
    if let Some(password) = &url.password {
        opts = opts.pass(Some(password));
    }
    if let Some(ca) = &tls.ca {
        // Read here, so that a missing file says so and not the handshake.
        std::fs::metadata(ca).map_err(|e| Error::DbTls {
            url: url.to_string(),
            message: format!("ssl-ca={ca}: cannot read the CA certificate: {e}"),
        })?;
    }
    let connected = match Conn::new(opts.clone().ssl_opts(tls.ssl_opts())) {
        // PREFERRED: a server without TLS is spoken to in the clear, as the MySQL client does.
        Err(mysql::Error::DriverError(mysql::DriverError::TlsNotSupported)) if tls.mode == SslMode::Preferred => {
            Conn::new(opts)
        }
        other => other,
    };
    connected.map_err(|e| connect_error(url, &tls, e))
}

/// MySQL's `ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

/// How a connection uses TLS: `ssl-mode` and `ssl-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tls {
    mode: SslMode,
    ca: Option<String>,
}

impl Tls {
    fn from_parameters(taken: &[(String, String)]) -> Result<Tls, String> {
        let mut tls = Tls { mode: SslMode::Preferred, ca: None };
        for (k, v) in taken {
            if k == "ssl-ca" {
                tls.ca = Some(v.clone());
                continue;
            }
            tls.mode = match v.to_ascii_uppercase().as_str() {
                "DISABLED" => SslMode::Disabled,
                "PREFERRED" => SslMode::Preferred,
                "REQUIRED" => SslMode::Required,
                "VERIFY_CA" => SslMode::VerifyCa,
                "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
                other => {
                    return Err(format!(
                        "ssl-mode={other}: expected DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
                    ))
                }
            };
        }
        Ok(tls)
    }

    /// The client's TLS settings: none when disabled; the chain checked in VERIFY_CA and VERIFY_IDENTITY, and
    /// whenever `ssl-ca` is given (as PostgreSQL's require does with a root certificate); the host name in
    /// VERIFY_IDENTITY only.
    fn ssl_opts(&self) -> Option<SslOpts> {
        if self.mode == SslMode::Disabled {
            return None;
        }
        let verify = matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyIdentity) || self.ca.is_some();
        let mut opts = SslOpts::default()
            .with_danger_accept_invalid_certs(!verify)
            .with_danger_skip_domain_validation(self.mode != SslMode::VerifyIdentity);
        if let Some(ca) = &self.ca {
            opts = opts.with_root_cert_path(Some(std::path::PathBuf::from(ca)));
        }
        Some(opts)
    }

    /// What the user names the trusted roots by, for messages.
    fn files(&self) -> String {
        match &self.ca {
            Some(ca) => format!("ssl-ca={ca}"),
            None => "the system's trusted roots (no ssl-ca)".to_string(),
        }
    }
}

/// A failed connection as one line that says what to do where the cause is TLS.
fn connect_error(url: &TableUrl, tls: &Tls, e: mysql::Error) -> Error {
    let text = crate::error::with_causes(&e);
    if let Some(why) = super::verify_failure(&text) {
        let message = super::certificate_refused(&why, &tls.files(), "ssl-mode=VERIFY_CA");
        return Error::DbTls { url: url.to_string(), message };
    }
    if let mysql::Error::DriverError(mysql::DriverError::TlsNotSupported) = e {
        return Error::DbTls {
            url: url.to_string(),
            message: "the server does not offer TLS, which this URL's ssl-mode requires".to_string(),
        };
    }
    // MySQL says a plain connection is refused; MariaDB says only "access denied", as for a wrong password.
    let denied = matches!(&e, mysql::Error::MySqlError(m) if m.code == 1045) && tls.mode == SslMode::Disabled;
    if text.contains("insecure transport") || denied {
        let message = crate::error::db_message(&e);
        let hint = if denied {
            "if the password is right, the server may require TLS (MariaDB refuses plain connections so): drop \
             ssl-mode=DISABLED, or use ssl-mode=VERIFY_IDENTITY&ssl-ca=CA.pem"
        } else {
            "the server requires TLS: drop ssl-mode=DISABLED, or use ssl-mode=VERIFY_IDENTITY&ssl-ca=CA.pem"
        };
        return Error::DbConnect {
            url: url.to_string(),
            fault: Fault::Refused,
            source: format!("{message}; {hint}").into(),
        };
    }
    let source: DbError = e.into();
    Error::DbConnect { url: url.to_string(), fault: fault(&source), source }
}

/// Every column with its type, and the primary key's columns in the key's order; no columns when the table does not
/// exist, or the role has no privilege on it at all (see [`hidden`]). A table named `db.table` is in database `db`.
pub fn columns(c: &mut Conn, table: &TableName) -> Result<TableColumns, DbError> {
    let at = (table.schema.clone(), table.name.clone());
    let rows: Vec<(String, String)> = c.exec(
        "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        at.clone(),
    )?;
    // MariaDB's JSON is LONGTEXT with a `json_valid` check (MySQL's is a type of its own); MySQL's CHECK_CONSTRAINTS
    // has no TABLE_NAME: no such checks there.
    let checks: Vec<String> = if rows.is_empty() {
        Vec::new()
    } else {
        c.exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE \
             CONSTRAINT_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
            at,
        )
        .unwrap_or_default()
    };
    let mut columns = Vec::new();
    let primary = if rows.is_empty() { Vec::new() } else { indexes(c, table)?.remove("PRIMARY").unwrap_or_default() };
    for (name, ty) in rows {
        let ty = ty.to_ascii_lowercase();
        // The clause quotes the name as the session does: in ANSI_QUOTES mode (ours) with double quotes.
        let checked = [
            format!("json_valid(`{}`)", name.replace('`', "``")).to_ascii_lowercase(),
            format!("json_valid({})", quote(&name)).to_ascii_lowercase(),
        ];
        let json =
            ty == "json" || checks.iter().any(|c| checked.iter().any(|k| c.to_ascii_lowercase().contains(k.as_str())));
        // Geometries come as their internal bytes (SRID and WKB), which the same column takes back.
        const GEOMETRY: [&str; 8] = [
            "geometry",
            "point",
            "linestring",
            "polygon",
            "multipoint",
            "multilinestring",
            "multipolygon",
            "geometrycollection",
        ];
        let binary = ty.contains("blob") || ty.contains("binary") || GEOMETRY.contains(&ty.as_str());
        columns.push((Column { name, binary, json, type_name: ty.clone() }, ty));
    }
    Ok((columns, primary))
}

/// Every column's full declared type, as `COLUMN_TYPE` writes it (`decimal(40,18)`, `int(10) unsigned`).
pub fn declared(c: &mut Conn, table: &TableName) -> Result<Vec<(String, String)>, DbError> {
    Ok(c.exec(
        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        (table.schema.clone(), table.name.clone()),
    )?)
}

/// The unique indexes' columns in index order, by index name (the primary key's is `PRIMARY`).
fn indexes(c: &mut Conn, table: &TableName) -> Result<std::collections::BTreeMap<String, Vec<String>>, DbError> {
    let rows: Vec<(String, String)> = c.exec(
        "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS WHERE \
         TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND COLUMN_NAME IS NOT NULL \
         ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (table.schema.clone(), table.name.clone()),
    )?;
    let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (index, column) in rows {
        out.entry(index).or_default().push(column);
    }
    Ok(out)
}

pub fn unique_keys(c: &mut Conn, table: &TableName) -> Result<Vec<Vec<String>>, DbError> {
    Ok(indexes(c, table)?.into_values().collect())
}

/// Whether a MySQL error is a privilege refused: a command denied on a table (1142), a column (1143), or the
/// database (1044).
fn is_denied(e: &mysql::Error) -> bool {
    matches!(e, mysql::Error::MySqlError(m) if matches!(m.code, 1044 | 1142 | 1143))
}

/// The grant statement for `missing` on `table`, to the role this connection is.
fn grant(c: &mut Conn, table: &TableName, missing: &[&str]) -> Result<String, DbError> {
    let user: Option<String> = c.query_first("SELECT CURRENT_USER()")?;
    let user = user.unwrap_or_default();
    let grantee = match user.rsplit_once('@') {
        Some((name, host)) => format!("'{name}'@'{host}'"),
        None => format!("'{user}'"),
    };
    // Quoted as the mysql client reads it, without ANSI_QUOTES.
    let tick = |name: &str| format!("`{}`", name.replace('`', "``"));
    let database = match &table.schema {
        Some(schema) => schema.clone(),
        None => c.query_first::<Option<String>, _>("SELECT DATABASE()")?.flatten().unwrap_or_default(),
    };
    let on = format!("{}.{}", tick(&database), tick(&table.name));
    Ok(format!("GRANT {} ON {on} TO {grantee}", missing.join(", ")))
}

/// For a table the catalog does not show: MySQL shows no table to a role with no privilege on it, and refuses a
/// statement on it as denied whether it is there or not. Then the role lacks SELECT, at least.
pub fn hidden(c: &mut Conn, table: &TableName) -> Result<Option<Denied>, DbError> {
    match c.query_drop(format!("SELECT 1 FROM {} LIMIT 0", table.quoted())) {
        Err(e) if is_denied(&e) => Ok(Some(Denied { missing: vec!["SELECT"], grant: grant(c, table, &["SELECT"])? })),
        _ => Ok(None),
    }
}

/// The privileges `access` needs that the role lacks, found by preparing what the stage will run (MySQL checks
/// privileges as it prepares, and says which one it found missing): a page's SELECT; for an upsert, an INSERT, an
/// UPDATE, and the whole INSERT ... ON DUPLICATE KEY UPDATE of every column, which needs SELECT too.
pub fn denied(c: &mut Conn, s: &Schema, access: Access) -> Result<Option<Denied>, DbError> {
    let t = s.table.quoted();
    let cols: Vec<String> = s.columns.iter().map(|c| quote(&c.name)).collect();
    let values = vec!["?"; cols.len()].join(", ");
    let probes = match access {
        Access::Read => vec![(format!("SELECT {} FROM {t} LIMIT 0", cols.join(", ")), "SELECT")],
        Access::Write => {
            let others: Vec<String> = s.columns.iter().filter(|c| !s.is_key(&c.name)).map(|c| quote(&c.name)).collect();
            let keys: Vec<String> = s.key.iter().map(|k| quote(&k.name)).collect();
            let sets: Vec<String> = cols.iter().map(|c| format!("{c} = ?")).collect();
            vec![
                (format!("INSERT INTO {t} ({}) VALUES ({values})", cols.join(", ")), "INSERT"),
                (format!("UPDATE {t} SET {}", sets.join(", ")), "UPDATE"),
                (
                    format!(
                        "INSERT INTO {t} ({}) VALUES ({values}) {}",
                        cols.join(", "),
                        D.on_conflict(&keys, &others)
                    ),
                    "SELECT",
                ),
            ]
        }
    };
    let mut missing: Vec<&'static str> = Vec::new();
    for (probe, privilege) in probes {
        match c.prep(probe) {
            Ok(stmt) => c.close(stmt)?,
            Err(e) if is_denied(&e) => {
                // `SELECT command denied to user ...`: the one it names, where it is one we know. The upsert's
                // refusal names SELECT only once INSERT and UPDATE are there.
                let named = match &e {
                    mysql::Error::MySqlError(m) => ["SELECT", "INSERT", "UPDATE"].into_iter().find(|p| {
                        m.message.strip_prefix(p).is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphabetic()))
                    }),
                    _ => None,
                };
                let privilege = named.unwrap_or(privilege);
                if !missing.contains(&privilege) && (named.is_some() || missing.is_empty()) {
                    missing.push(privilege);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if missing.is_empty() {
        return Ok(None);
    }
    let grant = grant(c, &s.table, &missing)?;
    Ok(Some(Denied { missing, grant }))
}

fn part_of(s: &Schema, i: usize, v: Value) -> Result<Part, DbError> {
    let kind = s.key.get(i).map_or(KeyKind::Text, |k| k.kind);
    match (kind, v) {
        (KeyKind::Int, Value::Int(i)) => Ok(Part::Int(i)),
        (KeyKind::Int, Value::UInt(u)) => Ok(Part::Int(i64::try_from(u)?)),
        (KeyKind::Int, Value::Bytes(b)) => Ok(Part::Int(String::from_utf8_lossy(&b).parse()?)),
        (KeyKind::Text, Value::Bytes(b)) => Ok(Part::Text(String::from_utf8_lossy(&b).into_owned())),
        (KeyKind::Text, Value::Int(i)) => Ok(Part::Text(i.to_string())),
        // A DATE, DATETIME or TIMESTAMP part (a time series' key) as MySQL writes it, which it compares back.
        (KeyKind::Text, Value::Date(y, mo, d, h, mi, sec, us)) => {
            Ok(Part::Text(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{sec:02}.{us:06}")))
        }
        (KeyKind::Text, Value::Time(neg, days, h, mi, sec, us)) => Ok(Part::Text(format!(
            "{}{:02}:{mi:02}:{sec:02}.{us:06}",
            if neg { "-" } else { "" },
            u64::from(days) * 24 + u64::from(h)
        ))),
        (_, other) => Err(format!(
            "key column {:?} holds {other:?}, not a usable key",
            s.key.get(i).map(|k| k.name.as_str()).unwrap_or_default()
        )
        .into()),
    }
}

/// A row's key, from its first values.
fn key_of(s: &Schema, take: &mut impl FnMut(usize) -> Value) -> Result<Key, DbError> {
    (0..s.key.len()).map(|i| part_of(s, i, take(i))).collect::<Result<_, _>>().map(Key)
}

fn bind(k: &Part) -> Value {
    match k {
        Part::Int(i) => Value::Int(*i),
        Part::Text(t) => Value::Bytes(t.clone().into_bytes()),
    }
}

pub fn boundaries(c: &mut Conn, s: &Schema, every: u64) -> Result<(u64, Vec<Key>), DbError> {
    let t = s.table.quoted();
    let total: Option<u64> = c.query_first(format!("SELECT COUNT(*) FROM {t}"))?;
    let keys = s.key_list("");
    let rows: Vec<mysql::Row> = c.exec(
        format!(
            "SELECT {keys} FROM (SELECT {keys}, ROW_NUMBER() OVER (ORDER BY {keys}) AS supervisor_n FROM {t}) s \
             WHERE MOD(supervisor_n, ?) = 0 ORDER BY supervisor_n"
        ),
        (every.max(1),),
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = row.unwrap();
        let mut take = |i: usize| values.get_mut(i).map_or(Value::NULL, |v| std::mem::replace(v, Value::NULL));
        out.push(key_of(s, &mut take)?);
    }
    Ok((total.unwrap_or_default(), out))
}

pub fn page(c: &mut Conn, s: &Schema, which: Which<'_>, limit: usize, out: &mut Vec<Row>) -> Result<(), DbError> {
    let k = s.key_list("");
    let keys: Vec<String> = s.key.iter().map(|k| quote(&k.name)).collect();
    let cols: Vec<String> = s.columns.iter().map(|c| quote(&c.name)).collect();
    let (filter, bounds) = condition(&keys, which, D.key_compare(), |n, _| D.param(n));
    let params: Vec<Value> = bounds.into_iter().map(bind).collect();
    let sql = format!(
        "SELECT {k}, {} FROM {} {filter} ORDER BY {k} LIMIT {}",
        cols.join(", "),
        s.table.quoted(),
        limit.max(1)
    );
    let first = s.key.len();
    let writer = ObjectWriter::new(&s.columns);
    let rows: Vec<mysql::Row> = c.exec(sql, params)?;
    for row in rows {
        let mut values = row.unwrap();
        let mut take = |i: usize| values.get_mut(i).map_or(Value::NULL, |v| std::mem::replace(v, Value::NULL));
        let key = key_of(s, &mut take)?;
        let json = writer.object(|i, out| write_value(out, take(i + first), &s.columns[i]))?;
        out.push(Row { key, json });
    }
    Ok(())
}

/// A value as JSON, by its column's type: numbers stay numbers (decimals too), bytes are base64, timestamps RFC 3339,
/// BIT an unsigned integer, JSON the value itself. Returns false for a JSON column's SQL NULL: no field (JSON null
/// is one of the values such a column holds).
fn write_value(out: &mut Vec<u8>, v: Value, col: &Column) -> Result<bool, DbError> {
    let numeric = ["decimal", "numeric"].contains(&col.type_name.as_str());
    match v {
        Value::NULL if col.json => return Ok(false),
        Value::NULL => out.extend_from_slice(b"null"),
        // BIT(n) comes as n bits, big-endian, in whole bytes.
        Value::Bytes(b) if col.type_name == "bit" && b.len() <= 8 => {
            let n = b.iter().fold(0u64, |n, byte| (n << 8) | u64::from(*byte));
            out.extend_from_slice(n.to_string().as_bytes())
        }
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
        Value::Float(f) if f.is_finite() => serde_json::to_writer(&mut *out, &f)?,
        Value::Double(f) if f.is_finite() => serde_json::to_writer(&mut *out, &f)?,
        Value::Float(_) | Value::Double(_) => out.extend_from_slice(b"null"),
        Value::Bytes(b) if col.binary => {
            serde_json::to_writer(&mut *out, &base64::engine::general_purpose::STANDARD.encode(b))?
        }
        Value::Bytes(b) if numeric => out.extend_from_slice(&b),
        Value::Bytes(b) if col.json && serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_ok() => {
            out.extend_from_slice(&b)
        }
        Value::Bytes(b) => serde_json::to_writer(&mut *out, &String::from_utf8_lossy(&b))?,
        Value::Date(y, mo, d, h, mi, s, us) => {
            let text = match col.type_name.as_str() {
                "date" => format!("{y:04}-{mo:02}-{d:02}"),
                // TIMESTAMP is read in the session's time zone, UTC; DATETIME has none.
                ty => format!(
                    "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}{}",
                    if us > 0 { format!(".{us:06}") } else { String::new() },
                    if ty == "timestamp" { "Z" } else { "" }
                ),
            };
            serde_json::to_writer(&mut *out, &text)?
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = days * 24 + u32::from(h);
            let frac = if us > 0 { format!(".{us:06}") } else { String::new() };
            serde_json::to_writer(&mut *out, &format!("{}{hours:02}:{mi:02}:{s:02}{frac}", if neg { "-" } else { "" }))?
        }
    }
    Ok(true)
}

/// A JSON value as a statement parameter, from its text: numbers as written (a DECIMAL stays exact), a binary
/// column's base64 string decoded, a JSON column's value as its JSON text (a string stays a string, null JSON null).
fn param(v: Option<&serde_json::value::RawValue>, kind: Kind) -> Result<Value, DbError> {
    let Some(v) = v else { return Ok(Value::NULL) };
    let raw = v.get();
    let binary = kind == Kind::Binary;
    if kind == Kind::Json {
        return Ok(Value::Bytes(raw.as_bytes().to_vec()));
    }
    Ok(match raw.as_bytes().first() {
        Some(b'n') => Value::NULL,
        Some(b't') => Value::Int(1),
        Some(b'f') => Value::Int(0),
        Some(b'"') => {
            let s: String = serde_json::from_str(raw)?;
            // A time with an offset (a timestamptz as PostgreSQL writes it) is the same instant in UTC, the session's
            // zone: DATETIME and TIMESTAMP take no offset.
            if let Some(utc) = (kind == Kind::Time).then(|| super::time::utc_datetime(&s)).flatten() {
                return Ok(Value::Bytes(utc.into_bytes()));
            }
            match base64::engine::general_purpose::STANDARD.decode(&s) {
                Ok(bytes) if binary => Value::Bytes(bytes),
                _ => Value::Bytes(s.into_bytes()),
            }
        }
        Some(b'{' | b'[') => Value::Bytes(raw.as_bytes().to_vec()),
        _ => match (raw.parse::<i64>(), raw.parse::<u64>()) {
            (Ok(i), _) => Value::Int(i),
            (_, Ok(u)) => Value::UInt(u),
            _ => Value::Bytes(raw.as_bytes().to_vec()),
        },
    })
}

/// What a column needs of a value written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    /// Bytes: a base64 string decoded.
    Binary,
    /// JSON: the value's JSON text.
    Json,
    /// DATETIME or TIMESTAMP: a time with an offset made UTC.
    Time,
}

impl Kind {
    fn of(c: &Column) -> Kind {
        match () {
            _ if c.json => Kind::Json,
            _ if c.binary => Kind::Binary,
            _ if matches!(c.type_name.as_str(), "datetime" | "timestamp") => Kind::Time,
            _ => Kind::Plain,
        }
    }
}

pub fn upsert(c: &mut Conn, s: &Schema, objects: &[&Object<'_>], fields: &[&str]) -> Result<(), DbError> {
    let rows_per_statement = (MAX_PARAMS / fields.len().max(1)).clamp(1, ROWS_PER_STATEMENT);
    let cols: Vec<String> = fields.iter().map(|f| quote(f)).collect();
    let updates: Vec<String> = fields.iter().filter(|f| !s.is_key(f)).map(|f| quote(f)).collect();
    let keys: Vec<String> = s.key.iter().map(|k| quote(&k.name)).collect();
    let action = D.on_conflict(&keys, &updates);
    let one = format!("({})", vec!["?"; fields.len()].join(", "));
    let kinds: Vec<Kind> =
        fields.iter().map(|f| s.columns.iter().find(|c| c.name == *f).map_or(Kind::Plain, Kind::of)).collect();
    let mut tx = c.start_transaction(TxOpts::default())?;
    for (n, part) in objects.chunks(rows_per_statement).enumerate() {
        let mut params = Vec::with_capacity(part.len() * fields.len());
        for o in part {
            for (f, kind) in fields.iter().zip(&kinds) {
                params.push(param(o.fields.get(f).copied(), *kind)?);
            }
        }
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {} {action}",
            s.table.quoted(),
            cols.join(", "),
            vec![one.as_str(); part.len()].join(", ")
        );
        if let Err(e) = tx.exec_drop(sql, params) {
            // A row's data refused: the server names its row in the statement (`... at row 42`).
            let row = match &e {
                mysql::Error::MySqlError(m) => {
                    m.message.rsplit(" at row ").next().and_then(|r| r.trim().parse::<usize>().ok())
                }
                _ => None,
            };
            let error: DbError = e.into();
            return match row {
                Some(r) if r >= 1 && r <= part.len() && fault(&error) == Fault::Data => {
                    Err(Box::new(super::RefusedRow { index: n * rows_per_statement + r - 1, error }))
                }
                _ => Err(error),
            };
        }
    }
    tx.commit()?;
    Ok(())
}

/// Deletes the rows with the keys of `objects`.
pub fn delete(c: &mut Conn, s: &Schema, objects: &[&Object<'_>]) -> Result<(), DbError> {
    let keys: Vec<String> = s.key.iter().map(|k| quote(&k.name)).collect();
    let kinds: Vec<Kind> =
        s.key.iter().map(|k| s.columns.iter().find(|c| c.name == k.name).map_or(Kind::Plain, Kind::of)).collect();
    let one = format!("({})", vec!["?"; keys.len()].join(", "));
    let rows_per_statement = (MAX_PARAMS / keys.len().max(1)).clamp(1, ROWS_PER_STATEMENT);
    let mut tx = c.start_transaction(TxOpts::default())?;
    for part in objects.chunks(rows_per_statement) {
        let mut params = Vec::with_capacity(part.len() * keys.len());
        for o in part {
            for (k, kind) in s.key.iter().zip(&kinds) {
                params.push(param(o.fields.get(k.name.as_str()).copied(), *kind)?);
            }
        }
        let sql = format!(
            "DELETE FROM {} WHERE ({}) IN ({})",
            s.table.quoted(),
            keys.join(", "),
            vec![one.as_str(); part.len()].join(", ")
        );
        tx.exec_drop(sql, params)?;
    }
    tx.commit()?;
    Ok(())
}

pub fn dead_letters(c: &mut Conn, table: &TableName, rows: &[DeadLetter<'_>]) -> Result<(), DbError> {
    let mut tx = c.start_transaction(TxOpts::default())?;
    let sql = D.insert(&table.quoted(), &super::DEAD_LETTER_COLUMNS);
    for d in rows {
        let text = d.text.map_or(Value::NULL, |t| Value::Bytes(t.as_bytes().to_vec()));
        let bytes = d.bytes.map_or(Value::NULL, |b| Value::Bytes(b.to_vec()));
        tx.exec_drop(&sql, (d.at.as_str(), d.reason.as_str(), text, bytes))?;
    }
    tx.commit()?;
    Ok(())
}

/// Makes the dead-letter table utf8mb4 if it is not (one made by an earlier version, in the database's default
/// charset, could not hold an emoji).
pub fn utf8mb4(c: &mut Conn, table: &TableName) -> Result<(), DbError> {
    let collation: Option<Option<String>> = c.exec_first(
        "SELECT TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) \
         AND TABLE_NAME = ?",
        (table.schema.clone(), table.name.clone()),
    )?;
    if collation.flatten().is_some_and(|c| !c.starts_with("utf8mb4")) {
        c.query_drop(format!("ALTER TABLE {} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", table.quoted()))?;
    }
    Ok(())
}

/// By server error code: credentials and catalog refuse; data, range and constraint errors are the rows'; a lost or
/// shut-down connection is the server being away.
pub fn fault(e: &DbError) -> Fault {
    match e.downcast_ref::<mysql::Error>() {
        Some(mysql::Error::MySqlError(m)) => match m.code {
            1044 | 1045 | 1049 | 1142 | 1143 | 1698 => Fault::Refused,
            // Also: 1367 an illegal number, 1411 an illegal date, 1690 out of range, 3140/3146/3156 MySQL's JSON.
            1048 | 1062 | 1216 | 1217 | 1264 | 1265 | 1292 | 1366 | 1367 | 1406 | 1411 | 1451 | 1452 | 1690 | 3140
            | 3146 | 3156 | 3819 | 4025 => Fault::Data,
            1040 | 1053 | 1205 | 1213 | 2006 | 2013 => Fault::Unreachable,
            _ => Fault::Other,
        },
        Some(mysql::Error::IoError(_) | mysql::Error::DriverError(_) | mysql::Error::CodecError(_)) => {
            Fault::Unreachable
        }
        Some(_) => Fault::Other,
        None if e.downcast_ref::<serde_json::Error>().is_some() => Fault::Data,
        None => Fault::Other,
    }
}
