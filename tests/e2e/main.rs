//! End to end: the built binary, run as a user would run it, against real servers that the harness starts on free
//! loopback ports (tansu for Kafka; librdkafka's mock cluster only for faults a real broker cannot stage). The tests
//! assert what users care about: what arrived and with which content, what was committed, the exit code.
//!
//! `cargo test --test e2e faults::` runs one file's tests.

mod harness;

mod branches;
mod cli;
mod create_table;
mod db_tls;
mod demo;
mod faults;
mod follow;
mod install;
mod lookups;
mod outcomes;
mod pipeline;
mod readme;
mod real_tables;
mod secured;
mod service;
mod tables;
mod transforms;
mod union;
mod windows;
