//! A scan's chunks, and which key each chunk may be checkpointed at: pure logic.
//!
//! A chunk is the key range `(lo, hi]`: above its lower bound, up to and including its upper bound; the first has no
//! lower bound and the last no upper one, so rows inserted beyond the ends during a scan are read too. The bounds
//! come from walking the key's index in order and taking every Nth key, so every chunk holds about N rows however
//! skewed, sparse or textual the keys are (an arithmetic split of `min..max` leaves most chunks empty on skewed keys).

use crate::position::Seq;
use crate::sql::key::Key;
use std::collections::VecDeque;

/// The key range of one chunk: rows with `lo < key <= hi`; `None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub lo: Option<Key>,
    pub hi: Option<Key>,
}

/// The chunks that `boundaries` (keys in ascending order, each ending a chunk) cut the key space into: one more
/// chunk than boundaries, the last open-ended.
pub fn plan(boundaries: Vec<Key>) -> Vec<Range> {
    let mut bounds = boundaries;
    bounds.dedup();
    let mut chunks = Vec::with_capacity(bounds.len() + 1);
    let mut lo = None;
    for b in bounds {
        chunks.push(Range { lo: lo.clone(), hi: Some(b.clone()) });
        lo = Some(b);
    }
    chunks.push(Range { lo, hi: None });
    chunks
}

/// The boundaries without the last one when it is the table's last row (its rows a multiple of `every`): the chunk
/// after it would be empty. Dropping a boundary only merges two chunks, so a count that rows inserted or deleted since
/// have made wrong costs no row, only a larger last chunk.
pub fn without_empty_end(mut boundaries: Vec<Key>, rows: u64, every: u64) -> Vec<Key> {
    if boundaries.len() as u64 * every.max(1) >= rows {
        boundaries.pop();
    }
    boundaries
}

/// The keys of one chunk's rows in flight, in the order they were read, by sequence number: what turns "every row
/// below sequence S is acknowledged" into "every row up to key K is".
#[derive(Debug, Default)]
pub struct InFlightKeys {
    keys: VecDeque<(Seq, Key)>,
    next: Seq,
}

impl InFlightKeys {
    /// For a chunk whose earlier claim in this process numbered its rows up to `next`: numbers are never reused, so
    /// a late acknowledgement of the earlier claim's rows cannot pass for one of this claim's.
    pub fn starting_at(next: Seq) -> InFlightKeys {
        InFlightKeys { keys: VecDeque::new(), next }
    }

    /// The sequence number the next row will have.
    pub fn next(&self) -> Seq {
        self.next
    }

    /// A row read: returns its sequence number in the chunk.
    pub fn push(&mut self, key: Key) -> Seq {
        let seq = self.next;
        self.keys.push_back((seq, key));
        self.next += 1;
        seq
    }

    /// Every row below `next` is acknowledged: the highest key among them, which the chunk may be checkpointed at,
    /// if any row was newly passed. The rows passed are forgotten.
    pub fn passed(&mut self, next: Seq) -> Option<Key> {
        let mut last = None;
        while self.keys.front().is_some_and(|(seq, _)| *seq < next) {
            last = self.keys.pop_front().map(|(_, k)| k);
        }
        last
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_cut_the_key_space_into_chunks_open_at_both_ends() {
        let chunks = plan(vec![Key::int(10), Key::int(20)]);
        assert_eq!(
            chunks,
            vec![
                Range { lo: None, hi: Some(Key::int(10)) },
                Range { lo: Some(Key::int(10)), hi: Some(Key::int(20)) },
                Range { lo: Some(Key::int(20)), hi: None },
            ]
        );
        assert_eq!(plan(vec![]), vec![Range { lo: None, hi: None }], "a small table is one chunk");
        let k = |n| Key::int(n);
        // 200,000 rows in chunks of 100,000: two chunks, not a third with nothing in it.
        assert_eq!(plan(without_empty_end(vec![k(100_000), k(200_000)], 200_000, 100_000)).len(), 2);
        assert_eq!(plan(without_empty_end(vec![k(100_000), k(200_000)], 250_000, 100_000)).len(), 3);
        assert_eq!(plan(without_empty_end(vec![], 0, 100_000)).len(), 1);
        assert_eq!(plan(vec![Key::text("b"), Key::text("b")]).len(), 2, "no empty range");
    }

    #[test]
    fn a_chunk_is_checkpointed_at_the_key_below_which_all_is_acknowledged() {
        let mut keys = InFlightKeys::default();
        for k in [5, 7, 9, 12] {
            keys.push(Key::int(k));
        }
        assert_eq!(keys.passed(0), None, "nothing acknowledged");
        assert_eq!(keys.passed(2), Some(Key::int(7)), "rows 0 and 1 (keys 5 and 7) are");
        assert_eq!(keys.passed(2), None, "no news");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.push(Key::int(15)), 4, "sequence numbers go on");
        assert_eq!(keys.passed(5), Some(Key::int(15)));
        assert!(keys.is_empty());
    }
}
