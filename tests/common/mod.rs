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
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writes `events` in chunks of `chunk` with a pause before each, so that a test can act while the source is still
/// being written; returns where each event landed.
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
    produce_with(brokers, topic, events, "1")
}

/// Like `produce`, in record batches of up to 10,000: a backlog the consumer takes at full speed. Only for tests that
/// never resume a group from a commit in the middle of a batch (see `produce`).
pub fn produce_batched(brokers: &str, topic: &str, events: &[Event]) -> Vec<(i32, i64)> {
    produce_with(brokers, topic, events, "10000")
}

fn produce_with(brokers: &str, topic: &str, events: &[Event], batch: &str) -> Vec<(i32, i64)> {
    let p: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("batch.num.messages", batch)
        .set("linger.ms", "20")
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
    start_with_env(args, &[])
}

pub fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .args(args)
        .envs(env.iter().copied())
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
    /// Waits until the process catches SIGINT and SIGTERM (its handlers are installed), as /proc shows it.
    pub fn wait_catching_signals(&self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
            let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim).unwrap_or("0");
            let mask = u64::from_str_radix(caught, 16).unwrap_or(0);
            let bit = |sig: Signal| 1u64 << (sig as i32 - 1);
            if mask & bit(Signal::SIGINT) != 0 && mask & bit(Signal::SIGTERM) != 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

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

    /// How many lines of the log contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n` lines of the log contain `needle`.
    pub fn wait_for_log_count(&mut self, needle: &str, n: usize, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.count_log(needle) >= n {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                return self.count_log(needle) >= n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The child pids by role, from the latest "pipeline running" line.
    pub fn pids(&self) -> HashMap<String, i32> {
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains("pipeline running")).expect("pipeline running line");
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

// What a run delivered, checked against what was sent.

pub const PARTITIONS: i32 = 4;

/// Checks one destination event against its source: the same bytes with `,"hash":"<md5 of the source>"` spliced in.
pub fn source_of(out: &[u8]) -> (Vec<u8>, String) {
    let s = std::str::from_utf8(out).expect("output is UTF-8");
    let at = s.rfind(",\"hash\":\"").expect("output has a hash");
    let hash = s[at + 9..at + 9 + 32].to_string();
    assert_eq!(&s[at + 9 + 32..], "\"}", "the hash is the last field");
    let mut src = s[..at].to_string();
    src.push('}');
    (src.into_bytes(), hash)
}

#[derive(Debug)]
pub struct Checked {
    pub unique: usize,
    pub duplicates: usize,
}

/// Every source event is in `dst` with its right hash, per-key order holds, and nothing else is there.
pub fn check_destination(sent: &[Event], dst: &[Msg]) -> Checked {
    let want: HashSet<&[u8]> = sent.iter().map(|(_, v)| v.as_deref().unwrap()).collect();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut last_seq: HashMap<(i32, Vec<u8>), i64> = HashMap::new();
    let mut by_partition: Vec<&Msg> = dst.iter().collect();
    by_partition.sort_by_key(|m| (m.partition, m.offset));
    for m in by_partition {
        let (src, hash) = source_of(m.payload.as_deref().unwrap());
        assert!(want.contains(&src[..]), "unexpected event {}", String::from_utf8_lossy(&src));
        assert_eq!(hash, md5_hex(&src), "wrong hash for {}", String::from_utf8_lossy(&src));
        let v: serde_json::Value = serde_json::from_slice(&src).unwrap();
        assert_eq!(m.key.as_deref(), Some(v["key"].as_str().unwrap().as_bytes()), "the key is kept");
        let seq = v["seq"].as_i64().unwrap();
        let first = *seen.entry(src.clone()).and_modify(|c| *c += 1).or_insert(1) == 1;
        // Per key, first deliveries come in source order (a re-delivery after a restart may repeat older ones).
        if first {
            let last = last_seq.entry((m.partition, m.key.clone().unwrap())).or_insert(-1);
            assert!(
                seq > *last,
                "key {:?}: seq {seq} arrived after {last}",
                String::from_utf8_lossy(m.key.as_deref().unwrap())
            );
            *last = seq;
        }
    }
    let missing: Vec<_> = want.iter().filter(|w| !seen.contains_key(**w)).take(3).collect();
    assert!(
        missing.is_empty(),
        "{} events missing, e.g. {:?}",
        want.len() - seen.len(),
        missing.iter().map(|m| String::from_utf8_lossy(m)).collect::<Vec<_>>()
    );
    Checked { unique: seen.len(), duplicates: seen.values().map(|c| c - 1).sum() }
}

/// Runs the pipeline again until the source is consumed, stops it with SIGINT, and checks that every event arrived
/// with the right hash and that the group committed the end of every partition.
pub fn finish_and_check(
    broker: &Broker,
    args: &[String],
    group: &str,
    events: &[Event],
    landed: &[(i32, i64)],
) -> Checked {
    let mut again = start(args);
    let _ = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(120), |m| m.len() >= events.len());
    again.signal(Signal::SIGINT);
    assert_eq!(again.wait_timeout(Duration::from_secs(30)).and_then(|s| s.code()), Some(0), "{}", again.log());
    let dst = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(30), |m| m.len() >= events.len());
    let checked = check_destination(events, &dst);
    assert_eq!(checked.unique, events.len(), "events missing after the restart");
    assert_eq!(committed(&broker.addr, group, "src", PARTITIONS), end_offsets(landed), "committed offsets");
    checked
}

/// One past the last offset written to each partition: what a complete run must have committed.
pub fn end_offsets(landed: &[(i32, i64)]) -> Vec<i64> {
    let mut end = vec![0; PARTITIONS as usize];
    for &(p, o) in landed {
        end[p as usize] = end[p as usize].max(o + 1);
    }
    end
}

/// Every source event below the committed offsets must be in the destination: the at-least-once promise.
pub fn assert_committed_are_delivered(sent: &[Event], landed: &[(i32, i64)], committed: &[i64], dst: &[Msg]) {
    let there: HashSet<Vec<u8>> = dst.iter().map(|m| source_of(m.payload.as_deref().unwrap()).0).collect();
    for (i, &(p, o)) in landed.iter().enumerate() {
        if o < committed[p as usize] {
            assert!(
                there.contains(sent[i].1.as_deref().unwrap()),
                "partition {p} offset {o} committed but not delivered"
            );
        }
    }
}
