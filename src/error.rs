//! Errors, one variant per failing operation, and the documented process exit codes.

use std::fmt;

/// The exit codes of `supervisor`, as documented in the README and in `--help`.
///
/// Children use the same codes, so that the supervisor can pass a child's reason on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Drained cleanly: every consumed event was delivered and its offset committed.
    Clean = 0,
    /// The pipeline failed in a way a restart cannot mend (the supervisor's own fork or IPC failed), or it was
    /// stopped while it was recovering from a crash: uncommitted events are re-read on the next start.
    Failure = 1,
    /// Wrong flags or configuration: a bad `-X` property, a missing topic. Restarting will not help.
    Config = 2,
    /// The brokers could not be reached at start-up.
    Unavailable = 3,
    /// The drain did not finish within `--drain-timeout`; unacknowledged events stay uncommitted and are re-read.
    DrainTimeout = 4,
    /// A second SIGINT/SIGTERM stopped the pipeline at once; uncommitted events are re-read on the next start.
    FastStop = 5,
    /// Children kept failing: more than `--max-restarts` restarts within `--restart-window`. systemd's
    /// `Restart=on-failure` takes over from here.
    GaveUp = 6,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Maps a child's exit status back to its reason; unknown codes count as failures.
    pub fn from_code(code: i32) -> Exit {
        match code {
            0 => Exit::Clean,
            2 => Exit::Config,
            3 => Exit::Unavailable,
            4 => Exit::DrainTimeout,
            5 => Exit::FastStop,
            6 => Exit::GaveUp,
            _ => Exit::Failure,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Exit::Clean => "clean drain",
            Exit::Failure => "pipeline failure",
            Exit::Config => "configuration error",
            Exit::Unavailable => "broker unavailable",
            Exit::DrainTimeout => "drain timed out",
            Exit::FastStop => "fast stop",
            Exit::GaveUp => "gave up after repeated restarts",
        }
    }
}

/// Everything that can go wrong in a stage, one variant per failing operation.
#[derive(Debug)]
pub enum Error {
    /// A librdkafka client could not be created (usually a bad `-X` property).
    CreateClient(rdkafka::error::KafkaError),
    /// Metadata could not be fetched: the brokers are unreachable.
    Metadata { brokers: String, source: rdkafka::error::KafkaError },
    /// A topic the pipeline needs does not exist.
    MissingTopic { topic: String, hint: &'static str },
    /// The dead-letter topic was missing and could not be created.
    CreateTopic { topic: String, reason: String },
    /// Subscribing to the source topic failed.
    Subscribe(rdkafka::error::KafkaError),
    /// A fatal error from librdkafka (e.g. the idempotent producer lost its state).
    Fatal(String),
    /// An event could not be written to the dead-letter topic; its offset is never committed.
    DeadLetter { reason: String },
    /// An IPC channel could not be created or used.
    Ipc(String),
    /// A batch on an IPC channel could not be decoded.
    Decode(String),
    /// A system call (fork, waitpid, prctl) failed.
    Os(String),
    /// The `--metrics-addr` socket could not be opened: a bad address, or the port is taken.
    Metrics { addr: String, reason: String },
}

impl Error {
    /// The exit code a process reports for this error.
    pub fn exit(&self) -> Exit {
        match self {
            Error::CreateClient(_) | Error::MissingTopic { .. } | Error::CreateTopic { .. } => Exit::Config,
            Error::Subscribe(_) | Error::Metrics { .. } => Exit::Config,
            Error::Metadata { .. } => Exit::Unavailable,
            _ => Exit::Failure,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::CreateClient(e) => write!(f, "invalid Kafka client configuration: {e}"),
            Error::Metadata { brokers, source } => {
                write!(f, "cannot reach the Kafka brokers at {brokers}: {source}")
            }
            Error::MissingTopic { topic, hint } => {
                write!(f, "topic \"{topic}\" does not exist (create it, or pass {hint})")
            }
            Error::CreateTopic { topic, reason } => {
                write!(f, "dead-letter topic \"{topic}\" does not exist and could not be created: {reason}")
            }
            Error::Subscribe(e) => write!(f, "cannot subscribe to the source topic: {e}"),
            Error::Fatal(e) => write!(f, "fatal Kafka error: {e}"),
            Error::DeadLetter { reason } => {
                write!(f, "cannot write to the dead-letter topic: {reason}")
            }
            Error::Ipc(e) => write!(f, "IPC channel error: {e}"),
            Error::Decode(e) => write!(f, "malformed IPC batch: {e}"),
            Error::Os(e) => write!(f, "system call failed: {e}"),
            Error::Metrics { addr, reason } => write!(f, "cannot serve metrics on --metrics-addr {addr}: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
