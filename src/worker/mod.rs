//! The hasher stage: batches in from the consumer, each event validated and hashed, batches out to the producer.
//!
//! A hasher keeps the order of its input: every event of a source partition comes through the same hasher, so that
//! partition's order survives. It has no Kafka client and holds no state between batches.

pub mod transform;

use crate::channel::batch::{BatchWriter, Frame, Record};
use crate::channel::ipc::{BatchReceiver, BatchSender};
use crate::error::Result;
use crate::stage::child::RateLimitedLog;
use crate::telemetry::counters::Counters;
use crate::telemetry::heartbeat;
use crate::worker::transform::md5;
use serde_bytes::Bytes;
use std::time::Duration;

pub struct HasherEnds {
    pub input: BatchReceiver,
    pub output: BatchSender,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HasherStats {
    pub hashed: u64,
    pub dead_letters: u64,
}

/// Runs until the consumer's poison pill (or its channel closing), forwards the pill, and returns what it did.
pub fn run(ends: HasherEnds) -> Result<HasherStats> {
    let mut stats = HasherStats::default();
    let mut out = BatchWriter::new(usize::MAX, usize::MAX, Duration::ZERO);
    let mut scratch = Vec::with_capacity(4096);
    let mut bad_log = RateLimitedLog::new(Duration::from_secs(5));
    while let Some(message) = heartbeat::waiting_on_peer(|| ends.input.recv())? {
        let Frame::Records(records) = Frame::parse(&message)? else {
            break;
        };
        let mut received = 0;
        for record in records {
            let record = record?;
            received += 1;
            hash_record(&record, &mut scratch, &mut out, &mut stats, &mut bad_log)?;
        }
        crate::telemetry::counters::STAGE.received_batch(received);
        ends.output.send(&mut out)?;
    }
    ends.output.send_pill()?;
    log::debug!("done: {} hashed, {} to the dead-letter topic", stats.hashed, stats.dead_letters);
    Ok(stats)
}

fn hash_record(
    record: &Record<'_>,
    scratch: &mut Vec<u8>,
    out: &mut BatchWriter,
    stats: &mut HasherStats,
    bad_log: &mut RateLimitedLog,
) -> Result<()> {
    match md5::add_hash(record.payload.map(|p| &p[..]), scratch) {
        Ok(()) => {
            stats.hashed += 1;
            Counters::add(&crate::telemetry::counters::STAGE.hashed, 1);
            out.push(&Record { payload: Some(Bytes::new(scratch)), ..record.clone() })
        }
        Err(why) => {
            stats.dead_letters += 1;
            Counters::add(&crate::telemetry::counters::STAGE.invalid, 1);
            if let Some(held_back) = bad_log.ready() {
                log::warn!(
                    "event at partition {} offset {} goes to the dead-letter topic: {why} ({} bad events so far, \
                     {held_back} not logged)",
                    record.partition,
                    record.offset,
                    stats.dead_letters
                );
            }
            out.push(&Record { dead_letter: Some(why.as_str()), ..record.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ipc::batch_channel;

    #[test]
    fn a_hasher_transforms_in_order_routes_bad_input_and_forwards_the_pill() {
        let (to_hasher, hasher_in) = batch_channel().unwrap();
        let (hasher_out, from_hasher) = batch_channel().unwrap();
        let worker = std::thread::spawn(move || run(HasherEnds { input: hasher_in, output: hasher_out }));

        let mut batch = BatchWriter::new(100, 1 << 20, Duration::ZERO);
        let payloads: [Option<&[u8]>; 4] = [Some(b"{\"a\":1}"), Some(b"[1]"), None, Some(b"{}")];
        for (i, p) in payloads.iter().enumerate() {
            let r = Record {
                partition: 2,
                offset: i as i64,
                timestamp: None,
                key: Some(Bytes::new(b"key")),
                headers: vec![("trace", Some(Bytes::new(b"t1")))],
                payload: p.map(Bytes::new),
                dead_letter: None,
            };
            batch.push(&r).unwrap();
        }
        to_hasher.send(&mut batch).unwrap();
        to_hasher.send_pill().unwrap();

        let msg = from_hasher.recv().unwrap().unwrap();
        let Frame::Records(rs) = Frame::parse(&msg).unwrap() else { panic!("expected records") };
        let rs: Vec<Record> = rs.collect::<Result<_>>().unwrap();
        assert_eq!(rs.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let h = String::from_utf8(md5::md5_hex(b"{\"a\":1}").to_vec()).unwrap();
        assert_eq!(&rs[0].payload.unwrap()[..], format!("{{\"a\":1,\"hash\":\"{h}\"}}").as_bytes());
        assert_eq!(rs[0].dead_letter, None);
        assert!(rs[1].dead_letter.is_some() && &rs[1].payload.unwrap()[..] == b"[1]", "bad input goes unchanged");
        assert_eq!(rs[2].dead_letter, Some("null payload"));
        assert!(rs.iter().all(|r| r.key == Some(Bytes::new(b"key")) && r.headers.len() == 1));
        assert!(matches!(Frame::parse(&from_hasher.recv().unwrap().unwrap()).unwrap(), Frame::Pill));
        assert_eq!(worker.join().unwrap().unwrap(), HasherStats { hashed: 2, dead_letters: 2 });
    }

    #[test]
    fn a_closed_input_counts_as_a_pill() {
        let (to_hasher, hasher_in) = batch_channel().unwrap();
        let (hasher_out, from_hasher) = batch_channel().unwrap();
        drop(to_hasher);
        run(HasherEnds { input: hasher_in, output: hasher_out }).unwrap();
        assert!(matches!(Frame::parse(&from_hasher.recv().unwrap().unwrap()).unwrap(), Frame::Pill));
    }
}
