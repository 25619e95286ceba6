//! One running `--exec` command: its process, and the threads that feed its stdin, read its replies and pass its
//! stderr to the log.
//!
//! The pipes are served by their own threads, so that neither can fill up while the worker waits on the other: the
//! worker hands a whole batch to the writer and reads the replies as they come.

use crate::error::{Error, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A command started once and kept; dropped, it is killed.
pub struct Running {
    child: Child,
    /// `None` once closed, to tell the command there is no more input.
    requests: Option<Sender<Vec<u8>>>,
    replies: Receiver<Vec<u8>>,
}

/// Why no reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReply {
    /// The command closed its stdout: it exited or crashed.
    Ended,
    /// No reply within the timeout.
    TimedOut,
}

impl Running {
    /// Starts `argv` without a shell. Its stderr lines go to the log, prefixed with `name`.
    pub fn start(argv: &[String], name: &str) -> Result<Running> {
        let (program, args) = argv.split_first().ok_or_else(|| Error::ExecStart {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
        })?;
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Python buffers a pipe's output by blocks; a reply must leave at once, or the worker waits for nothing.
            .env("PYTHONUNBUFFERED", "1")
            // Its own process group: Ctrl-C on the terminal is for the supervisor, which drains; the worker closes
            // the command's stdin when its turn comes.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (prctl, sigaction) between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // The command must not outlive its worker, even after a `kill -9` of the worker.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The worker ignores these (the supervisor alone decides how to stop); the command gets the defaults.
                for sig in [Signal::SIGINT, Signal::SIGTERM] {
                    signal::signal(sig, SigHandler::SigDfl)?;
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| Error::ExecStart { program: program.clone(), source })?;
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map(drop)
                .map_err(|source| Error::SpawnThread { name: "exec pipe", source })
        };
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) else {
            unreachable!("all three were asked to be piped");
        };
        let (requests, to_write) = bounded::<Vec<u8>>(1);
        spawn("exec-stdin", Box::new(move || write_requests(stdin, to_write)))?;
        let (replied, replies) = unbounded();
        spawn("exec-stdout", Box::new(move || read_lines(stdout, |line| replied.send(line).is_ok())))?;
        let name = name.to_string();
        spawn(
            "exec-stderr",
            Box::new(move || {
                read_lines(stderr, |line| {
                    let line = String::from_utf8_lossy(&line);
                    log::info!("{name}: {}", line.trim_end());
                    true
                })
            }),
        )?;
        Ok(Running { child, requests: Some(requests), replies })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Hands the command a batch of request lines; they are written while the replies are read.
    pub fn send(&mut self, lines: Vec<u8>) {
        // The writer is gone only when the command's stdin broke: the command ended, as the replies will tell.
        if let Some(tx) = &self.requests {
            let _ = tx.send(lines);
        }
    }

    /// The next reply line, waiting at most until `deadline` and calling `tick` about once a second meanwhile.
    pub fn reply(&self, deadline: Instant, tick: impl Fn()) -> std::result::Result<Vec<u8>, NoReply> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(line) => return Ok(line),
                Err(RecvTimeoutError::Disconnected) => return Err(NoReply::Ended),
                Err(RecvTimeoutError::Timeout) if left.is_zero() => return Err(NoReply::TimedOut),
                Err(RecvTimeoutError::Timeout) => tick(),
            }
        }
    }

    /// Kills the command (and anything it started in its process group) and says how it ended.
    pub fn kill(mut self) -> Option<ExitStatus> {
        self.stop_now()
    }

    /// How it ended, once it has: reaps it if it already exited, else kills it.
    pub fn end(mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                // Closed stdout but still running (or just exiting): give it a moment before the kill.
                let until = Instant::now() + Duration::from_millis(200);
                while Instant::now() < until {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Some(status);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.stop_now()
            }
        }
    }

    /// Closes the command's stdin and waits up to `grace` for it to exit, then kills it.
    pub fn finish(mut self, grace: Duration) -> Option<ExitStatus> {
        self.requests = None;
        let until = Instant::now() + grace;
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        self.stop_now()
    }

    fn stop_now(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // The whole group: a command run through a wrapper (sh -c, a venv launcher) must not leave its child behind.
        let group = Pid::from_raw(self.child.id() as i32);
        if signal::killpg(group, Signal::SIGKILL).is_err() {
            let _ = self.child.kill();
        }
        self.child.wait().ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Not reaped yet (a kill, end or finish reaps it): the worker is failing, and the command must not outlive it.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop_now();
        }
    }
}

fn write_requests(mut stdin: ChildStdin, requests: Receiver<Vec<u8>>) {
    for lines in requests {
        if stdin.write_all(&lines).and_then(|()| stdin.flush()).is_err() {
            return;
        }
    }
    // The channel closed: dropping stdin tells the command there is no more input.
}

/// Calls `line` with every line (without its newline) until EOF, an error, or `line` returning false.
fn read_lines(from: impl Read, mut line: impl FnMut(Vec<u8>) -> bool) {
    let mut reader = BufReader::with_capacity(64 * 1024, from);
    loop {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                if !line(buf) {
                    return;
                }
            }
        }
    }
}
