//! The user's own transform on a real broker: a jq filter (`--jq`) or a program (`--exec`) in the workers. What
//! arrived and with which content, what went to the dead letters and why, what was committed, the exit code.

use crate::harness::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The pipeline with a transform, bounded so that what a crash can repeat stays small.
fn transform_args(brokers: &str, group: &str, transform: &[&str]) -> Vec<String> {
    let mut args = base_args(brokers, group);
    args.extend(["--hashers", "2", "--queue-capacity", "2000"].map(String::from));
    args.extend(transform.iter().map(|s| s.to_string()));
    args
}

/// A Python `--exec` script in a scratch directory that runs `body` for each event `e` (a dict) and prints the reply
/// line it makes; `prologue` runs once at the start.
fn python_script(name: &str, prologue: &str, body: &str) -> PathBuf {
    let indent = |code: &str| code.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    let path = scratch_dir(name).join("transform.py");
    let script = format!(
        "import json, os, sys, time\n{prologue}\nfor line in sys.stdin:\n    if line.startswith('#'):\n        \
         print(line, end='', flush=True)\n        continue\n    e = json.loads(line)\n{}\n",
        indent(body)
    );
    std::fs::write(&path, script).unwrap();
    path
}

fn json(m: &Msg) -> serde_json::Value {
    serde_json::from_slice(m.payload.as_deref().expect("a payload")).expect("JSON output")
}

/// Events `{"i": i, "kind": ..., "name": ...}` under 10 keys, the kinds shuffled so that every batch holds each;
/// `kind` picks what the jq test's filter does.
fn kinded(kinds: &[(&str, usize)]) -> Vec<Event> {
    let mut all: Vec<&str> = kinds.iter().flat_map(|&(k, n)| std::iter::repeat_n(k, n)).collect();
    let total = all.len();
    // A fixed permutation: 7919 is a prime that divides no total used here.
    let shuffled: Vec<&str> = (0..total).map(|i| all[(i * 7919) % total]).collect();
    all.clear();
    shuffled
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let name = if i % 50 == 0 { "abc".to_string() } else { format!("name-{i}") };
            let v = format!(r#"{{"i": {i}, "kind": "{kind}", "name": "{name}", "items": [1, 2, 3]}}"#);
            (Some(format!("k{}", i % 10).into_bytes()), Some(v.into_bytes()))
        })
        .collect()
}

