//! End to end against a real broker: what arrives, with which hash, in which order, what is committed, and how the
//! process exits.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const PARTITIONS: i32 = 4;

/// Checks one destination event against its source: the same bytes with `,"hash":"<md5 of the source>"` spliced in.
fn source_of(out: &[u8]) -> (Vec<u8>, String) {
    let s = std::str::from_utf8(out).expect("output is UTF-8");
    let at = s.rfind(",\"hash\":\"").expect("output has a hash");
    let hash = s[at + 9..at + 9 + 32].to_string();
    assert_eq!(&s[at + 9 + 32..], "\"}", "the hash is the last field");
    let mut src = s[..at].to_string();
    src.push('}');
    (src.into_bytes(), hash)
}

struct Checked {
    unique: usize,
    duplicates: usize,
}

/// Every source event is in `dst` with its right hash, per-key order holds, and nothing else is there.
fn check_destination(sent: &[Event], dst: &[Msg]) -> Checked {
    let want: HashSet<&[u8]> = sent.iter().map(|(_, v)| v.as_deref().unwrap()).collect();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut last_seq: HashMap<(i32, Vec<u8>), i64> = HashMap::new();
    let mut by_partition: Vec<&Msg> = dst.iter().collect();
    by_partition.sort_by_key(|m| (m.partition, m.offset));
    for m in by_partition {
        let (src, hash) = source_of(m.payload.as_deref().unwrap());
        assert!(want.contains(&src[..]), "unexpected event {}", String::from_utf8_lossy(&src));
        assert_eq!(hash, md5_hex(&src), "wrong hash for {}", String::from_utf8_lossy(&src));
        let v: serde_json::Value = serde_json::from_slice(&src).unwrap();
        assert_eq!(m.key.as_deref(), Some(v["key"].as_str().unwrap().as_bytes()), "the key is kept");
        let seq = v["seq"].as_i64().unwrap();
        let first = *seen.entry(src.clone()).and_modify(|c| *c += 1).or_insert(1) == 1;
        // Per key, first deliveries come in source order (a re-delivery after a restart may repeat older ones).
        if first {
            let last = last_seq.entry((m.partition, m.key.clone().unwrap())).or_insert(-1);
            assert!(
                seq > *last,
                "key {:?}: seq {seq} arrived after {last}",
                String::from_utf8_lossy(m.key.as_deref().unwrap())
            );
            *last = seq;
        }
    }
    let missing: Vec<_> = want.iter().filter(|w| !seen.contains_key(**w)).take(3).collect();
    assert!(
        missing.is_empty(),
        "{} events missing, e.g. {:?}",
        want.len() - seen.len(),
        missing.iter().map(|m| String::from_utf8_lossy(m)).collect::<Vec<_>>()
    );
    Checked { unique: seen.len(), duplicates: seen.values().map(|c| c - 1).sum() }
}

/// Runs the pipeline again until the source is consumed, stops it with SIGINT, and checks that every event arrived
/// with the right hash and that the group committed the end of every partition.
fn finish_and_check(broker: &Broker, args: &[String], group: &str, events: &[Event], landed: &[(i32, i64)]) -> Checked {
    let mut again = start(args);
    let _ = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(120), |m| m.len() >= events.len());
    again.signal(Signal::SIGINT);
    assert_eq!(again.wait_timeout(Duration::from_secs(30)).and_then(|s| s.code()), Some(0), "{}", again.log());
    let dst = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(30), |m| m.len() >= events.len());
    let checked = check_destination(events, &dst);
    assert_eq!(checked.unique, events.len(), "events missing after the restart");
    assert_eq!(committed(&broker.addr, group, "src", PARTITIONS), end_offsets(landed), "committed offsets");
    checked
}

/// One past the last offset written to each partition: what a complete run must have committed.
fn end_offsets(landed: &[(i32, i64)]) -> Vec<i64> {
    let mut end = vec![0; PARTITIONS as usize];
    for &(p, o) in landed {
        end[p as usize] = end[p as usize].max(o + 1);
    }
    end
}

