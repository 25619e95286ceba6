//! `--exec`: the user's own program, in any language, started once per worker and kept for the worker's life.
//!
//! The protocol: one event per line on the command's stdin (compact JSON), each followed by a sync line, `#sync N`;
//! on its stdout exactly one line per event (an object is the output event; an array is zero or more of them), then
//! that sync line written back as it is; its stderr to our log. No JSON event starts with `#`, so the two never mix.
//! The sync lines frame every reply: the lines between two of them belong to the one event between them, and must be
//! exactly one. An extra line, a missing one, a stray banner are caught on the event they happen on, and are never
//! shifted onto the next one. A whole batch is written at once, so the command works while its replies are read. A
//! command must write one sync line back before its first event: one that writes anything else first, or never writes
//! it back, does not speak the protocol (exit 2).
//!
//! A command that ends or hangs is restarted (after a backoff, within `--max-restarts` in a row), and the event it was
//! working on is tried once more in the fresh process; one that ends or hangs two processes in a row is a poison
//! event and goes to the dead-letter destination, so that one bad event never loops forever. Replies that break the
//! protocol restart the command too, and their events are tried once more in the fresh process: an event that still
//! gets no single line is dead-lettered with the reason, and the others go on. A command that keeps failing spends the
//! restart budget, and the worker gives up (exit 6).

mod command;
pub mod reply;

use super::{Outputs, Rejection, Transform};
use crate::backoff::{Verdict, Window};
use crate::channel::batch::Record;
use crate::config::ExecSpec;
use crate::error::{Error, Result};
use crate::telemetry::events::{emit, CommandRestarted};
use crate::telemetry::heartbeat;
use command::{NoReply, Running};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Said with a timeout: most commands that time out on their first event hold their replies in a buffer, as C's
/// stdio, Python and jq do when stdout is a pipe.
const BUFFERED: &str = " (does it buffer its output? A command's stdout is a pipe: flush after each line, e.g. \
                        python3 -u, jq --unbuffered, stdbuf -oL COMMAND)";

/// How long a command may take to exit once its stdin is closed at the end of the worker.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// A worker's command, and its restarts.
pub struct Exec {
    spec: ExecSpec,
    running: Option<Running>,
    /// When the running command was started, and how many events it has replied to since: one that ran a whole
    /// `--restart-window` and got work done forgets earlier restarts.
    started: Instant,
    replied: u64,
    restarts: Window,
    /// Request lines of the batch, and where each event's line is in them.
    lines: Vec<u8>,
    /// Sync lines written so far: each batch's is new, so a late one from an earlier batch is told apart.
    syncs: u64,
}

/// What became of one event of the batch before its outputs are read.
enum Answer {
    /// Not sent: it is no JSON (or no payload).
    Refused(Rejection),
    /// To be sent; its line is at this range of the request buffer.
    Waiting(Range<usize>),
    Replied(Vec<u8>),
    /// Given up on: it goes to the dead-letter destination.
    Failed(Rejection),
}

/// What the command wrote for one event, between its sync lines.
#[derive(Debug)]
enum Framed {
    Reply(Vec<u8>),
    /// Not one line: this says how.
    Broken(String),
}

/// How the first sync line went.
enum Handshake {
    Done,
    Stopped(NoReply),
    /// A line that is not the sync line: a banner, a log line on stdout.
    Stray(Vec<u8>),
}

/// The sync line after the `n`th batch.
fn sync_line(n: u64) -> String {
    format!("#sync {n}")
}

/// A line of the command's output as a log would show it: the start of it, quoted.
fn preview(line: &[u8]) -> String {
    const MAX: usize = 80;
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX)]);
    if line.len() > MAX {
        format!("{text:?}… ({} bytes)", line.len())
    } else {
        format!("{text:?}")
    }
}

impl Exec {
    /// Starts the command and checks that it speaks the protocol. A program that cannot be started, or that does not
    /// write the first sync line back, is a configuration error.
    pub fn start(spec: &ExecSpec) -> Result<Exec> {
        Exec::start_with(spec, true)
    }

    /// Starts the command in a restarted pipeline: it spoke the protocol before, so a command that ends or hangs
    /// before its first sync line now (a slow start on a loaded machine, a dependency away) is a crash the
    /// supervisor's restart budget judges, not a configuration error.
    pub fn start_again(spec: &ExecSpec) -> Result<Exec> {
        Exec::start_with(spec, false)
    }

