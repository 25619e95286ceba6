//! What the supervisor observes and reports: the whole run's counts, the status line and the summary, Prometheus
//! metrics, and systemd's notify protocol. None of it decides anything.

pub mod counts;
pub mod metrics;
pub mod notify;
pub mod status;
