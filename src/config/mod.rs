//! The command-line contract, its environment variables, and the librdkafka client configurations built from it.
//!
//! `cli.rs` declares the settings, `load.rs` settles them (file, environment, flags) into a [`Cli`], this file turns
//! them into the [`Config`] every process works from, and `describe.rs` prints them back (`--print-config`).

pub mod aggregate;
mod cli;
pub mod dead_letters;
mod describe;
mod ends;
mod file;
pub mod librdkafka;
mod load;
pub mod lookups;
mod secret;
pub mod sinks;
pub mod topics;
mod transform;

use crate::sql::url::TableUrl;
pub use aggregate::Aggregation;
pub use cli::{
    file_keys, BranchDemoArgs, CdcDemoArgs, Cli, Command, DemoArgs, DemoCommand, SqlDemoArgs, WindowDemoArgs,
    DEMO_SQL_ROWS, EXIT_CODES_HELP,
};
pub use dead_letters::MaxDeadLetters;
pub use ends::{SinkSpec, SourceSpec};
pub use load::{default_state_dir, Invalid};
use rdkafka::config::ClientConfig;
pub use secret::{is_secret, Property};
use std::time::Duration;
pub use transform::{ExecSpec, JqSpec, TransformSpec};

/// `--queue-capacity` when not given.
pub const QUEUE_CAPACITY: usize = 10_000;
/// `--queue-capacity` when not given, with `--aggregate`: inputs wait for the state's next save before they are
/// acknowledged, and a save writes a row per key that changed, so the more inputs a save covers the fewer rows per
/// input it writes.
pub const QUEUE_CAPACITY_AGGREGATING: usize = 100_000;

/// The settled configuration every process of the pipeline works from: the settings as given (`settings`, read
/// through `Deref` as `cfg.brokers`), what is derived from them, and the pipeline's fixed tunables.
///
/// A setting is declared once, in [`Cli`]; only a value computed from others (or from the machine) gets a field here,
/// under the setting's own name, which then shadows the setting as given.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every setting as given: flags over the environment over the config file over the defaults, files read.
    pub settings: Cli,
    /// `--dlq-topic`, or the destination topic's name with `.dlq` added.
    pub dlq_topic: String,
    /// `--hashers`, or the number of CPUs.
    pub hashers: usize,
    /// `--queue-capacity` and `--readers`, as the counts they are used as.
    pub queue_capacity: usize,
    pub readers: usize,
    /// Events per IPC batch; a batch is sent when it is full or its linger has passed.
    pub batch_events: usize,
    /// Bytes per IPC batch, kept under ipc-channel's single-fragment size so a send is one syscall.
    pub batch_bytes: usize,
    /// How long a partly filled batch may wait while events keep coming; when librdkafka has none queued, partial
    /// batches go at once.
    pub batch_linger: Duration,
    /// How long start-up may wait for the brokers' metadata.
    pub startup_timeout: Duration,
    /// Which generation of the pipeline the process belongs to (1 for the first start); the supervisor sets it before
    /// each fork. A child that fails to start in a later generation is a crash to restart, not a configuration error.
    pub generation: u64,
}

/// The settings as given, for those that need nothing derived: `cfg.brokers`, `cfg.tables`, `cfg.transform`.
impl std::ops::Deref for Config {
    type Target = Cli;

    fn deref(&self) -> &Cli {
        &self.settings
    }
}

