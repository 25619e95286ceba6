//! The producer stage: hashed events in from every hasher, out to the destination topic (bad ones to the
//! dead-letter topic), and each delivery acknowledged back to the consumer so that it may commit.
//!
//! One reader thread per hasher feeds a crossbeam channel, so that a slow hasher never blocks the others and per
//! hasher (hence per source partition) order is kept. The librdkafka producer is idempotent: its own retries keep
//! order. A delivery that still fails is sent again, or to the dead-letter topic when retrying cannot help; an event
//! is acked only once it is safely somewhere.

use crate::channel::batch::Frame;
use crate::channel::ipc::{AckMsg, AckSender, BatchReceiver};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::stage::child::RateLimitedLog;
use crate::telemetry::counters::Counters;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub struct ProducerEnds {
    pub inputs: Vec<BatchReceiver>,
    pub acks: AckSender,
}

/// Header names on dead-letter events.
pub const DLQ_ERROR: &str = "dlq.error";
pub const DLQ_TOPIC: &str = "dlq.source.topic";
pub const DLQ_PARTITION: &str = "dlq.source.partition";
pub const DLQ_OFFSET: &str = "dlq.source.offset";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStats {
    pub delivered: u64,
    pub dead_lettered: u64,
    pub retried: u64,
}

/// Where an in-flight message came from, carried through librdkafka as its delivery opaque.
#[derive(Debug)]
pub struct Origin {
    partition: i32,
    offset: i64,
    to_dlq: bool,
}

/// A message whose delivery failed, copied out of librdkafka so it can be sent again.
struct Failed {
    origin: Box<Origin>,
    error: KafkaError,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
}

#[derive(Default)]
struct Outcomes {
    acked: Vec<(i32, i64)>,
    delivered: u64,
    dead_lettered: u64,
    failed: Vec<Failed>,
}

/// The producer's context: collects delivery reports, handled on the stage's own thread right after `poll`.
#[derive(Default)]
pub struct Deliveries(Mutex<Outcomes>);

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::stage::child::librdkafka_log(level, fac, message);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Origin>;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Box<Origin>) {
        let mut o = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => {
                o.acked.push((origin.partition, origin.offset));
                if origin.to_dlq {
                    o.dead_lettered += 1;
                } else {
                    o.delivered += 1;
                }
            }
            Err((error, msg)) => o.failed.push(Failed {
                origin,
                error: error.clone(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
                headers: msg.headers().map(|h| h.detach()),
                timestamp: msg.timestamp().to_millis(),
            }),
        }
    }
}

/// Errors that no retry can fix: the event goes to the dead-letter topic instead.
fn is_permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidMessage
                | InvalidRecord
                | MessageBatchTooLarge
                | TopicAuthorizationFailed
                | InvalidTopic
                | UnsupportedCompressionType
        )
    )
}

struct Stage<'a> {
    cfg: &'a Config,
    producer: BaseProducer<Deliveries>,
    acks: AckSender,
    stats: ProducerStats,
    retry_log: RateLimitedLog,
    dead_letter_log: RateLimitedLog,
}

/// Creates the client and checks the topics; the supervisor waits for this before starting the hashers.
pub fn connect(cfg: &Config) -> Result<BaseProducer<Deliveries>> {
    let mut config = cfg.producer_config();
    // Asking for a missing topic's metadata must not create it: a typo should be an error.
    if config.get("allow.auto.create.topics").is_none() {
        config.set("allow.auto.create.topics", "false");
    }
    let producer: BaseProducer<Deliveries> =
        config.create_with_context(Deliveries::default()).map_err(Error::CreateClient)?;
    let dest_partitions = topic_partitions(producer.client(), cfg, &cfg.dest_topic)?
        .ok_or_else(|| Error::MissingTopic { topic: cfg.dest_topic.clone(), hint: "--dest-topic" })?;
    if topic_partitions(producer.client(), cfg, &cfg.dlq_topic)?.is_none() {
        create_dlq(cfg, dest_partitions)?;
    }
    Ok(producer)
}

/// The topic's partition count, `None` if the brokers do not know it.
fn topic_partitions<C: ClientContext>(client: &Client<C>, cfg: &Config, topic: &str) -> Result<Option<i32>> {
    let md = client
        .fetch_metadata(Some(topic), cfg.startup_timeout)
        .map_err(|source| Error::Metadata { brokers: cfg.brokers.clone(), source })?;
    Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| match t.error() {
        None if !t.partitions().is_empty() => i32::try_from(t.partitions().len()).ok(),
        _ => None,
    }))
}

