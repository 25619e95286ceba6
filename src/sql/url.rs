//! `--source URL`, `--sink URL` and `--checkpoint URL`: which database, which table, which key.
//!
//! `postgres://user:password@host:port/db?table=T&key=K&columns=a,b`, `sqlite:PATH?table=T`. `table`, `key` and
//! `columns` are ours and taken out; so is `password`, whose value may be read from a file (`password=@PATH`, the
//! `-X` rule: a relative path is looked up in `$CREDENTIALS_DIRECTORY` when systemd set it). Every other parameter is
//! the dialect's (`sslmode`, `ssl-mode`, `connect_timeout`): see [`take_parameters`]. The password is masked wherever
//! the URL is shown.
//!
//! Names are read as SQL reads them: `table=sales.orders` is table `orders` of schema `sales` (MySQL: of database
//! `sales`), `key=tenant_id,id` two columns, and a name in double quotes is taken as it is (`table="Order Items"`,
//! `%22Order%20Items%22` in a URL; `""` is a quote in it) while an unquoted one is folded as the engine folds it
//! (PostgreSQL: to lower case).

use std::fmt;

/// The database family a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mysql,
    Sqlite,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "PostgreSQL",
            Engine::Mysql => "MySQL",
            Engine::Sqlite => "SQLite",
        }
    }
}

/// A table in a database, as a URL named it.
#[derive(Clone, PartialEq, Eq)]
pub struct TableUrl {
    pub engine: Engine,
    /// What the client connects with: the URL without our parameters (for SQLite, the file's path).
    pub connect: String,
    pub table: Option<TableName>,
    /// The key's columns, in the order a scan sorts on them.
    pub key: Option<Vec<String>>,
    pub columns: Option<Vec<String>>,
    /// The `password=` parameter, read from its file if it said `@PATH`; it wins over the URL's `user:password@`.
    pub password: Option<String>,
    /// `slot=NAME`: the logical replication slot `--follow` reads (PostgreSQL), instead of one named from the scan.
    pub slot: Option<String>,
    /// The URL as given, its password masked.
    shown: String,
}

impl TableUrl {
    /// Parses a URL; the error says what is wrong without quoting the password. A `password=@PATH` is read now, a
    /// relative path in `$CREDENTIALS_DIRECTORY` when it is set.
    pub fn parse(given: &str) -> Result<TableUrl, String> {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        TableUrl::parse_with(given, credentials.as_deref())
    }