impl std::ops::DerefMut for Config {
    fn deref_mut(&mut self) -> &mut Cli {
        &mut self.settings
    }
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
    /// Every `--sink`, in the order given; empty means the one sink `sink` or `--dest-topic` names.
    pub sinks: Vec<sinks::SinkDef>,
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
            settings: cli.clone(),
            dlq_topic: cli.dead_letter_topic(),
            hashers,
            queue_capacity: cli
                .queue_capacity
                .map_or(if cli.aggregate.is_some() { QUEUE_CAPACITY_AGGREGATING } else { QUEUE_CAPACITY }, |n| {
                    n as usize
                }),
            readers: usize::from(cli.readers),
            batch_events: 512,
            batch_bytes: 64 * 1024,
            batch_linger: Duration::from_millis(5),
            startup_timeout: Duration::from_secs(10),
            generation: 1,
        }
    }

    /// Where events come from: chosen here, once.
    pub fn source(&self) -> SourceSpec<'_> {
        match &self.tables.source {
            Some(url) => SourceSpec::Table(url),
            None => SourceSpec::Topic(&self.source_topic),
        }
    }

    /// Where events go: chosen here, once.
    pub fn sink(&self) -> SinkSpec<'_> {
        match &self.tables.sink {
            Some(url) => SinkSpec::Table(url),
            None => SinkSpec::Topic { topic: &self.dest_topic, dead_letters: &self.dlq_topic },
        }
    }

    /// The topics `--source-topic` names, or its pattern.
    pub fn source_topics(&self) -> topics::SourceTopics<'_> {
        topics::SourceTopics::parse(&self.source_topic)
    }

    /// Every sink, in `--sink`'s order: one unless several were named.
    pub fn sinks(&self) -> Vec<sinks::SinkDef> {
        if !self.tables.sinks.is_empty() {
            return self.tables.sinks.clone();
        }
        let target = match &self.tables.sink {
            Some(url) => sinks::SinkTarget::Table(url.clone()),
            None => sinks::SinkTarget::Topic { topic: self.dest_topic.clone(), dead_letters: self.dlq_topic.clone() },
        };
        vec![sinks::SinkDef { name: None, target }]
    }

    /// The settings as sink `index` sees them: `sink()`, `--dest-topic` and `--dlq-topic` are that sink's.
    pub fn for_sink(&self, index: usize) -> Config {
        let mut cfg = self.clone();
        if let Some(def) = self.tables.sinks.get(index) {
            match &def.target {
                sinks::SinkTarget::Table(url) => cfg.tables.sink = Some(url.clone()),
                sinks::SinkTarget::Topic { topic, dead_letters } => {
                    cfg.tables.sink = None;
                    cfg.settings.dest_topic = topic.clone();
                    cfg.dlq_topic = dead_letters.clone();
                }
            }
        }
        cfg
    }

    /// Where events come from, as the logs name it: the table and where it is (no credentials), or the topic.
    pub fn source_name(&self) -> String {
        self.source().name()
    }

    /// Where events go, as the logs name it.
    pub fn sink_name(&self) -> String {
        let sinks = self.sinks();
        if sinks.len() == 1 {
            return self.sink().name();
        }
        let named: Vec<String> = sinks
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} ({})", s.label(), self.for_sink(i).sink().name()))
            .collect();
        named.join(", ")
    }

    /// An event's place in the source, in the source's words: a partition and offset, or a chunk and row.
    pub fn place(&self, at: crate::position::Position) -> crate::position::Place {
        self.source().place(at)
    }

    /// Where rejected events go, as the logs name it.
    pub fn dead_letter_name(&self) -> String {
        self.sink().dead_letters()
    }

    /// Where each sink's rejected events go, as the start-up line names them.
    pub fn dead_letter_names(&self) -> String {
        let sinks = self.sinks();
        if sinks.len() == 1 {
            return self.dead_letter_name();
        }
        let each: Vec<String> = (0..sinks.len())
            .map(|i| format!("{}: {}", sinks[i].label(), self.for_sink(i).dead_letter_name()))
            .collect();
        each.join(", ")
    }

    /// Whether any stage talks to Kafka.
    pub fn uses_kafka(&self) -> bool {
        !self.source().is_table()
            || self.sinks().iter().any(|s| matches!(s.target, sinks::SinkTarget::Topic { .. }))
            || self.lookups.iter().any(|l| matches!(l.target, lookups::LookupTarget::Topic(_)))
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
    use clap::Parser;

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
        use clap::CommandFactory;
        // What a file may set is read from clap: every flag with an environment variable. Only these are for the
        // command line alone: which file to read, printing the settings, and a one-off restart of a table scan.
        let command_line_only = ["config", "print-config", "rescan", "drop-slot"];
        let keys: Vec<String> = file_keys().into_iter().map(|(k, _)| k).collect();
        for arg in Cli::command().get_arguments() {
            // -X has no long name: its file form is the [kafka] table.
            let Some(long) = arg.get_long() else { continue };
            assert_eq!(
                keys.iter().any(|k| k == long),
                !command_line_only.contains(&long),
                "--{long}: a flag without an environment variable cannot be set in a config file"
            );
        }
        for long in ["source", "sink", "checkpoint", "readers", "chunk-rows", "max-retries", "chunk-lease"] {
            assert!(keys.iter().any(|k| k == long), "{long} missing from {keys:?}");
        }
        for long in ["create-table", "max-dead-letters", "state-dir", "max-rate", "jq", "hmac-key-file"] {
            assert!(keys.iter().any(|k| k == long), "{long} missing from {keys:?}");
        }
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
}
