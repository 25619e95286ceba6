//! Secured clusters: TLS with a CA the test makes (a real tansu behind stunnel), SASL/SCRAM refused by a real tansu
//! that requires authentication, and secrets that appear in no output, whether the run succeeds or fails.

use crate::harness::*;
use std::time::{Duration, Instant};

/// A password no output may contain.
const SECRET: &str = "Sup3r-S3cret-Pw";

fn credentials(name: &str) -> std::path::PathBuf {
    let dir = scratch_dir(name).join("credentials");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kafka-password"), format!("{SECRET}\n")).unwrap();
    dir
}

/// Waits for a start the brokers refused: exit 2 and exactly one error line, which it returns with the log.
fn refused(sup: &mut Running) -> (String, String) {
    let status = sup.wait_timeout(Duration::from_secs(30)).expect("exits");
    let log = sup.log();
    assert_eq!(status.code(), Some(2), "{log}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one error line:\n{log}");
    let error = errors[0].to_string();
    (log, error)
}

#[test]
fn over_tls_every_event_arrives_and_the_password_file_is_never_printed() {
    let tls = TlsBroker::with_topics("tls");
    let events = name_events(2_000, 16);
    let landed = produce(&tls.addr, "src", &events);
    let config = scratch_dir("tls").join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n\"sasl.username\" = \"svc\"\n\
             \"sasl.password\" = \"@kafka-password\"\n",
            tls.certs.ca.display()
        ),
    )
    .unwrap();
    let mut args = base_args(&tls.addr, "gtls");
    args.extend(["--config".to_string(), config.display().to_string(), "--log-level".into(), "debug".into()]);
    let creds = credentials("tls");
    let mut sup = start_with_env(&args, &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    assert!(sup.wait_ready(Duration::from_secs(30)), "did not start over TLS:\n{}", sup.log());
    stop_and_check(&mut sup, Signal::SIGTERM, &tls.addr, "gtls", &events, &landed);
    let log = sup.log();
    assert!(log.contains("connecting to the Kafka brokers at") && log.contains("(security.protocol=SSL)"), "{log}");
    assert!(!log.contains(SECRET), "the password reached the log:\n{log}");

    let out = command()
        .args(["--config", config.to_str().unwrap(), "--print-config"])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("\"sasl.password\" = \"********\"") && !shown.contains(SECRET), "{shown}");
}

#[test]
fn an_untrusted_certificate_is_one_clear_error_and_exit_2_at_once() {
    let tls = TlsBroker::with_topics("untrusted");
    let stranger = tls.certs.stranger_ca.display().to_string();
    let mut args = base_args(&tls.addr, "guntrusted");
    args.extend(["-X", "security.protocol=SSL", "-X", &format!("ssl.ca.location={stranger}")].map(String::from));
    args.extend(["-X".to_string(), format!("ssl.key.password={SECRET}")]);
    let t0 = Instant::now();
    let (log, error) = refused(&mut start(&args));
    assert!(t0.elapsed() < Duration::from_secs(8), "a refusal ends the start at once, not after the timeout: {log}");
    assert!(error.contains("refused this client (security.protocol=SSL)"), "{error}");
    assert!(error.contains("certificate verify failed") && error.contains("check ssl.ca.location"), "{error}");
    let retries = log.lines().filter(|l| l.contains("SSL handshake failed")).count();
    assert!(retries <= 3, "no retry storm in the log ({retries} lines):\n{log}");
    assert!(!log.contains("pipeline running"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
}

#[test]
fn refused_sasl_credentials_are_one_clear_error_and_exit_2_and_the_password_is_never_printed() {
    // tansu with --authentication and memory storage knows no user: every SCRAM login is refused, as a wrong
    // password is.
    let broker = Broker::start_authenticating("sasl");
    let creds = credentials("sasl");
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let mut args = base_args(&broker.addr, "gsasl");
        args.extend(
            ["-X", "security.protocol=SASL_PLAINTEXT", "-X", &format!("sasl.mechanism={mechanism}")].map(String::from),
        );
        args.extend(["-X", "sasl.username=svc", "-X", "sasl.password=@kafka-password"].map(String::from));
        args.extend(["--log-level", "debug"].map(String::from));
        let t0 = Instant::now();
        let (log, error) = refused(&mut start_with_env(&args, &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]));
        assert!(t0.elapsed() < Duration::from_secs(8), "{log}");
        let said = format!("refused this client (security.protocol=SASL_PLAINTEXT, sasl.mechanism={mechanism})");
        assert!(error.contains(&said) && error.contains("authentication failed"), "{error}");
        assert!(error.contains("check sasl.username, sasl.password and sasl.mechanism"), "{error}");
        let retries = log.lines().filter(|l| l.contains("authentication failed")).count();
        assert!(retries <= 3, "no retry storm in the log ({retries} lines):\n{log}");
        assert!(!log.contains(SECRET), "the password reached the log:\n{log}");
    }
}

