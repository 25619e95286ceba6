//! `supervisor`: a multi-process Kafka stream transformer.
//!
//! A parent process ([`supervisor`]) forks one [`consumer`], N [`hasher`]s and one [`producer`], joined by bounded
//! [`ipc`] channels that carry [`batch`]es of records. The hashers add `"hash"` (see [`transform`]); the consumer
//! commits only offsets whose output was acknowledged (see [`watermark`]). Nothing is lost on a stop or a crash:
//! what was not committed is read again.

pub mod batch;
pub mod config;
pub mod consumer;
pub mod demo;
pub mod error;
pub mod gate;
pub mod hasher;
pub mod heartbeat;
pub mod ipc;
pub mod metrics;
pub mod notify;
pub mod process;
pub mod producer;
pub mod stats;
pub mod supervisor;
pub mod transform;
pub mod watermark;
pub mod yardstick;

pub use config::{Cli, Command, Config};
pub use error::{Error, Exit};
