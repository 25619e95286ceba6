//! The IPC channels between the processes, and the messages on them.
//!
//! Data (record batches, acknowledgements) goes over ipc-channel byte channels, encoded with bincode by us.
//! Rare control messages (drain, ready, failed) use ipc-channel's typed channels, which can wait with a timeout.
//!
//! A send blocks while the receiver's socket buffer is full: that is the backpressure between stages. The graph
//! has no cycle of blocking sends: acknowledgements flow back to a source thread that only ever reads them. Data
//! messages larger than one packet are cut into packets by [`fragment`], so that a blocked sender sees its receiver
//! die whatever the message's size.

use crate::channel::batch::{bincode_config, BatchWriter, Frame};
use crate::channel::fragment::{self, Reassembly};
use crate::error::{Error, Result};
use crate::position::{Lane, Position};
use crate::telemetry::counters::StageStats;
use crate::telemetry::events::{emit, BatchSent};
use crate::telemetry::heartbeat;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcReceiver, IpcSender};
use ipc_channel::IpcError;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// The sending end of a stage's data channel: record batches, then one poison pill.
#[derive(Debug)]
pub struct BatchSender(IpcBytesSender);

/// The receiving end of a data channel. `recv` returns `None` once every sender is gone.
#[derive(Debug)]
pub struct BatchReceiver(Packets);

pub fn batch_channel() -> Result<(BatchSender, BatchReceiver)> {
    let (tx, rx) = ipc::bytes_channel().map_err(Error::CreateChannel)?;
    Ok((BatchSender(tx), BatchReceiver(Packets::new(rx))))
}

/// A byte channel's receiving end, putting messages cut into packets back together.
#[derive(Debug)]
struct Packets {
    rx: IpcBytesReceiver,
    whole: RefCell<Reassembly>,
}

impl Packets {
    fn new(rx: IpcBytesReceiver) -> Packets {
        Packets { rx, whole: RefCell::new(Reassembly::default()) }
    }

    /// The next whole message, or `None` once every sender is gone (a message cut short by its sender's death
    /// included).
    fn recv(&self) -> Result<Option<Vec<u8>>> {
        loop {
            match self.rx.recv() {
                Ok(packet) => {
                    if let Some(message) = self.whole.borrow_mut().take(packet) {
                        return Ok(Some(message));
                    }
                }
                Err(IpcError::Disconnected) => return Ok(None),
                Err(e) => return Err(Error::Receive(e)),
            }
        }
    }
}

impl BatchSender {
    /// Sends the batch (blocking while the receiver is full) and empties it.
    pub fn send(&self, batch: &mut BatchWriter) -> Result<()> {
        if !batch.is_empty() {
            heartbeat::waiting_on_peer(|| fragment::send(&self.0, batch.bytes())).map_err(|e| Error::Send(e.into()))?;
            emit(BatchSent { events: batch.len() as u64 });
            batch.clear();
        }
        Ok(())
    }

    /// Sends an encoded message as it is (a reader's page), blocking while the receiver is full.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        heartbeat::waiting_on_peer(|| fragment::send(&self.0, bytes)).map_err(|e| Error::Send(e.into()))
    }

    pub fn send_pill(&self) -> Result<()> {
        self.send_bytes(&Frame::pill())
    }

    /// The pill of a finite source that read everything.
    pub fn send_end(&self) -> Result<()> {
        self.send_bytes(&Frame::end())
    }
}

impl BatchReceiver {
    pub fn recv(&self) -> Result<Option<Vec<u8>>> {
        self.0.recv()
    }
}

/// Source → a table scan's reader: the next chunk to read, or the end.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Read chunk `lane`: rows with `after < key <= upto` (either unbounded when absent), in key order.
    /// `epoch` tells this claim of the chunk from an earlier one: pages carry it back.
    Chunk { lane: Lane, epoch: u64, after: Option<crate::sql::key::Key>, upto: Option<crate::sql::key::Key> },
    /// Nothing more to read: exit.
    Stop,
}

