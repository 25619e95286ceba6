//! Event time, as pure logic: each lane's watermark, the pipeline's, idle lanes, and what is late.
//!
//! A lane's watermark is the largest event time it has shown. The pipeline's is the smallest over the lanes that are
//! not idle, and never moves back. A lane the source was assigned but that has shown no event yet holds it back
//! until it has been idle for `idle` (as Flink's idleness works), so a partition that starts a little later does not
//! find its first windows closed. An event is late when its lane's watermark or the pipeline's already passed its
//! window's end plus the lateness: judged on its lane's own order, so a replay after a crash judges it the same way.

use crate::position::Lane;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneClock {
    /// The largest event time seen, if any.
    pub mark: Option<i64>,
    /// When it last showed an event, or was assigned.
    active: Instant,
    /// Whether the source holds it now: a lane let go keeps its mark (lateness on it is judged as before if it
    /// comes back) but holds nothing back.
    held: bool,
}

#[derive(Debug)]
pub struct Clock {
    lanes: BTreeMap<Lane, LaneClock>,
    watermark: Option<i64>,
    idle: Duration,
}

impl Clock {
    pub fn new(idle: Duration) -> Clock {
        Clock { lanes: BTreeMap::new(), watermark: None, idle }
    }

    /// The pipeline's watermark and each lane's as saved, put back (a restored lane counts as just active).
    pub fn restore(
        &mut self,
        watermark: Option<i64>,
        lanes: impl IntoIterator<Item = (Lane, Option<i64>)>,
        now: Instant,
    ) {
        self.watermark = watermark;
        for (lane, mark) in lanes {
            self.lanes.insert(lane, LaneClock { mark, active: now, held: true });
        }
    }

    /// The lanes of one worker the source now holds, `all_lanes_of` telling which known lanes are that worker's:
    /// new ones hold the watermark back until they show events or go idle; lanes let go no longer count.
    pub fn assigned(&mut self, lanes: &[Lane], of_this_worker: impl Fn(Lane) -> bool, now: Instant) {
        for (l, c) in self.lanes.iter_mut() {
            if of_this_worker(*l) && !lanes.contains(l) {
                c.held = false;
            }
        }
        for &lane in lanes {
            let c = self.lanes.entry(lane).or_insert(LaneClock { mark: None, active: now, held: true });
            if !c.held {
                c.held = true;
                c.active = now;
            }
        }
    }

    /// Whether an event at `t` is late for a window ending at `end`: judged before the event moves its lane.
    pub fn late(&self, lane: Lane, end: i64, lateness: i64) -> bool {
        let lane_mark = self.lanes.get(&lane).and_then(|l| l.mark);
        let seen = lane_mark.max(self.watermark);
        seen.is_some_and(|m| end.saturating_add(lateness) <= m)
    }

    /// An event at `t` on `lane`.
    pub fn saw(&mut self, lane: Lane, t: i64, now: Instant) {
        let l = self.lanes.entry(lane).or_insert(LaneClock { mark: None, active: now, held: true });
        l.mark = Some(l.mark.map_or(t, |m| m.max(t)));
        l.active = now;
        l.held = true;
    }

    /// The pipeline's watermark now: the smallest over lanes not idle; `None` while a lane that is not idle has shown
    /// nothing (and nothing was ever settled).
    pub fn advance(&mut self, now: Instant) -> Option<i64> {
        let mut lowest: Option<i64> = None;
        let mut any = false;
        for l in self.lanes.values() {
            if !l.held || now.saturating_duration_since(l.active) >= self.idle {
                continue;
            }
            match l.mark {
                None => return self.watermark,
                Some(m) => lowest = Some(lowest.map_or(m, |low: i64| low.min(m))),
            }
            any = true;
        }
        if any {
            self.watermark = self.watermark.max(lowest);
        }
        self.watermark
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Each lane's watermark, for saving.
    pub fn marks(&self) -> impl Iterator<Item = (Lane, Option<i64>)> + '_ {
        self.lanes.iter().map(|(l, c)| (*l, c.mark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_lane_holds_the_watermark_and_an_idle_one_does_not() {
        let t0 = Instant::now();
        let mut c = Clock::new(Duration::from_secs(30));
        c.assigned(&[0, 1], |_| true, t0);
        c.saw(0, 100, t0);
        assert_eq!(c.advance(t0), None, "lane 1 has shown nothing yet");
        c.saw(1, 40, t0);
        assert_eq!(c.advance(t0), Some(40));
        c.saw(1, 10, t0);
        assert_eq!(c.advance(t0), Some(40), "never back");
        assert_eq!(c.advance(t0 + Duration::from_secs(31)), Some(40), "all idle: nothing moves");
        c.saw(0, 120, t0 + Duration::from_secs(31));
        assert_eq!(c.advance(t0 + Duration::from_secs(31)), Some(120), "lane 1 is idle");
        c.assigned(&[0], |_| true, t0);
        c.saw(0, 130, t0);
        assert_eq!(c.advance(t0), Some(130), "lane 1 let go");
    }

    #[test]
    fn a_lane_let_go_keeps_its_mark_and_holds_nothing_back() {
        let t0 = Instant::now();
        let mut c = Clock::new(Duration::from_secs(30));
        c.assigned(&[0, 1], |_| true, t0);
        c.saw(0, 100, t0);
        c.saw(1, 50, t0);
        c.assigned(&[0], |_| true, t0);
        assert_eq!(c.advance(t0), Some(100), "lane 1 no longer holds the watermark back");
        assert!(c.late(1, 40, 0), "its own mark still judges its events");
        assert_eq!(c.marks().collect::<Vec<_>>(), [(0, Some(100)), (1, Some(50))]);
    }

    #[test]
    fn late_is_judged_on_the_lane_before_the_pipeline_catches_up() {
        let t0 = Instant::now();
        let mut c = Clock::new(Duration::from_secs(30));
        c.assigned(&[0, 1], |_| true, t0);
        c.saw(0, 100, t0);
        assert!(c.late(0, 100, 0), "its lane is at 100: the window [90, 100) is closed to it");
        assert!(!c.late(0, 100, 1), "within the lateness");
        assert!(!c.late(1, 100, 0), "lane 1 is behind");
        c.saw(1, 50, t0);
        c.advance(t0);
        assert!(c.late(1, 50, 0), "the pipeline is at 50");
    }
}
