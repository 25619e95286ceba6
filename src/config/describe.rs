//! `--print-config`: the effective configuration as a config file would say it, with secrets masked.
//!
//! Nothing here names an ordinary setting: the lines follow clap's own list of the settings a config file may set
//! ([`file_keys`], in `--help`'s order), each with its value as given ([`Cli`] serialized, every field under its long
//! name) or, unset, a comment saying what happens then (the help's `[default: ...]`). Only settings whose effective value
//! is not what was given are named, in [`Config::derived`]: a default computed from others, the transform the flags
//! chose, URLs with their passwords masked.

use super::{file_keys, is_secret, Cli, Config};
use crate::telemetry::redact;
use clap::CommandFactory;

/// One setting's line.
pub(super) enum Shown {
    /// `key = value`, the value as TOML writes it.
    Set(String),
    /// `# key: what happens when it is not set`.
    Unset(String),
}

/// A string as TOML (and Rust) quote it.
pub(super) fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// The line for a setting as given, from its serialized value.
fn shown(value: &serde_json::Value) -> Option<Shown> {
    use serde_json::Value;
    Some(Shown::Set(match value {
        Value::Null => return None,
        Value::String(s) => quoted(s),
        Value::Bool(b) => b.to_string(),
        // Whole numbers as they are; seconds (floats) without a trailing ".0".
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (None, Some(i), _) => i.to_string(),
            (None, None, Some(f)) => f.to_string(),
            (None, None, None) => n.to_string(),
        },
        other => other.to_string(),
    }))
}

/// What happens when an optional setting is not set, where its help's `[default: ...]` does not say it that way.
const UNSET: [(&str, &str); 2] =
    [("status-interval", "1 when stderr is a terminal, 30 otherwise"), ("log-level", "RUST_LOG, or info")];

/// What happens when `long` is not set: the note above, else its help's `[default: ...]`.
fn unset(long: &str) -> String {
    if let Some((_, note)) = UNSET.iter().find(|(l, _)| *l == long) {
        return note.to_string();
    }
    let command = Cli::command();
    let help = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_long_help().or(a.get_help()))
        .map(|h| h.to_string())
        .unwrap_or_default();
    let default = help.rsplit_once("[default: ").and_then(|(_, rest)| rest.split_once(']')).map(|(d, _)| d);
    default.unwrap_or("not set").to_string()
}

