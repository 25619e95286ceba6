//! The open windows of every group key, as pure logic: which windows an event belongs to, sessions joined by an
//! event between them, and which windows the watermark closes, in a fixed order.

use super::acc::Acc;
use crate::config::aggregate::Window;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;

/// The running aggregate's one window: it starts at the beginning of time and never ends.
pub const FOREVER: (i64, i64) = (i64::MIN, i64::MAX);

/// One window of one key: where it ends (its start is its place in the key's list) and its aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct Win {
    pub end: i64,
    pub accs: Vec<Acc>,
}

/// A key's open windows, by start. A key has one or two open at a time (a few with hopping windows): a sorted
/// vector, not a tree, whose nodes would cost more than the windows themselves.
pub type KeyWindows = Vec<(i64, Win)>;

/// A window that closed: its key (compact JSON), bounds and aggregates.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub key: Rc<str>,
    pub start: i64,
    pub end: i64,
    pub accs: Vec<Acc>,
}

/// Every key's open windows.
#[derive(Debug)]
pub struct Windows {
    kind: Window,
    /// Key (compact JSON, held once and shared below) → its windows.
    keys: HashMap<Rc<str>, KeyWindows>,
    /// (end, key, start) of every open window: what closes first comes first.
    closing: BTreeSet<(i64, Rc<str>, i64)>,
    /// Keys whose windows changed since `take_dirty`.
    dirty: HashSet<Rc<str>>,
}

impl Windows {
    pub fn new(kind: Window) -> Windows {
        Windows { kind, keys: HashMap::new(), closing: BTreeSet::new(), dirty: HashSet::new() }
    }

    /// The windows of a fixed kind (tumbling, hopping, running) that an event at `t` belongs to, earliest first.
    pub fn fixed(&self, t: i64) -> Vec<(i64, i64)> {
        match self.kind {
            Window::Running => vec![FOREVER],
            Window::Tumbling { size } => {
                let start = t.div_euclid(size) * size;
                vec![(start, start + size)]
            }
            Window::Hopping { size, step } => {
                let last = t.div_euclid(step) * step;
                let mut all: Vec<(i64, i64)> =
                    (0..size / step).map(|i| last - i * step).map(|start| (start, start + size)).collect();
                all.reverse();
                all
            }
            // The event's own session, before any joining.
            Window::Session { gap } => vec![(t, t + gap)],
        }
    }

    pub fn is_session(&self) -> bool {
        matches!(self.kind, Window::Session { .. })
    }

    /// A key's window starting at `start`, if open.
    pub fn get(&self, key: &str, start: i64) -> Option<&Win> {
        let windows = self.keys.get(key)?;
        windows.binary_search_by_key(&start, |(s, _)| *s).ok().map(|i| &windows[i].1)
    }

