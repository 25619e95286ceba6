//! Logs go to stderr through env_logger, each line naming the process (its role in a child, "supervisor" in the
//! parent) and its pid, with secrets masked ([`redact`]). When stderr is the journal, lines carry a syslog priority instead of a timestamp.

use super::rate_limit::{self, RateLimit};
use super::redact;
use nix::unistd::getpid;
use std::io::Write;
use std::sync::{Mutex, OnceLock, PoisonError};

static NAME: OnceLock<String> = OnceLock::new();

/// Names this process in its log lines from now on; a forked child calls it once, before it logs anything.
pub fn set_process_name(name: &str) {
    let _ = NAME.set(name.to_string());
}

/// The name this process logs under.
pub fn process_name() -> &'static str {
    NAME.get().map_or("supervisor", String::as_str)
}

/// `level` (`--log-level`) wins over `RUST_LOG`; the default is info.
///
/// When stderr is the journal (systemd sets `JOURNAL_STREAM` to its device and inode), lines carry a syslog priority
/// prefix instead of a timestamp and level: the journal stamps them itself and keeps the level as the priority.
pub fn init(level: Option<&str>) {
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
            let line = record.args().to_string();
            writeln!(buf, "<{priority}>{}[{}] {}", process_name(), getpid(), redact::mask(&line))
        });
    } else {
        builder.format(|buf, record| {
            let ts = buf.timestamp_millis();
            let line = record.args().to_string();
            writeln!(buf, "{ts} {:<5} {}[{}] {}", record.level(), process_name(), getpid(), redact::mask(&line))
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

/// The first refusal librdkafka reported: a TLS handshake or a SASL authentication that failed. Retrying cannot
/// mend either, so start-up gives up on it at once, instead of after its timeout.
static REFUSAL: Mutex<Option<String>> = Mutex::new(None);

/// librdkafka retries a refused connection every few tens of milliseconds: one line per interval, not per retry.
static REFUSALS: RateLimit = RateLimit::every(rate_limit::EVERY);

/// What librdkafka said when the brokers refused this process's credentials or certificate, if they did.
pub fn refusal() -> Option<String> {
    REFUSAL.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The line says the brokers refused us: TLS verification or SASL authentication failed.
fn is_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("ssl handshake failed")
        || m.contains("authentication failed")
        || m.contains("sasl") && m.contains("failed")
}

/// Records a refusal and says whether to log it now (rate-limited) and how many were held back.
fn on_refusal(message: &str) -> Option<u64> {
    let mut first = REFUSAL.lock().unwrap_or_else(PoisonError::into_inner);
    if first.is_none() {
        // librdkafka's line starts with the broker and thread; what matters is after them.
        *first = Some(message.rsplit("]: ").next().unwrap_or(message).to_string());
    }
    REFUSALS.check()
}

/// The client's error callback fires on every failed reconnect while the brokers are away.
static CLIENT_ERRORS: RateLimit = RateLimit::every(rate_limit::EVERY);

/// Routes an error librdkafka reports through the client's error callback. These are what its clients retry by
/// themselves (a broker down, a connection refused): warnings, rate-limited. What cannot be retried reaches the
/// stage as an error of its own, which says it once.
pub fn librdkafka_error(error: &rdkafka::error::KafkaError, reason: &str) {
    let limit = if is_refusal(reason) { on_refusal(reason) } else { CLIENT_ERRORS.check() };
    if let Some(held) = limit {
        log::warn!("librdkafka: {error}: {reason}{}", rate_limit::held_back(held));
    }
}

/// Routes librdkafka's own log lines through `log`, at the matching level.
pub fn librdkafka(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    if is_refusal(message) {
        // A warning: at start-up the stage's own error says it once, with what to check; later, the pipeline waits
        // for the brokers to take it again, as it does through an outage.
        if let Some(held) = on_refusal(message) {
            log::warn!(target: "librdkafka", "librdkafka: {fac} {message}{}", rate_limit::held_back(held));
        }
        return;
    }
    let level = match level {
        // A connection that failed is retried by librdkafka itself: the stage says so if it cannot go on.
        L::Error if fac == "FAIL" => log::Level::Warn,
        L::Emerg | L::Alert | L::Critical | L::Error => log::Level::Error,
        // An unprefixed -X goes to both clients by contract; librdkafka warns about the client it does not fit.
        L::Warning if fac == "CONFWARN" && message.contains("will be ignored by this") => log::Level::Debug,
        L::Warning => log::Level::Warn,
        L::Notice | L::Info => log::Level::Info,
        L::Debug => log::Level::Debug,
    };
    log::log!(target: "librdkafka", level, "librdkafka: {fac} {message}");
}