    /// [`parse`](Self::parse), `credentials` standing for `$CREDENTIALS_DIRECTORY`.
    pub fn parse_with(given: &str, credentials: Option<&std::path::Path>) -> Result<TableUrl, String> {
        let shown = mask(given);
        let (engine, rest) = if let Some(rest) = given.strip_prefix("sqlite://") {
            (Engine::Sqlite, rest)
        } else if let Some(rest) = given.strip_prefix("sqlite:") {
            (Engine::Sqlite, rest)
        } else if given.starts_with("postgres://") || given.starts_with("postgresql://") {
            (Engine::Postgres, given)
        } else if given.starts_with("mysql://") || given.starts_with("mariadb://") {
            (Engine::Mysql, given)
        } else {
            return Err(format!(
                "{shown:?} is not a database URL: expected postgres://USER@HOST/DB?table=T, mysql://USER@HOST/DB?table=T \
                 or sqlite:PATH?table=T"
            ));
        };
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        // PostgreSQL folds unquoted names to lower case; MySQL and SQLite keep them as written.
        let fold = engine == Engine::Postgres;
        let (mut table, mut key, mut columns, mut passed) = (None, None, None, Vec::new());
        let (mut password, mut slot) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = || decode(v).map_err(|e| format!("{shown}: parameter {k}: {e}"));
            match k {
                "table" => {
                    let names = identifiers(&value()?, '.', fold).map_err(|e| format!("{shown}: table: {e}"))?;
                    table = Some(match <[String; 2]>::try_from(names) {
                        Ok([schema, name]) => TableName { schema: Some(schema), name },
                        Err(names) => match <[String; 1]>::try_from(names) {
                            Ok([name]) => TableName { schema: None, name },
                            Err(_) => return Err(format!("{shown}: table= takes NAME or SCHEMA.NAME")),
                        },
                    });
                }
                "key" => {
                    let names = identifiers(&value()?, ',', fold).map_err(|e| format!("{shown}: key: {e}"))?;
                    if names.is_empty() {
                        return Err(format!("{shown}: key= names no column"));
                    }
                    key = Some(names)
                }
                "columns" => columns = Some(identifiers(&value()?, ',', fold).map_err(|e| format!("{shown}: {e}"))?),
                "password" if engine != Engine::Sqlite => {
                    let given = value()?;
                    password = Some(match given.strip_prefix('@') {
                        Some(literal) if literal.starts_with('@') => literal.to_string(),
                        Some(path) => crate::secret_file::read_value(path, credentials)
                            .map_err(|e| format!("{shown}: parameter password: {e}"))?,
                        None => given,
                    });
                }
                "slot" if engine == Engine::Postgres => {
                    let name = value()?;
                    let fits = !name.is_empty()
                        && name.len() <= 63
                        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !fits {
                        return Err(format!(
                            "{shown}: slot={name:?}: a replication slot's name is 1 to 63 lower-case letters, digits \
                             and underscores"
                        ));
                    }
                    slot = Some(name);
                }
                "slot" => {
                    return Err(format!("{shown}: slot= names a PostgreSQL logical replication slot (for --follow)"))
                }
                _ if engine == Engine::Sqlite => {
                    return Err(format!("{shown}: unknown parameter {k:?} (sqlite: takes table, key and columns)"))
                }
                _ => passed.push(pair),
            }
        }
        let connect = match engine {
            Engine::Sqlite if base.is_empty() => return Err(format!("{shown}: no file path after sqlite:")),
            Engine::Sqlite => decode(base).map_err(|e| format!("{shown}: {e}"))?,
            _ if passed.is_empty() => base.to_string(),
            _ => format!("{base}?{}", passed.join("&")),
        };
        if engine == Engine::Mysql {
            let rest = &base[base.find("://").map_or(0, |i| i + 3)..];
            if !rest.contains('/') || rest.ends_with('/') {
                return Err(format!("{shown}: no database name (mysql://USER@HOST:PORT/DB)"));
            }
        }
        let tables = table.iter().flat_map(|t| t.schema.iter().chain([&t.name]));
        for name in tables.chain(key.iter().flatten()).chain(columns.iter().flatten()) {
            check_identifier(name).map_err(|e| format!("{shown}: {e}"))?;
        }
        Ok(TableUrl { engine, connect, table, key, columns, password, slot, shown })
    }

    /// The table, or the error that this use needs one.
    pub fn table(&self) -> Result<&TableName, String> {
        self.table.as_ref().ok_or_else(|| format!("{}: which table? add ?table=NAME", self.shown))
    }

    /// `table T of LOCATION`, as the logs name a table.
    pub fn describe(&self) -> String {
        format!("table {} of {}", self.table.as_ref().map(ToString::to_string).unwrap_or_default(), self.location())
    }

    /// Where the database is, without credentials or parameters: what identifies a scan in the checkpoint store.
    pub fn location(&self) -> String {
        match self.engine {
            Engine::Sqlite => format!("sqlite:{}", self.connect),
            _ => {
                let base = self.connect.split('?').next().unwrap_or_default();
                let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                format!("{scheme}://{host}")
            }
        }
    }
}

impl fmt::Display for TableUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Never prints the password, even by mistake in a `{:?}`.
impl fmt::Debug for TableUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableUrl({})", self.shown)
    }
}

/// Takes the parameters named in `names` out of a client URL's query: the URL without them, and their values
/// percent-decoded, in the order given. A dialect applies these itself (TLS settings its client cannot parse).
pub fn take_parameters(url: &str, names: &[&str]) -> Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_string(), Vec::new())) };
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if names.contains(&k) {
            taken.push((k.to_string(), decode(v).map_err(|e| format!("parameter {k}: {e}"))?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, taken))
}

/// Query parameters whose value is a secret.
const SECRET_PARAMETERS: &[&str] = &["password", "sslpassword"];

/// The secret values a URL holds: its password, and `password=` parameters.
pub fn secrets(url: &str) -> Vec<String> {
    let mut out: Vec<String> = crate::telemetry::redact::url_password(url).map(str::to_string).into_iter().collect();
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if SECRET_PARAMETERS.contains(&k) && !v.is_empty() {
                    out.push(v.to_string());
                    out.extend(decode(v).ok());
                }
            }
        }
    }
    out
}

