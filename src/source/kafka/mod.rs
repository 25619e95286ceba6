//! The consumer stage: reads the source topic, batches events to the hashers (a source partition always to the
//! same hasher), and commits only what the producer has acknowledged.
//!
//! Threads: the main thread polls Kafka and sends batches; one thread reads acks from the producer and one reads the
//! supervisor's control messages. The ack reader never blocks on anything but its channel, so a send to a full
//! hasher can always complete: the producer is never stuck behind the consumer.
//!
//! Bound: at most `--queue-capacity` events are in flight (consumed, not acked). At the bound the consumer stops
//! taking events; if that lasts, it pauses its partitions so that it can keep calling poll (and stay in its group)
//! without taking more.

use crate::channel::batch::{BatchWriter, Record};
use crate::channel::ipc::{AckMsg, AckReceiver, BatchSender, Control, ControlReceiver};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::source::gate::{Gate, Step};
use crate::source::watermark::Watermarks;
use crate::stage::child::RateLimitedLog;
use crate::telemetry::counters::{self as stats, Counters, PartitionStats};
use crate::telemetry::heartbeat;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, TryRecvError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use serde_bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub struct ConsumerEnds {
    pub to_hashers: Vec<BatchSender>,
    pub acks: AckReceiver,
    pub control: ControlReceiver,
}

/// How long the consumer stays held back at the bound before it pauses its partitions (pausing drops librdkafka's
/// prefetched messages, which are then fetched again, so it is not done for short stalls).
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// The longest a poll may block, so that a drain request is seen quickly.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// The state shared between the poll loop and the rebalance callback (which librdkafka runs inside poll).
struct Flow {
    batches: Vec<BatchWriter>,
    senders: Vec<BatchSender>,
    marks: Watermarks,
    acks: Receiver<AckMsg>,
    producer_done: bool,
    producer_gone: bool,
    skip_log: RateLimitedLog,
}

impl Flow {
    fn dispatch(&mut self, m: &BorrowedMessage<'_>) -> Result<()> {
        let partition = m.partition();
        let hasher = partition.rem_euclid(self.batches.len() as i32) as usize;
        let headers =
            m.headers().map(|hs| hs.iter().map(|h| (h.key, h.value.map(Bytes::new))).collect()).unwrap_or_default();
        let record = Record {
            partition,
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(Bytes::new),
            headers,
            payload: m.payload().map(Bytes::new),
            dead_letter: None,
        };
        self.batches[hasher].push(&record)?;
        if let Some(before) = self.marks.track(partition, m.offset()) {
            // One-offset gaps are transaction markers; larger ones are data the broker no longer has or never
            // gave us (retention deleted it before it was read, compaction, or a broker bug).
            if m.offset() - before > 2 {
                if let Some(held_back) = self.skip_log.ready() {
                    log::warn!(
                        "partition {partition}: offsets {}..{} were skipped by the broker (deleted by retention \
                         before they were read, or compacted) ({held_back} more skips not logged)",
                        before + 1,
                        m.offset() - 1
                    );
                }
            }
        }
        Counters::add(&stats::STAGE.consumed, 1);
        if self.batches[hasher].is_full() {
            self.senders[hasher].send(&mut self.batches[hasher])?;
        }
        Ok(())
    }

