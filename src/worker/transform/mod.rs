//! The transforms a worker runs on each event: [`md5::Md5`] (the default, which adds `"hash"`), [`jq::Jq`] (a jq
//! filter, compiled once per worker) and [`exec::Exec`] (the user's own program, one per worker, speaking one JSON line
//! per event).
//!
//! An input event becomes zero, one or many output events, or a rejection that sends it unchanged to the dead-letter
//! destination. A transform sees a whole batch at once, so that one in another process can have the batch in flight.

pub mod exec;
pub mod expr;
pub mod hash;
pub mod jq;
pub mod json_out;
pub mod md5;

use crate::channel::batch::Record;
use crate::config::{Config, SourceSpec, TransformSpec};
use crate::error::Result;
use std::fmt;
use std::ops::Range;

/// What a worker does to each event of a batch.
pub trait Transform {
    /// Transforms `batch` in order: for each event, either its outputs then [`Outputs::done`], or
    /// [`Outputs::reject`]. An error is the worker's own failure (the transform cannot go on), not an event's.
    fn run(&mut self, batch: &[Record<'_>], out: &mut Outputs) -> Result<()>;

    /// The worker is stopping: release what the transform holds (a command is told to finish, and waited for).
    fn finish(&mut self) {}
}

/// A transform that looks at one event at a time.
pub trait PerEvent {
    /// Pushes the event's outputs to `out`, or says why it cannot be transformed.
    fn apply(&mut self, record: &Record<'_>, out: &mut Outputs) -> std::result::Result<(), Rejection>;
}

impl<T: PerEvent> Transform for T {
    fn run(&mut self, batch: &[Record<'_>], out: &mut Outputs) -> Result<()> {
        for record in batch {
            match self.apply(record, out) {
                Ok(()) => out.done(),
                Err(why) => out.reject(why),
            }
        }
        Ok(())
    }
}

/// The transform the settings chose, ready to run in this worker.
pub fn build(cfg: &Config) -> Result<Box<dyn Transform>> {
    Ok(match &cfg.transform {
        TransformSpec::Md5 => Box::new(md5::Md5),
        TransformSpec::Jq(program) => Box::new(jq::Jq::compile(program, meta_source(cfg))?),
        TransformSpec::Exec(command) if cfg.generation > 1 => Box::new(exec::Exec::start_again(command)?),
        TransformSpec::Exec(command) => Box::new(exec::Exec::start(command)?),
    })
}

/// Where the events come from, for jq's `$meta`.
pub fn meta_source(cfg: &Config) -> jq::MetaSource {
    match cfg.source() {
        SourceSpec::Table(url) => {
            jq::MetaSource::Table(url.table.as_ref().map(ToString::to_string).unwrap_or_default())
        }
        SourceSpec::Topic(topic) => jq::MetaSource::Topic(topic.to_string()),
    }
}

/// Checks, before anything is forked or consumed, what can be checked of the transform: a filter must compile (a
/// command is looked up when the settings are read, and started by each worker before it says it is ready).
pub fn check(cfg: &Config) -> Result<()> {
    if let TransformSpec::Jq(program) = &cfg.transform {
        jq::Jq::compile(program, meta_source(cfg))?;
    }
    if let Some(code) = &cfg.output_key {
        expr::Expr::compile(code, "--output-key")?;
    }
    if let Some(code) = &cfg.route {
        expr::Expr::compile(code, "--route")?;
    }
    Ok(())
}

/// The outputs of one batch: every output event's bytes back to back, and what became of each input event.
#[derive(Debug, Default)]
pub struct Outputs {
    bytes: Vec<u8>,
    /// Each output event's bytes.
    spans: Vec<Range<usize>>,
    /// What became of each input event, in order.
    verdicts: Vec<Verdict>,
    /// Outputs pushed for the event not yet done.
    pending: usize,
}

/// What became of one input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It became these output events (none: it was filtered out).
    Outputs(Range<usize>),
    /// It goes unchanged to the dead-letter destination, for this reason.
    Rejected(Rejection),
}

impl Outputs {
    /// Empties the outputs for the next batch, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.verdicts.clear();
        self.pending = 0;
    }

    /// One output event of the current input.
    pub fn push(&mut self, bytes: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.spans.push(start..self.bytes.len());
        self.pending += 1;
    }

    /// One output event of the current input, written in place by `write` (which only appends); nothing is kept if
    /// it fails.
    pub fn push_with<E>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>) -> Result<(), E> {
        let start = self.bytes.len();
        match write(&mut self.bytes) {
            Ok(()) => {
                self.spans.push(start..self.bytes.len());
                self.pending += 1;
                Ok(())
            }
            Err(e) => {
                self.bytes.truncate(start);
                Err(e)
            }
        }
    }

    /// The current input is done: it became the outputs pushed since the last input.
    pub fn done(&mut self) {
        let end = self.spans.len();
        self.verdicts.push(Verdict::Outputs(end - self.pending..end));
        self.pending = 0;
    }

    /// The current input is rejected; outputs pushed for it are dropped.
    pub fn reject(&mut self, why: Rejection) {
        let keep = self.spans.len() - self.pending;
        if let Some(first) = self.spans.get(keep) {
            self.bytes.truncate(first.start);
        }
        self.spans.truncate(keep);
        self.pending = 0;
        self.verdicts.push(Verdict::Rejected(why));
    }

    /// One more input, become what `verdict` (one of `from`'s) says: its outputs copied from `from`, or its rejection.
    pub fn copy(&mut self, from: &Outputs, verdict: &Verdict) {
        match verdict {
            Verdict::Outputs(range) => {
                for i in range.clone() {
                    self.push(from.output(i));
                }
                self.done();
            }
            Verdict::Rejected(why) => self.reject(why.clone()),
        }
    }

    /// What became of each input so far, in order.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    /// The bytes of output event `i`.
    pub fn output(&self, i: usize) -> &[u8] {
        &self.bytes[self.spans[i].clone()]
    }
}

/// Why an event cannot be transformed; it goes to the dead-letter destination with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A tombstone: the event has no payload at all.
    NullPayload,
    EmptyPayload,
    /// Not valid JSON, or valid JSON that is not an object.
    NotAnObject(String),
    /// Not valid JSON (for the transforms that take any JSON value).
    NotJson(String),
    /// The jq filter failed on the event.
    Filter(String),
    /// The `--exec` command's reply to the event was not an event.
    Reply(String),
    /// The `--exec` command ended or hung on the event, twice, in two processes: it is not tried again.
    Poison(String),
    /// The `--exec` command's replies to the event broke the protocol (not one line for it), in a batch and then
    /// alone in a fresh process.
    Protocol(String),
}

