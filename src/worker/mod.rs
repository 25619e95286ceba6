//! Workers: the N processes between the source and the sink that run the [transform] on every event: the md5
//! hashers by default, a jq filter (`--jq`) or the user's own command (`--exec`).
//!
//! A worker keeps the order of its input: every event of a source lane comes through the same worker, so that lane's
//! order survives, and an event's outputs leave in the order the transform gave them. It holds no state between
//! batches but the transform's own (a compiled filter, a running command). An event the transform rejects travels on
//! unchanged, marked for the dead-letter destination: bad input never stops a worker.

pub mod transform;

use crate::channel::batch::{BatchWriter, Frame, Record};
use crate::channel::ipc::{BatchReceiver, BatchSender};
use crate::config::Config;
use crate::error::{Exit, Result};
use crate::stage::{Hooks, Stage};
use crate::telemetry::events::{emit, BatchReceived, Rejected, Transformed};
use crate::telemetry::heartbeat;
use serde_bytes::Bytes;
use std::time::{Duration, Instant};
use transform::{Outputs, Transform, Verdict};

/// The channel ends a worker owns: batches in from the source, batches out to the sink.
pub struct WorkerEnds {
    pub input: BatchReceiver,
    pub output: BatchSender,
}

/// A worker running the transform the settings chose.
pub struct Worker;

impl Stage for Worker {
    type Ends = WorkerEnds;

    fn run(cfg: &Config, ends: WorkerEnds, hooks: &Hooks) -> Result<Exit> {
        // Built after the fork: each worker has its own compiled filter or command.
        let mut transform = transform::build(cfg)?;
        hooks.ready();
        let worked = work(ends, transform.as_mut());
        transform.finish();
        worked.map(|()| Exit::Clean)
    }
}

/// How long a worker works on one slice of a batch before it sends what it made: a slow transform (a command taking
/// a second an event) delivers as it goes, and a drain delivers what was finished rather than nothing.
const SLICE: Duration = Duration::from_millis(200);
/// Events in a slice while the transform's speed is not known yet.
const FIRST_SLICE: usize = 64;

/// Runs until the source's poison pill (or its channel closing), then forwards the pill.
pub fn work(ends: WorkerEnds, transform: &mut dyn Transform) -> Result<()> {
    let mut out = BatchWriter::new(usize::MAX, usize::MAX, Duration::ZERO);
    let mut outputs = Outputs::default();
    let mut capacity = 0;
    // How long the transform takes per event, once measured.
    let mut per_event: Option<Duration> = None;
    while let Some(message) = heartbeat::waiting_on_peer(|| ends.input.recv())? {
        let Frame::Records(records) = Frame::parse(&message)? else {
            break;
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
            let n = match per_event {
                None => FIRST_SLICE,
                Some(each) => (SLICE.as_nanos() / each.as_nanos().max(1)).max(1).try_into().unwrap_or(usize::MAX),
            };
            let (slice, after) = rest.split_at(n.min(rest.len()));
            rest = after;
            outputs.clear();
            let started = Instant::now();
            transform.run(slice, &mut outputs)?;
            let took = started.elapsed();
            per_event = Some(took / slice.len() as u32);
            let mut done = Transformed { took, ..Transformed::default() };
            for (record, verdict) in slice.iter().zip(outputs.verdicts()) {
                match verdict {
                    Verdict::Outputs(range) => {
                        let n = range.len();
                        done.count(n);
                        if n == 0 {
                            // Nothing to write, but its position must still reach the sink to be acknowledged.
                            out.push(&Record {
                                payload: None,
                                headers: Vec::new(),
                                key: None,
                                outputs: 0,
                                ..record.clone()
                            })?;
                        }
                        for i in range.clone() {
                            let payload = Some(Bytes::new(outputs.output(i)));
                            out.push(&Record { payload, outputs: n as u32, ..record.clone() })?;
                        }
                    }
                    Verdict::Rejected(why) => {
                        emit(Rejected { at: record.at, reason: why.as_str() });
                        out.push(&Record { dead_letter: Some(why.as_str()), outputs: 1, ..record.clone() })?;
                    }
                }
            }
            emit(done);
            ends.output.send(&mut out)?;
        }
    }
    ends.output.send_pill()?;
    log::debug!("done: the source sent its poison pill");
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
        let handle = std::thread::spawn(move || work(WorkerEnds { input: worker_in, output: worker_out }, &mut t));
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
                outputs: 1,
            };
            batch.push(&r).unwrap();
        }
        to.send(&mut batch).unwrap();
    }

    #[test]
    fn a_hasher_transforms_in_order_routes_bad_input_and_forwards_the_pill() {
        let (to_hasher, from_hasher, handle) = worker(Md5);
        send(&to_hasher, &[Some(b"{\"a\":1}"), Some(b"[1]"), None, Some(b"{}")]);
        to_hasher.send_pill().unwrap();

        let msg = from_hasher.recv().unwrap().unwrap();
        let Frame::Records(rs) = Frame::parse(&msg).unwrap() else { panic!("expected records") };
        let rs: Vec<Record> = rs.collect::<Result<_>>().unwrap();
        assert_eq!(rs.iter().map(|r| r.at.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let h = String::from_utf8(md5::md5_hex(b"{\"a\":1}").to_vec()).unwrap();
        assert_eq!(&rs[0].payload.unwrap()[..], format!("{{\"a\":1,\"hash\":\"{h}\"}}").as_bytes());
        assert_eq!(rs[0].dead_letter, None);
        assert!(rs[1].dead_letter.is_some() && &rs[1].payload.unwrap()[..] == b"[1]", "bad input goes unchanged");
        assert_eq!(rs[2].dead_letter, Some("null payload"));
        assert!(rs.iter().all(|r| r.key == Some(Bytes::new(b"key")) && r.headers.len() == 1));
        let (hashed, dead) = rs.iter().partition::<Vec<_>, _>(|r| r.dead_letter.is_none());
        assert_eq!((hashed.len(), dead.len()), (2, 2));
        assert!(matches!(Frame::parse(&from_hasher.recv().unwrap().unwrap()).unwrap(), Frame::Pill));
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
        let msg = from_worker.recv().unwrap().unwrap();
        let Frame::Records(rs) = Frame::parse(&msg).unwrap() else { panic!("expected records") };
        let rs: Vec<Record> = rs.collect::<Result<_>>().unwrap();
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
}
