//! What a process tells about itself: its counters, the typed events that bump them and write the log lines, the
//! rate limit on those lines, the logger, and the heartbeat that shows a child is alive.
//!
//! It imports nothing of the pipeline but [`crate::position`]: everything above may use it.

pub mod counters;
pub mod events;
pub mod heartbeat;
pub mod logging;
pub mod rate_limit;
pub mod redact;
pub mod title;

pub use events::emit;

/// "1 hasher", "4 hashers": counts in messages read as English.
pub fn count(n: impl Into<u64>, thing: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_read_as_english() {
        assert_eq!(super::count(1u64, "restart"), "1 restart");
        assert_eq!(super::count(0u64, "restart"), "0 restarts");
        assert_eq!(super::count(4u32, "hasher"), "4 hashers");
    }
}
