//! The parent process: forks the stages, watches them, and runs the drain.
//!
//! It forks before any thread or Kafka client exists, and never starts one itself, so every fork is safe. Start
//! order is producer → hashers → consumer, each waiting for the one before it to be ready; stopping is the reverse:
//! the consumer stops fetching and its poison pills flow down the pipeline.
//!
//! The first SIGINT/SIGTERM starts a drain bounded by `--drain-timeout`; a second one kills the children at once.
//! Uncommitted events are never lost: the next start re-reads them.

pub mod observe;

use crate::channel::ipc::{
    self, AckReceiver, AckSender, BatchReceiver, BatchSender, Control, ControlReceiver, ControlSender,
};
use crate::channel::ipc::{Report, ReportReceiver, ReportSender};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::sink::kafka::{self as producer, ProducerEnds};
use crate::source::kafka::{self as consumer, ConsumerEnds};
use crate::stage::child::{self as process, Role};
use crate::supervisor::observe::metrics;
use crate::supervisor::observe::notify::Notifier;
use crate::telemetry::counters::{self as stats, StageStats};
use crate::telemetry::heartbeat;
use crate::worker::{self as hasher, HasherEnds};
use ipc_channel::TryRecvError;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts SIGINT/SIGTERM arrivals; the handler only touches atomics, which is async-signal-safe.
#[derive(Clone)]
pub struct Signals {
    count: Arc<AtomicUsize>,
    last: Arc<AtomicI32>,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let s = Signals { count: Arc::new(AtomicUsize::new(0)), last: Arc::new(AtomicI32::new(0)) };
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let (count, last) = (s.count.clone(), s.last.clone());
            // SAFETY: the handler only stores to atomics.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    last.store(sig, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                })
            }
            .map_err(|e| Error::Os(format!("installing the signal handler: {e}")))?;
        }
        Ok(s)
    }

    /// Whether a SIGINT or SIGTERM has arrived.
    pub fn received(&self) -> bool {
        self.count() > 0
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn last_name(&self) -> &'static str {
        match self.last.load(Ordering::SeqCst) {
            signal_hook::consts::SIGTERM => "SIGTERM",
            _ => "SIGINT",
        }
    }
}

/// Every channel end of the pipeline, before the forks hand them out. Each fork takes its role's ends in both
/// processes: the child keeps them and drops everything else, the parent drops them. So every end lives in exactly
/// one process, and a stage that dies closes its channels for the others to see.
struct Wiring {
    to_hashers: Vec<Option<BatchSender>>,
    hasher_inputs: Vec<Option<BatchReceiver>>,
    hasher_outputs: Vec<Option<BatchSender>>,
    producer_inputs: Vec<Option<BatchReceiver>>,
    ack_tx: Option<AckSender>,
    ack_rx: Option<AckReceiver>,
    control_rx: Option<ControlReceiver>,
}

enum Ends {
    Producer(ProducerEnds),
    Hasher(HasherEnds),
    Consumer(ConsumerEnds),
}