impl Config {
    /// The effective configuration as a config file would say it, with secrets masked.
    pub fn describe(&self) -> String {
        let given = serde_json::to_value(&self.settings).unwrap_or_default();
        let mut out = String::new();
        for (long, _) in file_keys() {
            let line = self
                .derived(&long)
                .or_else(|| given.get(&long).and_then(shown))
                .unwrap_or_else(|| Shown::Unset(unset(&long)));
            match line {
                Shown::Set(value) => out.push_str(&format!("{long} = {value}\n")),
                Shown::Unset(note) => out.push_str(&format!("# {long}: {note}\n")),
            }
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
                let v = if is_secret(k) || redact::is_kept(v) { redact::MASK } else { v };
                out.push_str(&format!("{} = {}\n", quoted(k), quoted(v)));
            }
        }
        out
    }

    /// The line of a setting whose effective value is not the one given; `None` for every other setting.
    fn derived(&self, long: &str) -> Option<Shown> {
        Some(match long {
            // Computed when not given: from --dest-topic, from the machine.
            "dlq-topic" => Shown::Set(quoted(&self.dlq_topic)),
            "hashers" => Shown::Set(self.hashers.to_string()),
            // Larger with --aggregate when not given.
            "queue-capacity" => Shown::Set(self.queue_capacity.to_string()),
            // The transform the flags chose, and only the flags that made it.
            "jq" | "jq-file" | "exec" | "exec-timeout" | "hmac-key-file" => self.transform.shown(long)?,
            // The lookups' URLs as parsed, their passwords masked.
            "lookup" => match self.lookups.as_slice() {
                [] => Shown::Unset("none".into()),
                each => {
                    let shown: Vec<String> = each
                        .iter()
                        .map(|l| match &l.target {
                            super::lookups::LookupTarget::Table(url) => quoted(&format!("{}={url}", l.name)),
                            super::lookups::LookupTarget::Topic(t) => quoted(&format!("{}=kafka:{t}", l.name)),
                        })
                        .collect();
                    Shown::Set(format!("[{}]", shown.join(", ")))
                }
            },
            "sink" if !self.sink.is_empty() => {
                let each: Vec<String> = self
                    .sinks()
                    .iter()
                    .map(|s| {
                        // As --sink takes it back: kafka:TOPIC, or the URL with its password masked.
                        let at = match &s.target {
                            super::sinks::SinkTarget::Topic { topic, .. } => format!("kafka:{topic}"),
                            super::sinks::SinkTarget::Table(url) => url.to_string(),
                        };
                        quoted(&s.name.as_ref().map_or(at.clone(), |n| format!("{n}={at}")))
                    })
                    .collect();
                Shown::Set(format!("[{}]", each.join(", ")))
            }
            "source" | "sink" | "checkpoint" => {
                let url = match long {
                    "source" => &self.tables.source,
                    "sink" => &self.tables.sink,
                    _ => &self.tables.checkpoint,
                };
                match url {
                    Some(url) => Shown::Set(quoted(&url.to_string())),
                    None if long == "checkpoint" => Shown::Unset("only for a table source".into()),
                    None => Shown::Unset("Kafka".into()),
                }
            }
            // It only places the default checkpoint store, shown above.
            "state-dir" => Shown::Unset("where the default checkpoint store is".into()),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{file_keys, Cli, Config};
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("supervisor").chain(args.iter().copied()))
    }

    #[test]
    fn print_config_is_one_line_per_setting_in_help_order() {
        let shown = Config::from_cli(&cli(&["--hashers", "8"]).unwrap()).describe();
        assert_eq!(
            shown,
            "brokers = \"localhost:9092\"
source-topic = \"name_stream\"
dest-topic = \"name_stream_transformed\"
dlq-topic = \"name_stream_transformed.dlq\"
group-id = \"supervisor\"
hashers = 8
queue-capacity = 10000
drain-timeout = 30
max-restarts = 5
restart-window = 60
child-timeout = 30
# status-interval: 1 when stderr is a terminal, 30 otherwise
# metrics-addr: off
# log-level: RUST_LOG, or info
# jq: off (without --jq, --jq-file or --exec, \"hash\" is added: the md5 of the event)
# jq-file: off
# exec: off
# exec-timeout: 30 (with --exec)
# hmac-key-file: none (or the key in SUPERVISOR_HMAC_KEY)
# output-key: the input's key
# max-rate: no limit
# source: Kafka
# sink: Kafka
# lookup: none
lookup-ttl = 60
lookup-cache-rows = 100000
# route: every sink
# checkpoint: only for a table source
# state-dir: where the default checkpoint store is
readers = 4
chunk-rows = 100000
max-retries = 10
chunk-lease = 30
create-table = false
follow = false
slot-lag-warn = 1024
no-tombstones = false
max-dead-letters = \"10%\"
# aggregate: not set
# group-by: the event's key; a table row's key
# window: one running aggregate per key that never closes
# event-time: the Kafka message's timestamp; for a table row the time it was read, which a rerun does not repeat
lateness = \"0s\"
# emit: final with --window, every without
idle-timeout = \"30s\"
"
        );
        let shown = Config::from_cli(
            &cli(&["--drain-timeout", "2.5", "--max-rate", "7", "--metrics-addr", "[::1]:0", "--create-table"])
                .unwrap(),
        )
        .describe();
        for line in ["drain-timeout = 2.5\n", "max-rate = 7\n", "metrics-addr = \"[::1]:0\"\n", "create-table = true\n"]
        {
            assert!(shown.contains(line), "{line:?} missing from:\n{shown}");
        }
    }

    #[test]
    fn every_setting_given_is_shown_as_set() {
        // Every setting a file may set, given a value, is a `key = value` line: none falls back to a comment (a field
        // left out of the serialization would). The state directory alone only places the checkpoint store.
        let mut args: Vec<String> = Vec::new();
        for (long, _) in file_keys() {
            let value = match long.as_str() {
                "hashers" | "queue-capacity" | "max-restarts" | "readers" | "chunk-rows" | "max-retries" => "3",
                "lookup-ttl" | "lookup-cache-rows" => "3",
                "max-rate" | "drain-timeout" | "restart-window" | "child-timeout" | "status-interval" => "3",
                "exec-timeout" | "chunk-lease" | "slot-lag-warn" => "3",
                "max-dead-letters" => "off",
                "emit" => "final",
                "log-level" => "debug",
                "create-table" | "follow" | "no-tombstones" => {
                    args.push(format!("--{long}"));
                    continue;
                }
                // The transform and the tables are settled by `Cli::load`, and shown as settled.
                "jq" | "jq-file" | "exec" | "hmac-key-file" | "source" | "sink" | "checkpoint" | "state-dir"
                | "lookup" => continue,
                _ => "x",
            };
            args.extend([format!("--{long}"), value.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let shown = Config::from_cli(&cli(&args).unwrap()).describe();
        for line in shown.lines().filter(|l| l.starts_with('#')) {
            let long = line.trim_start_matches("# ").split(':').next().unwrap_or_default();
            assert!(
                [
                    "jq",
                    "jq-file",
                    "exec",
                    "exec-timeout",
                    "hmac-key-file",
                    "source",
                    "sink",
                    "checkpoint",
                    "state-dir",
                    "lookup"
                ]
                .contains(&long),
                "{line}: given, yet shown as unset"
            );
        }
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
}
