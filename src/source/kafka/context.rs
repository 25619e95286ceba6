//! What librdkafka calls back into, from inside `poll`: rebalances, commits, statistics and log lines.

use super::lanes::TopicLanes;
use super::{commit_sync, lanes_of, store};
use crate::position::{Lane, Position};
use crate::source::flow::Flow;
use crate::stage::Hooks;
use crate::telemetry::events::{emit, ClientStats, CommitFailed, Committed, LanesAssigned, LanesRevoked};
use crate::telemetry::logging;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The state shared between the poll loop and the callbacks librdkafka runs inside poll.
pub struct Context {
    flow: Mutex<Flow>,
    hooks: Hooks,
    /// The lane of each topic's partitions.
    lanes: TopicLanes,
    /// How long revoked partitions may take to settle their in-flight events.
    settle_timeout: Duration,
    /// Whether the workers are told the assignment (`Flow::announce`): only an aggregation reads it.
    announce: bool,
}

impl Context {
    pub(super) fn new(
        flow: Flow,
        hooks: Hooks,
        lanes: TopicLanes,
        settle_timeout: Duration,
        announce: bool,
    ) -> Context {
        Context { flow: Mutex::new(flow), hooks, lanes, settle_timeout, announce }
    }

    pub(super) fn lanes(&self) -> &TopicLanes {
        &self.lanes
    }

    pub(super) fn flow(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The assignment changed: the supervisor is told, and so is an aggregation's event time, down the pipeline.
    fn assigned(&self, consumer: &BaseConsumer<Self>) {
        let lanes = self.assignment(consumer);
        self.hooks.assigned(&lanes);
        if self.announce {
            // After a drain the workers are gone, and nothing downstream needs to know.
            if let Err(e) = self.flow().announce(&lanes) {
                log::debug!("cannot tell the workers the partitions assigned: {e}");
            }
        }
    }

    fn assignment(&self, consumer: &BaseConsumer<Self>) -> Vec<Lane> {
        consumer.assignment().map(|tpl| lanes_of(&tpl, &self.lanes)).unwrap_or_default()
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let owned = || {
            statistics.topics.iter().flat_map(|(name, topic)| {
                let lanes = &self.lanes;
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.desired)
                    .filter_map(move |p| lanes.lane(name, p.partition).map(|lane| (lane, p)))
            })
        };
        let lag = owned().filter(|(_, p)| p.consumer_lag >= 0).map(|(lane, p)| (lane, p.consumer_lag)).collect();
        let committed = owned()
            .filter(|(_, p)| p.committed_offset >= 0)
            .map(|(lane, p)| Position { lane, seq: p.committed_offset })
            .collect();
        emit(ClientStats { lag, committed });
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        logging::librdkafka(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        logging::librdkafka_error(&error, reason);
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                emit(LanesAssigned { added: &lanes_of(tpl, &self.lanes) });
                self.assigned(consumer);
            }
            Rebalance::Revoke(_) => self.assigned(consumer),
            Rebalance::Error(e) => log::warn!("rebalance failed: {e}"),
        }
    }

    /// Before partitions go, their in-flight events are settled and what was acked is committed, so the next owner
    /// starts where this one really stopped.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let lanes = lanes_of(revoked, &self.lanes);
        if lanes.is_empty() {
            return;
        }
        let mut flow = self.flow();
        let unacked = flow.settle(&lanes, Instant::now() + self.settle_timeout);
        let lost = consumer.assignment_lost();
        store(consumer, &mut flow);
        let positions: Vec<Position> =
            lanes.iter().filter_map(|&lane| flow.marks().position(lane).map(|seq| Position { lane, seq })).collect();
        let commit =
            (!positions.is_empty() && !lost).then(|| commit_sync(consumer, &positions).map(|()| positions.as_slice()));
        for &lane in &lanes {
            flow.forget(lane);
        }
        emit(LanesRevoked { lanes: &lanes, lost, commit, unacked });
    }

    /// The outcome of librdkafka's background commits of the stored offsets.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let positions: Vec<Position> = offsets
                    .elements()
                    .iter()
                    .filter(|e| e.error().is_ok())
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(seq) => Some(Position { lane: self.lanes.lane(e.topic(), e.partition())?, seq }),
                        _ => None,
                    })
                    .collect();
                if !positions.is_empty() {
                    emit(Committed { positions: &positions });
                }
            }
            // Nothing was stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => emit(CommitFailed { error: &e }),
        }
    }
}
