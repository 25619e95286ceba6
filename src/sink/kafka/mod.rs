//! The Kafka sink: an idempotent librdkafka producer writing to the destination topic (rejected events to the
//! dead-letter topic), each delivery acknowledged back to the source so that it may commit.
//!
//! The producer is idempotent, so librdkafka's own retries keep order. A delivery that still fails is sent again,
//! or to the dead-letter topic when retrying cannot help; an event is acked only once it is safely somewhere.

pub mod dead_letter;
mod delivery;

use crate::channel::batch::Frame;
use crate::channel::ipc::AckMsg;
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::sink::refusals::{Judge, TooMany};
use crate::sink::{feed, Acks, Input, SinkEnds};
use crate::stage::{Hooks, Stage};
use crate::telemetry::events::SinkQueue;
use crate::telemetry::events::{
    emit, BatchReceived, DeadLetterCut, DeadLetterRouted, Delivered, DeliveryFailed, DeliveryRetried,
};
use crate::telemetry::heartbeat;
use crossbeam_channel::RecvTimeoutError;
use delivery::{is_permanent, is_too_large, Deliveries, Failed, Origin};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

/// The Kafka producer as the pipeline's sink.
pub struct KafkaSink;

impl Stage for KafkaSink {
    type Ends = SinkEnds;

    fn run(cfg: &Config, ends: SinkEnds, hooks: &Hooks) -> Result<Exit> {
        let producer = connect(cfg)?;
        hooks.ready();
        run(cfg, producer, ends).map(|()| Exit::Clean)
    }
}

/// Creates the client and checks the topics; the supervisor waits for this before starting the workers.
fn connect(cfg: &Config) -> Result<BaseProducer<Deliveries>> {
    let mut config = cfg.producer_config();
    // Asking for a missing topic's metadata must not create it: a typo should be an error.
    if config.get("allow.auto.create.topics").is_none() {
        config.set("allow.auto.create.topics", "false");
    }
    let producer: BaseProducer<Deliveries> =
        config.create_with_context(Deliveries::default()).map_err(Error::CreateClient)?;
    let dest_partitions = topic_partitions(&producer, cfg, &cfg.dest_topic)?
        .ok_or_else(|| Error::MissingTopic { topic: cfg.dest_topic.clone(), hint: "--dest-topic" })?;
    if topic_partitions(&producer, cfg, &cfg.dlq_topic)?.is_none() {
        dead_letter::create_topic(cfg, dest_partitions)?;
    }
    Ok(producer)
}

/// The topic's partition count, `None` if the brokers do not know it.
fn topic_partitions(producer: &BaseProducer<Deliveries>, cfg: &Config, topic: &str) -> Result<Option<i32>> {
    let md = crate::kafka::metadata(producer.client(), cfg, Some(topic), || producer.poll(Duration::ZERO))?;
    Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| match t.error() {
        None if !t.partitions().is_empty() => i32::try_from(t.partitions().len()).ok(),
        _ => None,
    }))
}

