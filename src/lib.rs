//! `supervisor`: a multi-process Kafka stream transformer.
//!
//! A parent process ([`supervisor`]) forks one source, N workers and one sink ([`stage`]), joined by bounded
//! [`channel`]s that carry batches of records. Today the [`source`] is a Kafka consumer, the [`worker`]s are hashers
//! that add `"hash"`, and the [`sink`] is a Kafka producer. The source commits only positions whose output was
//! acknowledged. Nothing is lost on a stop or a crash: what was not committed is read again.

pub mod aggregate;
pub mod backoff;
pub mod channel;
pub mod config;
pub mod error;
pub mod kafka;
pub mod position;
pub mod secret_file;
pub mod sink;
pub mod source;
pub mod sql;
pub mod stage;
pub mod supervisor;
pub mod telemetry;
pub mod tools;
pub mod worker;

pub use config::{Cli, Command, Config};
pub use error::{Error, Exit};
