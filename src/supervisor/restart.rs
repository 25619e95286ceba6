//! The restart policy, as pure logic: how a generation of children is going (its [`Outcome`]), and whether a failed
//! one may be restarted, after which delay (the [`RestartBudget`]).

pub use crate::backoff::Verdict;
use crate::backoff::Window;
use crate::error::Exit;
use crate::stage::{Kind, Role};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Which outcome wins when several happen: the one that tells the operator most about what to fix.
fn severity(e: Exit) -> u8 {
    match e {
        Exit::Clean => 0,
        Exit::DrainTimeout => 1,
        Exit::Failure => 2,
        Exit::GaveUp => 3,
        Exit::FastStop => 4,
        Exit::Unavailable => 5,
        Exit::Config => 6,
        Exit::TooManyDeadLetters => 7,
    }
}

/// How one generation of children is going: the worst reason to stop seen so far, and what went wrong first.
#[derive(Debug, Default)]
pub struct Outcome {
    worst: Option<Exit>,
    cause: Option<Cause>,
    /// When it first went wrong: the restart budget judges a generation by how long it ran until then, not until
    /// the drain and the restart after it.
    failed_at: Option<Instant>,
}

/// What made a generation fail, for the restart and give-up lines and the restart metrics: its first failure, unless
/// that one only said a neighbour went away and a more telling one followed (a `kill -9` of the producer reaches the
/// supervisor after the hashers' broken pipes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub text: String,
    /// Whose failure it was, when a child's.
    pub role: Option<Role>,
    /// It only said a neighbouring stage went away.
    pub peer_gone: bool,
}

impl Outcome {
    /// The exit code the generation would end with now.
    pub fn exit(&self) -> Exit {
        self.worst.unwrap_or(Exit::Clean)
    }

    /// When it first went wrong, if it did.
    pub fn failed_at(&self) -> Option<Instant> {
        self.failed_at
    }

    /// Records a reason to stop; the most severe one wins.
    pub fn record(&mut self, e: Exit) {
        if e != Exit::Clean && self.failed_at.is_none() {
            self.failed_at = Some(Instant::now());
        }
        if severity(e) > severity(self.exit()) {
            self.worst = Some(e);
        }
    }

    /// Records a failure; the first one is the generation's cause.
    pub fn fail(&mut self, e: Exit, role: Option<Role>, text: String) {
        self.record(e);
        if self.cause.as_ref().is_none_or(|c| c.peer_gone) {
            self.cause = Some(Cause { text, role, peer_gone: false });
        }
    }

    /// Records a failure that only says a neighbouring stage went away: the cause until a more telling one comes.
    pub fn peer_gone(&mut self, e: Exit, role: Option<Role>, text: String) {
        self.record(e);
        if self.cause.is_none() {
            self.cause = Some(Cause { text, role, peer_gone: true });
        }
    }

    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }
}

/// `--max-restarts` in a row, a row ending once a generation runs `--restart-window` and gets work done before
/// failing: how many restarts there have been, and whether one more may come.
#[derive(Debug)]
pub struct RestartBudget {
    window: Window,
    total: u64,
    /// Restarts by the kind of child whose failure caused them ("none" when no child's), for the metrics.
    by_cause: BTreeMap<&'static str, u64>,
}

impl RestartBudget {
    pub fn new(max: u32, window: Duration) -> RestartBudget {
        let by_cause = Kind::ALL.into_iter().map(|k| (k.label(), 0)).collect();
        RestartBudget { window: Window::new(max, window), total: 0, by_cause }
    }

    /// A generation started at `started` failed at `failed` because of `caused_by`, having committed something
    /// (`progressed`) or not: may it be restarted?
    pub fn on_failure(
        &mut self,
        failed: Instant,
        started: Instant,
        progressed: bool,
        caused_by: Option<Kind>,
    ) -> Verdict {
        let verdict = self.window.on_failure(failed, started, progressed);
        if let Verdict::Restart { .. } = verdict {
            self.total += 1;
            *self.by_cause.entry(caused_by.map_or("none", Kind::label)).or_default() += 1;
        }
        verdict
    }

