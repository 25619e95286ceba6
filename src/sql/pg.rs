//! PostgreSQL: rows are read in the binary protocol where a Rust type maps the column (and as the server's JSON or
//! number text where none does), and written as JSON objects here; events are written with `COPY`, and as an upsert
//! from `unnest` of text arrays only when a key is already there.

use super::dialect::Dialect;
use super::key::{Key, KeyKind, Part};
use super::url::{TableName, TableUrl};
use super::{
    condition, keyset, quote, Access, Column, DbError, DeadLetter, Denied, Fault, Object, ObjectWriter, Row, Schema,
    TableColumns, Which,
};
use crate::error::{Error, Result};
use base64::Engine as _;
use postgres::{Client, Config};
use std::str::FromStr;
use std::time::Duration;

/// This engine's SQL text.
const D: &dyn Dialect = &super::dialect::Postgres;

/// Connects as libpq would: TLS as `sslmode` says (verified against `sslrootcert`, or the system's roots), the
/// password from the URL, else `PGPASSWORD`, else the password file.
pub fn open(url: &TableUrl) -> Result<Client> {
    let refused = |source: DbError| Error::DbConnect { url: url.to_string(), fault: Fault::Refused, source };
    let (rest, tls) = Tls::of(url).map_err(|e| refused(e.into()))?;
    let mut config = Config::from_str(&rest).map_err(|e| refused(e.into()))?;
    config.ssl_mode(if tls.mode == SslMode::Disable {
        postgres::config::SslMode::Disable
    } else if tls.mode == SslMode::Prefer {
        postgres::config::SslMode::Prefer
    } else {
        postgres::config::SslMode::Require
    });
    if let Some(password) = &url.password {
        config.password(password);
    } else if config.get_password().is_none() {
        if let Some(password) = environment_password(&config) {
            config.password(password);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("supervisor");
    }
    if tls.mode == SslMode::Disable {
        return config.connect(postgres::NoTls).map_err(|e| connect_error(url, &tls, e));
    }
    let connector = tls.connector().map_err(|message| Error::DbTls { url: url.to_string(), message })?;
    config.connect(connector).map_err(|e| connect_error(url, &tls, e))
}

/// The TLS connectors built in this process for settings that name no certificate file, by their settings. Building
/// one reads the system's trusted roots (tens of milliseconds, whatever the mode): the supervisor builds them once,
/// before it forks, and every child, restarted ones too, inherits them, as prefork servers share one TLS context.
static CONNECTORS: std::sync::Mutex<Vec<(Tls, postgres_openssl::MakeTlsConnector)>> = std::sync::Mutex::new(Vec::new());

/// Builds the TLS connector `url` will connect with, so that the processes forked after this share it. A URL whose
/// TLS settings are wrong is left for the child that connects to say so.
pub fn prepare_tls(url: &TableUrl) {
    if let Ok((_, tls)) = Tls::of(url) {
        if tls.mode != SslMode::Disable {
            let _ = tls.connector();
        }
    }
}

/// `PGPASSWORD` or the password file's line for this connection's first host.
fn environment_password(config: &Config) -> Option<String> {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let user = config.get_user().unwrap_or_default();
    let target = super::pgpass::Target {
        host: &host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or(user),
        user,
    };
    super::pgpass::lookup(&target)
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// How a connection uses TLS: `sslmode` and the certificate files, as libpq reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tls {
    mode: SslMode,
    root: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl Tls {
    /// The URL's TLS settings, and the rest of its connection string. The client's own parser knows neither
    /// verify-ca/verify-full nor the certificate files: they are ours.
    fn of(url: &TableUrl) -> Result<(String, Tls), String> {
        let (rest, taken) =
            super::url::take_parameters(&url.connect, &["sslmode", "sslrootcert", "sslcert", "sslkey"])?;
        Ok((rest, Tls::from_parameters(&taken)?))
    }

    fn from_parameters(taken: &[(String, String)]) -> Result<Tls, String> {
        let mut tls = Tls { mode: SslMode::Prefer, root: None, cert: None, key: None };
        for (k, v) in taken {
            match k.as_str() {
                "sslmode" => {
                    tls.mode = match v.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                            ))
                        }
                    }
                }
                "sslrootcert" => tls.root = Some(v.clone()),
                "sslcert" => tls.cert = Some(v.clone()),
                _ => tls.key = Some(v.clone()),
            }
        }
        Ok(tls)
    }

    /// The chain is verified in verify-ca and verify-full, and in require when a root certificate is given (libpq:
    /// require with a root certificate behaves as verify-ca).
    fn verifies(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull)
            || (self.mode == SslMode::Require && self.root.is_some())
    }

    /// What the user names the trusted roots by, for messages.
    fn files(&self) -> String {
        match &self.root {
            Some(root) => format!("sslrootcert={root}"),
            None => "the system's trusted roots (no sslrootcert)".to_string(),
        }
    }

    /// An OpenSSL connector: the chain checked against `sslrootcert` alone (`system`: the system's roots, as libpq
    /// says), or against the system's roots when none is given; the host name checked in verify-full only; the
    /// client certificate and key if given.
    fn connector(&self) -> Result<postgres_openssl::MakeTlsConnector, String> {
        // Certificate files are read at each connection, as libpq reads them: a rotated client certificate or root
        // is used from the next connection on.
        if self.root.is_some() || self.cert.is_some() || self.key.is_some() {
            return self.build();
        }
        let mut built = CONNECTORS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, connector)) = built.iter().find(|(tls, _)| tls == self) {
            return Ok(connector.clone());
        }
        let connector = self.build()?;
        built.push((self.clone(), connector.clone()));
        Ok(connector)
    }

    fn build(&self) -> Result<postgres_openssl::MakeTlsConnector, String> {
        use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
        let stack = |e: openssl::error::ErrorStack| e.to_string();
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(stack)?;
        if self.verifies() {
            if let Some(root) = self.root.as_deref().filter(|r| *r != "system") {
                let pem = std::fs::read(root).map_err(|e| format!("sslrootcert={root}: cannot read it: {e}"))?;
                let certs = openssl::x509::X509::stack_from_pem(&pem)
                    .map_err(|e| format!("sslrootcert={root}: no PEM certificate in it: {e}"))?;
                let mut store = openssl::x509::store::X509StoreBuilder::new().map_err(stack)?;
                for cert in certs {
                    store.add_cert(cert).map_err(stack)?;
                }
                b.set_cert_store(store.build());
            }
            b.set_verify(SslVerifyMode::PEER);
        } else {
            b.set_verify(SslVerifyMode::NONE);
        }
        if let Some(cert) = &self.cert {
            b.set_certificate_chain_file(cert).map_err(|e| format!("sslcert={cert}: {e}"))?;
        }
        if let Some(key) = &self.key {
            b.set_private_key_file(key, SslFiletype::PEM).map_err(|e| format!("sslkey={key}: {e}"))?;
        }
        let mut connector = postgres_openssl::MakeTlsConnector::new(b.build());
        if self.mode != SslMode::VerifyFull {
            connector.set_callback(|config, _| {
                config.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(connector)
    }
}

/// A failed connection as one line that says what to do where the cause is TLS.
fn connect_error(url: &TableUrl, tls: &Tls, e: postgres::Error) -> Error {
    let text = crate::error::with_causes(&e);
    if let Some(why) = super::verify_failure(&text) {
        let message = super::certificate_refused(&why, &tls.files(), "sslmode=verify-ca");
        return Error::DbTls { url: url.to_string(), message };
    }
    if text.contains("server does not support TLS") {
        return Error::DbTls {
            url: url.to_string(),
            message: "the server does not offer TLS, which this URL's sslmode requires".to_string(),
        };
    }
    let plain_refused = e.as_db_error().is_some_and(|db| {
        db.code().code() == "28000" && (db.message().contains("no encryption") || db.message().contains("SSL off"))
    });
    if text.contains("password missing") {
        return Error::DbConnect {
            url: url.to_string(),
            fault: Fault::Refused,
            source: "no password given: add password=@FILE to the URL, or set PGPASSWORD or a password file \
                     (PGPASSFILE, ~/.pgpass)"
                .into(),
        };
    }
    let source: DbError = e.into();
    if plain_refused {
        let message = crate::error::db_message(source.as_ref());
        let hint = "the server requires TLS: add sslmode=require, or sslmode=verify-full&sslrootcert=CA.pem";
        return Error::DbConnect {
            url: url.to_string(),
            fault: Fault::Refused,
            source: format!("{message}; {hint}").into(),
        };
    }
    Error::DbConnect { url: url.to_string(), fault: fault(&source), source }
}

/// Every column with its type, and the primary key's columns in the key's order; no columns when the table does not
/// exist. Read from the catalog, which shows a table the role may not read (information_schema hides it), and found
/// as a statement finds it: in the named schema, else on the search path.
pub fn columns(c: &mut Client, table: &TableName) -> Result<TableColumns, DbError> {
    let name = table.quoted();
    let rows = c.query(
        "SELECT a.attname::text, (CASE WHEN t.typtype = 'd' THEN b.typname ELSE t.typname END)::text \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type b ON b.oid = t.typbasetype \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        &[&name],
    )?;
    let columns = rows
        .iter()
        .map(|r| {
            let (name, udt): (String, String) = (r.get(0), r.get(1));
            let json = udt == "json" || udt == "jsonb";
            (Column { name, binary: udt == "bytea", json, type_name: udt.clone() }, udt)
        })
        .collect();
    let primary = c
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&name],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((columns, primary))
}

/// Every column's full declared type, as `format_type` writes it (`numeric(40,18)`, `timestamp with time zone`,
/// `integer[]`), a domain's as its base type's; `builtin` where the type (an array's element) is `pg_catalog`'s.
pub fn declared(c: &mut Client, table: &TableName) -> Result<Vec<(String, String, bool)>, DbError> {
    let rows = c.query(
        "SELECT a.attname::text, format_type(b.oid, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END), \
         coalesce(e.typnamespace, b.typnamespace) = 'pg_catalog'::regnamespace \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
         LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A' \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        &[&table.quoted()],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// Whether this database knows the type `name` (an enum or an extension's type of another database).
pub fn has_type(c: &mut Client, name: &str) -> Result<bool, DbError> {
    Ok(c.query_one("SELECT to_regtype($1) IS NOT NULL", &[&name])?.get(0))
}

/// For a table not found: one whose name differs only in case, or that is in another schema, as `table=` would name
/// it, and why it was not found.
pub fn similar(c: &mut Client, table: &TableName) -> Result<Option<String>, DbError> {
    let found = c.query_opt(
        "SELECT n.nspname::text, c.relname::text, n.nspname = ANY(current_schemas(false)) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE lower(c.relname) = lower($1) \
         AND ($2::text IS NULL OR lower(n.nspname) = lower($2)) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
         ORDER BY 3 DESC, 1, 2 LIMIT 1",
        &[&table.name, &table.schema],
    )?;
    let Some(row) = found else { return Ok(None) };
    let (schema, name, visible): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    // As a URL writes a name: bare where PostgreSQL reads it back unchanged, else quoted and percent-encoded.
    let write = |part: &str| {
        let bare = part.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if bare {
            part.to_string()
        } else {
            format!("%22{}%22", part.replace('"', "%22%22").replace(' ', "%20"))
        }
    };
    let named = match (&table.schema, visible) {
        (None, true) => write(&name),
        _ => format!("{}.{}", write(&schema), write(&name)),
    };
    let folded = if name != name.to_lowercase() { "; an unquoted name is folded to lower case" } else { "" };
    Ok(Some(format!("table={named}{folded}")))
}

/// The column sets of the unique indexes (not partial, not of expressions), each in index order.
pub fn unique_keys(c: &mut Client, table: &TableName) -> Result<Vec<Vec<String>>, DbError> {
    Ok(c.query(
        "SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i \
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
         AND k.n <= i.indnkeyatts GROUP BY i.indexrelid",
        &[&table.quoted()],
    )?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// The privileges `access` needs that the role lacks: SELECT on every column a scan reads; INSERT and UPDATE for
/// upserts, and SELECT on the columns they write, which `ON CONFLICT (key) DO UPDATE SET v = EXCLUDED.v` reads (a
/// role without it writes a fresh table with COPY, and is refused at the first replay).
pub fn denied(c: &mut Client, s: &Schema, access: Access) -> Result<Option<Denied>, DbError> {
    let columns: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
    let row = c.query_one(
        "SELECT current_user::text, \
         (SELECT coalesce(bool_and(has_column_privilege(to_regclass($1), x, 'SELECT')), true) \
          FROM unnest($2::text[]) x), \
         has_any_column_privilege(to_regclass($1), 'INSERT'), has_any_column_privilege(to_regclass($1), 'UPDATE')",
        &[&s.table.quoted(), &columns],
    )?;
    let (role, select, insert, update): (String, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let missing: Vec<&'static str> = match access {
        Access::Read => [("SELECT", select)].iter().filter(|p| !p.1).map(|p| p.0).collect(),
        Access::Write => {
            [("INSERT", insert), ("UPDATE", update), ("SELECT", select)].iter().filter(|p| !p.1).map(|p| p.0).collect()
        }
    };
    if missing.is_empty() {
        return Ok(None);
    }
    let grant = format!("GRANT {} ON {} TO {}", missing.join(", "), s.table.quoted(), quote(&role));
    Ok(Some(Denied { missing, grant }))
}

fn part_of(kind: KeyKind, text: String) -> Result<Part, DbError> {
    match kind {
        KeyKind::Int => Ok(Part::Int(text.parse().map_err(|e| format!("key {text:?} is not an integer: {e}"))?)),
        KeyKind::Text => Ok(Part::Text(text)),
    }
}

/// A row's key from its key columns' text, at `at..` in the row.
fn key_at(s: &Schema, row: &postgres::Row, at: usize) -> Result<Key, DbError> {
    let mut parts = Vec::with_capacity(s.key.len());
    for (i, k) in s.key.iter().enumerate() {
        let text: Option<String> = row.try_get(at + i)?;
        parts.push(part_of(k.kind, text.ok_or("a NULL key")?)?);
    }
    Ok(Key(parts))
}

/// A key part as statement parameter `n`, for key column `i`: integers as int8, the rest as text cast to the
/// column's type.
fn param(s: &Schema, n: usize, i: usize) -> String {
    match s.key.get(i) {
        Some(k) if k.kind == KeyKind::Int => format!("${n}::int8"),
        Some(k) => format!("${n}::text::{}", quote(&k.type_name)),
        None => format!("${n}"),
    }
}

/// The key's columns, each `prefix`ed.
fn key_columns(s: &Schema, prefix: &str) -> Vec<String> {
    s.key.iter().map(|k| format!("{prefix}{}", quote(&k.name))).collect()
}

/// The key's columns as text, each `prefix`ed: what a statement selects to read a key.
fn key_texts(s: &Schema, prefix: &str) -> String {
    s.key.iter().map(|k| format!("{prefix}{}::text", quote(&k.name))).collect::<Vec<_>>().join(", ")
}

/// A key's parts as a statement's parameters.
fn key_params<'a>(parts: &[&'a Part]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    parts
        .iter()
        .map(|p| match p {
            Part::Int(i) => i as &(dyn postgres::types::ToSql + Sync),
            Part::Text(t) => t as &(dyn postgres::types::ToSql + Sync),
        })
        .collect()
}

/// Every `every`-th key in key order, and how many rows there are. Found by walking the key's index a stride at a
/// time (`OFFSET every - 1` past the last boundary found), a quarter of what numbering every row with a window
/// function costs the server.
pub fn boundaries(c: &mut Client, s: &Schema, every: u64) -> Result<(u64, Vec<Key>), DbError> {
    let t = s.table.quoted();
    let total: i64 = c.query_one(&format!("SELECT count(*) FROM {t}"), &[])?.get(0);
    let keys = key_columns(s, "t.");
    let mut found: Vec<Key> = Vec::new();
    loop {
        let (filter, bounds) = keyset(&keys, found.last(), None, D.key_compare(), |n, i| param(s, n, i));
        let sql = format!(
            "SELECT {} FROM {t} t {filter} ORDER BY {} OFFSET {} LIMIT 1",
            key_texts(s, "t."),
            s.key_list("t."),
            every.max(1) - 1
        );
        let refs = key_params(&bounds);
        match c.query_opt(sql.as_str(), &refs)? {
            Some(row) => found.push(key_at(s, &row, 0)?),
            None => break,
        }
    }
    Ok((total.max(0) as u64, found))
}

/// How a column is read: in the binary protocol where a Rust type maps it, else as JSON or number text the server
/// writes.
#[derive(Clone, Copy)]
enum Read {
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
    Text,
    /// Text that is already JSON: numeric, json, to_json() of anything else.
    Json,
    /// A date or timestamp as to_json() writes it, its era turned into a year sign: `"4713-01-01T00:00:00 BC"` is
    /// `"-4712-01-01T00:00:00"` (ISO 8601, astronomical years: 1 BC is year 0).
    Time,
}

fn read_as(col: &super::Column) -> (Read, String) {
    let q = quote(&col.name);
    match col.type_name.as_str() {
        "int2" => (Read::I16, format!("t.{q}")),
        "int4" => (Read::I32, format!("t.{q}")),
        "int8" => (Read::I64, format!("t.{q}")),
        "float4" => (Read::F32, format!("t.{q}")),
        "float8" => (Read::F64, format!("t.{q}")),
        "bool" => (Read::Bool, format!("t.{q}")),
        "text" | "varchar" | "bpchar" | "name" => (Read::Text, format!("t.{q}::text")),
        "bytea" => (Read::Text, format!("encode(t.{q}, 'base64')")),
        "numeric" | "json" => (Read::Json, format!("t.{q}::text")),
        "date" | "timestamp" | "timestamptz" => (Read::Time, format!("to_json(t.{q})::text")),
        // Timestamps (RFC 3339, with their offset), dates, uuids, arrays, jsonb: as PostgreSQL writes them in JSON.
        _ => (Read::Json, format!("to_json(t.{q})::text")),
    }
}

pub fn page(c: &mut Client, s: &Schema, which: Which<'_>, limit: usize, out: &mut Vec<Row>) -> Result<(), DbError> {
    let (reads, select): (Vec<Read>, Vec<String>) = s.columns.iter().map(read_as).unzip();
    let keys = key_columns(s, "t.");
    let (filter, bounds) = condition(&keys, which, D.key_compare(), |n, i| param(s, n, i));
    let sql = format!(
        "SELECT {}, {} FROM {} t {filter} ORDER BY {} LIMIT {}",
        key_texts(s, "t."),
        select.join(", "),
        s.table.quoted(),
        s.key_list("t."),
        limit.max(1)
    );
    let refs = key_params(&bounds);
    rows_as_json(s, &reads, c.query(sql.as_str(), &refs)?, out)
}

/// Rows as a page writes them, from values as their types' text output: `objects` is a JSON array of objects, a
/// column's text under its name (what wal2json writes of a change), which PostgreSQL reads back into the table's row
/// type. The same SELECT list as [`page`]'s then writes each as the snapshot would have, in the array's order.
pub fn populated(c: &mut Client, s: &Schema, objects: &str, out: &mut Vec<Row>) -> Result<(), DbError> {
    let (reads, select): (Vec<Read>, Vec<String>) = s.columns.iter().map(read_as).unzip();
    let sql = format!(
        "SELECT {}, {} FROM json_populate_recordset(NULL::{}, $1::text::json) WITH ORDINALITY t ORDER BY t.ordinality",
        key_texts(s, "t."),
        select.join(", "),
        s.table.quoted(),
    );
    rows_as_json(s, &reads, c.query(sql.as_str(), &[&objects])?, out)
}

/// Deletes the rows whose keys `keys` holds: a JSON array of objects of the key's columns.
pub fn delete(c: &mut Client, s: &Schema, keys: &str) -> Result<(), DbError> {
    let matches: Vec<String> = s.key.iter().map(|k| format!("t.{0} = d.{0}", quote(&k.name))).collect();
    let sql = format!(
        "DELETE FROM {0} t USING json_populate_recordset(NULL::{0}, $1::text::json) d WHERE {1}",
        s.table.quoted(),
        matches.join(" AND ")
    );
    c.execute(sql.as_str(), &[&keys])?;
    Ok(())
}

fn rows_as_json(s: &Schema, reads: &[Read], rows: Vec<postgres::Row>, out: &mut Vec<Row>) -> Result<(), DbError> {
    let writer = ObjectWriter::new(&s.columns);
    let first = s.key.len();
    for row in rows {
        let key = key_at(s, &row, 0)?;
        let json = writer.object(|i, json| {
            let at = i + first;
            // A JSON column's SQL NULL is no field at all: JSON null is a value such a column holds.
            let null = !s.columns[i].json;
            macro_rules! number {
                ($t:ty) => {
                    match row.try_get::<_, Option<$t>>(at)? {
                        Some(v) => json.extend_from_slice(v.to_string().as_bytes()),
                        None => return Ok(put_null(json, null)),
                    }
                };
            }
            match reads[i] {
                Read::I16 => number!(i16),
                Read::I32 => number!(i32),
                Read::I64 => number!(i64),
                Read::F32 => match row.try_get::<_, Option<f32>>(at)? {
                    Some(v) if v.is_finite() => serde_json::to_writer(&mut *json, &v)?,
                    _ => json.extend_from_slice(b"null"),
                },
                Read::F64 => match row.try_get::<_, Option<f64>>(at)? {
                    Some(v) if v.is_finite() => serde_json::to_writer(&mut *json, &v)?,
                    _ => json.extend_from_slice(b"null"),
                },
                Read::Bool => match row.try_get::<_, Option<bool>>(at)? {
                    Some(v) => json.extend_from_slice(if v { b"true" } else { b"false" }),
                    None => json.extend_from_slice(b"null"),
                },
                Read::Text => match row.try_get::<_, Option<&str>>(at)? {
                    Some(v) => serde_json::to_writer(&mut *json, v)?,
                    None => json.extend_from_slice(b"null"),
                },
                Read::Json => match row.try_get::<_, Option<&str>>(at)? {
                    // numeric's special values are not JSON numbers.
                    Some("NaN" | "Infinity" | "-Infinity") => json.extend_from_slice(b"null"),
                    None => return Ok(put_null(json, null)),
                    Some(v) => json.extend_from_slice(v.as_bytes()),
                },
                Read::Time => match row.try_get::<_, Option<&str>>(at)? {
                    None => json.extend_from_slice(b"null"),
                    Some(v) => match v.strip_suffix(" BC\"").and_then(|v| v.strip_prefix('"')) {
                        Some(bc) => serde_json::to_writer(&mut *json, &signed_year(bc))?,
                        None => json.extend_from_slice(v.as_bytes()),
                    },
                },
            }
            Ok(true)
        })?;
        out.push(Row { key, json });
    }
    Ok(())
}

/// Writes JSON null, or leaves the field out (returns false) where `null` says SQL NULL has no JSON form.
fn put_null(json: &mut Vec<u8>, null: bool) -> bool {
    if null {
        json.extend_from_slice(b"null");
    }
    null
}

/// A BC date or timestamp (`4713-01-01T00:00:00`, its " BC" taken off) with a signed astronomical year instead:
/// `-4712-01-01T00:00:00`; 1 BC is year `0000`.
fn signed_year(bc: &str) -> String {
    let digits = bc.bytes().take_while(u8::is_ascii_digit).count();
    match bc[..digits].parse::<i64>() {
        Ok(1) => format!("0000{}", &bc[digits..]),
        Ok(year) => format!("-{:04}{}", year - 1, &bc[digits..]),
        Err(_) => format!("{bc} BC"),
    }
}

/// The other way, for PostgreSQL's input, which takes no year sign: `-4712-01-01` is `4713-01-01 BC`. Anything
/// else is left as it is.
fn era_of(text: &str) -> Option<String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits < 4 || rest.as_bytes().get(digits) != Some(&b'-') {
        return None;
    }
    let year: i64 = rest[..digits].parse().ok()?;
    match (negative, year) {
        (false, 0) => Some(format!("0001{} BC", &rest[digits..])),
        (true, y) if y > 0 => Some(format!("{:04}{} BC", y + 1, &rest[digits..])),
        _ => None,
    }
}

/// A JSON value as an element of a PostgreSQL array literal: arrays nested in braces, null as NULL, strings quoted,
/// numbers and booleans as written, objects (and, in an array of json, every element, null included) as their quoted
/// JSON text.
fn array_literal(v: &serde_json::Value, json: bool, out: &mut String) {
    use serde_json::Value;
    let quoted = |text: &str, out: &mut String| {
        out.push('"');
        for ch in text.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    };
    match v {
        Value::Array(items) => {
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                array_literal(item, json, out);
            }
            out.push('}');
        }
        // An array of json holds JSON null (to_json reads its SQL NULL as null too: the one case that changes).
        _ if json => quoted(&v.to_string(), out),
        Value::Null => out.push_str("NULL"),
        Value::String(s) => quoted(s, out),
        Value::Number(_) | Value::Bool(_) => out.push_str(&v.to_string()),
        Value::Object(_) => quoted(&v.to_string(), out),
    }
}

