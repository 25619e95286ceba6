//! The single-process yardstick: the same transform and client settings as the pipeline, in one thread, no IPC.
//! Benchmarks compare the pipeline against it (`examples/single.rs`, `supervisor demo --single-process`).
//!
//! Not a product: offsets are stored when an event is polled, not when its output is acknowledged.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::position::Position;
use crate::sink::kafka::dead_letter;
use crate::worker::transform::md5::Md5;
use crate::worker::transform::Transform;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use std::time::Duration;

/// Consumes, transforms and produces until `stop` says so; returns how many events it handled.
pub fn run(cfg: &Config, stop: &dyn Fn() -> bool) -> Result<u64> {
    let consumer: BaseConsumer =
        cfg.consumer_config().set("enable.auto.offset.store", "true").create().map_err(Error::CreateClient)?;
    consumer.subscribe(&[&cfg.source_topic]).map_err(Error::Subscribe)?;
    let producer: BaseProducer = cfg.producer_config().create().map_err(Error::CreateClient)?;
    let mut out = Vec::with_capacity(4096);
    let mut transform = Md5;
    let mut handled = 0;
    while !stop() {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let (topic, headers) = match transform.apply(m.payload(), &mut out) {
            Ok(()) => (&cfg.dest_topic, None),
            Err(why) => {
                out.clear();
                out.extend_from_slice(m.payload().unwrap_or_default());
                let at = Position::new(m.partition(), m.offset());
                let h = dead_letter::headers(OwnedHeaders::new(), &cfg.source_topic, why.as_str(), at);
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
        handled += 1;
    }
    producer.flush(Duration::from_secs(30)).map_err(Error::Flush)?;
    Ok(handled)
}
