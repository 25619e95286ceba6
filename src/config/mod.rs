//! The command-line contract, its environment variables, and the librdkafka client configurations built from it.

mod file;
pub mod librdkafka;
mod secret;
mod topics;
mod transform;

use crate::sql::url::TableUrl;
use crate::telemetry::redact;
use clap::{Parser, Subcommand};
use file::{FileFlag, FileSettings};
use rdkafka::config::ClientConfig;
pub use secret::{is_secret, read_value, Property};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
pub use transform::{ExecSpec, JqSpec, TransformSpec};

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  clean drain (or a finished table scan): every event taken in delivered and committed
  1  failure: the supervisor itself failed, or it was stopped while recovering from a crash
  2  configuration error: bad flag or -X property, missing topic, table or column, credentials refused by the
     brokers or the database
  3  the brokers or the database could not be reached at start-up
  4  the drain did not finish within --drain-timeout (uncommitted events are re-read on the next start)
  5  fast stop: a second SIGINT/SIGTERM during the drain (uncommitted events are re-read on the next start)
  6  gave up: children failed more than --max-restarts times in a row (a run of --restart-window without a failure
     starts the count afresh)
  7  too many dead letters: more than --max-dead-letters (what was written or dead-lettered before the stop is
     committed, nothing after it)";

/// This build's version, and what its Kafka client can do (TLS, SASL mechanisms, codecs), to check before deploying.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| format!("{}\n{}", env!("CARGO_PKG_VERSION"), librdkafka::describe()))
}

