//! Every channel end of one generation of the pipeline, before the forks hand them out, and which stage runs in
//! which role.
//!
//! Each fork takes its role's ends in both processes: the child keeps them and drops everything else, the parent
//! drops them. So every end lives in exactly one process, and a stage that dies closes its channels for the others to
//! see.

use crate::channel::ipc::{self, ControlSender, ReportSender};
use crate::config::Config;
use crate::error::Result;
use crate::sink::kafka::KafkaSink;
use crate::sink::table::TableSink;
use crate::sink::SinkEnds;
use crate::source::kafka::KafkaSource;
use crate::source::table::reader::{ReaderEnds, TableReader};
use crate::source::table::TableSource;
use crate::source::SourceEnds;
use crate::stage::{child, Role};
use crate::worker::{Worker, WorkerEnds};
use nix::unistd::Pid;
use std::collections::VecDeque;

/// One role's channel ends.
pub enum Ends {
    Source(SourceEnds),
    Reader(ReaderEnds),
    Worker(WorkerEnds),
    Sink(SinkEnds),
}

/// Fresh channels for a generation with `workers` workers, `readers` table readers and `sinks` sinks: each role's
/// ends, in start order (sinks, workers, readers, source), and the supervisor's control sender. Every worker has a
/// channel to every sink, and every sink its own acknowledgement channel to the source.
pub fn wire(workers: usize, readers: usize, sinks: usize) -> Result<(VecDeque<(Role, Ends)>, ControlSender)> {
    let mut to_workers = Vec::new();
    let mut sink_inputs: Vec<Vec<_>> = (0..sinks).map(|_| Vec::new()).collect();
    let mut roles = VecDeque::new();
    for i in 0..workers {
        let (tx, input) = ipc::batch_channel()?;
        to_workers.push(tx);
        let mut outputs = Vec::new();
        for inputs in &mut sink_inputs {
            let (output, rx) = ipc::batch_channel()?;
            outputs.push(output);
            inputs.push(rx);
        }
        roles.push_back((Role::Worker(i), Ends::Worker(WorkerEnds { input, outputs })));
    }
    let mut acks = Vec::new();
    for (i, inputs) in sink_inputs.into_iter().enumerate().rev() {
        let (ack_tx, ack_rx) = ipc::ack_channel()?;
        acks.push(ack_rx);
        roles.push_front((Role::Sink(i), Ends::Sink(SinkEnds { inputs, acks: ack_tx })));
    }
    acks.reverse();
    let (control_tx, control_rx) = ipc::control_channel()?;
    let mut to_readers = Vec::new();
    for i in 0..readers {
        let (work_tx, work) = ipc::work_channel()?;
        let (pages, pages_rx) = ipc::batch_channel()?;
        to_readers.push((work_tx, pages_rx));
        roles.push_back((Role::Reader(i), Ends::Reader(ReaderEnds { work, pages })));
    }
    roles.push_back((
        Role::Source,
        Ends::Source(SourceEnds { to_workers, acks, control: control_rx, readers: to_readers }),
    ));
    Ok((roles, control_tx))
}

impl Ends {
    /// In a freshly forked child: runs the stage these ends belong to and returns the exit code: the source and the sink
    /// as their specs say (a topic or a table), the workers their transform.
    pub fn run_child(self, role: Role, parent: Pid, cfg: &Config, reports: ReportSender) -> i32 {
        match self {
            Ends::Source(ends) if cfg.source().is_table() => {
                child::run::<TableSource>(role, parent, cfg, ends, reports)
            }
            Ends::Source(ends) => child::run::<KafkaSource>(role, parent, cfg, ends, reports),
            Ends::Reader(ends) => child::run::<TableReader>(role, parent, cfg, ends, reports),
            Ends::Worker(ends) => child::run::<Worker>(role, parent, cfg, ends, reports),
            Ends::Sink(ends) => {
                // The sink's own destination is what `sink()`, `--dest-topic` and `--dlq-topic` say in its process.
                let index = match role {
                    Role::Sink(i) => i,
                    _ => 0,
                };
                let cfg = &cfg.for_sink(index);
                match cfg.sink().is_table() {
                    true => child::run::<TableSink>(role, parent, cfg, ends, reports),
                    false => child::run::<KafkaSink>(role, parent, cfg, ends, reports),
                }
            }
        }
    }
}
