//! Test harness: a real tansu broker on a free loopback port, clients to load and read topics, and the built
//! `supervisor` binary run as a user would run it.
#![allow(dead_code)]

use md5::{Digest, Md5};
pub use nix::sys::signal::{kill, Signal};
pub use nix::unistd::Pid;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(scratch_dir(name).join("tansu.log")).unwrap();
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        let t0 = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "tansu did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, addr }
    }

    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let new: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
        let res = futures_lite_block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap();
        for r in res {
            r.unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
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
        std::thread::park_timeout(Duration::from_millis(10));
    }
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
    let p: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("batch.num.messages", "1")
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

#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

fn reader(brokers: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
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
pub fn read_until(
    brokers: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
    until: impl Fn(&[Msg]) -> bool,
) -> Vec<Msg> {
    let c = reader(brokers, topic, partitions);
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
pub fn wait_for_events(brokers: &str, topic: &str, partitions: i32, n: usize, timeout: Duration) -> usize {
    let c = reader(brokers, topic, partitions);
    let t0 = Instant::now();
    let mut count = 0;
    while count < n && t0.elapsed() < timeout {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            count += 1;
        }
    }
    count
}

/// The group's committed offsets for partitions 0..n (-1 where none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

pub fn md5_hex(b: &[u8]) -> String {
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
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

/// The `supervisor` binary, running, with its stderr collected.
pub struct Running {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

pub fn base_args(brokers: &str, group: &str) -> Vec<String> {
    [
        "--brokers",
        brokers,
        "--group-id",
        group,
        "--source-topic",
        "src",
        "--dest-topic",
        "dst",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn start(args: &[String]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start supervisor");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  | {line}");
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    Running { child, log }
}

impl Running {
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the log reader catch up
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.log().contains(needle) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                return self.log().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The child pids by role, from the "pipeline running" line.
    pub fn pids(&self) -> HashMap<String, i32> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("pipeline running")).expect("pipeline running line");
        line.split("pids ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}