impl Wiring {
    fn new(hashers: usize) -> Result<(Wiring, ControlSender)> {
        let (mut to_hashers, mut hasher_inputs, mut hasher_outputs, mut producer_inputs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..hashers {
            let (tx, rx) = ipc::batch_channel()?;
            to_hashers.push(Some(tx));
            hasher_inputs.push(Some(rx));
            let (tx, rx) = ipc::batch_channel()?;
            hasher_outputs.push(Some(tx));
            producer_inputs.push(Some(rx));
        }
        let (ack_tx, ack_rx) = ipc::ack_channel()?;
        let (control_tx, control_rx) = ipc::control_channel()?;
        let wiring = Wiring {
            to_hashers,
            hasher_inputs,
            hasher_outputs,
            producer_inputs,
            ack_tx: Some(ack_tx),
            ack_rx: Some(ack_rx),
            control_rx: Some(control_rx),
        };
        Ok((wiring, control_tx))
    }

    fn take(&mut self, role: Role) -> Option<Ends> {
        Some(match role {
            Role::Producer => Ends::Producer(ProducerEnds {
                inputs: self.producer_inputs.iter_mut().map(Option::take).collect::<Option<_>>()?,
                acks: self.ack_tx.take()?,
            }),
            Role::Hasher(i) => Ends::Hasher(HasherEnds {
                input: self.hasher_inputs.get_mut(i)?.take()?,
                output: self.hasher_outputs.get_mut(i)?.take()?,
            }),
            Role::Consumer => Ends::Consumer(ConsumerEnds {
                to_hashers: self.to_hashers.iter_mut().map(Option::take).collect::<Option<_>>()?,
                acks: self.ack_rx.take()?,
                control: self.control_rx.take()?,
            }),
            Role::DemoBroker => return None,
        })
    }
}

struct Child {
    pid: Pid,
    role: Role,
    ready: bool,
    /// The child reported why it failed; its exit needs no second line.
    reported: bool,
    /// The supervisor killed it on purpose; its death is no news.
    killed: bool,
    /// The last report from it: heartbeats, ready.
    last_seen: Instant,
    /// When it was found hung and sent SIGABRT; SIGKILL follows after `HUNG_GRACE`.
    hung_since: Option<Instant>,
    /// The consumer has joined its group.
    joined: bool,
}

/// The pipeline's roles as metrics label them, each shown from the start even while its count is 0.
const STAGE_KINDS: [&str; 3] = ["consumer", "hasher", "producer"];

/// How long a hung child has to dump core after SIGABRT before SIGKILL.
const HUNG_GRACE: Duration = Duration::from_secs(1);
/// The first restart's delay; it doubles with every restart within the window, up to `BACKOFF_MAX`.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

enum Phase {
    Running,
    Draining { deadline: Instant },
}

/// How one run of the pipeline (one generation of children) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Stop here and exit with this code: the user asked, or restarting cannot help.
    Exit(Exit),
    /// A child crashed, hung or failed; the rest drained. A restart may mend it.
    Crashed,
}

pub struct Supervisor {
    cfg: Config,
    signals: Signals,
    children: Vec<Child>,
    reports: Option<ReportReceiver>,
    report_tx: Option<ReportSender>,
    control: Option<ControlSender>,
    /// The worst reason to stop seen in this generation.
    outcome: Exit,
    /// What went wrong first in this generation, for the restart and give-up lines.
    cause: Option<String>,
    /// Whose failure that was, when a child's.
    cause_role: Option<Role>,
    /// Restarts by the role of the child whose failure caused them, for the metrics.
    restarts_by_role: BTreeMap<&'static str, u64>,
    /// When recent restarts happened, for `--max-restarts` within `--restart-window`.
    restarts: VecDeque<Instant>,
    total_restarts: u64,
    /// systemd, when it runs us as a `Type=notify` service.
    notify: Notifier,
    ready_sent: bool,
    last_watchdog: Option<Instant>,
    /// The last counts from every child there has been, by pid: their sum is the whole run's.
    counts: HashMap<i32, (Role, StageStats)>,
    /// The counts of children whose pid a later child got.
    retired: Vec<(Role, StageStats)>,
    /// The newest consumer: its gauges (in flight, lag, committed offsets) are the pipeline's.
    current_consumer: Option<i32>,
    /// The newest producer: its gauge (librdkafka's queue) is the pipeline's.
    current_producer: Option<i32>,
    status: StatusLine,
    metrics: Option<metrics::Server>,
    drain_started: Option<Instant>,
    drains: u64,
    last_drain: Option<Duration>,
}

/// The periodic status: rates since the last one, in flight, lag, restarts.
struct StatusLine {
    started: Instant,
    last: Instant,
    last_totals: StageStats,
    /// A live line on a terminal, refreshed every second; otherwise a log line now and then.
    live: bool,
    every: Duration,
}

/// How often the status is logged when stderr is not a terminal (piped, or the journal).
const STATUS_LOG_EVERY: Duration = Duration::from_secs(30);

/// Which outcome wins when several happen: the one that tells the operator most about what to fix.
fn severity(e: Exit) -> u8 {
    match e {
        Exit::Clean => 0,
        Exit::DrainTimeout => 1,
        Exit::Failure => 2,
        Exit::GaveUp => 3,
        Exit::FastStop => 4,
        Exit::Unavailable => 5,
        Exit::Config => 6,
    }
}

