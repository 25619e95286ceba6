//! The test harness, by concern: the [`broker`] (a real tansu on loopback, loading and reading topics), the
//! [`running`] binary (its exit code, log, children and `/metrics`), the [`checks`] on what arrived, and a replayable
//! [`random`] generator, and a [`secured`] (TLS) listener.

pub mod broker;
pub mod checks;
pub mod database;
pub mod random;
pub mod running;
pub mod secured;

pub use broker::*;
pub use checks::*;
pub use database::*;
pub use random::Random;
pub use running::*;
pub use secured::*;
