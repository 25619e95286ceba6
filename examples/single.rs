//! The single-process yardstick for `scripts/bench`: the same transform and client settings as `supervisor`, in one
//! thread, with no IPC (see `supervisor::yardstick`). Takes the same flags; `--hashers` and `--queue-capacity` are
//! ignored.
//!
//!     cargo run --release --example single -- --brokers 127.0.0.1:9092

use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use supervisor::tools::yardstick;
use supervisor::{Cli, Config};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::from_cli(&Cli::parse());
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    yardstick::run(&cfg, &|| stop.load(Ordering::Relaxed))?;
    Ok(())
}
