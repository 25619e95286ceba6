//! A lane per topic and partition when the source reads several topics (`--source-topic a,b`, or a pattern
//! `^shop\..*`): the topic's number in the high bits, the partition in the low 16. The one topic of a plain source
//! is number 0, so its lanes are its partitions, as always.
//!
//! A listed topic's number is its place in the list; a topic a pattern matches gets the next number when it is first
//! assigned, in this process: lanes name positions only between the source and its sink within one run.

use crate::position::{partition_of, Lane, PARTITION_BITS};
use std::sync::{Mutex, PoisonError};

#[derive(Debug)]
pub struct TopicLanes {
    names: Mutex<Vec<String>>,
    /// Whether records carry their topic's name: only when there may be more than one.
    several: bool,
}

impl TopicLanes {
    pub fn new(listed: &[&str], pattern: bool) -> TopicLanes {
        let names = listed.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let several = pattern || names.len() > 1;
        TopicLanes { names: Mutex::new(names), several }
    }

    pub fn several(&self) -> bool {
        self.several
    }

    /// The lane of `partition` of `topic`, numbering the topic if it is new; `None` past the lanes there are (a
    /// partition above 65535, or more than 32767 topics).
    pub fn lane(&self, topic: &str, partition: i32) -> Option<Lane> {
        if !(0..1 << PARTITION_BITS).contains(&partition) {
            return None;
        }
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let i = match names.iter().position(|n| n == topic) {
            Some(i) => i,
            None => {
                names.push(topic.to_string());
                names.len() - 1
            }
        };
        let i = Lane::try_from(i).ok().filter(|&i| i < 1 << (31 - PARTITION_BITS))?;
        Some(i << PARTITION_BITS | partition)
    }

    /// The topic and partition of a lane.
    pub fn topic_of(&self, lane: Lane) -> Option<(String, i32)> {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let name = names.get(usize::try_from(lane >> PARTITION_BITS).ok()?)?;
        Some((name.clone(), partition_of(lane)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_topic_keeps_its_partitions_as_lanes() {
        let l = TopicLanes::new(&["src"], false);
        assert!(!l.several());
        assert_eq!(l.lane("src", 3), Some(3));
        assert_eq!(l.topic_of(3), Some(("src".to_string(), 3)));
    }

    #[test]
    fn several_topics_each_have_their_lanes() {
        let l = TopicLanes::new(&["a", "b"], false);
        assert!(l.several());
        assert_eq!((l.lane("a", 1), l.lane("b", 1)), (Some(1), Some(65_537)));
        let p = TopicLanes::new(&[], true);
        assert_eq!(p.lane("shop.eu", 0), Some(0));
        assert_eq!(p.lane("shop.us", 2), Some(65_538));
        assert_eq!(p.lane("shop.eu", 2), Some(2));
        assert_eq!(p.topic_of(65_538), Some(("shop.us".to_string(), 2)));
        assert_eq!(p.topic_of(3 << 16), None);
        assert_eq!(p.lane("x", 70_000), None);
        assert_eq!(partition_of(65_538), 2);
    }
}