#[test]
fn a_jq_filter_maps_selects_fans_out_hashes_reads_meta_and_dead_letters_its_errors() {
    let broker = Broker::with_topics("jq");
    let events = kinded(&[("map", 400), ("drop", 100), ("fan", 100), ("fail", 20)]);
    let landed = produce(&broker.addr, "src", &events);
    let key_file = scratch_dir("jq-key").join("hmac.key");
    std::fs::write(&key_file, "Jefe\n").unwrap();
    let filter = r#"
        if .kind == "drop" then empty
        elif .kind == "fan" then .items[] as $n | {i: .i, n: $n}
        elif .kind == "fail" then error("no good: \(.i)")
        else .md5 = (.name | md5) | .sha256 = (.name | sha256) | .hmac = ("what do ya want for nothing?" | hmac_sha256)
             | .at = "\($meta.partition):\($meta.offset)" | .key = $meta.key | .topic = $meta.topic
        end"#;
    let args = transform_args(&broker.addr, "jq", &["--jq", filter, "--hmac-key-file", key_file.to_str().unwrap()]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let want = 400 + 3 * 100;
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= want);
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(30), |m| m.len() >= 20);
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());

    assert_eq!(dst.len(), want, "400 mapped + 3 × 100 fanned out, none of the dropped");
    let by_i: HashMap<u64, usize> = (0..events.len()).map(|i| (i as u64, i)).collect();
    let mut fanned: HashMap<u64, Vec<u64>> = HashMap::new();
    for m in &dst {
        let v = json(m);
        let i = v["i"].as_u64().unwrap();
        let source = &events[by_i[&i]];
        assert_eq!(m.key, source.0, "outputs keep their input's key");
        if let Some(n) = v.get("n") {
            fanned.entry(i).or_default().push(n.as_u64().unwrap());
            continue;
        }
        assert_eq!(v["kind"], "map", "{v}");
        let name = v["name"].as_str().unwrap();
        assert_eq!(v["md5"], md5_hex(name.as_bytes()));
        if name == "abc" {
            assert_eq!(v["sha256"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        }
        assert_eq!(v["hmac"], "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "RFC 4231 case 2");
        let (p, o) = landed[by_i[&i]];
        assert_eq!(v["at"], format!("{p}:{o}"), "$meta has the source position");
        assert_eq!(v["key"].as_str().map(str::as_bytes), source.0.as_deref(), "$meta has the key");
        assert_eq!(v["topic"], "src");
    }
    assert_eq!(fanned.len(), 100);
    assert!(fanned.values().all(|ns| ns == &[1, 2, 3]), "a fan-out's outputs arrive once each, in order");
    // Per key, outputs arrive in their inputs' order.
    let mut last: HashMap<(i32, Option<Vec<u8>>), u64> = HashMap::new();
    let mut ordered: Vec<&Msg> = dst.iter().collect();
    ordered.sort_by_key(|m| (m.partition, m.offset));
    for m in ordered {
        let i = json(m)["i"].as_u64().unwrap();
        let before = last.insert((m.partition, m.key.clone()), i).unwrap_or(0);
        assert!(i >= before, "key {:?}: input {i} after {before}", m.key);
    }

    assert_eq!(dlq.len(), 20, "{dlq:?}");
    for m in &dlq {
        let v = json(m);
        assert_eq!(v["kind"], "fail", "dead letters are the inputs, unchanged");
        assert_eq!(m.headers["dlq.error"], format!("the jq filter failed: no good: {}", v["i"]));
    }
    assert_eq!(committed(&broker.addr, "jq", "src"), end_offsets(&landed), "dropped inputs are committed too");
    let log = sup.log();
    let line = log.lines().find(|l| l.contains("transform jq:")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("jq: 620 in, 700 out, 100 filtered out, 100 fanned out, 20 failed, "), "{line}");
    assert!(!log.contains("restarting"), "{log}");
}

#[test]
fn an_exec_command_transforms_its_garbage_goes_to_the_dead_letters_and_its_stderr_to_the_log() {
    let broker = Broker::with_topics("exec");
    let events = name_events(3_000, 64);
    let mut all = events.clone();
    all.insert(1_000, (Some(b"k1".to_vec()), Some(br#"{"garbage": true}"#.to_vec())));
    let landed = produce(&broker.addr, "src", &all);
    let script = python_script(
        "exec-ok",
        "print('hello from the command', file=sys.stderr)",
        "if e.get('garbage'):\n    print('this is not JSON', flush=True)\n    continue\n\
         e['initials'] = e['first_name'][0] + e['last_name'][0]\nprint(json.dumps(e), flush=True)",
    );
    let exec = format!("python3 {}", script.display());
    let mut sup = start(&transform_args(&broker.addr, "exec", &["--exec", &exec]));
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= events.len());
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(30), |m| !m.is_empty());
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());

    assert_eq!(dst.len(), events.len());
    for m in &dst {
        let v = json(m);
        let initials = format!("{}{}", &v["first_name"].as_str().unwrap()[..1], &v["last_name"].as_str().unwrap()[..1]);
        assert_eq!(v["initials"], initials);
    }
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload.as_deref(), Some(&br#"{"garbage": true}"#[..]));
    assert!(dlq[0].headers["dlq.error"].starts_with("the --exec command's reply is not JSON"), "{:?}", dlq[0].headers);
    assert_eq!(committed(&broker.addr, "exec", "src"), end_offsets(&landed));
    let log = sup.log();
    assert!(
        log.lines().any(|l| l.contains("worker-0[") && l.contains("hello from the command")),
        "each command's stderr reaches the log under its worker's name:\n{log}"
    );
}

/// Runs `body` as the command on 2,000 events plus one marked `{"bad": true}`; returns what arrived, the dead
/// letters, the exit code and the log.
fn exec_with_one_bad_event(name: &str, body: &str, extra: &[&str]) -> (Vec<Event>, Vec<Msg>, Vec<Msg>, Running) {
    let broker = Broker::with_topics(name);
    let events = name_events(2_000, 64);
    let mut all = events.clone();
    all.insert(700, (Some(b"k7".to_vec()), Some(br#"{"bad": true}"#.to_vec())));
    let landed = produce(&broker.addr, "src", &all);
    let script = python_script(name, "", body);
    let exec = format!("python3 {}", script.display());
    let mut transform = vec!["--exec", &exec];
    transform.extend(extra);
    let mut sup = start(&transform_args(&broker.addr, name, &transform));
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(90), |m| m.len() >= events.len());
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(30), |m| !m.is_empty());
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());
    assert_eq!(committed(&broker.addr, name, "src"), end_offsets(&landed), "committed");
    drop(broker);
    (events, dst, dlq, sup)
}

fn assert_each_arrived_once(events: &[Event], dst: &[Msg]) {
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for m in dst {
        *seen.entry(m.payload.clone().unwrap()).or_default() += 1;
    }
    for (_, v) in events {
        assert_eq!(seen.get(v.as_deref().unwrap()), Some(&1), "{}", String::from_utf8_lossy(v.as_deref().unwrap()));
    }
    assert_eq!(dst.len(), events.len());
}

#[test]
fn an_event_that_crashes_the_command_twice_is_dead_lettered_and_every_other_arrives_once() {
    let (events, dst, dlq, sup) =
        exec_with_one_bad_event("exec-crash", "if e.get('bad'): os._exit(3)\nprint(json.dumps(e), flush=True)", &[]);
    assert_each_arrived_once(&events, &dst);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].payload.as_deref(), Some(&br#"{"bad": true}"#[..]));
    assert_eq!(dlq[0].headers["dlq.error"], "poison event: the --exec command ended on it twice, in two processes");
    let log = sup.log();
    assert!(log.contains("the --exec command python3 ended (exit status: 3)"), "{log}");
}

#[test]
fn a_command_that_hangs_is_killed_after_the_exec_timeout() {
    let (events, dst, dlq, sup) = exec_with_one_bad_event(
        "exec-hang",
        "if e.get('bad'): time.sleep(3600)\nprint(json.dumps(e), flush=True)",
        &["--exec-timeout", "1"],
    );
    assert_each_arrived_once(&events, &dst);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].headers["dlq.error"], "poison event: the --exec command hung on it twice, in two processes");
    assert!(sup.log().contains("gave no reply within 1s and was killed"), "{}", sup.log());
}

#[test]
fn an_event_with_an_extra_reply_line_is_dead_lettered_and_no_reply_is_shifted() {
    // The bad event gets two lines: before the sync lines, its second line became the next event's reply.
    let (events, dst, dlq, _sup) = exec_with_one_bad_event(
        "exec-extra",
        "if e.get('bad'): print(json.dumps({'extra': 1}), flush=True)\nprint(json.dumps(e), flush=True)",
        &[],
    );
    assert_each_arrived_once(&events, &dst);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].payload.as_deref(), Some(&br#"{"bad": true}"#[..]));
    let why = &dlq[0].headers["dlq.error"];
    assert!(
        why.contains("broke the protocol on this event twice") && why.contains("wrote a second line for one event"),
        "{why}"
    );
}

#[test]
fn an_event_with_no_reply_line_is_dead_lettered_and_no_reply_is_shifted() {
    let (events, dst, dlq, _sup) =
        exec_with_one_bad_event("exec-missing", "if e.get('bad'): continue\nprint(json.dumps(e), flush=True)", &[]);
    assert_each_arrived_once(&events, &dst);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].payload.as_deref(), Some(&br#"{"bad": true}"#[..]));
    assert!(dlq[0].headers["dlq.error"].contains("wrote no line for the event"), "{:?}", dlq[0].headers);
}

#[test]
fn a_command_that_prints_a_banner_on_stdout_is_refused_before_anything_is_consumed() {
    let broker = Broker::with_topics("exec-banner");
    let landed = produce(&broker.addr, "src", &name_events(50, 4));
    let script = python_script("exec-banner", "print('transform v1.2 starting', flush=True)", "print(json.dumps(e))");
    let exec = format!("python3 {}", script.display());
    let mut sup = start(&transform_args(&broker.addr, "exec-banner", &["--exec", &exec]));
    let status = sup.wait_timeout(Duration::from_secs(60)).expect("exits");
    assert_eq!(status.code(), Some(2), "{}", sup.log());
    let log = sup.log();
    assert!(log.contains("wrote \"transform v1.2 starting\" on stdout before its first event"), "{log}");
    assert!(read_until(&broker.addr, "dst", Duration::from_secs(3), |_| true).is_empty());
    assert!(committed(&broker.addr, "exec-banner", "src").iter().all(|&o| o <= 0), "nothing committed: {landed:?}");
}

/// The `--exec` commands running under the supervisor's workers, by pid.
fn commands(sup: &Running) -> Vec<i32> {
    let workers: Vec<String> =
        sup.children().iter().filter(|(r, _)| r.starts_with("worker")).map(|(_, p)| p.to_string()).collect();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).unwrap_or_default();
        if workers.iter().any(|w| w == ppid) {
            out.push(pid);
        }
    }
    out
}

