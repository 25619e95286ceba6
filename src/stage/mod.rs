//! What every child process shares.

pub mod child;
