//! What a user sees when something is wrong before the pipeline can run: one clear line, a documented exit code,
//! no hang.

use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let path = scratch_dir("journal").join("stderr");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let status = command()
        .args(["--brokers", &format!("127.0.0.1:{}", free_port()), "--log-level", "debug"])
        .env("JOURNAL_STREAM", &stream)
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let log = std::fs::read_to_string(&path).unwrap();
    let error = log.lines().find(|l| l.contains("cannot reach the Kafka brokers")).unwrap_or_else(|| panic!("{log}"));
    assert!(error.starts_with("<3>"), "errors are priority 3: {error}");
    assert!(log.lines().any(|l| l.starts_with("<7>")), "--log-level debug shows debug lines at priority 7:\n{log}");
    assert!(log.lines().all(|l| !l.starts_with("20")), "no timestamps of our own:\n{log}");
}

#[test]
fn settings_come_from_flags_then_the_environment_then_the_file_and_secrets_stay_masked() {
    let path = scratch_dir("config").join("supervisor.toml");
    std::fs::write(
        &path,
        "brokers = \"file:1\"\nsource-topic = \"file-src\"\ndest-topic = \"file-dst\"\nhashers = 3\n\
         [kafka]\n\"sasl.password\" = \"hunter2\"\n\"linger.ms\" = 7\n\"client.id\" = \"from-file\"\n",
    )
    .unwrap();
    let out = command()
        .args(["--config", path.to_str().unwrap(), "--print-config", "--dest-topic", "flag-dst", "-X", "linger.ms=9"])
        .env("SUPERVISOR_SOURCE_TOPIC", "env-src")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    for line in [
        "brokers = \"file:1\"",
        "source-topic = \"env-src\"",
        "dest-topic = \"flag-dst\"",
        "dlq-topic = \"flag-dst.dlq\"",
        "hashers = 3",
        "\"linger.ms\" = \"9\"",
        "\"client.id\" = \"from-file\"",
        "\"sasl.password\" = \"********\"",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line:?} missing from:\n{shown}");
    }
    assert!(!shown.contains("hunter2"), "{shown}");

    // Nor does the secret reach the logs of a run.
    let out = command()
        .args(["--config", path.to_str().unwrap(), "--brokers", &format!("127.0.0.1:{}", free_port())])
        .args(["--log-level", "debug"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[test]
fn every_setting_a_config_file_may_set_is_taken_from_it() {
    let dir = scratch_dir("every-setting");
    std::fs::write(dir.join("f.jq"), ".").unwrap();
    std::fs::write(dir.join("key"), "k3y\n").unwrap();
    let d = dir.display();
    // Each setting with a value that is not its default, and what --print-config shows for it (the setting shown, a
    // part of its line). Several files, as some settings exclude others: one transform each, tables or topics.
    let cases: Vec<(usize, &str, String, &str, String)> = vec![
        (0, "brokers", "\"k9:9092\"".into(), "brokers", "\"k9:9092\"".into()),
        (0, "source-topic", "\"s-in\"".into(), "source-topic", "\"s-in\"".into()),
        (0, "dest-topic", "\"d-out\"".into(), "dest-topic", "\"d-out\"".into()),
        (0, "dlq-topic", "\"d-dead\"".into(), "dlq-topic", "\"d-dead\"".into()),
        (0, "group-id", "\"g1\"".into(), "group-id", "\"g1\"".into()),
        (0, "hashers", "3".into(), "hashers", "3".into()),
        (0, "queue-capacity", "77".into(), "queue-capacity", "77".into()),
        (0, "drain-timeout", "7".into(), "drain-timeout", "7".into()),
        (0, "max-restarts", "2".into(), "max-restarts", "2".into()),
        (0, "restart-window", "9".into(), "restart-window", "9".into()),
        (0, "child-timeout", "11".into(), "child-timeout", "11".into()),
        (0, "status-interval", "5".into(), "status-interval", "5".into()),
        (0, "metrics-addr", "\"127.0.0.1:0\"".into(), "metrics-addr", "\"127.0.0.1:0\"".into()),
        (0, "log-level", "\"debug\"".into(), "log-level", "\"debug\"".into()),
        (0, "jq-file", format!("\"{d}/f.jq\""), "jq-file", format!("\"{d}/f.jq\"")),
        (0, "hmac-key-file", format!("\"{d}/key\""), "hmac-key-file", format!("\"{d}/key\"")),
        (0, "max-rate", "1000".into(), "max-rate", "1000".into()),
        (0, "aggregate", "\"{n: count}\"".into(), "aggregate", "{n: count}".into()),
        (0, "group-by", "\".customer\"".into(), "group-by", ".customer".into()),
        (0, "window", "\"tumbling=10s\"".into(), "window", "tumbling=10s".into()),
        (0, "event-time", "\".at\"".into(), "event-time", ".at".into()),
        (0, "lateness", "\"2s\"".into(), "lateness", "2s".into()),
        (0, "emit", "\"every\"".into(), "emit", "every".into()),
        (0, "idle-timeout", "\"5s\"".into(), "idle-timeout", "5s".into()),
        (2, "output-key", "\".customer\"".into(), "output-key", ".customer".into()),
        (1, "exec", "\"cat -u\"".into(), "exec", "\"cat -u\"".into()),
        (1, "exec-timeout", "4".into(), "exec-timeout", "4".into()),
        (2, "jq", "\".a\"".into(), "jq", "\".a\"".into()),
        (3, "source", format!("\"sqlite:{d}/in.db?table=a\""), "source", "in.db".into()),
        (3, "sink", format!("\"sqlite:{d}/out.db?table=b&key=id\""), "sink", "out.db".into()),
        (3, "checkpoint", format!("\"sqlite:{d}/cp.db\""), "checkpoint", "cp.db".into()),
        (3, "readers", "2".into(), "readers", "2".into()),
        (3, "chunk-rows", "500".into(), "chunk-rows", "500".into()),
        (3, "max-retries", "4".into(), "max-retries", "4".into()),
        (3, "chunk-lease", "12".into(), "chunk-lease", "12".into()),
        (3, "create-table", "true".into(), "create-table", "true".into()),
        (3, "max-dead-letters", "\"off\"".into(), "max-dead-letters", "\"off\"".into()),
        (4, "source", format!("\"sqlite:{d}/in.db?table=a\""), "source", "in.db".into()),
        (4, "state-dir", format!("\"{d}/state\""), "checkpoint", format!("{d}/state/checkpoints.db")),
        // A repeatable flag is an array in the file.
        (5, "sink", "[\"a=kafka:x\", \"b=kafka:y\"]".into(), "sink", "\"a=kafka:x\", \"b=kafka:y\"".into()),
        (2, "lookup", "[\"c=kafka:tiers\"]".into(), "lookup", "\"c=kafka:tiers\"".into()),
        (0, "lookup-ttl", "7".into(), "lookup-ttl", "7".into()),
        (0, "lookup-cache-rows", "70".into(), "lookup-cache-rows", "70".into()),
        (5, "route", "\"\\\"a\\\"\"".into(), "route", "\"\\\"a\\\"\"".into()),
        (6, "source", "\"postgres://app@127.0.0.1:1/shop?table=orders\"".into(), "source", "orders".into()),
        (6, "sink", format!("\"sqlite:{d}/copy.db?table=orders\""), "sink", "copy.db".into()),
        (6, "follow", "true".into(), "follow", "true".into()),
        (6, "slot-lag-warn", "64".into(), "slot-lag-warn", "64".into()),
        (6, "no-tombstones", "true".into(), "no-tombstones", "true".into()),
    ];
    // Every flag a file may set, as clap lists them, is covered: a new flag fails here until it is added above.
    for (long, _) in supervisor::config::file_keys() {
        assert!(cases.iter().any(|(_, key, ..)| *key == long), "no case sets {long} in a config file");
    }
    for file in 0..=6 {
        let path = dir.join(format!("settings-{file}.toml"));
        let text: String =
            cases.iter().filter(|c| c.0 == file).map(|(_, key, value, ..)| format!("{key} = {value}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let out = command().args(["--config", path.to_str().unwrap(), "--print-config"]).output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        for (_, key, _, shown_as, part) in cases.iter().filter(|c| c.0 == file) {
            assert!(
                shown.lines().any(|l| l.starts_with(&format!("{shown_as} = ")) && l.contains(part.as_str())),
                "{key} from the file: no `{shown_as} = ...{part}...` line in:\n{shown}"
            );
        }
    }
}

#[test]
fn a_bad_config_file_is_a_configuration_error() {
    let path = scratch_dir("badconfig").join("supervisor.toml");
    std::fs::write(&path, "hasher = 3\n").unwrap();
    let out = command().args(["--config", path.to_str().unwrap(), "--print-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: config file") && err.contains("unknown setting 'hasher'"), "{err}");
    let out = command().args(["--config", "/nonexistent/supervisor.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn wrong_flags_exit_2() {
    for args in [&["--hashers", "0"][..], &["--queue-capacity", "x"], &["-X", "novalue"], &["--bogus"]] {
        let out = command().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error:"), "{args:?}: {err}");
    }
}

#[test]
fn help_documents_every_flag_and_the_exit_codes() {
    let out = command().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.starts_with("Consume JSON events, transform them"), "{help}");
    assert!(help.contains("The default transform adds \"hash\" (md5 hex"), "quotes shown as quotes:\n{help}");
    assert!(!help.contains('\\'), "no stray backslashes:\n{help}");
    for flag in [
        "--brokers",
        "--source-topic",
        "--dest-topic",
        "--group-id",
        "--hashers",
        "--queue-capacity",
        "--dlq-topic",
        "--drain-timeout",
        "--max-restarts",
        "--restart-window",
        "--child-timeout",
        "--log-level",
        "--status-interval",
        "--metrics-addr",
        "--config",
        "--print-config",
        "--jq",
        "--jq-file",
        "--exec",
        "--exec-timeout",
        "--hmac-key-file",
        "SUPERVISOR_HMAC_KEY",
        "--max-rate",
        "-X",
        "SUPERVISOR_BROKERS",
        "Exit codes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn a_missing_source_topic_is_one_clear_error_and_exit_2() {
    let broker = Broker::start("missing");
    broker.create_topics(&[("dst", 1)]);
    let mut sup = start(&base_args(&broker.addr, "gm"));
    let status = sup.wait_timeout(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(2), "{}", sup.log());
    let log = sup.log();
    assert_eq!(error_lines(&log).len(), 1, "{log}");
    assert!(error_lines(&log)[0].contains("topic \"src\" does not exist"), "{log}");
    assert!(!log.contains("pipeline running"), "nothing claims success after a failed start:\n{log}");
}

#[test]
fn a_missing_destination_topic_is_one_clear_error_and_exit_2() {
    let broker = Broker::start("missingdst");
    broker.create_topics(&[("src", 1)]);
    let mut sup = start(&base_args(&broker.addr, "gm"));
    let status = sup.wait_timeout(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(2), "{}", sup.log());
    let log = sup.log();
    assert_eq!(error_lines(&log).len(), 1, "{log}");
    assert!(error_lines(&log)[0].contains("topic \"dst\" does not exist"), "{log}");
}

#[test]
fn a_bad_kafka_property_is_a_configuration_error() {
    let mut sup = start(&["--brokers".into(), "127.0.0.1:1".into(), "-X".into(), "no.such.property=1".into()]);
    let status = sup.wait_timeout(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(2), "{}", sup.log());
    assert!(sup.log().contains("no.such.property"), "{}", sup.log());
}

#[test]
fn an_unreachable_broker_exits_3_without_hanging() {
    let t0 = Instant::now();
    let mut sup = start(&["--brokers".into(), format!("127.0.0.1:{}", free_port())]);
    let status = sup.wait_timeout(Duration::from_secs(40)).expect("exits, no hang");
    assert_eq!(status.code(), Some(3), "{}", sup.log());
    assert!(t0.elapsed() < Duration::from_secs(20));
    let log = sup.log();
    assert_eq!(error_lines(&log).len(), 1, "{log}");
    assert!(error_lines(&log)[0].contains("cannot reach the Kafka brokers"), "{log}");
}

#[test]
fn a_metrics_port_in_use_or_a_bad_address_is_a_configuration_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (addr, why) in [(taken.as_str(), "in use"), ("localhost", "not a HOST:PORT address")] {
        let t0 = Instant::now();
        let out = command()
            .args(["--brokers", &format!("127.0.0.1:{}", free_port()), "--metrics-addr", addr])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{log}");
        assert_eq!(error_lines(&log).len(), 1, "{log}");
        assert!(error_lines(&log)[0].contains(&format!("cannot serve metrics on --metrics-addr {addr}")), "{log}");
        assert!(error_lines(&log)[0].contains(why), "{log}");
        assert!(t0.elapsed() < Duration::from_secs(5), "fails before any broker is tried");
    }
}

#[test]
fn every_bad_setting_says_where_it_came_from_and_exits_2() {
    let dir = scratch_dir("whence");
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let bad_value = file("bad-value.toml", "brokers = \"k:1\"\nhashers = 0\n");
    let bad_syntax = file("bad-syntax.toml", "brokers = \"k:1\"\nhashers = \n");
    let good = file("good.toml", "status-interval = 5\nlog-level = \"warn\"\n");
    // (flags, environment, what the error says)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&["--config", &bad_value], &[], "line 2, column 11: hashers: invalid value '0': 0 is not in 1..=1024"),
        (&["--config", &bad_syntax], &[], "bad-syntax.toml, line 2, column "),
        (&[], &[("SUPERVISOR_HASHERS", "0")], "environment variable SUPERVISOR_HASHERS (--hashers): invalid value '0'"),
        (&["--hashers", "0"], &[], "invalid value '0' for '--hashers <N>'"),
        (&["--log-level", "verbose"], &[], "off, error, warn, info, debug, trace"),
        (&["--drain-timeout", "0"], &[], "more than 0 and at most 86400 seconds"),
    ];
    for (args, env, says) in cases {
        let out = command().args(args).envs(env.iter().copied()).arg("--print-config").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(says), "{args:?} {env:?}: {err}");
    }
    let out = command().args(["--config", &good, "--print-config"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("status-interval = 5\n") && shown.contains("log-level = \"warn\"\n"), "{shown}");
}

#[test]
fn an_output_topic_that_is_the_source_or_no_topic_name_exits_2_before_anything_connects() {
    let brokers = format!("127.0.0.1:{}", free_port());
    let cases: [(&[&str], &str); 6] = [
        (&["--source-topic", "in", "--dest-topic", "in"], "--dest-topic \"in\" is the source topic"),
        (&["--source-topic", "in", "--dlq-topic", "in"], "--dlq-topic \"in\" is the source topic"),
        (&["--dest-topic", "out", "--dlq-topic", "out"], "--dlq-topic \"out\" is the destination topic"),
        (&["--dlq-topic", ""], "--dlq-topic: is empty"),
        (&["--dest-topic", "a b"], "a topic name may hold only ASCII letters"),
        (
            &["--source", "sqlite:/tmp/same.db?table=t", "--sink", "sqlite:/tmp/same.db?table=t"],
            "--sink is the --source",
        ),
    ];
    for (args, says) in cases {
        // No broker listens there: a refusal before connecting is the only way to exit 2 rather than 3.
        let out = command().args(["--brokers", &brokers]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn a_transform_flag_wins_over_the_transform_in_the_config_file_and_the_environment() {
    let path = scratch_dir("transform-precedence").join("supervisor.toml");
    std::fs::write(&path, "exec = \"cat\"\n").unwrap();
    let out = command().args(["--config", path.to_str().unwrap(), "--jq", ".a", "--print-config"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("jq = \".a\"") && shown.contains("# exec: off"), "{shown}");
    let out = command().env("SUPERVISOR_EXEC", "cat").args(["--jq", ".b", "--print-config"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("jq = \".b\"") && shown.contains("# exec: off"), "{shown}");
    // The environment over the file.
    let out = command()
        .env("SUPERVISOR_JQ", ".c")
        .args(["--config", path.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("jq = \".c\"") && shown.contains("# exec: off"), "{shown}");
}

#[test]
fn version_says_what_the_kafka_client_can_do() {
    let out = command().arg("--version").output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for feature in ["ssl", "sasl_scram", "sasl_plain", "sasl_oauthbearer"] {
        assert!(shown.contains(feature), "{feature}: {shown}");
    }
    assert_eq!(shown.contains("sasl_gssapi"), cfg!(feature = "gssapi"), "{shown}");
    assert_eq!(shown.contains("oidc"), cfg!(feature = "oidc"), "{shown}");
}

#[test]
fn the_default_build_links_neither_cyrus_sasl_nor_libcurl() {
    // A fresh machine has OpenSSL's headers but not these: the default build must not need them.
    let out = std::process::Command::new("ldd").arg(env!("CARGO_BIN_EXE_supervisor")).output().unwrap();
    let linked = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && linked.contains("libc.so"), "{linked}");
    assert_eq!(linked.contains("libsasl2"), cfg!(feature = "gssapi"), "{linked}");
    assert_eq!(linked.contains("libcurl"), cfg!(feature = "oidc"), "{linked}");
}

#[test]
fn more_hashers_than_partitions_is_warned_about() {
    let broker = Broker::start("idle");
    broker.create_topics(&[("src", 2), ("dst", 2)]);
    let mut args = base_args(&broker.addr, "gidle");
    args.extend(["--hashers", "3"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    let log = sup.log();
    assert!(log.contains("3 workers for 2 partitions of \"src\": 1 will idle"), "{log}");
}