/// Consume JSON events, transform them in N worker processes, produce them on. The default transform adds "hash" (md5
/// hex of the raw bytes); --jq runs a jq filter, --exec your own program.
///
/// At-least-once: an offset is committed only after the output event (or its dead-letter copy) was acknowledged by
/// the brokers. The first SIGINT/SIGTERM drains every queue and exits 0; a second one stops at once.
#[derive(Parser, Debug, Clone)]
#[command(name = "supervisor", version = version(), after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, env = "SUPERVISOR_BROKERS", default_value = "localhost:9092", value_name = "HOST:PORT,...")]
    pub brokers: String,

    /// Topic to read JSON events from.
    #[arg(long, env = "SUPERVISOR_SOURCE_TOPIC", default_value = "name_stream", value_name = "TOPIC")]
    pub source_topic: String,

    /// Topic to write hashed events to.
    #[arg(long, env = "SUPERVISOR_DEST_TOPIC", default_value = "name_stream_transformed", value_name = "TOPIC")]
    pub dest_topic: String,

    /// Consumer group; run more instances with the same group to spread the partitions across machines.
    #[arg(long, env = "SUPERVISOR_GROUP_ID", default_value = "supervisor", value_name = "GROUP")]
    pub group_id: String,

    /// Worker processes (worker-N), each running the transform: md5, --jq or --exec [default: the number of CPUs].
    #[arg(global = true, long, env = "SUPERVISOR_HASHERS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub hashers: Option<u16>,

    /// Most events in flight between the source and the sink's acknowledgements; a full pipeline holds the source
    /// back.
    #[arg(global = true, long, env = "SUPERVISOR_QUEUE_CAPACITY", default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub queue_capacity: u32,

    /// Topic for events that are not JSON objects [default: <dest-topic>.dlq]; created if missing.
    #[arg(long, env = "SUPERVISOR_DLQ_TOPIC", value_name = "TOPIC")]
    pub dlq_topic: Option<String>,

    /// Seconds a drain may take after the first SIGINT/SIGTERM before the pipeline is stopped anyway.
    #[arg(global = true, long, env = "SUPERVISOR_DRAIN_TIMEOUT", default_value = "30", value_name = "SECS",
          value_parser = parse_seconds)]
    pub drain_timeout: Duration,

    /// Restarts allowed in a row; one more failure and the supervisor drains and exits 6. 0 never restarts.
    #[arg(global = true, long, env = "SUPERVISOR_MAX_RESTARTS", default_value_t = 5, value_name = "N")]
    pub max_restarts: u32,

    /// Seconds a restarted pipeline (or --exec command) must run, getting work done, without failing for
    /// --max-restarts to count afresh.
    #[arg(global = true, long, env = "SUPERVISOR_RESTART_WINDOW", default_value = "60", value_name = "SECS",
          value_parser = parse_seconds)]
    pub restart_window: Duration,

    /// Seconds a child may go without a heartbeat before it is deemed hung, killed (SIGABRT, then SIGKILL) and
    /// restarted.
    #[arg(global = true, long, env = "SUPERVISOR_CHILD_TIMEOUT", default_value = "30", value_name = "SECS",
          value_parser = parse_seconds)]
    pub child_timeout: Duration,

    /// Seconds between status lines (rates, in flight, lag, restarts) [default: 1 on a terminal, where the line is
    /// redrawn in place; 30 otherwise, as a log line].
    #[arg(global = true, long, env = "SUPERVISOR_STATUS_INTERVAL", value_name = "SECS", value_parser = parse_seconds)]
    pub status_interval: Option<Duration>,

    /// Serve Prometheus metrics on http://HOST:PORT/metrics (port 0 picks a free one, and the log says which)
    /// [default: off].
    #[arg(global = true, long, env = "SUPERVISOR_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// Log filter in env_logger's syntax (error, warn, info, debug, or per module: info,librdkafka=debug); wins over
    /// RUST_LOG [default: info].
    #[arg(global = true, long, env = "SUPERVISOR_LOG_LEVEL", value_name = "FILTER", value_parser = parse_log_filter)]
    pub log_level: Option<String>,

    /// Transform: a jq filter (jaq), compiled once per worker. Each value it outputs is one output event; none filters
    /// the event out. Adds md5, sha256 and hmac_sha256 (keyed: --hmac-key-file); $meta is the event's key, partition,
    /// offset, timestamp and headers [default: add "hash", the md5 hex of the event's bytes].
    #[arg(global = true, long, env = "SUPERVISOR_JQ", value_name = "FILTER")]
    pub jq: Option<String>,

    /// Transform: the jq filter in FILE.
    #[arg(global = true, long, env = "SUPERVISOR_JQ_FILE", value_name = "FILE")]
    pub jq_file: Option<PathBuf>,

    /// Transform: your own program, one per worker, started without a shell (words split as a shell would). It reads
    /// one JSON event per line on stdin and writes one line back per event: an object, or an array of zero or more.
    #[arg(global = true, long, env = "SUPERVISOR_EXEC", value_name = "COMMAND")]
    pub exec: Option<String>,

    /// Seconds an --exec command may take to reply to an event before it is killed and restarted.
    #[arg(global = true, long, env = "SUPERVISOR_EXEC_TIMEOUT", default_value = "30", value_name = "SECS",
          value_parser = parse_seconds)]
    pub exec_timeout: Duration,

    /// File holding the key of hmac_sha256 in --jq filters; a relative path is looked up in $CREDENTIALS_DIRECTORY.
    /// Or the key itself in the environment variable SUPERVISOR_HMAC_KEY; never on the command line.
    #[arg(global = true, long, env = "SUPERVISOR_HMAC_KEY_FILE", value_name = "FILE")]
    pub hmac_key_file: Option<PathBuf>,

    /// Most events per second taken from the source, for destinations that cannot take more [default: no limit].
    #[arg(global = true, long, env = "SUPERVISOR_MAX_RATE", value_name = "EVENTS_PER_SECOND",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_rate: Option<u64>,

    /// The transform the flags above chose, their files read.
    #[arg(skip)]
    pub transform: TransformSpec,

    /// Read a database table instead of --source-topic: postgres://USER@HOST/DB?table=T, mysql://USER@HOST/DB?table=T or
    /// sqlite:PATH?table=T; key=COLUMN (default: the primary key) orders and splits the scan, columns=A,B picks
    /// columns. The scan ends when every row is delivered. password=@FILE reads the password from a file (relative:
    /// in $CREDENTIALS_DIRECTORY); PostgreSQL also reads PGPASSWORD and ~/.pgpass. TLS: sslmode=verify-full and
    /// sslrootcert=CA.pem (PostgreSQL), ssl-mode=VERIFY_IDENTITY and ssl-ca=CA.pem (MySQL).
    #[arg(long, env = "SUPERVISOR_SOURCE", value_name = "URL")]
    pub source: Option<String>,

    /// Write to a database table instead of --dest-topic, as upserts on its primary key (or key=COLUMN): the event's
    /// top-level fields go to the columns of the same name.
    #[arg(long, env = "SUPERVISOR_SINK", value_name = "URL")]
    pub sink: Option<String>,

    /// Where a table scan keeps its per-chunk checkpoints: sqlite:PATH, or a postgres:// or mysql:// database that
    /// several instances share [default: sqlite:<state-dir>/checkpoints.db].
    #[arg(long, env = "SUPERVISOR_CHECKPOINT", value_name = "URL")]
    pub checkpoint: Option<String>,

    /// Directory for the default checkpoint store [default: $STATE_DIRECTORY, else ~/.local/state/supervisor].
    #[arg(global = true, long, env = "SUPERVISOR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Reader processes of a table scan (reader-N), each with its own connection, each reading one chunk at a time.
    #[arg(global = true, long, env = "SUPERVISOR_READERS", default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub readers: u16,

    /// Rows per chunk of a table scan: the unit that readers claim and checkpoints track.
    #[arg(global = true, long, env = "SUPERVISOR_CHUNK_ROWS", default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub chunk_rows: u64,

    /// Attempts of a failed database statement (with exponential backoff) before the stage fails and the restart
    /// policy takes over.
    #[arg(global = true, long, env = "SUPERVISOR_MAX_RETRIES", default_value_t = 10, value_name = "N")]
    pub max_retries: u32,

    /// Seconds a claimed chunk stays this instance's without a checkpoint or renewal; after that another instance
    /// sharing the --checkpoint store may take it over.
    #[arg(global = true, long, env = "SUPERVISOR_CHUNK_LEASE", default_value = "30", value_name = "SECS",
          value_parser = parse_seconds)]
    pub chunk_lease: Duration,

    /// Create the --sink table if it does not exist, from the first events: a column per top-level field, typed by its
    /// value; the key (?key=COLUMN, required) its primary key.
    #[arg(long, env = "SUPERVISOR_CREATE_TABLE")]
    pub create_table: bool,

    /// Start the table scan over, forgetting its checkpoints (a finished scan otherwise stays finished).
    #[arg(long)]
    pub rescan: bool,

    /// When dead letters mean something is wrong, not an odd bad event: a share of the last 1000 events written or
    /// dead-lettered (judged from the 100th), a count in all, or off. Past it the pipeline stops with exit 7.
    #[arg(
        global = true,
        long,
        env = "SUPERVISOR_MAX_DEAD_LETTERS",
        default_value = "10%",
        value_name = "SHARE%|N|off"
    )]
    pub max_dead_letters: crate::sink::refusals::MaxDeadLetters,

    /// The tables the URLs above name.
    #[arg(skip)]
    pub tables: Tables,

    /// A TOML file of settings: the long flag names as keys (brokers = "k1:9092", hashers = 4), and librdkafka
    /// properties in a [kafka] table. Flags win over environment variables, which win over the file.
    #[arg(global = true, long, env = "SUPERVISOR_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// A librdkafka property for both clients, kcat style; `consumer.K=V` or `producer.K=V` reach one client.
    /// Repeatable; a value may be read from a file: K=@PATH. In the environment: SUPERVISOR_KAFKA_CONFIG, entries
    /// separated by ';'.
    #[arg(global = true, short = 'X', value_name = "KEY=VALUE", value_parser = PropertyParser)]
    pub properties: Vec<(String, String)>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the whole pipeline on an embedded Kafka (librdkafka's mock cluster): no broker to install. `demo sql`
    /// runs a table scan on embedded SQLite instead.
    Demo(DemoArgs),
}

