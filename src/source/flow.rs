//! How a source's events flow through the pipeline and come back acknowledged, whatever the source.
//!
//! Lane `l` always goes to the same worker (`position::worker_of`: `l mod N` for one topic or a table), so a lane's
//! order survives. Records are batched per worker; a batch goes when
//! it is full, when its linger has passed, or when the source asks. Every event is tracked in the [`Watermarks`]
//! until the sink acknowledges it. A thread reads the acknowledgements off their channel, so a send to a full worker
//! can always complete: the sink is never stuck behind the source.
//!
//! The drain: flush, one poison pill per worker, then read acknowledgements until the sink says `Done`.

use crate::channel::batch::{BatchWriter, Frame, Record};
use crate::channel::ipc::{AckMsg, AckReceiver, BatchSender};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::position::{Lane, Position};
use crate::source::ack_join::AckJoin;
use crate::source::watermark::Watermarks;
use crate::telemetry::events::{emit, Acked, Consumed, InFlight, LaneRewound, PositionsSkipped};
use crate::telemetry::heartbeat;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

pub struct Flow {
    batches: Vec<BatchWriter>,
    senders: Vec<BatchSender>,
    marks: Watermarks,
    /// Every sink's acknowledgements, each with the sink's index.
    acks: Receiver<(usize, Option<AckMsg>)>,
    join: AckJoin,
    /// Per sink: it said `Done`.
    done: Vec<bool>,
    sink_done: bool,
    sink_gone: bool,
    /// The source numbers its events across lanes: a lane's numbers leave gaps that are no one's loss.
    sparse: bool,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The sink flushed everything and every event was acknowledged.
    Complete,
    /// The deadline came first: this many events are unacknowledged.
    TimedOut { unacked: usize },
    /// The sink went away (or said `Done` with events still unacknowledged).
    Broken { unacked: usize },
}

