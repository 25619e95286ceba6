//! The logical replication slot `--follow` reads, over an ordinary connection: what the server must allow, making and
//! dropping the slot, peeking at its changes (wal2json) and advancing it.

use super::wal2json::Lsn;
use crate::error::{Error, Result};
use crate::sql::url::TableUrl;
use crate::sql::{Conn, DbError, Schema};

/// The output plugin: Debian's `postgresql-NN-wal2json`.
pub const PLUGIN: &str = "wal2json";

/// The slot named for a scan (`supervisor_` and a digest of what identifies it), or the URL's `slot=`.
pub fn name(url: &TableUrl, scan_id: &str) -> String {
    use md5::{Digest, Md5};
    if let Some(slot) = &url.slot {
        return slot.clone();
    }
    let digest = Md5::digest(scan_id.as_bytes());
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("supervisor_{hex}")
}

/// The prefix of the slot's watermark messages: each slot's follower reads its own.
pub fn watermark_prefix(slot: &str) -> String {
    format!("supervisor.watermark.{slot}")
}

/// The slot as the server has it.
pub struct SlotState {
    pub confirmed: Option<Lsn>,
    pub plugin: String,
    pub database: String,
    pub active_pid: Option<i32>,
}

fn client(conn: &mut Conn) -> Result<&mut postgres::Client> {
    match conn {
        Conn::Postgres(c) => Ok(c),
        _ => Err(Error::DbSchema { message: "--follow reads PostgreSQL's logical replication only".into() }),
    }
}

fn query_failed(doing: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    move |e| Error::DbQuery { doing: doing.to_string(), source: DbError::from(e) }
}

/// What --follow needs of the server and the table, each refused with what to do: `wal_level=logical`, a role with
/// `REPLICATION`, and a replica identity that holds the scan's key (a delete carries nothing else).
pub fn check(conn: &mut Conn, url: &TableUrl, schema: &Schema) -> Result<()> {
    let c = client(conn)?;
    let failed = query_failed("checking what --follow needs");
    let level: String = c.query_one("SHOW wal_level", &[]).map_err(&failed)?.get(0);
    if level != "logical" {
        return Err(Error::DbSchema {
            message: format!(
                "--follow needs wal_level=logical on {} (it is {level}): ALTER SYSTEM SET wal_level = logical, then \
                 restart PostgreSQL",
                url.location()
            ),
        });
    }
    let row = c
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .map_err(&failed)?;
    let (user, allowed): (String, bool) = (row.get(0), row.get(1));
    if !allowed {
        return Err(Error::DbSchema {
            message: format!(
                "--follow reads a replication slot, and role {user:?} has no REPLICATION: ALTER ROLE \"{user}\" \
                 REPLICATION (as a superuser)"
            ),
        });
    }
    let table = schema.table.quoted();
    let row = c
        .query_one(
            "SELECT c.relreplident::text, COALESCE((SELECT array_agg(a.attname::text) FROM pg_index i JOIN \
             pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND \
             ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))), '{}') \
             FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&table],
        )
        .map_err(&failed)?;
    let (identity, columns): (String, Vec<String>) = (row.get(0), row.get(1));
    let key: Vec<String> = schema.key.iter().map(|k| k.name.clone()).collect();
    let holds_key = identity == "f" || key.iter().all(|k| columns.contains(k));
    if !holds_key {
        let why = match (identity.as_str(), columns.is_empty()) {
            ("n", _) => "REPLICA IDENTITY NOTHING".to_string(),
            (_, true) => "no REPLICA IDENTITY (no primary key)".to_string(),
            _ => format!("a REPLICA IDENTITY of {} only", columns.join(", ")),
        };
        return Err(Error::DbSchema {
            message: format!(
                "--follow: table {table} has {why}, so its deletes would not carry the key {}: ALTER TABLE {table} \
                 REPLICA IDENTITY FULL, or give it a primary key",
                key.join(", ")
            ),
        });
    }
    Ok(())
}

/// The table as wal2json's `add-tables` names it: `schema.table`, with `\` before its special characters.
pub fn qualified(conn: &mut Conn, schema: &Schema) -> Result<String> {
    let c = client(conn)?;
    let row = c
        .query_one(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = $1::text::regclass",
            &[&schema.table.quoted()],
        )
        .map_err(query_failed("naming the table"))?;
    let escape = |s: String| -> String {
        s.chars().flat_map(|ch| if "\\,.* ".contains(ch) { vec!['\\', ch] } else { vec![ch] }).collect()
    };
    Ok(format!("{}.{}", escape(row.get(0)), escape(row.get(1))))
}

pub fn state(conn: &mut Conn, slot: &str) -> Result<Option<SlotState>> {
    let c = client(conn)?;
    let row = c
        .query_opt(
            "SELECT confirmed_flush_lsn::text, plugin::text, database::text, active_pid FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(query_failed("reading the replication slot"))?;
    Ok(row.map(|r| SlotState {
        confirmed: r.get::<_, Option<String>>(0).as_deref().and_then(Lsn::parse),
        plugin: r.get::<_, Option<String>>(1).unwrap_or_default(),
        database: r.get::<_, Option<String>>(2).unwrap_or_default(),
        active_pid: r.get(3),
    }))
}

/// Makes the slot; its changes start here.
pub fn create(conn: &mut Conn, slot: &str) -> Result<Lsn> {
    let c = client(conn)?;
    let row = c.query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2)", &[&slot, &PLUGIN]);
    match row {
        Ok(r) => Ok(Lsn::parse(&r.get::<_, String>(0)).unwrap_or_default()),
        Err(e) => {
            let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
            if message.contains(PLUGIN) {
                return Err(Error::DbSchema {
                    message: format!(
                        "--follow reads changes through the {PLUGIN} plugin, which this server lacks ({message}): \
                         install it (Debian: apt-get install postgresql-NN-wal2json)"
                    ),
                });
            }
            Err(Error::DbSchema { message: format!("cannot make the replication slot {slot}: {message}") })
        }
    }
}