#[test]
fn refused_credentials_over_tls_point_at_the_credentials_not_the_certificate() {
    let tls = TlsBroker::authenticating("sasl-ssl");
    let creds = credentials("sasl-ssl");
    let ca = tls.certs.ca.display().to_string();
    let mut args = base_args(&tls.addr, "gsaslssl");
    args.extend(["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanism=SCRAM-SHA-512"].map(String::from));
    args.extend(["-X".to_string(), format!("ssl.ca.location={ca}")]);
    args.extend(["-X", "sasl.username=svc", "-X", "sasl.password=@kafka-password"].map(String::from));
    let (log, error) = refused(&mut start_with_env(&args, &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]));
    assert!(
        error.contains("refused this client (security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512)"),
        "{error}"
    );
    assert!(error.contains("check sasl.username, sasl.password and sasl.mechanism"), "{error}");
    assert!(!log.contains(SECRET), "{log}");
}

#[test]
fn a_sasl_ssl_broker_that_is_not_there_is_an_outage_not_a_refusal() {
    // Its name says sasl and ssl, and every connection fails: still exit 3, which systemd restarts, not 2.
    let mut args = base_args(&format!("localhost:{}", free_port()), "gdown");
    args.extend(["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanism=SCRAM-SHA-256"].map(String::from));
    args.extend(["-X", "sasl.username=svc", "-X", "sasl.password=Sup3r-S3cret-Pw"].map(String::from));
    let mut sup = start(&args);
    let status = sup.wait_timeout(Duration::from_secs(40)).expect("exits");
    let log = sup.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(error_lines(&log)[0].contains("cannot reach the Kafka brokers"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
}

#[test]
fn secrets_given_on_the_command_line_or_misspelt_are_never_printed() {
    let cases: [&[&str]; 6] = [
        &["-X", "ssl.key.password=Sup3r-S3cret-Pw", "-X", "security.protocol=bogus"],
        &["-X", "sasl.pasword=Sup3r-S3cret-Pw"],
        &[
            "-X",
            "consumer.sasl.password=Sup3r-S3cret-Pw",
            "-X",
            "security.protocol=SASL_SSL",
            "-X",
            "sasl.mechanism=NOPE",
        ],
        &["-X", "sasl.password:Sup3r-S3cret-Pw"],
        // A space where none belongs: the rest is a stray argument, never echoed.
        &["-X", "sasl.password=Sup3r-", "S3cret-Pw"],
        &["-X", "sasl.password=", "Sup3r-S3cret-Pw"],
    ];
    for case in cases {
        let out = command()
            .args(["--brokers", &format!("127.0.0.1:{}", free_port()), "--log-level", "debug"])
            .args(case)
            .output()
            .unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{case:?}: {all}");
        assert!(!all.contains(SECRET) && !all.contains("S3cret-Pw"), "{case:?} printed the secret:\n{all}");
        assert!(all.contains("error"), "{case:?} says what is wrong:\n{all}");
    }
}

#[test]
fn a_semicolon_in_a_flag_value_is_part_of_the_value() {
    let out = command()
        .args(["-X", "sasl.password=Sup3r;S3cret-Pw", "--print-config"])
        .env("SUPERVISOR_KAFKA_CONFIG", "client.id=from-env;linger.ms=3")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("\"sasl.password\" = \"********\"") && !shown.contains("S3cret"), "{shown}");
    assert!(shown.contains("\"client.id\" = \"from-env\"") && shown.contains("\"linger.ms\" = \"3\""), "{shown}");
    let out = command().arg("--print-config").env("SUPERVISOR_KAFKA_CONFIG", "novalue").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("environment variable SUPERVISOR_KAFKA_CONFIG: an entry has no '='"), "{err}");
}