    fn start_with(spec: &ExecSpec, first: bool) -> Result<Exec> {
        let mut exec = Exec {
            restarts: Window::new(spec.max_restarts, spec.restart_window),
            spec: spec.clone(),
            running: None,
            started: Instant::now(),
            replied: 0,
            lines: Vec::new(),
            syncs: 0,
        };
        match exec.launch()? {
            Handshake::Done => Ok(exec),
            Handshake::Stray(line) => Err(exec.stray(&line)),
            Handshake::Stopped(why) => {
                let how = exec.stop(Some(why));
                let buffers = match why {
                    // jq cannot write the sync lines back: they are not JSON.
                    _ if exec.spec.name() == "jq" => " (for a jq filter, use --jq FILTER: jaq runs it in the workers)",
                    NoReply::TimedOut => BUFFERED,
                    _ => "",
                };
                let message = format!(
                    "{how} before writing back the sync line {:?}: a command must write every line that starts with \
                     '#' back as it is, and one reply line per event (see the README){buffers}",
                    sync_line(0)
                );
                let command = exec.spec.name();
                Err(if first {
                    Error::ExecProtocol { command, message }
                } else {
                    Error::ExecRestart { command, message }
                })
            }
        }
    }

    /// Starts a process and waits for it to write back the sync line it is sent first.
    fn launch(&mut self) -> Result<Handshake> {
        let running = self.running.insert(Running::start(&self.spec.argv, &self.spec.name())?);
        self.started = Instant::now();
        self.replied = 0;
        log::debug!("started {} (pid {})", self.spec.name(), running.pid());
        let sync = sync_line(self.syncs);
        running.send(format!("{sync}\n").into_bytes());
        Ok(match running.reply(Instant::now() + self.spec.timeout, heartbeat::tick) {
            Ok(line) if line.trim_ascii_end() == sync.as_bytes() => Handshake::Done,
            Ok(line) => Handshake::Stray(line),
            Err(why) => Handshake::Stopped(why),
        })
    }

    fn stray(&mut self, line: &[u8]) -> Error {
        self.stop(None);
        Error::ExecProtocol {
            command: self.spec.name(),
            message: format!(
                "wrote {} on stdout before its first event: stdout carries only the replies and the sync lines; \
                 write logs and banners to stderr",
                preview(line)
            ),
        }
    }

    /// Ends the running process (killed, unless it already ended) and says how it went.
    fn stop(&mut self, why: Option<NoReply>) -> String {
        let status = match self.running.take() {
            Some(r) if why == Some(NoReply::Ended) => r.end(),
            Some(r) => r.kill(),
            None => None,
        };
        match (why, status) {
            (Some(NoReply::TimedOut), _) => {
                format!("gave no reply within {:?} and was killed{BUFFERED}", self.spec.timeout)
            }
            (_, Some(status)) => format!("ended ({status})"),
            (_, None) => "ended".to_string(),
        }
    }

