//! Workers: the N processes between the source and the sink that run the [transform] on every event: the md5
//! hashers by default, a jq filter (`--jq`) or the user's own command (`--exec`).
//!
//! A worker keeps the order of its input: every event of a source lane comes through the same worker, so that lane's
//! order survives, and an event's outputs leave in the order the transform gave them. It holds no state between
//! batches but the transform's own (a compiled filter, a running command). An event the transform rejects travels on
//! unchanged, marked for the dead-letter destination: bad input never stops a worker.

pub mod lookup;
pub mod route;
pub mod transform;

use crate::channel::batch::{BatchWriter, Frame, Record};
use crate::channel::ipc::{BatchReceiver, BatchSender};
use crate::config::Config;
use crate::error::{Exit, Result};
use crate::stage::{Hooks, Stage};
use crate::telemetry::events::{emit, BatchReceived, Rejected, RouteDropped, Transformed};
use crate::telemetry::heartbeat;
use serde_bytes::Bytes;
use std::time::{Duration, Instant};
use transform::{Outputs, Transform, Verdict};

/// The channel ends a worker owns: batches in from the source, batches out to each sink.
pub struct WorkerEnds {
    pub input: BatchReceiver,
    pub outputs: Vec<BatchSender>,
}

/// A worker running the transform the settings chose.
pub struct Worker;

impl Stage for Worker {
    type Ends = WorkerEnds;

    fn run(cfg: &Config, ends: WorkerEnds, hooks: &Hooks) -> Result<Exit> {
        // Built after the fork: each worker has its own compiled filter or command, and its own lookups.
        lookup::install(cfg)?;
        let mut transform = transform::build(cfg)?;
        if lookup::installed() {
            transform = Box::new(lookup::Fetching(transform));
        }
        let output_key = OutputKey::compile(cfg)?;
        let router = Some(route::Router::compile(cfg)?);
        hooks.ready();
        let names =
            Names { table_source: cfg.source().is_table(), dead_letters: cfg.dead_letter_name(), output_key, router };
        let worked = work(ends, transform.as_mut(), &names);
        transform.finish();
        worked.map(|()| Exit::Clean)
    }
}

/// How long a worker works on one slice of a batch before it sends what it made: a slow transform (a command taking
/// a second an event) delivers as it goes, and a drain delivers what was finished rather than nothing. A slice starts
/// at one event and at most doubles from one to the next, so neither the first slice nor one fast slice (events
/// refused before the command saw them) can make a slow transform sit on a whole batch.
const SLICE: Duration = Duration::from_millis(200);

/// How a worker's log lines name an event's place and where dead letters go, in the words of this pipeline's ends;
/// and `--output-key`, if given.
#[derive(Default)]
pub struct Names {
    pub table_source: bool,
    pub dead_letters: String,
    pub output_key: Option<OutputKey>,
    /// Which sinks each output goes to; `None`: the one sink.
    pub router: Option<route::Router>,
}

impl Names {
    /// Says that `record` (or one of its outputs) goes to the dead letters, and why, in this pipeline's words.
    fn rejected(&self, record: &Record<'_>, why: &str) {
        let at = crate::position::Place { at: record.at, table: self.table_source };
        emit(Rejected { at, reason: why, to: &self.dead_letters });
    }
}

/// `--output-key`: each output's message key, from a jq expression over the output event.
pub struct OutputKey {
    expr: transform::expr::Expr,
    source: transform::jq::MetaSource,
    /// The expression reads `$meta`.
    meta: bool,
}

impl OutputKey {
    pub fn compile(cfg: &Config) -> Result<Option<OutputKey>> {
        let Some(code) = &cfg.output_key else { return Ok(None) };
        let expr = transform::expr::Expr::compile(code, "--output-key")?;
        let meta = transform::expr::Expr::wants_meta(code);
        Ok(Some(OutputKey { expr, source: transform::meta_source(cfg), meta }))
    }

    /// The key of one output, given it parsed (`event`) and its input's `$meta` (null where the expression does not
    /// read it), or why there is none to be had.
    fn of(&self, event: &jaq_json::Val, meta: &jaq_json::Val) -> std::result::Result<Option<Vec<u8>>, String> {
        match self.expr.first(event, meta, &jaq_json::Val::Null) {
            Ok(None | Some(jaq_json::Val::Null)) => Ok(None),
            Ok(Some(jaq_json::Val::Str(s))) => Ok(Some(s.as_bytes().to_vec())),
            Ok(Some(other)) => Ok(Some(other.to_string().into_bytes())),
            Err(why) => Err(format!("--output-key: {why}")),
        }
    }
}

/// What becomes of one output: the sinks it goes to with its message key, or why it is a dead letter (which goes to
/// the first sink's dead-letter destination).
enum Fate {
    To(route::Sinks, Option<Vec<u8>>),
    Dead(String),
}

