//! A forked child's life: the prologue that makes it a well-behaved child, its heartbeat, its stage, and the exit
//! code and last counts it reports.

use crate::channel::ipc::{Report, ReportSender};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::stage::{Hooks, Role, Stage};
use crate::telemetry::counters::COUNTERS;
use crate::telemetry::{heartbeat, logging};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::{getpid, getppid, Pid};
use std::ffi::CString;

/// Runs stage `S` as `role` in a freshly forked child and returns the process's exit code. The caller exits with it
/// at once: nothing of the parent's may run in the child.
pub fn run<S: Stage>(role: Role, parent: Pid, cfg: &Config, ends: S::Ends, reports: ReportSender) -> i32 {
    if let Err(e) = prologue(&role.to_string(), parent) {
        log::error!("{e}");
        return Exit::Failure.code();
    }
    let pid = getpid().as_raw();
    let hooks = Hooks::new(pid, reports);
    let beats = hooks.clone();
    let beat = move || beats.tell(Report::Alive { pid, stats: Box::new(COUNTERS.snapshot()) });
    if let Err(e) = heartbeat::PROGRESS.spawn_heartbeat(heartbeat::interval(cfg.child_timeout), beat) {
        log::error!("{}", Error::SpawnThread { name: "heartbeat", source: e });
        return Exit::Failure.code();
    }
    // A panic must not unwind into the supervisor's frames copied into this child.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| S::run(cfg, ends, &hooks)));
    // The last counts, so that the supervisor's summary has them all.
    hooks.tell(Report::Alive { pid, stats: Box::new(COUNTERS.snapshot()) });
    let (code, failure) = match outcome {
        Ok(Ok(exit)) => (exit.code(), None),
        Ok(Err(e)) => (e.exit().code(), Some((e.to_string(), e.is_peer_gone()))),
        Err(_) => (Exit::Failure.code(), Some((format!("{role} panicked"), false))),
    };
    if let Some((message, peer_gone)) = failure {
        hooks.tell(Report::Failed { pid, code, message, peer_gone });
    }
    code
}

/// Sets up a freshly forked child that will be known as `name`. Runs before anything else in the child,
/// single-threaded.
pub fn prologue(name: &str, parent: Pid) -> Result<()> {
    logging::set_process_name(name);
    let setup = |call| move |source| Error::ChildSetup { call, source };
    // The child must not outlive the supervisor, even after `kill -9` of the supervisor: its events are uncommitted
    // and will be re-read, so dying with it loses nothing.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(setup("prctl(PR_SET_PDEATHSIG)"))?;
    if getppid() != parent {
        // The supervisor died between fork and prctl.
        std::process::exit(Exit::Failure.code());
    }
    // Ctrl-C reaches the whole process group; the supervisor alone decides how to stop, and tells the children.
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: SIG_IGN installs no handler code, and this process is single-threaded here.
        unsafe { signal::signal(sig, SigHandler::SigIgn) }.map_err(setup("signal(SIG_IGN)"))?;
    }
    // SAFETY: as above; restores the default the parent's own handlers replaced.
    unsafe { signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) }.map_err(setup("signal(SIGCHLD, SIG_DFL)"))?;
    set_title(name);
    Ok(())
}

/// Best effort: `ps -e`/`top` show the comm name, `ps aux` the command line; both get the name.
fn set_title(name: &str) {
    if let Ok(c) = CString::new(format!("sv-{name}")) {
        let _ = nix::sys::prctl::set_name(&c);
    }
    let _ = crate::telemetry::title::set(&format!("supervisor: {name}"));
}
