//! What a forked child does before its stage runs, and how its role shows in `ps` and in logs.

use crate::error::{Error, Result};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::{getpid, getppid, Pid};
use std::ffi::CString;
use std::io::{Seek, SeekFrom, Write};
use std::sync::OnceLock;

/// Which stage a child process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Producer,
    Hasher(usize),
    Consumer,
    /// The embedded broker, generator and checker of `supervisor demo`.
    DemoBroker,
}

impl Role {
    /// The role without its index: what metrics are labelled with.
    pub fn kind(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Hasher(_) => "hasher",
            Role::Consumer => "consumer",
            Role::DemoBroker => "demo-broker",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Producer => f.write_str("producer"),
            Role::Hasher(i) => write!(f, "hasher-{i}"),
            Role::Consumer => f.write_str("consumer"),
            Role::DemoBroker => f.write_str("demo-broker"),
        }
    }
}

static ROLE: OnceLock<String> = OnceLock::new();

/// The name this process logs under: its role in a child, "supervisor" in the parent.
pub fn role_name() -> &'static str {
    ROLE.get().map_or("supervisor", String::as_str)
}

/// Sets up a freshly forked child. Runs before anything else in the child, single-threaded.
pub fn become_child(role: Role, parent: Pid) -> Result<()> {
    let _ = ROLE.set(role.to_string());
    // The child must not outlive the supervisor, even after `kill -9` of the supervisor: its events are uncommitted
    // and will be re-read, so dying with it loses nothing.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| Error::Os(format!("prctl(PDEATHSIG): {e}")))?;
    if getppid() != parent {
        // The supervisor died between fork and prctl.
        std::process::exit(crate::error::Exit::Failure.code());
    }
    // Ctrl-C reaches the whole process group; the supervisor alone decides how to stop, and tells the children.
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: SIG_IGN installs no handler code, and this process is single-threaded here.
        unsafe { signal::signal(sig, SigHandler::SigIgn) }.map_err(|e| Error::Os(format!("signal({sig}): {e}")))?;
    }
    // SAFETY: as above; restores the default the parent's own handlers replaced.
    unsafe { signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) }.map_err(|e| Error::Os(format!("signal: {e}")))?;
    set_title(role);
    Ok(())
}

/// Best effort: `ps -e`/`top` show the comm name, `ps aux` the command line; both get the role.
fn set_title(role: Role) {
    let comm = match role {
        Role::Hasher(i) => format!("sv-hasher-{i}"),
        other => format!("sv-{other}"),
    };
    if let Ok(c) = CString::new(comm) {
        let _ = nix::sys::prctl::set_name(&c);
    }
    let _ = rewrite_cmdline(&format!("supervisor: {role}"));
}

/// Overwrites the argv area the kernel shows as /proc/self/cmdline (what setproctitle does), through /proc/self/mem
/// so that no pointer is forged.
fn rewrite_cmdline(title: &str) -> std::io::Result<()> {
    // valgrind still reads its own options from that memory after a fork (it then fails at exit); it shows itself
    // through the preload library it injects.
    if std::env::var_os("LD_PRELOAD").is_some_and(|p| p.to_string_lossy().contains("vgpreload")) {
        return Ok(());
    }
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // Fields 48 and 49 of stat are arg_start and arg_end; after the comm the list starts at field 3.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return Ok(());
    };
    let len = end.saturating_sub(start) as usize;
    if len < 2 {
        return Ok(());
    }
    let mut area = vec![0u8; len];
    let n = title.len().min(len - 1);
    area[..n].copy_from_slice(&title.as_bytes()[..n]);
    let mut mem = std::fs::OpenOptions::new().write(true).open("/proc/self/mem")?;
    mem.seek(SeekFrom::Start(start))?;
    mem.write_all(&area)
}

/// Logs go to stderr through env_logger, each line naming the process's role and pid. `level` (`--log-level`)
/// wins over `RUST_LOG`; the default is info.
///
/// When stderr is the journal (systemd sets `JOURNAL_STREAM` to its device and inode), lines carry a syslog priority
/// prefix instead of a timestamp and level: the journal stamps them itself and keeps the level as the priority.
pub fn init_logging(level: Option<&str>) {
    let mut builder = match level {
        Some(level) => {
            let mut b = env_logger::Builder::new();
            b.parse_filters(level);
            b
        }
        None => env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")),
    };
    if stderr_is_journal() {
        builder.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}[{}] {}", role_name(), getpid(), record.args())
        });
    } else {
        builder.format(|buf, record| {
            let ts = buf.timestamp_millis();
            writeln!(buf, "{ts} {:<5} {}[{}] {}", record.level(), role_name(), getpid(), record.args())
        });
    }
    let _ = builder.try_init();
}

/// sd_journal_stream_fd(3): `JOURNAL_STREAM` is `device:inode` of the stream; it counts only if stderr is still it
/// (a child of ours whose stderr was redirected must not use the prefixes).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// Routes librdkafka's own log lines through `log`, at the matching level.
pub fn librdkafka_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    let level = match level {
        L::Emerg | L::Alert | L::Critical | L::Error => log::Level::Error,
        // An unprefixed -X goes to both clients by contract; librdkafka warns about the client it does not fit.
        L::Warning if fac == "CONFWARN" && message.contains("will be ignored by this") => log::Level::Debug,
        L::Warning => log::Level::Warn,
        L::Notice | L::Info => log::Level::Info,
        L::Debug => log::Level::Debug,
    };
    log::log!(target: "librdkafka", level, "librdkafka: {fac} {message}");
}

/// Logs at most once per `every`, counting what was held back, for events that may come by the million.
#[derive(Debug)]
pub struct RateLimitedLog {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(every: std::time::Duration) -> Self {
        RateLimitedLog { every, last: None, suppressed: 0 }
    }

    /// Returns how many were held back since the last line when a line may be written now.
    pub fn ready(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_log_holds_back_and_counts() {
        let mut l = RateLimitedLog::new(std::time::Duration::from_secs(3600));
        assert_eq!(l.ready(), Some(0));
        assert_eq!(l.ready(), None);
        assert_eq!(l.ready(), None);
        l.last = Some(std::time::Instant::now() - std::time::Duration::from_secs(7200));
        assert_eq!(l.ready(), Some(2));
    }
}