    /// Restarts since the supervisor started.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Restarts by the kind of child whose failure caused them, every kind listed.
    pub fn by_cause(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.by_cause.iter().map(|(k, n)| (*k, *n))
    }

    pub fn max(&self) -> u32 {
        self.window.max()
    }

    pub fn window(&self) -> Duration {
        self.window.window()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::backoff;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_budget_gives_up_after_max_restarts_in_a_row() {
        let mut b = RestartBudget::new(2, 60 * SEC);
        let t = Instant::now();
        assert_eq!(b.on_failure(t, t, true, Some(Kind::Worker)), Verdict::Restart { delay: backoff(1), n: 1 });
        assert_eq!(b.on_failure(t + SEC, t, true, Some(Kind::Sink)), Verdict::Restart { delay: backoff(2), n: 2 });
        assert_eq!(b.on_failure(t + 2 * SEC, t + SEC, true, None), Verdict::GiveUp { n: 2 });
        assert_eq!(b.total(), 2, "giving up is no restart");
        let counted: Vec<_> = b.by_cause().collect();
        assert_eq!(counted, [("reader", 0), ("sink", 1), ("source", 0), ("worker", 1)]);
    }

    #[test]
    fn a_generation_that_lasted_the_window_starts_the_count_afresh() {
        let mut b = RestartBudget::new(1, 10 * SEC);
        let t = Instant::now();
        assert!(matches!(b.on_failure(t, t, true, None), Verdict::Restart { n: 1, .. }));
        assert!(matches!(b.on_failure(t + 5 * SEC, t + SEC, true, None), Verdict::GiveUp { n: 1 }));
        let (started, failed) = (t + 6 * SEC, t + 17 * SEC);
        assert_eq!(
            b.on_failure(failed, started, true, None),
            Verdict::Restart { delay: backoff(1), n: 1 },
            "the backoff too"
        );
        assert_eq!(b.by_cause().find(|(k, _)| *k == "none"), Some(("none", 2)));
    }

    #[test]
    fn a_neighbour_gone_is_the_cause_only_until_the_real_one_comes() {
        let mut o = Outcome::default();
        o.peer_gone(Exit::Failure, Some(Role::Worker(0)), "worker-0 failed: broken pipe".into());
        o.peer_gone(Exit::Failure, Some(Role::Worker(1)), "worker-1 failed: broken pipe".into());
        assert_eq!(o.cause().map(|c| c.role), Some(Some(Role::Worker(0))));
        o.fail(Exit::Failure, Some(Role::Sink(0)), "sink was killed by SIGKILL".into());
        o.fail(Exit::Failure, Some(Role::Source), "later".into());
        assert_eq!(
            o.cause().map(|c| (c.role, c.text.as_str())),
            Some((Some(Role::Sink(0)), "sink was killed by SIGKILL"))
        );
    }

    #[test]
    fn the_most_telling_outcome_wins_and_the_first_cause_stays() {
        let mut o = Outcome::default();
        assert_eq!(o.exit(), Exit::Clean);
        o.fail(Exit::Failure, Some(Role::Worker(1)), "worker-1 was killed".into());
        o.record(Exit::DrainTimeout);
        assert_eq!(o.exit(), Exit::Failure, "a timeout tells less than the failure");
        o.fail(Exit::Config, None, "later".into());
        assert_eq!(o.exit(), Exit::Config);
        let first = Cause { text: "worker-1 was killed".into(), role: Some(Role::Worker(1)), peer_gone: false };
        assert_eq!(o.cause(), Some(&first));
        let ranked = [
            Exit::DrainTimeout,
            Exit::Failure,
            Exit::GaveUp,
            Exit::FastStop,
            Exit::Unavailable,
            Exit::Config,
            Exit::TooManyDeadLetters,
        ];
        assert!(ranked.windows(2).all(|w| severity(w[0]) < severity(w[1])), "the documented ranking");
    }
}