#[derive(Subcommand, Debug, Clone)]
pub enum DemoCommand {
    /// The article's SQL pipeline on embedded SQLite, no server: SOURCE(VALUE) 1..N → sqrt (a jq filter) →
    /// DESTINATION(VALUE, ROOT), then every row checked. Ctrl-C stops it; running it again resumes.
    Sql(SqlDemoArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SqlDemoArgs {
    /// Rows in SOURCE.
    #[arg(long, default_value_t = crate::tools::demo_sql::DEFAULT_ROWS, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub rows: u64,

    /// Where the demo's database and checkpoints live [default: <state-dir>/demo-sql].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    /// Events the generator writes before the demo drains and checks the result; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub events: u64,

    /// Events per second the generator writes; 0 is as fast as it can.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rate: u64,

    /// Extra bytes of padding in every event (a "note" field), for heavier events.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub pad: usize,

    /// Run the same transform in this one process, with no hashers or IPC: the yardstick benchmarks compare against.
    #[arg(long)]
    pub single_process: bool,

    /// Partitions of the demo topics.
    #[arg(long, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: i32,

    /// Not the demo's: it runs its own embedded Kafka. Taken only to say so, rather than have clap suggest --readers.
    #[arg(long, hide = true, value_name = "HOST:PORT")]
    pub brokers: Option<String>,

    #[command(subcommand)]
    pub what: Option<DemoCommand>,
}

/// The flags a config file may set, by long name, with the environment variable that carries each into the parser:
/// every flag that has one, except `--config` itself.
pub fn file_keys() -> Vec<(String, String)> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter(|a| a.get_id() != "config")
        .filter_map(|a| Some((a.get_long()?.to_string(), a.get_env()?.to_string_lossy().into_owned())))
        .collect()
}

/// Why the settings were refused.
#[derive(Debug)]
pub enum Invalid {
    /// A flag typed on the command line (or `--help`, `--version`): clap says it best.
    Flag(clap::Error),
    /// A setting from the environment or the config file, or a value file that cannot be read; the message names
    /// where it came from.
    Setting(String),
}

impl Cli {
    /// Parses the command line, with the config file and the environment under it; on a bad setting it prints what
    /// and where, and exits 2 (help and version exit 0).
    pub fn parse_with_file() -> Cli {
        match Cli::load(std::env::args_os().collect()) {
            Ok(cli) => cli,
            Err(Invalid::Flag(e)) => e.exit(),
            Err(Invalid::Setting(message)) => {
                eprintln!("error: {}", redact::mask(&message));
                std::process::exit(2);
            }
        }
    }

    /// `--dlq-topic`, or the destination topic's name with `.dlq` added.
    fn dead_letter_topic(&self) -> String {
        self.dlq_topic.clone().unwrap_or_else(|| format!("{}.dlq", self.dest_topic))
    }

