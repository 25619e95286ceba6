//! When dead letters stop being the odd bad event: the `--max-dead-letters` rule, as pure logic.
//!
//! A sink tells the [`Judge`] each event's fate, written or dead-lettered (with its reason), in the order it learns
//! them. A share (`10%`, the default) is judged over the last [`WINDOW`] fates, once [`MIN_SAMPLE`] are in: "every row
//! refused" stops the pipeline within the first hundred events, while a bad event in a thousand never does. A count
//! (`500`) allows that many dead letters in all, since the sink started; `off` never stops.

pub use crate::config::MaxDeadLetters;
use crate::position::Position;
use std::collections::{HashMap, VecDeque};

pub use crate::config::dead_letters::WINDOW;
/// Fates a share waits for before it judges: fewer say little.
pub const MIN_SAMPLE: usize = 100;
/// Distinct reasons tallied; beyond that, new ones are counted but not told apart.
const REASONS: usize = 64;

/// A reason as seen so far: how often, and the first event it was given for.
#[derive(Debug, Clone)]
struct Seen {
    times: u64,
    example: String,
    at: Position,
}

/// What the sink has seen, and whether it is too much.
#[derive(Debug)]
pub struct Judge {
    limit: MaxDeadLetters,
    /// The last [`WINDOW`] fates, `true` for a dead letter.
    window: VecDeque<bool>,
    dead_in_window: usize,
    dead: u64,
    /// By reason with its particulars (quoted values, numbers) blanked, so "Incorrect datetime value: '…' at row N"
    /// is one reason however many rows had it.
    reasons: HashMap<String, Seen>,
}

/// The verdict that stops the pipeline: how many, against which limit, and the reason most given.
#[derive(Debug, Clone, PartialEq)]
pub struct TooMany {
    pub dead: u64,
    /// Of how many recent events (a share), or `None` for a count.
    pub of: Option<u64>,
    pub limit: MaxDeadLetters,
    pub reason: String,
    pub times: u64,
    pub at: Position,
}

impl TooMany {
    /// The line that says why the pipeline stopped; `at` names the example event's position in the source's terms.
    pub fn describe(&self, at: &str) -> String {
        let how_many = match self.of {
            Some(of) => {
                // One decimal where a whole number would round down to the limit itself (10.3% is not "10%").
                let share = self.dead as f64 * 100.0 / of.max(1) as f64;
                let share = if share.fract() < 0.05 { format!("{share:.0}") } else { format!("{share:.1}") };
                format!(
                    "{} of the last {of} events were dead-lettered ({share}%, more than --max-dead-letters {})",
                    self.dead, self.limit
                )
            }
            None => format!("{} events were dead-lettered (more than --max-dead-letters {})", self.dead, self.limit),
        };
        format!(
            "{how_many}; most often ({} times): {}; e.g. the event at {at}. Nothing after the stop is committed: fix the \
             cause (or raise --max-dead-letters) and run again",
            self.times, self.reason
        )
    }
}

impl Judge {
    pub fn new(limit: MaxDeadLetters) -> Judge {
        Judge { limit, window: VecDeque::new(), dead_in_window: 0, dead: 0, reasons: HashMap::new() }
    }

    /// `n` events were written where they belong.
    pub fn written(&mut self, n: u64) {
        if let MaxDeadLetters::Share(_) = self.limit {
            for _ in 0..n.min(WINDOW as u64) {
                self.push(false);
            }
        }
    }

    /// One event was dead-lettered, for `reason`. An aggregation's late event is not judged: it follows the rule
    /// `--lateness` set, however many there are, and says nothing about whether the pipeline works.
    pub fn dead_lettered(&mut self, reason: &str, at: Position) {
        if self.limit == MaxDeadLetters::Off || reason == crate::aggregate::LATE {
            return;
        }
        self.dead += 1;
        if let MaxDeadLetters::Share(_) = self.limit {
            self.push(true);
        }
        let kind = blank_particulars(reason);
        if let Some(seen) = self.reasons.get_mut(&kind) {
            seen.times += 1;
        } else if self.reasons.len() < REASONS {
            self.reasons.insert(kind, Seen { times: 1, example: reason.to_string(), at });
        }
    }

    fn push(&mut self, dead: bool) {
        if self.window.len() == WINDOW && self.window.pop_front() == Some(true) {
            self.dead_in_window -= 1;
        }
        self.window.push_back(dead);
        self.dead_in_window += usize::from(dead);
    }

