//! A lookup's cache: at most `capacity` keys, each good for `ttl` after it was fetched. Keys leave in the order they
//! came (first in, first out), which with one TTL for all is also the order they expire in. A key fetched and not
//! found is cached too, as `None`, so a missing row costs one query per TTL, not one per event.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct Cache<K, V> {
    entries: HashMap<K, (Option<V>, Instant, u64)>,
    /// Keys in the order they were put, with the put's number: a key put again leaves its older turn stale.
    order: VecDeque<(K, u64)>,
    capacity: usize,
    ttl: Duration,
    puts: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    pub fn new(capacity: usize, ttl: Duration) -> Cache<K, V> {
        Cache { entries: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1), ttl, puts: 0 }
    }

    /// `Some(row or None)` when `key` was fetched less than the TTL ago; `None` when it must be fetched.
    pub fn get(&self, key: &K, now: Instant) -> Option<Option<V>> {
        let (value, at, _) = self.entries.get(key)?;
        (now.duration_since(*at) < self.ttl).then(|| value.clone())
    }

    pub fn put(&mut self, key: K, value: Option<V>, now: Instant) {
        self.puts += 1;
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let Some((oldest, n)) = self.order.pop_front() else { break };
            if self.entries.get(&oldest).is_some_and(|e| e.2 == n) {
                self.entries.remove(&oldest);
            }
        }
        self.order.push_back((key.clone(), self.puts));
        self.entries.insert(key, (value, now, self.puts));
        // Stale turns of keys put again: dropped once they outnumber the keys.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|(k, n)| entries.get(k).is_some_and(|e| e.2 == *n));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_good_for_the_ttl_and_a_missing_one_is_remembered_as_missing() {
        let t0 = Instant::now();
        let mut c: Cache<String, &str> = Cache::new(10, Duration::from_secs(5));
        c.put("1".into(), Some("alice"), t0);
        c.put("2".into(), None, t0);
        assert_eq!(c.get(&"1".to_string(), t0 + Duration::from_secs(4)), Some(Some("alice")));
        assert_eq!(c.get(&"2".to_string(), t0), Some(None), "known to be missing");
        assert_eq!(c.get(&"1".to_string(), t0 + Duration::from_secs(5)), None, "expired: fetch again");
        assert_eq!(c.get(&"3".to_string(), t0), None);
    }

    #[test]
    fn the_oldest_keys_leave_when_it_is_full() {
        let t0 = Instant::now();
        let mut c: Cache<String, &str> = Cache::new(3, Duration::from_secs(60));
        for k in ["a", "b", "c"] {
            c.put(k.into(), Some(k), t0);
        }
        c.put("a".into(), Some("A"), t0);
        c.put("d".into(), Some("d"), t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&"b".to_string(), t0), None, "b was the oldest");
        assert_eq!(c.get(&"a".to_string(), t0), Some(Some("A")), "a was put again, so it is newer than c");
        c.put("e".into(), Some("e"), t0);
        assert_eq!(c.get(&"c".to_string(), t0), None);
        assert_eq!((c.get(&"d".to_string(), t0), c.get(&"e".to_string(), t0)), (Some(Some("d")), Some(Some("e"))));
        for i in 0..100 {
            c.put("a".into(), Some("A"), t0 + Duration::from_millis(i));
        }
        assert!(c.order.len() <= 6, "stale turns do not pile up: {}", c.order.len());
    }
}
