//! The Kafka source: a librdkafka consumer in a consumer group. It reads the source topic, hands each event to the
//! [flow](crate::source::flow) (partition = lane, offset = sequence number), and stores for librdkafka's background
//! commits only the offsets the watermarks allow. The drain ends with a synchronous commit.
//!
//! Threads: the main thread polls Kafka and sends batches; the flow's thread reads acks and one reads the
//! supervisor's drain request. librdkafka calls back into [`context`] from inside poll, on the main thread.
//!
//! Bound: at most `--queue-capacity` events are in flight. At the bound the consumer stops taking events; if that
//! lasts, it pauses its partitions so that it can keep calling poll (and stay in its group) without taking more.

mod context;
pub mod lanes;

use crate::channel::batch::Record;
use crate::config::topics::SourceTopics;
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::position::{Lane, Position};
use crate::source::flow::{Drained, Flow};
use crate::source::gate::{Gate, Step};
use crate::source::pace::Pace;
use crate::source::{drain_flag, SourceEnds};
use crate::stage::{Hooks, Kind, Stage};
use crate::telemetry::count;
use crate::telemetry::counters::COUNTERS;
use crate::telemetry::events::{emit, FinalCommit, Paused, Resumed, SourceError};
pub use context::Context;
use lanes::TopicLanes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the consumer stays held back at the bound before it pauses its partitions (pausing drops librdkafka's
/// prefetched messages, which are then fetched again, so it is not done for short stalls).
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// The longest a poll may block, so that a drain request is seen quickly.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// The Kafka consumer as the pipeline's source.
pub struct KafkaSource;

impl Stage for KafkaSource {
    type Ends = SourceEnds;

    fn run(cfg: &Config, ends: SourceEnds, hooks: &Hooks) -> Result<Exit> {
        let drain = drain_flag(ends.control)?;
        let flow = Flow::new(cfg, ends.to_workers, ends.acks)?;
        let topics = match cfg.source_topics() {
            SourceTopics::Listed(names) => TopicLanes::new(&names, false),
            SourceTopics::Pattern(_) => TopicLanes::new(&[], true),
        };
        let context = Context::new(flow, hooks.clone(), topics, cfg.drain_timeout, cfg.aggregation.is_some());
        let consumer = connect(cfg, context)?;
        hooks.ready();
        run(cfg, consumer, &drain)
    }
}

/// How often a pattern subscription looks for new topics that match, unless `-X topic.metadata.refresh.interval.ms`
/// says otherwise (librdkafka's own default is five minutes).
const PATTERN_REFRESH_MS: &str = "5000";

/// Creates the client, checks the source topics and subscribes; the supervisor waits for this before it says ready.
fn connect(cfg: &Config, context: Context) -> Result<BaseConsumer<Context>> {
    let topics = cfg.source_topics();
    let mut config = cfg.consumer_config();
    if matches!(topics, SourceTopics::Pattern(_)) && config.get("topic.metadata.refresh.interval.ms").is_none() {
        config.set("topic.metadata.refresh.interval.ms", PATTERN_REFRESH_MS);
    }
    let consumer: BaseConsumer<Context> = config.create_with_context(context).map_err(Error::CreateClient)?;
    let names = match &topics {
        SourceTopics::Listed(names) => names.clone(),
        SourceTopics::Pattern(pattern) => {
            // Topics that match may come later: the brokers are asked for their metadata only.
            crate::kafka::metadata(consumer.client(), cfg, None, || {
                let _ = consumer.poll(Duration::ZERO);
            })?;
            consumer.subscribe(&[pattern]).map_err(Error::Subscribe)?;
            log::info!("reading every topic that matches {pattern}, as they come");
            return Ok(consumer);
        }
    };
    let mut partitions = 0;
    for topic in &names {
        // Not yet subscribed: a poll serves only callbacks, and returns no event.
        let md = crate::kafka::metadata(consumer.client(), cfg, Some(topic), || {
            let _ = consumer.poll(Duration::ZERO);
        })?;
        let found =
            md.topics().iter().find(|t| t.name() == *topic && t.error().is_none() && !t.partitions().is_empty());
        let Some(found) = found else {
            return Err(Error::MissingTopic { topic: topic.to_string(), hint: "--source-topic" });
        };
        partitions += found.partitions().len();
    }
    if cfg.hashers > partitions {
        // Partition p goes to hasher p mod N, to keep each partition's order: the rest have nothing to do.
        log::warn!(
            "{} for {} of \"{}\": {} will idle (each partition goes to one worker, to keep its order)",
            count(cfg.hashers as u64, "worker"),
            count(partitions as u64, "partition"),
            cfg.source_topic,
            cfg.hashers - partitions
        );
    }
    consumer.subscribe(&names).map_err(Error::Subscribe)?;
    Ok(consumer)
}

/// Consumes until told to drain (or the pipeline breaks), then drains and commits. Returns how the drain went.
fn run(cfg: &Config, consumer: BaseConsumer<Context>, drain: &AtomicBool) -> Result<Exit> {
    let broken = consume(cfg, &consumer, drain).err();
    match &broken {
        Some(e) => log::error!("stopping: {e}"),
        None => log::info!("draining"),
    }
    let exit = drain_and_commit(cfg, &consumer);
    let counts = COUNTERS.snapshot();
    log::info!("consumed {} events, {} acknowledged", counts.consumed, counts.acked);
    drop(consumer);
    match broken {
        Some(e) => Err(e),
        None => Ok(exit),
    }
}

fn consume(cfg: &Config, consumer: &BaseConsumer<Context>, drain: &AtomicBool) -> Result<()> {
    let mut gate = Gate::new(cfg.queue_capacity, PAUSE_AFTER);
    let mut pace = cfg.max_rate.map(|rate| Pace::new(rate, Instant::now()));
    while !drain.load(Ordering::Relaxed) {
        let in_flight = {
            let mut flow = consumer.context().flow();
            flow.apply_acks(Duration::ZERO);
            store(consumer, &mut flow);
            if flow.finished() {
                return Err(Error::PeerGone { peer: Kind::Sink.label() });
            }
            flow.marks().in_flight()
        };
        // Out of --max-rate's tokens, the source holds as it does at the bound: no event taken, the client polled.
        let now = Instant::now();
        let paced = pace.as_mut().is_some_and(|p| !p.ready(now));
        match gate.step(if paced { usize::MAX } else { in_flight }, now) {
            Step::Take => {}
            Step::ResumeAndTake => {
                if !set_paused(consumer, false) {
                    gate.resume_failed();
                }
            }
            held => {
                {
                    let mut flow = consumer.context().flow();
                    flow.flush_all()?;
                    let wait = pace.as_mut().map_or(Duration::MAX, |p| p.wait(Instant::now()));
                    flow.apply_acks(wait.min(Duration::from_millis(20)));
                }
                if held == Step::PauseAndHold && !set_paused(consumer, true) {
                    gate.unpaused();
                }
                if held != Step::Hold {
                    // Paused partitions return nothing, but poll still serves rebalances and keeps us in the group.
                    if let Some(r) = consumer.poll(Duration::ZERO) {
                        if handle(consumer, r)? {
                            if let Some(p) = &mut pace {
                                p.took();
                            }
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
                consumer.context().flow().flush_all()?;
                consumer.poll(POLL_SLICE)
            }
        };
        if let Some(r) = ready {
            if handle(consumer, r)? {
                if let Some(p) = &mut pace {
                    p.took();
                }
            }
        }
        consumer.context().flow().flush_due(Instant::now())?;
    }
    Ok(())
}

/// A message from poll: dispatched (true), or its error judged.
fn handle(consumer: &BaseConsumer<Context>, r: Result<BorrowedMessage<'_>, KafkaError>) -> Result<bool> {
    match r {
        Ok(m) => {
            let lanes = consumer.context().lanes();
            let Some(lane) = lanes.lane(m.topic(), m.partition()) else {
                log::warn!("topic {} partition {} is past the lanes there are: skipped", m.topic(), m.partition());
                return Ok(false);
            };
            let topic = lanes.several().then(|| m.topic());
            consumer.context().flow().dispatch(&record(&m, lane, topic)).map(|()| true)
        }
        Err(KafkaError::PartitionEOF(_)) => Ok(false),
        Err(e @ KafkaError::MessageConsumptionFatal(_)) => Err(Error::Consume(e)),
        Err(e) => {
            emit(SourceError { error: &e });
            Ok(false)
        }
    }
}

/// A Kafka message as the pipeline carries it, borrowing its bytes, on its lane (and with its topic's name when the
/// source reads several).
fn record<'a>(m: &'a BorrowedMessage<'_>, lane: Lane, topic: Option<&'a str>) -> Record<'a> {
    Record {
        at: Position { lane, seq: m.offset() },
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(Bytes::new),
        headers: m
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key, h.value.map(Bytes::new))).collect())
            .unwrap_or_default(),
        payload: m.payload().map(Bytes::new),
        dead_letter: None,
        topic,
        outputs: 1,
    }
}

