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
/// On a dead letter cut down to fit: what was kept, and the sizes of what was not.
pub const DLQ_CUT: &str = "dlq.cut";
pub const DLQ_SIZE: &str = "dlq.original.size";
pub const DLQ_KEY_SIZE: &str = "dlq.original.key.size";
pub const DLQ_HEADERS: &str = "dlq.original.headers";

/// How much of the value (and of the key) a dead letter cut down to fit keeps at most.
pub const PREFIX: usize = 1024;
/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MAX_BYTES: usize = 1_000_000;

/// How many headers [`headers`] adds to a dead letter's own.
pub const ADDED_HEADERS: usize = 4;

/// A dead letter's headers: its own, plus why it is there and where it came from.
pub fn headers(headers: OwnedHeaders, source_topic: &str, why: &str, at: Position) -> OwnedHeaders {
    headers
        .insert(Header { key: DLQ_ERROR, value: Some(why) })
        .insert(Header { key: DLQ_TOPIC, value: Some(source_topic) })
        .insert(Header { key: DLQ_PARTITION, value: Some(&crate::position::partition_of(at.lane).to_string()) })
        .insert(Header { key: DLQ_OFFSET, value: Some(&at.seq.to_string()) })
}

/// A dead letter too large for the dead-letter topic, cut down to what fits in a message of `max_bytes` (the
/// producer's `message.max.bytes`): the first [`PREFIX`] bytes of its key and value (a quarter of `max_bytes` each
/// when that is less, leaving room for the headers), why it is there and where it came from, and the sizes of what
/// was dropped. Its own headers are left out (they may be what made it too large); `why` is the reason it was
/// dead-lettered in the first place.
pub fn cut<'a>(
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: usize,
    max_bytes: usize,
    origin: (&str, &str, Position),
) -> (Option<&'a [u8]>, Option<&'a [u8]>, OwnedHeaders) {
    let (source_topic, why, at) = origin;
    let keep = PREFIX.min(max_bytes / 4);
    let prefix = |b: &'a [u8]| &b[..b.len().min(keep)];
    let size = payload.map_or(0, <[u8]>::len);
    let key_size = key.map_or(0, <[u8]>::len);
    let kept = format!(
        "too large for the dead-letter topic: the first {} of {size} value bytes and {} of {key_size} key bytes are \
         kept, its {headers} headers are not",
        size.min(keep),
        key_size.min(keep)
    );
    // The reason is cut too: it may quote the event.
    let end = (0..=keep.min(why.len())).rev().find(|&i| why.is_char_boundary(i)).unwrap_or(0);
    let why = &why[..end];
    let h = self::headers(OwnedHeaders::new_with_capacity(8), source_topic, why, at)
        .insert(Header { key: DLQ_CUT, value: Some(&kept) })
        .insert(Header { key: DLQ_SIZE, value: Some(&size.to_string()) })
        .insert(Header { key: DLQ_KEY_SIZE, value: Some(&key_size.to_string()) })
        .insert(Header { key: DLQ_HEADERS, value: Some(&headers.to_string()) });
    (key.map(prefix), payload.map(prefix), h)
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
