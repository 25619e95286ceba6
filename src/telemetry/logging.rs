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

/// The brokers refused this client: TLS verification or SASL authentication failed. Retrying cannot mend either, so
/// start-up gives up on it at once, instead of after its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What librdkafka said, less the broker's name it starts with.
    pub reason: String,
    /// The TLS handshake failed (else the SASL authentication).
    pub tls: bool,
}

/// The first refusal this process's clients reported.
static REFUSAL: Mutex<Option<Refusal>> = Mutex::new(None);

/// librdkafka retries a refused connection every few tens of milliseconds: one line per interval, not per retry.
static REFUSALS: RateLimit = RateLimit::every(rate_limit::EVERY);

/// The client's error callback also fires on every failed reconnect while the brokers are away.
static CLIENT_ERRORS: RateLimit = RateLimit::every(rate_limit::EVERY);

/// librdkafka's FAIL lines: one per failed connection.
static FAILS: RateLimit = RateLimit::every(rate_limit::EVERY);

/// The brokers refused this process's certificate or credentials, if they did.
pub fn refusal() -> Option<Refusal> {
    REFUSAL.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// librdkafka starts a broker's errors with its name (`sasl_ssl://k1:9093/bootstrap: `); the rest is what happened.
fn without_broker(reason: &str) -> &str {
    reason.find("://").and_then(|at| reason[at..].find(": ").map(|colon| &reason[at + colon + 2..])).unwrap_or(reason)
}

/// Routes an error librdkafka reports through the client's error callback. Its error code, not its text, says
/// whether the brokers refused us (a SASL_SSL broker's name contains "sasl" and "ssl" whatever happened). Everything
/// else its clients retry by themselves (a broker down, a name that does not resolve yet): warnings, rate-limited.
/// What cannot be retried reaches the stage as an error of its own, which says it once.
pub fn librdkafka_error(error: &rdkafka::error::KafkaError, reason: &str) {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let tls = match error.rdkafka_error_code() {
        Some(Code::SSL) => Some(true),
        Some(Code::Authentication) => Some(false),
        _ => None,
    };
    let limit = match tls {
        Some(tls) => {
            let mut first = REFUSAL.lock().unwrap_or_else(PoisonError::into_inner);
            first.get_or_insert_with(|| Refusal { reason: without_broker(reason).to_string(), tls });
            REFUSALS.check()
        }
        None => CLIENT_ERRORS.check(),
    };
    if let Some(held) = limit {
        log::warn!("librdkafka: {error}: {reason}{}", rate_limit::held_back(held));
    }
}

/// Routes librdkafka's own log lines through `log`, at the matching level.
pub fn librdkafka(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    if fac == "FAIL" {
        // A connection that failed: librdkafka retries it, and the error callback (or the stage) says what it means.
        if let Some(held) = FAILS.check() {
            log::warn!(target: "librdkafka", "librdkafka: {fac} {message}{}", rate_limit::held_back(held));
        }
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_name_is_not_what_happened() {
        assert_eq!(
            without_broker("sasl_ssl://k1:9093/bootstrap: SASL authentication error: SASL SCRAM authentication failed"),
            "SASL authentication error: SASL SCRAM authentication failed"
        );
        assert_eq!(without_broker("1/1 brokers are down"), "1/1 brokers are down");
    }

    #[test]
    fn only_refusal_codes_are_refusals() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        librdkafka_error(&KafkaError::Global(Code::BrokerTransportFailure), "sasl_ssl://k1:9093/b: Connect failed");
        assert_eq!(refusal(), None, "an outage on a SASL_SSL listener is not a refusal");
        librdkafka_error(&KafkaError::Global(Code::Authentication), "sasl_ssl://k1:9093/b: SASL authentication failed");
        librdkafka_error(&KafkaError::Global(Code::SSL), "ssl://k1:9093/b: SSL handshake failed");
        assert_eq!(refusal(), Some(Refusal { reason: "SASL authentication failed".into(), tls: false }), "the first");
    }
}