    /// The command failed on the event at `at` (`how`): wait out the backoff and start a fresh one, or give up when
    /// the budget is spent.
    fn restart(&mut self, mut how: String, at: crate::position::Position, next: &str) -> Result<()> {
        loop {
            let max = self.restarts.max();
            match self.restarts.on_failure(Instant::now(), self.started, self.replied > 0) {
                Verdict::GiveUp { n } => {
                    return Err(Error::ExecGaveUp {
                        command: self.spec.name(),
                        how,
                        restarts: n,
                        window: self.restarts.window(),
                    })
                }
                Verdict::Restart { delay, n } => {
                    emit(CommandRestarted { command: &self.spec.name(), how: &how, at, next, delay, n, max });
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        heartbeat::tick();
                        std::thread::sleep(
                            until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)),
                        );
                    }
                }
            }
            match self.launch()? {
                Handshake::Done => return Ok(()),
                Handshake::Stray(line) => return Err(self.stray(&line)),
                Handshake::Stopped(why) => {
                    how = format!("{} when restarted, before its first event", self.stop(Some(why)))
                }
            }
        }
    }

    /// Sends `events` (indices into the batch, each `Waiting`), each followed by its sync line, and reads what the
    /// command wrote for each, in order. The command may stop (end or hang) on one of them: the events before it have
    /// their answer, the rest none.
    fn exchange(&mut self, events: &[usize], answers: &[Answer]) -> Result<(Vec<Framed>, Option<NoReply>)> {
        if self.running.is_none() {
            // Only a restart that gave up leaves none, and that ends the batch: start one all the same.
            if let Handshake::Stray(line) = self.launch()? {
                return Err(self.stray(&line));
            }
        }
        let first_sync = self.syncs + 1;
        let mut request = Vec::new();
        for &i in events {
            let Answer::Waiting(range) = &answers[i] else {
                unreachable!("only events waiting for their reply are sent")
            };
            request.extend_from_slice(&self.lines[range.clone()]);
            self.syncs += 1;
            request.extend_from_slice(sync_line(self.syncs).as_bytes());
            request.push(b'\n');
        }
        let Some(running) = self.running.as_mut() else { unreachable!("started above") };
        running.send(request);
        let mut framed = Vec::with_capacity(events.len());
        for k in 0..events.len() {
            // Each event has the whole timeout for its line and its sync line, however many lines it writes.
            let deadline = Instant::now() + self.spec.timeout;
            let sync = sync_line(first_sync + k as u64);
            let mut reply = None;
            let broken =
                loop {
                    let line = match running.reply(deadline, heartbeat::tick) {
                        Ok(line) => line,
                        Err(why) => return Ok((framed, Some(why))),
                    };
                    if line.first() != Some(&b'#') {
                        if reply.is_some() {
                            break Some(format!(
                                "wrote a second line for one event ({}): a command writes exactly one line per event, \
                             and its logs to stderr",
                                preview(&line)
                            ));
                        }
                        reply = Some(line);
                        continue;
                    }
                    if line.trim_ascii_end() != sync.as_bytes() {
                        break Some(format!("wrote {} where {sync:?} was due", preview(&line)));
                    }
                    match reply.take() {
                        Some(line) => {
                            framed.push(Framed::Reply(line));
                            break None;
                        }
                        None => break Some(
                            "wrote no line for the event before its sync line: every event needs its one reply line \
                             ([] to drop it), written before the sync line that follows the event"
                                .to_string(),
                        ),
                    }
                };
            if let Some(why) = broken {
                // Out of step with its input: nothing more it writes can be placed (a late reply would land on the
                // next event). Its current event is the one it broke on; those after it are sent again.
                framed.push(Framed::Broken(why));
                return Ok((framed, None));
            }
        }
        Ok((framed, None))
    }
}

