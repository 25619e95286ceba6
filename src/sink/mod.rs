//! Sinks: where events go. Today a Kafka producer ([`kafka`]).
//!
//! A sink reads every worker's output, writes each event to the destination (or a rejected one to the dead-letter
//! destination), and acknowledges each event's position back to the source once the destination has it. Once every
//! worker has sent its poison pill, it flushes, sends the last acknowledgements and `Done`.

pub mod kafka;
pub mod refusals;
pub mod table;

use crate::channel::batch::Frame;
use crate::channel::ipc::{AckSender, BatchReceiver};
use crate::error::{Error, Result};
use crate::stage::Role;
use crossbeam_channel::{bounded, Receiver};

/// The channel ends a sink owns: one batch channel from each worker, and the acknowledgements to the source.
pub struct SinkEnds {
    pub inputs: Vec<BatchReceiver>,
    pub acks: AckSender,
}

/// What a sink reads from its workers, in each worker's order.
pub enum Input {
    Batch(Vec<u8>),
    /// A worker sent its pill (`clean`) or its channel closed.
    End {
        worker: usize,
        clean: bool,
    },
}

/// A worker's end as a sink tells it: one without its poison pill leaves its unacknowledged input to be read again,
/// which `what` says in the sink's words.
pub fn worker_ended(worker: usize, clean: bool, what: &str) {
    if !clean {
        log::warn!("{} went away without its poison pill; its {what}", Role::Worker(worker));
    }
}

/// One reader thread per worker feeding one channel, so that a slow worker never holds up the others and each
/// worker's order (hence each lane's) is kept.
pub fn read_workers(inputs: Vec<BatchReceiver>) -> Result<Receiver<Input>> {
    // Two batches per worker buffered here; beyond that the readers stop reading and the workers are held back.
    let (tx, rx) = bounded(inputs.len() * 2);
    for (worker, input) in inputs.into_iter().enumerate() {
        let tx = tx.clone();
        let read = move || loop {
            let end = match input.recv() {
                Ok(Some(bytes)) if matches!(Frame::parse(&bytes), Ok(Frame::Pill)) => {
                    Input::End { worker, clean: true }
                }
                Ok(Some(bytes)) => {
                    if tx.send(Input::Batch(bytes)).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => Input::End { worker, clean: false },
                Err(e) => {
                    log::error!("reading from {}: {e}", Role::Worker(worker));
                    Input::End { worker, clean: false }
                }
            };
            let _ = tx.send(end);
            return;
        };
        std::thread::Builder::new()
            .name(format!("from-{}", Role::Worker(worker)))
            .spawn(read)
            .map_err(|source| Error::SpawnThread { name: "worker reader", source })?;
    }
    Ok(rx)
}