impl Rejection {
    /// A short, stable reason, used in the dead-letter header.
    pub fn as_str(&self) -> &str {
        match self {
            Rejection::NullPayload => "null payload",
            Rejection::EmptyPayload => "empty payload",
            Rejection::NotAnObject(why)
            | Rejection::NotJson(why)
            | Rejection::Filter(why)
            | Rejection::Reply(why)
            | Rejection::Poison(why)
            | Rejection::Protocol(why) => why,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Says why `input` is not JSON: "not UTF-8 text" where that is so, rather than serde_json's "expected value at line 1
/// column 1". Called only on failure, so valid events pay nothing.
pub fn not_json(input: &[u8], e: &serde_json::Error) -> String {
    match std::str::from_utf8(input) {
        Err(bad) => format!("not UTF-8 text (invalid byte at offset {})", bad.valid_up_to()),
        Ok(_) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_input_becomes_its_own_outputs_or_a_rejection() {
        let mut out = Outputs::default();
        out.push(b"a1");
        out.done();
        out.done();
        out.push(b"c1");
        out.push_with(|b| {
            b.extend_from_slice(b"c2");
            Ok::<(), ()>(())
        })
        .unwrap();
        out.done();
        out.push(b"d1");
        assert!(out
            .push_with(|b| {
                b.extend_from_slice(b"partial");
                Err(())
            })
            .is_err());
        out.reject(Rejection::Filter("boom".into()));
        out.push(b"e1");
        out.done();
        let v = out.verdicts();
        assert_eq!(v[0], Verdict::Outputs(0..1));
        assert_eq!(v[1], Verdict::Outputs(1..1), "filtered out");
        assert_eq!(v[2], Verdict::Outputs(1..3), "fanned out");
        assert_eq!(v[3], Verdict::Rejected(Rejection::Filter("boom".into())));
        assert_eq!(v[4], Verdict::Outputs(3..4));
        let all: Vec<&[u8]> = (0..4).map(|i| out.output(i)).collect();
        assert_eq!(all, [&b"a1"[..], b"c1", b"c2", b"e1"], "a rejected input's outputs are dropped");
        out.clear();
        assert!(out.verdicts().is_empty());
    }

    #[test]
    fn binary_input_is_told_apart_from_bad_json() {
        let e = serde_json::from_slice::<serde_json::Value>(b"\xff").unwrap_err();
        assert_eq!(not_json(b"\xff", &e), "not UTF-8 text (invalid byte at offset 0)");
        let e = serde_json::from_slice::<serde_json::Value>(b"{x").unwrap_err();
        assert!(not_json(b"{x", &e).contains("line 1 column 2"));
    }
}