    fn flush_due(&mut self, now: Instant) -> Result<()> {
        for (batch, sender) in self.batches.iter_mut().zip(&self.senders) {
            if batch.is_due(now) {
                sender.send(batch)?;
            }
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        for (batch, sender) in self.batches.iter_mut().zip(&self.senders) {
            sender.send(batch)?;
        }
        Ok(())
    }

    /// Applies the acks that have come back, waiting up to `wait` for the first one.
    fn apply_acks(&mut self, wait: Duration) {
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
                Ok(AckMsg::Acked(acks)) => {
                    for (p, o) in acks {
                        if self.marks.ack(p, o) {
                            Counters::add(&stats::STAGE.acked, 1);
                        }
                    }
                }
                Ok(AckMsg::Done) => self.producer_done = true,
                Err(TryRecvError::Empty) => {
                    stats::STAGE.in_flight.store(self.marks.in_flight() as u64, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                Err(TryRecvError::Disconnected) => {
                    self.producer_gone = true;
                    return;
                }
            }
        }
    }

    fn finished(&self) -> bool {
        self.producer_done || self.producer_gone
    }
}

fn positions_list(topic: &str, positions: &[(i32, i64)]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in positions {
        tpl.add_partition_offset(topic, p, Offset::Offset(o)).map_err(|e| Error::Fatal(format!("offset list: {e}")))?;
    }
    Ok(tpl)
}

/// Called once, when the consumer has joined its group.
pub type OnJoined = Box<dyn Fn() + Send + Sync>;

pub struct Ctx {
    flow: Mutex<Flow>,
    on_joined: OnJoined,
    joined: AtomicBool,
    topic: String,
    settle_timeout: Duration,
}

impl Ctx {
    fn flow(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let parts = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired)
            .map(|p| PartitionStats { partition: p.partition, committed: p.committed_offset, lag: p.consumer_lag })
            .collect();
        stats::STAGE.set_partitions(parts);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::stage::child::librdkafka_log(level, fac, message);
    }
}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                log::info!("partitions {parts:?} assigned");
                if !self.joined.swap(true, Ordering::SeqCst) {
                    (self.on_joined)();
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => log::warn!("rebalance failed: {e}"),
        }
    }

    /// Before partitions go, their in-flight events are settled and what was acked is committed, so the next owner
    /// starts where this one really stopped.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let parts: Vec<i32> = revoked.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
        if parts.is_empty() {
            return;
        }
        let mut flow = self.flow();
        if let Err(e) = flow.flush_all() {
            log::warn!("cannot flush batches before the rebalance: {e}");
        }
        let deadline = Instant::now() + self.settle_timeout;
        let pending = |f: &Flow| parts.iter().map(|&p| f.marks.in_flight_of(p)).sum::<usize>();
        while pending(&flow) > 0 && !flow.finished() && Instant::now() < deadline {
            flow.apply_acks(Duration::from_millis(20));
        }
        let left = pending(&flow);
        if consumer.assignment_lost() {
            log::warn!(
                "partitions {parts:?} lost: the group moved on without us (an outage or a stall longer than the \
                 session timeout); their events after the last commit are re-read"
            );
        }
        store(consumer, &self.topic, &mut flow);
        let positions: Vec<(i32, i64)> = parts.iter().filter_map(|&p| flow.marks.position(p).map(|o| (p, o))).collect();
        if !positions.is_empty() && !consumer.assignment_lost() {
            match positions_list(&self.topic, &positions).map(|tpl| consumer.commit(&tpl, CommitMode::Sync)) {
                Ok(Ok(())) => log::info!("partitions {parts:?} revoked: committed {positions:?}"),
                Ok(Err(e)) => log::warn!("partitions {parts:?} revoked: commit failed ({e}); they are re-read"),
                Err(e) => log::warn!("partitions {parts:?} revoked: {e}"),
            }
        }
        if left > 0 {
            log::warn!("partitions {parts:?} revoked with {left} events unacknowledged: the next owner re-reads them");
        }
        for p in parts {
            flow.marks.forget(p);
        }
    }
}

/// Creates the client, checks the source topic and subscribes; the supervisor waits for this before it says ready.
pub fn connect(cfg: &Config, ends: ConsumerEnds, on_joined: OnJoined) -> Result<(BaseConsumer<Ctx>, Arc<AtomicBool>)> {
    let ConsumerEnds { to_hashers, acks, control } = ends;
    let acks_rx = spawn_ack_reader(acks);
    let drain = spawn_control_reader(control);
    let flow = Flow {
        batches: (0..to_hashers.len())
            .map(|_| BatchWriter::new(cfg.batch_events, cfg.batch_bytes, cfg.batch_linger))
            .collect(),
        senders: to_hashers,
        marks: Watermarks::new(),
        acks: acks_rx,
        producer_done: false,
        producer_gone: false,
        skip_log: RateLimitedLog::new(Duration::from_secs(5)),
    };
    let ctx = Ctx {
        flow: Mutex::new(flow),
        on_joined,
        joined: AtomicBool::new(false),
        topic: cfg.source_topic.clone(),
        settle_timeout: cfg.drain_timeout,
    };
    let consumer: BaseConsumer<Ctx> = cfg.consumer_config().create_with_context(ctx).map_err(Error::CreateClient)?;
    let md = consumer
        .fetch_metadata(Some(&cfg.source_topic), cfg.startup_timeout)
        .map_err(|source| Error::Metadata { brokers: cfg.brokers.clone(), source })?;
    let exists =
        md.topics().iter().any(|t| t.name() == cfg.source_topic && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return Err(Error::MissingTopic { topic: cfg.source_topic.clone(), hint: "--source-topic" });
    }
    consumer.subscribe(&[&cfg.source_topic]).map_err(Error::Subscribe)?;
    Ok((consumer, drain))
}

