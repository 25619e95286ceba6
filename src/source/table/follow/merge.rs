//! The snapshot merged into the change stream (DBLog), and what may be committed once the pipeline has caught up:
//! pure logic.
//!
//! A reader writes a low watermark into the change stream, reads a page of the snapshot, and writes a high one. The
//! source follows the stream in order: every change is sent on as it comes, and a page's rows are sent at its high
//! watermark, less those whose key changed between the two watermarks (the change, sent already, is as new as the
//! row or newer). So every key's events leave the source in the order of the log.
//!
//! Events are numbered in the order they leave the source. A [`Ledger`] holds what becomes true once every event
//! before a point is acknowledged: a chunk's checkpoint, or the slot's position at the end of a transaction. A
//! transaction's end is marked after its last change only, so it is never partly acknowledged.

use super::slot::Unseen;
use crate::position::Seq;
use crate::sql::key::Key;
use std::collections::{HashMap, HashSet, VecDeque};

/// A page of the snapshot: the claim of the chunk it was read for, and its number in that claim.
pub type Token = (u64, u32);

/// The windows between low and high watermarks that are open in the stream, each with the keys changed in it.
#[derive(Debug, Default)]
pub struct Windows {
    open: HashMap<Token, HashSet<Key>>,
}

impl Windows {
    /// A low watermark (again, when a reader retried its page: the window stays open from the first).
    pub fn low(&mut self, token: Token) {
        self.open.entry(token).or_default();
    }

    /// A change of `key`: every open window saw it.
    pub fn changed(&mut self, key: &Key) {
        for keys in self.open.values_mut() {
            keys.insert(key.clone());
        }
    }

    /// The high watermark: the keys changed since the low one. `None` when the low one was never seen, which the
    /// stream's order rules out; the caller then cannot trust the page.
    pub fn high(&mut self, token: Token) -> Option<HashSet<Key>> {
        self.open.remove(&token)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// The keys the last transactions changed, by xid. A page's snapshot may not see a transaction whose commit is in the
/// log just before the page's low watermark (a commit becomes visible a moment after its record is written): such a
/// transaction is in the snapshot's list of those in progress, and its keys are dropped from the page like those
/// changed inside the window.
#[derive(Debug, Default)]
pub struct Recent {
    open: Vec<Key>,
    done: VecDeque<(u32, Vec<Key>)>,
    keys: usize,
}

/// Transactions, and keys, remembered at most: a commit is visible a moment after its record is written, long before
/// this many more come.
const RECENT_TRANSACTIONS: usize = 8192;
const RECENT_KEYS: usize = 100_000;

impl Recent {
    /// A change of the transaction being read.
    pub fn changed(&mut self, key: &Key) {
        self.open.push(key.clone());
    }

    /// The transaction being read committed.
    pub fn committed(&mut self, xid: u32) {
        let keys = std::mem::take(&mut self.open);
        // One that changed nothing of the table (another table's, a watermark's) cannot matter to a page.
        if keys.is_empty() {
            return;
        }
        self.keys += keys.len();
        self.done.push_back((xid, keys));
        while self.done.len() > RECENT_TRANSACTIONS || (self.keys > RECENT_KEYS && self.done.len() > 1) {
            if let Some((_, gone)) = self.done.pop_front() {
                self.keys -= gone.len();
            }
        }
    }

    /// Adds to `into` the keys of the remembered transactions that a page's snapshot did not see.
    pub fn keys_of(&self, unseen: &Unseen, into: &mut HashSet<Key>) {
        for (xid, keys) in &self.done {
            if unseen.hides(*xid) {
                into.extend(keys.iter().cloned());
            }
        }
    }
}

/// Marks that hold once every event numbered below them is acknowledged, in the order they were made.
#[derive(Debug)]
pub struct Ledger<M> {
    next: Seq,
    marks: VecDeque<(Seq, M)>,
}

impl<M> Ledger<M> {
    pub fn new() -> Self {
        Ledger { next: 0, marks: VecDeque::new() }
    }

    /// The number of the next event sent.
    pub fn take(&mut self) -> Seq {
        self.next += 1;
        self.next - 1
    }

    /// `mark` holds once every event sent so far is acknowledged.
    pub fn mark(&mut self, mark: M) {
        self.marks.push_back((self.next, mark));
    }

    /// The marks that hold now, given the oldest event still unacknowledged (none: every one is).
    pub fn passed(&mut self, oldest_in_flight: Option<Seq>) -> Vec<M> {
        let upto = oldest_in_flight.unwrap_or(self.next);
        let mut out = Vec::new();
        while self.marks.front().is_some_and(|(at, _)| *at <= upto) {
            out.extend(self.marks.pop_front().map(|(_, m)| m));
        }
        out
    }

    /// The marks that do not hold yet, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &M> {
        self.marks.iter().map(|(_, m)| m)
    }

    pub fn waiting(&self) -> usize {
        self.marks.len()
    }
}

impl<M> Default for Ledger<M> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_loses_the_rows_whose_keys_changed_inside_its_window_only() {
        let mut w = Windows::default();
        w.changed(&Key::int(1));
        w.low((7, 0));
        w.changed(&Key::int(2));
        w.low((7, 1));
        w.low((7, 0));
        w.changed(&Key::int(3));
        let first = w.high((7, 0)).unwrap();
        assert_eq!(first, [Key::int(2), Key::int(3)].into_iter().collect(), "not 1, changed before its low mark");
        w.changed(&Key::int(4));
        let second = w.high((7, 1)).unwrap();
        assert_eq!(second, [Key::int(3), Key::int(4)].into_iter().collect());
        assert!(w.is_empty());
        assert_eq!(w.high((9, 9)), None, "a high mark without its low one is told");
    }

    #[test]
    fn a_transaction_the_snapshot_did_not_see_gives_its_keys() {
        let mut r = Recent::default();
        r.changed(&Key::int(1));
        r.changed(&Key::int(2));
        r.committed(700);
        r.committed(701);
        r.changed(&Key::int(3));
        r.committed(702);
        r.changed(&Key::int(4));
        r.committed(710);
        let mut dropped = HashSet::new();
        r.keys_of(&Unseen { xmax: 705, in_progress: vec![702, 999] }, &mut dropped);
        assert_eq!(dropped, [Key::int(3), Key::int(4)].into_iter().collect(), "702 in progress, 710 past xmax");
        let mut none = HashSet::new();
        r.keys_of(&Unseen { xmax: 800, in_progress: vec![] }, &mut none);
        assert!(none.is_empty());
        assert_eq!(r.done.len(), 3, "701 changed nothing of the table");
    }

    #[test]
    fn a_mark_holds_once_everything_sent_before_it_is_acknowledged() {
        let mut l = Ledger::new();
        let (a, b) = (l.take(), l.take());
        l.mark("transaction 1 ends");
        let c = l.take();
        l.mark("transaction 2 ends");
        assert_eq!((a, b, c), (0, 1, 2));
        assert!(l.passed(Some(a)).is_empty(), "event 0 is in flight");
        assert!(l.passed(Some(b)).is_empty());
        assert_eq!(l.passed(Some(c)), vec!["transaction 1 ends"], "0 and 1 done, 2 in flight");
        assert_eq!(l.passed(None), vec!["transaction 2 ends"]);
        l.mark("idle: the log's end");
        assert_eq!(l.passed(None), vec!["idle: the log's end"], "nothing in flight");
        assert_eq!(l.waiting(), 0);
    }
}