fn set_paused(consumer: &BaseConsumer<Context>, pause: bool) -> bool {
    let result = consumer.assignment().and_then(|a| if pause { consumer.pause(&a) } else { consumer.resume(&a) });
    match result {
        Ok(()) => {
            if pause {
                emit(Paused { after: PAUSE_AFTER });
            } else {
                emit(Resumed);
            }
            true
        }
        Err(e) => {
            log::warn!("cannot {} partitions: {e}", if pause { "pause" } else { "resume" });
            false
        }
    }
}

/// The lanes of the partitions in a librdkafka list.
fn lanes_of(tpl: &TopicPartitionList, lanes: &TopicLanes) -> Vec<Lane> {
    tpl.elements().iter().filter_map(|e| lanes.lane(e.topic(), e.partition())).collect()
}

/// Positions as librdkafka's list of the next offsets to read.
fn commit_list(lanes: &TopicLanes, positions: &[Position]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for p in positions {
        let Some((topic, partition)) = lanes.topic_of(p.lane) else { continue };
        tpl.add_partition_offset(&topic, partition, Offset::Offset(p.seq)).map_err(Error::PositionList)?;
    }
    Ok(tpl)
}

/// Commits `positions` and waits for the broker's answer.
fn commit_sync(consumer: &BaseConsumer<Context>, positions: &[Position]) -> Result<()> {
    commit_list(consumer.context().lanes(), positions)
        .and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync).map_err(Error::Commit))
}

