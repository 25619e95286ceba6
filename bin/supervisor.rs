//! The `supervisor` command: parse flags, then hand over to the library. Exit codes are listed in `--help`.

use supervisor::supervisor::{Signals, Supervisor};
use supervisor::{Cli, Command, Config, Exit};

fn main() {
    let cli = Cli::parse_with_file();
    if cli.print_config {
        print!("{}", Config::from_cli(&cli).describe());
        return;
    }
    supervisor::telemetry::logging::init(cli.log_level.as_deref());
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            std::process::exit(Exit::Failure.code());
        }
    };
    let exit = match &cli.command {
        None => Supervisor::run(Config::from_cli(&cli), signals),
        Some(Command::Demo(args)) => supervisor::tools::demo::run(&cli, args, signals),
    };
    std::process::exit(exit.code());
}
