//! What every child process shares: its role, the one entry point every stage implements, the hooks through which a
//! running stage tells the supervisor about itself, and the prologue a forked child runs before its stage.
//!
//! A stage is a [source](crate::source), a [worker](crate::worker) or a [sink](crate::sink). This module knows none
//! of them: each implements [`Stage`], and the supervisor picks which one runs in which role.

pub mod child;

use crate::channel::ipc::{Report, ReportSender};
use crate::config::Config;
use crate::error::{Exit, Result};
use crate::position::Lane;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// The kinds of stage, in the order data flows through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Source,
    /// A table scan's reader: it reads chunks for the source.
    Reader,
    Worker,
    Sink,
}

impl Kind {
    /// Every kind: the one list that metrics are labelled from.
    pub const ALL: [Kind; 4] = [Kind::Source, Kind::Reader, Kind::Worker, Kind::Sink];

    /// The name users see for the kind, in metrics labels and logs: its place in the pipeline, whatever its ends
    /// are (a Kafka topic or a table) and whatever transform the workers run.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Reader => "reader",
            Kind::Worker => "worker",
            Kind::Sink => "sink",
        }
    }
}

/// Which stage a child process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Source,
    Reader(usize),
    Worker(usize),
    /// One of the sinks, by its place in `--sink`'s order.
    Sink(usize),
}

/// The sinks' names when there are several, for the roles' names: set once by the supervisor before it forks, so
/// every child knows them too.
static SINK_NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Names the sinks (when there are several) for [`Role`]'s display: `sink-alerts` rather than `sink`.
pub fn name_sinks(names: Vec<String>) {
    if names.len() > 1 {
        let _ = SINK_NAMES.set(names);
    }
}

impl Role {
    pub fn kind(self) -> Kind {
        match self {
            Role::Source => Kind::Source,
            Role::Reader(_) => Kind::Reader,
            Role::Worker(_) => Kind::Worker,
            Role::Sink(_) => Kind::Sink,
        }
    }
}

/// The role as `ps` and the logs show it: `source`, `reader-N`, `worker-N`, `sink`.
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Worker(i) => write!(f, "{}-{i}", Kind::Worker.label()),
            Role::Reader(i) => write!(f, "{}-{i}", Kind::Reader.label()),
            Role::Sink(i) => match SINK_NAMES.get().and_then(|names| names.get(*i)) {
                Some(name) => write!(f, "{}-{name}", Kind::Sink.label()),
                None => f.write_str(Kind::Sink.label()),
            },
            other => f.write_str(other.kind().label()),
        }
    }
}

/// One stage of the pipeline, run in its own process after the [child prologue](child::run).
pub trait Stage {
    /// The channel ends this stage owns: every end lives in exactly one process.
    type Ends;

    /// Sets up (clients, topic checks), calls [`Hooks::ready`] once it can work, and runs until its input ends or it
    /// is told to drain. Returns how it ended; an error says what failed.
    fn run(cfg: &Config, ends: Self::Ends, hooks: &Hooks) -> Result<Exit>;
}

/// How a running stage tells the supervisor about itself. Cheap to clone and usable from any thread: librdkafka calls
/// back on its own.
#[derive(Clone)]
pub struct Hooks {
    pid: i32,
    // ipc-channel's sender is not Sync.
    reports: Option<Arc<Mutex<ReportSender>>>,
}

impl Hooks {
    pub fn new(pid: i32, reports: ReportSender) -> Hooks {
        Hooks { pid, reports: Some(Arc::new(Mutex::new(reports))) }
    }

    /// Hooks that tell no one: for a stage run outside a supervised child (a test, a tool).
    pub fn detached() -> Hooks {
        Hooks { pid: std::process::id() as i32, reports: None }
    }

    /// The stage is set up and working.
    pub fn ready(&self) {
        self.tell(Report::Ready { pid: self.pid });
    }

    /// The source's lanes are now these.
    pub fn assigned(&self, lanes: &[Lane]) {
        self.tell(Report::Assigned { pid: self.pid, lanes: lanes.to_vec() });
    }

    /// The source has read everything there is (a finished table scan): once drained, the run is over.
    pub fn finished(&self) {
        self.tell(Report::Finished { pid: self.pid });
    }

    /// Sends a report; false once the supervisor is gone.
    fn tell(&self, report: Report) -> bool {
        match &self.reports {
            Some(tx) => tx.lock().unwrap_or_else(PoisonError::into_inner).send(report).is_ok(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_show_as_users_know_them() {
        let shown: Vec<String> = [Role::Source, Role::Reader(2), Role::Worker(0), Role::Worker(11), Role::Sink(0)]
            .map(|r| r.to_string())
            .into();
        assert_eq!(shown, ["source", "reader-2", "worker-0", "worker-11", "sink"]);
        assert_eq!(Kind::ALL.map(Kind::label), ["source", "reader", "worker", "sink"]);
        assert_eq!(Role::Worker(3).kind(), Kind::Worker);
    }
}