/// Runs until every worker has sent its pill (or gone), then flushes, reports the final acks and `Done`.
fn run(cfg: &Config, producer: BaseProducer<Deliveries>, ends: SinkEnds) -> Result<()> {
    let workers = ends.inputs.len();
    let (inputs, acks) = feed(cfg, ends)?;
    let config = cfg.producer_config();
    let max_bytes =
        config.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(dead_letter::DEFAULT_MAX_BYTES);
    let judge = Judge::new(cfg.max_dead_letters);
    let tombstones = cfg.follow && !cfg.no_tombstones;
    let mut sink = Writer { cfg, tombstones, producer, acks, max_bytes, judge, too_many: None };
    let mut ended = 0;
    let outcome = (|| {
        while ended < workers && sink.too_many.is_none() {
            let wait =
                if sink.producer.in_flight_count() > 0 { Duration::from_millis(2) } else { Duration::from_millis(100) };
            match inputs.recv_timeout(wait) {
                Ok(Input::Batch(bytes)) => sink.produce_batch(&bytes)?,
                Ok(Input::Lanes { .. }) => {}
                Ok(Input::End { worker, clean, .. }) => {
                    ended += 1;
                    super::worker_ended(worker, clean, "events are re-read");
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            sink.service(Duration::ZERO)?;
        }
        Ok(())
    })();
    // Whatever happened, deliver and ack what is already in librdkafka, so the source commits as far as it can.
    outcome.and(sink.flush())?;
    if let Some(verdict) = sink.too_many.take() {
        // What was taken after the stop is neither written nor acknowledged: the source commits up to it.
        let at = cfg.place(verdict.at).to_string();
        return Err(Error::TooManyDeadLetters { verdict: verdict.describe(&at) });
    }
    sink.acks.finish()?;
    sink.acks.send(&AckMsg::Done)?;
    log::debug!("done: every worker's output is delivered and acknowledged");
    Ok(())
}

/// Whether an event is a followed table's delete: `"__op": "d"` among its top-level fields.
fn is_delete(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Op<'a> {
        #[serde(rename = "__op", borrow, default)]
        op: Option<&'a str>,
    }
    serde_json::from_slice::<Op<'_>>(payload).is_ok_and(|o| o.op == Some("d"))
}

/// The producer at work: what it writes with, and where its acknowledgements go.
struct Writer<'a> {
    cfg: &'a Config,
    /// `--follow` without `--no-tombstones`: a delete's event is followed by a tombstone.
    tombstones: bool,
    producer: BaseProducer<Deliveries>,
    acks: Acks,
    /// The producer's `message.max.bytes`: what a dead letter cut down to fit must stay under.
    max_bytes: usize,
    /// Whether the dead letters are past `--max-dead-letters`.
    judge: Judge,
    /// They are: nothing more is sent.
    too_many: Option<TooMany>,
}

