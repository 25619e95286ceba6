//! `--lookup`: stream–table joins against a real PostgreSQL table and a real compacted topic. Every output is checked
//! against the row its key names, a changed row shows after the TTL, and a database restart loses nothing.

use crate::harness::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Orders naming customers 1..=50 (and 0, which no row has).
fn orders(n: usize, from: usize) -> Vec<Event> {
    (from..from + n)
        .map(|i| {
            let v = format!(r#"{{"id": {i}, "customer": {}}}"#, i % 51);
            (Some(format!("o{}", i % 16).into_bytes()), Some(v.into_bytes()))
        })
        .collect()
}

const JOIN: &str = r#".tier = (lookup("customers"; .customer) | if . then .tier else "unknown" end)"#;

/// Each output's id with the tier it was joined with.
fn joined(msgs: &[Msg]) -> HashMap<i64, String> {
    msgs.iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
            (v["id"].as_i64().unwrap(), v["tier"].as_str().unwrap().to_string())
        })
        .collect()
}

fn lookup_args(broker: &Broker, group: &str, lookup: &str, extra: &[&str]) -> Vec<String> {
    let mut args = base_args(&broker.addr, group);
    args.extend(["--jq", JOIN, "--lookup", lookup, "--hashers", "2", "--status-interval", "0.5"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn a_postgres_lookup_joins_every_event_sees_changes_after_the_ttl_and_survives_a_restart() {
    let broker = Broker::with_topics("lookuppg");
    let pg = Postgres::start("lookup");
    pg.client("test")
        .batch_execute(
            "CREATE TABLE customers (id BIGINT PRIMARY KEY, tier TEXT NOT NULL);
             INSERT INTO customers SELECT v, CASE WHEN v % 3 = 0 THEN 'gold' ELSE 'tin' END
             FROM generate_series(1, 50) v;",
        )
        .unwrap();
    let first = orders(3_000, 0);
    produce(&broker.addr, "src", &first);
    let args = lookup_args(&broker, "lookuppg", &format!("customers={}", pg.url("customers")), &["--lookup-ttl", "1"]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let out = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= first.len());
    let tiers = joined(&out);
    for i in 0..3_000i64 {
        let c = i % 51;
        let want = match c {
            0 => "unknown",
            c if c % 3 == 0 => "gold",
            _ => "tin",
        };
        assert_eq!(tiers.get(&i).map(String::as_str), Some(want), "order {i} of customer {c}");
    }
    // A changed row is seen once the cached one is older than --lookup-ttl.
    pg.client("test").batch_execute("UPDATE customers SET tier = 'platinum' WHERE id = 7").unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let second = orders(510, 3_000);
    produce(&broker.addr, "src", &second);
    let out = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= 3_510);
    let tiers = joined(&out);
    assert!((3_000..3_510).filter(|i| i % 51 == 7).all(|i| tiers[&i] == "platinum"), "the change is seen");

    // The database goes away mid-run, with keys not yet cached: the lookups wait for it, and nothing is lost.
    pg.client("test").batch_execute("INSERT INTO customers VALUES (1000, 'new')").unwrap();
    let third: Vec<Event> = (0..500)
        .map(|i| (Some(b"o".to_vec()), Some(format!(r#"{{"id": {}, "customer": 1000}}"#, 10_000 + i).into_bytes())))
        .collect();
    std::thread::sleep(Duration::from_millis(1_500));
    let restart = std::thread::spawn(move || {
        pg.restart_after(Duration::from_secs(3));
        pg
    });
    std::thread::sleep(Duration::from_millis(300));
    produce(&broker.addr, "src", &third);
    let pg = restart.join().unwrap();
    let out = read_until(&broker.addr, "dst", Duration::from_secs(90), |m| m.len() >= 4_010);
    let tiers = joined(&out);
    assert!((10_000..10_500).all(|i| tiers.get(&i).map(String::as_str) == Some("new")), "joined after the restart");
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());
    let log = sup.log();
    assert!(log.contains("lookups ") && log.contains("% at hand"), "the status shows the cache's hit rate:\n{log}");
    assert!(!log.contains("restarting the pipeline"), "a database restart is waited out, not a crash:\n{log}");
    drop(pg);
}

#[test]
fn a_compacted_topic_lookup_is_read_whole_and_followed() {
    let broker = Broker::with_topics("lookuptopic");
    broker.create_topics(&[("tiers", PARTITIONS)]);
    let rows: Vec<Event> = (1..=50)
        .map(|c| (Some(c.to_string().into_bytes()), Some(format!(r#"{{"tier": "t{c}"}}"#).into_bytes())))
        .collect();
    produce(&broker.addr, "tiers", &rows);
    let join = r#".tier = (lookup("customers"; .customer) | if . then .tier else "unknown" end)"#;
    let mut args = base_args(&broker.addr, "lookuptopic");
    args.extend(["--jq", join, "--lookup", "customers=kafka:tiers", "--hashers", "2"].map(String::from));
    let first = orders(1_000, 0);
    produce(&broker.addr, "src", &first);
    let mut sup = start(&args);
    let out = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= first.len());
    let tiers = joined(&out);
    for i in 0..1_000i64 {
        let want = if i % 51 == 0 { "unknown".to_string() } else { format!("t{}", i % 51) };
        assert_eq!(tiers[&i], want, "order {i}");
    }
    // A new row and a deletion on the topic reach the lookup as they are written.
    produce(
        &broker.addr,
        "tiers",
        &[(Some(b"7".to_vec()), Some(br#"{"tier": "seven"}"#.to_vec())), (Some(b"8".to_vec()), None)],
    );
    let t0 = Instant::now();
    let mut from = 1_000;
    loop {
        let batch = orders(51, from);
        produce(&broker.addr, "src", &batch);
        from += 51;
        let out = read_until(&broker.addr, "dst", Duration::from_secs(30), |m| m.len() >= from);
        let tiers = joined(&out);
        let of = |c: usize| tiers[&((from - 51..from).find(|i| i % 51 == c).unwrap_or_default() as i64)].clone();
        let (seven, eight) = (of(7), of(8));
        if seven == "seven" && eight == "unknown" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the topic's changes never reached the lookup: {seven} {eight}"
        );
    }
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());
}

#[test]
fn a_bad_lookup_is_one_line_and_exit_2() {
    let (path, db) = sqlite_file("badlookup");
    db.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, tier TEXT)").unwrap();
    let broker = Broker::with_topics("badlookup");
    for (lookup, says) in [
        ("customers=ftp://x", "--lookup customers: "),
        ("sqlite:/tmp/x.db?table=t", "give it as NAME=URL"),
        (
            &format!("customers=sqlite:{}?table=customers&key=customer_id", path.display()) as &str,
            "has no column \"customer_id\"",
        ),
        (&format!("customers=sqlite:{}?table=nope", path.display()), "table \"nope\" does not exist"),
        ("customers=kafka:nope", "topic \"nope\" does not exist"),
    ] {
        let args = lookup_args(&broker, "badlookup", lookup, &[]);
        let mut sup = start(&args);
        let code = sup.wait_timeout(Duration::from_secs(60)).and_then(|s| s.code());
        let log = sup.log();
        assert_eq!(code, Some(2), "{lookup}: {log}");
        let errors = error_lines(&log);
        assert!(
            errors.len() == 1 && errors[0].contains(says) || log.lines().count() == 1 && log.contains(says),
            "{lookup}: {log}"
        );
    }
    let mut args = base_args(&broker.addr, "badlookup");
    args.extend(["--lookup", "c=kafka:tiers"].map(String::from));
    let out = command().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give the filter that reads it with --jq"));
}