/// The URL with its password, and any `password=` parameter, replaced by the mask every line uses.
pub fn mask(url: &str) -> String {
    let masked = match crate::telemetry::redact::url_password_at(url) {
        Some(at) => format!("{}{}{}", &url[..at.start], crate::telemetry::redact::MASK, &url[at.end..]),
        None => url.to_string(),
    };
    let Some((base, query)) = masked.split_once('?') else { return masked };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMETERS.contains(&k) => format!("{k}={}", crate::telemetry::redact::MASK),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

/// A table as the database knows it: its schema, if named (PostgreSQL's schema, MySQL's database, SQLite's attached
/// database), and its name, both as the database spells them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// The name as a statement writes it: each part quoted (`"sales"."orders"`).
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", super::quote(schema), super::quote(&self.name)),
            None => super::quote(&self.name),
        }
    }

    /// The table named `NAME{suffix}` in the same schema: the dead-letter table beside this one.
    pub fn beside(&self, suffix: &str) -> TableName {
        TableName { schema: self.schema.clone(), name: format!("{}{suffix}", self.name) }
    }
}

/// `schema.name`, as the logs name a table.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// In quotes, as a message quotes a name: `table "sales.orders"`.
impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// Names separated by `sep` (`.` in `schema.table`, `,` in a list of columns), as SQL reads them: one in double
/// quotes is taken as it is (`""` a quote inside it, `sep` no separator), one without is trimmed and, with `fold`,
/// put in lower case. Empty unquoted names are left out.
fn identifiers(text: &str, sep: char, fold: bool) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err(format!("{text:?}: a quoted name is not closed")),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.peek().is_some_and(|c| *c != sep) {
                return Err(format!("{text:?}: {sep:?} or the end expected after a quoted name"));
            }
            names.push(name);
        } else {
            while let Some(c) = chars.next_if(|c| *c != sep) {
                name.push(c);
            }
            let name = name.trim();
            if name.contains('"') {
                return Err(format!("{name:?} is not a usable table or column name (quote a name as \"a b\")"));
            }
            if !name.is_empty() {
                names.push(if fold { name.to_ascii_lowercase() } else { name.to_string() });
            }
        }
        if chars.next().is_none() {
            return Ok(names);
        }
    }
}

/// Identifiers are quoted in every statement; these rules keep them to what quoting can carry.
fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(format!("{name:?} is not a usable table or column name"));
    }
    Ok(())
}

