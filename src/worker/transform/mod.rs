//! The transforms a worker runs.

pub mod md5;
