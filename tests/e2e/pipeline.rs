//! End to end against a real broker: what arrives, with which hash, in which order, what is committed, and how the
//! process exits.

use crate::harness::*;
use std::collections::HashMap;
use std::time::Duration;

#[test]
fn sigint_drains_everything_with_the_right_hashes_and_commits_the_end() {
    let broker = Broker::with_topics("sigint");
    let mut good = name_events(20_000, 64);
    // A 900 KB event is big but fine: it passes like any other.
    let big = format!(r#"{{"key": "big", "seq": 0, "first_name": "Big", "note": "{}"}}"#, "x".repeat(900_000));
    good.insert(10_000, (Some(b"big".to_vec()), Some(big.into_bytes())));
    // So is a deeply nested one (the validator does not recurse; src/transform.rs tests 100,000 levels).
    let deep = format!(r#"{{"key": "deep", "seq": 0, "a": {}1{}}}"#, r#"{"a":"#.repeat(100), "}".repeat(100));
    good.insert(15_000, (Some(b"deep".to_vec()), Some(deep.into_bytes())));
    // The poison mix: none of these may stop the pipeline, and each lands in the dead-letter topic unchanged.
    let bad: Vec<Event> = vec![
        (Some(b"bad".to_vec()), Some(br#"{"first_name": "Trunc"#.to_vec())),
        (Some(b"bad".to_vec()), Some(b"[1, 2, 3]".to_vec())),
        (Some(b"bad".to_vec()), Some(Vec::new())),
        (Some(b"bad".to_vec()), None),
        (Some(b"bad".to_vec()), Some(b"\xff\xfe\x00binary".to_vec())),
        (Some(b"bad".to_vec()), Some(b"null".to_vec())),
        (Some(b"bad".to_vec()), Some(b"{\"a\": 1} trailing".to_vec())),
    ];
    let mut all = good.clone();
    all.splice(5000..5000, bad.iter().cloned());
    let landed = produce(&broker.addr, "src", &all);

    let mut args = base_args(&broker.addr, "g1");
    args.extend(["--hashers", "3"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "did not start:\n{}", sup.log());
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(120), |m| m.len() >= good.len());
    assert!(dst.len() >= good.len(), "only {} of {} events arrived", dst.len(), good.len());
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(30), |m| m.len() >= bad.len());

    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "exit code; log:\n{}", sup.log());

    let dst = read_until(&broker.addr, "dst", Duration::from_secs(30), |m| m.len() >= good.len());
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

    assert_eq!(committed(&broker.addr, "g1", "src"), end_offsets(&landed), "committed offsets");
    let log = sup.log();
    assert!(log.contains("draining"), "{log}");
    assert!(!log.contains("restarting") && !log.contains("failed"), "bad input never stops the pipeline:\n{log}");
    let end: Vec<String> = end_offsets(&landed).iter().enumerate().map(|(p, o)| format!("{p}:{o}")).collect();
    let summary = format!(
        "summary: {} consumed, {} delivered, {} dead-lettered, 0 retried, 0 restarts",
        all.len(),
        good.len(),
        bad.len()
    );
    let line = log.lines().find(|l| l.contains("summary:")).unwrap_or_else(|| panic!("no summary:\n{log}"));
    assert!(line.contains(&summary) && line.ends_with(&format!("committed {}", end.join(" "))), "{line}");
}

#[test]
fn sigterm_mid_stream_then_restart_loses_nothing_and_repeats_nothing() {
    let broker = Broker::with_topics("sigterm");
    let events = name_events(100_000, 128);
    let args = base_args(&broker.addr, "g2");

    let mut first = start(&args);
    assert!(first.wait_ready(Duration::from_secs(30)), "{}", first.log());
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
    wait_for_events(&broker.addr, "dst", 3_000, Duration::from_secs(60));
    assert_eq!(first.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "log:\n{}", first.log());
    let after_first = committed(&broker.addr, "g2", "src");
    let landed = loader.join().unwrap();
    let end = end_offsets(&landed);
    assert!(after_first.iter().sum::<i64>() < end.iter().sum::<i64>(), "the stop was not mid-stream");
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(30), |_| true);
    assert_committed_are_delivered(&events, &landed, &after_first, &dst);

    let checked = finish_and_check(&broker, &args, "g2", &events, &landed);
    assert_eq!(checked.duplicates, 0, "a graceful drain commits all it delivered, so a restart repeats nothing");
}

/// A stop at any moment of the pipeline's first second, the consumer taking a backlog in multi-record batches at full
/// speed, is a graceful stop like any other: everything taken is delivered and committed, and the exit code is 0.
#[test]
fn a_sigterm_in_the_first_second_always_drains_everything_and_exits_0() {
    let broker = Broker::with_topics("firstsecond");
    let events = name_events(100_000, 128);
    let landed = produce_batched(&broker.addr, "src", &events);
    let mut random = Random::from_env();
    let (rounds, mut flowing) = (12, 0);
    for round in 0..rounds {
        // A group of its own: every round starts on the whole backlog.
        let mut args = base_args(&broker.addr, &format!("first-{round}"));
        args.extend(["--hashers", "2"].map(String::from));
        let started = std::time::Instant::now();
        let mut sup = start(&args);
        let after = Duration::from_millis(random.below(1_000));
        // Before its handlers exist, a process dies of SIGTERM like any other: the moment is counted from the start,
        // but the signal waits for them.
        assert!(sup.wait_catching_signals(Duration::from_secs(10)), "no SIGTERM handler");
        std::thread::sleep(after.saturating_sub(started.elapsed()));
        let code = sup.stop(Signal::SIGTERM, Duration::from_secs(30));
        let log = sup.log();
        assert_eq!(code, Some(0), "round {round}, SIGTERM {after:?} after the start:\n{log}");
        // Whatever was taken in was delivered: the summary's counts add up.
        if let Some(line) = log.lines().find(|l| l.contains("summary: ")) {
            let n = |word: &str| -> u64 {
                let before = line.split(&format!(" {word}")).next().unwrap_or_default();
                before.rsplit(' ').next().unwrap_or_default().parse().unwrap_or_else(|_| panic!("{word} in {line}"))
            };
            assert_eq!(n("consumed,"), n("delivered,") + n("dead-lettered,"), "round {round}: {line}");
            flowing += usize::from(n("consumed,") > 0);
        }
    }
    // About 4 rounds in 10 land after the group join (a debug build starts in about half a second): at least one
    // must have stopped a flowing pipeline, or the test has tested nothing.
    assert!(flowing > 0, "no round stopped the pipeline while events flowed");
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(60), |_| true);
    for round in 0..rounds {
        let done = committed(&broker.addr, &format!("first-{round}"), "src");
        assert_committed_are_delivered(&events, &landed, &done, &dst);
    }
    eprintln!("FAULT SIGTERM in the first second x{rounds}: exit 0 every time, {flowing} while events flowed");
}

