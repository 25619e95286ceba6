//! Sources: where events come from. Today a Kafka consumer ([`kafka`]).
//!
//! Whatever the source, it does the same things, and those live here, apart from any client:
//! - [`flow`] routes each lane to one worker (so a lane's order survives), batches records to the workers, tracks
//!   every event in flight, applies the sink's acknowledgements, and runs the drain handshake;
//! - [`watermark`] says which position of each lane may be committed: the end of its contiguous acknowledged run;
//! - [`gate`] bounds the events in flight and says when to hold back or pause;
//! - [`pace`] caps the rate events are taken at (`--max-rate`).
//!
//! A source owns the pipeline's start (it takes events in) and its end (it commits): it is started last and is the
//! first told to drain.

pub mod ack_join;
pub mod flow;
pub mod gate;
pub mod kafka;
pub mod pace;
pub mod table;
pub mod watermark;

use crate::channel::ipc::{AckReceiver, BatchReceiver, BatchSender, Control, ControlReceiver, WorkSender};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The channel ends a source owns: one batch channel to each worker, the sink's acknowledgements, and the
/// supervisor's drain request.
pub struct SourceEnds {
    pub to_workers: Vec<BatchSender>,
    /// One per sink: an input is acknowledged once every sink has acknowledged it.
    pub acks: Vec<AckReceiver>,
    pub control: ControlReceiver,
    /// A table scan's readers: the work sent to each, and the pages it sends back. None for Kafka.
    pub readers: Vec<(WorkSender, BatchReceiver)>,
}

/// A flag raised when the supervisor asks for the drain, or is gone (then draining is all that is left to do).
pub fn drain_flag(control: ControlReceiver) -> Result<Arc<AtomicBool>> {
    let drain = Arc::new(AtomicBool::new(false));
    let flag = drain.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let (Ok(Control::Drain) | Err(_)) = control.recv();
            flag.store(true, Ordering::SeqCst);
        })
        .map_err(|source| Error::SpawnThread { name: "control", source })?;
    Ok(drain)
}
