//! The `supervisor` command: parse flags, then hand over to the library. Exit codes are listed in `--help`.

use supervisor::config::{DemoArgs, DemoCommand};
use supervisor::supervisor::{Signals, Supervisor};
use supervisor::telemetry::logging;
use supervisor::{Cli, Command, Config, Exit};

/// Every stage allocates and frees a few small buffers per event, across batches; glibc's allocator spent a third of
/// the workers' and the sink's CPU doing so.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // First of all: a SIGINT or SIGTERM from now on is a request to stop, never the default instant death.
    let signals = Signals::install();
    let cli = Cli::parse_with_file();
    // Before any fork or thread: no `ps` line shows a password that came in an argument.
    let _ = supervisor::telemetry::title::mask_secrets();
    if cli.print_config {
        print!("{}", supervisor::telemetry::redact::mask(&Config::from_cli(&cli).describe()));
        return;
    }
    logging::init(cli.log_level.as_deref());
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            std::process::exit(Exit::Failure.code());
        }
    };
    let exit = match &cli.command {
        None => Supervisor::run(Config::from_cli(&cli), signals),
        Some(Command::Demo(DemoArgs { what: Some(DemoCommand::Sql(args)), .. })) => {
            supervisor::tools::demo_sql::run(&cli, args, signals)
        }
        Some(Command::Demo(DemoArgs { what: Some(DemoCommand::Window(args)), .. })) => {
            supervisor::tools::demo_window::run(&cli, args, signals)
        }
        Some(Command::Demo(DemoArgs { what: Some(DemoCommand::Branch(args)), .. })) => {
            supervisor::tools::demo_branch::run(&cli, args, signals)
        }
        Some(Command::Demo(DemoArgs { what: Some(DemoCommand::Cdc(args)), .. })) => {
            supervisor::tools::demo_cdc::run(&cli, args, signals)
        }
        Some(Command::Demo(args)) => supervisor::tools::demo::run(&cli, args, signals),
    };
    std::process::exit(exit.code());
}
