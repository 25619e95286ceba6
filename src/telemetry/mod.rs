//! What each process counts, and how a child shows it is alive.

pub mod counters;
pub mod heartbeat;