/// Like Kafka Connect, create the dead-letter topic when it is missing: the broker's default replication first,
/// then a single replica for brokers that do not understand the default.
fn create_dlq(cfg: &Config, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = cfg.producer_config().create().map_err(Error::CreateClient)?;
    // Without a request timeout, a broker that never answers (librdkafka's mock cluster has no CreateTopics) hangs the
    // start for good.
    let opts =
        AdminOptions::new().operation_timeout(Some(cfg.startup_timeout)).request_timeout(Some(cfg.startup_timeout));
    let mut last = String::new();
    for replication in [-1, 1] {
        let topic = NewTopic::new(&cfg.dlq_topic, partitions, TopicReplication::Fixed(replication));
        let outcome = block_on(admin.create_topics([&topic], &opts));
        match outcome.map(|mut r| r.pop()) {
            Ok(Some(Ok(_))) | Ok(Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists)))) => {
                log::info!("created the dead-letter topic \"{}\" ({partitions} partitions)", cfg.dlq_topic);
                return Ok(());
            }
            Ok(Some(Err((_, code)))) => last = code.to_string(),
            Ok(None) => last = "no answer".into(),
            Err(e) => last = e.to_string(),
        }
    }
    Err(Error::CreateTopic { topic: cfg.dlq_topic.clone(), reason: last })
}

/// Runs a future to completion on this thread; the admin API is the only async call we make.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

enum Input {
    Batch(Vec<u8>),
    /// A hasher sent its pill (`clean`) or its channel closed.
    End {
        hasher: usize,
        clean: bool,
    },
}

fn spawn_readers(inputs: Vec<BatchReceiver>) -> Receiver<Input> {
    // Two batches per hasher buffered here; beyond that the readers stop reading and the hashers are held back.
    let (tx, rx) = bounded(inputs.len() * 2);
    for (hasher, input) in inputs.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || loop {
            let end = match input.recv() {
                Ok(Some(bytes)) if matches!(Frame::parse(&bytes), Ok(Frame::Pill)) => {
                    Input::End { hasher, clean: true }
                }
                Ok(Some(bytes)) => {
                    if tx.send(Input::Batch(bytes)).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => Input::End { hasher, clean: false },
                Err(e) => {
                    log::error!("reading from hasher-{hasher}: {e}");
                    Input::End { hasher, clean: false }
                }
            };
            let _ = tx.send(end);
            return;
        });
    }
    rx
}