/// A JSON value as the text PostgreSQL casts to the column's type: strings unquoted, null as NULL, the rest as
/// written. A JSON column takes the JSON value itself, a string as a JSON string and null as JSON null (the event's
/// escapes were checked when it was parsed: it is valid Unicode).
fn text_of(v: &serde_json::value::RawValue, col: Option<&Column>) -> Result<Option<String>, DbError> {
    let raw = v.get();
    if col.is_some_and(|c| c.json) {
        return Ok(Some(raw.to_string()));
    }
    // An array column (its udt_name starts with `_`) takes a JSON array, as a table source reads one, as an array
    // literal.
    if let (Some(c), Some(b'[')) = (col, raw.as_bytes().first()) {
        if let Some(element) = c.type_name.strip_prefix('_') {
            let value: serde_json::Value = serde_json::from_str(raw)?;
            let mut out = String::with_capacity(raw.len() + 2);
            array_literal(&value, matches!(element, "json" | "jsonb"), &mut out);
            return Ok(Some(out));
        }
    }
    Ok(match raw.as_bytes().first() {
        Some(b'n') => None,
        Some(b'"') => {
            let text = serde_json::from_str::<String>(raw)?;
            match col.map(|c| c.type_name.as_str()) {
                Some("date" | "timestamp" | "timestamptz") => Some(era_of(&text).unwrap_or(text)),
                _ => Some(text),
            }
        }
        _ => Some(raw.to_string()),
    })
}