    /// Reads the config file first if there is one: its settings go in only where neither a flag nor an environment
    /// variable says otherwise. Then reads `@file` property values, and registers every secret value for masking.
    ///
    /// It sets environment variables for the file's settings, so it runs once, while the process is single-threaded.
    pub fn load(args: Vec<OsString>) -> Result<Cli, Invalid> {
        let file = match config_path(&args) {
            Some(path) => Some(FileSettings::read(&path, &file_keys()).map_err(Invalid::Setting)?),
            None => None,
        };
        // The transform is one choice: the level that names one (flags, then the environment, then the file) makes
        // it, and the levels under it are not asked, so `--jq` wins over `exec` in the file.
        let keys = file_keys();
        let transform_env = |long: &str| keys.iter().find(|(l, _)| l == long).map(|(_, env)| env.as_str());
        let typed_transform = TRANSFORM_FLAGS.iter().any(|long| typed(&args, long));
        let env_transform =
            TRANSFORM_FLAGS.iter().filter_map(|long| transform_env(long)).any(|env| std::env::var_os(env).is_some());
        let mut from_file = Vec::new();
        if let Some(file) = &file {
            for flag in &file.flags {
                if TRANSFORM_FLAGS.contains(&flag.key.as_str()) && (typed_transform || env_transform) {
                    continue;
                }
                if std::env::var_os(&flag.env).is_none() {
                    // Still single-threaded: nothing else reads the environment yet.
                    std::env::set_var(&flag.env, &flag.value);
                    from_file.push(flag);
                }
            }
        }
        let mut cli = Cli::try_parse_from(&args).map_err(|e| attribute(e, &args, file.as_ref(), &from_file))?;
        if typed_transform {
            // What the environment chose is overridden by the flag.
            let typed = |long| typed(&args, long);
            if !typed("jq") {
                cli.jq = None;
            }
            if !typed("jq-file") {
                cli.jq_file = None;
            }
            if !typed("exec") {
                cli.exec = None;
            }
        }
        // File, then environment, then flags: for the same key the later wins. Only the environment's entries are
        // split on ';': on the command line a ';' may be part of a value (a password).
        let mut given = file.as_ref().map(|f| f.kafka.clone()).unwrap_or_default();
        if let Some(entries) = std::env::var_os(KAFKA_CONFIG_ENV) {
            for entry in entries.to_string_lossy().split(';').filter(|e| !e.trim().is_empty()) {
                let property = split_property(entry)
                    .map_err(|why| Invalid::Setting(format!("environment variable {KAFKA_CONFIG_ENV}: {why}")))?;
                given.push(property);
            }
        }
        given.append(&mut cli.properties);
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        let properties: Vec<Property> = given
            .into_iter()
            .map(|(k, v)| Property::resolve(k, v, credentials.as_deref()))
            .collect::<Result<_, _>>()
            .map_err(Invalid::Setting)?;
        for value in secret::secret_values(&properties) {
            redact::keep_secret(value);
        }
        // A URL's password, whole: the line rule cannot tell where one ends if it holds a '/' or a ','.
        for p in &properties {
            if let Some(password) = redact::url_password(&p.value) {
                redact::keep_secret(password);
            }
        }
        cli.properties = properties.into_iter().map(|p| (p.key, p.value)).collect();
        cli.transform = transform::resolve(&cli, credentials.as_deref()).map_err(Invalid::Setting)?;
        cli.tables = Tables::resolve(&cli).map_err(Invalid::Setting)?;
        if let Some(Command::Demo(DemoArgs { brokers: Some(_), .. })) = &cli.command {
            return Err(Invalid::Setting(
                "demo runs its own embedded Kafka and takes no --brokers; to run the pipeline on your cluster, leave \
                 out demo: supervisor --brokers HOST:PORT --source-topic T --dest-topic T"
                    .into(),
            ));
        }
        let to_kafka = cli.tables.sink.is_none();
        let dead_letter = cli.dead_letter_topic();
        topics::Topics {
            source: cli.tables.source.is_none().then_some(cli.source_topic.as_str()),
            dest: to_kafka.then_some(cli.dest_topic.as_str()),
            dead_letter: to_kafka.then_some(dead_letter.as_str()),
        }
        .check()
        .map_err(Invalid::Setting)?;
        if let (Some(source), Some(sink)) = (&cli.tables.source, &cli.tables.sink) {
            if source.describe() == sink.describe() {
                return Err(Invalid::Setting(format!(
                    "--sink is the --source, {}: the scan would read back what it writes; write to another table",
                    sink.describe()
                )));
            }
        }
        // Last: a flag given in vain matters less than a setting that cannot work.
        refuse_unused(&args, &cli.tables, &keys).map_err(Invalid::Setting)?;
        Ok(cli)
    }
}

/// Says where a refused value came from: clap names the flag even when the value came from the environment or, through
/// it, from the config file.
fn attribute(e: clap::Error, args: &[OsString], file: Option<&FileSettings>, from_file: &[&FileFlag]) -> Invalid {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::InvalidSubcommand {
        // Likewise a stray word after the flags, which clap takes for a subcommand.
        return Invalid::Setting(
            "an unexpected word where a subcommand could go (not shown: it may be part of a value; the one \
             subcommand is demo; quote values that hold spaces)"
                .to_string(),
        );
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return Invalid::Flag(e);
    };
    if e.kind() == ErrorKind::UnknownArgument && !arg.starts_with('-') {
        // A stray word is most likely the rest of a value with a space in it (-X sasl.password=two words): not
        // echoed, as it may be part of a secret.
        return Invalid::Setting(
            "an unexpected argument that is not a flag (not shown: it may be part of a value; quote values that hold \
             spaces, and write -X KEY=VALUE with no space around '=')"
                .to_string(),
        );
    }
    let Some(long) = arg.split_whitespace().next().and_then(|a| a.strip_prefix("--")) else {
        return Invalid::Flag(e);
    };
    let typed = typed(args, long);
    let env = file_keys().into_iter().find(|(l, _)| l == long).map(|(_, env)| env);
    let (Some(env), false) = (env, typed) else {
        return Invalid::Flag(e);
    };
    // clap's first line, less its "error: " and the flag it blames.
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let detail = first.strip_prefix("error: ").unwrap_or(first).replace(&format!(" for '{arg}'"), "");
    match (file, from_file.iter().find(|f| f.env == env)) {
        (Some(file), Some(f)) => Invalid::Setting(format!(
            "config file {}, line {}, column {}: {long}: {detail}",
            file.path.display(),
            f.line,
            f.column
        )),
        _ => Invalid::Setting(format!("environment variable {env} (--{long}): {detail}")),
    }
}

/// Refuses a Kafka flag given (typed, in the environment or in the config file) where no topic is read or written: a
/// `--source-topic` next to a table `--source` is a mistake the user should hear of, not a setting silently dropped.
fn refuse_unused(args: &[OsString], tables: &Tables, keys: &[(String, String)]) -> Result<(), String> {
    // Where it was given: typed, or else the environment variable (which the config file's settings go through).
    let given = |long: &str| -> Option<String> {
        if typed(args, long) {
            return Some(format!("--{long}"));
        }
        let (_, env) =
            keys.iter().find(|(l, env)| l == long && std::env::var_os(env).is_some_and(|v| !v.is_empty()))?;
        Some(format!("--{long} (from {env} or the config file)"))
    };
    let end = |url: &Option<TableUrl>, flag: &str| url.as_ref().map(|u| format!("{flag} is {}", u.describe()));
    let unused: [(&str, Option<String>); 4] = [
        ("source-topic", end(&tables.source, "--source")),
        ("group-id", end(&tables.source, "--source")),
        ("dest-topic", end(&tables.sink, "--sink")),
        ("dlq-topic", end(&tables.sink, "--sink").map(|s| format!("{s}, whose dead letters go to a table"))),
    ];
    for (long, why) in unused {
        if let (Some(why), Some(flag)) = (why, given(long)) {
            return Err(format!("{flag} does not apply: {why}; leave it out"));
        }
    }
    if let (Some(_), Some(_), Some(flag)) = (&tables.source, &tables.sink, given("brokers")) {
        return Err(format!("{flag} does not apply: --source and --sink are both tables; leave it out"));
    }
    Ok(())
}

/// The flags that choose the transform.
const TRANSFORM_FLAGS: [&str; 3] = ["jq", "jq-file", "exec"];

/// Whether `--long` was typed on the command line (as `--long VALUE` or `--long=VALUE`).
fn typed(args: &[OsString], long: &str) -> bool {
    args.iter().skip(1).take_while(|a| *a != "--").any(|a| {
        let a = a.to_string_lossy();
        a.strip_prefix("--")
            .and_then(|a| a.strip_prefix(long))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
    })
}

/// `--config FILE`, `--config=FILE`, or `SUPERVISOR_CONFIG`, found before clap runs.
fn config_path(args: &[OsString]) -> Option<std::path::PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(std::path::PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.into());
        }
    }
    std::env::var_os("SUPERVISOR_CONFIG").map(std::path::PathBuf::from)
}