impl Writer<'_> {
    fn produce_batch(&mut self, bytes: &[u8]) -> Result<()> {
        let Frame::Records(records) = Frame::parse(bytes)? else {
            return Ok(());
        };
        let mut received = 0;
        let mut filtered = Vec::new();
        // The outputs of one input come one after another: they share one count of those still undelivered.
        // (The input's position, the count, how many outputs took it: a position read twice starts a new count.)
        let mut siblings: Option<(crate::position::Position, Arc<AtomicU32>, u32)> = None;
        for record in records {
            if self.too_many.is_some() {
                break;
            }
            let r = record?;
            received += 1;
            if r.outputs == 0 {
                // Filtered out: nothing to write, and nothing to wait for. An aggregation's input (in its state)
                // counts as written, in its place among the dead letters.
                filtered.push(r.at);
                if self.acks.bare_counts() {
                    self.judge.written(1);
                }
                continue;
            }
            // A followed table's delete is followed by a tombstone, so that compaction removes the key; the input
            // is delivered once both are.
            let tombstone = self.tombstones && r.dead_letter.is_none() && r.payload.is_some_and(|p| is_delete(p));
            let undelivered = match &mut siblings {
                _ if r.outputs == 1 && tombstone => Some(Arc::new(AtomicU32::new(2))),
                _ if r.outputs == 1 => None,
                Some((at, left, taken)) if *at == r.at && *taken < r.outputs => {
                    *taken += 1;
                    Some(left.clone())
                }
                _ => {
                    let left = Arc::new(AtomicU32::new(r.outputs));
                    siblings = Some((r.at, left.clone(), 1));
                    Some(left)
                }
            };
            if let (true, Some(left), true) = (tombstone, &undelivered, r.outputs > 1) {
                left.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            let topic = r.topic.map(Arc::from);
            let then = tombstone.then(|| Box::new(Origin { undelivered: undelivered.clone(), ..Origin::new(r.at) }));
            let origin = Box::new(Origin { at: r.at, to_dlq: r.dead_letter.is_some(), cut: 0, undelivered, topic });
            let headers = match r.dead_letter {
                // Both fates are judged as they are sent (a written one when it goes to the destination, below).
                Some(why) => {
                    self.judge.dead_lettered(why, r.at);
                    self.too_many = self.judge.verdict();
                    Some(self.dlq_headers(copy_headers(&r.headers), r.topic, why, r.at))
                }
                None => {
                    self.judge.written(1);
                    (!r.headers.is_empty()).then(|| copy_headers(&r.headers))
                }
            };
            let topic = if r.dead_letter.is_some() { &self.cfg.dlq_topic } else { &self.cfg.dest_topic };
            self.send(topic, origin, r.key.map(|k| &k[..]), r.payload.map(|p| &p[..]), headers, r.timestamp)?;
            if let Some(origin) = then {
                self.send(&self.cfg.dest_topic, origin, r.key.map(|k| &k[..]), None, None, r.timestamp)?;
            }
        }
        emit(BatchReceived { events: received });
        if !filtered.is_empty() {
            self.acks.send(&AckMsg::Acked(filtered))?;
        }
        Ok(())
    }

    /// The dead-letter headers for an event of `topic` (when the source reads several), else of the source topic.
    fn dlq_headers(
        &self,
        headers: OwnedHeaders,
        topic: Option<&str>,
        why: &str,
        at: crate::position::Position,
    ) -> OwnedHeaders {
        dead_letter::headers(headers, topic.unwrap_or(&self.cfg.source_topic), why, at)
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

    /// Serves delivery reports: acks go back to the source, failures are retried or dead-lettered.
    fn service(&mut self, wait: Duration) -> Result<()> {
        heartbeat::tick();
        self.producer.poll(wait);
        emit(SinkQueue { events: self.producer.in_flight_count().max(0) as u64 });
        let outcomes = self.producer.context().take();
        emit(Delivered { events: outcomes.delivered, dead_letters: outcomes.dead_lettered });

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
            return Err(Error::ProducerFatal { code, reason });
        }
        let Failed { origin, error, key, payload, headers, timestamp } = f;
        emit(DeliveryFailed);
        if origin.to_dlq && is_too_large(&error) && origin.cut == 1 {
            // Even the prefix does not fit (a dead-letter topic with a small max.message.bytes): the headers alone,
            // which say why, where from and how large, go there.
            let said = "too large for the dead-letter topic even cut down: only these headers are kept";
            let headers = headers.map(|h| {
                h.iter().fold(OwnedHeaders::new_with_capacity(h.count()), |out, one| {
                    let value = if one.key == dead_letter::DLQ_CUT { Some(said.as_bytes()) } else { one.value };
                    out.insert(Header { key: one.key, value })
                })
            });
            emit(DeadLetterCut { at: origin.at, size: 0, error: &error });
            let origin = Box::new(Origin { cut: 2, ..*origin });
            let topic = self.cfg.dlq_topic.clone();
            return self.send(&topic, origin, None, None, headers, timestamp);
        }
        if origin.to_dlq && is_too_large(&error) && origin.cut == 0 {
            // Too large for the dead-letter topic too: what fits goes there, so that one event cannot stop the sink.
            let why = headers
                .as_ref()
                .and_then(|h| h.iter().filter(|h| h.key == dead_letter::DLQ_ERROR).last())
                .and_then(|h| h.value)
                .map_or_else(|| error.to_string(), |v| String::from_utf8_lossy(v).into_owned());
            let own = headers.as_ref().map_or(0, |h| h.count().saturating_sub(dead_letter::ADDED_HEADERS));
            let source = origin.topic.as_deref().unwrap_or(&self.cfg.source_topic);
            let origin_of = (source, why.as_str(), origin.at);
            let (key, payload, headers) =
                dead_letter::cut(key.as_deref(), payload.as_deref(), own, self.max_bytes, origin_of);
            emit(DeadLetterCut { at: origin.at, size: payload.map_or(0, <[u8]>::len), error: &error });
            let origin = Box::new(Origin { cut: 1, ..*origin });
            let topic = self.cfg.dlq_topic.clone();
            return self.send(&topic, origin, key, payload, Some(headers), timestamp);
        }
        if origin.to_dlq && is_permanent(&error) {
            return Err(Error::DeadLetter { at: origin.at, source: error });
        }
        if is_permanent(&error) {
            emit(DeadLetterRouted { at: origin.at, destination: &self.cfg.dest_topic, error: &error });
            self.judge.dead_lettered(&error.to_string(), origin.at);
            self.too_many = self.too_many.take().or_else(|| self.judge.verdict());
            let headers =
                self.dlq_headers(headers.unwrap_or_default(), origin.topic.as_deref(), &error.to_string(), origin.at);
            let origin = Box::new(Origin { to_dlq: true, ..*origin });
            let topic = self.cfg.dlq_topic.clone();
            return self.send(&topic, origin, key.as_deref(), payload.as_deref(), Some(headers), timestamp);
        }
        emit(DeliveryRetried { at: origin.at, error: &error });
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

fn copy_headers(headers: &[(&str, Option<&serde_bytes::Bytes>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len() + 4), |h, (key, value)| {
        h.insert(Header { key, value: value.map(|v| &v[..]) })
    })
}
