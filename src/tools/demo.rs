//! `supervisor demo`: the real pipeline on an embedded Kafka, for a machine with no broker installed.
//!
//! A broker process runs librdkafka's mock cluster, a generator writing the article's name events (a few of them
//! malformed), and a checker reading the output. The parent runs the real supervisor against it. When the generator
//! is done and everything has arrived, or on Ctrl-C, the pipeline drains, and the checker verifies the promise:
//! every source event below the committed offsets is in the destination with the right hash, or in the
//! dead-letter topic.
//!
//! The broker gets its own process because the mock cluster starts threads, and the supervisor must fork its
//! children from a process without any.

use crate::config::{Cli, Config, DemoArgs};
use crate::error::{Error, Exit, Result};
use crate::sink::kafka::dead_letter::{DLQ_OFFSET, DLQ_PARTITION};
use crate::stage::child;
use crate::supervisor::observe::status;
use crate::supervisor::{Signals, Supervisor};
use crate::tools::yardstick;
use crate::worker::transform::md5;
use ipc_channel::ipc::{self, IpcReceiver, IpcSender};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const FIRST: [&str; 20] = [
    "Bonita",
    "Alejandra",
    "Marcus",
    "Yuki",
    "Oluwaseun",
    "Ines",
    "Dmitri",
    "Priya",
    "Chen",
    "Fatima",
    "Lars",
    "Aiyana",
    "Mateo",
    "Zoe",
    "Kwame",
    "Sofia",
    "Ravi",
    "Elena",
    "Tomasz",
    "Amara",
];
const LAST: [&str; 20] = [
    "Kautzer",
    "Gutierrez",
    "Nakamura",
    "Okafor",
    "Lindqvist",
    "Petrov",
    "Sharma",
    "Wang",
    "Haddad",
    "Muller",
    "Silva",
    "Nguyen",
    "O'Brien",
    "Kowalski",
    "Mensah",
    "Rossi",
    "Cohen",
    "Dubois",
    "Ivanova",
    "Park",
];
/// One event in this many is malformed, to show the dead-letter path.
const BAD_EVERY: u64 = 997;

/// Parent → broker process.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
enum Cmd {
    /// The pipeline has exited with `exit`: stop generating, check, and report. `filtered` is how many events the
    /// pipeline's transform filtered out (they have no output to find).
    Check { group: String, filtered: u64, exit: i32 },
}

/// The header every generated event carries its sequence number in: outputs keep their input's headers, so the
/// checker can tell which input an output came from whatever the transform made of it.
const SEQ_HEADER: &str = "demo-seq";

pub fn run(cli: &Cli, args: &DemoArgs, signals: Signals) -> Exit {
    match run_inner(cli, args, signals) {
        Ok(exit) => exit,
        Err(e) => {
            log::error!("demo: {e}");
            e.exit()
        }
    }
}

