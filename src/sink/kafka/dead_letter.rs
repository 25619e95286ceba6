//! The dead-letter topic: created if missing, and the headers that say why an event is there and where it came from.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::kafka::block_on;
use crate::position::Position;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};

/// Header names on dead-letter events.
pub const DLQ_ERROR: &str = "dlq.error";
pub const DLQ_TOPIC: &str = "dlq.source.topic";
pub const DLQ_PARTITION: &str = "dlq.source.partition";
pub const DLQ_OFFSET: &str = "dlq.source.offset";

/// A dead letter's headers: its own, plus why it is there and where it came from.
pub fn headers(headers: OwnedHeaders, source_topic: &str, why: &str, at: Position) -> OwnedHeaders {
    headers
        .insert(Header { key: DLQ_ERROR, value: Some(why) })
        .insert(Header { key: DLQ_TOPIC, value: Some(source_topic) })
        .insert(Header { key: DLQ_PARTITION, value: Some(&at.lane.to_string()) })
        .insert(Header { key: DLQ_OFFSET, value: Some(&at.seq.to_string()) })
}

/// Like Kafka Connect, create the dead-letter topic when it is missing: the broker's default replication first,
/// then a single replica for brokers that do not understand the default.
pub(super) fn create_topic(cfg: &Config, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = cfg.producer_config().create().map_err(Error::CreateClient)?;
    // Without a request timeout, a broker that never answers (librdkafka's mock cluster has no CreateTopics) hangs the
    // start for good.
    let opts =
        AdminOptions::new().operation_timeout(Some(cfg.startup_timeout)).request_timeout(Some(cfg.startup_timeout));
    let mut last = KafkaError::AdminOpCreation("no answer".into());
    for replication in [-1, 1] {
        let topic = NewTopic::new(&cfg.dlq_topic, partitions, TopicReplication::Fixed(replication));
        match block_on(admin.create_topics([&topic], &opts)).map(|mut r| r.pop()) {
            Ok(Some(Ok(_))) | Ok(Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists)))) => {
                log::info!("created the dead-letter topic \"{}\" ({partitions} partitions)", cfg.dlq_topic);
                return Ok(());
            }
            Ok(Some(Err((_, code)))) => last = KafkaError::AdminOp(code),
            Ok(None) => last = KafkaError::AdminOpCreation("no answer".into()),
            Err(e) => last = e,
        }
    }
    Err(Error::CreateTopic { topic: cfg.dlq_topic.clone(), source: last })
}
