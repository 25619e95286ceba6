//! Errors, one variant per failing operation, and the documented process exit codes.

use crate::position::Position;
use bincode::error::{DecodeError, EncodeError};
use ipc_channel::IpcError;
use ipc_channel::TryRecvError;
use nix::errno::Errno;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::{fmt, io};

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
    /// Children kept failing: more than `--max-restarts` restarts in a row, none running `--restart-window` and
    /// getting work done before failing. systemd's `Restart=on-failure` takes over from here.
    GaveUp = 6,
    /// Dead letters were more than `--max-dead-letters` allows: refusals are systematic (a wrong column type, a
    /// transform that fails on every event), not the odd bad event. What was written or dead-lettered before the stop
    /// is committed, nothing after it.
    TooManyDeadLetters = 7,
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
            7 => Exit::TooManyDeadLetters,
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
            Exit::TooManyDeadLetters => "too many dead letters",
        }
    }
}

/// A database error, whatever the client.
pub type DbError = Box<dyn std::error::Error + Send + Sync>;

/// What a failed database call means for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The server cannot be reached or the connection broke: retry, it may come back.
    Unreachable,
    /// The server refused us: wrong password, unknown database, no privilege. Retrying will not help.
    Refused,
    /// The statement failed on the data: a type, a constraint. Retrying the same rows will not help.
    Data,
    /// Any other failure of a statement.
    Other,
}

