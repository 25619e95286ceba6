//! The process table: every live child, its role, and where it is in its life. A child's state changes only through
//! [`ChildState::on`], driven by the child's own reports and by what the supervisor does to it.

use crate::error::Exit;
use crate::position::Lane;
use crate::stage::{Kind, Role};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// How long a hung child has to dump core after SIGABRT before SIGKILL.
pub const HUNG_GRACE: Duration = Duration::from_secs(1);

/// Where a child is in its life, as the supervisor knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// Forked; setting up (clients, topic checks).
    Starting,
    /// Set up and working.
    Ready,
    /// A source that has its lanes: a Kafka consumer that joined its group.
    Joined,
    /// Silent for longer than `--child-timeout`: sent SIGABRT `since`, SIGKILL after [`HUNG_GRACE`].
    Hung { since: Instant },
    /// It said why it is failing: its exit needs no second line.
    Failed,
    /// The supervisor killed it on purpose: its death is no news. `reported`: it had said why it was failing.
    Killed { reported: bool },
}

/// What happens to a child: its own reports, and the supervisor's acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Ready,
    Assigned,
    Failed,
    FoundSilent(Instant),
    Kill,
}

impl ChildState {
    pub fn on(self, t: Transition) -> ChildState {
        use ChildState as S;
        match (self, t) {
            (S::Killed { .. }, _) => self,
            (S::Failed, Transition::Kill) => S::Killed { reported: true },
            (_, Transition::Kill) => S::Killed { reported: false },
            // Found hung, it is killed whatever it says meanwhile.
            (S::Hung { .. } | S::Failed, _) => self,
            (_, Transition::Failed) => S::Failed,
            (S::Starting, Transition::Ready) => S::Ready,
            (S::Starting | S::Ready | S::Joined, Transition::Assigned) => S::Joined,
            (S::Ready | S::Joined, Transition::FoundSilent(since)) => S::Hung { since },
            _ => self,
        }
    }

    /// Set up and working: its heartbeats are watched.
    pub fn is_up(self) -> bool {
        matches!(self, ChildState::Ready | ChildState::Joined)
    }
}

#[derive(Debug)]
pub struct Child {
    pub pid: Pid,
    pub role: Role,
    pub state: ChildState,
    /// When it last reported anything: heartbeats count.
    pub last_seen: Instant,
    /// The lanes it owns, for a source.
    pub lanes: Vec<Lane>,
    /// How it ended, once waited for; it leaves the table when its end has been judged.
    pub exit: Option<Result<WaitStatus, Errno>>,
}

/// A child that is gone, and how.
#[derive(Debug)]
pub struct Reaped {
    pub pid: Pid,
    pub role: Role,
    pub state: ChildState,
    pub status: Result<WaitStatus, Errno>,
}

/// How a child's end reads to the supervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Exited cleanly, or killed on purpose: worth a debug line.
    Quiet(String),
    /// A failure of the generation; `log` unless the child already said why.
    Failure { exit: Exit, cause: String, log: bool },
}

impl Reaped {
    pub fn ending(&self) -> Ending {
        let (role, pid) = (self.role, self.pid);
        match (self.status, self.state) {
            (Ok(WaitStatus::Exited(_, 0)), _) => Ending::Quiet(format!("{role} (pid {pid}) exited")),
            (Ok(WaitStatus::Exited(_, code)), state) => {
                let exit = Exit::from_code(code);
                let cause = format!("{role} (pid {pid}) exited with code {code} ({})", exit.describe());
                let reported = matches!(state, ChildState::Failed | ChildState::Killed { reported: true });
                Ending::Failure { exit, cause, log: !reported }
            }
            (Ok(WaitStatus::Signaled(_, sig, _)), ChildState::Killed { .. }) => {
                Ending::Quiet(format!("{role} (pid {pid}) stopped by {sig}"))
            }
            (Ok(WaitStatus::Signaled(_, sig, _)), state) => {
                let how = if matches!(state, ChildState::Hung { .. }) { "hung and was killed" } else { "was killed" };
                Ending::Failure { exit: Exit::Failure, cause: format!("{role} (pid {pid}) {how} by {sig}"), log: true }
            }
            (status, _) => Ending::Quiet(format!("{role} (pid {pid}): waitpid gave {status:?}")),
        }
    }
}

