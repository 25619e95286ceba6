//! Delivery reports: librdkafka tells, per message, whether the brokers have it. They are collected here, in the
//! client's context, and handled on the stage's own thread right after each `poll`.

use crate::position::Position;
use crate::telemetry::logging;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Where an in-flight message came from, carried through librdkafka as its delivery opaque.
#[derive(Debug)]
pub struct Origin {
    pub at: Position,
    pub to_dlq: bool,
    /// How far a dead letter was cut down because the whole event was too large for the dead-letter topic: 0 not at
    /// all, 1 to a prefix, 2 to its headers alone.
    pub cut: u8,
    /// When the input became several outputs: how many of them are not delivered yet, shared by all of them. The
    /// input's position is acknowledged when the last one is.
    pub undelivered: Option<Arc<AtomicU32>>,
    /// The source topic, when the source reads several: a dead letter's headers name it.
    pub topic: Option<Arc<str>>,
}

impl Origin {
    /// A message of the input at `at`, its only one, for the destination topic.
    pub fn new(at: Position) -> Origin {
        Origin { at, to_dlq: false, cut: 0, undelivered: None, topic: None }
    }

    /// This message is delivered: is its input now wholly delivered?
    fn input_done(&self) -> bool {
        self.undelivered.as_ref().is_none_or(|left| left.fetch_sub(1, Ordering::AcqRel) == 1)
    }
}

/// A message whose delivery failed, copied out of librdkafka so it can be sent again.
pub struct Failed {
    pub origin: Box<Origin>,
    pub error: KafkaError,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    pub timestamp: Option<i64>,
}

/// What the delivery reports since the last look said.
#[derive(Default)]
pub struct Outcomes {
    pub acked: Vec<Position>,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub failed: Vec<Failed>,
}

/// The producer's context: collects delivery reports.
#[derive(Default)]
pub struct Deliveries(Mutex<Outcomes>);

impl Deliveries {
    /// Everything reported since the last call.
    pub fn take(&self) -> Outcomes {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        logging::librdkafka(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        logging::librdkafka_error(&error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Origin>;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Box<Origin>) {
        let mut o = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => {
                if origin.input_done() {
                    o.acked.push(origin.at);
                }
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

/// The message (its key, value and headers together) is larger than the topic or the client accepts
/// (`message.max.bytes`, the topic's `max.message.bytes`).
pub fn is_too_large(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(e.rdkafka_error_code(), Some(MessageSizeTooLarge | MessageBatchTooLarge | InvalidMessageSize))
}

/// Errors that no retry can fix: the event goes to the dead-letter topic instead.
pub fn is_permanent(e: &KafkaError) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_of_several_outputs_is_done_with_its_last() {
        let left = Arc::new(AtomicU32::new(3));
        let outputs: Vec<Origin> = (0..3)
            .map(|_| Origin {
                at: Position::new(0, 7),
                to_dlq: false,
                cut: 0,
                undelivered: Some(left.clone()),
                topic: None,
            })
            .collect();
        let done: Vec<bool> = outputs.iter().map(Origin::input_done).collect();
        assert_eq!(done, [false, false, true]);
        assert!(Origin { at: Position::new(0, 8), to_dlq: false, cut: 0, undelivered: None, topic: None }.input_done());
    }

    #[test]
    fn only_errors_no_retry_can_fix_are_permanent() {
        let produce = |code| KafkaError::MessageProduction(code);
        assert!(is_permanent(&produce(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(is_permanent(&produce(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!is_permanent(&produce(RDKafkaErrorCode::RequestTimedOut)));
        assert!(!is_permanent(&produce(RDKafkaErrorCode::NotLeaderForPartition)));
        assert!(!is_permanent(&produce(RDKafkaErrorCode::MessageTimedOut)));
    }
}
