//! The `supervisor` binary, run as a user would run it, and what it exposes while it runs: its exit code, its log,
//! its children as `ps` shows them, and `/metrics`.

use super::broker::{free_port, PARTITIONS};
pub use nix::sys::signal::{kill, Signal};
pub use nix::unistd::Pid;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The flags every pipeline under test gets: the test topics, its group, and short group sessions (some tansu
/// builds need them for a quick join; they cost nothing).
/// The ERROR lines of a log.
pub fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("ERROR")).collect()
}

pub fn base_args(brokers: &str, group: &str) -> Vec<String> {
    [
        "--brokers",
        brokers,
        "--group-id",
        group,
        "--source-topic",
        "src",
        "--dest-topic",
        "dst",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `args` without these flags and their values: the Kafka flags of `base_args` where an end is a table.
pub fn without(args: &[String], flags: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if flags.iter().any(|f| a.strip_prefix("--") == Some(*f)) {
            skip = true;
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// The binary with none of the caller's SUPERVISOR_* settings, so that a test says exactly what it sets.
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_supervisor"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUPERVISOR_")) {
        c.env_remove(k);
    }
    c
}

/// The `supervisor` binary, running, with its stderr collected.
pub struct Running {
    pub child: Child,
    log: Arc<Mutex<String>>,
    /// Where it serves `/metrics`.
    metrics: String,
}

/// Starts the binary with `args`; unless they name one, it serves `/metrics` on a free loopback port.
pub fn start(args: &[String]) -> Running {
    start_with_env(args, &[])
}

pub fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Running {
    let mut args = args.to_vec();
    let metrics = match args.iter().position(|a| a == "--metrics-addr") {
        Some(i) => args.get(i + 1).cloned().unwrap_or_default(),
        None => {
            let addr = format!("127.0.0.1:{}", free_port());
            args.extend(["--metrics-addr".to_string(), addr.clone()]);
            addr
        }
    };
    let mut child = command()
        .args(&args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start supervisor");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  | {line}");
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    Running { child, log, metrics }
}

impl Running {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// Waits until the process catches SIGINT and SIGTERM (its handlers are installed), as /proc shows it.
    pub fn wait_catching_signals(&self, timeout: Duration) -> bool {
        let bit = |sig: Signal| 1u64 << (sig as i32 - 1);
        let wanted = bit(Signal::SIGINT) | bit(Signal::SIGTERM);
        wait(timeout, || {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
            let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim).unwrap_or("0");
            u64::from_str_radix(caught, 16).unwrap_or(0) & wanted == wanted
        })
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait(timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        if status.is_some() {
            std::thread::sleep(Duration::from_millis(100)); // let the log reader catch up
        }
        status
    }

    /// The exit code after `sig`, waiting up to `timeout`.
    pub fn stop(&mut self, sig: Signal, timeout: Duration) -> Option<i32> {
        self.signal(sig);
        self.wait_timeout(timeout).and_then(|s| s.code())
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`: for tests about what is logged.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Waits until `n` lines of the log contain `needle`.
    pub fn wait_for_log_count(&mut self, needle: &str, n: usize, timeout: Duration) -> bool {
        let found = |r: &Running| r.log().lines().filter(|l| l.contains(needle)).count() >= n;
        if wait(timeout, || found(self) || self.child.try_wait().unwrap().is_some()) && !found(self) {
            std::thread::sleep(Duration::from_millis(100)); // it exited: let the log reader catch up
        }
        found(self)
    }

    /// One scrape of `/metrics`; `None` while it does not answer.
    pub fn metrics(&self) -> Option<Metrics> {
        scrape(&self.metrics)
    }

    /// Waits until a scrape of `/metrics` satisfies `done`, and returns it.
    pub fn wait_metrics(&mut self, timeout: Duration, done: impl Fn(&Metrics) -> bool) -> Option<Metrics> {
        let mut last = None;
        let ok = wait(timeout, || {
            last = self.metrics();
            last.as_ref().is_some_and(&done) || self.child.try_wait().unwrap().is_some()
        });
        last.filter(|m| ok && done(m))
    }

    /// Waits until the pipeline works: every child up, the consumer joined its group.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        self.wait_metrics(timeout, |m| m.get("supervisor_ready") == Some(1.0)).is_some()
    }

    /// Waits until the pipeline works again, its consumer owning every partition, after `restarts` restarts caused by
    /// a `role`.
    pub fn wait_restarted(&mut self, role: &str, restarts: u32, timeout: Duration) -> bool {
        let series = format!("supervisor_restarts_total{{role=\"{role}\"}}");
        let done = |m: &Metrics| {
            m.get(&series) == Some(f64::from(restarts))
                && m.get("supervisor_ready") == Some(1.0)
                && m.get("supervisor_assigned_partitions") == Some(f64::from(PARTITIONS))
        };
        self.wait_metrics(timeout, done).is_some()
    }

    /// The live children by role, as `ps` shows them (`supervisor: worker-0`).
    pub fn children(&self) -> HashMap<String, i32> {
        let parent = self.child.id().to_string();
        let mut out = HashMap::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid != Some(parent.as_str()) {
                continue;
            }
            let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
            if let Some(role) = cmdline.trim_end_matches('\0').strip_prefix("supervisor: ") {
                out.insert(role.to_string(), pid);
            }
        }
        out
    }

    /// The pid of the child in `role`.
    pub fn child_pid(&self, role: &str) -> Pid {
        let children = self.children();
        let pid = children.get(role).unwrap_or_else(|| panic!("no {role} among {children:?}:\n{}", self.log()));
        Pid::from_raw(*pid)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` every 20 ms until it holds or `timeout`; whether it held.
fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if done() {
            return true;
        }
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// A scrape of `/metrics`, as Prometheus reads it.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of one sample, by its name and labels as printed.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One scrape over plain HTTP; `None` if nothing answers, and a failed assertion on anything but Prometheus text.
pub fn scrape(addr: &str) -> Option<Metrics> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {answer}"));
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("version=0.0.4"), "{head}");
    Some(Metrics(body.to_string()))
}
