//! Running under systemd: the notify protocol, spoken to a socket the test binds as systemd would.

mod common;

use common::*;
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
    let broker = Broker::start("notify");
    broker.create_topics(&[("src", PARTITIONS), ("dst", PARTITIONS)]);
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
    assert!(sup.wait_for_log("assigned", Duration::from_secs(2)), "{}", sup.log());
    let ready = {
        let got = got.lock().unwrap();
        got[first(&got, "READY=1").unwrap()].1.clone()
    };
    assert!(ready.contains("STATUS=running: src → 2 hashers → dst"), "{ready}");

    let events = name_events(2_000, 16);
    produce(&broker.addr, "src", &events);
    wait_for_events(&broker.addr, "dst", PARTITIONS, events.len(), Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let pets = got.lock().unwrap().iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(pets >= 3, "WATCHDOG=1 every 0.5 s (WatchdogSec=1): only {pets}");
    // The status goes to the log and to systemd; everything is through, so nothing is in flight or behind.
    let status = "in flight 0, lag 0, dead letters 0, restarts 0";
    assert!(sup.wait_for_log(status, Duration::from_secs(5)), "{}", sup.log());
    assert!(got.lock().unwrap().iter().any(|(_, m)| m.starts_with("STATUS=in ") && m.ends_with(status)), "{got:?}");

    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_timeout(Duration::from_secs(30)).and_then(|s| s.code()), Some(0), "{}", sup.log());
    let got = got.lock().unwrap().clone();
    let (ready_at, stopping_at) = (first(&got, "READY=1").unwrap(), first(&got, "STOPPING=1").expect("STOPPING=1"));
    assert!(ready_at < stopping_at, "{got:?}");
    assert!(got[stopping_at].1.contains("EXTEND_TIMEOUT_USEC=25000000"), "room for the 20 s drain: {got:?}");
}