/// The levels a log filter may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// env_logger's filter syntax, checked: a bare word it does not know is a module name to it, which turns every other
/// line off, so `--log-level verbose` would print nothing at all.
fn parse_log_filter(s: &str) -> Result<String, String> {
    // env_logger allows a trailing "/regex" on the message.
    let spec = s.split('/').next().unwrap_or_default();
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.split_once('=').map_or(directive, |(_, level)| level).trim();
        if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "'{level}' is not a log level: use one of {}, or per module MODULE=LEVEL (info,librdkafka=debug)",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(s.to_string())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s} is out of range: more than 0 and at most 86400 seconds (a day)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where `-X` entries come from in the environment.
const KAFKA_CONFIG_ENV: &str = "SUPERVISOR_KAFKA_CONFIG";

/// `KEY=VALUE`, or why not (never quoting it: it may be a secret with a mistyped separator).
fn split_property(s: &str) -> Result<(String, String), &'static str> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        Some(_) => Err("an entry has no KEY before its '=' (expected KEY=VALUE, a librdkafka property)"),
        None => Err("an entry has no '=' (expected KEY=VALUE, a librdkafka property)"),
    }
}

/// `-X KEY=VALUE`. Its error never quotes what was typed (clap's own would): it may be a secret with a mistyped
/// separator.
#[derive(Clone)]
struct PropertyParser;

impl clap::builder::TypedValueParser for PropertyParser {
    type Value = (String, String);

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<(String, String), clap::Error> {
        let refuse = |why: &str| {
            let message = format!("-X: {why}\n");
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, message).with_cmd(cmd)
        };
        let s = value.to_str().ok_or_else(|| refuse("an entry is not UTF-8"))?;
        split_property(s).map_err(refuse)
    }
}

/// The settled configuration every process of the pipeline works from.
#[derive(Debug, Clone)]
pub struct Config {
    pub brokers: String,
    pub source_topic: String,
    pub dest_topic: String,
    pub dlq_topic: String,
    pub group_id: String,
    pub hashers: usize,
    pub queue_capacity: usize,
    pub drain_timeout: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub child_timeout: Duration,
    pub status_interval: Option<Duration>,
    pub metrics_addr: Option<String>,
    pub log_level: Option<String>,
    pub properties: Vec<(String, String)>,
    /// What the workers do to each event.
    pub transform: TransformSpec,
    /// Most events per second the source takes in.
    pub max_rate: Option<u64>,
    /// Events per IPC batch; a batch is sent when it is full or its linger has passed.
    pub batch_events: usize,
    /// Bytes per IPC batch, kept under ipc-channel's single-fragment size so a send is one syscall.
    pub batch_bytes: usize,
    /// How long a partly filled batch may wait while events keep coming; when librdkafka has none queued, partial
    /// batches go at once.
    pub batch_linger: Duration,
    /// How long start-up may wait for the brokers' metadata.
    pub startup_timeout: Duration,
    /// The table source, sink and checkpoint store, when given.
    pub tables: Tables,
    pub readers: usize,
    pub chunk_rows: u64,
    pub max_retries: u32,
    pub chunk_lease: Duration,
    pub rescan: bool,
    pub create_table: bool,
    pub max_dead_letters: crate::sink::refusals::MaxDeadLetters,
    /// Which generation of the pipeline the process belongs to (1 for the first start); the supervisor sets it before
    /// each fork. A child that fails to start in a later generation is a crash to restart, not a configuration error.
    pub generation: u64,
}