/// Everything that can go wrong, one variant per failing operation, each keeping its cause for [`source`].
///
/// [`source`]: std::error::Error::source
#[derive(Debug)]
pub enum Error {
    /// A librdkafka client could not be created (usually a bad `-X` property).
    CreateClient(KafkaError),
    /// Metadata could not be fetched: the brokers are unreachable.
    Metadata { brokers: String, source: KafkaError },
    /// The brokers refused the TLS handshake or the SASL authentication.
    Refused { brokers: String, security: String, reason: String, tls: bool },
    /// A topic the pipeline needs does not exist.
    MissingTopic { topic: String, hint: &'static str },
    /// The dead-letter topic was missing and could not be created.
    CreateTopic { topic: String, source: KafkaError },
    /// Subscribing to the source topic failed.
    Subscribe(KafkaError),
    /// A list of positions could not be turned into librdkafka's form (a bad topic name, say).
    PositionList(KafkaError),
    /// The consumer hit an error librdkafka calls fatal.
    Consume(KafkaError),
    /// A synchronous commit failed: the drain's last one, or one before partitions are revoked.
    Commit(KafkaError),
    /// Offsets could not be handed to librdkafka for its background commits.
    StoreOffsets(KafkaError),
    /// A producer could not deliver what it held before closing.
    Flush(KafkaError),
    /// The idempotent producer hit an error librdkafka calls fatal (it lost its state, say).
    ProducerFatal { code: RDKafkaErrorCode, reason: String },
    /// An event could not be written to the dead-letter topic; its position is never committed.
    DeadLetter { at: Position, source: KafkaError },
    /// The next stage down the pipeline went away before the drain finished.
    PeerGone { peer: &'static str },
    /// A table scan's reader went away while it had a chunk to read.
    ReaderGone { reader: String },
    /// An IPC channel could not be created.
    CreateChannel(io::Error),
    /// A message could not be sent on an IPC channel.
    Send(IpcError),
    /// A message could not be received from an IPC channel.
    Receive(IpcError),
    /// A record could not be encoded into a batch.
    Encode(EncodeError),
    /// A message on an IPC channel could not be decoded.
    Decode(DecodeError),
    /// A message on an IPC channel was not a frame we know.
    UnknownFrame { len: usize },
    /// fork(2) failed.
    Fork(Errno),
    /// A child could not set itself up: prctl(2) or signal(2) failed.
    ChildSetup { call: &'static str, source: Errno },
    /// A thread could not be started.
    SpawnThread { name: &'static str, source: io::Error },
    /// A thread of a stage panicked.
    ThreadPanicked { name: &'static str },
    /// The SIGINT/SIGTERM handlers could not be installed.
    InstallSignals(io::Error),
    /// `--metrics-addr` is not an address.
    MetricsAddress { addr: String, source: io::Error },
    /// `--metrics-addr` cannot be listened on: the port is taken, say.
    MetricsBind { addr: String, source: io::Error },
    /// The jq filter (`--jq`, `--jq-file`) does not compile.
    JqCompile { origin: String, message: String },
    /// The `--exec` command could not be started.
    ExecStart { program: String, source: io::Error },
    /// The `--exec` command kept ending, hanging or breaking the protocol: its restarts in a row are spent.
    ExecGaveUp { command: String, how: String, restarts: usize, window: std::time::Duration },
    /// The `--exec` command does not speak the protocol at all: it wrote something else on stdout before any event,
    /// or never wrote the sync line back.
    ExecProtocol { command: String, message: String },
    /// The `--exec` command, which started before, ended or hung before its first sync line in a restarted pipeline.
    ExecRestart { command: String, message: String },
    /// A database could not be connected to: unreachable, or it refused us (`fault` says which).
    DbConnect { url: String, fault: Fault, source: DbError },
    /// A TLS connection to a database failed on our side: the server's certificate is not trusted, the server offers
    /// no TLS, a certificate file cannot be read. Retrying will not help.
    DbTls { url: String, message: String },
    /// A table, key or column the pipeline needs is missing, or the table cannot be used as asked.
    DbSchema { message: String },
    /// A lookup's compacted topic was not read to its end in time.
    LookupBehind { name: String, topic: String, waited: std::time::Duration },
    /// A database statement failed.
    DbQuery { doing: String, source: DbError },
    /// This build cannot use that database yet.
    DbUnsupported { url: String, what: &'static str },
    /// The checkpoint store could not be read or written.
    Checkpoint { doing: String, source: DbError },
    /// An aggregation's state store (under `--state-dir`) could not be read or written.
    State { path: String, doing: &'static str, source: rusqlite::Error },
    /// The state store holds another aggregation's state: other aggregates, window or group key.
    StateMismatch { path: String, saved: String },
    /// More events were dead-lettered than `--max-dead-letters` allows: the sink's verdict, its reason and example.
    TooManyDeadLetters { verdict: String },
    /// The demo's embedded cluster failed.
    MockCluster(KafkaError),
    /// The demo's broker process did not say where it listens.
    DemoStart(TryRecvError),
}

impl Error {
    /// Whether this only says that a neighbouring stage went away: a consequence of another failure, seldom its
    /// cause.
    pub fn is_peer_gone(&self) -> bool {
        matches!(self, Error::PeerGone { .. } | Error::ReaderGone { .. } | Error::Send(_) | Error::Receive(_))
    }

    /// The exit code a process reports for this error.
    pub fn exit(&self) -> Exit {
        match self {
            Error::CreateClient(_) | Error::MissingTopic { .. } | Error::CreateTopic { .. } | Error::Subscribe(_) => {
                Exit::Config
            }
            Error::MetricsAddress { .. } | Error::MetricsBind { .. } | Error::Refused { .. } => Exit::Config,
            Error::JqCompile { .. } | Error::ExecStart { .. } | Error::ExecProtocol { .. } => Exit::Config,
            Error::ExecGaveUp { .. } => Exit::GaveUp,
            Error::StateMismatch { .. } => Exit::Config,
            Error::State { doing, .. } if *doing == crate::aggregate::STATE_IN_USE => Exit::Config,
            Error::TooManyDeadLetters { .. } => Exit::TooManyDeadLetters,
            Error::ExecRestart { .. } => Exit::Failure,
            Error::Metadata { .. } => Exit::Unavailable,
            Error::DbConnect { fault: Fault::Unreachable, .. } => Exit::Unavailable,
            Error::DbConnect { .. } | Error::DbTls { .. } | Error::DbSchema { .. } | Error::DbUnsupported { .. } => {
                Exit::Config
            }
            _ => Exit::Failure,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // librdkafka's description names the property, and the value too where it is not secret; the crate's
            // rendering would append the value whatever it is.
            Error::CreateClient(KafkaError::ClientConfig(_, desc, _, _)) => {
                write!(f, "invalid Kafka client configuration: {desc}")
            }
            Error::CreateClient(e) => write!(f, "invalid Kafka client configuration: {e}"),
            Error::Metadata { brokers, source } => write!(f, "cannot reach the Kafka brokers at {brokers}: {source}"),
            Error::Refused { brokers, security, reason, tls } => {
                let check = if *tls {
                    "check ssl.ca.location against the brokers' certificate"
                } else {
                    "check sasl.username, sasl.password and sasl.mechanism"
                };
                write!(f, "the Kafka brokers at {brokers} refused this client ({security}): {reason}; {check}")
            }
            Error::MissingTopic { topic, hint } => {
                write!(f, "topic \"{topic}\" does not exist (create it, or pass {hint})")
            }
            Error::CreateTopic { topic, source } => {
                write!(f, "dead-letter topic \"{topic}\" does not exist and could not be created: {source}")
            }
            Error::Subscribe(e) => write!(f, "cannot subscribe to the source topic: {e}"),
            Error::PositionList(e) => write!(f, "cannot list the offsets to commit: {e}"),
            Error::Consume(e) => write!(f, "fatal consumer error: {e}"),
            Error::Commit(e) => write!(f, "commit failed: {e}"),
            Error::StoreOffsets(e) => write!(f, "cannot store offsets for commit: {e}"),
            Error::Flush(e) => write!(f, "the producer could not deliver everything before closing: {e}"),
            Error::ProducerFatal { code, reason } => write!(f, "fatal producer error: {code}: {reason}"),
            Error::DeadLetter { at, source } => {
                write!(f, "cannot write to the dead-letter topic: partition {} offset {}: {source}", at.lane, at.seq)
            }
            Error::PeerGone { peer } => write!(f, "the {peer} went away"),
            Error::ReaderGone { reader } => write!(f, "{reader} went away in the middle of a chunk"),
            Error::CreateChannel(e) => write!(f, "cannot create an IPC channel: {e}"),
            Error::Send(e) => write!(f, "cannot send on an IPC channel: {e}"),
            Error::Receive(e) => write!(f, "cannot receive from an IPC channel: {e}"),
            Error::Encode(e) => write!(f, "cannot encode a record: {e}"),
            Error::Decode(e) => write!(f, "malformed IPC batch: {e}"),
            Error::UnknownFrame { len } => write!(f, "malformed IPC batch: unknown frame of {len} bytes"),
            Error::Fork(e) => write!(f, "fork failed: {e}"),
            Error::ChildSetup { call, source } => write!(f, "child set-up failed: {call}: {source}"),
            Error::SpawnThread { name, source } => write!(f, "cannot start the {name} thread: {source}"),
            Error::ThreadPanicked { name } => write!(f, "the {name} thread panicked"),
            Error::InstallSignals(e) => write!(f, "cannot install the SIGINT/SIGTERM handlers: {e}"),
            Error::MetricsAddress { addr, source } => {
                write!(f, "cannot serve metrics on --metrics-addr {addr}: not a HOST:PORT address ({source})")
            }
            Error::MetricsBind { addr, source } => write!(f, "cannot serve metrics on --metrics-addr {addr}: {source}"),
            Error::JqCompile { origin, message } => write!(f, "the jq filter ({origin}) does not compile: {message}"),
            Error::State { path, doing, source } => write!(f, "the aggregation's state in {path}: {doing}: {source}"),
            Error::StateMismatch { path, saved } => write!(
                f,
                "{path} holds the state of another aggregation ({saved}); to start afresh, remove it (its open \
                 windows are lost) or give another --state-dir"
            ),
            Error::ExecStart { program, source } => write!(f, "cannot start the --exec command {program}: {source}"),
            Error::ExecGaveUp { command, how, restarts: 0, .. } => {
                write!(f, "giving up on the --exec command {command}: it {how}, and --max-restarts is 0")
            }
            Error::ExecGaveUp { command, how, restarts, window } => write!(
                f,
                "giving up on the --exec command {command}: it {how} again after {restarts} restart{} in a row, none \
                 of which ran {window:?} and got work done before failing (--max-restarts, --restart-window)",
                if *restarts == 1 { "" } else { "s" }
            ),
            Error::ExecProtocol { command, message } | Error::ExecRestart { command, message } => {
                write!(f, "the --exec command {command} {message}")
            }
            Error::DbConnect { url, fault: Fault::Unreachable, source } => {
                write!(f, "cannot reach the database at {url}: {}", db_message(source.as_ref()))
            }
            Error::DbConnect { url, source, .. } => {
                write!(f, "the database at {url} refused this client: {}", db_message(source.as_ref()))
            }
            Error::DbTls { url, message } => write!(f, "cannot connect to the database at {url} over TLS: {message}"),
            Error::DbSchema { message } => f.write_str(message),
            Error::LookupBehind { name, topic, waited } => {
                write!(f, "--lookup {name}: topic \"{topic}\" was not read to its end within {waited:?}")
            }
            Error::DbQuery { doing, source } => write!(f, "{doing}: {}", db_message(source.as_ref())),
            Error::DbUnsupported { url, what } => write!(f, "{url}: this build cannot use {what} yet"),
            Error::Checkpoint { doing, source } => {
                write!(f, "checkpoint store: {doing}: {}", db_message(source.as_ref()))
            }
            Error::TooManyDeadLetters { verdict } => write!(f, "too many dead letters: {verdict}"),
            Error::MockCluster(e) => write!(f, "embedded Kafka (mock cluster): {e}"),
            Error::DemoStart(e) => write!(f, "the embedded Kafka did not start: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::CreateClient(e)
            | Error::Metadata { source: e, .. }
            | Error::CreateTopic { source: e, .. }
            | Error::Subscribe(e)
            | Error::PositionList(e)
            | Error::Consume(e)
            | Error::Commit(e)
            | Error::StoreOffsets(e)
            | Error::Flush(e)
            | Error::DeadLetter { source: e, .. }
            | Error::MockCluster(e) => Some(e),
            Error::ProducerFatal { code, .. } => Some(code),
            Error::CreateChannel(e)
            | Error::SpawnThread { source: e, .. }
            | Error::ExecStart { source: e, .. }
            | Error::InstallSignals(e)
            | Error::MetricsAddress { source: e, .. }
            | Error::MetricsBind { source: e, .. } => Some(e),
            Error::Send(e) | Error::Receive(e) => Some(e),
            Error::Encode(e) => Some(e),
            Error::Decode(e) => Some(e),
            Error::Fork(e) | Error::ChildSetup { source: e, .. } => Some(e),
            Error::DemoStart(e) => Some(e),
            Error::DbConnect { source, .. } | Error::DbQuery { source, .. } | Error::Checkpoint { source, .. } => {
                Some(source.as_ref())
            }
            Error::DbSchema { .. } | Error::DbTls { .. } | Error::DbUnsupported { .. } => None,
            Error::LookupBehind { .. } => None,
            Error::State { source, .. } => Some(source),
            Error::StateMismatch { .. } => None,
            Error::MissingTopic { .. }
            | Error::Refused { .. }
            | Error::PeerGone { .. }
            | Error::ReaderGone { .. }
            | Error::ThreadPanicked { .. }
            | Error::UnknownFrame { .. }
            | Error::JqCompile { .. }
            | Error::ExecGaveUp { .. }
            | Error::ExecProtocol { .. }
            | Error::ExecRestart { .. }
            | Error::TooManyDeadLetters { .. } => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A database client's error as text that says what happened: the server's message and SQLSTATE where the server
/// refused (PostgreSQL's client displays only `db error`, and the message, SQLSTATE, detail and hint are inside it;
/// MySQL's wraps it in `MySqlError { }`), else the error and its causes (PostgreSQL's `error connecting to server`
/// keeps `Connection refused` among them).
pub fn db_message(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(mysql::Error::MySqlError(m)) = e.downcast_ref::<mysql::Error>() {
        return m.to_string();
    }
    let Some(pe) = e.downcast_ref::<postgres::Error>() else {
        return e.to_string();
    };
    let Some(db) = pe.as_db_error() else {
        return with_causes(pe);
    };
    let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(detail) = db.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    if let Some(hint) = db.hint() {
        text.push_str("; hint: ");
        text.push_str(hint);
    }
    text
}

/// An error and each of its causes whose words are not already in it, joined by `: `.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let words = c.to_string();
        if !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_keep_their_cause_and_map_to_documented_exit_codes() {
        let kafka = KafkaError::ClientCreation("bad property".into());
        let e = Error::CreateClient(kafka);
        assert_eq!(e.exit(), Exit::Config);
        assert!(e.source().is_some_and(|s| s.to_string().contains("bad property")), "{e}");
        let e = Error::Metadata { brokers: "k:1".into(), source: KafkaError::ClientCreation("down".into()) };
        assert_eq!(
            (e.exit(), e.to_string().contains("cannot reach the Kafka brokers at k:1")),
            (Exit::Unavailable, true)
        );
        let e = Error::Fork(Errno::EAGAIN);
        assert_eq!(e.exit(), Exit::Failure);
        assert_eq!(e.source().map(|s| s.to_string()), Some(Errno::EAGAIN.to_string()));
        let e = Error::MetricsBind { addr: "x:1".into(), source: io::Error::from(io::ErrorKind::AddrInUse) };
        assert_eq!(e.exit(), Exit::Config);
        assert!(Error::PeerGone { peer: "sink" }.source().is_none());
        assert!(Error::PeerGone { peer: "sink" }.is_peer_gone());
        assert!(!Error::Fork(Errno::EAGAIN).is_peer_gone());
    }
}
