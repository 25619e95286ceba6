//! `--print-config`: the effective configuration as a config file would say it, with secrets masked.

use super::{is_secret, Config};
use crate::telemetry::redact;

impl Config {
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
