//! The parent process: forks the stages, watches them, restarts them, and runs the drain.
//!
//! It forks before any thread or Kafka client exists, and never starts one itself, so every fork is safe. Start
//! order is sink → workers → source, each waiting for the one before it to be ready; stopping is the reverse: the
//! source stops taking events and its poison pills flow down the pipeline.
//!
//! The first SIGINT/SIGTERM starts a drain bounded by `--drain-timeout`; a second one kills the children at once.
//! Uncommitted events are never lost: the next start re-reads them.
//!
//! Its parts: the [`table`] of children and their states, the [`restart`] budget and outcome, the [`wiring`] of
//! each generation, the [`Signals`], and what it [`observe`]s and reports. This module drives them.

pub mod observe;
mod restart;
mod signals;
mod table;
mod wiring;

use crate::channel::ipc::{self, Control, ControlSender, Report, ReportReceiver, ReportSender};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::position::Position;
use crate::stage::{Kind, Role};
use crate::telemetry::count;
use crate::telemetry::counters::StageStats;
use ipc_channel::TryRecvError;
use nix::unistd::{fork, getpid, ForkResult};
use observe::counts::Counts;
use observe::metrics;
use observe::notify::Systemd;
use observe::status::{self, StatusLine};
use restart::{Outcome, RestartBudget, Verdict};
pub use signals::Signals;
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use table::{ChildState, Ending, ProcessTable, Transition};
use wiring::Ends;

/// What only the supervisor process may hold. A forked child drops it first thing: a child holding the report
/// receiver, the control sender or the metrics port would keep them open after the supervisor is gone.
#[derive(Default)]
struct ParentOnly {
    reports: Option<ReportReceiver>,
    /// This generation's drain request to the source.
    control: Option<ControlSender>,
    systemd: Systemd,
    metrics: Option<metrics::Server>,
}

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

/// Drains that finished, for the metrics.
#[derive(Default)]
struct Drains {
    started: Option<Instant>,
    finished: u64,
    last: Option<Duration>,
}

pub struct Supervisor {
    cfg: Config,
    signals: Signals,
    generation: u64,
    table: ProcessTable,
    outcome: Outcome,
    budget: RestartBudget,
    counts: Counts,
    status: StatusLine,
    /// The status is a live line on a terminal, refreshed in place; otherwise a log line now and then.
    live_status: bool,
    started: Instant,
    /// When the current generation was started, and how many positions the sources had acknowledged by then: the
    /// restart budget forgives a generation that ran long enough and got work done.
    generation_started: Instant,
    acked_before: u64,
    drains: Drains,
    /// A finite source (a table scan) read everything: the run ends once this generation has drained.
    finished: bool,
    /// Each sink's name for the status, the summary and `/metrics`, in `--sink`'s order.
    sinks: Vec<String>,
    /// Cloned into every child.
    report_tx: ReportSender,
    parent: ParentOnly,
}

impl Supervisor {
    /// Runs the pipeline until it is stopped, restarting it after failures; returns the process exit code.
    ///
    /// The restart strategy is Erlang's `rest_for_one` over the start order sink → workers → source. Every stage
    /// sits on the one data path and the source comes last, so whatever dies, the source is among the stages to
    /// restart; the supervisor lets the survivors drain first (so that all they delivered is committed), then starts
    /// a fresh generation on fresh channels. The new source resumes from the committed positions.
    pub fn run(cfg: Config, signals: Signals) -> Exit {
        Supervisor::run_counted(cfg, signals).0
    }

