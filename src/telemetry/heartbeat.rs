//! A child's proof of life. The stage's own thread marks progress; a separate thread turns that into heartbeats for
//! the supervisor. A stage that stops marking progress (deadlocked, spinning, stopped, stuck in a call) falls silent,
//! and the supervisor kills and restarts it after `--child-timeout`.
//!
//! A stage blocked on an IPC peer (a full hasher, an idle consumer) still counts as alive: the peer is watched in its
//! own right, and only the one really stuck should be killed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What a stage's thread has been doing, as its heartbeat thread sees it.
pub struct Progress {
    ticks: AtomicU64,
    waiting_on_peer: AtomicUsize,
}

/// This process's stage.
pub static PROGRESS: Progress = Progress::new();

impl Progress {
    pub const fn new() -> Progress {
        Progress { ticks: AtomicU64::new(0), waiting_on_peer: AtomicUsize::new(0) }
    }

    /// The stage came round its loop.
    pub fn tick(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a call that blocks on another stage of the pipeline (an IPC send or receive).
    pub fn waiting_on_peer<T>(&self, call: impl FnOnce() -> T) -> T {
        self.waiting_on_peer.fetch_add(1, Ordering::SeqCst);
        let out = call();
        self.waiting_on_peer.fetch_sub(1, Ordering::SeqCst);
        self.tick();
        out
    }

    /// Calls `beat` every `every` while the stage shows progress or waits on a peer; stops when `beat` returns false
    /// (the supervisor is gone).
    pub fn spawn_heartbeat(
        &'static self,
        every: Duration,
        beat: impl Fn() -> bool + Send + 'static,
    ) -> std::io::Result<()> {
        std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
            let mut seen = None;
            loop {
                let now = self.ticks.load(Ordering::Relaxed);
                if seen != Some(now) || self.waiting_on_peer.load(Ordering::SeqCst) > 0 {
                    seen = Some(now);
                    if !beat() {
                        return;
                    }
                }
                std::thread::sleep(every);
            }
        })?;
        Ok(())
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// The stage came round its loop.
pub fn tick() {
    PROGRESS.tick();
}

/// Runs a call that blocks on another stage of the pipeline.
pub fn waiting_on_peer<T>(call: impl FnOnce() -> T) -> T {
    PROGRESS.waiting_on_peer(call)
}

/// How often a child beats for a given `--child-timeout`: several beats per timeout, so one late beat is no alarm,
/// and four a second at least, so that the counts the beats carry (status, metrics) are never older than that.
pub fn interval(child_timeout: Duration) -> Duration {
    (child_timeout / 6).clamp(Duration::from_millis(20), Duration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn beats_only_while_the_stage_moves_or_waits_on_a_peer() {
        static P: Progress = Progress::new();
        let beats = Arc::new(AtomicUsize::new(0));
        let counted = beats.clone();
        P.spawn_heartbeat(Duration::from_millis(5), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            true
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let idle = beats.load(Ordering::SeqCst);
        assert_eq!(idle, 1, "one beat at start, then silence without progress");
        for _ in 0..10 {
            P.tick();
            std::thread::sleep(Duration::from_millis(10));
        }
        let moving = beats.load(Ordering::SeqCst);
        assert!(moving >= idle + 4, "progress makes beats: {idle} -> {moving}");
        P.waiting_on_peer(|| std::thread::sleep(Duration::from_millis(60)));
        assert!(beats.load(Ordering::SeqCst) >= moving + 4, "waiting on a peer is alive");
    }

    #[test]
    fn several_beats_fit_in_a_timeout() {
        assert_eq!(interval(Duration::from_secs(30)), Duration::from_millis(250));
        assert_eq!(interval(Duration::from_millis(600)), Duration::from_millis(100));
        assert_eq!(interval(Duration::from_millis(10)), Duration::from_millis(20));
    }
}
