//! Sinks: where events go.

pub mod kafka;