/// Runs until the source's poison pill (or its channel closing), then forwards the pill to every sink.
pub fn work(ends: WorkerEnds, transform: &mut dyn Transform, names: &Names) -> Result<()> {
    let mut outs: Vec<BatchWriter> =
        ends.outputs.iter().map(|_| BatchWriter::new(usize::MAX, usize::MAX, Duration::ZERO)).collect();
    let mut outputs = Outputs::default();
    let mut fates: Vec<Fate> = Vec::new();
    let trivial = names.router.as_ref().is_none_or(route::Router::trivial) && names.output_key.is_none();
    let mut capacity = 0;
    // Events in the last slice, and how long the transform took per event there.
    let mut slice_len = 0usize;
    let mut per_event = Duration::ZERO;
    let mut exhausted = false;
    while let Some(message) = heartbeat::waiting_on_peer(|| ends.input.recv())? {
        let records = match Frame::parse(&message)? {
            Frame::Records(records) => records,
            // In order with the records around it: the sink's operator reads them.
            Frame::Lanes(_) => {
                for output in &ends.outputs {
                    output.send_bytes(&message)?;
                }
                continue;
            }
            Frame::End => {
                exhausted = true;
                break;
            }
            Frame::Pill => break,
        };
        // The records borrow from this message, so the vector cannot outlive it.
        let mut inputs: Vec<Record<'_>> = Vec::with_capacity(capacity);
        for record in records {
            inputs.push(record?);
        }
        emit(BatchReceived { events: inputs.len() as u64 });
        capacity = capacity.max(inputs.len());
        let mut rest = &inputs[..];
        while !rest.is_empty() {
            let in_time: usize =
                (SLICE.as_nanos() / per_event.as_nanos().max(1)).max(1).try_into().unwrap_or(usize::MAX);
            slice_len = slice_len.saturating_mul(2).clamp(1, in_time);
            let (slice, after) = rest.split_at(slice_len.min(rest.len()));
            rest = after;
            outputs.clear();
            let started = Instant::now();
            transform.run(slice, &mut outputs)?;
            let took = started.elapsed();
            per_event = took / slice.len() as u32;
            let mut done = Transformed { took, ..Transformed::default() };
            let mut dropped = 0;
            for (record, verdict) in slice.iter().zip(outputs.verdicts()) {
                match verdict {
                    Verdict::Outputs(range) if trivial => {
                        let n = range.len();
                        done.count(n);
                        if n == 0 {
                            // Nothing to write, but its position must still reach the sink to be acknowledged.
                            outs[0].push(&bare(record))?;
                        }
                        for i in range.clone() {
                            let payload = Some(Bytes::new(outputs.output(i)));
                            outs[0].push(&Record { payload, outputs: n as u32, ..record.clone() })?;
                        }
                    }
                    Verdict::Outputs(range) => {
                        done.count(range.len());
                        fates.clear();
                        for i in range.clone() {
                            fates.push(fate(names, outputs.output(i), record));
                        }
                        dropped += fates.iter().filter(|f| matches!(f, Fate::To(0, _))).count() as u64;
                        let outputs = range.clone().map(|i| outputs.output(i));
                        push_routed(&mut outs, record, outputs.zip(&fates), names)?;
                    }
                    Verdict::Rejected(why) => {
                        names.rejected(record, why.as_str());
                        outs[0].push(&Record { dead_letter: Some(why.as_str()), outputs: 1, ..record.clone() })?;
                        for out in &mut outs[1..] {
                            out.push(&bare(record))?;
                        }
                    }
                }
            }
            emit(done);
            if dropped > 0 {
                emit(RouteDropped { outputs: dropped });
            }
            for (out, to) in outs.iter_mut().zip(&ends.outputs) {
                to.send(out)?;
            }
        }
    }
    for output in &ends.outputs {
        match exhausted {
            true => output.send_end()?,
            false => output.send_pill()?,
        }
    }
    log::debug!("done: the source sent its poison pill");
    Ok(())
}

/// A record that carries only `input`'s position, to be acknowledged: it has no output for this sink.
fn bare<'a>(input: &Record<'a>) -> Record<'a> {
    Record { payload: None, headers: Vec::new(), key: None, outputs: 0, dead_letter: None, ..input.clone() }
}

