//! The Kafka side: a real tansu broker on a free loopback port, and clients to load topics, read them back and look
//! up a group's commits.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use supervisor::kafka::block_on;

/// Partitions of every topic the tests create.
pub const PARTITIONS: i32 = 4;

/// A source event: key and payload, either possibly absent.
pub type Event = (Option<Vec<u8>>, Option<Vec<u8>>);

pub fn tansu_bin() -> PathBuf {
    let candidates = [
        std::env::var_os("TANSU_BIN").map(PathBuf::from),
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).find(|p| p.is_file())),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "no tansu broker: run scripts/install-tansu (or set TANSU_BIN); the integration tests need a real broker"
        )
    })
}

/// Waits until `what` accepts connections on `addr`.
pub fn wait_listening(what: &str, addr: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what} did not start listening on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("supervisor-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tansu broker with in-memory storage, killed on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
}

impl Broker {
    pub fn start(name: &str) -> Broker {
        let port = free_port();
        Broker::start_with(name, port, port, &[])
    }

    /// A broker that requires SASL (SCRAM) authentication from every client.
    pub fn start_authenticating(name: &str) -> Broker {
        let port = free_port();
        Broker::start_with(name, port, port, &["--authentication"])
    }

    /// A broker listening on `port` that tells clients to connect to `advertised` (a TLS terminator in front of it,
    /// or the port itself), with more tansu flags.
    pub fn start_with(name: &str, port: u16, advertised: u16, extra: &[&str]) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let log = std::fs::File::create(scratch_dir(name).join("tansu.log")).unwrap();
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        wait_listening("tansu", &addr);
        Broker { child, addr }
    }

    /// A broker with the usual `src` and `dst` topics.
    pub fn with_topics(name: &str) -> Broker {
        let broker = Broker::start(name);
        broker.create_topics(&[("src", PARTITIONS), ("dst", PARTITIONS)]);
        broker
    }

    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        create_topics_at(&self.addr, topics);
    }
}

pub fn create_topics_at(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create().unwrap();
    let new: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    let res = block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap();
    for r in res {
        r.unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Client properties the harness's own clients need for a broker address, beyond bootstrap.servers: how to reach a
/// secured listener.
static SECURITY: Mutex<Vec<(String, Properties)>> = Mutex::new(Vec::new());

type Properties = Vec<(String, String)>;

/// From now on the harness's clients reach `addr` with these properties.
pub fn secure_clients_of(addr: &str, properties: &[(&str, &str)]) {
    let properties = properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    SECURITY.lock().unwrap().push((addr.to_string(), properties));
}

/// A client configuration for `brokers`, with what its listener needs.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (addr, properties) in SECURITY.lock().unwrap().iter() {
        if addr == brokers {
            for (k, v) in properties {
                c.set(k, v);
            }
        }
    }
    c
}

/// librdkafka's mock cluster with the usual topics, and the dead-letter topic made here (it has no CreateTopics).
pub fn mock_cluster() -> (rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String) {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in ["src", "dst", "dst.dlq"] {
        cluster.create_topic(topic, PARTITIONS, 1).unwrap();
    }
    let addr = cluster.bootstrap_servers();
    (cluster, addr)
}

type Delivery = (usize, Result<(i32, i64), String>);

#[derive(Default)]
struct Acks(Mutex<Vec<Delivery>>);
impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, i: usize) {
        let v = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap().push((i, v));
    }
}

/// Writes the events (key, payload) to `topic`; returns where each one landed, in input order.
///
/// One record per batch: tansu 0.6.0 serves a fetch that starts inside a record batch from the *next* batch, so a
/// consumer restarted at an offset committed mid-batch silently skips the rest of that batch (Kafka returns the
/// containing batch). Single-record batches keep every committed offset on a batch boundary, so what these tests
/// measure is the pipeline, not that broker bug.
pub fn produce(brokers: &str, topic: &str, events: &[Event]) -> Vec<(i32, i64)> {
    produce_with(brokers, topic, events, "1")
}