/// Runs until every hasher has sent its pill (or gone), then flushes, reports the final acks and `Done`.
pub fn run(cfg: &Config, producer: BaseProducer<Deliveries>, ends: ProducerEnds) -> Result<ProducerStats> {
    let hashers = ends.inputs.len();
    let inputs = spawn_readers(ends.inputs);
    let mut stage = Stage {
        cfg,
        producer,
        acks: ends.acks,
        stats: ProducerStats::default(),
        retry_log: RateLimitedLog::new(Duration::from_secs(5)),
        dead_letter_log: RateLimitedLog::new(Duration::from_secs(5)),
    };
    let mut ended = 0;
    let outcome = (|| {
        while ended < hashers {
            let wait = if stage.producer.in_flight_count() > 0 {
                Duration::from_millis(2)
            } else {
                Duration::from_millis(100)
            };
            match inputs.recv_timeout(wait) {
                Ok(Input::Batch(bytes)) => stage.produce_batch(&bytes)?,
                Ok(Input::End { hasher, clean }) => {
                    ended += 1;
                    if !clean {
                        log::warn!("hasher-{hasher} went away without its poison pill; its events are re-read");
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            stage.service(Duration::ZERO)?;
        }
        Ok(())
    })();
    // Whatever happened, deliver and ack what is already in librdkafka, so the consumer commits as far as it can.
    let flushed = stage.flush();
    let result = outcome.and(flushed);
    if result.is_ok() {
        stage.acks.send(&AckMsg::Done)?;
    }
    log::debug!("done: {:?}", stage.stats);
    result.map(|()| stage.stats)
}

impl Stage<'_> {
    fn produce_batch(&mut self, bytes: &[u8]) -> Result<()> {
        let Frame::Records(records) = Frame::parse(bytes)? else {
            return Ok(());
        };
        let mut received = 0;
        for record in records {
            let r = record?;
            received += 1;
            let origin = Box::new(Origin { partition: r.partition, offset: r.offset, to_dlq: r.dead_letter.is_some() });
            let headers = match r.dead_letter {
                Some(why) => Some(self.dlq_headers(copy_headers(&r.headers), why, r.partition, r.offset)),
                None if r.headers.is_empty() => None,
                None => Some(copy_headers(&r.headers)),
            };
            let topic = if r.dead_letter.is_some() { &self.cfg.dlq_topic } else { &self.cfg.dest_topic };
            self.send(topic, origin, r.key.map(|k| &k[..]), r.payload.map(|p| &p[..]), headers, r.timestamp)?;
        }
        crate::telemetry::counters::STAGE.received_batch(received);
        Ok(())
    }

    fn dlq_headers(&self, headers: OwnedHeaders, why: &str, partition: i32, offset: i64) -> OwnedHeaders {
        dlq_headers(headers, &self.cfg.source_topic, why, partition, offset)
    }

    /// Hands one message to librdkafka, waiting (and serving delivery reports) while its queue is full.
    fn send(
        &mut self,
        topic: &str,
        origin: Box<Origin>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        timestamp: Option<i64>,
    ) -> Result<()> {
        let mut rec: BaseRecord<'_, [u8], [u8], Box<Origin>> = BaseRecord::with_opaque_to(topic, origin);
        rec.key = key;
        rec.payload = payload;
        rec.headers = headers;
        rec.timestamp = timestamp;
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.service(Duration::from_millis(10))?;
                }
                Err((error, back)) => {
                    let failed = Failed {
                        origin: back.delivery_opaque,
                        error,
                        key: back.key.map(<[u8]>::to_vec),
                        payload: back.payload.map(<[u8]>::to_vec),
                        headers: back.headers,
                        timestamp: back.timestamp,
                    };
                    return self.handle_failure(failed);
                }
            }
        }
    }

    /// Serves delivery reports: acks go back to the consumer, failures are retried or dead-lettered.
    fn service(&mut self, wait: Duration) -> Result<()> {
        crate::telemetry::heartbeat::tick();
        self.producer.poll(wait);
        crate::telemetry::counters::STAGE
            .producer_queue
            .store(self.producer.in_flight_count().max(0) as u64, Ordering::Relaxed);
        let outcomes = std::mem::take(&mut *self.producer.context().0.lock().unwrap_or_else(PoisonError::into_inner));
        self.stats.delivered += outcomes.delivered;
        self.stats.dead_lettered += outcomes.dead_lettered;
        Counters::add(&crate::telemetry::counters::STAGE.delivered, outcomes.delivered);
        Counters::add(&crate::telemetry::counters::STAGE.dead_lettered, outcomes.dead_lettered);
        if !outcomes.acked.is_empty() {
            self.acks.send(&AckMsg::Acked(outcomes.acked))?;
        }
        for failed in outcomes.failed {
            self.handle_failure(failed)?;
        }
        Ok(())
    }

    fn handle_failure(&mut self, f: Failed) -> Result<()> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            return Err(Error::Fatal(format!("{code}: {reason}")));
        }
        let Failed { origin, error, key, payload, headers, timestamp } = f;
        Counters::add(&crate::telemetry::counters::STAGE.produce_errors, 1);
        if origin.to_dlq && is_permanent(&error) {
            return Err(Error::DeadLetter {
                reason: format!("partition {} offset {}: {error}", origin.partition, origin.offset),
            });
        }
        if is_permanent(&error) {
            if let Some(held_back) = self.dead_letter_log.ready() {
                log::warn!(
                    "event at partition {} offset {} cannot be written to \"{}\" ({error}); it goes to the dead-letter \
                     topic ({held_back} more not logged)",
                    origin.partition,
                    origin.offset,
                    self.cfg.dest_topic
                );
            }
            let headers =
                self.dlq_headers(headers.unwrap_or_default(), &error.to_string(), origin.partition, origin.offset);
            let origin = Box::new(Origin { to_dlq: true, ..*origin });
            let topic = self.cfg.dlq_topic.clone();
            return self.send(&topic, origin, key.as_deref(), payload.as_deref(), Some(headers), timestamp);
        }
        self.stats.retried += 1;
        Counters::add(&crate::telemetry::counters::STAGE.retried, 1);
        if let Some(held_back) = self.retry_log.ready() {
            log::warn!(
                "delivery of partition {} offset {} failed ({error}); sending it again ({held_back} more not logged)",
                origin.partition,
                origin.offset
            );
        }
        let topic = if origin.to_dlq { self.cfg.dlq_topic.clone() } else { self.cfg.dest_topic.clone() };
        self.send(&topic, origin, key.as_deref(), payload.as_deref(), headers, timestamp)
    }

    /// Waits until librdkafka has delivered (or we have re-sent and delivered) everything.
    fn flush(&mut self) -> Result<()> {
        while self.producer.in_flight_count() > 0 {
            self.service(Duration::from_millis(50))?;
        }
        self.service(Duration::ZERO)
    }
}

/// A dead letter's headers: its own, plus why it is there and where it came from.
pub fn dlq_headers(headers: OwnedHeaders, source_topic: &str, why: &str, partition: i32, offset: i64) -> OwnedHeaders {
    headers
        .insert(Header { key: DLQ_ERROR, value: Some(why) })
        .insert(Header { key: DLQ_TOPIC, value: Some(source_topic) })
        .insert(Header { key: DLQ_PARTITION, value: Some(&partition.to_string()) })
        .insert(Header { key: DLQ_OFFSET, value: Some(&offset.to_string()) })
}

fn copy_headers(headers: &[(&str, Option<&serde_bytes::Bytes>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len() + 4), |h, (key, value)| {
        h.insert(Header { key, value: value.map(|v| &v[..]) })
    })
}