    /// [`Supervisor::run`], also returning the whole run's figures (the demo checks what arrived against them).
    pub fn run_counted(cfg: Config, signals: Signals) -> (Exit, StageStats) {
        if let Err(e) = crate::worker::transform::check(&cfg).and_then(|()| crate::aggregate::check(&cfg)) {
            log::error!("{e}");
            return (e.exit(), StageStats::default());
        }
        if cfg.uses_kafka() {
            // At once: an unreachable broker is only reported after the start-up timeout.
            log::info!("connecting to the Kafka brokers at {} ({})", cfg.brokers, cfg.security());
        }
        if cfg.drop_slot {
            let dropped =
                crate::source::table::follow::drop_slot(&cfg).and_then(|()| crate::source::table::forget_scan(&cfg));
            return match dropped {
                Ok(()) => (Exit::Clean, StageStats::default()),
                Err(e) => {
                    log::error!("{e}");
                    (e.exit(), StageStats::default())
                }
            };
        }
        if cfg.rescan {
            // Here, before any fork: the store's connection is closed again before a child exists.
            let forgotten = match cfg.follow {
                true => crate::source::table::follow::drop_slot(&cfg),
                false => Ok(()),
            };
            if let Err(e) = forgotten.and_then(|()| crate::source::table::forget_scan(&cfg)) {
                log::error!("{e}");
                return (e.exit(), StageStats::default());
            }
        }
        // Before any fork, so that every child, restarted ones too, inherits what connecting costs alike in each.
        let sinks = cfg.sinks();
        let sink_tables = sinks.iter().filter_map(|s| match &s.target {
            crate::config::sinks::SinkTarget::Table(url) => Some(url),
            crate::config::sinks::SinkTarget::Topic { .. } => None,
        });
        let tables = [cfg.source().table(), cfg.tables.checkpoint.as_ref()];
        crate::sql::prepare(tables.into_iter().flatten().chain(sink_tables));
        crate::stage::name_sinks(sinks.iter().map(|s| s.label()).collect());
        let mut sup = match Supervisor::new(cfg, signals) {
            Ok(sup) => sup,
            Err(e) => {
                log::error!("{e}");
                return (e.exit(), StageStats::default());
            }
        };
        loop {
            sup.generation += 1;
            let ended = match sup.start() {
                Ok(()) => sup.supervise(),
                Err(e) => {
                    log::error!("{e}");
                    sup.kill_all();
                    Ended::Exit(e.exit())
                }
            };
            let exit = match ended {
                Ended::Exit(exit) => Some(exit),
                Ended::Crashed => sup.before_restart(),
            };
            if let Some(exit) = exit {
                // A table scan that ends well says so, even with nothing to read (an empty table, a finished scan).
                let scanned = sup.cfg.source().is_table() && exit == Exit::Clean;
                if sup.budget.total() > 0 || sup.counts.any_consumed() || scanned {
                    sup.summary();
                }
                return (exit, sup.counts.totals());
            }
        }
    }

    fn new(cfg: Config, signals: Signals) -> Result<Supervisor> {
        let (report_tx, reports) = ipc::report_channel()?;
        let live_status = std::io::stderr().is_terminal();
        let every = cfg.status_interval.unwrap_or(if live_status { Duration::from_secs(1) } else { status::LOG_EVERY });
        let metrics = match &cfg.metrics_addr {
            Some(addr) => {
                let server = metrics::Server::bind(addr)?;
                let shown = server.local_addr().map_or_else(|| addr.clone(), |a| a.to_string());
                log::info!("metrics at http://{shown}/metrics");
                Some(server)
            }
            None => None,
        };
        let transform = cfg.transform.label();
        let aggregating = cfg.aggregation.is_some();
        let sinks = cfg.sinks().iter().map(|s| s.label()).collect();
        Ok(Supervisor {
            budget: RestartBudget::new(cfg.max_restarts, cfg.restart_window),
            cfg,
            signals,
            generation: 0,
            table: ProcessTable::default(),
            outcome: Outcome::default(),
            counts: Counts::default(),
            status: StatusLine::new(every, transform, aggregating),
            live_status,
            started: Instant::now(),
            generation_started: Instant::now(),
            acked_before: 0,
            drains: Drains::default(),
            finished: false,
            sinks,
            report_tx,
            parent: ParentOnly { reports: Some(reports), control: None, systemd: Systemd::from_env(), metrics },
        })
    }

