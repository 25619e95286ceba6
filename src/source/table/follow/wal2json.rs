//! wal2json's format 2, one line per row of `pg_logical_slot_peek_changes`: a transaction's begin, each change, its
//! commit, and the non-transactional messages the readers write as watermarks. Pure parsing.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

/// A position in PostgreSQL's write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `16/B374D848`, as PostgreSQL writes it.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.split_once('/')?;
        Some(Lsn((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What a change did, as Debezium names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

/// A column's value as wal2json writes it: the type's text output (a JSON number or boolean for those types).
#[derive(Debug, Deserialize)]
pub struct Column<'a> {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(borrow)]
    pub value: &'a RawValue,
}

/// One line.
#[derive(Debug)]
pub enum Line<'a> {
    /// Transaction `xid`, which committed at `commit` (the commit record's start) and ends at `end`, at `time`.
    Begin {
        xid: Option<u32>,
        commit: Lsn,
        end: Lsn,
        time: String,
    },
    /// A change of the followed table: its new values (none for a delete), and its old key, or whole old row under
    /// `REPLICA IDENTITY FULL` (none for an insert).
    Change {
        op: Op,
        columns: Vec<Column<'a>>,
        identity: Vec<Column<'a>>,
    },
    Commit {
        commit: Lsn,
        end: Lsn,
    },
    /// A message written with `pg_logical_emit_message`, at `lsn`; a transactional one comes inside its
    /// transaction, at its commit.
    Message {
        lsn: Lsn,
        prefix: String,
        content: String,
        transactional: bool,
    },
}

#[derive(Deserialize)]
struct Raw<'a> {
    action: &'a str,
    #[serde(default)]
    xid: Option<u64>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    lsn: Option<&'a str>,
    #[serde(default)]
    nextlsn: Option<&'a str>,
    #[serde(default, borrow)]
    columns: Vec<Column<'a>>,
    #[serde(default, borrow)]
    identity: Vec<Column<'a>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    transactional: bool,
}

/// Reads one line; `Ok(None)` for what is not ours to act on (a TRUNCATE, a transactional message).
pub fn parse(line: &str) -> Result<Option<Line<'_>>, String> {
    let raw: Raw<'_> = serde_json::from_str(line)
        .map_err(|e| format!("wal2json wrote a line that is not its format 2 ({e}): {line:.200}"))?;
    let lsn = |field: Option<&str>, name: &str| {
        field
            .and_then(Lsn::parse)
            .ok_or_else(|| format!("wal2json wrote a {:?} line without {name}: {line:.200}", raw.action))
    };
    Ok(Some(match raw.action {
        "B" => Line::Begin {
            xid: raw.xid.map(|x| x as u32),
            commit: lsn(raw.lsn, "lsn")?,
            end: lsn(raw.nextlsn, "nextlsn")?,
            time: raw.timestamp.map(|t| rfc3339(&t)).unwrap_or_default(),
        },
        "C" => Line::Commit { commit: lsn(raw.lsn, "lsn")?, end: lsn(raw.nextlsn, "nextlsn")? },
        "I" | "U" | "D" => Line::Change {
            op: match raw.action {
                "I" => Op::Insert,
                "U" => Op::Update,
                _ => Op::Delete,
            },
            columns: raw.columns,
            identity: raw.identity,
        },
        "M" => Line::Message {
            lsn: lsn(raw.lsn, "lsn")?,
            prefix: raw.prefix.unwrap_or_default(),
            content: raw.content.unwrap_or_default(),
            transactional: raw.transactional,
        },
        _ => return Ok(None),
    }))
}

/// `2026-12-04 04:40:27.805524+00` (PostgreSQL's text) as RFC 3339: `2026-12-04T04:40:27.805524+00:00`.
fn rfc3339(pg: &str) -> String {
    let mut t = pg.replacen(' ', "T", 1);
    // The offset's minutes are left out when they are 0.
    let offset_at = t.rfind(['+', '-']).filter(|&i| i > 10);
    if let Some(i) = offset_at {
        if t.len() - i == 3 {
            t.push_str(":00");
        }
    }
    t
}

/// A column's value as `json_populate_recordset` reads it back into the column's type: JSON's own for json and
/// jsonb (wal2json writes them as strings), bytea's hex with its `\x`, the rest as written.
pub fn populate_value(c: &Column<'_>) -> Result<Box<RawValue>, String> {
    let raw = c.value.get();
    let owned = |s: String| RawValue::from_string(s).map_err(|e| e.to_string());
    match c.type_name.as_str() {
        "json" | "jsonb" if raw != "null" => {
            let text: String = serde_json::from_str(raw).map_err(|e| format!("column {}: {e}", c.name))?;
            owned(text)
        }
        "bytea" if raw != "null" => {
            let hex: String = serde_json::from_str(raw).map_err(|e| format!("column {}: {e}", c.name))?;
            owned(serde_json::to_string(&format!("\\x{hex}")).map_err(|e| e.to_string())?)
        }
        _ => owned(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_and_write_as_postgresql_does() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/1526030").unwrap() < Lsn::parse("1/0").unwrap());
        assert_eq!(Lsn::parse("nope"), None);
    }

    #[test]
    fn every_line_of_a_transaction_and_a_message_is_read() {
        let begin = r#"{"action":"B","xid":725,"timestamp":"2026-12-04 04:40:27.804727+00","lsn":"0/1526030","nextlsn":"0/1526060"}"#;
        match parse(begin).unwrap() {
            Some(Line::Begin { xid, commit, end, time }) => {
                assert_eq!(xid, Some(725));
                assert_eq!((commit.to_string(), end.to_string()), ("0/1526030".into(), "0/1526060".into()));
                assert_eq!(time, "2026-12-04T04:40:27.804727+00:00");
            }
            other => panic!("{other:?}"),
        }
        let update = r#"{"action":"U","xid":727,"lsn":"0/1526120","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":3},{"name":"b","type":"bytea","value":"0102"},{"name":"j","type":"jsonb","value":"{\"a\": 1}"}],"identity":[{"name":"id","type":"integer","value":2}]}"#;
        match parse(update).unwrap() {
            Some(Line::Change { op: Op::Update, columns, identity }) => {
                assert_eq!(columns.len(), 3);
                assert_eq!(identity[0].value.get(), "2");
                assert_eq!(populate_value(&columns[1]).unwrap().get(), r#""\\x0102""#);
                assert_eq!(populate_value(&columns[2]).unwrap().get(), r#"{"a": 1}"#);
                assert_eq!(populate_value(&columns[0]).unwrap().get(), "3");
            }
            other => panic!("{other:?}"),
        }
        let delete = r#"{"action":"D","xid":728,"lsn":"0/15261E8","schema":"public","table":"t","identity":[{"name":"id","type":"integer","value":1}]}"#;
        assert!(matches!(parse(delete).unwrap(), Some(Line::Change { op: Op::Delete, .. })));
        let message = r#"{"action":"M","xid":null,"timestamp":null,"lsn":"0/15260A0","transactional":false,"prefix":"supervisor","content":"L:1"}"#;
        match parse(message).unwrap() {
            Some(Line::Message { lsn, prefix, content, transactional }) => {
                assert_eq!(
                    (lsn.to_string(), prefix.as_str(), content.as_str()),
                    ("0/15260A0".into(), "supervisor", "L:1")
                );
                assert!(!transactional);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(r#"{"action":"T","schema":"public","table":"t"}"#), Ok(None)), "a truncate is not ours");
        assert!(parse("{").unwrap_err().contains("not its format 2"));
        assert!(parse(r#"{"action":"C"}"#).unwrap_err().contains("without lsn"));
    }
}
