//! Where an event comes from in its source: a lane and a sequence number in it.
//!
//! A lane is a stream whose order the pipeline keeps and whose positions it commits: a Kafka partition today, a chunk
//! of a table's key range for a SQL source. The sequence number orders a lane's events: a Kafka offset, a row's place
//! in its chunk. Every event of a lane goes through the same worker, and a lane's position is committed only below
//! the contiguous run of acknowledged events (see [`crate::source::watermark`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A lane of a source: a Kafka partition.
pub type Lane = i32;

/// An event's place in its lane: a Kafka offset.
pub type Seq = i64;

/// Bits of a Kafka source's lane that hold the partition: a source reading several topics puts the topic's number
/// above them (`source::kafka::lanes`); the one topic of a plain source is number 0, so its lanes are its partitions.
pub const PARTITION_BITS: u32 = 16;

/// The worker of `workers` that lane `lane` goes through, always the same one so that the lane's order survives: the
/// lane modulo the workers for a plain topic or a table, and for several topics the topic's number spread into it (a
/// partition of each topic on one worker would leave the others idle). The spread is a prime above the most workers
/// there may be (1024), so that no worker count undoes it; it cannot suit every layout of topics and partitions.
pub fn worker_of(lane: Lane, workers: usize) -> usize {
    let spread = i64::from(lane >> PARTITION_BITS) * 1031 + i64::from(partition_of(lane));
    spread.rem_euclid(workers.max(1) as i64) as usize
}

/// The partition a Kafka source's lane stands for.
pub fn partition_of(lane: Lane) -> i32 {
    lane & ((1 << PARTITION_BITS) - 1)
}

/// An event's origin, carried through the pipeline and acknowledged back to the source.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub lane: Lane,
    pub seq: Seq,
}

impl Position {
    pub fn new(lane: Lane, seq: Seq) -> Position {
        Position { lane, seq }
    }
}

/// `lane:seq`, the way the status line and the summary write committed positions.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.lane, self.seq)
    }
}

/// A position in its source's words: `partition 0 offset 5` for a topic, `chunk 0 row 5` for a table scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub at: Position,
    pub table: bool,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.table {
            true => write!(f, "chunk {} row {}", self.at.lane, self.at.seq),
            false if self.at.lane >> PARTITION_BITS > 0 => write!(
                f,
                "topic #{} partition {} offset {}",
                self.at.lane >> PARTITION_BITS,
                partition_of(self.at.lane),
                self.at.seq
            ),
            false => write!(f, "partition {} offset {}", self.at.lane, self.at.seq),
        }
    }
}

/// Positions as `[(lane, seq), ...]`, the way the consumer has always logged its commits.
pub struct Listed<'a>(pub &'a [Position]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "({}, {})", p.lane, p.seq)?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_as_the_logs_always_showed_them() {
        let ps = [Position::new(0, 24805), Position::new(1, 25195)];
        assert_eq!(Listed(&ps).to_string(), "[(0, 24805), (1, 25195)]");
        assert_eq!(Listed(&[]).to_string(), "[]");
        assert_eq!(ps[1].to_string(), "1:25195");
        assert_eq!(Place { at: ps[0], table: false }.to_string(), "partition 0 offset 24805");
        assert_eq!(Place { at: ps[0], table: true }.to_string(), "chunk 0 row 24805");
        assert_eq!((0..8).map(|l| worker_of(l, 4)).collect::<Vec<_>>(), [0, 1, 2, 3, 0, 1, 2, 3], "lane mod N");
        let firsts: Vec<usize> = (0..4).map(|topic| worker_of(topic << PARTITION_BITS, 4)).collect();
        assert_eq!(firsts, [0, 3, 2, 1], "the topics' first partitions on different workers");
        let firsts: Vec<usize> = (0..4).map(|topic| worker_of(topic << PARTITION_BITS, 31)).collect();
        assert_eq!(firsts, [0, 8, 16, 24], "a worker count of 31 spreads them too");
        let second_topic = Place { at: Position::new(65_539, 7), table: false };
        assert_eq!(second_topic.to_string(), "topic #1 partition 3 offset 7");
    }
}