/// Writes the rows with `COPY` first, the fastest way in (the server parses plain text per column, not JSON); if a
/// key is already there (a replay), the same rows as an upsert: `INSERT ... SELECT FROM unnest(text arrays) ON
/// CONFLICT DO UPDATE`, each column cast from text to its type. A copy costs the server a fraction of an upsert, and
/// on a fresh table nothing is there.
pub fn upsert(c: &mut Client, s: &Schema, objects: &[&Object<'_>], fields: &[&str]) -> Result<(), DbError> {
    let cols_of: Vec<Option<&Column>> = fields.iter().map(|f| s.columns.iter().find(|c| c.name == *f)).collect();
    let t = s.table.quoted();
    let cols: Vec<String> = fields.iter().map(|f| quote(f)).collect();
    let binary = cols_of.iter().map(|c| Binary::of(*c)).collect::<Option<Vec<_>>>().and_then(|kinds| {
        let rows = binary_rows(objects, fields, &kinds)?;
        Some(copy(c, &t, &cols, &rows, true))
    });
    let copied = match binary {
        Some(copied) => copied,
        None => copy(c, &t, &cols, &copy_rows(objects, fields, &cols_of)?, false),
    };
    match copied {
        Ok(()) => return Ok(()),
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {}
        Err(e) => {
            // A row's data refused: COPY names its line (`COPY t, line 42, column v: ...`).
            let line = e.as_db_error().and_then(|d| d.where_()).and_then(|w| {
                let after = w.split(", line ").nth(1)?;
                after.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok()
            });
            let error: DbError = e.into();
            return match line {
                Some(n) if n >= 1 && fault(&error) == Fault::Data => {
                    Err(Box::new(super::RefusedRow { index: n - 1, error }))
                }
                _ => Err(error),
            };
        }
    }
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(objects.len()); fields.len()];
    for o in objects {
        for ((column, f), col) in columns.iter_mut().zip(fields).zip(&cols_of) {
            column.push(match o.fields.get(f) {
                Some(v) => column_text(v, *col)?,
                None => None,
            });
        }
    }
    let arrays: Vec<String> = (1..=fields.len()).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..fields.len()).map(|i| format!("u{i}")).collect();
    let casts: Vec<String> = cols_of
        .iter()
        .enumerate()
        .map(|(i, c)| format!("u{i}::{}", quote(c.map_or("text", |c| c.type_name.as_str()))))
        .collect();
    let updates: Vec<String> = fields.iter().filter(|f| !s.is_key(f)).map(|f| quote(f)).collect();
    let keys: Vec<String> = s.key.iter().map(|k| quote(&k.name)).collect();
    let insert = format!(
        "INSERT INTO {t} ({}) SELECT {} FROM unnest({}) AS u({}) {}",
        cols.join(", "),
        casts.join(", "),
        arrays.join(", "),
        names.join(", "),
        D.on_conflict(&keys, &updates)
    );
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn postgres::types::ToSql + Sync)).collect();
    c.execute(insert.as_str(), &params)?;
    Ok(())
}