/// Where one output goes, and with which key.
fn fate(names: &Names, output: &[u8], input: &Record<'_>) -> Fate {
    use jaq_json::Val;
    let routed = names.router.as_ref().filter(|r| r.reads().is_some());
    let (event, meta) = match (names.output_key.as_ref(), routed) {
        // Nothing reads the output: it goes to every sink, with its input's key.
        (None, None) => {
            return Fate::To(names.router.as_ref().map_or(1, route::Router::all), input.key.map(|k| k.to_vec()))
        }
        // The output parsed, and its input's $meta built, once for both expressions (and $meta only if one reads it).
        (keyed, routed) => {
            let flag = if keyed.is_some() { "--output-key" } else { "--route" };
            let event = match transform::jq::parse(output) {
                Ok(event) => event,
                Err(e) => return Fate::Dead(format!("{flag}: {}", e.as_str())),
            };
            let source = keyed.map(|k| &k.source).or(routed.map(route::Router::source));
            let wants = keyed.is_some_and(|k| k.meta) || routed.is_some_and(|r| r.reads() == Some(true));
            let meta = match source {
                Some(source) if wants => transform::jq::meta(source, input),
                _ => Val::Null,
            };
            (event, meta)
        }
    };
    let key = match &names.output_key {
        None => input.key.map(|k| k.to_vec()),
        Some(keyed) => match keyed.of(&event, &meta) {
            Ok(key) => key,
            Err(why) => return Fate::Dead(why),
        },
    };
    match names.router.as_ref().map_or(Ok(1), |r| r.route(&event, &meta)) {
        Ok(sinks) => Fate::To(sinks, key),
        Err(why) => Fate::Dead(why),
    }
}