impl Transform for Exec {
    fn run(&mut self, batch: &[Record<'_>], out: &mut Outputs) -> Result<()> {
        self.lines.clear();
        let mut answers: Vec<Answer> = batch
            .iter()
            .map(|r| {
                let start = self.lines.len();
                match reply::request(r.payload.map(|p| &p[..]), &mut self.lines) {
                    Ok(()) => Answer::Waiting(start..self.lines.len()),
                    Err(why) => Answer::Refused(why),
                }
            })
            .collect();
        // Events a process already failed on once: the next failure is their last.
        let mut failed = vec![false; batch.len()];
        // The events still to send, in order: all at first, then those after (and at) where a process failed.
        let mut part: Vec<usize> = (0..batch.len()).filter(|&i| matches!(answers[i], Answer::Waiting(_))).collect();
        while !part.is_empty() {
            let (framed, stopped) = self.exchange(&part, &answers)?;
            // The events it was not asked about, or whose answers are lost with the process.
            let mut rest: Vec<usize> = part[framed.len()..].to_vec();
            // The exchange ends at the first frame that is not one line: only the last can be broken.
            let mut broken = None;
            for (&i, f) in part.iter().zip(framed) {
                match f {
                    Framed::Reply(line) => answers[i] = Answer::Replied(line),
                    Framed::Broken(why) => broken = Some((i, why)),
                }
            }
            // The event the process failed on, how, and what the event is if it failed a process before.
            let failure = match (stopped, broken) {
                (Some(why), _) => {
                    let what = match why {
                        NoReply::Ended => "ended",
                        NoReply::TimedOut => "hung",
                    };
                    let poison = format!("poison event: the --exec command {what} on it twice, in two processes");
                    Some((rest.remove(0), self.stop(Some(why)), Rejection::Poison(poison)))
                }
                (None, Some((i, why))) => {
                    self.stop(None);
                    let protocol =
                        format!("the --exec command broke the protocol on this event twice, in two processes: {why}");
                    Some((i, why, Rejection::Protocol(protocol)))
                }
                (None, None) => None,
            };
            if let Some((on, how, rejection)) = failure {
                if failed[on] {
                    answers[on] = Answer::Failed(rejection);
                    let next = "it failed on this event twice, in two processes: the event goes to the dead-letter \
                                destination";
                    self.restart(how, batch[on].at, next)?;
                } else {
                    failed[on] = true;
                    rest.insert(0, on);
                    self.restart(how, batch[on].at, "the event is tried once more in a fresh process")?;
                }
            }
            part = rest;
        }
        for answer in answers {
            match answer {
                Answer::Replied(line) => match reply::outputs(&line, out) {
                    Ok(()) => out.done(),
                    Err(why) => out.reject(why),
                },
                Answer::Refused(why) | Answer::Failed(why) => out.reject(why),
                Answer::Waiting(_) => unreachable!("every sent event was answered or failed"),
            }
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Some(running) = self.running.take() {
            match running.finish(FINISH_GRACE) {
                Some(status) if status.success() => log::debug!("{} exited ({status})", self.spec.name()),
                Some(status) => log::warn!("{} ended with {status} when its input closed", self.spec.name()),
                None => log::warn!("{} could not be reaped", self.spec.name()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::position::Position;
    use serde_bytes::Bytes;

    /// A Python command running `body` on each event `e` (a dict), printing what `body` returns.
    fn python(body: &str, timeout: Duration, max_restarts: u32) -> ExecSpec {
        let script = format!(
            "import json, sys, os, time\nfor line in sys.stdin:\n    if line.startswith('#'):\n        \
             print(line, end='', flush=True)\n        continue\n    e = json.loads(line)\n{}\n",
            body.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
        );
        ExecSpec {
            argv: vec!["python3".into(), "-c".into(), script],
            line: String::new(),
            timeout,
            max_restarts,
            restart_window: Duration::from_secs(60),
        }
    }

    fn events(payloads: &[&'static [u8]]) -> Vec<Record<'static>> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Record {
                at: Position::new(0, i as i64),
                timestamp: None,
                key: None,
                headers: Vec::new(),
                payload: Some(Bytes::new(p)),
                dead_letter: None,
                topic: None,
                outputs: 1,
            })
            .collect()
    }

    /// Each event's outputs as text, or its rejection.
    fn run(exec: &mut Exec, batch: &[Record<'_>]) -> Result<Vec<std::result::Result<Vec<String>, Rejection>>> {
        let mut out = Outputs::default();
        exec.run(batch, &mut out)?;
        Ok(out
            .verdicts()
            .iter()
            .map(|v| match v {
                Verdict::Outputs(r) => {
                    Ok(r.clone().map(|i| String::from_utf8_lossy(out.output(i)).into_owned()).collect())
                }
                Verdict::Rejected(why) => Err(why.clone()),
            })
            .collect())
    }

    #[test]
    fn replies_become_outputs_in_order_and_bad_input_is_not_sent() {
        let spec = python(
            "n = e['n']\nprint(json.dumps([] if n == 2 else [e, e] if n == 3 else {'n': n * 10}), flush=True)",
            Duration::from_secs(10),
            0,
        );
        let mut exec = Exec::start(&spec).unwrap();
        let got =
            run(&mut exec, &events(&[b"{\"n\":1}", b"{\"n\":2}", b"not json", b"{\"n\":3}", b"{\n\"n\":4}"])).unwrap();
        assert_eq!(got[0], Ok(vec!["{\"n\": 10}".to_string()]));
        assert_eq!(got[1], Ok(vec![]), "[] filters the event out");
        assert!(matches!(&got[2], Err(Rejection::NotJson(_))));
        assert_eq!(got[3], Ok(vec!["{\"n\": 3}".to_string(), "{\"n\": 3}".to_string()]));
        assert_eq!(got[4], Ok(vec!["{\"n\": 40}".to_string()]), "a pretty-printed event is sent as one line");
        // The same command serves the next batch.
        assert_eq!(run(&mut exec, &events(&[b"{\"n\":5}"])).unwrap()[0], Ok(vec!["{\"n\": 50}".to_string()]));
        exec.finish();
    }

    #[test]
    fn a_reply_that_is_no_event_rejects_only_its_input() {
        let spec = python("print('oops' if e['n'] == 1 else json.dumps(e), flush=True)", Duration::from_secs(10), 0);
        let mut exec = Exec::start(&spec).unwrap();
        let got = run(&mut exec, &events(&[b"{\"n\":0}", b"{\"n\":1}", b"{\"n\":2}"])).unwrap();
        assert!(got[0].is_ok() && got[2].is_ok());
        assert!(matches!(&got[1], Err(Rejection::Reply(m)) if m.contains("is not JSON")), "{:?}", got[1]);
        exec.finish();
    }

    #[test]
    fn a_crash_is_retried_once_then_the_event_is_poison_and_the_rest_go_on() {
        // Crashes on n == 1 every time; on n == 3 only in the first process it meets it (a marker file says so).
        let marker = std::env::temp_dir().join(format!("sv-exec-crash-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let spec = python(
            &format!(
                "if e['n'] == 1: os._exit(3)\nif e['n'] == 3 and not os.path.exists({m:?}):\n    open({m:?}, 'w').close()\n    os._exit(4)\nprint(json.dumps(e), flush=True)",
                m = marker.display().to_string()
            ),
            Duration::from_secs(10),
            5,
        );
        let mut exec = Exec::start(&spec).unwrap();
        let got =
            run(&mut exec, &events(&[b"{\"n\":0}", b"{\"n\":1}", b"{\"n\":2}", b"{\"n\":3}", b"{\"n\":4}"])).unwrap();
        assert_eq!(got[0], Ok(vec!["{\"n\": 0}".to_string()]));
        assert!(matches!(&got[1], Err(Rejection::Poison(m)) if m.contains("ended on it twice")), "{:?}", got[1]);
        assert_eq!(got[2], Ok(vec!["{\"n\": 2}".to_string()]));
        assert_eq!(got[3], Ok(vec!["{\"n\": 3}".to_string()]), "a crash the retry does not repeat loses nothing");
        assert_eq!(got[4], Ok(vec!["{\"n\": 4}".to_string()]));
        exec.finish();
        let _ = std::fs::remove_file(&marker);
    }

    #[test]
    fn a_hang_is_killed_after_the_timeout() {
        let spec =
            python("if e['n'] == 1: time.sleep(60)\nprint(json.dumps(e), flush=True)", Duration::from_millis(500), 5);
        let mut exec = Exec::start(&spec).unwrap();
        let started = Instant::now();
        let got = run(&mut exec, &events(&[b"{\"n\":0}", b"{\"n\":1}", b"{\"n\":2}"])).unwrap();
        assert!(matches!(&got[1], Err(Rejection::Poison(m)) if m.contains("hung on it twice")), "{:?}", got[1]);
        assert_eq!(got[2], Ok(vec!["{\"n\": 2}".to_string()]));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        exec.finish();
    }

    #[test]
    fn a_command_that_always_fails_spends_the_budget_and_the_worker_gives_up() {
        let spec = python("os._exit(1)", Duration::from_secs(10), 2);
        let mut exec = Exec::start(&spec).unwrap();
        let e = run(&mut exec, &events(&[b"{\"n\":0}", b"{\"n\":1}", b"{\"n\":2}"])).unwrap_err();
        assert_eq!(e.exit(), crate::error::Exit::GaveUp);
        assert!(e.to_string().starts_with("giving up on the --exec command python3: it ended"), "{e}");
    }

    #[test]
    fn replies_that_do_not_match_their_events_are_never_shifted() {
        // n == 1 gets two lines, n == 3 none: each is dead-lettered with the reason, and every other event gets its
        // own reply, although the batch as a whole had the right number of lines.
        let spec = python(
            "if e['n'] == 1: print(json.dumps({'extra': 1}), flush=True)\nif e['n'] != 3: print(json.dumps(e), flush=True)",
            Duration::from_secs(10),
            5,
        );
        let mut exec = Exec::start(&spec).unwrap();
        let got =
            run(&mut exec, &events(&[b"{\"n\":0}", b"{\"n\":1}", b"{\"n\":2}", b"{\"n\":3}", b"{\"n\":4}"])).unwrap();
        assert_eq!(got[0], Ok(vec!["{\"n\": 0}".to_string()]));
        assert!(
            matches!(&got[1], Err(Rejection::Protocol(m)) if m.contains("wrote a second line for one event")),
            "{:?}",
            got[1]
        );
        assert_eq!(got[2], Ok(vec!["{\"n\": 2}".to_string()]));
        assert!(
            matches!(&got[3], Err(Rejection::Protocol(m)) if m.contains("wrote no line for the event")),
            "{:?}",
            got[3]
        );
        assert_eq!(got[4], Ok(vec!["{\"n\": 4}".to_string()]));
        // The command goes on serving the next batch.
        assert_eq!(run(&mut exec, &events(&[b"{\"n\":5}"])).unwrap()[0], Ok(vec!["{\"n\": 5}".to_string()]));
        exec.finish();
    }

    #[test]
    fn a_reply_written_in_pieces_is_one_reply() {
        let spec = python(
            "sys.stdout.write('{\"n\": '); sys.stdout.flush(); time.sleep(0.05)\nprint(e['n'], end='}\\n', flush=True)",
            Duration::from_secs(10),
            0,
        );
        let mut exec = Exec::start(&spec).unwrap();
        let got = run(&mut exec, &events(&[b"{\"n\":7}", b"{\"n\":8}"])).unwrap();
        assert_eq!(got, [Ok(vec!["{\"n\": 7}".to_string()]), Ok(vec!["{\"n\": 8}".to_string()])]);
        exec.finish();
    }

    #[test]
    fn a_command_that_does_not_speak_the_protocol_is_refused_at_start() {
        let banner = ExecSpec {
            argv: vec!["sh".into(), "-c".into(), "echo 'starting v1.2'; cat".into()],
            line: String::new(),
            timeout: Duration::from_secs(5),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
        };
        let e = Exec::start(&banner).err().expect("a banner on stdout is refused");
        assert_eq!(e.exit(), crate::error::Exit::Config);
        assert!(e.to_string().contains("wrote \"starting v1.2\" on stdout before its first event"), "{e}");
        // Reads events, but chokes on the sync line.
        let naive = ExecSpec {
            argv: vec![
                "python3".into(),
                "-c".into(),
                "import json, sys\nfor line in sys.stdin: print(json.dumps(json.loads(line)), flush=True)".into(),
            ],
            ..banner
        };
        let e = Exec::start(&naive).err().expect("a command that cannot take the sync line is refused");
        assert_eq!(e.exit(), crate::error::Exit::Config);
        assert!(e.to_string().contains("before writing back the sync line \"#sync 0\""), "{e}");
    }

    #[test]
    fn a_reply_written_after_its_sync_line_is_never_taken_for_the_next_event() {
        // Event 1's reply comes late, after its sync line, as an asynchronous command might write it.
        let script = "import json, sys\npending = None\nfor line in sys.stdin:\n    if line.startswith('#'):\n        \
                      print(line, end='', flush=True)\n        if pending:\n            print(pending, flush=True)\n\
                      \x20           pending = None\n        continue\n    e = json.loads(line)\n    if e['n'] == 1:\n\
                      \x20       pending = json.dumps(e)\n        continue\n    print(json.dumps(e), flush=True)\n";
        let spec = ExecSpec {
            argv: vec!["python3".into(), "-c".into(), script.into()],
            line: String::new(),
            timeout: Duration::from_secs(10),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
        };
        let mut exec = Exec::start(&spec).unwrap();
        let got = run(&mut exec, &events(&[b"{\"n\":0}", b"{\"n\":1}", b"{\"n\":2}", b"{\"n\":3}"])).unwrap();
        assert_eq!(got[0], Ok(vec!["{\"n\": 0}".to_string()]));
        assert!(matches!(&got[1], Err(Rejection::Protocol(m)) if m.contains("no line for the event")), "{:?}", got[1]);
        assert_eq!(got[2], Ok(vec!["{\"n\": 2}".to_string()]), "not event 1's late reply");
        assert_eq!(got[3], Ok(vec!["{\"n\": 3}".to_string()]));
        exec.finish();
    }
}