#[test]
fn children_show_their_role_die_with_a_killed_supervisor_and_a_restart_loses_nothing() {
    let broker = Broker::with_topics("kill9");
    let events = name_events(30_000, 64);
    let mut args = base_args(&broker.addr, "g3");
    args.extend(["--hashers", "2", "--queue-capacity", "2000"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let loader = trickle(&broker.addr, &events, 1_000, Duration::from_millis(100));
    wait_for_events(&broker.addr, "dst", 3_000, Duration::from_secs(60));
    // `ps` shows each child as `supervisor: ROLE`, and `ps -e` as `sv-ROLE`.
    let pids = sup.children();
    let mut roles: Vec<&str> = pids.keys().map(String::as_str).collect();
    roles.sort_unstable();
    assert_eq!(roles, ["sink", "source", "worker-0", "worker-1"], "{pids:?}");
    for (role, pid) in &pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim_end(), format!("sv-{role}"), "comm for {role}");
    }
    sup.signal(Signal::SIGKILL);
    sup.wait_timeout(Duration::from_secs(5)).expect("the supervisor dies");
    let t0 = std::time::Instant::now();
    while pids.values().any(|&p| pid_alive(p)) {
        assert!(t0.elapsed() < Duration::from_secs(5), "children outlived the supervisor: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after_kill = committed(&broker.addr, "g3", "src");
    let landed = loader.join().unwrap();
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(10), |_| true);
    assert_committed_are_delivered(&events, &landed, &after_kill, &dst);

    // What was in flight, or acked since the last background commit (a second of the loader's 10k events/s), is
    // delivered again; nothing is missing.
    let checked = finish_and_check(&broker, &args, "g3", &events, &landed);
    assert!(checked.duplicates <= 2_000 + 10_000, "{checked:?}");
    eprintln!("FAULT kill -9 supervisor: produced {}, missing 0, duplicates {}", events.len(), checked.duplicates);
}

/// Starts a pipeline with events in flight and its producer frozen, so that a drain cannot finish.
type Stuck = (Broker, Vec<Event>, Vec<(i32, i64)>, Running);

fn stuck_pipeline(name: &str, group: &str, extra: &[&str]) -> Stuck {
    let broker = Broker::with_topics(name);
    let mut args = base_args(&broker.addr, group);
    args.extend(["--hashers", "2", "--queue-capacity", "2000"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    // Frozen before any event exists: whatever the consumer takes stays in flight.
    kill(sup.child_pid("sink"), Signal::SIGSTOP).unwrap();
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
    assert!(!sup.exited(), "the frozen producer holds the drain");
    let pids = sup.children();
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
    kill(sup.child_pid("sink"), Signal::SIGCONT).unwrap();
    assert!(sup.wait_for_log("resumed the partitions", Duration::from_secs(30)), "{}", sup.log());
    let checked = stop_and_check(&mut sup, Signal::SIGINT, &broker.addr, "g7", &events, &landed);
    assert_eq!(checked.duplicates, 0);
}

#[test]
fn an_event_too_large_for_the_destination_and_the_dead_letter_topic_is_dead_lettered_cut_down_and_the_rest_flows() {
    let broker = Broker::with_topics("toolarge");
    let events = name_events(2_000, 16);
    let huge = format!(r#"{{"key": "huge", "note": "{}"}}"#, "y".repeat(2 << 20));
    let mut all = events.clone();
    all.insert(1_000, (Some(b"huge".to_vec()), Some(huge.clone().into_bytes())));
    let landed = produce(&broker.addr, "src", &all);
    let huge_at = landed[1_000];
    let mut sup = start(&base_args(&broker.addr, "gbig"));
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(90), |m| m.len() >= events.len());
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(30), |m| !m.is_empty());
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());

    let checked = check_destination(&events, &dst);
    assert_eq!((checked.unique, checked.duplicates), (events.len(), 0), "every other event, once");
    assert_eq!(dlq.len(), 1, "{:?}", dlq.iter().map(|m| &m.headers).collect::<Vec<_>>());
    let m = &dlq[0];
    assert_eq!(
        (
            m.headers["dlq.source.partition"].parse::<i32>().unwrap(),
            m.headers["dlq.source.offset"].parse::<i64>().unwrap()
        ),
        huge_at
    );
    assert!(m.headers["dlq.error"].contains("too large"), "{:?}", m.headers);
    assert!(m.headers["dlq.cut"].starts_with("too large for the dead-letter topic"), "{:?}", m.headers);
    let size: usize = m.headers["dlq.original.size"].parse().unwrap();
    assert!(size > huge.len(), "the size of the hashed event: {size}");
    let payload = m.payload.as_deref().unwrap();
    assert_eq!(payload.len(), 1024);
    assert_eq!(payload, &huge.as_bytes()[..1024], "its first bytes");
    assert_eq!(m.key.as_deref(), Some(&b"huge"[..]));
    assert_eq!(committed(&broker.addr, "gbig", "src"), end_offsets(&landed), "committed past it");
}