pub type WorkSender = IpcSender<Work>;
pub type WorkReceiver = IpcReceiver<Work>;

pub fn work_channel() -> Result<(WorkSender, WorkReceiver)> {
    ipc::channel().map_err(Error::CreateChannel)
}

/// A reader → source: one page of a chunk's rows, in key order, each with its key and the row as a JSON object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub lane: Lane,
    /// The claim the page was read for: a page of an earlier claim of the same chunk is not this one's.
    pub epoch: u64,
    /// The page's number in its claim: with the epoch, what its watermarks in a followed table's change stream name.
    pub number: u32,
    /// A followed table's page: the transactions its snapshot did not see.
    pub unseen: crate::source::table::follow::slot::Unseen,
    pub rows: Vec<(crate::sql::key::Key, serde_bytes::ByteBuf)>,
    /// The chunk's last page: the reader wants its next chunk.
    pub last: bool,
}

impl Page {
    pub fn encode(&self) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(self, bincode_config()).map_err(Error::Encode)
    }

    pub fn decode(bytes: &[u8]) -> Result<Page> {
        bincode::serde::decode_from_slice(bytes, bincode_config()).map(|(p, _)| p).map_err(Error::Decode)
    }
}

/// Sink → source: which source positions are done (delivered, or safely in the dead-letter destination).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AckMsg {
    Acked(Vec<Position>),
    /// The sink has flushed everything it was given and reported every ack: the drain is complete.
    Done,
}

#[derive(Debug)]
pub struct AckSender(IpcBytesSender);

#[derive(Debug)]
pub struct AckReceiver(Packets);

pub fn ack_channel() -> Result<(AckSender, AckReceiver)> {
    let (tx, rx) = ipc::bytes_channel().map_err(Error::CreateChannel)?;
    Ok((AckSender(tx), AckReceiver(Packets::new(rx))))
}

impl AckSender {
    pub fn send(&self, msg: &AckMsg) -> Result<()> {
        let bytes = bincode::serde::encode_to_vec(msg, bincode_config()).map_err(Error::Encode)?;
        fragment::send(&self.0, &bytes).map_err(|e| Error::Send(e.into()))
    }
}

impl AckReceiver {
    /// `None` once the sink is gone.
    pub fn recv(&self) -> Result<Option<AckMsg>> {
        match self.0.recv()? {
            Some(bytes) => {
                bincode::serde::decode_from_slice(&bytes, bincode_config()).map(|(m, _)| Some(m)).map_err(Error::Decode)
            }
            None => Ok(None),
        }
    }
}

/// Supervisor → source.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Start the drain: stop taking events, flush, send the pills, commit what comes back.
    Drain,
}

/// Child → supervisor: what drives a child's state in the supervisor's process table.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The child is set up (clients created, topics checked) and working.
    Ready { pid: i32 },
    /// The source's lanes changed: a Kafka consumer's assignment, the first of which means it joined its group.
    Assigned { pid: i32, lanes: Vec<Lane> },
    /// The child's stage is making progress, or waiting on a peer; silence longer than `--child-timeout` means hung.
    Alive { pid: i32, stats: Box<StageStats> },
    /// The child is about to exit with `code` for this reason; the supervisor prints it once. `peer_gone`: the
    /// reason is only that a neighbouring stage went away.
    Failed { pid: i32, code: i32, message: String, peer_gone: bool },
    /// A finite source (a table scan) has read everything; it drains the pipeline itself, and the run then ends.
    Finished { pid: i32 },
}

pub type ControlSender = IpcSender<Control>;
pub type ControlReceiver = IpcReceiver<Control>;
pub type ReportSender = IpcSender<Report>;
pub type ReportReceiver = IpcReceiver<Report>;

pub fn control_channel() -> Result<(ControlSender, ControlReceiver)> {
    ipc::channel().map_err(Error::CreateChannel)
}

pub fn report_channel() -> Result<(ReportSender, ReportReceiver)> {
    ipc::channel().map_err(Error::CreateChannel)
}
