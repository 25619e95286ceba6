//! The fault suite: kill, hang and stop the pipeline's parts mid-stream against a real broker, then count what
//! arrived. Every test asserts that no event is missing and bounds the duplicates by what could have been in flight.

use crate::harness::*;
use std::time::{Duration, Instant};

/// Events in flight are bounded by this, so it also bounds what a crash can make the pipeline deliver twice.
const CAPACITY: usize = 2_000;

/// When the consumer itself goes (killed, or its group membership lost in an outage), what it acked since the last
/// background commit (once a second) is re-read too: a second of the loader's rate.
fn consumer_loss_bound(chunk: usize, pause: Duration) -> usize {
    CAPACITY + chunk * (1000 / pause.as_millis() as usize)
}

/// The pipeline under test: bounded at `CAPACITY`, with a frequent status line.
fn fault_args(brokers: &str, group: &str, hashers: u16, extra: &[&str]) -> Vec<String> {
    let mut args = base_args(brokers, group);
    let (hashers, capacity) = (hashers.to_string(), CAPACITY.to_string());
    args.extend(["--hashers", &hashers, "--queue-capacity", &capacity, "--status-interval", "0.5"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

const KILL_CHUNK: usize = 2_500;
const KILL_PAUSE: Duration = Duration::from_millis(100);

/// Kills `role` with SIGKILL once events flow, while the source is still being written; the supervisor must
/// restart the pipeline by itself and deliver everything. Returns the check and how long recovery took.
fn kill_mid_stream(name: &str, role: &str) -> (Checked, Duration, Running) {
    let broker = Broker::with_topics(name);
    let events = name_events(50_000, 128);
    let args = fault_args(&broker.addr, name, 2, &[]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let loader = trickle(&broker.addr, &events, KILL_CHUNK, KILL_PAUSE);
    wait_for_events(&broker.addr, "dst", 3_000, Duration::from_secs(60));

    let victim = sup.child_pid(role);
    let killed_at = Instant::now();
    kill(victim, Signal::SIGKILL).unwrap();
    // Recovered once the new consumer owns the partitions again (after a killed consumer, the group first waits
    // for the dead member's session to expire).
    let kind = role.split('-').next().unwrap_or(role);
    assert!(sup.wait_restarted(kind, 1, Duration::from_secs(60)), "no restart:\n{}", sup.log());
    let recovery = killed_at.elapsed();
    let log = sup.log();
    assert!(log.contains(&format!("{role} (pid {victim}) was killed by SIGKILL")), "{log}");
    assert!(log.contains("restarting the pipeline") && log.contains("restart 1 of at most 5"), "{log}");
    assert_ne!(sup.child_pid(role), victim, "a fresh {role} runs");

    let landed = loader.join().unwrap();
    let _ = read_until(&broker.addr, "dst", Duration::from_secs(120), |m| m.len() >= events.len());
    // Once all is through, the status shows nothing in flight: the dead child's last figures do not linger.
    let statuses = sup.log().matches("status: ").count();
    assert!(sup.wait_for_log_count("status: ", statuses + 3, Duration::from_secs(10)), "{}", sup.log());
    let last = sup.log().lines().rev().find(|l| l.contains("status: ")).unwrap_or_default().to_string();
    assert!(last.contains("in flight 0,"), "{last}");
    let checked = stop_and_check(&mut sup, Signal::SIGINT, &broker.addr, name, &events, &landed);
    eprintln!(
        "FAULT kill -9 {role}: produced {}, missing 0, duplicates {}, recovery {recovery:?}",
        events.len(),
        checked.duplicates
    );
    (checked, recovery, sup)
}

#[test]
fn a_killed_hasher_is_restarted_and_nothing_is_lost() {
    let (checked, _, _) = kill_mid_stream("killhasher", "worker-0");
    assert!(checked.duplicates <= CAPACITY, "{checked:?}");
}

#[test]
fn a_killed_producer_is_restarted_and_nothing_is_lost() {
    let (checked, _, _) = kill_mid_stream("killproducer", "sink");
    assert!(checked.duplicates <= CAPACITY, "{checked:?}");
}

#[test]
fn a_killed_consumer_is_restarted_and_nothing_is_lost() {
    let (checked, _, _) = kill_mid_stream("killconsumer", "source");
    assert!(checked.duplicates <= consumer_loss_bound(KILL_CHUNK, KILL_PAUSE), "{checked:?}");
}

#[test]
fn a_hung_hasher_is_killed_and_restarted() {
    let broker = Broker::with_topics("hung");
    let events = name_events(20_000, 64);
    let args = fault_args(&broker.addr, "hung", 2, &["--child-timeout", "2"]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    // An idle pipeline must not look hung: nothing is written for longer than the child timeout.
    std::thread::sleep(Duration::from_secs(4));
    assert!(!sup.log().contains("no heartbeat"), "an idle stage was taken for hung:\n{}", sup.log());

    let hasher = sup.child_pid("worker-1");
    kill(hasher, Signal::SIGSTOP).unwrap();
    let stopped_at = Instant::now();
    let landed = produce(&broker.addr, "src", &events);
    assert!(sup.wait_restarted("worker", 1, Duration::from_secs(60)), "{}", sup.log());
    let recovery = stopped_at.elapsed();
    let log = sup.log();
    assert!(log.contains(&format!("worker-1 (pid {hasher}) sent no heartbeat")), "{log}");
    assert!(log.contains(&format!("worker-1 (pid {hasher}) hung and was killed by SIGKILL")), "{log}");
    assert_eq!(log.matches("sent no heartbeat").count(), 1, "only the stuck stage is killed:\n{log}");

    let checked = stop_and_check(&mut sup, Signal::SIGTERM, &broker.addr, "hung", &events, &landed);
    assert!(checked.duplicates <= CAPACITY, "{checked:?}");
    eprintln!(
        "FAULT hung hasher: produced {}, missing 0, duplicates {}, recovery {recovery:?} (2 s timeout)",
        events.len(),
        checked.duplicates
    );
}

#[test]
fn failing_again_and_again_gives_up_with_exit_6_and_commits_only_what_was_delivered() {
    let broker = Broker::with_topics("giveup");
    let events = name_events(40_000, 64);
    let args = fault_args(&broker.addr, "giveup", 2, &["--max-restarts", "1"]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let loader = trickle(&broker.addr, &events, 2_000, Duration::from_millis(100));
    wait_for_events(&broker.addr, "dst", 2_000, Duration::from_secs(60));
    kill(sup.child_pid("worker-0"), Signal::SIGKILL).unwrap();
    assert!(sup.wait_restarted("worker", 1, Duration::from_secs(60)), "{}", sup.log());
    kill(sup.child_pid("worker-1"), Signal::SIGKILL).unwrap();
    let status = sup.wait_timeout(Duration::from_secs(60)).expect("gives up");
    assert_eq!(status.code(), Some(6), "{}", sup.log());
    assert!(sup.log().contains("giving up: 1 restart in a row did not help"), "{}", sup.log());

    let landed = loader.join().unwrap();
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(30), |_| true);
    assert_committed_are_delivered(&events, &landed, &committed(&broker.addr, "giveup", "src"), &dst);
    // systemd restarts it; that run finishes the job.
    finish_and_check(&broker, &fault_args(&broker.addr, "giveup", 2, &[]), "giveup", &events, &landed);
}

#[test]
fn sigterm_at_random_moments_with_restarts_loses_and_repeats_nothing() {
    let broker = Broker::with_topics("sigterm10");
    let events = name_events(60_000, 128);
    let args = fault_args(&broker.addr, "sigterm10", 2, &[]);
    let mut random = Random::from_env();
    let loader = trickle(&broker.addr, &events, 1_000, Duration::from_millis(100));
    let t0 = Instant::now();
    for round in 0..10 {
        let mut sup = start(&args);
        assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
        std::thread::sleep(Duration::from_millis(random.below(2_000)));
        assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "round {round}:\n{}", sup.log());
    }
    let landed = loader.join().unwrap();
    let checked = finish_and_check(&broker, &args, "sigterm10", &events, &landed);
    assert_eq!(checked.duplicates, 0, "every drain was clean, so nothing is delivered twice");
    eprintln!("FAULT SIGTERM x10: produced {}, missing 0, duplicates 0, {:?} in all", events.len(), t0.elapsed());
}

/// librdkafka's mock cluster can take its broker away and bring it back, which a real broker process cannot do
/// without losing its in-memory data.
#[test]
fn a_broker_outage_holds_the_pipeline_back_and_it_resumes_by_itself() {
    let (cluster, addr) = mock_cluster();
    let events = name_events(30_000, 64);
    let args = fault_args(&addr, "outage", 2, &[]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let loader = trickle(&addr, &events, 1_000, Duration::from_millis(100));
    wait_for_events(&addr, "dst", 3_000, Duration::from_secs(60));

    cluster.broker_down(1).unwrap();
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_secs(15));
    assert!(!sup.exited(), "an outage must not end the pipeline:\n{}", sup.log());
    let before = read_until(&addr, "dst", Duration::from_secs(1), |_| true).len();
    cluster.broker_up(1).unwrap();
    let up_at = Instant::now();
    let more = wait_for_events(&addr, "dst", before + 1_000, Duration::from_secs(120));
    let resumed = up_at.elapsed();
    assert!(more > before, "work did not resume after the outage:\n{}", sup.log());

    let landed = loader.join().unwrap();
    let checked = stop_and_check(&mut sup, Signal::SIGINT, &addr, "outage", &events, &landed);
    // The group may drop the member during the outage: its partitions are re-read from the last commit.
    assert!(checked.duplicates <= consumer_loss_bound(1_000, Duration::from_millis(100)), "{checked:?}");
    assert!(!sup.log().contains("restarting the pipeline"), "clients ride out an outage:\n{}", sup.log());
    eprintln!(
        "FAULT broker down {:?}: produced {}, missing 0, duplicates {}, flowing again {resumed:?} after it came back",
        up_at - down_at,
        events.len(),
        checked.duplicates
    );
}

#[test]
fn an_event_larger_than_the_producers_limit_is_dead_lettered_cut_to_fit_and_the_run_goes_on() {
    let broker = Broker::with_topics("nodlq");
    let mut events = name_events(5_000, 64);
    // Too large for the producer's limit, so neither the destination nor the dead-letter topic can take it whole.
    let huge = format!(r#"{{"key": "huge", "seq": 0, "note": "{}"}}"#, "x".repeat(4_000));
    events.insert(2_500, (Some(b"huge".to_vec()), Some(huge.clone().into_bytes())));
    let landed = produce(&broker.addr, "src", &events);
    let huge_at = landed[2_500];

    let args = fault_args(&broker.addr, "nodlq", 2, &["-X", "producer.message.max.bytes=3000"]);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(120), |m| m.len() >= events.len() - 1);
    let dlq = read_until(&broker.addr, "dst.dlq", Duration::from_secs(30), |m| !m.is_empty());
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    assert!(!sup.log().contains("restarting the pipeline"), "{}", sup.log());

    let mut others = events.clone();
    others.remove(2_500);
    let checked = check_destination(&others, &dst);
    assert_eq!(checked.unique, others.len());
    assert_eq!(dlq.len(), 1, "{:?}", dlq.iter().map(|m| &m.headers).collect::<Vec<_>>());
    let m = &dlq[0];
    let at: (i32, i64) =
        (m.headers["dlq.source.partition"].parse().unwrap(), m.headers["dlq.source.offset"].parse().unwrap());
    assert_eq!(at, huge_at);
    // A quarter of the 3000-byte limit: 750 bytes of the value, with room left for the key and the headers.
    assert_eq!(m.payload.as_deref(), Some(&huge.as_bytes()[..750]));
    assert!(m.headers["dlq.cut"].contains("the first 750 of "), "{:?}", m.headers);
    assert_eq!(committed(&broker.addr, "nodlq", "src"), end_offsets(&landed), "committed past it");
}

#[test]
fn two_instances_share_the_partitions_and_one_stopping_hands_over_without_loss() {
    let broker = Broker::with_topics("twoinst");
    let events = name_events(40_000, 128);
    let args = fault_args(&broker.addr, "twoinst", 1, &[]);
    let mut a = start(&args);
    let mut b = start(&args);
    // Both take part: each owns some of the partitions before one of them stops.
    let owns = |n: f64| move |m: &Metrics| m.get("supervisor_assigned_partitions").is_some_and(|p| p >= n && p < 4.0);
    for sup in [&mut a, &mut b] {
        assert!(
            sup.wait_metrics(Duration::from_secs(60), owns(1.0)).is_some(),
            "the group did not split:\n{}",
            sup.log()
        );
    }
    let loader = trickle(&broker.addr, &events, 1_000, Duration::from_millis(100));
    wait_for_events(&broker.addr, "dst", 10_000, Duration::from_secs(60));
    // Timed from the signal: the other instance may own everything before the stopped one has finished exiting.
    let stopped = Instant::now();
    a.signal(Signal::SIGTERM);
    let all = |m: &Metrics| m.get("supervisor_assigned_partitions") == Some(4.0);
    assert!(b.wait_metrics(Duration::from_secs(60), all).is_some(), "{}", b.log());
    let took = stopped.elapsed();
    assert_eq!(a.wait_timeout(Duration::from_secs(30)).and_then(|s| s.code()), Some(0), "{}", a.log());

    let landed = loader.join().unwrap();
    let checked = stop_and_check(&mut b, Signal::SIGINT, &broker.addr, "twoinst", &events, &landed);
    assert!(checked.duplicates <= CAPACITY, "{checked:?}");
    eprintln!(
        "FAULT two instances, one stopped: produced {}, missing 0, duplicates {}, the other owns all partitions {took:?} after the SIGTERM",
        events.len(),
        checked.duplicates
    );
}

/// Only the mock cluster can make a broker refuse a produce request on demand.
#[test]
fn a_produce_error_no_retry_can_fix_sends_the_events_to_the_dead_letter_topic() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (cluster, addr) = mock_cluster();
    let events = name_events(5_000, 64);
    let landed = produce(&addr, "src", &events);
    // The pipeline's first produce request is refused as too large: retrying cannot help.
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE]);

    // A whole produce request refused dead-letters hundreds of events at once, more than --max-dead-letters' 10%
    // of the last 1000: off here, where what is under test is where each event goes.
    let args = fault_args(&addr, "refused", 2, &["--max-dead-letters", "off"]);
    let mut sup = start(&args);
    let total = |m: &[Msg]| m.len();
    let dst_and_dlq = || {
        let dst = read_until(&addr, "dst", Duration::from_secs(60), |_| true);
        let dlq = read_until(&addr, "dst.dlq", Duration::from_secs(5), |_| true);
        (dst, dlq)
    };
    let _ = read_until(&addr, "dst", Duration::from_secs(60), |m| m.len() >= events.len() - 1_000);
    let (dst, dlq) = dst_and_dlq();
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());

    assert!(!dlq.is_empty(), "the refused events are dead-lettered:\n{}", sup.log());
    for m in &dlq {
        assert!(m.headers["dlq.error"].contains("too large"), "{:?}", m.headers);
        assert_eq!(m.headers["dlq.source.topic"], "src");
    }
    // Every event is in exactly one of the two topics.
    let dead: Vec<Event> = dlq.iter().map(|m| (m.key.clone(), m.payload.as_deref().map(|p| source_of(p).0))).collect();
    let delivered: Vec<Event> = events.iter().filter(|e| !dead.iter().any(|d| d.1 == e.1)).cloned().collect();
    let checked = check_destination(&delivered, &dst);
    assert_eq!(checked.unique + dead.len(), events.len(), "{} in dst, {} in dlq", total(&dst), total(&dlq));
    assert_eq!(committed(&addr, "refused", "src"), end_offsets(&landed), "committed offsets");
    eprintln!("FAULT produce refused: produced {}, missing 0, dead-lettered {}", events.len(), dlq.len());
}