/// Drops the slot; false if there was none.
pub fn drop(conn: &mut Conn, slot: &str) -> Result<bool> {
    if state(conn, slot)?.is_none() {
        return Ok(false);
    }
    let c = client(conn)?;
    c.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).map_err(|e| {
        let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
        Error::DbSchema { message: format!("cannot drop the replication slot {slot}: {message}") }
    })?;
    Ok(true)
}

/// The slot's confirmed position moves to `to`: what lies before it is never decoded again.
pub fn advance(c: &mut postgres::Client, slot: &str, to: Lsn) -> Result<()> {
    c.execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&slot, &to.to_string()])
        .map_err(query_failed("advancing the replication slot"))?;
    Ok(())
}

/// Takes the slot's advisory lock for this session (held until it ends); false if another session holds it.
pub fn lock(c: &mut postgres::Client, slot: &str) -> Result<bool, postgres::Error> {
    let key = format!("supervisor follows {slot}");
    Ok(c.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])?.get(0))
}

/// Makes `copy`, a temporary slot of this session, where `slot` is: consuming it leaves `slot` as it is.
pub fn copy_temporary(c: &mut postgres::Client, slot: &str, copy: &str) -> Result<(), postgres::Error> {
    c.execute("SELECT pg_copy_logical_replication_slot($1, $2, true)", &[&slot, &copy])?;
    Ok(())
}

/// How far behind the server's WAL the slot is: bytes kept for it.
pub fn lag_bytes(c: &mut postgres::Client, slot: &str) -> Result<Option<i64>> {
    let row = c
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(query_failed("reading the slot's lag"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// The server's WAL flushed so far: every transaction that committed before it is decodable.
pub fn flushed(c: &mut postgres::Client) -> Result<Lsn> {
    let text: String = c
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .map_err(query_failed("reading the WAL's end"))?
        .get(0);
    Ok(Lsn::parse(&text).unwrap_or_default())
}

/// What a page's snapshot did not see: transactions at or past `xmax`, and those listed in progress (32-bit xids, as
/// logical decoding names them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unseen {
    pub xmax: u32,
    pub in_progress: Vec<u32>,
}

impl Unseen {
    /// `xmin:xmax:xip,...`, as `pg_current_snapshot` writes it.
    pub fn parse(snapshot: &str) -> Unseen {
        let mut parts = snapshot.splitn(3, ':');
        let _xmin = parts.next();
        let xmax = parts.next().and_then(|x| x.trim().parse::<u64>().ok()).map_or(0, |x| x as u32);
        let list = parts.next().unwrap_or_default();
        let in_progress = list.split(',').filter_map(|x| x.trim().parse::<u64>().ok()).map(|x| x as u32).collect();
        Unseen { xmax, in_progress }
    }

    /// Whether the snapshot did not see transaction `xid`: listed in progress, or not begun when it was taken (at or
    /// past xmax, in the circular order of 32-bit xids).
    pub fn hides(&self, xid: u32) -> bool {
        self.in_progress.contains(&xid) || xid.wrapping_sub(self.xmax) as i32 >= 0
    }
}

/// Runs `read` in a REPEATABLE READ transaction, and returns what its snapshot did not see.
pub fn in_snapshot(conn: &mut Conn, read: impl FnOnce(&mut Conn) -> Result<(), DbError>) -> Result<Unseen, DbError> {
    let snapshot: String = match conn {
        Conn::Postgres(c) => {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
            c.query_one("SELECT pg_current_snapshot()::text", &[])?.get(0)
        }
        _ => return read(conn).map(|()| Unseen::default()),
    };
    let done = read(conn);
    if let Conn::Postgres(c) = conn {
        let ended = c.batch_execute(if done.is_ok() { "COMMIT" } else { "ROLLBACK" });
        done?;
        ended?;
    }
    Ok(Unseen::parse(&snapshot))
}

/// Writes a watermark into the change stream: outside any transaction (decoded where it is written), or in one of
/// its own (decoded at its commit, which flushes the log).
pub fn emit_watermark(conn: &mut Conn, prefix: &str, content: &str, transactional: bool) -> Result<(), DbError> {
    match conn {
        Conn::Postgres(c) => {
            c.execute("SELECT pg_logical_emit_message($1, $2, $3)", &[&transactional, &prefix, &content])?;
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_snapshot_hides_what_it_lists_in_progress_and_what_began_after_it() {
        use super::Unseen;
        let u = Unseen::parse("740:745:740,742");
        assert_eq!(u, Unseen { xmax: 745, in_progress: vec![740, 742] });
        assert!(u.hides(740) && u.hides(742) && u.hides(745) && u.hides(9000));
        assert!(!u.hides(741) && !u.hides(744));
        assert_eq!(Unseen::parse("745:745:").in_progress, Vec::<u32>::new());
        assert_eq!(
            Unseen::parse(&format!("1:2:{}", (3u64 << 32) | 7)).in_progress,
            vec![7],
            "the epoch is not the xid's"
        );
        let wrapped = Unseen { xmax: 5, in_progress: vec![] };
        assert!(!wrapped.hides(u32::MAX - 10), "before xmax across the wrap");
        assert!(wrapped.hides(6));
    }
}
