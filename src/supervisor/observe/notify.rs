//! systemd's notify protocol (sd_notify(3)) for a `Type=notify` service, without libsystemd: one datagram per state
//! change to `$NOTIFY_SOCKET`. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// `$NOTIFY_SOCKET`, if systemd gave one; the default says nothing.
#[derive(Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd sets them for the main process.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| match connect(&path) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={path:?} cannot be used ({e}); systemd will not hear from us");
                None
            }
        });
        Notifier { socket, watchdog: watchdog_from_env() }
    }

    /// Sends newline-separated `KEY=VALUE` assignments; a failure is logged once at debug level and otherwise
    /// ignored, since systemd's absence must not stop the pipeline.
    pub fn send(&self, state: &str) {
        // What systemctl status shows is printed too: a failure's text may quote librdkafka.
        let state = crate::telemetry::redact::mask(state);
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                log::debug!("sd_notify {state:?}: {e}");
            }
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WatchdogSec`, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.socket.as_ref().and(self.watchdog).map(|w| w / 2)
    }
}

/// What the supervisor tells systemd, and when: READY=1 once, the watchdog at its pace.
#[derive(Default)]
pub struct Systemd {
    notifier: Notifier,
    ready_sent: bool,
    last_watchdog: Option<Instant>,
}

impl Systemd {
    pub fn from_env() -> Systemd {
        Systemd { notifier: Notifier::from_env(), ..Systemd::default() }
    }

    /// The pipeline works: `READY=1` the first time, with the status; afterwards (a restart) the status alone.
    pub fn running(&mut self, status: &str) {
        if self.ready_sent {
            self.notifier.send(&format!("STATUS={status}"));
        } else {
            self.notifier.send(&format!("READY=1\nSTATUS={status}"));
            self.ready_sent = true;
        }
    }

    pub fn status(&self, status: &str) {
        self.notifier.send(&format!("STATUS={status}"));
    }

    /// `STOPPING=1`, and room for the whole drain in systemd's stop timeout.
    pub fn stopping(&self, drain_timeout: Duration) {
        let room = drain_timeout + Duration::from_secs(5);
        self.notifier.send(&format!(
            "STOPPING=1\nSTATUS=draining (within {drain_timeout:?})\nEXTEND_TIMEOUT_USEC={}",
            room.as_micros()
        ));
    }

    /// `WATCHDOG=1` at half of `WatchdogSec`, only while `healthy` says so: a supervisor that cannot keep its
    /// pipeline alive (or is stuck itself) lets systemd's watchdog act.
    pub fn watchdog(&mut self, healthy: impl FnOnce() -> bool) {
        let Some(every) = self.notifier.watchdog_every() else {
            return;
        };
        if self.last_watchdog.is_some_and(|t| t.elapsed() < every) || !healthy() {
            return;
        }
        self.notifier.send("WATCHDOG=1");
        self.last_watchdog = Some(Instant::now());
    }
}

fn connect(path: &OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}

fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // WATCHDOG_PID names the process the watchdog is for; it may be a different one.
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_arrive_on_the_socket_as_datagrams() {
        let dir = std::env::temp_dir().join(format!("notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let (socket, addr) = connect(path.as_os_str()).unwrap();
        let n = Notifier { socket: Some((socket, addr)), watchdog: Some(Duration::from_secs(10)) };
        n.send("READY=1\nSTATUS=running");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=running");
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
        assert_eq!(Notifier::default().watchdog_every(), None);
        Notifier::default().send("READY=1"); // no socket: nothing, and no error
    }
}
