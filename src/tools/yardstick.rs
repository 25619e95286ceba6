//! The single-process yardstick: the same transform and client settings as the pipeline, in one thread, no IPC.
//! Benchmarks compare the pipeline against it (`examples/single.rs`, `supervisor demo --single-process`).
//!
//! Not a product: offsets are stored when an event is polled, not when its output is acknowledged.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::position::Position;
use crate::sink::kafka::dead_letter;
use crate::telemetry::counters::StageStats;
use crate::telemetry::logging;
use crate::worker::transform::md5;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, Statistics};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the yardstick did: the pipeline's summary, from one process.
pub struct Run {
    pub totals: StageStats,
    pub committed: Vec<Position>,
}

/// librdkafka's lines go through our logger, as the pipeline's do; its statistics are not wanted (rust-rdkafka's
/// default context logs each one, some kilobytes, every second).
#[derive(Default)]
struct Quiet {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        logging::librdkafka(level, fac, message);
    }

    fn stats(&self, _: Statistics) {}

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        logging::librdkafka_error(&error, reason);
    }
}

impl ConsumerContext for Quiet {}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        let counter = if result.is_ok() { &self.delivered } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Consumes, transforms and produces until `stop` says so; returns what it did.
pub fn run(cfg: &Config, stop: &dyn Fn() -> bool) -> Result<Run> {
    let consumer: BaseConsumer<Quiet> = cfg
        .consumer_config()
        .set("enable.auto.offset.store", "true")
        .create_with_context(Quiet::default())
        .map_err(Error::CreateClient)?;
    consumer.subscribe(&[&cfg.source_topic]).map_err(Error::Subscribe)?;
    let producer: BaseProducer<Quiet> =
        cfg.producer_config().create_with_context(Quiet::default()).map_err(Error::CreateClient)?;
    let mut out = Vec::with_capacity(4096);
    let mut totals = StageStats::default();
    while !stop() {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        totals.consumed += 1;
        out.clear();
        let (topic, headers) = match md5::add_hash(m.payload(), &mut out) {
            Ok(()) => (&cfg.dest_topic, None),
            Err(why) => {
                out.clear();
                out.extend_from_slice(m.payload().unwrap_or_default());
                let at = Position::new(m.partition(), m.offset());
                let h = dead_letter::headers(OwnedHeaders::new(), &cfg.source_topic, why.as_str(), at);
                totals.dead_lettered += 1;
                (&cfg.dlq_topic, Some(h))
            }
        };
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(&out[..]);
        rec.headers = headers;
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        while let Err((_, back)) = producer.send(rec) {
            producer.poll(Duration::from_millis(10));
            rec = back;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).map_err(Error::Flush)?;
    let produced = producer.context().delivered.load(Ordering::Relaxed);
    totals.delivered = produced.saturating_sub(totals.dead_lettered);
    totals.produce_errors = producer.context().failed.load(Ordering::Relaxed);
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing was consumed: nothing to commit.
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        other => other.map_err(Error::Commit)?,
    }
    let committed = consumer.committed(Duration::from_secs(10)).map_err(Error::Commit)?;
    let committed = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(Position::new(e.partition(), o)),
            _ => None,
        })
        .collect();
    Ok(Run { totals, committed })
}