/// Only the mock cluster can make a broker answer a fetch with OFFSET_OUT_OF_RANGE: librdkafka then resets the
/// partitions to their earliest offset (auto.offset.reset), and the consumer is handed again offsets it has already
/// taken, while they are still in flight.
#[test]
fn a_partition_rewound_while_events_are_in_flight_is_delivered_again_and_the_drain_completes() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (cluster, addr) = mock_cluster();
    // Few enough events that they all fit in the pipeline's channels: the consumer never waits on a send.
    let events = name_events(1_200, 64);
    let mut args = base_args(&addr, "rewind");
    args.extend(["--hashers", "2", "--queue-capacity", "1000000"].map(String::from));
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    // Nothing is acknowledged while the producer is frozen: every event taken stays in flight.
    let producer = sup.child_pid("sink");
    kill(producer, Signal::SIGSTOP).unwrap();
    let landed = produce(&addr, "src", &events);
    let all_in_flight = |m: &Metrics| m.get("supervisor_in_flight_events") == Some(events.len() as f64);
    assert!(sup.wait_metrics(Duration::from_secs(30), all_in_flight).is_some(), "{}", sup.log());
    cluster.request_errors(RDKafkaApiKey::Fetch, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE]);
    assert!(sup.wait_for_log("went back from offset", Duration::from_secs(30)), "no rewind:\n{}", sup.log());
    let log = sup.log();
    let rewind = log.lines().find(|l| l.contains("went back from offset")).unwrap_or_default();
    let in_flight: usize = rewind
        .split(" with ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no in-flight count in {rewind:?}"));
    assert!(in_flight > 0, "the rewind must meet events in flight: {rewind}");
    kill(producer, Signal::SIGCONT).unwrap();
    let checked = stop_and_check(&mut sup, Signal::SIGTERM, &addr, "rewind", &events, &landed);
    assert!(!sup.log().contains("restarting the pipeline"), "a rewind is no failure:\n{}", sup.log());
    eprintln!("FAULT partition rewound: produced {}, missing 0, duplicates {}", events.len(), checked.duplicates);
}
