//! Settling the settings: the config file under the environment under the flags, `@file` values read, secrets
//! registered for masking, the URLs parsed, and the settings that cannot work together refused.

use super::cli::{split_property, KAFKA_CONFIG_ENV};
use super::file::{FileFlag, FileSettings};
use super::secret::{self, Property};
use super::sinks::{self, SinkTarget};
use super::{file_keys, topics, transform, Cli, Command, DemoArgs, Tables};
use crate::sql::url::TableUrl;
use crate::telemetry::redact;
use clap::Parser;
use std::ffi::OsString;
use std::path::PathBuf;

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
    pub(super) fn dead_letter_topic(&self) -> String {
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
        cli.lookup.iter().for_each(|given| keep_secrets(given));
        cli.lookups = super::lookups::parse(&cli.lookup).map_err(Invalid::Setting)?;
        for def in &cli.lookups {
            if let super::lookups::LookupTarget::Table(url) = &def.target {
                keep_password(url);
            }
        }
        if !cli.lookups.is_empty() && !matches!(cli.transform, super::TransformSpec::Jq(_)) {
            return Err(Invalid::Setting(
                "--lookup is read by jq's lookup(\"NAME\"; KEY): give the filter that reads it with --jq".into(),
            ));
        }
        cli.aggregation = super::Aggregation::resolve(&cli).map_err(Invalid::Setting)?;
        if let Some(Command::Demo(DemoArgs { brokers: Some(_), .. })) = &cli.command {
            return Err(Invalid::Setting(
                "demo runs its own embedded Kafka and takes no --brokers; to run the pipeline on your cluster, leave \
                 out demo: supervisor --brokers HOST:PORT --source-topic T --dest-topic T"
                    .into(),
            ));
        }
        let reading = cli.tables.source.is_none().then_some(cli.source_topic.as_str());
        for def in &cli.tables.sinks {
            match &def.target {
                SinkTarget::Topic { topic, dead_letters } => {
                    let named = !cli.sink.is_empty();
                    topics::Topics { source: reading, dest: Some(topic.as_str()), dead_letter: Some(dead_letters) }
                        .check()
                        .map_err(|e| match named {
                            true => format!("--sink {}: {e}", def.label()),
                            false => e,
                        })
                        .map_err(Invalid::Setting)?;
                }
                SinkTarget::Table(sink) => {
                    if let Some(source) = &cli.tables.source {
                        if source.describe() == sink.describe() {
                            return Err(Invalid::Setting(format!(
                                "--sink is the --source, {}: the scan would read back what it writes; write to another \
                                 table",
                                sink.describe()
                            )));
                        }
                    }
                }
            }
        }
        let several = cli.tables.sinks.len() > 1;
        if cli.route.is_some() && cli.tables.sinks.iter().all(|s| s.name.is_none()) {
            return Err(Invalid::Setting(
                "--route chooses among named sinks: give them as --sink NAME=URL (kafka:TOPIC for a topic)".into(),
            ));
        }
        if cli.tables.source.is_none()
            && topics::SourceTopics::parse(&cli.source_topic).several()
            && cli.aggregate.is_some()
        {
            return Err(Invalid::Setting(
                "--aggregate reads one source topic; several (a list or a pattern) are not supported with it yet"
                    .into(),
            ));
        }
        if cli.follow || cli.drop_slot {
            let flag = if cli.follow { "--follow" } else { "--drop-slot" };
            match cli.tables.source.as_ref().map(|u| u.engine) {
                Some(crate::sql::url::Engine::Postgres) => {}
                Some(engine) => {
                    return Err(Invalid::Setting(format!(
                        "{flag} reads PostgreSQL's logical replication; a {} --source table can be scanned, not \
                         followed (MySQL's binlog is not supported yet)",
                        engine.name()
                    )))
                }
                None => {
                    return Err(Invalid::Setting(format!(
                        "{flag} follows a PostgreSQL table: give it as --source postgres://USER@HOST/DB?table=T"
                    )))
                }
            }
            if cli.follow && cli.aggregate.is_some() {
                return Err(Invalid::Setting(
                    "--aggregate with --follow is not supported yet: a delete or an update would have to take back \
                     what an aggregate already counted"
                        .into(),
                ));
            }
        }
        if several && cli.aggregate.is_some() {
            return Err(Invalid::Setting(
                "--aggregate writes to one sink; several --sink values are not supported with it yet".into(),
            ));
        }
        // Sink 0's names, which the workers' dead letters and `sink()` read (each sink's process gets its own).
        if let Some(SinkTarget::Topic { topic, dead_letters }) = cli.tables.sinks.first().map(|d| &d.target) {
            if !cli.sink.is_empty() {
                cli.dest_topic = topic.clone();
                cli.dlq_topic = Some(dead_letters.clone());
            }
        }
        // Last: a flag given in vain matters less than a setting that cannot work.
        refuse_unused(&args, &cli, &keys).map_err(Invalid::Setting)?;
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
fn refuse_unused(args: &[OsString], cli: &Cli, keys: &[(String, String)]) -> Result<(), String> {
    let tables = &cli.tables;
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
    let named = tables.sinks.iter().any(|s| s.name.is_some());
    let sink_given = match (&tables.sink, named, cli.sink.first()) {
        (Some(_), false, _) => end(&tables.sink, "--sink"),
        (_, true, _) => Some("--sink names the destinations".to_string()),
        (_, false, Some(_)) => Some("--sink names the destination topic".to_string()),
        _ => None,
    };
    let dead_letters_given = match (&tables.sink, named) {
        (Some(_), false) => sink_given.as_ref().map(|s| format!("{s}, whose dead letters go to a table")),
        (_, true) => Some("each named --sink has its own dead letters (TOPIC.dlq, TABLE_dead_letter)".to_string()),
        _ => None,
    };
    let unused: [(&str, Option<String>); 4] = [
        ("source-topic", end(&tables.source, "--source")),
        ("group-id", end(&tables.source, "--source")),
        ("dest-topic", sink_given),
        ("dlq-topic", dead_letters_given),
    ];
    for (long, why) in unused {
        if let (Some(why), Some(flag)) = (why, given(long)) {
            return Err(format!("{flag} does not apply: {why}; leave it out"));
        }
    }
    let all_tables = tables.sinks.iter().all(|s| matches!(s.target, SinkTarget::Table(_)))
        && !cli.lookups.iter().any(|l| matches!(l.target, super::lookups::LookupTarget::Topic(_)));
    if let (Some(_), true, Some(flag)) = (&tables.source, all_tables, given("brokers")) {
        return Err(format!("{flag} does not apply: --source and --sink are all tables; leave it out"));
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

impl Tables {
    fn resolve(cli: &Cli) -> Result<Tables, String> {
        let parse = |flag: &str, given: &Option<String>| -> Result<Option<TableUrl>, String> {
            let Some(given) = given else { return Ok(None) };
            keep_secrets(given);
            let url = TableUrl::parse(given).map_err(|e| format!("--{flag}: {e}"))?;
            url.table().map_err(|e| format!("--{flag}: {e}"))?;
            keep_password(&url);
            Ok(Some(url))
        };
        let source = parse("source", &cli.source)?;
        cli.sink.iter().for_each(|given| keep_secrets(given));
        let sinks = sinks::parse(&cli.sink, &cli.dest_topic, cli.dlq_topic.as_deref())?;
        for def in &sinks {
            if let SinkTarget::Table(url) = &def.target {
                keep_password(url);
            }
        }
        let sink = sinks.first().and_then(|d| match &d.target {
            SinkTarget::Table(url) => Some(url.clone()),
            SinkTarget::Topic { .. } => None,
        });
        let checkpoint = match (&source, &cli.checkpoint) {
            (None, _) => None,
            (Some(_), Some(given)) => {
                let url = TableUrl::parse(given).map_err(|e| format!("--checkpoint: {e}"))?;
                keep_secrets(given);
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
        Ok(Tables { source, sink, checkpoint, state_dir, sinks })
    }
}

/// Registers for masking every secret a URL as given holds (`password=`, the userinfo's), before it is parsed or named
/// in any message.
fn keep_secrets(given: &str) {
    for secret in crate::sql::url::secrets(given) {
        redact::keep_secret(&secret);
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
