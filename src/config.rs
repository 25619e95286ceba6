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

/// Consume JSON events, add \"hash\" (md5 hex of the raw bytes) in N hasher processes, produce them on.
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

    /// Log filter in env_logger's syntax (error, warn, info, debug, or per module: info,librdkafka=debug); wins over
    /// RUST_LOG [default: info].
    #[arg(global = true, long, env = "SUPERVISOR_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

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

    /// Extra bytes of padding in every event (a \"note\" field), for heavier events.
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
    pub properties: Vec<(String, String)>,
    /// Events per IPC batch; a batch is sent when it is full or its linger has passed.
    pub batch_events: usize,
    /// Bytes per IPC batch, kept under ipc-channel's single-fragment size so a send is one syscall.
    pub batch_bytes: usize,
    /// How long a partly filled batch may wait, so a trickle of events is not delayed.
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
            properties: cli.properties.clone(),
            batch_events: 512,
            batch_bytes: 64 * 1024,
            batch_linger: Duration::from_millis(5),
            startup_timeout: Duration::from_secs(10),
        }
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
    fn wrong_flags_are_rejected() {
        assert!(cli(&["--hashers", "0"]).is_err());
        assert!(cli(&["--hashers", "many"]).is_err());
        assert!(cli(&["--queue-capacity", "0"]).is_err());
        assert!(cli(&["--drain-timeout", "-1"]).is_err());
        assert!(cli(&["-X", "novalue"]).is_err());
        assert!(cli(&["--no-such-flag"]).is_err());
    }
}