/// The database tables `--source`, `--sink` and `--checkpoint` name.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub source: Option<TableUrl>,
    pub sink: Option<TableUrl>,
    /// Where a table source keeps its checkpoints.
    pub checkpoint: Option<TableUrl>,
    /// `--state-dir` (or its default), with a table source: where a scan notes that its store holds its plan.
    pub state_dir: Option<std::path::PathBuf>,
}

impl Tables {
    fn resolve(cli: &Cli) -> Result<Tables, String> {
        let parse = |flag: &str, given: &Option<String>| -> Result<Option<TableUrl>, String> {
            let Some(given) = given else { return Ok(None) };
            for secret in crate::sql::url::secrets(given) {
                redact::keep_secret(&secret);
            }
            let url = TableUrl::parse(given).map_err(|e| format!("--{flag}: {e}"))?;
            url.table().map_err(|e| format!("--{flag}: {e}"))?;
            keep_password(&url);
            Ok(Some(url))
        };
        let source = parse("source", &cli.source)?;
        let sink = parse("sink", &cli.sink)?;
        let checkpoint = match (&source, &cli.checkpoint) {
            (None, _) => None,
            (Some(_), Some(given)) => {
                let url = TableUrl::parse(given).map_err(|e| format!("--checkpoint: {e}"))?;
                for secret in crate::sql::url::secrets(given) {
                    redact::keep_secret(&secret);
                }
                keep_password(&url);
                Some(url)
            }
            (Some(_), None) => {
                let dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
                let path = dir.join("checkpoints.db");
                Some(TableUrl::parse(&format!("sqlite:{}", path.display())).map_err(|e| format!("--state-dir: {e}"))?)
            }
        };
        let state_dir = source.as_ref().map(|_| cli.state_dir.clone().unwrap_or_else(default_state_dir));
        Ok(Tables { source, sink, checkpoint, state_dir })
    }
}

/// Registers for masking a URL's password read from a file, and `PGPASSWORD`, which a PostgreSQL URL may use.
fn keep_password(url: &TableUrl) {
    if let Some(password) = &url.password {
        redact::keep_secret(password);
    }
    if url.engine == crate::sql::url::Engine::Postgres {
        if let Some(password) = std::env::var_os("PGPASSWORD") {
            redact::keep_secret(&password.to_string_lossy());
        }
    }
}

/// systemd's `StateDirectory=`, else the XDG state directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several, separated by ':'; the first is ours.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local").join("state")));
    base.map_or_else(|| PathBuf::from(".supervisor"), |b| b.join("supervisor"))
}

