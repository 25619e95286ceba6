//! The command line: every setting's flag, help text, environment variable and default, declared once in [`Cli`],
//! and the parsers of their values.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use super::{librdkafka, Tables, TransformSpec};

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

// Each setting is declared here once: its flag, help, environment variable and default (clap), its config-file key
// (the long name, see `file_keys`), its `--print-config` line (serde: the field under its long name, see
// `describe.rs`) and its value for the pipeline (`Config` derefs to this struct). The doc comment below is --help's.
/// Consume JSON events, transform them in N worker processes, produce them on. The default transform adds "hash" (md5
/// hex of the raw bytes); --jq runs a jq filter, --exec your own program.
///
/// At-least-once: an offset is committed only after the output event (or its dead-letter copy) was acknowledged by
/// the brokers. The first SIGINT/SIGTERM drains every queue and exits 0; a second one stops at once.
#[derive(Parser, Debug, Clone, serde::Serialize)]
#[command(name = "supervisor", version = version(), after_help = EXIT_CODES_HELP)]
#[serde(rename_all = "kebab-case")]
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

    /// Topic for events that are not JSON objects [default: <dest-topic>.dlq]; created if missing.
    #[arg(long, env = "SUPERVISOR_DLQ_TOPIC", value_name = "TOPIC")]
    pub dlq_topic: Option<String>,

    /// Consumer group; run more instances with the same group to spread the partitions across machines.
    #[arg(long, env = "SUPERVISOR_GROUP_ID", default_value = "supervisor", value_name = "GROUP")]
    pub group_id: String,

    /// Worker processes (worker-N), each running the transform: md5, --jq or --exec [default: the number of CPUs].
    #[arg(global = true, long, env = "SUPERVISOR_HASHERS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub hashers: Option<u16>,

    /// Most events in flight between the source and the sink's acknowledgements; a full pipeline holds the source
    /// back [default: 10000; 100000 with --aggregate, whose inputs wait for the next save of its state].
    #[arg(global = true, long, env = "SUPERVISOR_QUEUE_CAPACITY", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub queue_capacity: Option<u32>,

    /// Seconds a drain may take after the first SIGINT/SIGTERM before the pipeline is stopped anyway.
    #[arg(global = true, long, env = "SUPERVISOR_DRAIN_TIMEOUT", default_value = "30", value_name = "SECS",
          value_parser = parse_seconds)]
    #[serde(serialize_with = "seconds")]
    pub drain_timeout: Duration,

    /// Restarts allowed in a row; one more failure and the supervisor drains and exits 6. 0 never restarts.
    #[arg(global = true, long, env = "SUPERVISOR_MAX_RESTARTS", default_value_t = 5, value_name = "N")]
    pub max_restarts: u32,

    /// Seconds a restarted pipeline (or --exec command) must run, getting work done, without failing for
    /// --max-restarts to count afresh.
    #[arg(global = true, long, env = "SUPERVISOR_RESTART_WINDOW", default_value = "60", value_name = "SECS",
          value_parser = parse_seconds)]
    #[serde(serialize_with = "seconds")]
    pub restart_window: Duration,

    /// Seconds a child may go without a heartbeat before it is deemed hung, killed (SIGABRT, then SIGKILL) and
    /// restarted.
    #[arg(global = true, long, env = "SUPERVISOR_CHILD_TIMEOUT", default_value = "30", value_name = "SECS",
          value_parser = parse_seconds)]
    #[serde(serialize_with = "seconds")]
    pub child_timeout: Duration,

    /// Seconds between status lines (rates, in flight, lag, restarts) [default: 1 on a terminal, where the line is
    /// redrawn in place; 30 otherwise, as a log line].
    #[arg(global = true, long, env = "SUPERVISOR_STATUS_INTERVAL", value_name = "SECS", value_parser = parse_seconds)]
    #[serde(serialize_with = "optional_seconds")]
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
    #[serde(serialize_with = "seconds")]
    pub exec_timeout: Duration,

    /// File holding the key of hmac_sha256 in --jq filters; a relative path is looked up in $CREDENTIALS_DIRECTORY.
    /// Or the key itself in the environment variable SUPERVISOR_HMAC_KEY; never on the command line.
    #[arg(global = true, long, env = "SUPERVISOR_HMAC_KEY_FILE", value_name = "FILE")]
    pub hmac_key_file: Option<PathBuf>,

    /// Sets each output event's message key: a jq expression over the output event (after the transform), e.g.
    /// .customer to re-key a topic by a field. A string is the key as it is, anything else its compact JSON, null no
    /// key [default: the input's key].
    #[arg(global = true, long, env = "SUPERVISOR_OUTPUT_KEY", value_name = "EXPR")]
    pub output_key: Option<String>,

    /// Most events per second taken from the source, for destinations that cannot take more [default: no limit].
    #[arg(global = true, long, env = "SUPERVISOR_MAX_RATE", value_name = "EVENTS_PER_SECOND",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_rate: Option<u64>,

    /// The transform the flags above chose, their files read.
    #[serde(skip)]
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
    /// top-level fields go to the columns of the same name; or to kafka:TOPIC. Repeatable as NAME=URL, each sink its
    /// own process with its own dead letters: every output goes to every sink, or where --route says.
    #[arg(long, env = "SUPERVISOR_SINK", value_name = "[NAME=]URL", action = clap::ArgAction::Append,
          value_delimiter = '\n')]
    pub sink: Vec<String>,

    /// A table or compacted topic that jq reads as lookup("NAME"; KEY), giving the row with that key as an object, or
    /// null: NAME=postgres://HOST/DB?table=T&key=COLUMN (mysql://, sqlite:PATH?table=T alike), or NAME=kafka:TOPIC
    /// (the message key is the key; read to its end at start, then followed). Repeatable.
    #[arg(long, env = "SUPERVISOR_LOOKUP", value_name = "NAME=URL", action = clap::ArgAction::Append,
          value_delimiter = '\n')]
    pub lookup: Vec<String>,

    /// Seconds a table lookup's row is kept in a worker's cache before it is fetched again.
    #[arg(long, env = "SUPERVISOR_LOOKUP_TTL", default_value = "60", value_name = "SECS", value_parser = parse_seconds)]
    #[serde(serialize_with = "seconds")]
    pub lookup_ttl: Duration,

    /// Rows each worker keeps per table lookup; the oldest leave first.
    #[arg(long, env = "SUPERVISOR_LOOKUP_CACHE_ROWS", default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub lookup_cache_rows: u64,

    /// The lookups above, parsed.
    #[serde(skip)]
    #[arg(skip)]
    pub lookups: Vec<super::lookups::LookupDef>,

    /// Which named sinks each output goes to: a jq expression over the output event giving a sink's name, an array
    /// of names (a tee), or null or [] (dropped, and counted) [default: every sink].
    #[arg(long, env = "SUPERVISOR_ROUTE", value_name = "EXPR")]
    pub route: Option<String>,

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
    #[serde(serialize_with = "seconds")]
    pub chunk_lease: Duration,

    /// Create the --sink table if it does not exist, from the first events: a column per top-level field, typed by its
    /// value; the key (?key=COLUMN, required) its primary key.
    #[arg(long, env = "SUPERVISOR_CREATE_TABLE")]
    pub create_table: bool,

    /// Start the table scan over, forgetting its checkpoints (a finished scan otherwise stays finished); with --follow,
    /// its replication slot is dropped and made again too.
    #[arg(long)]
    pub rescan: bool,

    /// After the snapshot of a PostgreSQL --source table, follow its changes: every insert, update and delete, read
    /// from a logical replication slot (wal2json) that the first start makes, until stopped.
    #[arg(long, env = "SUPERVISOR_FOLLOW")]
    pub follow: bool,

    /// Drop the replication slot that --follow reads for this --source (and forget its scan), then exit.
    #[arg(long)]
    pub drop_slot: bool,

    /// With --follow: warn when the replication slot keeps more than this many MiB of WAL unread (a slot not advanced
    /// keeps the server's WAL).
    #[arg(long, env = "SUPERVISOR_SLOT_LAG_WARN", default_value_t = 1024, value_name = "MIB")]
    pub slot_lag_warn: u64,

    /// With --follow into a topic: no tombstone (the key with a null value) after a delete's event. By default one
    /// follows it, so that compaction removes the key.
    #[arg(long, env = "SUPERVISOR_NO_TOMBSTONES")]
    pub no_tombstones: bool,

    /// When dead letters mean something is wrong, not an odd bad event: a share of the last 1000 events written or
    /// dead-lettered (judged from the 100th), a count in all, or off. Past it the pipeline stops with exit 7.
    #[arg(
        global = true,
        long,
        env = "SUPERVISOR_MAX_DEAD_LETTERS",
        default_value = "10%",
        value_name = "SHARE%|N|off"
    )]
    #[serde(serialize_with = "text")]
    pub max_dead_letters: super::MaxDeadLetters,

    /// Aggregate the transform's outputs, per group key and window: a jq-style object of named aggregates, e.g.
    /// {orders: count, total: sum(.amount), hi: max(.amount)}. Aggregates: count, sum(f), avg(f), min(f), max(f),
    /// first(f), last(f), distinct(f), top(k; f), fold(INIT; UPDATE) (`.` the running value, $event the event); f is
    /// any jq expression over the event. Results are exact across crashes: the state is saved under --state-dir
    /// with the positions it covers.
    #[arg(long, env = "SUPERVISOR_AGGREGATE", value_name = "OBJECT")]
    pub aggregate: Option<String>,

    /// The group key, a jq expression over the event [default: the event's key; a table row's key].
    #[arg(long, env = "SUPERVISOR_GROUP_BY", value_name = "EXPR")]
    pub group_by: Option<String>,

    /// tumbling=DURATION, hopping=SIZE,STEP or session=GAP (durations as 500ms, 10s, 5m, 1h) [default: one running
    /// aggregate per key that never closes].
    #[arg(long, env = "SUPERVISOR_WINDOW", value_name = "SPEC")]
    pub window: Option<String>,

    /// Where an event's time is, a jq expression giving an RFC 3339 string or seconds since the epoch [default: the
    /// Kafka message's timestamp; for a table row the time it was read, which a rerun does not repeat].
    #[arg(long, env = "SUPERVISOR_EVENT_TIME", value_name = "EXPR")]
    pub event_time: Option<String>,

    /// How long after its end a window still takes events: it closes once the watermark passes end + lateness.
    /// Later events go to the dead-letter destination as "late".
    #[arg(long, env = "SUPERVISOR_LATENESS", default_value = "0s", value_name = "DURATION")]
    pub lateness: String,

    /// final: one result per key and window, when it closes; every: the updated result after each event [default:
    /// final with --window, every without].
    #[arg(long, env = "SUPERVISOR_EMIT", value_name = "final|every")]
    pub emit: Option<crate::config::aggregate::Emit>,

    /// How long a partition may show no event before it stops holding the watermark back.
    #[arg(long, env = "SUPERVISOR_IDLE_TIMEOUT", default_value = "30s", value_name = "DURATION")]
    pub idle_timeout: String,

    /// The aggregation the flags above ask for, settled.
    #[serde(skip)]
    #[arg(skip)]
    pub aggregation: Option<super::Aggregation>,

    /// The tables the URLs above name.
    #[serde(skip)]
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
    #[serde(skip)]
    pub properties: Vec<(String, String)>,

    #[serde(skip)]
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the whole pipeline on an embedded Kafka (librdkafka's mock cluster): no broker to install. `demo sql`
    /// runs a table scan on embedded SQLite instead, `demo window` an aggregation with every window checked.
    Demo(DemoArgs),
}

