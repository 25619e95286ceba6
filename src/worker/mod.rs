//! Workers: the N processes between the source and the sink that run the [transform] on every event. Today's
//! workers are the hashers (`--hashers`).
//!
//! A worker keeps the order of its input: every event of a source lane comes through the same worker, so that lane's
//! order survives. It has no client of its own and holds no state between batches. An event the transform rejects
//! travels on unchanged, marked for the dead-letter destination: bad input never stops a worker.

pub mod transform;

use crate::channel::batch::{BatchWriter, Frame, Record};
use crate::channel::ipc::{BatchReceiver, BatchSender};
use crate::config::Config;
use crate::error::{Exit, Result};
use crate::stage::{Hooks, Stage};
use crate::telemetry::events::{emit, BatchReceived, Rejected, Transformed};
use crate::telemetry::heartbeat;
use serde_bytes::Bytes;
use std::time::Duration;
use transform::md5::Md5;
use transform::Transform;

/// The channel ends a worker owns: batches in from the source, batches out to the sink.
pub struct WorkerEnds {
    pub input: BatchReceiver,
    pub output: BatchSender,
}

/// A worker running today's transform, [`Md5`].
pub struct Hasher;

impl Stage for Hasher {
    type Ends = WorkerEnds;

    fn run(_cfg: &Config, ends: WorkerEnds, hooks: &Hooks) -> Result<Exit> {
        hooks.ready();
        work(ends, &mut Md5).map(|()| Exit::Clean)
    }
}

/// Runs until the source's poison pill (or its channel closing), then forwards the pill.
pub fn work(ends: WorkerEnds, transform: &mut impl Transform) -> Result<()> {
    let mut out = BatchWriter::new(usize::MAX, usize::MAX, Duration::ZERO);
    let mut scratch = Vec::with_capacity(4096);
    while let Some(message) = heartbeat::waiting_on_peer(|| ends.input.recv())? {
        let Frame::Records(records) = Frame::parse(&message)? else {
            break;
        };
        let mut received = 0;
        for record in records {
            let record = record?;
            received += 1;
            let transformed = match transform.apply(record.payload.map(|p| &p[..]), &mut scratch) {
                Ok(()) => {
                    emit(Transformed);
                    Record { payload: Some(Bytes::new(&scratch)), ..record.clone() }
                }
                Err(why) => {
                    emit(Rejected { at: record.at, reason: why.as_str() });
                    out.push(&Record { dead_letter: Some(why.as_str()), ..record.clone() })?;
                    continue;
                }
            };
            out.push(&transformed)?;
        }
        emit(BatchReceived { events: received });
        ends.output.send(&mut out)?;
    }
    ends.output.send_pill()?;
    log::debug!("done: the source sent its poison pill");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::transform::md5;
    use super::transform::Rejection;
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

    /// Any transform: its output replaces the payload, its rejection sends the event to the dead letters.
    struct Upper;
    impl Transform for Upper {
        fn apply(&mut self, payload: Option<&[u8]>, out: &mut Vec<u8>) -> std::result::Result<(), Rejection> {
            let p = payload.ok_or(Rejection::NullPayload)?;
            out.clear();
            out.extend(p.iter().map(u8::to_ascii_uppercase));
            Ok(())
        }
    }

    #[test]
    fn a_worker_runs_whatever_transform_it_is_given() {
        let (to_worker, from_worker, handle) = worker(Upper);
        send(&to_worker, &[Some(b"abc"), None]);
        drop(to_worker);
        let msg = from_worker.recv().unwrap().unwrap();
        let Frame::Records(rs) = Frame::parse(&msg).unwrap() else { panic!("expected records") };
        let rs: Vec<Record> = rs.collect::<Result<_>>().unwrap();
        assert_eq!(rs[0].payload.map(|p| p.to_vec()), Some(b"ABC".to_vec()));
        assert_eq!(rs[1].dead_letter, Some("null payload"));
        handle.join().unwrap().unwrap();
    }
}
