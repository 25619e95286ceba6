//! The channels between the processes, and what travels on them.

pub mod batch;
pub mod ipc;
