//! Running under systemd: the notify protocol, spoken to a socket the test binds as systemd would.

use crate::harness::*;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every datagram the supervisor sends, with when it came.
fn listen(path: &std::path::Path) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let _ = std::fs::remove_file(path);
    let socket = UnixDatagram::bind(path).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            sink.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    });
    got
}

fn first(got: &[(Instant, String)], prefix: &str) -> Option<usize> {
    got.iter().position(|(_, m)| m.lines().any(|l| l.starts_with(prefix)))
}

#[test]
fn systemd_hears_ready_then_watchdog_then_stopping() {
    let broker = Broker::with_topics("notify");
    let path = scratch_dir("notify").join("notify.sock");
    let got = listen(&path);
    let mut args = base_args(&broker.addr, "notify");
    args.extend(["--hashers", "2", "--drain-timeout", "20", "--status-interval", "0.5"].map(String::from));
    let notify_socket = path.to_string_lossy().into_owned();
    let mut sup = start_with_env(&args, &[("NOTIFY_SOCKET", notify_socket.as_str()), ("WATCHDOG_USEC", "1000000")]);

    let t0 = Instant::now();
    while first(&got.lock().unwrap(), "READY=1").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no READY=1:\n{}", sup.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ready means joined: the consumer has its partitions by then.
    let owns_all = |m: &Metrics| m.get("supervisor_assigned_partitions") == Some(4.0);
    assert!(sup.wait_metrics(Duration::from_secs(2), owns_all).is_some(), "{}", sup.log());
    let ready = {
        let got = got.lock().unwrap();
        got[first(&got, "READY=1").unwrap()].1.clone()
    };
    assert!(ready.contains("STATUS=running: src → 2 workers → dst"), "{ready}");

    let events = name_events(2_000, 16);
    produce(&broker.addr, "src", &events);
    wait_for_events(&broker.addr, "dst", events.len(), Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let pets = got.lock().unwrap().iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(pets >= 3, "WATCHDOG=1 every 0.5 s (WatchdogSec=1): only {pets}");
    // The status goes to the log and to systemd; everything is through, so nothing is in flight or behind.
    let status = "in flight 0, lag 0, written 2000, dead letters 0, restarts 0";
    assert!(sup.wait_for_log(status, Duration::from_secs(5)), "{}", sup.log());
    assert!(got.lock().unwrap().iter().any(|(_, m)| m.starts_with("STATUS=in ") && m.contains(status)), "{got:?}");

    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    let got = got.lock().unwrap().clone();
    let (ready_at, stopping_at) = (first(&got, "READY=1").unwrap(), first(&got, "STOPPING=1").expect("STOPPING=1"));
    assert!(ready_at < stopping_at, "{got:?}");
    assert!(got[stopping_at].1.contains("EXTEND_TIMEOUT_USEC=25000000"), "room for the 20 s drain: {got:?}");
}

/// Scrapes until `done` holds for what it shows, and returns it.
fn scrape_until(addr: &str, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let t0 = Instant::now();
    loop {
        let text = scrape(addr).unwrap_or_else(|| panic!("nothing answers on {addr}"));
        if done(&text) {
            return text;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "metrics never showed {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_show_the_pipeline_per_stage_and_partition_and_its_restarts() {
    let broker = Broker::with_topics("metrics");
    let mut args = base_args(&broker.addr, "metrics");
    args.extend(["--hashers", "2", "--metrics-addr", "127.0.0.1:0"].map(String::from));
    let mut sup = start(&args);
    // Port 0 picks a free port, and the log says which.
    assert!(sup.wait_for_log("metrics at http://", Duration::from_secs(30)), "{}", sup.log());
    let log = sup.log();
    let addr = log
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string();
    let idle = scrape_until(&addr, "readiness", |m| m.get("supervisor_ready") == Some(1.0));
    assert_eq!(idle.get("supervisor_children{role=\"worker\"}"), Some(2.0), "{idle}");
    assert_eq!(idle.get("supervisor_queue_capacity_events"), Some(10_000.0), "{idle}");

    let mut events = name_events(3_000, 16);
    events.extend([b"not json".to_vec(), b"[1,2]".to_vec(), b"{\"a\":".to_vec()].map(|p| (None, Some(p))));
    let landed = produce(&broker.addr, "src", &events);
    let ends = end_offsets(&landed);
    let through = |t: &Metrics| {
        t.get("supervisor_events_out_total{stage=\"sink\"}") == Some(events.len() as f64)
            && (0..PARTITIONS).all(|p| {
                let labels = format!("{{topic=\"src\",partition=\"{p}\"}}");
                t.get(&format!("supervisor_committed_offset{labels}")) == Some(ends[p as usize] as f64)
                    && t.get(&format!("supervisor_consumer_lag_events{labels}")) == Some(0.0)
            })
    };
    let text = scrape_until(&addr, "every event delivered and committed, with no lag", through);
    let n = events.len() as f64;
    for (series, value) in [
        ("supervisor_events_in_total{stage=\"source\"}", n),
        ("supervisor_events_in_total{stage=\"worker\"}", n),
        ("supervisor_events_out_total{stage=\"worker\"}", n),
        ("supervisor_events_in_total{stage=\"sink\"}", n),
        ("supervisor_dead_letters_total{stage=\"worker\"}", 3.0),
        ("supervisor_dead_letters_total{stage=\"sink\"}", 3.0),
        ("supervisor_sink_events_total{outcome=\"written\"}", n - 3.0),
        ("supervisor_sink_events_total{outcome=\"dead_lettered\"}", 3.0),
        ("supervisor_acked_total", n),
        ("supervisor_produce_errors_total", 0.0),
        ("supervisor_in_flight_events", 0.0),
        ("supervisor_restarts_total{role=\"worker\"}", 0.0),
        ("supervisor_ready", 1.0),
    ] {
        assert_eq!(text.get(series), Some(value), "{series} in\n{text}");
    }
    let batches = text.get("supervisor_batches_out_total{stage=\"source\"}").unwrap();
    assert!(batches >= 2.0 && batches < n, "events travel in batches: {batches}\n{text}");

    // A hasher dies: the pipeline drains and restarts, and the metrics say whose fault it was.
    let victim = sup.child_pid("worker-0");
    kill(victim, Signal::SIGKILL).unwrap();
    let text = scrape_until(&addr, "the restart", |t| {
        t.get("supervisor_restarts_total{role=\"worker\"}") == Some(1.0) && t.get("supervisor_ready") == Some(1.0)
    });
    assert_eq!(text.get("supervisor_restarts_total{role=\"source\"}"), Some(0.0), "{text}");
    assert_eq!(text.get("supervisor_drains_total"), Some(1.0), "{text}");
    assert!(text.get("supervisor_last_drain_seconds").is_some_and(|s| s > 0.0 && s < 10.0), "{text}");
    assert_eq!(text.get("supervisor_children{role=\"worker\"}"), Some(2.0), "{text}");
    assert_ne!(sup.child_pid("worker-0"), victim, "a fresh worker-0 runs");
    // Counters carry over the restart: the dead generation's counts are still in.
    assert_eq!(text.get("supervisor_events_in_total{stage=\"source\"}"), Some(n), "{text}");

    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    assert!(std::net::TcpStream::connect(&addr).is_err(), "the port is closed with the supervisor");
}

#[test]
fn the_readme_shows_the_unit_file_as_shipped() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("scripts/stream-supervisor@.service.in")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let shown: String =
        unit.lines().map(|l| if l.is_empty() { "\n".to_string() } else { format!("    {l}\n") }).collect();
    assert!(readme.contains(&shown), "README.md's copy of scripts/stream-supervisor@.service.in is out of date");
}

/// A table scan's metrics: the readers count the rows they read, the sink what it wrote, and in flight stays within
/// --queue-capacity.
#[test]
fn a_table_scan_counts_what_its_readers_read() {
    let db = Db::start("sqlite", "scan-metrics");
    db.exec("CREATE TABLE src (id INTEGER PRIMARY KEY); CREATE TABLE dst (id INTEGER PRIMARY KEY, hash TEXT)");
    db.fill("src", "id", "v", 200_000);
    let state = scratch_dir("scan-metrics-state");
    let mut sup = start(
        &[
            "--source",
            &db.url("src"),
            "--sink",
            &db.url("dst"),
            "--state-dir",
            &state.display().to_string(),
            "--hashers",
            "2",
            "--queue-capacity",
            "5000",
            "--metrics-addr",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    assert!(sup.wait_for_log("metrics at http://", Duration::from_secs(30)), "{}", sup.log());
    let log = sup.log();
    let addr = log.split("metrics at http://").nth(1).and_then(|r| r.split("/metrics").next()).unwrap().to_string();
    // Pages of up to 2,000 rows are taken whole, only while one fits: never more in flight than --queue-capacity.
    let text = scrape_until(&addr, "rows written", |t| {
        let in_flight = t.get("supervisor_in_flight_events").unwrap_or(0.0);
        assert!(in_flight <= 5_000.0, "{in_flight} in flight:\n{t}");
        t.get("supervisor_sink_events_total{outcome=\"written\"}").is_some_and(|w| w >= 50_000.0)
    });
    let read = text.get("supervisor_events_in_total{stage=\"reader\"}").unwrap_or(0.0);
    let written = text.get("supervisor_sink_events_total{outcome=\"written\"}").unwrap_or(0.0);
    // Each stage's counts come with its own heartbeat: the sink's may be a heartbeat ahead of the readers'.
    assert!(read > 0.0 && read <= 200_000.0, "readers read {read}, the sink wrote {written}:\n{text}");
    assert_eq!(text.get("supervisor_events_out_total{stage=\"reader\"}"), Some(read), "{text}");
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
}