/// A field's text as its column takes it; a bytes column's value travels as base64 (as a table source writes it):
/// bytea's hex input here.
fn column_text(v: &serde_json::value::RawValue, col: Option<&Column>) -> Result<Option<String>, DbError> {
    Ok(match text_of(v, col)? {
        Some(t) if col.is_some_and(|c| c.binary) => match base64::engine::general_purpose::STANDARD.decode(&t) {
            Ok(bytes) => Some(format!("\\x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())),
            Err(_) => Some(t),
        },
        other => other,
    })
}

/// The rows in `COPY`'s text format. A number, a boolean, or any value of a JSON column is its JSON text as it
/// stands, copied straight from the event; only strings, arrays and bytes are converted.
fn copy_rows(objects: &[&Object<'_>], fields: &[&str], cols_of: &[Option<&Column>]) -> Result<Vec<u8>, DbError> {
    let mut buf = Vec::with_capacity(objects.iter().map(|o| o.raw.len()).sum::<usize>() + objects.len());
    for o in objects {
        for (i, (f, col)) in fields.iter().zip(cols_of).enumerate() {
            if i > 0 {
                buf.push(b'\t');
            }
            let Some(v) = o.fields.get(f) else {
                buf.extend_from_slice(b"\\N");
                continue;
            };
            let raw = v.get().as_bytes();
            let as_is = match raw.first() {
                Some(b'"' | b'[' | b'n') => col.is_some_and(|c| c.json),
                _ => col.is_none_or(|c| !c.binary),
            };
            if as_is {
                copy_escape(&mut buf, raw);
            } else {
                match column_text(v, *col)? {
                    Some(text) => copy_escape(&mut buf, text.as_bytes()),
                    None => buf.extend_from_slice(b"\\N"),
                }
            }
        }
        buf.push(b'\n');
    }
    Ok(buf)
}

/// A value in `COPY`'s text format: backslash, tab and line ends escaped.
fn copy_escape(buf: &mut Vec<u8>, text: &[u8]) {
    let mut from = 0;
    for (i, b) in text.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        buf.extend_from_slice(&text[from..i]);
        buf.extend_from_slice(escaped);
        from = i + 1;
    }
    buf.extend_from_slice(&text[from..]);
}

/// A column type whose binary `COPY` form is written here: the server then parses no text for it, the larger part of
/// what a copy of numbers costs it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Binary {
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
    Text,
}

impl Binary {
    fn of(col: Option<&Column>) -> Option<Binary> {
        Some(match col?.type_name.as_str() {
            "int2" => Binary::I16,
            "int4" => Binary::I32,
            "int8" => Binary::I64,
            "float4" => Binary::F32,
            "float8" => Binary::F64,
            "bool" => Binary::Bool,
            "text" | "varchar" => Binary::Text,
            _ => return None,
        })
    }

    /// A non-null JSON value in this type's binary form, appended; false, with nothing appended, where the value is
    /// not one the server would take as it stands in text (a fraction for an integer, a string for a number, an
    /// out-of-range number): such a batch goes as text, and the server judges it as it always has.
    fn put(self, buf: &mut Vec<u8>, raw: &str) -> bool {
        let number = raw.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        // The server refuses a float that rounds to zero or infinity (out of range); a zero written as zero is one.
        let zero_written =
            || raw.split(['e', 'E']).next().is_some_and(|m| m.bytes().all(|b| matches!(b, b'-' | b'0' | b'.')));
        macro_rules! field {
            ($bytes:expr) => {{
                let bytes = $bytes;
                buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                buf.extend_from_slice(&bytes);
                true
            }};
        }
        match self {
            Binary::I16 => raw.parse::<i16>().is_ok_and(|v| field!(v.to_be_bytes())),
            Binary::I32 => raw.parse::<i32>().is_ok_and(|v| field!(v.to_be_bytes())),
            Binary::I64 => raw.parse::<i64>().is_ok_and(|v| field!(v.to_be_bytes())),
            Binary::F32 => match raw.parse::<f32>() {
                Ok(v) if number && v.is_finite() && (v != 0.0 || zero_written()) => field!(v.to_be_bytes()),
                _ => false,
            },
            Binary::F64 => match raw.parse::<f64>() {
                Ok(v) if number && v.is_finite() && (v != 0.0 || zero_written()) => field!(v.to_be_bytes()),
                _ => false,
            },
            Binary::Bool => match raw {
                "true" => field!([1u8]),
                "false" => field!([0u8]),
                _ => false,
            },
            Binary::Text => match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                // A string with no escape is its text between the quotes.
                Some(text) if !text.contains('\\') => field!(text.as_bytes()),
                // The server's text holds no NUL.
                Some(_) => match serde_json::from_str::<String>(raw) {
                    Ok(text) if !text.contains('\0') => field!(text.as_bytes()),
                    _ => false,
                },
                // Another value, as text takes it: its JSON.
                None => field!(raw.as_bytes()),
            },
        }
    }
}