#[test]
fn sigint_drains_everything_with_the_right_hashes_and_commits_the_end() {
    let broker = Broker::start("sigint");
    broker.create_topics(&[("src", PARTITIONS), ("dst", PARTITIONS)]);
    let good = name_events(20_000, 64);
    let bad: Vec<Event> = vec![
        (Some(b"bad".to_vec()), Some(br#"{"first_name": "Trunc"#.to_vec())),
        (Some(b"bad".to_vec()), Some(b"[1, 2, 3]".to_vec())),
        (Some(b"bad".to_vec()), Some(Vec::new())),
        (Some(b"bad".to_vec()), None),
        (Some(b"bad".to_vec()), Some(b"\xff\xfe\x00binary".to_vec())),
        (Some(b"bad".to_vec()), Some(b"null".to_vec())),
    ];
    let mut all = good.clone();
    all.splice(5000..5000, bad.iter().cloned());
    let landed = produce(&broker.addr, "src", &all);

    let mut args = base_args(&broker.addr, "g1");
    args.extend(["--hashers", "3"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_for_log("pipeline running", Duration::from_secs(30)), "did not start:\n{}", sup.log());
    let dst = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(120), |m| m.len() >= good.len());
    assert!(dst.len() >= good.len(), "only {} of {} events arrived", dst.len(), good.len());
    let dlq = read_until(&broker.addr, "dst.dlq", PARTITIONS, Duration::from_secs(30), |m| m.len() >= bad.len());

    sup.signal(Signal::SIGINT);
    let status = sup.wait_timeout(Duration::from_secs(30)).expect("exits after SIGINT");
    assert_eq!(status.code(), Some(0), "exit code; log:\n{}", sup.log());

    let dst = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(30), |m| m.len() >= good.len());
    let checked = check_destination(&good, &dst);
    assert_eq!((checked.unique, checked.duplicates), (good.len(), 0), "a clean run delivers each event once");

    // Bad input: in the dead-letter topic, unchanged, with where it came from and why.
    assert_eq!(dlq.len(), bad.len(), "dead letters: {dlq:?}");
    let bad_at: HashMap<(i32, i64), &Option<Vec<u8>>> =
        bad.iter().enumerate().map(|(i, (_, v))| (landed[5000 + i], v)).collect();
    for m in &dlq {
        let p: i32 = m.headers["dlq.source.partition"].parse().unwrap();
        let o: i64 = m.headers["dlq.source.offset"].parse().unwrap();
        assert_eq!(m.headers["dlq.source.topic"], "src");
        assert!(!m.headers["dlq.error"].is_empty());
        let original = bad_at.get(&(p, o)).unwrap_or_else(|| panic!("no bad event at {p}/{o}"));
        assert_eq!(&m.payload, *original, "dead letters are unchanged");
    }

    assert_eq!(committed(&broker.addr, "g1", "src", PARTITIONS), end_offsets(&landed), "committed offsets");
    let log = sup.log();
    assert!(log.contains("draining"), "{log}");
}

/// Every source event below the committed offsets must be in the destination: the at-least-once promise.
fn assert_committed_are_delivered(sent: &[Event], landed: &[(i32, i64)], committed: &[i64], dst: &[Msg]) {
    let there: HashSet<Vec<u8>> = dst.iter().map(|m| source_of(m.payload.as_deref().unwrap()).0).collect();
    for (i, &(p, o)) in landed.iter().enumerate() {
        if o < committed[p as usize] {
            assert!(
                there.contains(sent[i].1.as_deref().unwrap()),
                "partition {p} offset {o} committed but not delivered"
            );
        }
    }
}

#[test]
fn sigterm_mid_stream_then_restart_loses_nothing_and_repeats_nothing() {
    let broker = Broker::start("sigterm");
    broker.create_topics(&[("src", PARTITIONS), ("dst", PARTITIONS)]);
    let events = name_events(100_000, 128);
    let args = base_args(&broker.addr, "g2");

    let mut first = start(&args);
    assert!(first.wait_for_log("pipeline running", Duration::from_secs(30)), "{}", first.log());
    // The source is still being written when the SIGTERM comes: the stop is mid-stream by construction.
    let loader = {
        let (addr, events) = (broker.addr.clone(), events.clone());
        std::thread::spawn(move || {
            events
                .chunks(5_000)
                .flat_map(|chunk| {
                    std::thread::sleep(Duration::from_millis(200));
                    produce(&addr, "src", chunk)
                })
                .collect::<Vec<_>>()
        })
    };
    wait_for_events(&broker.addr, "dst", PARTITIONS, 3_000, Duration::from_secs(60));
    first.signal(Signal::SIGTERM);
    let status = first.wait_timeout(Duration::from_secs(30)).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", first.log());
    let after_first = committed(&broker.addr, "g2", "src", PARTITIONS);
    let landed = loader.join().unwrap();
    let end = end_offsets(&landed);
    assert!(after_first.iter().sum::<i64>() < end.iter().sum::<i64>(), "the stop was not mid-stream");
    let dst = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(30), |_| true);
    assert_committed_are_delivered(&events, &landed, &after_first, &dst);

    let checked = finish_and_check(&broker, &args, "g2", &events, &landed);
    assert_eq!(checked.duplicates, 0, "a graceful drain commits all it delivered, so a restart repeats nothing");
}

