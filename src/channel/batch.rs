//! What travels between the stages: records, encoded with bincode into batches.
//!
//! A batch is one IPC message: a tag byte, then bincode-encoded records back to back. Records borrow their bytes
//! from the received message when decoded, so payloads are copied once into a batch and never again.

use crate::error::{Error, Result};
use crate::position::Position;
use serde::{Deserialize, Serialize};
use serde_bytes::Bytes;
use std::time::{Duration, Instant};

const TAG_RECORDS: u8 = 0;
const TAG_PILL: u8 = 1;
const TAG_END: u8 = 2;
const TAG_LANES: u8 = 3;

/// How everything on our channels is encoded.
pub fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// One event on its way through the pipeline, with where it came from so that its position can be acknowledged.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub at: Position,
    /// The source event's timestamp (ms since the epoch), kept on the output like Kafka Streams does.
    pub timestamp: Option<i64>,
    #[serde(borrow)]
    pub key: Option<&'a Bytes>,
    #[serde(borrow)]
    pub headers: Vec<(&'a str, Option<&'a Bytes>)>,
    #[serde(borrow)]
    pub payload: Option<&'a Bytes>,
    /// Set by a worker when the event cannot be transformed: the sink sends it, unchanged, to the dead-letter
    /// destination.
    #[serde(borrow)]
    pub dead_letter: Option<&'a str>,
    /// The source topic, when the source reads several (one alone is the settings'): `$meta.topic` and the dead
    /// letters' headers name it.
    #[serde(borrow)]
    pub topic: Option<&'a str>,
    /// How many output events the input at `at` became, this one among them. 0: it was filtered out, and this record
    /// only carries its position to be acknowledged. More than 1: the sink acknowledges `at` once all are delivered.
    pub outputs: u32,
}

/// What a stage reads from its input channel.
#[derive(Debug)]
pub enum Frame<'a> {
    Records(Records<'a>),
    /// The poison pill: nothing more will come on this channel.
    Pill,
    /// The poison pill of a finite source that has read everything (a table scan that finished), not of a drain:
    /// what waits for the end of the input (a window) may end now.
    End,
    /// The source's lanes that go through this channel, sent whenever they change (a rebalance), in order with the
    /// records: event time waits for a lane it was given until that lane shows events or goes idle.
    Lanes(Vec<crate::position::Lane>),
}

impl<'a> Frame<'a> {
    pub fn parse(message: &'a [u8]) -> Result<Frame<'a>> {
        match message.split_first() {
            Some((&TAG_RECORDS, rest)) => Ok(Frame::Records(Records { rest })),
            Some((&TAG_PILL, [])) => Ok(Frame::Pill),
            Some((&TAG_END, [])) => Ok(Frame::End),
            Some((&TAG_LANES, rest)) => bincode::serde::decode_from_slice(rest, bincode_config())
                .map(|(lanes, _)| Frame::Lanes(lanes))
                .map_err(Error::Decode),
            _ => Err(Error::UnknownFrame { len: message.len() }),
        }
    }

    pub fn pill() -> Vec<u8> {
        vec![TAG_PILL]
    }

    pub fn end() -> Vec<u8> {
        vec![TAG_END]
    }

    pub fn lanes(lanes: &[crate::position::Lane]) -> Result<Vec<u8>> {
        let mut out = vec![TAG_LANES];
        bincode::serde::encode_into_std_write(lanes, &mut out, bincode_config()).map_err(Error::Encode)?;
        Ok(out)
    }

    /// A pill of either kind: nothing more comes.
    pub fn is_last(&self) -> bool {
        matches!(self, Frame::Pill | Frame::End)
    }
}

/// The records of a batch, decoded one at a time, borrowing from the message.
#[derive(Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match bincode::serde::borrow_decode_from_slice::<Record<'a>, _>(self.rest, bincode_config()) {
            Ok((record, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(record))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(Error::Decode(e)))
            }
        }
    }
}

/// Collects records into one batch, and says when it is due: full (in events or bytes) or lingered long enough.
#[derive(Debug)]
pub struct BatchWriter {
    buf: Vec<u8>,
    events: usize,
    max_events: usize,
    max_bytes: usize,
    linger: Duration,
    first_at: Option<Instant>,
}