/// 50 events of 500 KB, all on one partition (one key), bigger than a socket buffer: each IPC message that carries one
/// is sent in several packets.
fn large_events() -> Vec<Event> {
    (0..50)
        .map(|i| {
            (Some(b"big".to_vec()), Some(format!(r#"{{"i": {i}, "pad": "{}"}}"#, "z".repeat(500_000)).into_bytes()))
        })
        .collect()
}

#[test]
fn kill_9_of_a_worker_while_a_large_event_is_in_flight_to_it_and_from_it_is_recovered_at_once() {
    let broker = Broker::with_topics("exec-large");
    let events = large_events();
    let landed = produce(&broker.addr, "src", &events);
    // Slow, so that the source is blocked sending the next large batch to the worker when it dies.
    let script = python_script("exec-large", "", "time.sleep(0.2)\nprint(json.dumps(e), flush=True)");
    let exec = format!("python3 {}", script.display());
    let mut args = base_args(&broker.addr, "exec-large");
    args.extend(["--hashers", "1", "--exec", &exec].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    wait_for_events(&broker.addr, "dst", 3, Duration::from_secs(60));
    let killed = Instant::now();
    kill(sup.child_pid("worker-0"), Signal::SIGKILL).unwrap();
    assert!(sup.wait_restarted("worker", 1, Duration::from_secs(30)), "{}", sup.log());
    let took = killed.elapsed();
    eprintln!("FAULT kill -9 with 500 KB events in flight: back to work after {took:?}");
    // Before, the source stayed blocked in a send to the dead worker until the drain timeout (30 s).
    assert!(took < Duration::from_secs(5), "back to work {took:?} after the kill:\n{}", sup.log());
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(90), |m| {
        m.iter().filter_map(|m| m.payload.as_deref()).collect::<std::collections::HashSet<_>>().len() >= events.len()
    });
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    let arrived: std::collections::HashSet<&[u8]> = dst.iter().filter_map(|m| m.payload.as_deref()).collect();
    for (_, v) in &events {
        let sent: serde_json::Value = serde_json::from_slice(v.as_deref().unwrap()).unwrap();
        assert!(
            arrived.iter().any(|a| serde_json::from_slice::<serde_json::Value>(a).unwrap() == sent),
            "{}",
            sent["i"]
        );
    }
    assert!(!sup.log().contains("the drain did not finish"), "{}", sup.log());
    let partition = landed[0].0 as usize;
    assert_eq!(committed(&broker.addr, "exec-large", "src")[partition], 50, "every event committed");
}

#[test]
fn a_command_that_always_fails_on_large_events_reaches_exit_6_within_the_restart_budget() {
    let broker = Broker::with_topics("exec-large-fail");
    let landed = produce(&broker.addr, "src", &large_events());
    let script = python_script("exec-large-fail", "", "os._exit(1)");
    let exec = format!("python3 {}", script.display());
    let mut args = base_args(&broker.addr, "exec-large-fail");
    args.extend(["--hashers", "1", "--exec", &exec, "--max-restarts", "2"].map(String::from));
    let started = Instant::now();
    let mut sup = start(&args);
    let status = sup.wait_timeout(Duration::from_secs(90)).expect("gives up");
    assert_eq!(status.code(), Some(6), "{}", sup.log());
    let log = sup.log();
    assert!(
        log.contains("giving up on the --exec command python3: it ended (exit status: 1) again after 2 restarts"),
        "{log}"
    );
    assert!(!log.contains("the drain did not finish"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert!(read_until(&broker.addr, "dst", Duration::from_secs(3), |_| true).is_empty());
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(3), |_| true);
    let dead: Vec<i64> = dlq.iter().map(|m| m.headers["dlq.source.offset"].parse().unwrap()).collect();
    let committed = committed(&broker.addr, "exec-large-fail", "src");
    for &(p, o) in &landed {
        if o < committed[p as usize] {
            assert!(dead.contains(&o), "offset {o} committed but neither delivered nor dead-lettered");
        }
    }
}

#[test]
fn a_drain_that_times_out_under_a_slow_command_still_delivers_and_commits_what_the_workers_finished() {
    let broker = Broker::with_topics("exec-slow-drain");
    let events = name_events(300, 8);
    let landed = produce(&broker.addr, "src", &events);
    let script = python_script("exec-slow-drain", "", "time.sleep(0.05)\nprint(json.dumps(e), flush=True)");
    let exec = format!("python3 {}", script.display());
    let mut args = transform_args(&broker.addr, "exec-slow-drain", &["--exec", &exec]);
    args.extend(["--drain-timeout", "3"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    // 300 events at 50 ms on 2 workers take 7.5 s: the drain's 3 s cannot finish them, but each worker's batch is
    // worked on in slices, and each slice is delivered as soon as it is done.
    wait_for_events(&broker.addr, "dst", 10, Duration::from_secs(60));
    let code = sup.stop(Signal::SIGTERM, Duration::from_secs(30));
    assert!(code == Some(4) || code == Some(0), "{code:?}: {}", sup.log());
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(5), |_| true);
    assert!(
        dst.len() >= 40,
        "only {} of the events finished before the stop were delivered:\n{}",
        dst.len(),
        sup.log()
    );
    let there: std::collections::HashSet<String> = dst
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(m.payload.as_deref().unwrap()).unwrap().to_string())
        .collect();
    let committed = committed(&broker.addr, "exec-slow-drain", "src");
    for (i, &(p, o)) in landed.iter().enumerate() {
        if o < committed[p as usize] {
            let sent: serde_json::Value = serde_json::from_slice(events[i].1.as_deref().unwrap()).unwrap();
            assert!(there.contains(&sent.to_string()), "partition {p} offset {o} committed but not delivered");
        }
    }
}

#[test]
fn kill_9_of_a_command_mid_stream_loses_nothing() {
    let broker = Broker::with_topics("exec-kill");
    let events = name_events(30_000, 128);
    let script = python_script("exec-kill", "", "print(json.dumps(e), flush=True)");
    let exec = format!("python3 {}", script.display());
    let args = transform_args(&broker.addr, "exec-kill", &["--exec", &exec]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let loader = trickle(&broker.addr, &events, 1_000, Duration::from_millis(50));
    wait_for_events(&broker.addr, "dst", 3_000, Duration::from_secs(60));
    let victims = commands(&sup);
    assert_eq!(victims.len(), 2, "one command per worker");
    kill(Pid::from_raw(victims[0]), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut fresh = commands(&sup);
    while (fresh.len() != 2 || fresh.contains(&victims[0])) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        fresh = commands(&sup);
    }
    assert!(fresh.len() == 2 && !fresh.contains(&victims[0]), "the killed command is replaced: {fresh:?}");
    let landed = loader.join().unwrap();
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(90), |m| m.len() >= events.len());
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());
    assert_each_arrived_once(&events, &dst);
    assert_eq!(committed(&broker.addr, "exec-kill", "src"), end_offsets(&landed));
    assert!(sup.log().contains("was killed by signal 9") || sup.log().contains("signal: 9"), "{}", sup.log());
    assert!(!fresh.iter().any(|&p| pid_alive(p)), "the commands end with their workers: {fresh:?}");
}

#[test]
fn a_command_that_fails_on_every_event_exhausts_the_budget_and_the_supervisor_exits_6() {
    let broker = Broker::with_topics("exec-fail");
    let events = name_events(500, 16);
    let landed = produce(&broker.addr, "src", &events);
    let script = python_script("exec-fail", "", "sys.exit(1)");
    let exec = format!("python3 {}", script.display());
    let args = transform_args(&broker.addr, "exec-fail", &["--exec", &exec, "--max-restarts", "2"]);
    let mut sup = start(&args);
    let exited = sup.wait_timeout(Duration::from_secs(60)).map(|s| s.code());
    assert_eq!(exited, Some(Some(6)), "{}", sup.log());
    assert!(sup.log().contains("giving up on the --exec command python3"), "{}", sup.log());
    // Nothing reached the destination, so nothing is committed but what was dead-lettered.
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(5), |_| true);
    let dead: std::collections::HashSet<(i32, i64)> = dlq
        .iter()
        .map(|m| (m.headers["dlq.source.partition"].parse().unwrap(), m.headers["dlq.source.offset"].parse().unwrap()))
        .collect();
    for (p, upto) in committed(&broker.addr, "exec-fail", "src").into_iter().enumerate() {
        for &(lp, o) in &landed {
            if lp == p as i32 && o < upto {
                assert!(
                    dead.contains(&(lp, o)),
                    "partition {lp} offset {o} committed but neither delivered nor dead-lettered"
                );
            }
        }
    }
    assert!(read_until(&broker.addr, "dst", Duration::from_secs(3), |_| true).is_empty());
}

#[test]
fn a_fan_out_survives_kill_9_of_a_worker_then_sigterm_and_a_restart() {
    let broker = Broker::with_topics("jq-kill");
    let events = name_events(20_000, 128);
    let args = transform_args(&broker.addr, "jq-kill", &["--jq", ".copy = 1, .copy = 2"]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let loader = trickle(&broker.addr, &events, 1_000, Duration::from_millis(50));
    wait_for_events(&broker.addr, "dst", 4_000, Duration::from_secs(60));
    kill(sup.child_pid("worker-1"), Signal::SIGKILL).unwrap();
    assert!(sup.wait_restarted("worker", 1, Duration::from_secs(30)), "{}", sup.log());
    wait_for_events(&broker.addr, "dst", 20_000, Duration::from_secs(60));
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    let landed = loader.join().unwrap();
    // Whatever the first run left, a second one finishes.
    let mut again = start(&args);
    assert!(again.wait_ready(Duration::from_secs(30)), "{}", again.log());
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(90), |m| m.len() >= 2 * events.len());
    assert_eq!(again.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", again.log());
    let mut copies: HashMap<(Vec<u8>, u64), usize> = HashMap::new();
    for m in &dst {
        let mut v = json(m);
        let copy = v["copy"].as_u64().unwrap();
        v.as_object_mut().unwrap().remove("copy");
        *copies.entry((serde_json::to_vec(&v).unwrap(), copy)).or_default() += 1;
    }
    for (_, e) in &events {
        let v: serde_json::Value = serde_json::from_slice(e.as_deref().unwrap()).unwrap();
        let k = serde_json::to_vec(&v).unwrap();
        for copy in [1, 2] {
            assert!(copies.contains_key(&(k.clone(), copy)), "copy {copy} of {v} missing");
        }
    }
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    assert!(duplicates <= 2 * 2_000, "at most what was in flight is delivered twice: {duplicates}");
    assert_eq!(committed(&broker.addr, "jq-kill", "src"), end_offsets(&landed));
}

#[test]
fn max_rate_caps_how_fast_events_are_taken() {
    let broker = Broker::with_topics("rate");
    let events = name_events(1_500, 16);
    produce(&broker.addr, "src", &events);
    let mut args = transform_args(&broker.addr, "rate", &["--max-rate", "500"]);
    args.extend(["--status-interval", "0.5"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let first = wait_for_events(&broker.addr, "dst", 1, Duration::from_secs(30));
    assert_eq!(first, 1);
    let t0 = Instant::now();
    let n = wait_for_events(&broker.addr, "dst", events.len(), Duration::from_secs(30));
    let took = t0.elapsed();
    assert_eq!(n, events.len());
    // 1,500 events at 500/s take 3 s, less the first tenth of a second's burst: never under 2.5 s.
    assert!(took >= Duration::from_millis(2_500), "1,500 events at --max-rate 500 took only {took:?}");
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());
}

#[test]
fn two_transforms_a_filter_that_does_not_compile_or_a_missing_command_exit_2_with_one_line() {
    let brokers = format!("127.0.0.1:{}", free_port());
    for (args, says) in [
        (vec!["--jq", ".", "--exec", "cat"], "--jq and --exec cannot be used together"),
        (
            vec!["--jq", ".a | foo(1)"],
            "the jq filter (--jq) does not compile: undefined filter (with 1 arguments) foo at line 1, column 6",
        ),
        (vec!["--jq", "if . then 1"], "the jq filter (--jq) does not compile: expected else or end"),
        (
            vec!["--exec", "no-such-command-anywhere --x"],
            "--exec: cannot start no-such-command-anywhere: no such program in $PATH",
        ),
    ] {
        let started = Instant::now();
        let out = command().args(["--brokers", &brokers]).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR") || l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("connecting to the Kafka brokers"), "refused before anything else: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
