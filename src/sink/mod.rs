//! Sinks: where events go. Today a Kafka producer ([`kafka`]).
//!
//! A sink reads every worker's output, writes each event to the destination (or a rejected one to the dead-letter
//! destination), and acknowledges each event's position back to the source once the destination has it. Once every
//! worker has sent its poison pill, it flushes, sends the last acknowledgements and `Done`.

pub mod kafka;
pub mod refusals;
pub mod table;

use crate::aggregate::{self, Operator, OPERATOR_LANE};
use crate::channel::batch::Frame;
use crate::channel::ipc::{AckMsg, AckSender, BatchReceiver};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::position::{Lane, Position};
use crate::stage::Role;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

/// The channel ends a sink owns: one batch channel from each worker, and the acknowledgements to the source.
pub struct SinkEnds {
    pub inputs: Vec<BatchReceiver>,
    pub acks: AckSender,
}

/// What a sink reads from its workers, in each worker's order.
pub enum Input {
    Batch(Vec<u8>),
    /// The source lanes that go through this worker now (only an aggregation asks for them).
    Lanes {
        worker: usize,
        lanes: Vec<Lane>,
    },
    /// A worker sent its pill (`clean`; `exhausted`: the source read everything) or its channel closed.
    End {
        worker: usize,
        clean: bool,
        exhausted: bool,
    },
}

/// Where a sink's acknowledgements go: the source, and with an aggregation the operator too, which alone hears
/// those of what it emitted ([`OPERATOR_LANE`]).
pub struct Acks {
    to_source: AckSender,
    /// Several sinks: a bare position (an input routed elsewhere) is, for `--max-dead-letters`, as good as written.
    routed: bool,
    operator: Option<Tee>,
}

/// The operator's ears (acknowledgements of what it emitted) and its thread.
type Tee = (Sender<Vec<Position>>, std::thread::JoinHandle<Result<()>>);

impl Acks {
    pub fn send(&self, msg: &AckMsg) -> Result<()> {
        match (msg, &self.operator) {
            (AckMsg::Acked(all), Some((tee, _))) => {
                let _ = tee.send(all.clone());
                let theirs: Vec<Position> = all.iter().copied().filter(|p| p.lane != OPERATOR_LANE).collect();
                match theirs.is_empty() {
                    true => Ok(()),
                    false => self.to_source.send(&AckMsg::Acked(theirs)),
                }
            }
            _ => self.to_source.send(msg),
        }
    }

    /// Whether an aggregation takes the inputs: an input it took into its state is, for `--max-dead-letters`, as
    /// good as one written (the share judged is of the events taken in, not of the few results).
    pub fn aggregating(&self) -> bool {
        self.operator.is_some()
    }

    /// Whether an input that reaches this sink with no output counts as written for `--max-dead-letters`: an
    /// aggregation's input (in its state), or one the route sent to other sinks. Judged on this sink's outputs alone,
    /// a sink that gets few of them would stop the run over a handful of dead letters.
    pub fn bare_counts(&self) -> bool {
        self.aggregating() || self.routed
    }

    /// Waits for the operator to save its last state, once the writer has flushed: before `Done`, so that a run
    /// that says it is done has its state on disk.
    pub fn finish(&mut self) -> Result<()> {
        if let Some((tee, operator)) = self.operator.take() {
            drop(tee);
            operator.join().map_err(|_| Error::ThreadPanicked { name: "aggregate" })??;
        }
        Ok(())
    }
}

/// What the sink's loop reads, and where its acknowledgements go: the workers' outputs as they come, or, with
/// `--aggregate`, what the operator makes of them.
pub fn feed(cfg: &Config, ends: SinkEnds) -> Result<(Receiver<Input>, Acks)> {
    let workers = ends.inputs.len();
    let from_workers = read_workers(ends.inputs)?;
    if cfg.aggregation.is_none() {
        return Ok((from_workers, Acks { to_source: ends.acks, routed: cfg.sinks().len() > 1, operator: None }));
    }
    let (to_sink, inputs) = bounded(workers * 2);
    let (tee, acked) = unbounded();
    // The operator's jq values are not Send: it is built on its thread, which says whether it could be.
    let (opened, open) = bounded(1);
    let cfg = cfg.clone();
    let operator = std::thread::Builder::new()
        .name("aggregate".into())
        .spawn(move || {
            let op = match Operator::open(&cfg, workers) {
                Ok(op) => {
                    let _ = opened.send(Ok(()));
                    op
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                    return Ok(());
                }
            };
            aggregate::run(op, workers, from_workers, acked, to_sink)
        })
        .map_err(|source| Error::SpawnThread { name: "aggregate", source })?;
    open.recv().map_err(|_| Error::ThreadPanicked { name: "aggregate" })??;
    Ok((inputs, Acks { to_source: ends.acks, routed: false, operator: Some((tee, operator)) }))
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
                Ok(Some(bytes)) => {
                    let last = match Frame::parse(&bytes) {
                        Ok(Frame::Pill) => Some(Input::End { worker, clean: true, exhausted: false }),
                        Ok(Frame::End) => Some(Input::End { worker, clean: true, exhausted: true }),
                        Ok(Frame::Lanes(lanes)) => Some(Input::Lanes { worker, lanes }),
                        _ => None,
                    };
                    match last {
                        Some(Input::Lanes { worker, lanes }) => {
                            if tx.send(Input::Lanes { worker, lanes }).is_err() {
                                return;
                            }
                            continue;
                        }
                        Some(end) => end,
                        None => {
                            if tx.send(Input::Batch(bytes)).is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
                Ok(None) => Input::End { worker, clean: false, exhausted: false },
                Err(e) => {
                    log::error!("reading from {}: {e}", Role::Worker(worker));
                    Input::End { worker, clean: false, exhausted: false }
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