/// Like `produce`, in record batches of up to 10,000: a backlog the consumer takes at full speed. Only for tests that
/// never resume a group from a commit in the middle of a batch (see `produce`).
pub fn produce_batched(brokers: &str, topic: &str, events: &[Event]) -> Vec<(i32, i64)> {
    produce_with(brokers, topic, events, "10000")
}

fn produce_with(brokers: &str, topic: &str, events: &[Event], batch: &str) -> Vec<(i32, i64)> {
    let p: ThreadedProducer<Acks> = client_config(brokers)
        .set("enable.idempotence", "true")
        .set("batch.num.messages", batch)
        .set("linger.ms", "20")
        // Tests load events larger than a sink's default limit (1,000,000 bytes) on purpose.
        .set("message.max.bytes", "10000000")
        .create_with_context(Acks::default())
        .unwrap();
    for (i, (k, v)) in events.iter().enumerate() {
        let mut rec = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, i);
        rec.key = k.as_deref();
        rec.payload = v.as_deref();
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let mut out = vec![(-1, -1); events.len()];
    for (i, r) in p.context().0.lock().unwrap().drain(..) {
        out[i] = r.unwrap_or_else(|e| panic!("loading event {i}: {e}"));
    }
    out
}

/// Writes `events` to `src` in chunks of `chunk` with a pause before each, so that a test can act while the source is
/// still being written; returns where each event landed.
pub fn trickle(
    brokers: &str,
    events: &[Event],
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<Vec<(i32, i64)>> {
    let (brokers, events) = (brokers.to_string(), events.to_vec());
    std::thread::spawn(move || {
        events
            .chunks(chunk)
            .flat_map(|c| {
                std::thread::sleep(pause);
                produce(&brokers, "src", c)
            })
            .collect()
    })
}

/// The article's events, keyed so per-key order can be checked: `seq` counts up within each key.
pub fn name_events(n: usize, keys: usize) -> Vec<Event> {
    const FIRST: [&str; 8] = ["Bonita", "Marcus", "Yuki", "Ines", "Dmitri", "Priya", "Chen", "Fatima"];
    const LAST: [&str; 8] = ["Kautzer", "Gutierrez", "Nakamura", "Okafor", "Petrov", "Sharma", "Wang", "Rossi"];
    (0..n)
        .map(|i| {
            let key = format!("k{}", i % keys);
            let v = format!(
                r#"{{"first_name": "{}", "last_name": "{}", "key": "{key}", "seq": {}}}"#,
                FIRST[i % 8],
                LAST[(i / 8) % 8],
                i / keys
            );
            (Some(key.into_bytes()), Some(v.into_bytes()))
        })
        .collect()
}

/// One event as read back from a topic.
#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

fn reader(brokers: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer =
        client_config(brokers).set("group.id", "test-reader").set("enable.auto.commit", "false").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

fn to_msg(m: &rdkafka::message::BorrowedMessage<'_>) -> Msg {
    Msg {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Reads all of `topic` from the start: until `until` holds for what was read and nothing new came for two seconds,
/// or `timeout`.
pub fn read_until(brokers: &str, topic: &str, timeout: Duration, until: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
    let c = reader(brokers, topic);
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut last_new = Instant::now();
    while t0.elapsed() < timeout {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(to_msg(&m));
            last_new = Instant::now();
        }
        if last_new.elapsed() > Duration::from_secs(2) && until(&out) {
            break;
        }
    }
    out
}

/// Waits until at least `n` events are on `topic` (counting from the start), and returns at once.
pub fn wait_for_events(brokers: &str, topic: &str, n: usize, timeout: Duration) -> usize {
    let c = reader(brokers, topic);
    let t0 = Instant::now();
    let mut count = 0;
    while count < n && t0.elapsed() < timeout {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            count += 1;
        }
    }
    count
}

/// The group's committed offsets for each partition of `topic` (-1 where none).
pub fn committed(brokers: &str, group: &str, topic: &str) -> Vec<i64> {
    let c: BaseConsumer =
        client_config(brokers).set("group.id", group).set("enable.auto.commit", "false").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..PARTITIONS)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}