/// Hands the newly committable positions to librdkafka, which commits them in the background.
fn store(consumer: &BaseConsumer<Context>, flow: &mut Flow) {
    let advanced = flow.marks_mut().take_advanced();
    if advanced.is_empty() {
        return;
    }
    if let Err(e) = commit_list(consumer.context().lanes(), &advanced)
        .and_then(|tpl| consumer.store_offsets(&tpl).map_err(Error::StoreOffsets))
    {
        log::debug!("cannot store offsets {advanced:?}: {e}");
    }
}

/// The drain: the flow's handshake with the sink, then a synchronous commit of what was acknowledged.
fn drain_and_commit(cfg: &Config, consumer: &BaseConsumer<Context>) -> Exit {
    // Leave a little of the drain time for the commit itself.
    let budget = cfg.drain_timeout.saturating_sub(Duration::from_secs(1).min(cfg.drain_timeout / 4));
    let mut flow = consumer.context().flow();
    let drained = flow.drain(Instant::now() + budget, false);
    // Stored offsets are what librdkafka's auto-commit writes on close: they must not lag the final commit.
    store(consumer, &mut flow);
    let positions = flow.marks().positions();
    drop(flow);
    if !positions.is_empty() {
        match commit_sync(consumer, &positions) {
            Ok(()) => emit(FinalCommit { positions: &positions }),
            Err(e) => {
                log::error!("the final commit failed ({e}); the uncommitted events are re-read on the next start");
                return Exit::Failure;
            }
        }
    }
    match drained {
        Drained::Complete => Exit::Clean,
        Drained::TimedOut { unacked } => {
            log::warn!(
                "the drain ran out of time with {unacked} events unacknowledged; they are re-read on the next start"
            );
            Exit::DrainTimeout
        }
        Drained::Broken { unacked } => {
            log::warn!("the pipeline broke with {unacked} events unacknowledged; they are re-read on the next start");
            Exit::Failure
        }
    }
}