fn spawn_ack_reader(acks: AckReceiver) -> Receiver<AckMsg> {
    let (tx, rx) = unbounded();
    std::thread::spawn(move || loop {
        match acks.recv() {
            Ok(Some(msg)) => {
                if tx.send(msg).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                log::error!("reading acknowledgements: {e}");
                return;
            }
        }
    });
    rx
}

fn spawn_control_reader(control: ControlReceiver) -> Arc<AtomicBool> {
    let drain = Arc::new(AtomicBool::new(false));
    let flag = drain.clone();
    std::thread::spawn(move || {
        // A closed channel means the supervisor is gone: drain too.
        let (Ok(Control::Drain) | Err(_)) = control.recv();
        flag.store(true, Ordering::SeqCst);
    });
    drain
}

/// Consumes until told to drain (or the pipeline breaks), then drains and commits. Returns how the drain went.
pub fn run(cfg: &Config, consumer: BaseConsumer<Ctx>, drain: Arc<AtomicBool>) -> Result<Exit> {
    let topic = cfg.source_topic.as_str();
    let mut gate = Gate::new(cfg.queue_capacity, PAUSE_AFTER);
    let mut error_log = RateLimitedLog::new(Duration::from_secs(5));
    let mut broken: Option<Error> = None;

    while !drain.load(Ordering::Relaxed) {
        {
            let mut flow = consumer.context().flow();
            flow.apply_acks(Duration::ZERO);
            store(&consumer, topic, &mut flow);
            if flow.finished() {
                broken = Some(Error::Ipc("the producer went away".into()));
                break;
            }
        }
        let in_flight = consumer.context().flow().marks.in_flight();
        match gate.step(in_flight, Instant::now()) {
            Step::Take => {}
            Step::ResumeAndTake => {
                if !set_paused(&consumer, false) {
                    gate.resume_failed();
                }
            }
            held => {
                let mut flow = consumer.context().flow();
                if let Err(e) = flow.flush_all() {
                    broken = Some(e);
                    break;
                }
                flow.apply_acks(Duration::from_millis(20));
                drop(flow);
                if held == Step::PauseAndHold && !set_paused(&consumer, true) {
                    gate.unpaused();
                }
                if held != Step::Hold {
                    // Paused partitions return nothing, but poll still serves rebalances and keeps us in the group.
                    if let Some(r) = consumer.poll(Duration::ZERO) {
                        if let Err(e) = handle(&consumer, r, &mut error_log) {
                            broken = Some(e);
                            break;
                        }
                        gate.unpaused(); // a newly assigned partition is not paused yet
                    }
                }
                continue;
            }
        }
        // A batch fills only while librdkafka has events queued up: once it has none, the partial batches go at
        // once, so a trickle of events waits for no linger and a flood still travels in full batches.
        let ready = match consumer.poll(Duration::ZERO) {
            Some(r) => Some(r),
            None => {
                if let Err(e) = consumer.context().flow().flush_all() {
                    broken = Some(e);
                    break;
                }
                consumer.poll(POLL_SLICE)
            }
        };
        if let Some(r) = ready {
            if let Err(e) = handle(&consumer, r, &mut error_log) {
                broken = Some(e);
                break;
            }
        }
        if let Err(e) = consumer.context().flow().flush_due(Instant::now()) {
            broken = Some(e);
            break;
        }
    }
    if let Some(e) = &broken {
        log::error!("stopping: {e}");
    } else {
        log::info!("draining");
    }
    let exit = drain_and_commit(cfg, &consumer);
    let counts = stats::STAGE.snapshot();
    log::info!("consumed {} events, {} acknowledged", counts.consumed, counts.acked);
    drop(consumer);
    match broken {
        Some(e) => Err(e),
        None => Ok(exit),
    }
}