fn run_inner(cli: &Cli, args: &DemoArgs, signals: Signals) -> Result<Exit> {
    let (boot_tx, boot_rx) = ipc::channel::<String>().map_err(Error::CreateChannel)?;
    let (cmd_tx, cmd_rx) = ipc::channel::<Cmd>().map_err(Error::CreateChannel)?;
    let (verdict_tx, verdict_rx) = ipc::channel::<bool>().map_err(Error::CreateChannel)?;
    let parent = nix::unistd::getpid();
    let mut cfg = Config::from_cli(cli);
    if cli.hashers.is_none() {
        cfg.hashers = 4;
    }
    // The mock cluster waits out a departed member's whole session before it rebalances, even one that left the
    // group cleanly: with the 45 s default, a demo pipeline restarted after a crash would sit idle that long. The
    // user's own -X settings come later, and win.
    let short_sessions = [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")];
    cfg.properties.splice(0..0, short_sessions.map(|(k, v)| (k.to_string(), v.to_string())));
    // No thread has been started in this process yet.
    let (broker, (boot_rx, cmd_tx, verdict_rx)) = fork_broker(
        parent,
        (boot_rx, cmd_tx, verdict_rx),
        (boot_tx, cmd_rx, verdict_tx),
        |(boot_tx, cmd_rx, verdict_tx)| broker_main(&cfg, args, boot_tx, cmd_rx, verdict_tx),
    )?;
    let brokers = boot_rx.try_recv_timeout(Duration::from_secs(30)).map_err(Error::DemoStart)?;
    cfg.brokers = brokers;
    log::info!("embedded Kafka (librdkafka mock cluster) at {}; Ctrl-C drains and checks", cfg.brokers);
    if args.single_process && cfg.transform.label() != "md5" {
        log::error!("demo --single-process runs the default md5 transform only: leave out --jq, --jq-file and --exec");
        return Ok(Exit::Config);
    }
    let (exit, filtered) = if args.single_process {
        log::info!("running the single-process yardstick instead of the pipeline");
        let started = Instant::now();
        match yardstick::run(&cfg, &|| signals.received()) {
            Ok(run) => {
                log::info!("{}", status::summary(&run.totals, &run.committed, 0, started.elapsed()));
                (Exit::Clean, 0)
            }
            Err(e) => {
                log::error!("{e}");
                (e.exit(), 0)
            }
        }
    } else {
        let (exit, totals) = Supervisor::run_counted(cfg.clone(), signals);
        (exit, totals.filtered)
    };
    let verdict = cmd_tx
        .send(Cmd::Check { group: cfg.group_id.clone(), filtered, exit: exit.code() })
        .ok()
        .and_then(|()| verdict_rx.try_recv_timeout(Duration::from_secs(120)).ok());
    let _ = nix::sys::wait::waitpid(broker, None);
    Ok(outcome(exit, verdict))
}

/// Parent → broker process of a demo checked by its broker: the pipeline exited with `exit`; check and report.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub(crate) struct Check {
    pub exit: i32,
}

/// A checking broker process's ends: it sends its bootstrap address, hears how the pipeline exited, sends its
/// verdict.
pub(crate) type BrokerEnds = (IpcSender<String>, IpcReceiver<Check>, IpcSender<bool>);

/// Runs a demo on an embedded Kafka whose broker process also checks the result: forks `broker` (before any thread),
/// runs the pipeline on its brokers as `configure` sets it up (`group` and `topic` given, group sessions kept short),
/// tells the broker how it exited, and returns the demo's exit from that and the broker's verdict.
pub(crate) fn checked_on_embedded_kafka(
    cli: &Cli,
    signals: Signals,
    (group, topic): (&str, &str),
    broker: impl FnOnce(BrokerEnds) -> Result<()>,
    configure: impl FnOnce(&mut Config) -> Result<()>,
) -> Result<Exit> {
    let (boot_tx, boot_rx) = ipc::channel::<String>().map_err(Error::CreateChannel)?;
    let (check_tx, check_rx) = ipc::channel::<Check>().map_err(Error::CreateChannel)?;
    let (verdict_tx, verdict_rx) = ipc::channel::<bool>().map_err(Error::CreateChannel)?;
    let parent = nix::unistd::getpid();
    // No thread has been started in this process yet.
    let (pid, (boot_rx, check_tx, verdict_rx)) =
        fork_broker(parent, (boot_rx, check_tx, verdict_rx), (boot_tx, check_rx, verdict_tx), broker)?;
    let brokers = boot_rx.try_recv_timeout(Duration::from_secs(30)).map_err(Error::DemoStart)?;
    let mut cfg = Config::from_cli(cli);
    cfg.brokers = brokers;
    cfg.source_topic = topic.into();
    cfg.group_id = group.into();
    // The mock cluster waits out a departed member's whole session: keep it short (the user's -X comes later, and wins).
    let short_sessions = [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")];
    cfg.properties.splice(0..0, short_sessions.map(|(k, v)| (k.to_string(), v.to_string())));
    configure(&mut cfg)?;
    let (exit, _) = Supervisor::run_counted(cfg, signals);
    let verdict = check_tx
        .send(Check { exit: exit.code() })
        .ok()
        .and_then(|()| verdict_rx.try_recv_timeout(Duration::from_secs(120)).ok());
    let _ = nix::sys::wait::waitpid(pid, None);
    Ok(outcome(exit, verdict))
}

/// A demo's exit: the pipeline's, unless it exited cleanly and the check did not say OK (or said nothing).
pub(crate) fn outcome(exit: Exit, verdict: Option<bool>) -> Exit {
    match (exit, verdict) {
        (Exit::Clean, Some(true)) => Exit::Clean,
        (Exit::Clean, _) => Exit::Failure,
        (other, _) => other,
    }
}

/// `group`'s committed offset for each of `partitions` partitions of `topic` (0 where none).
pub(crate) fn group_committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .map_err(Error::CreateClient)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).map_err(Error::CreateClient)?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect())
}

