//! What the supervisor observes and reports.

pub mod metrics;
pub mod notify;