    /// Applies the restart policy after a crash: waits out the backoff and returns `None` to restart, or the exit
    /// code when the budget is spent or a signal came meanwhile.
    fn before_restart(&mut self) -> Option<Exit> {
        let cause = self.outcome.cause();
        let text = cause.map_or_else(|| "a child failed".to_string(), |c| c.text.clone());
        let kind = cause.and_then(|c| c.role).map(Role::kind);
        let (max, window) = (self.budget.max(), self.budget.window());
        let failed = self.outcome.failed_at().unwrap_or_else(Instant::now);
        let progressed = self.acked() > self.acked_before;
        let delay = match self.budget.on_failure(failed, self.generation_started, progressed, kind) {
            Verdict::GiveUp { n } => {
                let tried = match n {
                    0 => "no restart is allowed (--max-restarts 0)".to_string(),
                    n => format!(
                        "{} in a row did not help (--max-restarts {max}; none of them ran {window:?} and got work \
                         done before failing)",
                        count(n as u64, "restart")
                    ),
                };
                log::error!("giving up: {tried}; last failure: {text}");
                self.parent.systemd.status(&format!("gave up after {n} restarts: {text}"));
                return Some(Exit::GaveUp);
            }
            Verdict::Restart { delay, n } => {
                let total = self.budget.total();
                log::warn!(
                    "restarting the pipeline in {delay:?} (restart {n} of at most {max} in a row; {total} in all) \
                     after: {text}"
                );
                self.parent.systemd.status(&format!("restarting (restart {total}) after: {text}"));
                delay
            }
        };
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

    /// Forks a fresh generation on fresh channels: sink, workers, source, each once the previous is ready.
    fn start(&mut self) -> Result<()> {
        let (mut pending, control) = wiring::wire(self.cfg.hashers, self.readers(), self.sinks.len())?;
        self.parent.control = Some(control);
        self.generation_started = Instant::now();
        self.acked_before = self.acked();
        self.cfg.generation = self.generation;
        self.outcome = Outcome::default();
        self.finished = false;
        while let Some((role, ends)) = pending.pop_front() {
            self.spawn(role, ends, &mut pending)?;
            if !self.await_ready(role) {
                // Nothing is consumed yet: end the started children now, while the ends of those never started are
                // still open. Dropped first, they would close the started ones' channels, and each would fail on its
                // own, a second error after the one that matters.
                if !pending.is_empty() {
                    self.kill_all();
                }
                break;
            }
        }
        drop(pending);
        // Only when every child of this generation is up and none has failed: a start that failed says so once, with
        // its cause, and nothing after it may claim success.
        let whole = self.table.len() == self.children();
        if whole && self.table.all_up() && self.outcome.exit() == Exit::Clean {
            let pids: Vec<String> = self.table.iter().map(|c| format!("{}={}", c.role, c.pid)).collect();
            log::info!(
                "pipeline running: {} → {} → {} (dead letters to {}); pids {}",
                self.cfg.source_name(),
                count(self.cfg.hashers as u64, "worker"),
                self.cfg.sink_name(),
                self.cfg.dead_letter_names(),
                pids.join(" ")
            );
        }
        Ok(())
    }

    /// Forks the child for `role`. It keeps `ends` and drops everything else: the roles still `pending` and what is
    /// the supervisor's alone.
    fn spawn(&mut self, role: Role, ends: Ends, pending: &mut VecDeque<(Role, Ends)>) -> Result<()> {
        let parent = getpid();
        // SAFETY: the supervisor is single-threaded (it never starts a thread), so the child starts in a consistent
        // state; the child runs its stage and exits without returning here.
        match unsafe { fork() }.map_err(Error::Fork)? {
            ForkResult::Child => {
                self.parent = ParentOnly::default();
                drop(std::mem::take(pending));
                let code = ends.run_child(role, parent, &self.cfg, self.report_tx.clone());
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(ends);
                self.counts.spawned(child.as_raw(), role);
                self.table.spawned(child, role);
                Ok(())
            }
        }
    }

    /// Waits for `role` to report ready; false if it failed or a signal came first (the caller then stops).
    fn await_ready(&mut self, role: Role) -> bool {
        let started = self.signals.count();
        loop {
            if self.table.is_up(role) {
                return true;
            }
            if self.signals.count() > started || self.outcome.exit() != Exit::Clean || self.table.is_empty() {
                return false;
            }
            self.pump(Duration::from_millis(50));
        }
    }

    /// One round of waiting: child reports, then exits. A state change is recorded on `self`.
    fn pump(&mut self, wait: Duration) {
        self.read_reports(wait);
        self.reap();
        let (table, timeout) = (&self.table, self.cfg.child_timeout);
        self.parent.systemd.watchdog(|| table.all_beating(timeout));
        self.report_status();
        self.serve_metrics();
    }

    /// Reads the children's reports, waiting up to `wait` for the first.
    fn read_reports(&mut self, wait: Duration) {
        let Some(reports) = &self.parent.reports else {
            std::thread::sleep(wait);
            return;
        };
        let mut next = if wait.is_zero() { reports.try_recv() } else { reports.try_recv_timeout(wait) };
        loop {
            match next {
                Ok(report) => self.on_report(report),
                Err(TryRecvError::Empty) => break,
                Err(e) => {
                    log::debug!("report channel: {e:?}");
                    break;
                }
            }
            next = match &self.parent.reports {
                Some(r) => r.try_recv(),
                None => break,
            };
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Alive { pid, stats } => {
                self.table.on_report(pid, None);
                self.counts.update(pid, *stats);
            }
            Report::Ready { pid } => {
                if let Some((role, _)) = self.table.on_report(pid, Some(Transition::Ready)) {
                    log::debug!("{role} (pid {pid}) is ready");
                }
            }
            Report::Assigned { pid, lanes } => {
                if let Some((role, before)) = self.table.on_report(pid, Some(Transition::Assigned)) {
                    log::debug!("{role} (pid {pid}) owns partitions {lanes:?}");
                    self.table.set_lanes(pid, lanes);
                    if matches!(before, ChildState::Starting | ChildState::Ready) {
                        self.on_joined();
                    }
                }
            }
            Report::Finished { pid } => {
                log::info!("{} (pid {pid}) has read everything: draining, then exiting", Role::Source);
                self.finished = true;
            }
            Report::Failed { pid, code, message, peer_gone } => {
                let role = self.table.on_report(pid, Some(Transition::Failed)).map(|(role, _)| role);
                let who = role.map_or_else(|| format!("pid {pid}"), |r| format!("{r} (pid {pid})"));
                if peer_gone {
                    // Only the consequence of another failure, which is told as an error of its own (a failed
                    // report, or a reaped child's end), in whichever order they come.
                    log::warn!("{who} stopped: {message} (a neighbouring stage went away)");
                } else {
                    log::error!("{who} failed: {message}");
                }
                let (exit, cause) = (Exit::from_code(code), format!("{who} failed: {message}"));
                if peer_gone {
                    self.outcome.peer_gone(exit, role, cause);
                } else {
                    self.outcome.fail(exit, role, cause);
                }
            }
        }
    }

    /// Collects the children that are gone, and what their ends say.
    fn reap(&mut self) {
        // A child reports its failure before it exits: read what came meanwhile, so its end is judged with it.
        if self.table.wait_exits() {
            self.read_reports(Duration::ZERO);
        }
        for gone in self.table.reap() {
            if let Err(e) = gone.status {
                log::error!("waitpid({}): {e}", gone.pid);
                continue;
            }
            match gone.ending() {
                Ending::Quiet(line) => log::debug!("{line}"),
                // It said why already: its report is what the generation's cause is made of.
                Ending::Failure { exit, log: false, .. } => self.outcome.record(exit),
                Ending::Failure { exit, cause, log: true } => {
                    log::error!("{cause}");
                    self.outcome.fail(exit, Some(gone.role), cause);
                }
            }
        }
    }

    /// Kills the children that stopped beating.
    fn check_liveness(&mut self, watch: bool) {
        let timeout = self.cfg.child_timeout;
        for (role, pid, silent) in self.table.check_liveness(Instant::now(), timeout, watch) {
            log::error!(
                "{role} (pid {pid}) sent no heartbeat for {silent:?} (--child-timeout {timeout:?}): killing it (SIGABRT, \
                 then SIGKILL)"
            );
        }
    }

    fn request_drain(&mut self) {
        if let Some(control) = &self.parent.control {
            if let Err(e) = control.send(Control::Drain) {
                log::debug!("the {} cannot be told to drain ({e}); it is gone", Role::Source);
            }
        }
    }

    fn kill_all(&mut self) {
        self.table.kill_all();
        while !self.table.is_empty() {
            let before = self.table.len();
            self.reap();
            if self.table.len() == before {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// How a generation that ended on a failure goes on: restart, or exit when restarting cannot help.
    fn after_failure(&self, started: bool) -> Ended {
        match self.outcome.exit() {
            Exit::Config => Ended::Exit(Exit::Config),
            // The same refusals would come again after a restart.
            Exit::TooManyDeadLetters => Ended::Exit(Exit::TooManyDeadLetters),
            // A child gave up by itself (its --exec command kept failing, within its own restart budget).
            Exit::GaveUp => Ended::Exit(Exit::GaveUp),
            // Unreachable brokers at the very first start are most likely a wrong address: say so and stop.
            Exit::Unavailable if self.generation == 1 && !started => Ended::Exit(Exit::Unavailable),
            _ => Ended::Crashed,
        }
    }

    fn supervise(&mut self) -> Ended {
        // Nothing is consumed before the source runs: a failed or stopped start can simply end the others.
        if !self.table.has(Role::Source) || (self.outcome.exit() != Exit::Clean && !self.table.all_up()) {
            self.request_drain();
            self.kill_all();
            if self.outcome.exit() == Exit::Clean {
                // A signal during the start. After a restart, the crashed generation's uncommitted events are still
                // to be re-read: that is not a clean stop.
                return Ended::Exit(if self.generation == 1 { Exit::Clean } else { Exit::Failure });
            }
            return self.after_failure(false);
        }
        let mut phase = Phase::Running;
        let mut seen_signals = self.signals.count();
        let mut stop_requested = seen_signals > 0;
        let mut seen_outcome = self.outcome.exit();
        if stop_requested {
            self.parent.systemd.stopping(self.cfg.drain_timeout);
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
                        self.parent.systemd.stopping(self.cfg.drain_timeout);
                        phase = self.begin_drain();
                    }
                    Phase::Draining { .. } if !stop_requested => {
                        stop_requested = true;
                        self.parent.systemd.stopping(self.cfg.drain_timeout);
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
                        self.outcome.record(Exit::FastStop);
                        return Ended::Exit(self.outcome.exit());
                    }
                }
            }
            if self.outcome.exit() != seen_outcome {
                seen_outcome = self.outcome.exit();
                if let Phase::Running = phase {
                    log::error!("stopping the pipeline: draining what can be drained");
                    let cause = self.outcome.cause().map_or("", |c| c.text.as_str());
                    self.parent.systemd.status(&format!("recovering: draining after: {cause}"));
                    phase = self.begin_drain();
                }
            }
            if self.table.is_empty() {
                let finished = self.finished && self.outcome.exit() == Exit::Clean;
                return self.finish(stop_requested || finished);
            }
            if let Phase::Draining { deadline } = phase {
                if Instant::now() >= deadline {
                    let left: Vec<String> = self.table.iter().map(|c| c.role.to_string()).collect();
                    log::error!(
                        "the drain did not finish within {:?} ({} still running): stopping them",
                        self.cfg.drain_timeout,
                        left.join(", ")
                    );
                    self.kill_all();
                    if stop_requested {
                        self.outcome.record(Exit::DrainTimeout);
                    } else {
                        self.outcome.fail(Exit::Failure, None, "the drain after a failure did not finish".into());
                    }
                    return self.finish(stop_requested);
                }
            }
            self.check_liveness(matches!(phase, Phase::Running));
            self.pump(Duration::from_millis(50));
        }
    }

    fn begin_drain(&mut self) -> Phase {
        self.request_drain();
        self.drains.started = Some(Instant::now());
        Phase::Draining { deadline: Instant::now() + self.cfg.drain_timeout }
    }

    /// Every child is gone: exit if the user asked for it (or nothing can mend it), else restart.
    fn finish(&mut self, stop_requested: bool) -> Ended {
        if let Some(started) = self.drains.started.take() {
            let took = started.elapsed();
            log::debug!("the drain took {took:.2?}");
            self.drains.last = Some(took);
            self.drains.finished += 1;
        }
        match (stop_requested, self.outcome.exit()) {
            (
                true,
                exit @ (Exit::Clean
                | Exit::DrainTimeout
                | Exit::FastStop
                | Exit::Config
                | Exit::Unavailable
                | Exit::GaveUp
                | Exit::TooManyDeadLetters),
            ) => Ended::Exit(exit),
            (true, _) => {
                log::warn!("stopped while recovering from a failure; uncommitted events are re-read on the next start");
                Ended::Exit(Exit::Failure)
            }
            (false, Exit::Clean) => {
                // Every stage ended by itself without a stop: nothing explains it but a failure.
                self.outcome.fail(Exit::Failure, None, "the pipeline stopped by itself".into());
                Ended::Crashed
            }
            (false, _) => self.after_failure(true),
        }
    }

    /// The periodic status: on the terminal or in the log, and to systemd.
    fn report_status(&mut self) {
        if self.table.is_empty() {
            return;
        }
        let workers = self.counts.of(Kind::Worker);
        let Some(mut line) = self.status.due(Instant::now(), self.counts.totals(), &workers, self.budget.total())
        else {
            return;
        };
        if self.sinks.len() > 1 {
            for part in self.sink_parts() {
                line.push_str(&format!("; {part}"));
            }
        }
        if self.live_status {
            // Ends with a carriage return: the next log line, from any process, overwrites it. Cut to the
            // terminal's width, asked each time as the window may be resized.
            let shown = format!("status: {line}");
            let shown = status::terminal_width().map_or_else(|| shown.clone(), |w| status::fit(&shown, w));
            eprint!("{shown}\x1b[K\r");
        } else {
            log::info!("status: {line}");
        }
        self.parent.systemd.status(&line);
    }

    /// Answers scrapes of `--metrics-addr`, if any are waiting.
    fn serve_metrics(&mut self) {
        let Some(mut server) = self.parent.metrics.take() else {
            return;
        };
        server.serve(|| self.render_metrics());
        self.parent.metrics = Some(server);
    }

    fn render_metrics(&self) -> String {
        let stages = self.counts.by_kind();
        let sinks = self.counts.by_sink(self.sinks.len());
        let named: Vec<(&str, &StageStats)> = self.sinks.iter().map(String::as_str).zip(&sinks).collect();
        let totals = self.counts.totals();
        let lanes = self.table.lanes();
        let source = self.counts.source();
        // Per partition owned: the highest of what this run committed and what the group had committed, as the
        // client's statistics say (a partition this run has not committed yet still shows where it stands).
        let mut committed: Vec<Position> = self.counts.committed();
        committed.extend(source.into_iter().flat_map(|s| s.lanes.group_committed.iter().copied()));
        committed.retain(|p| lanes.contains(&p.lane));
        committed.sort_unstable_by_key(|p| (p.lane, std::cmp::Reverse(p.seq)));
        committed.dedup_by_key(|p| p.lane);
        let restarts: Vec<(&str, u64)> = self.budget.by_cause().collect();
        let children = Kind::ALL.map(|k| self.table.count(k));
        metrics::render(&metrics::Snapshot {
            source_topic: &self.cfg.source_topic,
            stages: &stages,
            in_flight: source.map_or(0, |s| s.in_flight),
            capacity: self.cfg.queue_capacity,
            sink_queue: sinks.iter().map(|s| s.sink_queue).sum(),
            sinks: &named,
            lag: source.map_or(&[], |s| &s.lanes.lag),
            committed: &committed,
            assigned: lanes.len(),
            restarts: &restarts,
            children: &children,
            transform: self.cfg.transform.label(),
            // Every child of a whole generation is up, none hung, the source joined.
            ready: self.table.all_working() && self.table.len() + self.readers_done() == self.children(),
            drains: self.drains.finished,
            last_drain: self.drains.last,
            scan: self.counts.scan(),
            slot: totals.lanes.slot,
            aggregation: self.cfg.aggregation.is_some().then_some(&totals),
            uptime: self.started.elapsed(),
        })
    }

    /// The closing summary: what the whole run did, across restarts, and what it committed.
    fn summary(&mut self) {
        // The children's last counts may still be on their way.
        self.pump(Duration::from_millis(50));
        let took = self.started.elapsed();
        let totals = self.counts.totals();
        log::info!("{}", status::summary(&totals, &self.counts.committed(), self.budget.total(), took));
        if self.sinks.len() > 1 || totals.dropped > 0 {
            for part in self.sink_parts() {
                log::info!("{part}");
            }
            if self.cfg.route.is_some() {
                log::info!("route: {} dropped (sent to no sink)", totals.dropped);
            }
        }
        let workers = self.counts.of(Kind::Worker);
        if self.cfg.transform.label() != "md5" {
            log::info!("transform {}", status::transform(self.cfg.transform.label(), &workers));
        }
        if let Some(lookups) = status::lookups(&workers) {
            log::info!("{lookups}");
        }
    }

    /// Positions the sources of every generation so far acknowledged.
    fn acked(&self) -> u64 {
        self.counts.of(Kind::Source).acked
    }

    /// Table readers per generation: none for Kafka.
    fn readers(&self) -> usize {
        if self.cfg.source().is_table() {
            self.cfg.readers
        } else {
            0
        }
    }

    /// Children of a whole generation.
    fn children(&self) -> usize {
        self.cfg.hashers + 1 + self.sinks.len() + self.readers()
    }

    /// Each sink's part of the status line and of the summary, from its counts over the whole run.
    fn sink_parts(&self) -> Vec<String> {
        let counts = self.counts.by_sink(self.sinks.len());
        self.sinks.iter().zip(&counts).map(|(name, stats)| status::sink(name, stats)).collect()
    }

    /// Readers of this generation that have exited, their work done.
    fn readers_done(&self) -> usize {
        self.readers() - self.table.count(Kind::Reader).min(self.readers())
    }

    /// The source has joined its group: `READY=1` the first time, the status after a restart.
    fn on_joined(&mut self) {
        let restarts = self.budget.total();
        let status = format!(
            "running: {} → {} → {}{}",
            self.cfg.source_name(),
            count(self.cfg.hashers as u64, "worker"),
            self.cfg.sink_name(),
            if restarts > 0 { format!(" ({})", count(restarts, "restart")) } else { String::new() }
        );
        self.parent.systemd.running(&status);
    }
}
