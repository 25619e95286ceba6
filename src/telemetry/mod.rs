//! What a process tells about itself: its counters, the typed events that bump them and write the log lines, the
//! rate limit on those lines, the logger, and the heartbeat that shows a child is alive.
//!
//! It imports nothing of the pipeline but [`crate::position`]: everything above may use it.

pub mod counters;
pub mod events;
pub mod heartbeat;
pub mod logging;
pub mod rate_limit;

pub use events::emit;