    /// The key as held here (shared), made on first sight.
    fn held(&mut self, key: &str) -> Rc<str> {
        match self.keys.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Rc<str> = Rc::from(key);
                self.keys.insert(k.clone(), Vec::new());
                k
            }
        }
    }

    /// Applies `f` to the window `(start, end)` of `key`, opening it with `new()` if need be.
    pub fn update(
        &mut self,
        key: &str,
        (start, end): (i64, i64),
        new: impl FnOnce() -> Vec<Acc>,
        f: impl FnOnce(&mut [Acc]),
    ) {
        let key = self.held(key);
        let Some(windows) = self.keys.get_mut(&key) else { return };
        let i = match windows.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => i,
            Err(i) => {
                windows.insert(i, (start, Win { end, accs: new() }));
                self.closing.insert((end, key.clone(), start));
                i
            }
        };
        f(&mut windows[i].1.accs);
        self.dirty.insert(key);
    }

    /// A session event at `t`: joins every session of `key` that `[t, t + gap)` overlaps into one, then applies `f`.
    pub fn update_session(&mut self, key: &str, t: i64, new: impl FnOnce() -> Vec<Acc>, f: impl FnOnce(&mut [Acc])) {
        let Window::Session { gap } = self.kind else { return };
        let key = self.held(key);
        let Some(windows) = self.keys.get_mut(&key) else { return };
        // Sessions are disjoint, so those within the gap (touching included, as Kafka Streams has it) are a run that
        // ends at the last one starting by t + gap.
        let upto = windows.partition_point(|(s, _)| *s <= t + gap);
        let from = windows[..upto].iter().rposition(|(_, w)| w.end < t).map_or(0, |i| i + 1);
        let (mut start, mut end, mut accs) = (t, t + gap, None::<Vec<Acc>>);
        for (s, w) in windows.drain(from..upto) {
            self.closing.remove(&(w.end, key.clone(), s));
            start = start.min(s);
            end = end.max(w.end);
            accs = Some(match accs {
                None => w.accs,
                Some(mut a) => {
                    for (mine, theirs) in a.iter_mut().zip(w.accs) {
                        mine.merge(theirs);
                    }
                    a
                }
            });
        }
        let mut accs = accs.unwrap_or_else(new);
        f(&mut accs);
        windows.insert(from, (start, Win { end, accs }));
        self.closing.insert((end, key.clone(), start));
        self.dirty.insert(key);
    }

    /// Closes every window with `end + lateness <= watermark`, in order of end, then key, then start.
    pub fn close(&mut self, watermark: i64, lateness: i64) -> Vec<Closed> {
        let mut closed = Vec::new();
        while let Some((end, _, _)) = self.closing.first() {
            if end.saturating_add(lateness) > watermark {
                break;
            }
            let Some((end, key, start)) = self.closing.pop_first() else { break };
            closed.push(self.remove(key, start, end));
        }
        closed
    }

    /// Closes every window: a finite source has ended.
    pub fn close_all(&mut self) -> Vec<Closed> {
        let mut closed = Vec::new();
        while let Some((end, key, start)) = self.closing.pop_first() {
            closed.push(self.remove(key, start, end));
        }
        closed
    }

    fn remove(&mut self, key: Rc<str>, start: i64, end: i64) -> Closed {
        let mut accs = Vec::new();
        if let Some(windows) = self.keys.get_mut(&key) {
            if let Ok(i) = windows.binary_search_by_key(&start, |(s, _)| *s) {
                accs = windows.remove(i).1.accs;
            }
            if windows.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.dirty.insert(key.clone());
        Closed { key, start, end, accs }
    }

    /// The keys changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<Rc<str>> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// A key's open windows (none: the key holds nothing).
    pub fn of(&self, key: &str) -> Option<&KeyWindows> {
        self.keys.get(key)
    }

    /// A key's windows as saved, put back.
    pub fn restore(&mut self, key: &str, mut windows: KeyWindows) {
        windows.sort_by_key(|(s, _)| *s);
        let key: Rc<str> = Rc::from(key);
        for (start, w) in &windows {
            self.closing.insert((w.end, key.clone(), *start));
        }
        self.keys.insert(key, windows);
    }

    pub fn open_windows(&self) -> usize {
        self.closing.len()
    }

    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count() -> Vec<Acc> {
        vec![Acc::Count(0)]
    }

    fn bump(accs: &mut [Acc]) {
        accs[0].update(jaq_json::Val::Null, 0);
    }

    fn counts(closed: &[Closed]) -> Vec<(String, i64, i64, String)> {
        closed.iter().map(|c| (c.key.to_string(), c.start, c.end, c.accs[0].result().to_string())).collect()
    }

    #[test]
    fn fixed_windows_hold_what_they_should() {
        assert_eq!(Windows::new(Window::Tumbling { size: 10 }).fixed(25), vec![(20, 30)]);
        assert_eq!(Windows::new(Window::Tumbling { size: 10 }).fixed(-1), vec![(-10, 0)]);
        assert_eq!(Windows::new(Window::Hopping { size: 30, step: 10 }).fixed(25), vec![(0, 30), (10, 40), (20, 50)]);
        assert_eq!(Windows::new(Window::Running).fixed(25), vec![FOREVER]);
    }

    #[test]
    fn the_watermark_closes_windows_in_order_of_end_then_key() {
        let mut w = Windows::new(Window::Tumbling { size: 10 });
        for (key, t) in [("b", 1), ("a", 5), ("a", 12), ("b", 9), ("a", 25)] {
            let win = w.fixed(t)[0];
            w.update(key, win, count, bump);
        }
        assert_eq!(w.open_windows(), 4);
        assert!(w.close(19, 0).iter().map(|c| &*c.key).eq(["a", "b"]));
        assert_eq!(w.close(29, 10).len(), 0, "the lateness is not past yet");
        assert_eq!(counts(&w.close(30, 10)), vec![("a".into(), 10, 20, "1".into())]);
        assert_eq!(counts(&w.close(40, 10)), vec![("a".into(), 20, 30, "1".into())]);
        assert_eq!(w.keys(), 0);
        w.update("c", (0, 10), count, bump);
        assert_eq!(counts(&w.close_all()), vec![("c".into(), 0, 10, "1".into())]);
    }

    #[test]
    fn an_event_between_two_sessions_joins_them() {
        let mut w = Windows::new(Window::Session { gap: 10 });
        for t in [0, 5, 30, 34] {
            w.update_session("k", t, count, bump);
        }
        assert_eq!(w.open_windows(), 2, "[0, 15) and [30, 44)");
        w.update_session("k", 20, count, bump);
        assert_eq!(w.open_windows(), 2, "20 is 15 after 5, and 10 (the gap) before 30: [0, 15) and [20, 44)");
        w.update_session("k", 12, count, bump);
        assert_eq!(counts(&w.close_all()), vec![("k".into(), 0, 44, "6".into())]);
    }
}
