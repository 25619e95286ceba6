//! A table scan's reader process (`reader-N`): it connects to the database, then reads the chunks the source gives
//! it, one at a time, page by page in key order with keyset pagination, and sends each page to the source. A failed
//! query is retried on a fresh connection from the last key read; when the retries are spent the reader fails and
//! the supervisor's restart policy takes over.

use super::follow::wal::watermark_content;
use crate::channel::ipc::{BatchSender, Page, Work, WorkReceiver};
use crate::config::{Config, SourceSpec};
use crate::error::{Error, Exit, Result};
use crate::position::Lane;
use crate::sql::key::Key;
use crate::sql::{Resilient, Row, Schema};
use crate::stage::{Hooks, Stage};
use crate::telemetry::events::{emit, PageRead};
use crate::telemetry::heartbeat;
use serde_bytes::ByteBuf;

/// Rows per keyset page.
pub const PAGE_ROWS: usize = 2000;

/// The channel ends a reader owns: its work from the source, and its pages to it.
pub struct ReaderEnds {
    pub work: WorkReceiver,
    pub pages: BatchSender,
}

/// The reader as a stage.
pub struct TableReader;

impl Stage for TableReader {
    type Ends = ReaderEnds;

    fn run(cfg: &Config, ends: ReaderEnds, hooks: &Hooks) -> Result<Exit> {
        let SourceSpec::Table(url) = cfg.source() else {
            return Err(Error::DbSchema { message: "no --source table given".into() });
        };
        let who = crate::telemetry::logging::process_name().to_string();
        let mut db = Resilient::connect(url, cfg.max_retries, who.clone())?;
        let schema = db.conn()?.schema(url, crate::sql::Access::Read)?;
        hooks.ready();
        // Following the table: each page is read between two watermarks written into its change stream.
        let watermarks = cfg
            .follow
            .then(|| super::follow::slot::watermark_prefix(&super::follow::slot::name(url, &super::scan_id(cfg))));
        let mut reader = Reader { who, db, schema, pages: ends.pages, watermarks };
        loop {
            match heartbeat::waiting_on_peer(|| ends.work.recv()) {
                Ok(Work::Chunk { lane, epoch, after, upto }) => {
                    if !reader.read_chunk(lane, epoch, after, upto)? {
                        return Ok(Exit::Clean);
                    }
                }
                // The source is done with us, or gone (then it is draining or dead): nothing more to read.
                Ok(Work::Stop) | Err(ipc_channel::IpcError::Disconnected) => return Ok(Exit::Clean),
                Err(e) => return Err(Error::Receive(e)),
            }
        }
    }
}

struct Reader {
    who: String,
    db: Resilient,
    schema: Schema,
    pages: BatchSender,
    /// `--follow`: the prefix of this slot's watermark messages.
    watermarks: Option<String>,
}

impl Reader {
    /// Reads a chunk to its end; false if the source stopped taking pages (it drained, or died: either way what was
    /// not acknowledged is read again from its checkpoint, by the next run).
    fn read_chunk(&mut self, lane: Lane, epoch: u64, mut after: Option<Key>, upto: Option<Key>) -> Result<bool> {
        log::debug!("{} reads chunk {lane} after {after:?}", self.who);
        let mut rows: Vec<Row> = Vec::with_capacity(PAGE_ROWS);
        let mut number = 0u32;
        loop {
            let schema = &self.schema;
            let doing = || {
                format!(
                    "reading chunk {lane} of {} after key {}",
                    schema.table,
                    after.as_ref().map_or("(start)".to_string(), |k| k.to_string())
                )
            };
            let watermarks = self.watermarks.as_deref();
            let token = (epoch, number);
            let mut unseen = Default::default();
            let read = self.db.run(&doing, |conn| {
                rows.clear();
                let Some(prefix) = watermarks else {
                    return conn.page(schema, after.as_ref(), upto.as_ref(), PAGE_ROWS, &mut rows);
                };
                use super::follow::slot;
                slot::emit_watermark(conn, prefix, &watermark_content(false, token), false)?;
                // One snapshot for the page and the list of what it does not see: a transaction whose commit is in
                // the log before the low watermark may not be visible yet when the page is read.
                unseen = slot::in_snapshot(conn, |conn| {
                    conn.page(schema, after.as_ref(), upto.as_ref(), PAGE_ROWS, &mut rows)
                })?;
                // In a transaction of its own: its commit flushes the log, so the page is not left waiting for the
                // WAL writer.
                slot::emit_watermark(conn, prefix, &watermark_content(true, token), true)
            })?;
            read.map_err(|source| Error::DbQuery { doing: doing(), source })?;
            heartbeat::tick();
            let last = rows.len() < PAGE_ROWS;
            if let Some(r) = rows.last() {
                after = Some(r.key.clone());
            }
            let read = rows.len() as u64;
            let page = Page {
                lane,
                epoch,
                number,
                unseen: std::mem::take(&mut unseen),
                rows: rows.drain(..).map(|r| (r.key, ByteBuf::from(r.json))).collect(),
                last,
            };
            number += 1;
            // Blocks while the source is behind: that is the back-pressure on the database.
            if let Err(e) = self.pages.send_bytes(&page.encode()?) {
                log::debug!("the source takes no more pages ({e}): stopping");
                return Ok(false);
            }
            emit(PageRead { rows: read });
            if last {
                return Ok(true);
            }
        }
    }
}