/// Writes one input's outputs to the sinks their fates name, each sink told how many of them it gets (so it
/// acknowledges the input once it has them all); a sink that gets none gets the input's bare position.
fn push_routed<'a, 'o>(
    outs: &mut [BatchWriter],
    input: &Record<'a>,
    outputs: impl Iterator<Item = (&'o [u8], &'o Fate)> + Clone,
    names: &Names,
) -> Result<()> {
    for (sink, out) in outs.iter_mut().enumerate() {
        let bit = 1 << sink;
        let mine = |f: &Fate| match f {
            Fate::To(sinks, _) => sinks & bit != 0,
            Fate::Dead(_) => sink == 0,
        };
        let n = outputs.clone().filter(|(_, f)| mine(f)).count() as u32;
        if n == 0 {
            out.push(&bare(input))?;
            continue;
        }
        for (payload, f) in outputs.clone().filter(|(_, f)| mine(f)) {
            let payload = Some(Bytes::new(payload));
            match f {
                Fate::To(_, key) => {
                    let key = key.as_deref().map(Bytes::new);
                    out.push(&Record { payload, key, outputs: n, ..input.clone() })?;
                }
                // This output is a dead letter; the input's other outputs go on.
                Fate::Dead(why) => {
                    names.rejected(input, why);
                    out.push(&Record { payload, dead_letter: Some(why), outputs: n, ..input.clone() })?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::transform::md5::{self, Md5};
    use super::transform::{PerEvent, Rejection};
    use super::*;
    use crate::channel::ipc::batch_channel;
    use crate::position::Position;

    fn worker<T: Transform + Send + 'static>(
        mut t: T,
    ) -> (BatchSender, BatchReceiver, std::thread::JoinHandle<Result<()>>) {
        let (to_worker, worker_in) = batch_channel().unwrap();
        let (worker_out, from_worker) = batch_channel().unwrap();
        let handle = std::thread::spawn(move || {
            work(WorkerEnds { input: worker_in, outputs: vec![worker_out] }, &mut t, &Names::default())
        });
        (to_worker, from_worker, handle)
    }

    fn send(to: &BatchSender, payloads: &[Option<&[u8]>]) {
        let mut batch = BatchWriter::new(100, 1 << 20, Duration::ZERO);
        for (i, p) in payloads.iter().enumerate() {
            let r = Record {
                at: Position::new(2, i as i64),
                timestamp: None,
                key: Some(Bytes::new(b"key")),
                headers: vec![("trace", Some(Bytes::new(b"t1")))],
                payload: p.map(Bytes::new),
                dead_letter: None,
                topic: None,
                outputs: 1,
            };
            batch.push(&r).unwrap();
        }
        to.send(&mut batch).unwrap();
    }

    /// Every message the worker sent up to its pill (a batch may leave in several slices), and whether a pill came.
    fn messages(from: &BatchReceiver) -> (Vec<Vec<u8>>, bool) {
        let mut out = Vec::new();
        while let Some(m) = from.recv().unwrap() {
            if Frame::parse(&m).unwrap().is_last() {
                return (out, true);
            }
            out.push(m);
        }
        (out, false)
    }

    fn records(messages: &[Vec<u8>]) -> Vec<Record<'_>> {
        let mut all = Vec::new();
        for m in messages {
            let Frame::Records(rs) = Frame::parse(m).unwrap() else { panic!("expected records") };
            all.extend(rs.map(|r| r.unwrap()));
        }
        all
    }

    #[test]
    fn a_hasher_transforms_in_order_routes_bad_input_and_forwards_the_pill() {
        let (to_hasher, from_hasher, handle) = worker(Md5);
        send(&to_hasher, &[Some(b"{\"a\":1}"), Some(b"[1]"), None, Some(b"{}")]);
        to_hasher.send_pill().unwrap();

        let (msgs, pill) = messages(&from_hasher);
        assert!(pill, "the pill is forwarded");
        let rs = records(&msgs);
        assert_eq!(rs.iter().map(|r| r.at.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let h = String::from_utf8(md5::md5_hex(b"{\"a\":1}").to_vec()).unwrap();
        assert_eq!(&rs[0].payload.unwrap()[..], format!("{{\"a\":1,\"hash\":\"{h}\"}}").as_bytes());
        assert_eq!(rs[0].dead_letter, None);
        assert!(rs[1].dead_letter.is_some() && &rs[1].payload.unwrap()[..] == b"[1]", "bad input goes unchanged");
        assert_eq!(rs[2].dead_letter, Some("null payload"));
        assert!(rs.iter().all(|r| r.key == Some(Bytes::new(b"key")) && r.headers.len() == 1));
        let (hashed, dead) = rs.iter().partition::<Vec<_>, _>(|r| r.dead_letter.is_none());
        assert_eq!((hashed.len(), dead.len()), (2, 2));
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn a_closed_input_counts_as_a_pill() {
        let (to_hasher, from_hasher, handle) = worker(Md5);
        drop(to_hasher);
        handle.join().unwrap().unwrap();
        assert!(matches!(Frame::parse(&from_hasher.recv().unwrap().unwrap()).unwrap(), Frame::Pill));
    }

    /// Any transform: each byte of the payload becomes one output event (so "" is filtered out), upper-cased; no
    /// payload is rejected.
    struct Letters;
    impl PerEvent for Letters {
        fn apply(&mut self, r: &Record<'_>, out: &mut Outputs) -> std::result::Result<(), Rejection> {
            let p = r.payload.ok_or(Rejection::NullPayload)?;
            for b in p.iter() {
                out.push(&[b.to_ascii_uppercase()]);
            }
            Ok(())
        }
    }

    #[test]
    fn an_event_may_become_none_one_or_many_and_each_output_says_how_many() {
        let (to_worker, from_worker, handle) = worker(Letters);
        send(&to_worker, &[Some(b"abc"), Some(b""), None, Some(b"d")]);
        drop(to_worker);
        let (msgs, _) = messages(&from_worker);
        let rs = records(&msgs);
        type Seen<'a> = (i64, Option<Vec<u8>>, u32, Option<&'a str>);
        let seen: Vec<Seen> =
            rs.iter().map(|r| (r.at.seq, r.payload.map(|p| p.to_vec()), r.outputs, r.dead_letter)).collect();
        assert_eq!(
            seen,
            [
                (0, Some(b"A".to_vec()), 3, None),
                (0, Some(b"B".to_vec()), 3, None),
                (0, Some(b"C".to_vec()), 3, None),
                (1, None, 0, None),
                (2, None, 1, Some("null payload")),
                (3, Some(b"D".to_vec()), 1, None),
            ]
        );
        assert!(rs[..3].iter().all(|r| r.key == Some(Bytes::new(b"key")) && r.headers.len() == 1), "metadata kept");
        handle.join().unwrap().unwrap();
    }

    /// Takes 30 ms an event.
    struct Slow;
    impl PerEvent for Slow {
        fn apply(&mut self, r: &Record<'_>, out: &mut Outputs) -> std::result::Result<(), Rejection> {
            std::thread::sleep(Duration::from_millis(30));
            out.push(r.payload.ok_or(Rejection::NullPayload)?);
            Ok(())
        }
    }

    #[test]
    fn a_slow_transform_sends_its_outputs_slice_by_slice() {
        let (to_worker, from_worker, handle) = worker(Slow);
        let payloads: Vec<Option<&[u8]>> = (0..20).map(|_| Some(&b"{}"[..])).collect();
        send(&to_worker, &payloads);
        drop(to_worker);
        let (msgs, pill) = messages(&from_worker);
        assert!(pill);
        let sizes: Vec<usize> = msgs.iter().map(|m| records(std::slice::from_ref(m)).len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 20, "{sizes:?}");
        // 20 events at 30 ms are 600 ms: never one slice, and no slice over the 200 ms a slice may take.
        assert_eq!(sizes[0], 1, "the first slice is one event: {sizes:?}");
        assert!(sizes.windows(2).all(|w| w[1] <= 2 * w[0]), "slices at most double: {sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        handle.join().unwrap().unwrap();
    }
}
