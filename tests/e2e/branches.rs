//! Several sinks: `--sink NAME=URL` given more than once, `--route` choosing among them, against a real broker and a
//! real table; each sink killed in turn, and every output checked where its route says it belongs.

use crate::harness::*;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Events with a unique id, an amount that decides the route, and a key that keeps each key's order.
fn orders(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let amount = (i * 7919) % 1000;
            let bad = i % 997 == 5;
            let v = format!(r#"{{"id": {i}, "amount": {amount}, "bad": {bad}, "key": "k{}"}}"#, i % 64);
            (Some(format!("k{}", i % 64).into_bytes()), Some(v.into_bytes()))
        })
        .collect()
}

/// What the route below sends where: (to the table, to the alerts topic, to the dead letters), by id.
fn expected(events: &[Event]) -> (BTreeSet<i64>, BTreeSet<i64>, BTreeSet<i64>) {
    let (mut raw, mut alerts, mut dead) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (_, v) in events {
        let v: serde_json::Value = serde_json::from_slice(v.as_deref().unwrap()).unwrap();
        let (id, amount) = (v["id"].as_i64().unwrap(), v["amount"].as_i64().unwrap());
        if v["bad"] == true {
            dead.insert(id);
        } else if amount >= 900 {
            raw.insert(id);
            alerts.insert(id);
        } else if amount >= 10 {
            raw.insert(id);
        }
    }
    (raw, alerts, dead)
}

const ROUTE: &str =
    r#"if .bad then "nowhere" elif .amount >= 900 then ["alerts", "raw"] elif .amount < 10 then null else "raw" end"#;

fn ids(msgs: &[Msg]) -> Vec<i64> {
    msgs.iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(m.payload.as_deref().unwrap()).unwrap()["id"].as_i64().unwrap()
        })
        .collect()
}

fn table_ids(path: &std::path::Path) -> BTreeSet<i64> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut st = c.prepare("SELECT id FROM raw").unwrap();
    let rows = st.query_map([], |r| r.get::<_, i64>(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn a_route_sends_each_output_to_its_sinks_and_a_killed_sink_loses_nothing() {
    let broker = Broker::with_topics("branches");
    broker.create_topics(&[("alerts", PARTITIONS)]);
    let (path, _db) = sqlite_file("branches");
    let events = orders(30_000);
    let mut args = without(&base_args(&broker.addr, "branches"), &["dest-topic"]);
    let raw = format!("raw=sqlite:{}?table=raw&key=id", path.display());
    args.extend(
        ["--sink", "alerts=kafka:alerts", "--sink", &raw, "--create-table", "--route", ROUTE, "--hashers", "2"]
            .map(String::from),
    );
    args.extend(["--queue-capacity", "2000", "--status-interval", "0.5"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let children = sup.children();
    assert!(children.contains_key("sink-alerts") && children.contains_key("sink-raw"), "{children:?}");
    let loader = trickle(&broker.addr, &events, 2_500, Duration::from_millis(100));

    // Each sink killed in turn while events flow: the pipeline restarts, and nothing is missing anywhere.
    for (n, victim) in ["sink-raw", "sink-alerts"].into_iter().enumerate() {
        wait_for_events(&broker.addr, "alerts", 300 * (n + 1), Duration::from_secs(60));
        let pid = sup.child_pid(victim);
        kill(pid, Signal::SIGKILL).unwrap();
        assert!(sup.wait_restarted("sink", n as u32 + 1, Duration::from_secs(60)), "no restart:\n{}", sup.log());
        assert!(sup.log().contains(&format!("{victim} (pid {pid}) was killed by SIGKILL")), "{}", sup.log());
    }
    let landed = loader.join().unwrap();
    let (want_raw, want_alerts, want_dead) = expected(&events);
    // Everything is through once the table has every row it should (it holds each id once, however often written).
    let t0 = std::time::Instant::now();
    while table_ids(&path).len() < want_raw.len() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());

    assert_eq!(table_ids(&path), want_raw, "the table holds exactly what was routed to raw");
    let alerts = read_until(&broker.addr, "alerts", Duration::from_secs(30), |m| m.len() >= want_alerts.len());
    let got: Vec<i64> = ids(&alerts);
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(unique, want_alerts, "the alerts topic holds exactly what was routed to alerts");
    assert!(got.len() - unique.len() <= 2 * 2_000, "duplicates only within what was in flight: {}", got.len());
    // Per key, the alerts of one run keep their order: ids only go down where a restart replayed.
    let mut by_key: HashMap<Vec<u8>, Vec<i64>> = HashMap::new();
    for (m, id) in alerts.iter().zip(&got) {
        by_key.entry(m.key.clone().unwrap()).or_default().push(*id);
    }
    let drops: usize = by_key.values().map(|ids| ids.windows(2).filter(|w| w[1] < w[0]).count()).sum();
    assert!(drops <= 2 * 64, "order per key: {drops} steps back");
    // An unknown sink's name is a dead letter of the first sink, with the reason.
    let dead = read_until(&broker.addr, "alerts.dlq", Duration::from_secs(30), |m| m.len() >= want_dead.len());
    assert_eq!(ids(&dead).into_iter().collect::<BTreeSet<_>>(), want_dead);
    let reason = dead[0].headers.values().find(|v| v.contains("no sink has that name")).cloned();
    assert!(reason.is_some_and(|r| r.contains("\"nowhere\"")), "{:?}", dead[0].headers);
    assert_eq!(committed(&broker.addr, "branches", "src"), end_offsets(&landed), "committed offsets");
    let log = sup.log();
    assert!(log.contains("sink alerts:") && log.contains("sink raw:"), "a summary line per sink:\n{log}");
}

#[test]
fn without_a_route_every_output_goes_to_every_sink() {
    let broker = Broker::with_topics("tee");
    broker.create_topics(&[("copy", PARTITIONS)]);
    let events = name_events(5_000, 32);
    let landed = produce(&broker.addr, "src", &events);
    let mut args = without(&base_args(&broker.addr, "tee"), &["dest-topic"]);
    args.extend(["--sink", "one=kafka:dst", "--sink", "two=kafka:copy", "--hashers", "2"].map(String::from));
    let mut sup = start(&args);
    let checked = stop_and_check(&mut sup, Signal::SIGTERM, &broker.addr, "tee", &events, &landed);
    assert_eq!(checked.unique, events.len());
    let copy = read_until(&broker.addr, "copy", Duration::from_secs(30), |m| m.len() >= events.len());
    let checked = check_destination(&events, &copy);
    assert_eq!(checked.unique, events.len(), "the second sink has every event too");
}

#[test]
fn sinks_that_cannot_be_told_apart_are_refused() {
    let run = |extra: &[&str]| {
        let mut args = base_args("127.0.0.1:1", "refused");
        args = without(&args, &["dest-topic"]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = command().args(&args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&["--sink", "a=kafka:x", "--sink", "a=kafka:y"]);
    assert_eq!((code, err.trim()), (Some(2), "error: --sink: two sinks are named \"a\"; give each its own name"));
    let (code, err) = run(&["--sink", "a=kafka:x", "--sink", "kafka:y"]);
    assert!(code == Some(2) && err.contains("name each one"), "{err}");
    let (code, err) = run(&["--sink", "kafka:x", "--route", "\"x\""]);
    assert!(code == Some(2) && err.contains("--route chooses among named sinks"), "{err}");
    let (code, err) = run(&["--sink", "a=kafka:x", "--route", ".a |"]);
    assert!(code == Some(2) && err.contains("--route"), "{err}");
}