/// Forks a demo's broker process, `demo-broker`, which must be done before this process starts any thread: the mock
/// cluster starts threads, and the supervisor forks its children from a process without any. The child drops the
/// parent's channel ends, runs `main` with its own and exits with its code; the parent drops the child's ends and
/// gets its own back, with the child's pid.
pub(crate) fn fork_broker<P, C>(
    parent: nix::unistd::Pid,
    parents: P,
    childs: C,
    main: impl FnOnce(C) -> Result<()>,
) -> Result<(nix::unistd::Pid, P)> {
    // SAFETY: the callers start no thread before this.
    match unsafe { nix::unistd::fork() }.map_err(Error::Fork)? {
        nix::unistd::ForkResult::Child => {
            drop(parents);
            let code = match child::prologue("demo-broker", parent).and_then(|()| main(childs)) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    e.exit().code()
                }
            };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(childs);
            Ok((child, parents))
        }
    }
}

/// What the generator wrote: for each source partition, offset → (seq, malformed).
type Written = Mutex<HashMap<i32, HashMap<i64, (u64, bool)>>>;

#[derive(Default)]
struct Generated {
    written: Written,
    failed: AtomicU64,
}

struct GenContext(Arc<Generated>);

impl ClientContext for GenContext {}

impl ProducerContext for GenContext {
    type DeliveryOpaque = Box<(u64, bool)>;
    fn delivery(&self, r: &DeliveryResult<'_>, seq: Box<(u64, bool)>) {
        match r {
            Ok(m) => {
                let mut w = self.0.written.lock().unwrap_or_else(PoisonError::into_inner);
                w.entry(m.partition()).or_default().insert(m.offset(), *seq);
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn is_malformed(seq: u64) -> bool {
    seq % BAD_EVERY == BAD_EVERY - 1
}

/// Microseconds since the epoch: when an event was handed to the source producer.
fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// One source event; with `sent_us`, it carries its send time so that the checker can time it end to end.
fn event(seq: u64, pad: &str, sent_us: Option<u64>) -> (String, Vec<u8>) {
    let key = format!("{}", seq % 1024);
    let (f, l) = (FIRST[(seq % 20) as usize], LAST[((seq / 20) % 20) as usize]);
    let sent = sent_us.map_or_else(String::new, |t| format!(r#", "sent_us": {t}"#));
    let body = if is_malformed(seq) {
        format!(r#"{{"first_name": "{f}", "last_na"#)
    } else {
        format!(r#"{{"first_name": "{f}", "last_name": "{l}", "seq": {seq}{sent}{pad}}}"#)
    };
    (key, body.into_bytes())
}

fn broker_main(
    cfg: &Config,
    args: &DemoArgs,
    boot_tx: IpcSender<String>,
    cmd_rx: IpcReceiver<Cmd>,
    verdict_tx: IpcSender<bool>,
) -> Result<()> {
    let cluster = MockCluster::new(1).map_err(Error::MockCluster)?;
    for topic in [&cfg.source_topic, &cfg.dest_topic, &cfg.dlq_topic] {
        cluster.create_topic(topic, args.partitions, 1).map_err(Error::MockCluster)?;
    }
    let brokers = cluster.bootstrap_servers();
    boot_tx.send(brokers.clone()).map_err(Error::Send)?;

    let generated = Arc::new(Generated::default());
    // The mock cluster keeps only 5 MiB per partition and deletes older data: the generator stays well behind that,
    // or events would be deleted before the pipeline reads them.
    let arrived_so_far = Arc::new(AtomicU64::new(0));
    let event_bytes = event(0, "", Some(now_us())).1.len() as u64 + args.pad as u64 + 64;
    let max_lag = (args.partitions as u64 * 2 * 1024 * 1024 / event_bytes).max(1000);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let generator = {
        let producer: ThreadedProducer<GenContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "5")
            .create_with_context(GenContext(generated.clone()))
            .map_err(Error::CreateClient)?;
        let generator = Generator {
            topic: cfg.source_topic.clone(),
            events: args.events,
            rate: args.rate,
            pad: if args.pad > 0 { format!(r#", "note": "{}""#, "x".repeat(args.pad)) } else { String::new() },
            lag: Lag { arrived: arrived_so_far.clone(), max: max_lag },
            stop: stop.clone(),
            count: count.clone(),
        };
        std::thread::spawn(move || generator.run(&producer))
    };

    let custom = cfg.transform.label() != "md5";
    let checker = Checker::new(&brokers, cfg, args.partitions, custom)?;
    // With the user's transform an event may have no output at all: what the pipeline committed says how far it got.
    let commits = if custom { Some(Commits::new(&brokers, cfg, &cfg.group_id, args.partitions)?) } else { None };
    let mut committed_total = 0;
    let mut checked = Seen::default();
    let started = Instant::now();
    let (mut last_report, mut last_arrived) = (Instant::now(), 0u64);
    let mut signalled = false;
    let mut first_arrival: Option<Instant> = None;
    let mut first_arrival_us = 0;
    let (group, filtered, exit) = loop {
        checker.read(&mut checked, Duration::from_millis(100));
        let arrived = checked.arrived();
        let now = Instant::now();
        if let Some(commits) = &commits {
            if now.duration_since(last_report) >= Duration::from_secs(1) {
                committed_total = commits.total();
            }
        }
        arrived_so_far.store(arrived.max(committed_total), Ordering::Relaxed);
        if arrived > 0 && first_arrival.is_none() {
            first_arrival = Some(now);
            first_arrival_us = now_us();
        }
        if now.duration_since(last_report) >= Duration::from_secs(1) {
            let generated = count.load(Ordering::Relaxed);
            let rate = (arrived - last_arrived) as f64 / now.duration_since(last_report).as_secs_f64();
            if first_arrival.is_none() {
                // Nothing has come out yet: the consumer is still joining its group, which hands it its partitions.
                log::info!("generated {generated}  waiting for the pipeline to join its group and take its partitions");
            } else if custom {
                log::info!(
                    "generated {generated}  transformed {} into {} outputs  dead-lettered {}  committed {}  {:.0} \
                     events/s",
                    checked.transformed.len(),
                    checked.outputs,
                    checked.dead.len(),
                    committed_total,
                    rate
                );
            } else {
                log::info!(
                    "generated {generated}  hashed {}  dead-lettered {}  in flight {}  {:.0} events/s",
                    checked.hashed.len(),
                    checked.dead.len(),
                    generated.saturating_sub(arrived),
                    rate
                );
            }
            (last_report, last_arrived) = (now, arrived);
        }
        // A transform may filter events out: then all were taken once all are committed.
        let done = if custom { committed_total >= args.events } else { arrived >= args.events };
        if !signalled && args.events > 0 && done {
            let flowing = first_arrival.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            log::info!(
                "all {} events {}, {:.1}s after the start, {flowing:.2}s after the first: {:.0} events/s; stopping",
                args.events,
                if custom { "committed" } else { "arrived" },
                started.elapsed().as_secs_f64(),
                args.events as f64 / flowing.max(1e-3)
            );
            // The same path as Ctrl-C: the supervisor drains.
            let _ = nix::sys::signal::kill(nix::unistd::getppid(), nix::sys::signal::Signal::SIGINT);
            signalled = true;
        }
        match cmd_rx.try_recv() {
            Ok(Cmd::Check { group, filtered, exit }) => break (group, filtered, exit),
            Err(ipc_channel::TryRecvError::Empty) => {}
            Err(_) => return Ok(()),
        }
    };
    stop.store(true, Ordering::SeqCst);
    let _ = generator.join();
    // Whatever is still on its way arrives within a second of the last drain step.
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(1) {
        if checker.read(&mut checked, Duration::from_millis(100)) > 0 {
            idle_since = Instant::now();
        }
    }
    let ok = verdict(&brokers, cfg, args.partitions, &group, &generated, &checked, filtered)?;
    // A pipeline that failed never gets an OK, whatever the check found.
    let said = match (ok, exit) {
        (true, 0) => "OK: nothing lost".to_string(),
        (true, code) => format!("FAILED: the pipeline exited {code} (what it committed is there)"),
        (false, 0) => "FAILED".to_string(),
        (false, code) => format!("FAILED: the pipeline exited {code}, and the check failed"),
    };
    println!("  verdict                   {said}");
    println!();
    let ok = ok && exit == 0;
    // What was written while the group formed waited for it: time only what came after.
    if let Some(line) = latency_line(&checked.latencies, first_arrival_us + LATENCY_WARM_UP_US, args.rate) {
        println!("{line}\n");
    }
    let _ = verdict_tx.send(ok);
    Ok(())
}

/// Writes the article's name events to the source topic.
struct Generator {
    topic: String,
    /// How many to write; 0 is until stopped.
    events: u64,
    /// Events per second; 0 is as fast as the broker takes them.
    rate: u64,
    /// Extra JSON field appended to every event.
    pad: String,
    lag: Lag,
    stop: Arc<AtomicBool>,
    /// How many were written so far.
    count: Arc<AtomicU64>,
}

impl Generator {
    fn run(&self, producer: &ThreadedProducer<GenContext>) {
        let Generator { topic, events, rate, pad, lag, stop, count } = self;
        let (events, rate) = (*events, *rate);
        let t0 = Instant::now();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) && (events == 0 || seq < events) {
            if rate > 0 {
                let due = t0 + Duration::from_secs_f64(seq as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            while seq.saturating_sub(lag.arrived.load(Ordering::Relaxed)) > lag.max && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // At a steady rate the events are timed end to end; flat out, the backlog would only time the queue.
            let (key, body) = event(seq, pad, (rate > 0).then(now_us));
            let bad = is_malformed(seq);
            let seq_text = seq.to_string();
            let headers = OwnedHeaders::new().insert(Header { key: SEQ_HEADER, value: Some(seq_text.as_bytes()) });
            let mut rec = BaseRecord::with_opaque_to(topic, Box::new((seq, bad)))
                .key(key.as_bytes())
                .payload(&body[..])
                .headers(headers);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        rec = back;
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            seq += 1;
            count.store(seq, Ordering::Relaxed);
        }
        let _ = producer.flush(Duration::from_secs(30));
    }
}

/// How far the generator may run ahead of what has arrived.
struct Lag {
    arrived: Arc<AtomicU64>,
    max: u64,
}

#[derive(Default)]
struct Seen {
    /// seq of each hashed event seen, with how often.
    hashed: HashMap<u64, u32>,
    /// With the user's transform: seq of each input that has outputs, with how many.
    transformed: HashMap<u64, u32>,
    outputs: u64,
    /// (partition, offset) of each dead-lettered source event.
    dead: HashSet<(i32, i64)>,
    wrong_hash: u64,
    /// (sent, source write → destination read) in µs, for events stamped with their send time.
    latencies: Vec<(u64, u64)>,
}

impl Seen {
    fn arrived(&self) -> u64 {
        (self.hashed.len() + self.transformed.len() + self.dead.len()) as u64
    }
}

struct Checker {
    consumer: BaseConsumer,
    dest: String,
    /// The user's transform: outputs are told apart by their input's header, not by their hash.
    custom: bool,
}

impl Checker {
    fn new(brokers: &str, cfg: &Config, partitions: i32, custom: bool) -> Result<Checker> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "supervisor-demo-checker")
            .set("enable.auto.commit", "false")
            // The mock broker holds an empty fetch for the whole wait even when data comes meanwhile: a short wait
            // keeps the checker's own delay out of the latency it measures.
            .set("fetch.wait.max.ms", "5")
            .create()
            .map_err(Error::CreateClient)?;
        let mut tpl = TopicPartitionList::new();
        for topic in [&cfg.dest_topic, &cfg.dlq_topic] {
            for p in 0..partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(Error::CreateClient)?;
            }
        }
        consumer.assign(&tpl).map_err(Error::CreateClient)?;
        Ok(Checker { consumer, dest: cfg.dest_topic.clone(), custom })
    }

    /// Reads what is there (waiting up to `wait` for the first); returns how many events it read.
    fn read(&self, seen: &mut Seen, wait: Duration) -> usize {
        let mut n = 0;
        let mut timeout = wait;
        while let Some(Ok(m)) = self.consumer.poll(timeout) {
            timeout = Duration::ZERO;
            n += 1;
            let payload = m.payload().unwrap_or_default();
            let header = |name: &str| {
                m.headers()
                    .and_then(|hs| hs.iter().find(|h| h.key == name))
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok())
            };
            if m.topic() == self.dest && self.custom {
                seen.outputs += 1;
                match header(SEQ_HEADER) {
                    Some(seq) => *seen.transformed.entry(seq as u64).or_default() += 1,
                    None => seen.wrong_hash += 1,
                }
            } else if m.topic() == self.dest {
                match check_hash(payload) {
                    Some((seq, sent_us)) => {
                        *seen.hashed.entry(seq).or_default() += 1;
                        if let Some(sent) = sent_us {
                            seen.latencies.push((sent, now_us().saturating_sub(sent)));
                        }
                    }
                    None => seen.wrong_hash += 1,
                }
            } else {
                if let (Some(p), Some(o)) = (header(DLQ_PARTITION), header(DLQ_OFFSET)) {
                    seen.dead.insert((p as i32, o));
                }
            }
            if n >= 100_000 {
                break;
            }
        }
        n
    }
}

/// The seq (and send time, if stamped) of a hashed event whose hash is the md5 of its source bytes (the output
/// without the spliced field).
fn check_hash(out: &[u8]) -> Option<(u64, Option<u64>)> {
    let s = std::str::from_utf8(out).ok()?;
    let at = s.rfind(",\"hash\":\"")?;
    let hash = s.get(at + 9..at + 41)?;
    let source = format!("{}}}", &s[..at]);
    let want = md5::md5_hex(source.as_bytes());
    if hash.as_bytes() != want {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&source).ok()?;
    Some((v.get("seq")?.as_u64()?, v.get("sent_us").and_then(serde_json::Value::as_u64)))
}

/// Events sent this long after the first arrival are timed; earlier ones queued up while the group formed.
const LATENCY_WARM_UP_US: u64 = 2_000_000;

/// Latency percentiles of the events sent from `since` on.
fn latency_line(latencies: &[(u64, u64)], since: u64, rate: u64) -> Option<String> {
    let mut us: Vec<u64> = latencies.iter().filter(|(sent, _)| *sent >= since).map(|(_, l)| *l).collect();
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let at = |q: f64| us[((q * us.len() as f64) as usize).min(us.len() - 1)] as f64 / 1000.0;
    Some(format!(
        "  latency                   p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} events at {rate}/s, source write to \
         destination read, after a {} s warm-up)",
        at(0.5),
        at(0.99),
        at(1.0),
        us.len(),
        LATENCY_WARM_UP_US / 1_000_000
    ))
}

/// Reads what the pipeline's group committed on the source topic.
struct Commits {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl Commits {
    fn new(brokers: &str, cfg: &Config, group: &str, partitions: i32) -> Result<Commits> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .create()
            .map_err(Error::CreateClient)?;
        Ok(Commits { consumer, topic: cfg.source_topic.clone(), partitions })
    }

    /// Each partition's committed offset (0 where none is).
    fn offsets(&self) -> Result<Vec<i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self.consumer.committed_offsets(tpl, Duration::from_secs(10)).map_err(Error::CreateClient)?;
        Ok((0..self.partitions)
            .map(|p| match committed.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            })
            .collect())
    }

    /// Events committed so far, over all partitions (offsets start at 0 on the demo's fresh topics).
    fn total(&self) -> u64 {
        self.offsets().map_or(0, |o| o.iter().map(|&o| o.max(0) as u64).sum())
    }
}

fn verdict(
    brokers: &str,
    cfg: &Config,
    partitions: i32,
    group: &str,
    generated: &Generated,
    seen: &Seen,
    filtered: u64,
) -> Result<bool> {
    let commits = Commits::new(brokers, cfg, group, partitions)?;
    let offsets = commits.offsets()?;
    let written = generated.written.lock().unwrap_or_else(PoisonError::into_inner);
    let custom = cfg.transform.label() != "md5";
    let (mut below, mut missing, mut total) = (0u64, 0u64, 0u64);
    let mut commits = Vec::new();
    for (p, &upto) in (0..partitions).zip(&offsets) {
        commits.push(format!("{p}:{upto}"));
        for (&offset, &(seq, bad)) in written.get(&p).into_iter().flatten() {
            total += 1;
            if offset < upto {
                below += 1;
                let there = if bad {
                    seen.dead.contains(&(p, offset))
                } else if custom {
                    seen.transformed.contains_key(&seq) || seen.dead.contains(&(p, offset))
                } else {
                    seen.hashed.contains_key(&seq)
                };
                missing += u64::from(!there);
            }
        }
    }
    println!();
    println!("  events generated          {total}");
    let not_written = generated.failed.load(Ordering::Relaxed);
    if not_written > 0 {
        println!("  not written (broker refused) {not_written}");
    }
    let ok = if custom {
        // An input with no output was either filtered out by the transform or lost: the pipeline counted the first.
        let ok = missing <= filtered && seen.wrong_hash == 0;
        println!("  transformed               {}, into {} outputs", seen.transformed.len(), seen.outputs);
        println!("  in the dead-letter topic  {}", seen.dead.len());
        println!("  filtered out              {filtered}");
        println!("  committed offsets         {}", commits.join(" "));
        println!(
            "  below them: {below} events, {missing} without output (at most the {filtered} filtered out), {} outputs \
             without their input's {SEQ_HEADER} header",
            seen.wrong_hash
        );
        ok
    } else {
        let duplicates: u32 = seen.hashed.values().map(|c| c - 1).sum();
        println!("  hashed, in the output     {}", seen.hashed.len());
        println!("  in the dead-letter topic  {}", seen.dead.len());
        println!("  duplicates                {duplicates}");
        println!("  committed offsets         {}", commits.join(" "));
        println!("  below them: {below} events, missing {missing}, wrong hashes {}", seen.wrong_hash);
        missing == 0 && seen.wrong_hash == 0
    };
    Ok(ok)
}