#[test]
fn children_show_their_role_and_die_with_a_killed_supervisor() {
    let broker = Broker::start("kill9");
    broker.create_topics(&[("src", PARTITIONS), ("dst", PARTITIONS)]);
    let mut args = base_args(&broker.addr, "g3");
    args.extend(["--hashers", "2"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_for_log("pipeline running", Duration::from_secs(30)), "{}", sup.log());
    let pids = sup.pids();
    assert_eq!(pids.len(), 4, "{pids:?}");
    for (role, pid) in &pids {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(cmdline.starts_with(&format!("supervisor: {role}")), "ps shows {cmdline:?} for {role}");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert!(comm.starts_with("sv-"), "comm {comm:?} for {role}");
    }
    sup.signal(Signal::SIGKILL);
    sup.wait_timeout(Duration::from_secs(5)).expect("the supervisor dies");
    let t0 = std::time::Instant::now();
    while pids.values().any(|&p| pid_alive(p)) {
        assert!(t0.elapsed() < Duration::from_secs(5), "children outlived the supervisor: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_dead_hasher_is_reported_and_stops_the_pipeline_and_a_restart_loses_nothing() {
    let broker = Broker::start("hasherdeath");
    broker.create_topics(&[("src", PARTITIONS), ("dst", PARTITIONS)]);
    let events = name_events(60_000, 128);
    let landed = produce(&broker.addr, "src", &events);
    let mut args = base_args(&broker.addr, "g4");
    args.extend(["--hashers", "2"].map(String::from));

    let mut sup = start(&args);
    let _ = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(60), |m| m.len() >= 2_000);
    let hasher = sup.pids()["hasher-0"];
    kill(Pid::from_raw(hasher), Signal::SIGKILL).unwrap();
    let status = sup.wait_timeout(Duration::from_secs(40)).expect("the supervisor stops");
    assert_eq!(status.code(), Some(1), "log:\n{}", sup.log());
    assert!(sup.log().contains(&format!("hasher-0 (pid {hasher}) was killed by SIGKILL")), "{}", sup.log());
    let dst = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(30), |_| true);
    assert_committed_are_delivered(&events, &landed, &committed(&broker.addr, "g4", "src", PARTITIONS), &dst);

    finish_and_check(&broker, &args, "g4", &events, &landed);
}

/// Starts a pipeline with events in flight and its producer frozen, so that a drain cannot finish.
type Stuck = (Broker, Vec<Event>, Vec<(i32, i64)>, Running);

fn stuck_pipeline(name: &str, group: &str, extra: &[&str]) -> Stuck {
    let broker = Broker::start(name);
    broker.create_topics(&[("src", PARTITIONS), ("dst", PARTITIONS)]);
    let mut args = base_args(&broker.addr, group);
    args.extend(["--hashers", "2", "--queue-capacity", "2000"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut sup = start(&args);
    assert!(sup.wait_for_log("pipeline running", Duration::from_secs(30)), "{}", sup.log());
    // Frozen before any event exists: whatever the consumer takes stays in flight.
    kill(Pid::from_raw(sup.pids()["producer"]), Signal::SIGSTOP).unwrap();
    let events = name_events(30_000, 64);
    let landed = produce(&broker.addr, "src", &events);
    std::thread::sleep(Duration::from_millis(1500));
    (broker, events, landed, sup)
}

#[test]
fn a_second_signal_stops_everything_at_once() {
    let (_broker, _, _, mut sup) = stuck_pipeline("fast", "g5", &[]);
    sup.signal(Signal::SIGINT);
    assert!(sup.wait_for_log("draining", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(sup.child.try_wait().unwrap().is_none(), "the frozen producer holds the drain");
    let pids = sup.pids();
    let t0 = std::time::Instant::now();
    sup.signal(Signal::SIGINT);
    let status = sup.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
    assert_eq!(status.code(), Some(5), "{}", sup.log());
    assert!(pids.values().all(|&p| !pid_alive(p)), "children left behind");
}

#[test]
fn a_drain_that_cannot_finish_is_bounded_and_loses_nothing() {
    let (broker, events, landed, mut sup) = stuck_pipeline("drain", "g6", &["--drain-timeout", "2"]);
    let t0 = std::time::Instant::now();
    sup.signal(Signal::SIGTERM);
    let status = sup.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert!(t0.elapsed() < Duration::from_secs(6), "a 2 s drain took {:?}", t0.elapsed());
    assert_eq!(status.code(), Some(4), "{}", sup.log());

    let mut args = base_args(&broker.addr, "g6");
    args.extend(["--hashers", "2"].map(String::from));
    finish_and_check(&broker, &args, "g6", &events, &landed);
}

#[test]
fn a_held_back_consumer_pauses_then_resumes_and_loses_nothing() {
    let (broker, events, landed, mut sup) = stuck_pipeline("pause", "g7", &[]);
    // The producer has been frozen long enough for the consumer to sit at its bound and pause.
    assert!(sup.wait_for_log("paused the partitions", Duration::from_secs(10)), "{}", sup.log());
    kill(Pid::from_raw(sup.pids()["producer"]), Signal::SIGCONT).unwrap();
    assert!(sup.wait_for_log("resumed the partitions", Duration::from_secs(30)), "{}", sup.log());
    let _ = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(120), |m| m.len() >= events.len());
    sup.signal(Signal::SIGINT);
    assert_eq!(sup.wait_timeout(Duration::from_secs(30)).and_then(|s| s.code()), Some(0), "{}", sup.log());
    let dst = read_until(&broker.addr, "dst", PARTITIONS, Duration::from_secs(30), |m| m.len() >= events.len());
    let checked = check_destination(&events, &dst);
    assert_eq!((checked.unique, checked.duplicates), (events.len(), 0));
    assert_eq!(committed(&broker.addr, "g7", "src", PARTITIONS), end_offsets(&landed));
}
