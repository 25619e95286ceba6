//! The command-line contract, its environment variables, and the librdkafka client configurations built from it.

use clap::{Parser, Subcommand};
use rdkafka::config::ClientConfig;
use std::time::Duration;

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  clean drain: every consumed event delivered and committed
  1  failure: the supervisor itself failed, or it was stopped while recovering from a crash
  2  configuration error: bad flag or -X property, missing topic
  3  the brokers could not be reached at start-up
  4  the drain did not finish within --drain-timeout (uncommitted events are re-read on the next start)
  5  fast stop: a second SIGINT/SIGTERM during the drain (uncommitted events are re-read on the next start)
  6  gave up: children failed more than --max-restarts times within --restart-window";

/// Consume JSON events, add "hash" (md5 hex of the raw bytes) in N hasher processes, produce them on.
///
/// At-least-once: an offset is committed only after the output event (or its dead-letter copy) was acknowledged by
/// the brokers. The first SIGINT/SIGTERM drains every queue and exits 0; a second one stops at once.
#[derive(Parser, Debug, Clone)]
#[command(name = "supervisor", version, after_help = EXIT_CODES_HELP)]
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

    /// Number of hasher processes [default: the number of CPUs].
    #[arg(global = true, long, env = "SUPERVISOR_HASHERS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub hashers: Option<u16>,

    /// Most events in flight between the consumer and the producer's acknowledgements; a full pipeline holds the
    /// consumer back.
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

    /// Restarts allowed within --restart-window; one more failure and the supervisor drains and exits 6. 0 never
    /// restarts.
    #[arg(global = true, long, env = "SUPERVISOR_MAX_RESTARTS", default_value_t = 5, value_name = "N")]
    pub max_restarts: u32,

    /// Seconds over which --max-restarts is counted.
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
    #[arg(global = true, long, env = "SUPERVISOR_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// A TOML file of settings: the long flag names as keys (brokers = "k1:9092", hashers = 4), and librdkafka
    /// properties in a [kafka] table. Flags win over environment variables, which win over the file.
    #[arg(global = true, long, env = "SUPERVISOR_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// A librdkafka property for both clients, kcat style; `consumer.K=V` or `producer.K=V` reach one client.
    /// Repeatable; in the environment, separate entries with ';'.
    #[arg(global = true, short = 'X', value_name = "KEY=VALUE", env = "SUPERVISOR_KAFKA_CONFIG",
          value_delimiter = ';', value_parser = parse_property)]
    pub properties: Vec<(String, String)>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the whole pipeline on an embedded Kafka (librdkafka's mock cluster): no broker to install.
    Demo(DemoArgs),
}

#[derive(clap::Args, Debug, Clone)]
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
}

/// The settings a config file may hold: each long flag, by name, and the environment variable it feeds.
const FILE_KEYS: &[(&str, &str)] = &[
    ("brokers", "SUPERVISOR_BROKERS"),
    ("source-topic", "SUPERVISOR_SOURCE_TOPIC"),
    ("dest-topic", "SUPERVISOR_DEST_TOPIC"),
    ("group-id", "SUPERVISOR_GROUP_ID"),
    ("hashers", "SUPERVISOR_HASHERS"),
    ("queue-capacity", "SUPERVISOR_QUEUE_CAPACITY"),
    ("dlq-topic", "SUPERVISOR_DLQ_TOPIC"),
    ("drain-timeout", "SUPERVISOR_DRAIN_TIMEOUT"),
    ("max-restarts", "SUPERVISOR_MAX_RESTARTS"),
    ("restart-window", "SUPERVISOR_RESTART_WINDOW"),
    ("child-timeout", "SUPERVISOR_CHILD_TIMEOUT"),
    ("log-level", "SUPERVISOR_LOG_LEVEL"),
    ("metrics-addr", "SUPERVISOR_METRICS_ADDR"),
];

/// What a config file says, sorted into what feeds the flags and what goes to librdkafka.
#[derive(Debug, Default, PartialEq)]
pub struct FileSettings {
    /// (environment variable, value) for each flag the file sets.
    pub flags: Vec<(&'static str, String)>,
    /// The [kafka] table (TOML keys are unique, so their order does not matter).
    pub kafka: Vec<(String, String)>,
}

fn scalar(key: &str, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("'{key}' must be a string, number or boolean, not {}", other.type_str())),
    }
}

impl FileSettings {
    pub fn parse(text: &str) -> Result<FileSettings, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_string())?;
        let mut out = FileSettings::default();
        for (key, value) in &table {
            if key == "kafka" {
                let kafka = value.as_table().ok_or("'kafka' must be a table of librdkafka properties")?;
                for (k, v) in kafka {
                    out.kafka.push((k.clone(), scalar(k, v)?));
                }
            } else if let Some((_, env)) = FILE_KEYS.iter().find(|(name, _)| name == key) {
                out.flags.push((env, scalar(key, value)?));
            } else {
                let known: Vec<&str> = FILE_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!("unknown setting '{key}' (known: {}, and a [kafka] table)", known.join(", ")));
            }
        }
        Ok(out)
    }
}

