//! The channels between the processes, and what travels on them: record batches down the pipeline, acknowledgements
//! back to the source, drain requests from the supervisor and reports to it.
//!
//! It knows no stage: it carries [`Record`](batch::Record)s and [`Position`](crate::position::Position)s, whatever
//! the source and sink are.

pub mod batch;
pub mod fragment;
pub mod ipc;