impl Flow {
    /// Starts a thread per sink that reads its acknowledgements.
    pub fn new(cfg: &Config, to_workers: Vec<BatchSender>, acks: Vec<AckReceiver>) -> Result<Flow> {
        let (tx, rx) = unbounded();
        let sinks = acks.len();
        for (sink, acks) in acks.into_iter().enumerate() {
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("acks-{sink}"))
                .spawn(move || loop {
                    match acks.recv() {
                        Ok(Some(msg)) => {
                            if tx.send((sink, Some(msg))).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = tx.send((sink, None));
                            return;
                        }
                        Err(e) => {
                            log::error!("reading acknowledgements: {e}");
                            let _ = tx.send((sink, None));
                            return;
                        }
                    }
                })
                .map_err(|source| Error::SpawnThread { name: "acks", source })?;
        }
        Ok(Flow {
            batches: to_workers
                .iter()
                .map(|_| BatchWriter::new(cfg.batch_events, cfg.batch_bytes, cfg.batch_linger))
                .collect(),
            senders: to_workers,
            marks: Watermarks::new(),
            acks: rx,
            join: AckJoin::new(sinks),
            done: vec![false; sinks],
            sink_done: false,
            sink_gone: false,
            sparse: false,
        })
    }

    /// Sends the record towards its lane's worker and tracks it until it is acknowledged.
    pub fn dispatch(&mut self, record: &Record<'_>) -> Result<()> {
        let Position { lane, seq } = record.at;
        let worker = crate::position::worker_of(lane, self.batches.len());
        self.batches[worker].push(record)?;
        match self.marks.track(record.at).filter(|_| !self.sparse) {
            // One-offset gaps are transaction markers; larger ones are data the broker no longer has or never gave us
            // (retention deleted it before it was read, compaction, or a broker bug).
            Some(before) if seq - before > 2 => emit(PositionsSkipped { lane, first: before + 1, last: seq - 1 }),
            Some(before) if seq <= before => {
                emit(LaneRewound { lane, from: before, to: seq, in_flight: self.marks.in_flight_of(lane) - 1 })
            }
            _ => {}
        }
        emit(Consumed { events: 1 });
        if self.batches[worker].is_full() {
            self.senders[worker].send(&mut self.batches[worker])?;
        }
        Ok(())
    }

    /// Events are numbered across lanes (a followed table's changes): gaps in a lane are not reported.
    pub fn number_across_lanes(&mut self) {
        self.sparse = true;
    }

    /// Sends the batches whose linger has passed.
    pub fn flush_due(&mut self, now: Instant) -> Result<()> {
        for (batch, sender) in self.batches.iter_mut().zip(&self.senders) {
            if batch.is_due(now) {
                sender.send(batch)?;
            }
        }
        Ok(())
    }

    /// Sends every partial batch.
    pub fn flush_all(&mut self) -> Result<()> {
        for (batch, sender) in self.batches.iter_mut().zip(&self.senders) {
            sender.send(batch)?;
        }
        Ok(())
    }

    /// Applies the acknowledgements that have come back, waiting up to `wait` for the first one.
    pub fn apply_acks(&mut self, wait: Duration) {
        heartbeat::tick();
        let mut first = !wait.is_zero();
        loop {
            let next = if std::mem::take(&mut first) {
                self.acks.recv_timeout(wait).map_err(|e| match e {
                    RecvTimeoutError::Timeout => TryRecvError::Empty,
                    RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                })
            } else {
                self.acks.try_recv()
            };
            match next {
                Ok((sink, Some(AckMsg::Acked(acks)))) => {
                    let (join, marks) = (&mut self.join, &mut self.marks);
                    // A lane let go meanwhile is not waited for: its late acknowledgements are dropped, not joined.
                    let known = acks
                        .into_iter()
                        .filter(|&at| marks.tracks(at.lane) && join.ack(sink, at) && marks.ack(at))
                        .count();
                    emit(Acked { events: known as u64 });
                }
                Ok((sink, Some(AckMsg::Done))) => {
                    self.done[sink] = true;
                    self.sink_done = self.done.iter().all(|&d| d);
                }
                // A sink that went away before it said `Done`: nothing more comes from it.
                Ok((sink, None)) => {
                    if !self.done[sink] {
                        self.sink_gone = true;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.sink_gone = true;
                    break;
                }
            }
        }
        emit(InFlight { events: self.marks.in_flight() });
    }

    /// The sink has said `Done`, or is gone: no acknowledgement will come any more.
    pub fn finished(&self) -> bool {
        self.sink_done || self.sink_gone
    }

    pub fn marks(&self) -> &Watermarks {
        &self.marks
    }

    pub fn marks_mut(&mut self) -> &mut Watermarks {
        &mut self.marks
    }

    /// Drops a lane that is no longer ours: its events are re-read by its next owner.
    pub fn forget(&mut self, lane: Lane) {
        self.marks.forget(lane);
        self.join.forget(lane);
    }

    /// Waits until the events of `lanes` are acknowledged, the sink is gone, or `deadline`; returns how many of them
    /// are still unacknowledged. Used before lanes are let go, so their next owner starts where this one stopped.
    pub fn settle(&mut self, lanes: &[Lane], deadline: Instant) -> usize {
        if let Err(e) = self.flush_all() {
            log::warn!("cannot flush batches before the rebalance: {e}");
        }
        let pending = |f: &Flow| lanes.iter().map(|&l| f.marks.in_flight_of(l)).sum::<usize>();
        self.await_acks(deadline, |f| pending(f) == 0);
        pending(self)
    }

    /// Applies acknowledgements as they come until `done` holds, the sink has finished, or `deadline`.
    fn await_acks(&mut self, deadline: Instant, done: impl Fn(&Flow) -> bool) {
        while !done(self) && !self.finished() && Instant::now() < deadline {
            self.apply_acks(Duration::from_millis(20));
        }
    }

    /// Tells each worker's channel which of `lanes` go through it, for the sink's event time; only an aggregation
    /// reads it.
    pub fn announce(&mut self, lanes: &[Lane]) -> Result<()> {
        self.flush_all()?;
        let workers = self.senders.len() as Lane;
        for (i, s) in self.senders.iter().enumerate() {
            let mine: Vec<Lane> =
                lanes.iter().copied().filter(|&l| crate::position::worker_of(l, workers as usize) == i).collect();
            s.send_bytes(&Frame::lanes(&mine)?)?;
        }
        Ok(())
    }

    /// The drain: flush, one poison pill per worker (`exhausted`: the pill of a finite source that read everything),
    /// then acknowledgements until the sink is done or `deadline`.
    pub fn drain(&mut self, deadline: Instant, exhausted: bool) -> Drained {
        if let Err(e) = self.flush_all() {
            log::warn!("cannot flush the last batches: {e}");
        }
        for (i, s) in self.senders.iter().enumerate() {
            let sent = if exhausted { s.send_end() } else { s.send_pill() };
            if let Err(e) = sent {
                log::warn!("cannot send the poison pill to {}: {e}", crate::stage::Role::Worker(i));
            }
        }
        self.await_acks(deadline, |_| false);
        self.apply_acks(Duration::ZERO);
        let unacked = self.marks.in_flight();
        match (self.sink_done, self.sink_gone) {
            (true, _) if unacked == 0 => Drained::Complete,
            (false, false) => Drained::TimedOut { unacked },
            _ => Drained::Broken { unacked },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::batch::Frame;
    use crate::channel::ipc::{ack_channel, batch_channel, AckSender, BatchReceiver};
    use crate::config::Cli;
    use clap::Parser;

    fn flow(workers: usize) -> (Flow, Vec<BatchReceiver>, AckSender) {
        let cfg = Config::from_cli(&Cli::parse_from(["supervisor"]));
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| batch_channel().unwrap()).unzip();
        let (ack_tx, ack_rx) = ack_channel().unwrap();
        (Flow::new(&cfg, senders, vec![ack_rx]).unwrap(), receivers, ack_tx)
    }

    fn record(lane: Lane, seq: i64) -> Record<'static> {
        Record {
            at: Position::new(lane, seq),
            timestamp: None,
            key: None,
            headers: vec![],
            payload: None,
            dead_letter: None,
            topic: None,
            outputs: 1,
        }
    }

    fn positions(message: &[u8]) -> Vec<Position> {
        let Ok(Frame::Records(rs)) = Frame::parse(message) else { panic!("not a batch") };
        rs.map(|r| r.unwrap().at).collect()
    }

    #[test]
    fn a_lane_always_goes_to_the_same_worker_in_order() {
        let (mut f, workers, _acks) = flow(2);
        for seq in 0..3 {
            for lane in 0..4 {
                f.dispatch(&record(lane, seq)).unwrap();
            }
        }
        f.flush_all().unwrap();
        let to_0 = positions(&workers[0].recv().unwrap().unwrap());
        let to_1 = positions(&workers[1].recv().unwrap().unwrap());
        assert!(to_0.iter().all(|p| p.lane % 2 == 0) && to_1.iter().all(|p| p.lane % 2 == 1));
        let lane_2: Vec<i64> = to_0.iter().filter(|p| p.lane == 2).map(|p| p.seq).collect();
        assert_eq!(lane_2, vec![0, 1, 2]);
        assert_eq!(f.marks().in_flight(), 12);
    }

    #[test]
    fn acknowledgements_move_the_committable_positions() {
        let (mut f, _workers, acks) = flow(1);
        for seq in 10..13 {
            f.dispatch(&record(0, seq)).unwrap();
        }
        acks.send(&AckMsg::Acked(vec![Position::new(0, 11), Position::new(0, 10)])).unwrap();
        f.apply_acks(Duration::from_secs(5));
        assert_eq!(f.marks().positions(), vec![Position::new(0, 12)]);
        assert_eq!(f.marks().in_flight(), 1);
    }

    #[test]
    fn a_drain_sends_the_pills_and_completes_when_the_sink_is_done() {
        let (mut f, workers, acks) = flow(2);
        f.dispatch(&record(1, 0)).unwrap();
        let sink = std::thread::spawn(move || {
            for w in &workers {
                // every worker gets its pill after its last batch
                while !matches!(Frame::parse(&w.recv().unwrap().unwrap()).unwrap(), Frame::Pill) {}
            }
            acks.send(&AckMsg::Acked(vec![Position::new(1, 0)])).unwrap();
            acks.send(&AckMsg::Done).unwrap();
        });
        assert_eq!(f.drain(Instant::now() + Duration::from_secs(10), false), Drained::Complete);
        sink.join().unwrap();
    }

    #[test]
    fn a_drain_without_the_sink_is_broken_or_times_out() {
        let (mut f, _workers, acks) = flow(1);
        f.dispatch(&record(0, 0)).unwrap();
        assert_eq!(f.drain(Instant::now() + Duration::from_millis(50), false), Drained::TimedOut { unacked: 1 });
        drop(acks);
        assert_eq!(f.drain(Instant::now() + Duration::from_secs(10), false), Drained::Broken { unacked: 1 });
    }
}