impl BatchWriter {
    pub fn new(max_events: usize, max_bytes: usize, linger: Duration) -> BatchWriter {
        let mut buf = Vec::with_capacity(max_bytes.min(1 << 20).saturating_add(1024));
        buf.push(TAG_RECORDS);
        BatchWriter { buf, events: 0, max_events: max_events.max(1), max_bytes, linger, first_at: None }
    }

    pub fn push(&mut self, record: &Record<'_>) -> Result<()> {
        bincode::serde::encode_into_std_write(record, &mut self.buf, bincode_config()).map_err(Error::Encode)?;
        if self.events == 0 {
            self.first_at = Some(Instant::now());
        }
        self.events += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    pub fn is_full(&self) -> bool {
        self.events >= self.max_events || self.buf.len() >= self.max_bytes
    }

    /// When this batch must be sent even if it is not full; `None` when it is empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.linger)
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.deadline().is_some_and(|d| now >= d)
    }

    /// The encoded batch, ready to send.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the batch after it was sent, keeping its buffer.
    pub fn clear(&mut self) {
        self.buf.truncate(1);
        self.events = 0;
        self.first_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, payload: &[u8]) -> Record<'_> {
        Record {
            at: Position::new(3, offset),
            timestamp: Some(1_700_000_000_000),
            key: Some(Bytes::new(b"k")),
            headers: vec![("h", Some(Bytes::new(b"v"))), ("empty", None)],
            payload: Some(Bytes::new(payload)),
            dead_letter: None,
            topic: None,
            outputs: 1,
        }
    }

    #[test]
    fn a_batch_round_trips_its_records() {
        let mut w = BatchWriter::new(10, 1 << 20, Duration::from_secs(1));
        let a = record(7, b"{\"a\":1}");
        let mut b = record(8, b"\xff not json");
        b.dead_letter = Some("not JSON");
        b.key = None;
        w.push(&a).unwrap();
        w.push(&b).unwrap();
        let Frame::Records(records) = Frame::parse(w.bytes()).unwrap() else { panic!("not records") };
        let got: Vec<Record> = records.collect::<Result<_>>().unwrap();
        assert_eq!(got, vec![a, b]);
    }

    #[test]
    fn pills_and_garbage_are_told_apart() {
        assert!(matches!(Frame::parse(&Frame::pill()).unwrap(), Frame::Pill));
        assert!(matches!(Frame::parse(&Frame::end()).unwrap(), Frame::End));
        assert!(matches!(Frame::parse(&Frame::lanes(&[3, 7]).unwrap()).unwrap(), Frame::Lanes(l) if l == [3, 7]));
        assert!(Frame::parse(&[]).is_err());
        assert!(Frame::parse(&[9, 9]).is_err());
        let Frame::Records(mut r) = Frame::parse(&[TAG_RECORDS, 200, 1]).unwrap() else { panic!() };
        assert!(r.next().unwrap().is_err(), "a truncated record is an error, not a panic");
        assert!(r.next().is_none());
    }

    #[test]
    fn a_batch_is_due_when_full_in_events() {
        let mut w = BatchWriter::new(3, 1 << 20, Duration::from_secs(3600));
        let now = Instant::now();
        for o in 0..2 {
            w.push(&record(o, b"{}")).unwrap();
            assert!(!w.is_due(now));
        }
        w.push(&record(2, b"{}")).unwrap();
        assert!(w.is_due(now) && w.is_full());
        w.clear();
        assert!(w.is_empty() && !w.is_due(now) && w.deadline().is_none());
    }

    #[test]
    fn a_batch_is_due_when_full_in_bytes() {
        let mut w = BatchWriter::new(1000, 100, Duration::from_secs(3600));
        w.push(&record(0, &[b'x'; 120])).unwrap();
        assert!(w.is_full());
    }

    #[test]
    fn a_partial_batch_is_due_after_its_linger() {
        let mut w = BatchWriter::new(1000, 1 << 20, Duration::from_millis(20));
        assert!(w.deadline().is_none());
        w.push(&record(0, b"{}")).unwrap();
        let d = w.deadline().unwrap();
        assert!(!w.is_due(d - Duration::from_millis(1)));
        assert!(w.is_due(d));
        // the linger counts from the first event, not the latest
        std::thread::sleep(Duration::from_millis(5));
        w.push(&record(1, b"{}")).unwrap();
        assert_eq!(w.deadline(), Some(d));
    }
}