/// Which client a `-X` property is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Consumer,
    Producer,
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Config {
        let hashers =
            cli.hashers.map(usize::from).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Config {
            brokers: cli.brokers.clone(),
            source_topic: cli.source_topic.clone(),
            dest_topic: cli.dest_topic.clone(),
            dlq_topic: cli.dead_letter_topic(),
            group_id: cli.group_id.clone(),
            hashers,
            queue_capacity: cli.queue_capacity as usize,
            drain_timeout: cli.drain_timeout,
            max_restarts: cli.max_restarts,
            restart_window: cli.restart_window,
            child_timeout: cli.child_timeout,
            status_interval: cli.status_interval,
            metrics_addr: cli.metrics_addr.clone(),
            log_level: cli.log_level.clone(),
            properties: cli.properties.clone(),
            transform: cli.transform.clone(),
            max_rate: cli.max_rate,
            batch_events: 512,
            batch_bytes: 64 * 1024,
            batch_linger: Duration::from_millis(5),
            startup_timeout: Duration::from_secs(10),
            tables: cli.tables.clone(),
            readers: usize::from(cli.readers),
            chunk_rows: cli.chunk_rows,
            max_retries: cli.max_retries,
            chunk_lease: cli.chunk_lease,
            rescan: cli.rescan,
            create_table: cli.create_table,
            max_dead_letters: cli.max_dead_letters,
            generation: 1,
        }
    }

    /// Where events come from, as the logs name it: the table and where it is (no credentials), or the topic.
    pub fn source_name(&self) -> String {
        self.tables.source.as_ref().map_or_else(|| self.source_topic.clone(), TableUrl::describe)
    }

    /// Where events go, as the logs name it.
    pub fn sink_name(&self) -> String {
        self.tables.sink.as_ref().map_or_else(|| self.dest_topic.clone(), TableUrl::describe)
    }

    /// An event's place in the source, in the source's words: a partition and offset, or a chunk and row.
    pub fn place(&self, at: crate::position::Position) -> crate::position::Place {
        crate::position::Place { at, table: self.tables.source.is_some() }
    }

    /// Where rejected events go, as the logs name it.
    pub fn dead_letter_name(&self) -> String {
        match &self.tables.sink {
            Some(url) => format!(
                "table {}",
                url.table.as_ref().map(|t| t.beside("_dead_letter").to_string()).unwrap_or_default()
            ),
            None => self.dlq_topic.clone(),
        }
    }

    /// Whether any stage talks to Kafka.
    pub fn uses_kafka(&self) -> bool {
        self.tables.source.is_none() || self.tables.sink.is_none()
    }

    /// The effective configuration as a config file would say it, with secrets masked.
    pub fn describe(&self) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut out = String::new();
        for (k, v) in [
            ("brokers", q(&self.brokers)),
            ("source-topic", q(&self.source_topic)),
            ("dest-topic", q(&self.dest_topic)),
            ("dlq-topic", q(&self.dlq_topic)),
            ("group-id", q(&self.group_id)),
            ("hashers", self.hashers.to_string()),
            ("queue-capacity", self.queue_capacity.to_string()),
            ("drain-timeout", self.drain_timeout.as_secs_f64().to_string()),
            ("max-restarts", self.max_restarts.to_string()),
            ("restart-window", self.restart_window.as_secs_f64().to_string()),
            ("child-timeout", self.child_timeout.as_secs_f64().to_string()),
        ] {
            out.push_str(&format!("{k} = {v}\n"));
        }
        // Unset optional settings are shown as comments, with what happens then.
        match self.status_interval {
            Some(every) => out.push_str(&format!("status-interval = {}\n", every.as_secs_f64())),
            None => out.push_str("# status-interval: 1 when stderr is a terminal, 30 otherwise\n"),
        }
        match &self.metrics_addr {
            Some(addr) => out.push_str(&format!("metrics-addr = {}\n", q(addr))),
            None => out.push_str("# metrics-addr: off\n"),
        }
        match &self.log_level {
            Some(level) => out.push_str(&format!("log-level = {}\n", q(level))),
            None => out.push_str("# log-level: RUST_LOG, or info\n"),
        }
        out.push_str(&self.transform.describe());
        match self.max_rate {
            Some(rate) => out.push_str(&format!("max-rate = {rate}\n")),
            None => out.push_str("# max-rate: no limit\n"),
        }
        for (k, url) in
            [("source", &self.tables.source), ("sink", &self.tables.sink), ("checkpoint", &self.tables.checkpoint)]
        {
            match url {
                Some(url) => out.push_str(&format!("{k} = {}\n", q(&url.to_string()))),
                None if k == "checkpoint" => out.push_str("# checkpoint: only for a table source\n"),
                None => out.push_str(&format!("# {k}: Kafka\n")),
            }
        }
        // The state directory only places the default checkpoint store, shown above.
        out.push_str("# state-dir: where the default checkpoint store is\n");
        out.push_str(&format!(
            "readers = {}\nchunk-rows = {}\nmax-retries = {}\nchunk-lease = {}\ncreate-table = {}\n",
            self.readers,
            self.chunk_rows,
            self.max_retries,
            self.chunk_lease.as_secs_f64(),
            self.create_table
        ));
        out.push_str(&format!("max-dead-letters = {}\n", q(&self.max_dead_letters.to_string())));
        if !self.properties.is_empty() {
            out.push_str("\n[kafka]\n");
            // Later entries win (file, then environment or flags): show each key once, with its effective value.
            let mut effective: Vec<(&str, &str)> = Vec::new();
            for (k, v) in &self.properties {
                match effective.iter_mut().find(|(key, _)| key == k) {
                    Some(entry) => entry.1 = v,
                    None => effective.push((k, v)),
                }
            }
            for (k, v) in effective {
                let v = if is_secret(k) || redact::is_kept(v) { redact::MASK } else { v };
                out.push_str(&format!("{} = {}\n", q(k), q(v)));
            }
        }
        out
    }

    /// How the clients authenticate, for the log: the security protocol, and the SASL mechanism if any.
    pub fn security(&self) -> String {
        let consumer = self.security_of(Client::Consumer);
        let producer = self.security_of(Client::Producer);
        if consumer == producer {
            consumer
        } else {
            format!("consumer {consumer}; producer {producer}")
        }
    }

    fn security_of(&self, client: Client) -> String {
        // The last setting wins, as in librdkafka.
        let last = |key: &str| self.properties_for(client).filter(|(k, _)| *k == key).last().map(|(_, v)| v);
        let protocol = last("security.protocol").unwrap_or("plaintext");
        if !protocol.to_ascii_lowercase().starts_with("sasl") {
            return format!("security.protocol={protocol}");
        }
        // GSSAPI is librdkafka's default mechanism.
        let mechanism = last("sasl.mechanism").or(last("sasl.mechanisms")).unwrap_or("GSSAPI");
        format!("security.protocol={protocol}, sasl.mechanism={mechanism}")
    }

    /// The user's `-X` properties meant for `client`, prefixes removed, in the order given.
    pub fn properties_for(&self, client: Client) -> impl Iterator<Item = (&str, &str)> {
        self.properties.iter().filter_map(move |(k, v)| {
            let (own, other) = match client {
                Client::Consumer => ("consumer.", "producer."),
                Client::Producer => ("producer.", "consumer."),
            };
            if let Some(k) = k.strip_prefix(own) {
                Some((k, v.as_str()))
            } else if k.starts_with(other) {
                None
            } else {
                Some((k.as_str(), v.as_str()))
            }
        })
    }

    fn client_config(&self, client: Client, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        // The user's properties come last so they override our defaults.
        for (k, v) in self.properties_for(client) {
            c.set(k, v);
        }
        c
    }

    /// At-least-once consumer: offsets are stored by hand once acknowledged, and committed in the background.
    pub fn consumer_config(&self) -> ClientConfig {
        self.client_config(
            Client::Consumer,
            &[
                ("group.id", &self.group_id),
                ("auto.offset.reset", "earliest"),
                ("enable.auto.commit", "true"),
                ("enable.auto.offset.store", "false"),
                ("auto.commit.interval.ms", "1000"),
                ("allow.auto.create.topics", "false"),
                // librdkafka prefetches up to 64 MiB by default, which dominates the consumer's memory under a deep
                // backlog; 16 MiB is still about 160k small events of read-ahead.
                ("queued.max.messages.kbytes", "16384"),
                // Lag and committed offsets per partition for the status line; parsing them once a second is cheap.
                ("statistics.interval.ms", "1000"),
            ],
        )
    }

    /// Idempotent producer, so librdkafka's retries neither reorder nor duplicate.
    pub fn producer_config(&self) -> ClientConfig {
        self.client_config(
            Client::Producer,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
                ("queue.buffering.max.messages", "1000000"),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("supervisor").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_cli(&cli(&[]).unwrap());
        assert_eq!(c.brokers, "localhost:9092");
        assert_eq!(c.source_topic, "name_stream");
        assert_eq!(c.dest_topic, "name_stream_transformed");
        assert_eq!(c.dlq_topic, "name_stream_transformed.dlq");
        assert_eq!(c.group_id, "supervisor");
        assert!(c.hashers >= 1);
    }

    #[test]
    fn properties_reach_the_right_client() {
        let c = Config::from_cli(
            &cli(&["-X", "a=1", "-X", "consumer.b=2", "-X", "producer.c=3=4", "-X", "linger.ms=0"]).unwrap(),
        );
        let cons: Vec<_> = c.properties_for(Client::Consumer).collect();
        let prod: Vec<_> = c.properties_for(Client::Producer).collect();
        assert_eq!(cons, vec![("a", "1"), ("b", "2"), ("linger.ms", "0")]);
        assert_eq!(prod, vec![("a", "1"), ("c", "3=4"), ("linger.ms", "0")]);
        assert_eq!(c.producer_config().get("linger.ms"), Some("0"), "user properties override defaults");
    }

    #[test]
    fn every_flag_can_be_set_in_a_file() {
        let keys: Vec<String> = file_keys().into_iter().map(|(k, _)| k).collect();
        for long in [
            "brokers",
            "source-topic",
            "dest-topic",
            "group-id",
            "hashers",
            "queue-capacity",
            "dlq-topic",
            "drain-timeout",
            "max-restarts",
            "restart-window",
            "child-timeout",
            "status-interval",
            "metrics-addr",
            "log-level",
            "jq",
            "jq-file",
            "exec",
            "exec-timeout",
            "hmac-key-file",
            "max-rate",
        ] {
            assert!(keys.iter().any(|k| k == long), "{long} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| k == "config" || k == "print-config"), "{keys:?}");
    }

    #[test]
    fn print_config_shows_every_setting() {
        let shown = Config::from_cli(&cli(&[]).unwrap()).describe();
        for long in file_keys().into_iter().map(|(k, _)| k) {
            assert!(shown.contains(&format!("{long} = ")) || shown.contains(&format!("# {long}: ")), "{long}: {shown}");
        }
        let shown = Config::from_cli(&cli(&["--status-interval", "5", "--log-level", "debug"]).unwrap()).describe();
        assert!(shown.contains("status-interval = 5\n") && shown.contains("log-level = \"debug\"\n"), "{shown}");
    }

    #[test]
    fn secrets_are_masked() {
        let c = Config::from_cli(&cli(&["-X", "consumer.sasl.password=hunter2", "-X", "ssl.key.password=x"]).unwrap());
        let shown = c.describe();
        assert!(!shown.contains("hunter2") && shown.contains("\"consumer.sasl.password\" = \"********\""), "{shown}");
        assert!(is_secret("sasl.oauthbearer.client.secret") && !is_secret("sasl.username"));
        redact::keep_secret("from-a-file");
        let c = Config::from_cli(&cli(&["-X", "ssl.ca.pem=from-a-file"]).unwrap());
        assert!(
            c.describe().contains("\"ssl.ca.pem\" = \"********\""),
            "a value kept secret is masked whatever its key"
        );
    }

    #[test]
    fn wrong_flags_are_rejected() {
        assert!(cli(&["--hashers", "0"]).is_err());
        assert!(cli(&["--hashers", "many"]).is_err());
        assert!(cli(&["--queue-capacity", "0"]).is_err());
        assert!(cli(&["--drain-timeout", "-1"]).is_err());
        assert!(cli(&["-X", "novalue"]).is_err());
        let e = cli(&["-X", "sasl.password:hunter2"]).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let e = cli(&["--drain-timeout", "0"]).unwrap_err().to_string();
        assert!(e.contains("more than 0 and at most 86400"), "{e}");
        assert!(cli(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn the_security_line_names_each_client_when_they_differ() {
        let c = |args: &[&str]| Config::from_cli(&cli(args).unwrap()).security();
        assert_eq!(c(&[]), "security.protocol=plaintext");
        assert_eq!(
            c(&["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanism=SCRAM-SHA-512"]),
            "security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512"
        );
        assert_eq!(
            c(&["-X", "consumer.security.protocol=SSL", "-X", "producer.security.protocol=SSL"]),
            "security.protocol=SSL"
        );
        assert_eq!(
            c(&["-X", "consumer.security.protocol=SSL"]),
            "consumer security.protocol=SSL; producer security.protocol=plaintext"
        );
    }

    #[test]
    fn log_levels_are_checked() {
        for ok in ["info", "WARN", "info,librdkafka=debug", "supervisor::source=trace", "debug/hash", "off"] {
            assert!(parse_log_filter(ok).is_ok(), "{ok}");
        }
        let e = parse_log_filter("verbose").unwrap_err();
        assert!(
            e.contains("'verbose' is not a log level") && e.contains("off, error, warn, info, debug, trace"),
            "{e}"
        );
        assert!(parse_log_filter("info,librdkafka=loud").is_err());
    }
}
