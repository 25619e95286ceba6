//! A compacted topic as a lookup (Kafka Streams' KTable): every partition read from its start to its end before the
//! worker is ready, then followed on a thread, each message's payload the row of its key and a tombstone (a null
//! payload) a deletion.

use crate::config::{Client, Config};
use crate::error::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The topic's rows by key, as far as it has been read.
pub struct Followed {
    rows: Mutex<HashMap<Vec<u8>, Arc<[u8]>>>,
    caught_up: AtomicBool,
}

impl Followed {
    pub fn get(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    fn apply(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let Some(key) = key else { return };
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        match payload {
            Some(p) => rows.insert(key.to_vec(), Arc::from(p)),
            None => rows.remove(key),
        };
    }
}

/// How long the first read to the topic's end may take before the worker gives up on it.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Reads `topic` to its end, then follows it on a thread of its own.
pub fn follow(cfg: &Config, name: &str, topic: &str) -> Result<Arc<Followed>> {
    let mut config = rdkafka::config::ClientConfig::new();
    config.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in cfg.properties_for(Client::Consumer) {
        config.set(k, v);
    }
    // Assigned, never subscribed: no group joins, nothing is committed; each worker reads the whole topic.
    config.set("group.id", format!("{}-lookup-{name}", cfg.group_id));
    config.set("enable.auto.commit", "false");
    config.set("enable.auto.offset.store", "false");
    // The end of a partition is told as an event: the last offset may be a transaction's marker, never delivered.
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create().map_err(Error::CreateClient)?;
    let md = crate::kafka::metadata(consumer.client(), cfg, Some(topic), || {
        let _ = consumer.poll(Duration::ZERO);
    })?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::MissingTopic { topic: topic.to_string(), hint: "--lookup with a topic that exists" });
    }
    // The partitions not read to their end yet: every one, until it tells its end (an empty one at once).
    let mut ends: HashSet<i32> = partitions.iter().copied().collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(Error::Subscribe)?;
    }
    consumer.assign(&tpl).map_err(Error::Subscribe)?;
    let followed = Arc::new(Followed { rows: Mutex::new(HashMap::new()), caught_up: AtomicBool::new(false) });
    let mine = followed.clone();
    let t0 = Instant::now();
    let (name, topic) = (name.to_string(), topic.to_string());
    let behind = Error::LookupBehind { name: name.clone(), topic: topic.clone(), waited: CATCH_UP };
    std::thread::Builder::new()
        .name("lookup".into())
        .spawn(move || loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => mine.apply(m.key(), m.payload()),
                Some(Err(KafkaError::PartitionEOF(p)))
                    if ends.remove(&p) && ends.is_empty() && !mine.caught_up.swap(true, Ordering::AcqRel) =>
                {
                    log::info!("lookup {name}: read topic {topic} to its end ({:.1?})", t0.elapsed());
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => log::warn!("lookup {name}: reading topic {topic}: {e}"),
                None => {}
            }
        })
        .map_err(|source| Error::SpawnThread { name: "lookup", source })?;
    let deadline = Instant::now() + CATCH_UP;
    while !followed.caught_up.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            return Err(behind);
        }
        crate::telemetry::heartbeat::waiting_on_peer(|| std::thread::sleep(Duration::from_millis(20)));
    }
    Ok(followed)
}
