//! `--exec`: the user's own program, in any language, started once per worker and kept for the worker's life.
//!
//! The protocol: one event per line on the command's stdin (compact JSON), exactly one line back per event on its
//! stdout (an object is the output event; an array is zero or more of them), its stderr to our log. A worker has at
//! most one batch in flight per command.
//!
//! A command that ends or hangs is restarted (after a backoff, within `--max-restarts` per `--restart-window`), and the
//! event it was working on is tried once more in the fresh process. An event that ends or hangs two processes in a
//! row is a poison event: it goes to the dead-letter destination, so that one bad event never loops forever. A
//! command that keeps failing spends the restart budget, and the worker gives up (exit 6).

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
use std::time::{Duration, Instant};

/// How long a command may take to exit once its stdin is closed at the end of the worker.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// A worker's command, and its restarts.
pub struct Exec {
    spec: ExecSpec,
    running: Option<Running>,
    restarts: Window,
    /// Request lines of the batch, and where each event's line is in them.
    lines: Vec<u8>,
}

/// What became of one event of the batch before its outputs are read.
enum Answer {
    /// Not sent: it is no JSON (or no payload).
    Refused(Rejection),
    /// Sent; its line is at this range of the request buffer.
    Waiting(std::ops::Range<usize>),
    Replied(Vec<u8>),
    Poison(Rejection),
}

impl Exec {
    /// Starts the command. A program that cannot be started is a configuration error.
    pub fn start(spec: &ExecSpec) -> Result<Exec> {
        let running = Running::start(&spec.argv, &spec.name())?;
        log::debug!("started {} (pid {})", spec.name(), running.pid());
        Ok(Exec {
            restarts: Window::new(spec.max_restarts, spec.restart_window),
            spec: spec.clone(),
            running: Some(running),
            lines: Vec::new(),
        })
    }

    /// The command ended or hung on an event: reap or kill it, and wait out the backoff before the next one, or
    /// give up when the budget is spent.
    fn failed(&mut self, why: NoReply, at: crate::position::Position, retried: bool) -> Result<()> {
        let status = match self.running.take() {
            Some(r) if why == NoReply::TimedOut => r.kill(),
            Some(r) => r.end(),
            None => None,
        };
        let how = match (why, status) {
            (NoReply::TimedOut, _) => format!("gave no reply within {:?} and was killed", self.spec.timeout),
            (NoReply::Ended, Some(status)) => format!("ended ({status})"),
            (NoReply::Ended, None) => "ended".to_string(),
        };
        let (max, window) = (self.restarts.max(), self.restarts.window());
        match self.restarts.on_failure(Instant::now()) {
            Verdict::GiveUp { n } => Err(Error::ExecGaveUp { command: self.spec.name(), how, restarts: n, window }),
            Verdict::Restart { delay, n } => {
                emit(CommandRestarted { command: &self.spec.name(), how: &how, at, retried, delay, n, max, window });
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    heartbeat::tick();
                    std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
                }
                let running = Running::start(&self.spec.argv, &self.spec.name())?;
                self.running = Some(running);
                Ok(())
            }
        }
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
        let sent: Vec<usize> = (0..batch.len()).filter(|&i| matches!(answers[i], Answer::Waiting(_))).collect();
        let mut next = 0;
        // The event that already ended or hung one process.
        let mut failed_once: Option<usize> = None;
        while next < sent.len() {
            let running = match &mut self.running {
                Some(r) => r,
                None => self.running.insert(Running::start(&self.spec.argv, &self.spec.name())?),
            };
            let from = match &answers[sent[next]] {
                Answer::Waiting(range) => range.start,
                _ => unreachable!("only waiting events are sent"),
            };
            running.send(self.lines[from..].to_vec());
            let mut failure = None;
            for (k, &i) in sent.iter().enumerate().skip(next) {
                let deadline = Instant::now() + self.spec.timeout;
                match running.reply(deadline, heartbeat::tick) {
                    Ok(line) => answers[i] = Answer::Replied(line),
                    Err(why) => {
                        failure = Some((k, why));
                        break;
                    }
                }
            }
            let Some((k, why)) = failure else { break };
            let i = sent[k];
            let retried = failed_once == Some(i);
            self.failed(why, batch[i].at, retried)?;
            if retried {
                let how = match why {
                    NoReply::Ended => "ended",
                    NoReply::TimedOut => "hung",
                };
                answers[i] = Answer::Poison(Rejection::Poison(format!(
                    "poison event: the --exec command {how} on it twice, in two processes"
                )));
                failed_once = None;
                next = k + 1;
            } else {
                failed_once = Some(i);
                next = k;
            }
        }
        for answer in answers {
            match answer {
                Answer::Replied(line) => match reply::outputs(&line, out) {
                    Ok(()) => out.done(),
                    Err(why) => out.reject(why),
                },
                Answer::Refused(why) | Answer::Poison(why) => out.reject(why),
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
            "import json, sys, os, time\nfor line in sys.stdin:\n    e = json.loads(line)\n{}\n",
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
}