#[derive(Subcommand, Debug, Clone)]
pub enum DemoCommand {
    /// The article's SQL pipeline on embedded SQLite, no server: SOURCE(VALUE) 1..N → sqrt (a jq filter) →
    /// DESTINATION(VALUE, ROOT), then every row checked. Ctrl-C stops it; running it again resumes.
    Sql(SqlDemoArgs),
    /// Totals per customer per 10 s tumbling window (--aggregate) from orders on an embedded Kafka, some out of
    /// order and some late, into a SQLite table; then every window is checked against a batch computation. Ctrl-C
    /// stops it; running it again goes on where it stopped.
    Window(WindowDemoArgs),
    /// Orders on an embedded Kafka enriched from a SQLite customers table (--lookup), every order into a SQLite table
    /// and the large ones also into an alerts topic (two --sink, --route); then both outputs are checked.
    Branch(BranchDemoArgs),
    /// --follow on a throwaway PostgreSQL cluster (initdb, wal2json): a table copied into SQLite while a writer
    /// inserts, updates and deletes during the snapshot and after it; then the copy is checked row by row.
    Cdc(CdcDemoArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct CdcDemoArgs {
    /// Rows in the source table before the writer starts.
    #[arg(long, default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub rows: u64,

    /// Seconds the writer writes.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub seconds: u64,

    /// Where the demo's copy and checkpoints live [default: <state-dir>/demo-cdc]; its cluster is made in a temporary
    /// directory and removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BranchDemoArgs {
    /// Orders to generate.
    #[arg(long, default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub orders: u64,

    /// Where the demo's database lives [default: <state-dir>/demo-branch].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WindowDemoArgs {
    /// Orders to generate.
    #[arg(long, default_value_t = 200_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub orders: u64,

    /// Orders per second the generator writes; 0 is as fast as it can.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rate: u64,

    /// Where the demo's table and the aggregation's state live [default: <state-dir>/demo-window].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `demo sql --rows` when not given.
pub const DEMO_SQL_ROWS: u64 = 1_000_000;

#[derive(clap::Args, Debug, Clone)]
pub struct SqlDemoArgs {
    /// Rows in SOURCE.
    #[arg(long, default_value_t = DEMO_SQL_ROWS, value_name = "N",
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

    /// Run the same transform in this one process, with no workers or IPC: the yardstick benchmarks compare against.
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

/// A duration as `--print-config` shows it: seconds, as the flag takes them.
fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn optional_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => seconds(d, s),
        None => s.serialize_none(),
    }
}

/// A value as its flag takes it, quoted.
fn text<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
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
pub(super) const KAFKA_CONFIG_ENV: &str = "SUPERVISOR_KAFKA_CONFIG";

/// `KEY=VALUE`, or why not (never quoting it: it may be a secret with a mistyped separator).
pub(super) fn split_property(s: &str) -> Result<(String, String), &'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("supervisor").chain(args.iter().copied()))
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