/// The delay before restart number `n` within the window (n ≥ 1): 100 ms, doubling, at most 10 s.
fn backoff(n: usize) -> Duration {
    let doublings = n.saturating_sub(1).min(16) as u32;
    BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

impl Supervisor {
    /// Runs the pipeline until it is stopped, restarting it after failures; returns the process exit code.
    ///
    /// The restart strategy is Erlang's `rest_for_one` over the start order producer → hashers → consumer. Every
    /// stage sits on the one data path and the consumer comes last, so whatever dies, the consumer is among the
    /// stages to restart; the supervisor lets the survivors drain first (so that all they delivered is committed),
    /// then starts a fresh generation on fresh channels. The new consumer resumes from the committed offsets.
    pub fn run(cfg: Config, signals: Signals) -> Exit {
        let mut sup = match Supervisor::new(cfg, signals) {
            Ok(sup) => sup,
            Err(e) => {
                log::error!("{e}");
                return e.exit();
            }
        };
        let mut generation = 0u64;
        loop {
            generation += 1;
            let ended = match sup.start() {
                Ok(()) => sup.supervise(generation),
                Err(e) => {
                    log::error!("{e}");
                    sup.kill_all();
                    Ended::Exit(e.exit())
                }
            };
            match ended {
                Ended::Exit(exit) => {
                    if sup.total_restarts > 0 || sup.counts.values().any(|(_, s)| s.consumed > 0) {
                        sup.summary();
                    }
                    return exit;
                }
                Ended::Crashed => {
                    if let Some(exit) = sup.before_restart() {
                        return exit;
                    }
                }
            }
        }
    }

    fn new(cfg: Config, signals: Signals) -> Result<Supervisor> {
        let (report_tx, reports) = ipc::report_channel()?;
        let live = std::io::stderr().is_terminal();
        let every = cfg.status_interval.unwrap_or(if live { Duration::from_secs(1) } else { STATUS_LOG_EVERY });
        let metrics = match &cfg.metrics_addr {
            Some(addr) => {
                let server = metrics::Server::bind(addr)?;
                let shown = server.local_addr().map_or_else(|| addr.clone(), |a| a.to_string());
                log::info!("metrics at http://{shown}/metrics");
                Some(server)
            }
            None => None,
        };
        Ok(Supervisor {
            cfg,
            signals,
            children: Vec::new(),
            reports: Some(reports),
            report_tx: Some(report_tx),
            control: None,
            outcome: Exit::Clean,
            cause: None,
            cause_role: None,
            restarts_by_role: STAGE_KINDS.into_iter().map(|r| (r, 0)).collect(),
            restarts: VecDeque::new(),
            total_restarts: 0,
            notify: Notifier::from_env(),
            ready_sent: false,
            last_watchdog: None,
            counts: HashMap::new(),
            retired: Vec::new(),
            current_consumer: None,
            current_producer: None,
            status: StatusLine {
                started: Instant::now(),
                last: Instant::now(),
                last_totals: StageStats::default(),
                live,
                every,
            },
            metrics,
            drain_started: None,
            drains: 0,
            last_drain: None,
        })
    }

    /// Applies the restart policy after a crash: waits out the backoff and returns `None` to restart, or the exit
    /// code when the budget is spent or a signal came meanwhile.
    fn before_restart(&mut self) -> Option<Exit> {
        let cause = self.cause.take().unwrap_or_else(|| "a child failed".into());
        let role = self.cause_role.take().map_or("none", Role::kind);
        let now = Instant::now();
        while self.restarts.front().is_some_and(|t| now.duration_since(*t) > self.cfg.restart_window) {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= self.cfg.max_restarts as usize {
            log::error!(
                "giving up: {} restarts within {:?} did not help (--max-restarts {}); last failure: {cause}",
                self.restarts.len(),
                self.cfg.restart_window,
                self.cfg.max_restarts
            );
            self.notify.send(&format!("STATUS=gave up after {} restarts: {cause}", self.restarts.len()));
            return Some(Exit::GaveUp);
        }
        self.restarts.push_back(now);
        self.total_restarts += 1;
        *self.restarts_by_role.entry(role).or_default() += 1;
        let delay = backoff(self.restarts.len());
        log::warn!(
            "restarting the pipeline in {delay:?} (restart {} of at most {} within {:?}; {} in all) after: {cause}",
            self.restarts.len(),
            self.cfg.max_restarts,
            self.cfg.restart_window,
            self.total_restarts
        );
        self.notify.send(&format!("STATUS=restarting (restart {}) after: {cause}", self.total_restarts));
        let until = Instant::now() + delay;
        let signals = self.signals.count();
        while Instant::now() < until {
            if self.signals.count() > signals {
                log::warn!(
                    "{} received while restarting: stopping; uncommitted events are re-read on the next start",
                    self.signals.last_name()
                );
                return Some(Exit::Failure);
            }
            self.serve_metrics();
            std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
        }
        None
    }

    /// Forks a fresh generation on fresh channels: producer, hashers, consumer, each once the previous is ready.
    fn start(&mut self) -> Result<()> {
        let (mut wiring, control) = Wiring::new(self.cfg.hashers)?;
        self.control = Some(control);
        self.outcome = Exit::Clean;
        self.cause = None;
        self.cause_role = None;
        let mut roles = vec![Role::Producer];
        roles.extend((0..self.cfg.hashers).map(Role::Hasher));
        roles.push(Role::Consumer);
        for role in roles {
            self.spawn(role, &mut wiring)?;
            if !self.await_ready(role) {
                break;
            }
        }
        drop(wiring);
        if self.children.iter().all(|c| c.ready) {
            let pids: Vec<String> = self.children.iter().map(|c| format!("{}={}", c.role, c.pid)).collect();
            log::info!(
                "pipeline running: {} → {} hashers → {} (dead letters to {}); pids {}",
                self.cfg.source_topic,
                self.cfg.hashers,
                self.cfg.dest_topic,
                self.cfg.dlq_topic,
                pids.join(" ")
            );
        }
        Ok(())
    }

    fn spawn(&mut self, role: Role, wiring: &mut Wiring) -> Result<()> {
        let parent = getpid();
        let ends = wiring.take(role).ok_or_else(|| Error::Ipc(format!("no channels left for {role}")))?;
        // SAFETY: the supervisor is single-threaded (it never starts a thread), so the child starts in a consistent
        // state; the child runs its stage and exits without returning here.
        match unsafe { fork() }.map_err(|e| Error::Os(format!("fork: {e}")))? {
            ForkResult::Child => {
                let report = self.report_tx.take();
                // Close the ends that belong to the supervisor and to the other stages.
                self.reports = None;
                self.control = None;
                self.notify = Notifier::silent();
                // The port, and any scrape half served, are the supervisor's: a child holding them would keep the
                // port bound after the supervisor is gone.
                self.metrics = None;
                drop(std::mem::replace(wiring, Wiring::empty()));
                let code = child_main(role, parent, &self.cfg, ends, report);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(ends);
                let pid = child.as_raw();
                match role {
                    Role::Consumer => self.current_consumer = Some(pid),
                    Role::Producer => self.current_producer = Some(pid),
                    _ => {}
                }
                if let Some(earlier) = self.counts.insert(pid, (role, StageStats::default())) {
                    self.retired.push(earlier);
                }
                self.children.push(Child {
                    pid: child,
                    role,
                    ready: false,
                    reported: false,
                    killed: false,
                    last_seen: Instant::now(),
                    hung_since: None,
                    joined: false,
                });
                Ok(())
            }
        }
    }

    /// Waits for `role` to report ready; false if it failed or a signal came first (the caller then stops).
    fn await_ready(&mut self, role: Role) -> bool {
        let started = self.signals.count();
        loop {
            if self.children.iter().any(|c| c.role == role && c.ready) {
                return true;
            }
            if self.signals.count() > started || self.outcome != Exit::Clean || self.children.is_empty() {
                return false;
            }
            self.pump(Duration::from_millis(50));
        }
    }

    /// One round of waiting: child reports, then exits. A state change is recorded on `self`.
    fn pump(&mut self, wait: Duration) {
        if let Some(reports) = &self.reports {
            let mut next = reports.try_recv_timeout(wait);
            loop {
                match next {
                    Ok(report) => self.on_report(report),
                    Err(TryRecvError::Empty) => break,
                    Err(e) => {
                        log::debug!("report channel: {e:?}");
                        break;
                    }
                }
                next = match &self.reports {
                    Some(r) => r.try_recv(),
                    None => break,
                };
            }
        } else {
            std::thread::sleep(wait);
        }
        self.reap();
        self.pet_watchdog();
        self.report_status();
        self.serve_metrics();
    }

    /// Every child's counts there have been, with its role.
    fn all_counts(&self) -> impl Iterator<Item = &(Role, StageStats)> {
        self.counts.values().chain(&self.retired)
    }

    fn totals(&self) -> StageStats {
        let mut total = StageStats::default();
        for (_, stats) in self.all_counts() {
            total.absorb(stats);
        }
        if let Some((_, consumer)) = self.current_consumer.and_then(|pid| self.counts.get(&pid)) {
            total.in_flight = consumer.in_flight;
            total.partitions = consumer.partitions.clone();
        }
        total
    }

    fn report_status(&mut self) {
        let now = Instant::now();
        let since = now.duration_since(self.status.last);
        if since < self.status.every || self.children.is_empty() {
            return;
        }
        let totals = self.totals();
        let per_s = |now: u64, before: u64| (now.saturating_sub(before)) as f64 / since.as_secs_f64();
        let before = &self.status.last_totals;
        let line = format!(
            "in {:.0}/s, out {:.0}/s, in flight {}, lag {}, dead letters {}, restarts {}",
            per_s(totals.consumed, before.consumed),
            per_s(totals.delivered + totals.dead_lettered, before.delivered + before.dead_lettered),
            totals.in_flight,
            totals.lag().map_or_else(|| "?".to_string(), |l| l.to_string()),
            totals.dead_lettered,
            self.total_restarts
        );
        if self.status.live {
            // Ends with a carriage return: the next log line, from any process, overwrites it.
            eprint!("status: {line}\x1b[K\r");
        } else {
            log::info!("status: {line}");
        }
        self.notify.send(&format!("STATUS={line}"));
        self.status.last = now;
        self.status.last_totals = totals;
    }

    /// Answers scrapes of `--metrics-addr`, if any are waiting.
    fn serve_metrics(&mut self) {
        let Some(mut server) = self.metrics.take() else {
            return;
        };
        server.serve(|| self.render_metrics());
        self.metrics = Some(server);
    }

    fn render_metrics(&self) -> String {
        let mut stages: [StageStats; 3] = Default::default();
        for (role, stats) in self.all_counts() {
            let i = match role {
                Role::Consumer => 0,
                Role::Hasher(_) => 1,
                Role::Producer => 2,
                Role::DemoBroker => continue,
            };
            stages[i].absorb(stats);
        }
        let gauge = |pid: Option<i32>| pid.and_then(|pid| self.counts.get(&pid)).map(|(_, s)| s);
        let consumer = gauge(self.current_consumer);
        let restarts: Vec<(&str, u64)> = self.restarts_by_role.iter().map(|(r, n)| (*r, *n)).collect();
        let children: Vec<(&str, usize)> = STAGE_KINDS
            .into_iter()
            .map(|kind| (kind, self.children.iter().filter(|c| c.role.kind() == kind).count()))
            .collect();
        let ready = !self.children.is_empty()
            && self.children.iter().all(|c| c.ready && c.hung_since.is_none())
            && self.children.iter().any(|c| c.joined);
        metrics::render(&metrics::Snapshot {
            source_topic: &self.cfg.source_topic,
            consumer: &stages[0],
            hashers: &stages[1],
            producer: &stages[2],
            in_flight: consumer.map_or(0, |s| s.in_flight),
            capacity: self.cfg.queue_capacity,
            producer_queue: gauge(self.current_producer).map_or(0, |s| s.producer_queue),
            partitions: consumer.map_or(&[], |s| &s.partitions),
            restarts: &restarts,
            children: &children,
            ready,
            drains: self.drains,
            last_drain: self.last_drain,
            uptime: self.status.started.elapsed(),
        })
    }

    /// The closing summary: what the whole run did, across restarts.
    fn summary(&mut self) {
        // The children's last counts may still be on their way.
        self.pump(Duration::from_millis(50));
        let t = self.totals();
        let committed: Vec<String> = t
            .partitions
            .iter()
            .filter(|p| p.committed >= 0)
            .map(|p| format!("{}:{}", p.partition, p.committed))
            .collect();
        log::info!(
            "summary: {} consumed, {} delivered, {} dead-lettered, {} retried, {} restarts in {:.1?}; committed {}",
            t.consumed,
            t.delivered,
            t.dead_lettered,
            t.retried,
            self.total_restarts,
            self.status.started.elapsed(),
            if committed.is_empty() { "nothing yet".to_string() } else { committed.join(" ") }
        );
    }

    /// `WATCHDOG=1`, only while every child is alive and beating: a supervisor that cannot keep its pipeline alive
    /// (or is stuck itself) lets systemd's watchdog act.
    fn pet_watchdog(&mut self) {
        let Some(every) = self.notify.watchdog_every() else {
            return;
        };
        if self.last_watchdog.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        let timeout = self.cfg.child_timeout;
        let healthy = !self.children.is_empty()
            && self.children.iter().all(|c| c.hung_since.is_none() && c.last_seen.elapsed() <= timeout);
        if healthy {
            self.notify.send("WATCHDOG=1");
            self.last_watchdog = Some(Instant::now());
        }
    }

    /// `READY=1` once the first generation's consumer has joined its group; after a restart, only the status.
    fn on_joined(&mut self) {
        let status = format!(
            "STATUS=running: {} → {} hashers → {}{}",
            self.cfg.source_topic,
            self.cfg.hashers,
            self.cfg.dest_topic,
            if self.total_restarts > 0 { format!(" ({} restarts)", self.total_restarts) } else { String::new() }
        );
        if self.ready_sent {
            self.notify.send(&status);
        } else {
            self.notify.send(&format!("READY=1\n{status}"));
            self.ready_sent = true;
        }
    }

    fn child_mut(&mut self, pid: i32) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.pid.as_raw() == pid)
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Alive { pid, stats } => {
                if let Some(c) = self.child_mut(pid) {
                    c.last_seen = Instant::now();
                }
                if let Some((_, last)) = self.counts.get_mut(&pid) {
                    *last = stats;
                }
            }
            Report::Joined { pid } => {
                if let Some(c) = self.child_mut(pid) {
                    c.joined = true;
                    c.last_seen = Instant::now();
                    log::debug!("{} (pid {pid}) joined its group", c.role);
                    self.on_joined();
                }
            }
            Report::Ready { pid } => {
                if let Some(c) = self.child_mut(pid) {
                    c.ready = true;
                    c.last_seen = Instant::now();
                    log::debug!("{} (pid {pid}) is ready", c.role);
                }
            }
            Report::Failed { pid, code, message } => {
                let role = self.child_mut(pid).map(|c| {
                    c.reported = true;
                    c.role
                });
                let who = role.map_or_else(|| format!("pid {pid}"), |r| format!("{r} (pid {pid})"));
                log::error!("{who} failed: {message}");
                self.fail(Exit::from_code(code), role, format!("{who} failed: {message}"));
            }
        }
    }

    fn record(&mut self, e: Exit) {
        if severity(e) > severity(self.outcome) {
            self.outcome = e;
        }
    }

    /// Records a failure of this generation; the first one is its cause.
    fn fail(&mut self, e: Exit, role: Option<Role>, cause: String) {
        self.record(e);
        if self.cause.is_none() {
            self.cause = Some(cause);
            self.cause_role = role;
        }
    }

    fn reap(&mut self) {
        let mut i = 0;
        while i < self.children.len() {
            let c = &self.children[i];
            let (role, pid, hung) = (c.role, c.pid, c.hung_since.is_some());
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    i += 1;
                    continue;
                }
                Ok(WaitStatus::Exited(_, 0)) => log::debug!("{role} (pid {pid}) exited"),
                Ok(WaitStatus::Exited(_, code)) => {
                    let why = Exit::from_code(code);
                    let cause = format!("{role} (pid {pid}) exited with code {code} ({})", why.describe());
                    if !c.reported {
                        log::error!("{cause}");
                    }
                    self.fail(why, Some(role), cause);
                }
                Ok(WaitStatus::Signaled(_, sig, _)) if c.killed => log::debug!("{role} (pid {pid}) stopped by {sig}"),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    let cause = if hung {
                        format!("{role} (pid {pid}) hung and was killed by {sig}")
                    } else {
                        format!("{role} (pid {pid}) was killed by {sig}")
                    };
                    log::error!("{cause}");
                    self.fail(Exit::Failure, Some(role), cause);
                }
                Ok(_) => {
                    i += 1;
                    continue;
                }
                Err(e) => log::error!("waitpid({pid}): {e}"),
            }
            self.children.remove(i);
        }
    }

    /// Kills children that stopped beating: SIGABRT first (a core dump shows where it hung), SIGKILL after
    /// `HUNG_GRACE`.
    fn check_liveness(&mut self, watch: bool) {
        let now = Instant::now();
        let timeout = self.cfg.child_timeout;
        for c in &mut self.children {
            match c.hung_since {
                None if watch && c.ready && !c.killed && now.duration_since(c.last_seen) > timeout => {
                    log::error!(
                        "{} (pid {}) sent no heartbeat for {:?} (--child-timeout {:?}): killing it (SIGABRT, then \
                         SIGKILL)",
                        c.role,
                        c.pid,
                        now.duration_since(c.last_seen),
                        timeout
                    );
                    c.hung_since = Some(now);
                    let _ = kill(c.pid, Signal::SIGABRT);
                }
                Some(t) if now.duration_since(t) > HUNG_GRACE => {
                    let _ = kill(c.pid, Signal::SIGKILL);
                }
                _ => {}
            }
        }
    }

    fn consumer_started(&self) -> bool {
        self.children.iter().any(|c| c.role == Role::Consumer)
    }

    fn request_drain(&mut self) {
        if let Some(control) = &self.control {
            if let Err(e) = control.send(Control::Drain) {
                log::debug!("the consumer cannot be told to drain ({e}); it is gone");
            }
        }
    }

    fn kill_all(&mut self) {
        for c in &mut self.children {
            c.killed = true;
            let _ = kill(c.pid, Signal::SIGKILL);
        }
        while !self.children.is_empty() {
            let before = self.children.len();
            self.reap();
            if self.children.len() == before {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// How a generation that ended on a failure goes on: restart, or exit when restarting cannot help.
    fn after_failure(&self, generation: u64, started: bool) -> Ended {
        match self.outcome {
            Exit::Config => Ended::Exit(Exit::Config),
            // Unreachable brokers at the very first start are most likely a wrong address: say so and stop.
            Exit::Unavailable if generation == 1 && !started => Ended::Exit(Exit::Unavailable),
            _ => Ended::Crashed,
        }
    }

    fn supervise(&mut self, generation: u64) -> Ended {
        // Nothing is consumed before the consumer runs: a failed or stopped start can simply end the others.
        if !self.consumer_started() || (self.outcome != Exit::Clean && !self.children.iter().all(|c| c.ready)) {
            self.request_drain();
            self.kill_all();
            if self.outcome == Exit::Clean {
                // A signal during the start. After a restart, the crashed generation's uncommitted events are still
                // to be re-read: that is not a clean stop.
                return Ended::Exit(if generation == 1 { Exit::Clean } else { Exit::Failure });
            }
            return self.after_failure(generation, false);
        }
        let mut phase = Phase::Running;
        let mut seen_signals = self.signals.count();
        let mut stop_requested = seen_signals > 0;
        let mut seen_outcome = self.outcome;
        if stop_requested {
            self.notify_stopping();
            phase = self.begin_drain();
        }
        loop {
            let signals = self.signals.count();
            if signals > seen_signals {
                seen_signals = signals;
                match phase {
                    Phase::Running => {
                        stop_requested = true;
                        log::info!(
                            "{} received: draining (within {:?}; send it again to stop at once)",
                            self.signals.last_name(),
                            self.cfg.drain_timeout
                        );
                        self.notify_stopping();
                        phase = self.begin_drain();
                    }
                    Phase::Draining { .. } if !stop_requested => {
                        stop_requested = true;
                        self.notify_stopping();
                        log::info!(
                            "{} received: stopping after this drain instead of restarting",
                            self.signals.last_name()
                        );
                    }
                    Phase::Draining { .. } => {
                        log::warn!(
                            "{} received again: stopping now; uncommitted events are re-read on the next start",
                            self.signals.last_name()
                        );
                        self.kill_all();
                        self.record(Exit::FastStop);
                        return Ended::Exit(self.outcome);
                    }
                }
            }
            if self.outcome != seen_outcome {
                seen_outcome = self.outcome;
                if let Phase::Running = phase {
                    log::error!("stopping the pipeline: draining what can be drained");
                    let cause = self.cause.clone().unwrap_or_default();
                    self.notify.send(&format!("STATUS=recovering: draining after: {cause}"));
                    phase = self.begin_drain();
                }
            }
            if self.children.is_empty() {
                return self.finish(generation, stop_requested);
            }
            if let Phase::Draining { deadline } = phase {
                if Instant::now() >= deadline {
                    let left: Vec<String> = self.children.iter().map(|c| c.role.to_string()).collect();
                    log::error!(
                        "the drain did not finish within {:?} ({} still running): stopping them",
                        self.cfg.drain_timeout,
                        left.join(", ")
                    );
                    self.kill_all();
                    if stop_requested {
                        self.record(Exit::DrainTimeout);
                    } else {
                        self.fail(Exit::Failure, None, "the drain after a failure did not finish".into());
                    }
                    return self.finish(generation, stop_requested);
                }
            }
            self.check_liveness(matches!(phase, Phase::Running));
            self.pump(Duration::from_millis(50));
        }
    }

    /// `STOPPING=1`, and room for the whole drain in systemd's stop timeout.
    fn notify_stopping(&self) {
        let room = self.cfg.drain_timeout + Duration::from_secs(5);
        self.notify.send(&format!(
            "STOPPING=1\nSTATUS=draining (within {:?})\nEXTEND_TIMEOUT_USEC={}",
            self.cfg.drain_timeout,
            room.as_micros()
        ));
    }

    fn begin_drain(&mut self) -> Phase {
        self.request_drain();
        self.drain_started = Some(Instant::now());
        Phase::Draining { deadline: Instant::now() + self.cfg.drain_timeout }
    }

    /// Every child is gone: exit if the user asked for it (or nothing can mend it), else restart.
    fn finish(&mut self, generation: u64, stop_requested: bool) -> Ended {
        if let Some(started) = self.drain_started.take() {
            let took = started.elapsed();
            log::debug!("the drain took {took:.2?}");
            self.last_drain = Some(took);
            self.drains += 1;
        }
        match (stop_requested, self.outcome) {
            (true, Exit::Clean | Exit::DrainTimeout | Exit::FastStop | Exit::Config | Exit::Unavailable) => {
                Ended::Exit(self.outcome)
            }
            (true, _) => {
                log::warn!("stopped while recovering from a failure; uncommitted events are re-read on the next start");
                Ended::Exit(Exit::Failure)
            }
            (false, Exit::Clean) => {
                // Every stage ended by itself without a stop: nothing explains it but a failure.
                self.fail(Exit::Failure, None, "the pipeline stopped by itself".into());
                Ended::Crashed
            }
            (false, _) => self.after_failure(generation, true),
        }
    }
}

impl Wiring {
    fn empty() -> Wiring {
        Wiring {
            to_hashers: Vec::new(),
            hasher_inputs: Vec::new(),
            hasher_outputs: Vec::new(),
            producer_inputs: Vec::new(),
            ack_tx: None,
            ack_rx: None,
            control_rx: None,
        }
    }
}

/// A child's whole life: set-up, ready, its stage, and the exit code it reports.
fn child_main(role: Role, parent: Pid, cfg: &Config, ends: Ends, report: Option<ReportSender>) -> i32 {
    if let Err(e) = process::become_child(role, parent) {
        log::error!("{e}");
        return Exit::Failure.code();
    }
    let pid = getpid().as_raw();
    if let Some(tx) = report.clone() {
        let beat = move || tx.send(Report::Alive { pid, stats: stats::STAGE.snapshot() }).is_ok();
        if let Err(e) = heartbeat::STAGE.spawn_heartbeat(heartbeat::interval(cfg.child_timeout), beat) {
            log::error!("cannot start the heartbeat thread: {e}");
            return Exit::Failure.code();
        }
    }
    let tell = |r: Report| {
        if let Some(tx) = &report {
            let _ = tx.send(r);
        }
    };
    let ready = || tell(Report::Ready { pid });
    // A panic must not unwind into the supervisor's frames copied into this child.
    let joined: consumer::OnJoined = match report.clone() {
        Some(tx) => {
            // ipc-channel's sender is not Sync, and librdkafka may call back on another thread.
            let tx = std::sync::Mutex::new(tx);
            Box::new(move || {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send(Report::Joined { pid });
                }
            })
        }
        None => Box::new(|| {}),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_stage(cfg, ends, &ready, joined)));
    // The last counts, so that the supervisor's summary has them all.
    tell(Report::Alive { pid, stats: stats::STAGE.snapshot() });
    match outcome {
        Ok(Ok(exit)) => exit.code(),
        Ok(Err(e)) => {
            tell(Report::Failed { pid, code: e.exit().code(), message: e.to_string() });
            e.exit().code()
        }
        Err(_) => {
            tell(Report::Failed { pid, code: Exit::Failure.code(), message: format!("{role} panicked") });
            Exit::Failure.code()
        }
    }
}

fn run_stage(cfg: &Config, ends: Ends, ready: &dyn Fn(), joined: consumer::OnJoined) -> Result<Exit> {
    match ends {
        Ends::Producer(ends) => {
            let client = producer::connect(cfg)?;
            ready();
            producer::run(cfg, client, ends).map(|_| Exit::Clean)
        }
        Ends::Hasher(ends) => {
            ready();
            hasher::run(ends).map(|_| Exit::Clean)
        }
        Ends::Consumer(ends) => {
            let (client, drain) = consumer::connect(cfg, ends, joined)?;
            ready();
            consumer::run(cfg, client, drain)
        }
    }
}
