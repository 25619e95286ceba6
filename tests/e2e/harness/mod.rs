//! The test harness, by concern: the [`broker`] (a real tansu on loopback, loading and reading topics), the
//! [`running`] binary (its exit code, log, children and `/metrics`), and the [`checks`] on what arrived.

pub mod broker;
pub mod checks;
pub mod running;

pub use broker::*;
pub use checks::*;
pub use running::*;