/// Percent-decoding, for names and paths with reserved characters.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("a '%' not followed by two hex digits")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("%{hex} is not a percent-escape"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_are_taken_out_and_the_clients_kept() {
        let u = TableUrl::parse(
            "postgres://app:s3cr@t@db:5432/shop?table=orders&sslmode=require&key=id&columns=id,%20total",
        )
        .unwrap();
        assert_eq!(u.engine, Engine::Postgres);
        assert_eq!(u.connect, "postgres://app:s3cr@t@db:5432/shop?sslmode=require");
        assert_eq!(u.table.as_ref().map(ToString::to_string).as_deref(), Some("orders"));
        assert_eq!(u.key, Some(vec!["id".to_string()]));
        assert_eq!(u.columns, Some(vec!["id".to_string(), "total".to_string()]));
        assert_eq!(u.location(), "postgres://db:5432/shop");
    }

    #[test]
    fn passwords_never_show() {
        let u = TableUrl::parse("postgres://app:hunter2@db/shop?table=t").unwrap();
        for shown in [u.to_string(), format!("{u:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(&format!("app:{}@db", crate::telemetry::redact::MASK)), "{shown}");
        }
        let e = TableUrl::parse("postgres://app:hunter2@db/shop?table=a%zz").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(mask("mysql://u@h/d"), "mysql://u@h/d");
        let u = TableUrl::parse("postgres://app@db/shop?password=hunter2&table=t&sslmode=disable").unwrap();
        assert!(!format!("{u} {u:?}").contains("hunter2"), "{u}");
        assert!(u.to_string().ends_with("?password=********&table=t&sslmode=disable"), "{u}");
        assert!(secrets("postgres://a:b@h/d?password=c%21").iter().any(|s| s == "c!"));
    }

    #[test]
    fn passwords_come_from_parameters_and_files() {
        let dir = std::env::temp_dir().join(format!("supervisor-url-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("db-password"), "from file\n").unwrap();
        let abs = dir.join("db-password").display().to_string();
        let u = TableUrl::parse_with(&format!("postgres://app@db/shop?password=@{abs}&table=t"), None).unwrap();
        assert_eq!((u.password.as_deref(), u.connect.as_str()), (Some("from file"), "postgres://app@db/shop"));
        let u = TableUrl::parse_with("mysql://app@db/shop?table=t&password=@db-password", Some(&dir)).unwrap();
        assert_eq!(u.password.as_deref(), Some("from file"), "relative to $CREDENTIALS_DIRECTORY");
        let u = TableUrl::parse_with("mysql://app@db/shop?password=@@at%26amp&table=t", None).unwrap();
        assert_eq!(u.password.as_deref(), Some("@at&amp"));
        let e = TableUrl::parse_with("postgres://app@db/shop?password=@missing&table=t", Some(&dir)).unwrap_err();
        assert!(e.contains("parameter password: cannot read its value from") && !e.contains("@missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn client_parameters_are_taken_out() {
        let (rest, taken) = take_parameters(
            "postgres://h/d?sslmode=verify-full&connect_timeout=3&sslrootcert=%2Fca.pem",
            &["sslmode", "sslrootcert"],
        )
        .unwrap();
        assert_eq!(rest, "postgres://h/d?connect_timeout=3");
        assert_eq!(taken, [("sslmode".into(), "verify-full".into()), ("sslrootcert".into(), "/ca.pem".into())]);
        assert_eq!(take_parameters("postgres://h/d?sslmode=x", &["sslmode"]).unwrap().0, "postgres://h/d");
    }

    #[test]
    fn sqlite_urls_are_paths() {
        let u = TableUrl::parse("sqlite:/tmp/my%20db.sqlite?table=source").unwrap();
        assert_eq!((u.engine, u.connect.as_str()), (Engine::Sqlite, "/tmp/my db.sqlite"));
        assert_eq!(u.table().unwrap().quoted(), "\"source\"");
        assert_eq!(TableUrl::parse("sqlite://rel.db").unwrap().connect, "rel.db");
        assert!(TableUrl::parse("sqlite:").is_err());
        assert!(TableUrl::parse("sqlite:x.db?sslmode=1").unwrap_err().contains("unknown parameter"));
        assert!(TableUrl::parse("sqlite:x.db").unwrap().table().unwrap_err().contains("?table=NAME"));
    }

    #[test]
    fn names_are_read_as_sql_reads_them() {
        let pg = |q: &str| TableUrl::parse(&format!("postgres://u@h/d?{q}"));
        let u = pg("table=Sales.Orders&key=Tenant_ID,%20id&columns=a,%22B%20c%22").unwrap();
        let t = u.table().unwrap();
        assert_eq!((t.schema.as_deref(), t.name.as_str()), (Some("sales"), "orders"), "PostgreSQL folds unquoted");
        assert_eq!(t.quoted(), "\"sales\".\"orders\"");
        assert_eq!(format!("{t:?} {t}"), "\"sales.orders\" sales.orders");
        assert_eq!(t.beside("_dead_letter").quoted(), "\"sales\".\"orders_dead_letter\"");
        assert_eq!(u.key, Some(vec!["tenant_id".to_string(), "id".to_string()]));
        assert_eq!(u.columns, Some(vec!["a".to_string(), "B c".to_string()]));
        let u = pg("table=%22Order%20Items%22").unwrap();
        assert_eq!((u.table().unwrap().schema.clone(), u.table().unwrap().name.as_str()), (None, "Order Items"));
        let u = pg("table=%22My.Schema%22.%22Mixed%22%22Case%22").unwrap();
        assert_eq!(u.table().unwrap().quoted(), "\"My.Schema\".\"Mixed\"\"Case\"");
        // MySQL and SQLite keep unquoted names as written.
        let u = TableUrl::parse("mysql://u@h/d?table=Shop.Orders&key=A,b").unwrap();
        assert_eq!(u.table().unwrap().quoted(), "\"Shop\".\"Orders\"");
        assert_eq!(u.key, Some(vec!["A".to_string(), "b".to_string()]));
        for wrong in ["table=a.b.c", "table=%22open", "table=%22a%22b", "key=", "key=,"] {
            assert!(pg(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn wrong_urls_say_what_is_expected() {
        assert!(TableUrl::parse("kafka://x").unwrap_err().contains("expected postgres://"));
        assert!(TableUrl::parse("mysql://u@h:3306?table=t").unwrap_err().contains("no database name"));
        assert!(TableUrl::parse("sqlite:x.db?table=a\"b").unwrap_err().contains("not a usable"));
    }
}
