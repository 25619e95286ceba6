//! The parent process: forks the stages, watches them, and runs the drain.
//!
//! It forks before any thread or Kafka client exists, and never starts one itself, so every fork is safe. Start
//! order is producer → hashers → consumer, each waiting for the one before it to be ready; stopping is the reverse:
//! the consumer stops fetching and its poison pills flow down the pipeline.
//!
//! The first SIGINT/SIGTERM starts a drain bounded by `--drain-timeout`; a second one kills the children at once.
//! Uncommitted events are never lost: the next start re-reads them.

use crate::config::Config;
use crate::consumer::{self, ConsumerEnds};
use crate::error::{Error, Exit, Result};
use crate::hasher::{self, HasherEnds};
use crate::ipc::{self, AckReceiver, AckSender, BatchReceiver, BatchSender, Control, ControlReceiver, ControlSender};
use crate::ipc::{Report, ReportReceiver, ReportSender};
use crate::process::{self, Role};
use crate::producer::{self, ProducerEnds};
use ipc_channel::TryRecvError;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};
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
}

enum Phase {
    Running,
    Draining { deadline: Instant },
}

pub struct Supervisor {
    cfg: Config,
    signals: Signals,
    children: Vec<Child>,
    reports: Option<ReportReceiver>,
    report_tx: Option<ReportSender>,
    control: Option<ControlSender>,
    /// The worst reason to exit seen so far.
    outcome: Exit,
}

/// Which outcome wins when several happen: the one that tells the operator most about what to fix.
fn severity(e: Exit) -> u8 {
    match e {
        Exit::Clean => 0,
        Exit::DrainTimeout => 1,
        Exit::Failure => 2,
        Exit::FastStop => 3,
        Exit::Unavailable => 4,
        Exit::Config => 5,
    }
}

impl Supervisor {
    /// Runs the whole pipeline until it is stopped; returns the process exit code.
    pub fn run(cfg: Config, signals: Signals) -> Exit {
        match Supervisor::start(cfg, signals) {
            Ok(mut sup) => sup.supervise(),
            Err(e) => {
                log::error!("{e}");
                e.exit()
            }
        }
    }

    fn start(cfg: Config, signals: Signals) -> Result<Supervisor> {
        let (mut wiring, control) = Wiring::new(cfg.hashers)?;
        let (report_tx, reports) = ipc::report_channel()?;
        let mut sup = Supervisor {
            cfg,
            signals,
            children: Vec::new(),
            reports: Some(reports),
            report_tx: Some(report_tx),
            control: Some(control),
            outcome: Exit::Clean,
        };
        let mut roles = vec![Role::Producer];
        roles.extend((0..sup.cfg.hashers).map(Role::Hasher));
        roles.push(Role::Consumer);
        for role in roles {
            sup.spawn(role, &mut wiring)?;
            if !sup.await_ready(role) {
                break;
            }
        }
        drop(wiring);
        if sup.children.iter().all(|c| c.ready) {
            let pids: Vec<String> = sup.children.iter().map(|c| format!("{}={}", c.role, c.pid)).collect();
            log::info!(
                "pipeline running: {} → {} hashers → {} (dead letters to {}); pids {}",
                sup.cfg.source_topic,
                sup.cfg.hashers,
                sup.cfg.dest_topic,
                sup.cfg.dlq_topic,
                pids.join(" ")
            );
        }
        Ok(sup)
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
                drop(std::mem::replace(wiring, Wiring::empty()));
                let code = child_main(role, parent, &self.cfg, ends, report);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(ends);
                self.children.push(Child { pid: child, role, ready: false, reported: false, killed: false });
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
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Ready { pid } => {
                if let Some(c) = self.children.iter_mut().find(|c| c.pid.as_raw() == pid) {
                    c.ready = true;
                    log::debug!("{} (pid {pid}) is ready", c.role);
                }
            }
            Report::Failed { pid, code, message } => {
                let role = self.children.iter_mut().find(|c| c.pid.as_raw() == pid).map(|c| {
                    c.reported = true;
                    c.role
                });
                let who = role.map_or_else(|| format!("pid {pid}"), |r| r.to_string());
                log::error!("{message} ({who})");
                self.record(Exit::from_code(code));
            }
        }
    }

    fn record(&mut self, e: Exit) {
        if severity(e) > severity(self.outcome) {
            self.outcome = e;
        }
    }

    fn reap(&mut self) {
        let mut i = 0;
        while i < self.children.len() {
            let c = &self.children[i];
            match waitpid(c.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    i += 1;
                    continue;
                }
                Ok(WaitStatus::Exited(_, 0)) => log::debug!("{} (pid {}) exited", c.role, c.pid),
                Ok(WaitStatus::Exited(_, code)) => {
                    let why = Exit::from_code(code);
                    if !c.reported {
                        log::error!("{} (pid {}) exited with code {code} ({})", c.role, c.pid, why.describe());
                    }
                    self.record(why);
                }
                Ok(WaitStatus::Signaled(_, sig, _)) if c.killed => {
                    log::debug!("{} (pid {}) stopped by {sig}", c.role, c.pid)
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    log::error!("{} (pid {}) was killed by {sig}", c.role, c.pid);
                    self.record(Exit::Failure);
                }
                Ok(_) => {
                    i += 1;
                    continue;
                }
                Err(e) => log::error!("waitpid({}): {e}", c.pid),
            }
            self.children.remove(i);
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

    fn supervise(&mut self) -> Exit {
        // Nothing is consumed before the consumer runs: a failed or stopped start can simply end the others.
        if !self.consumer_started() || (self.outcome != Exit::Clean && !self.children.iter().all(|c| c.ready)) {
            self.request_drain();
            self.kill_all();
            return self.outcome;
        }
        let mut phase = Phase::Running;
        let mut seen_signals = 0;
        let mut seen_outcome = self.outcome;
        loop {
            let signals = self.signals.count();
            if signals > seen_signals {
                seen_signals = signals;
                match phase {
                    Phase::Running => {
                        log::info!(
                            "{} received: draining (within {:?}; send it again to stop at once)",
                            self.signals.last_name(),
                            self.cfg.drain_timeout
                        );
                        self.request_drain();
                        phase = Phase::Draining { deadline: Instant::now() + self.cfg.drain_timeout };
                    }
                    Phase::Draining { .. } => {
                        log::warn!(
                            "{} received again: stopping now; uncommitted events are re-read on the next start",
                            self.signals.last_name()
                        );
                        self.kill_all();
                        self.record(Exit::FastStop);
                        return self.outcome;
                    }
                }
            }
            if self.outcome != seen_outcome {
                seen_outcome = self.outcome;
                if let Phase::Running = phase {
                    log::error!("stopping the pipeline: draining what can be drained");
                    self.request_drain();
                    phase = Phase::Draining { deadline: Instant::now() + self.cfg.drain_timeout };
                }
            }
            if self.children.is_empty() {
                return self.outcome;
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
                    self.record(Exit::DrainTimeout);
                    return self.outcome;
                }
            }
            self.pump(Duration::from_millis(50));
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
    let tell = |r: Report| {
        if let Some(tx) = &report {
            let _ = tx.send(r);
        }
    };
    let ready = || tell(Report::Ready { pid });
    // A panic must not unwind into the supervisor's frames copied into this child.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_stage(cfg, ends, &ready)));
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

fn run_stage(cfg: &Config, ends: Ends, ready: &dyn Fn()) -> Result<Exit> {
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
            let (client, drain) = consumer::connect(cfg, ends)?;
            ready();
            consumer::run(cfg, client, drain)
        }
    }
}