/// A message from poll: dispatched, or its error judged.
fn handle(
    consumer: &BaseConsumer<Ctx>,
    r: std::result::Result<BorrowedMessage<'_>, KafkaError>,
    error_log: &mut RateLimitedLog,
) -> Result<()> {
    match r {
        Ok(m) => consumer.context().flow().dispatch(&m),
        Err(KafkaError::PartitionEOF(_)) => Ok(()),
        Err(KafkaError::MessageConsumptionFatal(code)) => Err(Error::Fatal(code.to_string())),
        Err(e) => {
            if let Some(held_back) = error_log.ready() {
                log::warn!("consumer error (retrying): {e} ({held_back} more not logged)");
            }
            Ok(())
        }
    }
}

fn set_paused(consumer: &BaseConsumer<Ctx>, pause: bool) -> bool {
    let result = consumer.assignment().and_then(|a| if pause { consumer.pause(&a) } else { consumer.resume(&a) });
    match result {
        Ok(()) => {
            if pause {
                log::info!("held back at the bound for {PAUSE_AFTER:?}: paused the partitions, still polling");
            } else {
                log::info!("below the bound again: resumed the partitions");
            }
            true
        }
        Err(e) => {
            log::warn!("cannot {} partitions: {e}", if pause { "pause" } else { "resume" });
            false
        }
    }
}

/// Hands the newly committable positions to librdkafka, which commits them in the background.
fn store(consumer: &BaseConsumer<Ctx>, topic: &str, flow: &mut Flow) {
    let advanced = flow.marks.take_advanced();
    if advanced.is_empty() {
        return;
    }
    if let Err(e) = positions_list(topic, &advanced)
        .and_then(|tpl| consumer.store_offsets(&tpl).map_err(|e| Error::Fatal(e.to_string())))
    {
        log::debug!("cannot store offsets {advanced:?}: {e}");
    }
}

/// The drain: flush, one pill per hasher, wait for the producer's `Done`, then a synchronous commit.
fn drain_and_commit(cfg: &Config, consumer: &BaseConsumer<Ctx>) -> Exit {
    // Leave a little of the drain time for the commit itself.
    let budget = cfg.drain_timeout.saturating_sub(Duration::from_secs(1).min(cfg.drain_timeout / 4));
    let deadline = Instant::now() + budget;
    let mut flow = consumer.context().flow();
    if let Err(e) = flow.flush_all() {
        log::warn!("cannot flush the last batches: {e}");
    }
    for (i, s) in flow.senders.iter().enumerate() {
        if let Err(e) = s.send_pill() {
            log::warn!("cannot send the poison pill to hasher-{i}: {e}");
        }
    }
    while !flow.finished() && Instant::now() < deadline {
        flow.apply_acks(Duration::from_millis(20));
    }
    flow.apply_acks(Duration::ZERO);
    // Stored offsets are what librdkafka's auto-commit writes on close: they must not lag the final commit.
    store(consumer, &cfg.source_topic, &mut flow);
    let positions = flow.marks.positions();
    let left = flow.marks.in_flight();
    let (done, gone) = (flow.producer_done, flow.producer_gone);
    drop(flow);
    if !positions.is_empty() {
        match positions_list(&cfg.source_topic, &positions)
            .and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync).map_err(|e| Error::Fatal(e.to_string())))
        {
            Ok(()) => {
                log::info!("committed {positions:?}");
                stats::STAGE.set_committed(&positions);
            }
            Err(e) => {
                log::error!("final commit failed: {e}; the uncommitted events are re-read on the next start");
                return Exit::Failure;
            }
        }
    }
    match (done, gone) {
        (true, _) if left == 0 => Exit::Clean,
        (false, false) => {
            log::warn!(
                "the drain ran out of time with {left} events unacknowledged; they are re-read on the next start"
            );
            Exit::DrainTimeout
        }
        _ => {
            log::warn!("the pipeline broke with {left} events unacknowledged; they are re-read on the next start");
            Exit::Failure
        }
    }
}