/// Every live child of the supervisor.
#[derive(Debug, Default)]
pub struct ProcessTable {
    children: Vec<Child>,
}

impl ProcessTable {
    pub fn spawned(&mut self, pid: Pid, role: Role) {
        let now = Instant::now();
        self.children.push(Child {
            pid,
            role,
            state: ChildState::Starting,
            last_seen: now,
            lanes: Vec::new(),
            exit: None,
        });
    }

    /// A child's report: it is alive, and maybe its state changes. Returns its role and its state before, if it is
    /// ours.
    pub fn on_report(&mut self, pid: i32, transition: Option<Transition>) -> Option<(Role, ChildState)> {
        let c = self.children.iter_mut().find(|c| c.pid.as_raw() == pid)?;
        let before = c.state;
        c.last_seen = Instant::now();
        if let Some(t) = transition {
            c.state = c.state.on(t);
        }
        Some((c.role, before))
    }

    pub fn set_lanes(&mut self, pid: i32, lanes: Vec<Lane>) {
        if let Some(c) = self.children.iter_mut().find(|c| c.pid.as_raw() == pid) {
            c.lanes = lanes;
        }
    }

    /// Waits for the children that are gone, keeping them in the table until [`ProcessTable::reap`]: what they
    /// reported before they exited is read in between, so their ends are judged with their last words. Returns
    /// whether any is gone.
    pub fn wait_exits(&mut self) -> bool {
        let mut any = false;
        for c in self.children.iter_mut().filter(|c| c.exit.is_none()) {
            if let status @ (Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_)) =
                waitpid(c.pid, Some(WaitPidFlag::WNOHANG))
            {
                c.exit = Some(status);
                any = true;
            }
        }
        any
    }

    /// Collects the children that are gone (waited for first, if not yet).
    pub fn reap(&mut self) -> Vec<Reaped> {
        self.wait_exits();
        let mut gone = Vec::new();
        self.children.retain(|c| match c.exit {
            Some(status) => {
                gone.push(Reaped { pid: c.pid, role: c.role, state: c.state, status });
                false
            }
            None => true,
        });
        gone
    }

    /// SIGKILLs every child, marked as killed on purpose.
    pub fn kill_all(&mut self) {
        for c in &mut self.children {
            c.state = c.state.on(Transition::Kill);
            let _ = kill(c.pid, Signal::SIGKILL);
        }
    }

    /// Kills children that stopped beating: SIGABRT first (a core dump shows where it hung), SIGKILL after
    /// [`HUNG_GRACE`]. Returns the newly hung ones, with how long they were silent.
    pub fn check_liveness(&mut self, now: Instant, timeout: Duration, watch: bool) -> Vec<(Role, Pid, Duration)> {
        let mut hung = Vec::new();
        for c in &mut self.children {
            let silent = now.duration_since(c.last_seen);
            match c.state {
                ChildState::Hung { since } if now.duration_since(since) > HUNG_GRACE => {
                    let _ = kill(c.pid, Signal::SIGKILL);
                }
                state if watch && state.is_up() && silent > timeout => {
                    c.state = state.on(Transition::FoundSilent(now));
                    hung.push((c.role, c.pid, silent));
                    let _ = kill(c.pid, Signal::SIGABRT);
                }
                _ => {}
            }
        }
        hung
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn has(&self, role: Role) -> bool {
        self.children.iter().any(|c| c.role == role)
    }

    /// `role` has a child that is set up and working.
    pub fn is_up(&self, role: Role) -> bool {
        self.children.iter().any(|c| c.role == role && c.state.is_up())
    }

    pub fn all_up(&self) -> bool {
        self.children.iter().all(|c| c.state.is_up())
    }

    /// Every child is up, none hung, and the source has joined.
    pub fn all_working(&self) -> bool {
        !self.is_empty() && self.all_up() && self.children.iter().any(|c| c.state == ChildState::Joined)
    }

    /// Every child has beaten within `timeout` and none is hung: what systemd's watchdog is told.
    pub fn all_beating(&self, timeout: Duration) -> bool {
        !self.is_empty()
            && self
                .children
                .iter()
                .all(|c| !matches!(c.state, ChildState::Hung { .. }) && c.last_seen.elapsed() <= timeout)
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.children.iter().filter(|c| c.role.kind() == kind).count()
    }

    /// The lanes the live sources own.
    pub fn lanes(&self) -> Vec<Lane> {
        self.children.iter().flat_map(|c| c.lanes.iter().copied()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Child> {
        self.children.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChildState as S;

    #[test]
    fn a_child_starts_becomes_ready_and_a_source_joins() {
        let s = S::Starting;
        assert_eq!(s.on(Transition::FoundSilent(Instant::now())), S::Starting, "a child setting up is not watched");
        let s = s.on(Transition::Ready);
        assert_eq!(s, S::Ready);
        assert!(s.is_up());
        assert_eq!(s.on(Transition::Assigned), S::Joined);
        assert_eq!(S::Joined.on(Transition::Assigned), S::Joined, "a rebalance keeps it joined");
    }

    #[test]
    fn a_silent_child_is_hung_and_stays_hung() {
        let t = Instant::now();
        let hung = S::Joined.on(Transition::FoundSilent(t));
        assert_eq!(hung, S::Hung { since: t });
        assert!(!hung.is_up());
        assert_eq!(hung.on(Transition::Ready), hung, "a late report does not revive it");
        assert_eq!(hung.on(Transition::Failed), hung, "nor does a failure it reports: it is killed all the same");
        assert_eq!(hung.on(Transition::Kill), S::Killed { reported: false });
    }

    #[test]
    fn a_killed_child_stays_killed_and_remembers_whether_it_had_reported() {
        assert_eq!(S::Failed.on(Transition::Kill), S::Killed { reported: true });
        assert_eq!(S::Ready.on(Transition::Kill), S::Killed { reported: false });
        let killed = S::Killed { reported: false };
        for t in [Transition::Ready, Transition::Assigned, Transition::Failed, Transition::Kill] {
            assert_eq!(killed.on(t), killed);
        }
        assert_eq!(S::Failed.on(Transition::Ready), S::Failed);
    }

    fn reaped(state: ChildState, status: WaitStatus) -> Ending {
        Reaped { pid: Pid::from_raw(42), role: Role::Worker(1), state, status: Ok(status) }.ending()
    }

    #[test]
    fn endings_say_what_happened_once() {
        let pid = Pid::from_raw(42);
        assert!(matches!(reaped(S::Ready, WaitStatus::Exited(pid, 0)), Ending::Quiet(_)));
        assert_eq!(
            reaped(S::Ready, WaitStatus::Exited(pid, 3)),
            Ending::Failure {
                exit: Exit::Unavailable,
                cause: "worker-1 (pid 42) exited with code 3 (broker unavailable)".into(),
                log: true
            }
        );
        assert!(matches!(reaped(S::Failed, WaitStatus::Exited(pid, 2)), Ending::Failure { log: false, .. }));
        let killed = WaitStatus::Signaled(pid, Signal::SIGKILL, false);
        assert!(matches!(reaped(S::Killed { reported: false }, killed), Ending::Quiet(_)));
        assert_eq!(
            reaped(S::Hung { since: Instant::now() }, killed),
            Ending::Failure {
                exit: Exit::Failure,
                cause: "worker-1 (pid 42) hung and was killed by SIGKILL".into(),
                log: true
            }
        );
        assert_eq!(
            reaped(S::Joined, killed),
            Ending::Failure { exit: Exit::Failure, cause: "worker-1 (pid 42) was killed by SIGKILL".into(), log: true }
        );
    }
}