impl Cli {
    /// Parses the command line, reading the config file first if there is one: its settings go in only where
    /// neither a flag nor an environment variable says otherwise. A bad file exits 2, as a bad flag does.
    pub fn parse_with_file() -> Cli {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let path = config_path(&args);
        let file = path.as_ref().map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| e.to_string())
                .and_then(|text| FileSettings::parse(&text))
                .unwrap_or_else(|e| {
                    eprintln!("error: config file {}: {e}", p.display());
                    std::process::exit(2);
                })
        });
        if let Some(file) = &file {
            for (env, value) in &file.flags {
                if std::env::var_os(env).is_none() {
                    // Still single-threaded: nothing else reads the environment yet.
                    std::env::set_var(env, value);
                }
            }
        }
        let mut cli = Cli::parse_from(args);
        if let Some(file) = file {
            // First, so that -X (or SUPERVISOR_KAFKA_CONFIG) for the same key wins.
            cli.properties.splice(0..0, file.kafka);
        }
        cli
    }
}

/// `--config FILE`, `--config=FILE`, or `SUPERVISOR_CONFIG`, found before clap runs.
fn config_path(args: &[std::ffi::OsString]) -> Option<std::path::PathBuf> {
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

/// librdkafka properties that hold secrets; their values never appear in what we print or log.
pub fn is_secret(key: &str) -> bool {
    let key = key.strip_prefix("consumer.").or_else(|| key.strip_prefix("producer.")).unwrap_or(key);
    key.ends_with(".password")
        || key.ends_with(".secret")
        || matches!(
            key,
            "sasl.password" | "ssl.key.pem" | "ssl_key" | "sasl.oauthbearer.config" | "ssl.keystore.password"
        )
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("'{s}' must be between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
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
    pub properties: Vec<(String, String)>,
    /// Events per IPC batch; a batch is sent when it is full or its linger has passed.
    pub batch_events: usize,
    /// Bytes per IPC batch, kept under ipc-channel's single-fragment size so a send is one syscall.
    pub batch_bytes: usize,
    /// How long a partly filled batch may wait while events keep coming; when librdkafka has none queued, partial
    /// batches go at once.
    pub batch_linger: Duration,
    /// How long start-up may wait for the brokers' metadata.
    pub startup_timeout: Duration,
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
            dlq_topic: cli.dlq_topic.clone().unwrap_or_else(|| format!("{}.dlq", cli.dest_topic)),
            group_id: cli.group_id.clone(),
            hashers,
            queue_capacity: cli.queue_capacity as usize,
            drain_timeout: cli.drain_timeout,
            max_restarts: cli.max_restarts,
            restart_window: cli.restart_window,
            child_timeout: cli.child_timeout,
            status_interval: cli.status_interval,
            metrics_addr: cli.metrics_addr.clone(),
            properties: cli.properties.clone(),
            batch_events: 512,
            batch_bytes: 64 * 1024,
            batch_linger: Duration::from_millis(5),
            startup_timeout: Duration::from_secs(10),
        }
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
        if let Some(addr) = &self.metrics_addr {
            out.push_str(&format!("metrics-addr = {}\n", q(addr)));
        }
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
                let v = if is_secret(k) { "********" } else { v };
                out.push_str(&format!("{} = {}\n", q(k), q(v)));
            }
        }
        out
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
    fn a_config_file_feeds_flags_and_kafka_properties() {
        let f = FileSettings::parse(
            "brokers = \"k1:9092\"\nhashers = 3\ndrain-timeout = 2.5\n[kafka]\n\"sasl.password\" = \"hunter2\"\n",
        )
        .unwrap();
        assert_eq!(
            f.flags,
            vec![
                ("SUPERVISOR_BROKERS", "k1:9092".to_string()),
                ("SUPERVISOR_DRAIN_TIMEOUT", "2.5".to_string()),
                ("SUPERVISOR_HASHERS", "3".to_string())
            ]
        );
        assert_eq!(f.kafka, vec![("sasl.password".to_string(), "hunter2".to_string())]);
        assert!(FileSettings::parse("hasher = 3").unwrap_err().contains("unknown setting 'hasher'"));
        assert!(FileSettings::parse("brokers = [1]").is_err());
        assert!(FileSettings::parse("brokers = ").is_err());
    }

    #[test]
    fn secrets_are_masked() {
        let c = Config::from_cli(&cli(&["-X", "consumer.sasl.password=hunter2", "-X", "ssl.key.password=x"]).unwrap());
        let shown = c.describe();
        assert!(!shown.contains("hunter2") && shown.contains("\"consumer.sasl.password\" = \"********\""), "{shown}");
        assert!(is_secret("sasl.oauthbearer.client.secret") && !is_secret("sasl.username"));
    }

    #[test]
    fn wrong_flags_are_rejected() {
        assert!(cli(&["--hashers", "0"]).is_err());
        assert!(cli(&["--hashers", "many"]).is_err());
        assert!(cli(&["--queue-capacity", "0"]).is_err());
        assert!(cli(&["--drain-timeout", "-1"]).is_err());
        assert!(cli(&["-X", "novalue"]).is_err());
        assert!(cli(&["--no-such-flag"]).is_err());
    }
}