/// The rows in binary `COPY` format, `None` where a value is not for it (see [`Binary::put`]).
fn binary_rows(objects: &[&Object<'_>], fields: &[&str], kinds: &[Binary]) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(19 + objects.len() * (2 + 12 * fields.len()));
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    // No flags, no header extension.
    buf.extend_from_slice(&[0; 8]);
    let count = i16::try_from(fields.len()).ok()?;
    for o in objects {
        buf.extend_from_slice(&count.to_be_bytes());
        for (f, kind) in fields.iter().zip(kinds) {
            match o.fields.get(f).map(|v| v.get()) {
                None | Some("null") => buf.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(raw) => {
                    if !kind.put(&mut buf, raw) {
                        return None;
                    }
                }
            }
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    Some(buf)
}

/// `COPY table (columns) FROM STDIN` of rows in its text or binary format, in one transaction.
fn copy(c: &mut Client, table: &str, cols: &[String], rows: &[u8], binary: bool) -> Result<(), postgres::Error> {
    use std::io::Write;
    let format = if binary { " (FORMAT binary)" } else { "" };
    let mut writer = c.copy_in(format!("COPY {table} ({}) FROM STDIN{format}", cols.join(", ")).as_str())?;
    // A write error here is the connection's, and finish() reports it.
    let _ = writer.write_all(rows);
    writer.finish().map(|_| ())
}

pub fn dead_letters(c: &mut Client, table: &TableName, rows: &[DeadLetter<'_>]) -> Result<(), DbError> {
    let mut tx = c.transaction()?;
    let sql = D.insert(&table.quoted(), &super::DEAD_LETTER_COLUMNS);
    for d in rows {
        tx.execute(&sql, &[&d.at, &d.reason, &d.text, &d.bytes])?;
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
        // A closed connection, a socket error, a timeout: the server is away. A value that does not convert is not.
        let io = std::error::Error::source(pe).is_some_and(|s| s.is::<std::io::Error>());
        return if pe.is_closed() || io || pe.to_string().contains("timed out") {
            Fault::Unreachable
        } else {
            Fault::Other
        };
    };
    let code = db.code().code();
    match (code.get(..2).unwrap_or_default(), code) {
        (_, "42501") => Fault::Refused,
        (_, "42804") => Fault::Data,
        ("08" | "57" | "53" | "40", _) => Fault::Unreachable,
        ("28" | "3D", _) => Fault::Refused,
        // 21: the same key twice in one statement.
        ("21" | "22" | "23", _) => Fault::Data,
        _ => Fault::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_arrays_are_array_literals() {
        let literal = |raw: &str, json: bool| {
            let mut out = String::new();
            array_literal(&serde_json::from_str(raw).unwrap(), json, &mut out);
            out
        };
        assert_eq!(literal("[1,null,-2.5]", false), "{1,NULL,-2.5}");
        assert_eq!(literal("[[1,2],[3,4]]", false), "{{1,2},{3,4}}");
        assert_eq!(
            literal(r#"["a b","q\"uote","back\\slash","{,}",""]"#, false),
            r#"{"a b","q\"uote","back\\slash","{,}",""}"#
        );
        assert_eq!(literal("[]", false), "{}");
        assert_eq!(literal(r#"[{"a":1},"s",true,null]"#, true), r#"{"{\"a\":1}","\"s\"","true","null"}"#);
    }

    #[test]
    fn bc_years_are_signed_both_ways() {
        assert_eq!(signed_year("4713-01-01T00:00:00"), "-4712-01-01T00:00:00");
        assert_eq!(signed_year("0001-12-31T23:59:59.25+00:00"), "0000-12-31T23:59:59.25+00:00");
        assert_eq!(signed_year("0002-01-01"), "-0001-01-01");
        assert_eq!(era_of("-4712-01-01T00:00:00Z").as_deref(), Some("4713-01-01T00:00:00Z BC"));
        assert_eq!(era_of("0000-12-31").as_deref(), Some("0001-12-31 BC"));
        assert_eq!(era_of("-0001-01-01").as_deref(), Some("0002-01-01 BC"));
        for text in ["2026-01-02", "infinity", "-infinity", "12:00", "-1 day", ""] {
            assert_eq!(era_of(text), None, "{text}");
        }
        for bc in ["4713-01-01", "0001-01-01T00:00:00", "0123-06-30T12:00:00+02:00"] {
            assert_eq!(era_of(&signed_year(bc)), Some(format!("{bc} BC")));
        }
    }
}