    /// Whether the dead letters so far are past the limit.
    pub fn verdict(&self) -> Option<TooMany> {
        let (dead, of) = match self.limit {
            MaxDeadLetters::Off => return None,
            MaxDeadLetters::Count(n) if self.dead > n => (self.dead, None),
            MaxDeadLetters::Count(_) => return None,
            MaxDeadLetters::Share(p) => {
                let (dead, of) = (self.dead_in_window, self.window.len());
                if of < MIN_SAMPLE || dead as f64 * 100.0 <= p * of as f64 {
                    return None;
                }
                (dead as u64, Some(of as u64))
            }
        };
        let most = self.reasons.values().max_by_key(|s| s.times)?;
        Some(TooMany { dead, of, limit: self.limit, reason: most.example.clone(), times: most.times, at: most.at })
    }
}

/// The reason with what varies from event to event taken out: quoted text and numbers.
fn blank_particulars(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut quote: Option<char> = None;
    let mut digits = false;
    for c in reason.chars() {
        if let Some(q) = quote {
            if c == q {
                out.push(c);
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => {
                out.push(c);
                out.push('…');
                quote = Some(c);
                digits = false;
            }
            '0'..='9' => {
                if !digits {
                    out.push('N');
                }
                digits = true;
            }
            c => {
                out.push(c);
                digits = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Position {
        Position::new(0, seq as i64)
    }

    #[test]
    fn every_event_refused_is_stopped_at_the_first_hundred() {
        let mut j = Judge::new(MaxDeadLetters::default());
        for i in 0..99 {
            j.dead_lettered(&format!("Incorrect datetime value: '2024-03-{i}' for column 'at' at row {i}"), at(i));
            assert_eq!(j.verdict(), None, "judged before {MIN_SAMPLE} fates");
        }
        j.dead_lettered("Incorrect datetime value: '2024-04-01' for column 'at' at row 1", at(99));
        let v = j.verdict().expect("100 of 100 refused");
        assert_eq!((v.dead, v.of, v.times, v.at), (100, Some(100), 100, at(0)));
        assert_eq!(v.reason, "Incorrect datetime value: '2024-03-0' for column 'at' at row 0");
        let line = v.describe("partition 0 offset 0");
        assert!(line.starts_with("100 of the last 100 events were dead-lettered (100%, more than"), "{line}");
        assert!(line.contains("e.g. the event at partition 0 offset 0."), "{line}");
    }

    #[test]
    fn the_odd_bad_event_never_stops_it() {
        let mut j = Judge::new(MaxDeadLetters::default());
        for i in 0..100_000u64 {
            if i % 1000 == 999 {
                j.dead_lettered("not JSON", at(i));
            } else {
                j.written(1);
            }
            assert_eq!(j.verdict(), None);
        }
        // A burst of a few in a row is still under a tenth of the window.
        for i in 0..50 {
            j.dead_lettered("not JSON", at(i));
        }
        assert_eq!(j.verdict(), None);
    }

    #[test]
    fn a_share_is_judged_over_the_recent_events_only() {
        let mut j = Judge::new(MaxDeadLetters::Share(10.0));
        j.written(10_000);
        for i in 0..100 {
            j.dead_lettered("refused", at(i));
        }
        assert_eq!(j.verdict(), None, "100 of the last 1000 is 10%, not more");
        j.dead_lettered("refused", at(100));
        assert_eq!(j.verdict().map(|v| (v.dead, v.of)), Some((101, Some(1000))));
        j.written(1000);
        assert_eq!(j.verdict(), None, "recovered: the window holds written events only");
    }

    #[test]
    fn a_count_allows_that_many_in_all_and_off_never_stops() {
        let mut j = Judge::new(MaxDeadLetters::Count(2));
        j.dead_lettered("a", at(1));
        j.written(1_000_000);
        j.dead_lettered("b", at(2));
        assert_eq!(j.verdict(), None);
        j.dead_lettered("b", at(3));
        let v = j.verdict().expect("3 > 2");
        assert_eq!((v.dead, v.of, v.reason.as_str(), v.times), (3, None, "b", 2));
        let mut off = Judge::new(MaxDeadLetters::Off);
        for i in 0..1000 {
            off.dead_lettered("x", at(i));
        }
        assert_eq!(off.verdict(), None);
    }

    #[test]
    fn reasons_are_told_apart_without_their_particulars() {
        assert_eq!(
            blank_particulars("Incorrect datetime value: '2024-03-10T10:41:00+00:00' for column `at` at row 17"),
            "Incorrect datetime value: '…' for column `…` at row N"
        );
        assert_eq!(
            blank_particulars("jq: error: 12 and \"x\" cannot be added"),
            "jq: error: N and \"…\" cannot be added"
        );
    }
}
