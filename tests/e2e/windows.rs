//! `--aggregate`: windows and running aggregates against a real broker and a real table, each result compared with a
//! batch computation in the test over the input the test wrote, through kills, restarts and stops.

use crate::harness::*;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// 2026-12-03T09:00:00Z, in seconds.
const BASE: f64 = 1_796_288_400.0;
const LATENESS_MS: i64 = 2_000;

/// One generated order, as written and as the reference reads it.
#[derive(Clone)]
struct Order {
    customer: String,
    amount: f64,
    /// Seconds since the epoch; `None`: the order's time is not a time (a dead letter).
    ts: Option<f64>,
}

/// `n` orders of 20 customers (each customer's orders in one partition: the key is the customer), 100 per second of
/// event time, a tenth up to 1.5 s out of order (inside the 2 s lateness), one in 200 half a minute late, and a few
/// whose time is not one. Amounts are quarters, so float sums are exact in any order and the reference can add them
/// plainly.
fn orders(n: usize, seed: u64) -> Vec<Order> {
    let mut r = seed;
    let mut next = move || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r
    };
    (0..n)
        .map(|i| {
            let x = next();
            let mut ts = BASE + i as f64 * 0.01;
            if x % 10 == 0 {
                ts -= (x / 10 % 150) as f64 / 100.0;
            }
            if x % 200 == 7 {
                ts -= 30.0;
            }
            let amount = (next() % 4000) as f64 * 0.25;
            Order { customer: format!("c{}", next() % 20), amount, ts: (i % 5000 != 4999).then_some(ts) }
        })
        .collect()
}

fn events_of(orders: &[Order]) -> Vec<Event> {
    orders
        .iter()
        .map(|o| {
            let ts = o.ts.map_or("\"yesterday\"".to_string(), |t| t.to_string());
            let v = format!(r#"{{"customer":"{}","amount":{},"ts":{ts}}}"#, o.customer, o.amount);
            (Some(o.customer.clone().into_bytes()), Some(v.into_bytes()))
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Kind {
    Tumbling(i64),
    Hopping(i64, i64),
    Session(i64),
}

/// A window's expected aggregates: count, sum, max.
#[derive(Debug, Clone, PartialEq)]
struct Agg {
    n: u64,
    total: f64,
    hi: f64,
}

/// What the pipeline must compute: per (customer, window start), the window's end and aggregates; and the late
/// events' positions. Each lane (partition) is read in its order, as the pipeline reads it: an event is late when its
/// lane's largest event time so far has passed its window's end plus the lateness (a session event: its own time).
struct Reference {
    windows: BTreeMap<(String, i64), (i64, Agg)>,
    late: Vec<(i32, i64)>,
    /// The watermark once everything is read: the smallest of the lanes' largest event times.
    watermark: i64,
}

fn reference(orders: &[Order], landed: &[(i32, i64)], kind: Kind) -> Reference {
    let mut by_lane: BTreeMap<i32, Vec<(i64, &Order)>> = BTreeMap::new();
    for (o, &(p, off)) in orders.iter().zip(landed) {
        by_lane.entry(p).or_default().push((off, o));
    }
    let mut windows: BTreeMap<(String, i64), (i64, Agg)> = BTreeMap::new();
    let mut sessions: HashMap<String, Vec<(i64, f64)>> = HashMap::new();
    let (mut late, mut marks) = (Vec::new(), Vec::new());
    for (p, mut evs) in by_lane {
        evs.sort_by_key(|(off, _)| *off);
        let mut mark: Option<i64> = None;
        for (off, o) in evs {
            let Some(ts) = o.ts else { continue };
            let t = (ts * 1000.0).floor() as i64;
            let add = |w: &mut BTreeMap<(String, i64), (i64, Agg)>, start: i64, end: i64| {
                let e = w.entry((o.customer.clone(), start)).or_insert((end, Agg { n: 0, total: 0.0, hi: f64::MIN }));
                e.1.n += 1;
                e.1.total += o.amount;
                e.1.hi = e.1.hi.max(o.amount);
            };
            let past = |end: i64| mark.is_some_and(|m| end + LATENESS_MS <= m);
            match kind {
                Kind::Tumbling(size) => {
                    let start = t.div_euclid(size) * size;
                    if past(start + size) {
                        late.push((p, off));
                    } else {
                        add(&mut windows, start, start + size);
                    }
                }
                Kind::Hopping(size, step) => {
                    let last = t.div_euclid(step) * step;
                    let open: Vec<i64> =
                        (0..size / step).map(|i| last - i * step).filter(|s| !past(s + size)).collect();
                    if open.is_empty() {
                        late.push((p, off));
                    }
                    for s in open {
                        add(&mut windows, s, s + size);
                    }
                }
                Kind::Session(_) => {
                    if past(t) {
                        late.push((p, off));
                    } else {
                        sessions.entry(o.customer.clone()).or_default().push((t, o.amount));
                    }
                }
            }
            mark = Some(mark.map_or(t, |m| m.max(t)));
        }
        marks.push(mark.unwrap_or(i64::MIN));
    }
    if let Kind::Session(gap) = kind {
        for (customer, mut evs) in sessions {
            evs.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mut current: Option<(i64, i64, Agg)> = None;
            for (t, amount) in evs {
                match &mut current {
                    Some((_, last, agg)) if t <= *last + gap => {
                        *last = t;
                        agg.n += 1;
                        agg.total += amount;
                        agg.hi = agg.hi.max(amount);
                    }
                    _ => {
                        if let Some((start, last, agg)) = current.take() {
                            windows.insert((customer.clone(), start), (last + gap, agg));
                        }
                        current = Some((t, t, Agg { n: 1, total: amount, hi: amount }));
                    }
                }
            }
            if let Some((start, last, agg)) = current {
                windows.insert((customer.clone(), start), (last + gap, agg));
            }
        }
    }
    Reference { windows, late, watermark: marks.into_iter().min().unwrap_or(i64::MIN) }
}

/// The results in `dst`, by (key, window start): each result emitted more than once (after a crash) must be the
/// same bytes every time.
fn results(msgs: &[Msg]) -> BTreeMap<(String, i64), (i64, Agg)> {
    let mut seen: HashMap<(String, i64), Vec<u8>> = HashMap::new();
    let mut out = BTreeMap::new();
    for m in msgs {
        let payload = m.payload.clone().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        assert_eq!(m.key.as_deref(), Some(key.as_bytes()), "the message key is the group key");
        let millis = |f: &str| rfc3339_millis(v[f].as_str().unwrap());
        let start = millis("window_start");
        if let Some(before) = seen.insert((key.clone(), start), payload.clone()) {
            assert_eq!(before, payload, "a result emitted again is the same bytes");
        }
        let agg =
            Agg { n: v["n"].as_u64().unwrap(), total: v["total"].as_f64().unwrap(), hi: v["hi"].as_f64().unwrap() };
        out.insert((key, start), (millis("window_end"), agg));
    }
    out
}

/// `2026-12-03T09:00:10Z` (or with `.250`) as milliseconds since the epoch.
fn rfc3339_millis(s: &str) -> i64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    ((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000) + format!("{frac:0<3}")[..3].parse::<i64>().unwrap()
}

/// Every window the watermark has closed is there, exactly as the reference computed it; nothing else is.
fn assert_exact(got: &BTreeMap<(String, i64), (i64, Agg)>, want: &Reference) {
    let closed: BTreeMap<_, _> =
        want.windows.iter().filter(|(_, (end, _))| end + LATENESS_MS <= want.watermark).collect();
    assert!(closed.len() > 10, "the test closes too few windows to say anything: {}", closed.len());
    let mut wrong = Vec::new();
    for (k, w) in &closed {
        if got.get(*k) != Some(*w) {
            wrong.push(format!("{k:?}: got {:?}, want {w:?}", got.get(*k)));
        }
    }
    for k in got.keys() {
        if !want.windows.contains_key(k) {
            wrong.push(format!("{k:?}: emitted, but no such window"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} windows wrong:\n{}",
        wrong.len(),
        closed.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
}

fn aggregate_args(broker: &str, group: &str, dest: &str, window: &str, state: &std::path::Path) -> Vec<String> {
    let mut args = base_args(broker, group);
    args = without(&args, &["dest-topic"]);
    args.extend(
        [
            "--dest-topic",
            dest,
            "--hashers",
            "2",
            "--queue-capacity",
            "2000",
            "--status-interval",
            "0.5",
            "--aggregate",
            "{n: count, total: sum(.amount), hi: max(.amount)}",
            "--group-by",
            ".customer",
            "--event-time",
            ".ts",
            "--lateness",
            "2s",
            "--window",
            window,
            "--state-dir",
        ]
        .map(String::from),
    );
    args.push(state.display().to_string());
    args
}

/// The results and dead letters once `want` windows arrived in `dest` (duplicates counted once).
fn wait_results(broker: &str, dest: &str, want: usize) -> BTreeMap<(String, i64), (i64, Agg)> {
    let msgs = read_until(broker, dest, Duration::from_secs(120), |m| results(m).len() >= want);
    results(&msgs)
}

fn closable(r: &Reference) -> usize {
    r.windows.values().filter(|(end, _)| end + LATENESS_MS <= r.watermark).count()
}

/// The late events in the dead-letter topic, once each, by their source position; and every other dead letter's
/// reason.
fn dead_letters(broker: &str, dlq: &str, late: usize) -> (Vec<(i32, i64)>, Vec<String>) {
    let msgs = read_until(broker, dlq, Duration::from_secs(60), |m| m.len() >= late);
    let (mut positions, mut others) = (Vec::new(), Vec::new());
    for m in msgs {
        let at = (m.headers["dlq.source.partition"].parse().unwrap(), m.headers["dlq.source.offset"].parse().unwrap());
        match m.headers["dlq.error"].as_str() {
            "late" => positions.push(at),
            other => others.push(other.to_string()),
        }
    }
    positions.sort_unstable();
    positions.dedup();
    others.sort();
    others.dedup();
    (positions, others)
}

#[test]
fn tumbling_windows_are_exact_through_kill_9_of_every_process_and_of_the_supervisor() {
    let broker = Broker::with_topics("wintumble");
    broker.create_topics(&[("totals", PARTITIONS)]);
    let orders = orders(40_000, 7);
    let events = events_of(&orders);
    let state = scratch_dir("wintumble-state");
    let args = aggregate_args(&broker.addr, "gt", "totals", "tumbling=10s", &state);
    let mut sup = start(&args);
    assert!(sup.wait_ready(Duration::from_secs(30)), "{}", sup.log());
    // Slowly enough that every kill below lands while events still come in.
    let loader = trickle(&broker.addr, &events, 500, Duration::from_millis(200));
    let kill_mid_window = |sup: &mut Running, role: &str, results: usize| {
        // Once some windows are out, so that state, pending results and commits are all in play.
        wait_results(&broker.addr, "totals", results);
        let victim = sup.child_pid(role);
        kill(victim, Signal::SIGKILL).unwrap();
        let kind = role.split('-').next().unwrap_or(role);
        assert!(sup.wait_restarted(kind, 1, Duration::from_secs(60)), "no restart after {role}:\n{}", sup.log());
    };
    kill_mid_window(&mut sup, "sink", 60);
    kill_mid_window(&mut sup, "worker-0", 120);
    // The supervisor itself, mid-stream: its children follow it (the source with no last commit, so what it
    // acknowledged since its last one is read again), and a new one goes on from the state on disk.
    wait_results(&broker.addr, "totals", 180);
    let children: Vec<i32> = sup.children().values().copied().collect();
    kill(sup.pid(), Signal::SIGKILL).unwrap();
    let gone = Instant::now();
    while children.iter().any(|&p| pid_alive(p)) && gone.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!loader.is_finished(), "the supervisor was killed after the input ended: make the loader slower");
    let mut again = start(&args);
    assert!(again.wait_ready(Duration::from_secs(30)), "{}", again.log());
    kill_mid_window(&mut again, "source", 240);
    let landed = loader.join().unwrap();
    let want = reference(&orders, &landed, Kind::Tumbling(10_000));
    let got = wait_results(&broker.addr, "totals", closable(&want));
    assert_eq!(again.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", again.log());
    assert_exact(&got, &want);
    let (late, others) = dead_letters(&broker.addr, "totals.dlq", want.late.len());
    assert_eq!(late, want.late, "every late event, and only those, is a dead letter as late");
    assert_eq!(
        others,
        ["--event-time gave \"yesterday\": not an RFC 3339 time or a number of seconds since the epoch (years 1 to 9999)"]
    );
    let log = again.log();
    assert!(log.contains("aggregation state restored from"), "{log}");
}

#[test]
fn hopping_and_session_windows_are_exact_and_a_sigterm_mid_window_goes_on_where_it_stopped() {
    let broker = Broker::with_topics("winkinds");
    broker.create_topics(&[("hops", PARTITIONS), ("sessions", PARTITIONS)]);
    let mut orders = orders(12_000, 11);
    // Gaps in time, so that sessions end: every 3000th order starts a quiet minute.
    for (i, o) in orders.iter_mut().enumerate() {
        if let Some(ts) = &mut o.ts {
            *ts += (i / 3000) as f64 * 60.0;
        }
    }
    let landed = produce(&broker.addr, "src", &events_of(&orders));
    for (kind, window, dest) in
        [(Kind::Hopping(10_000, 5_000), "hopping=10s,5s", "hops"), (Kind::Session(5_000), "session=5s", "sessions")]
    {
        let state = scratch_dir(&format!("winkinds-{dest}"));
        let mut args = aggregate_args(&broker.addr, dest, dest, window, &state);
        args.extend(["--max-rate", "4000"].map(String::from));
        let want = reference(&orders, &landed, kind);
        let mut first = start(&args);
        assert!(first.wait_ready(Duration::from_secs(30)), "{}", first.log());
        wait_results(&broker.addr, dest, closable(&want) / 3);
        assert_eq!(first.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", first.log());
        let mut second = start(&args);
        let got = wait_results(&broker.addr, dest, closable(&want));
        assert_eq!(second.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", second.log());
        assert_exact(&got, &want);
        let (late, _) = dead_letters(&broker.addr, &format!("{dest}.dlq"), want.late.len());
        assert_eq!(late, want.late, "{window}: the late events");
    }
}

#[test]
fn a_running_aggregate_emits_every_update_and_its_last_is_the_total() {
    let broker = Broker::with_topics("winrunning");
    let orders = orders(5_000, 3);
    produce(&broker.addr, "src", &events_of(&orders));
    let state = scratch_dir("winrunning-state");
    let mut args = base_args(&broker.addr, "gr");
    args.extend(
        [
            "--aggregate",
            "{n: count, total: sum(.amount), top: top(2; .amount > 500), d: distinct(.amount), f: fold(0; . + 1)}",
            "--group-by",
            ".customer",
            "--state-dir",
        ]
        .map(String::from),
    );
    args.push(state.display().to_string());
    let mut sup = start(&args);
    let msgs = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= orders.len());
    // The state, as /metrics shows it: a running aggregate is one window per key, never closed.
    let n = orders.len() as f64;
    let seen = sup.wait_metrics(Duration::from_secs(10), |m| m.get("supervisor_aggregate_events_total") == Some(n));
    let m = seen.unwrap_or_else(|| panic!("{:?}", sup.metrics()));
    assert_eq!(m.get("supervisor_aggregate_keys"), Some(20.0));
    assert_eq!(m.get("supervisor_aggregate_open_windows"), Some(20.0));
    assert_eq!(m.get("supervisor_aggregate_late_events_total"), Some(0.0));
    assert!(m.get("supervisor_aggregate_state_bytes").is_some_and(|b| b > 0.0), "{m:?}");
    assert!(m.get("supervisor_aggregate_watermark_lag_seconds").is_some_and(|s| s < 600.0), "{m:?}");
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    assert_eq!(msgs.len(), orders.len(), "one update per event");
    let mut last: HashMap<String, serde_json::Value> = HashMap::new();
    let mut seen_n: HashMap<String, u64> = HashMap::new();
    for m in &msgs {
        let v: serde_json::Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        assert!(v.get("window_start").is_none(), "a running aggregate has no window: {v}");
        let n = v["n"].as_u64().unwrap();
        let before = seen_n.insert(key.clone(), n).unwrap_or(0);
        assert!(n > before, "a key's updates count up, in order: {before} then {n}");
        last.insert(key, v);
    }
    for (customer, v) in last {
        let mine: Vec<&Order> = orders.iter().filter(|o| o.customer == customer).collect();
        assert_eq!(v["n"].as_u64(), Some(mine.len() as u64));
        assert_eq!(v["total"].as_f64(), Some(mine.iter().map(|o| o.amount).sum::<f64>()));
        let big = mine.iter().filter(|o| o.amount > 500.0).count() as u64;
        let mut distinct: Vec<u64> = mine.iter().map(|o| (o.amount * 4.0) as u64).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(v["d"].as_u64(), Some(distinct.len() as u64));
        let top = v["top"].as_array().unwrap();
        let small = mine.len() as u64 - big;
        let big_first = serde_json::json!({"count": big.max(small), "value": big > small});
        assert_eq!(v["f"], v["n"], "a fold counting one per event");
        assert_eq!(top[0], big_first, "{v}");
    }
}

/// A SQLite `orders` table of `orders`, and the command that aggregates it into `totals` (tumbling 10 s).
fn scan_setup(name: &str, orders: &[Order]) -> (std::path::PathBuf, rusqlite::Connection, Vec<String>) {
    let (path, conn) = sqlite_file(name);
    conn.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, ts REAL)").unwrap();
    {
        let mut insert = conn.prepare("INSERT INTO orders VALUES (?1, ?2, ?3, ?4)").unwrap();
        for (i, o) in orders.iter().enumerate() {
            insert.execute(rusqlite::params![i as i64 + 1, o.customer, o.amount, o.ts]).unwrap();
        }
    }
    let url = |q: &str| format!("sqlite:{}?{q}", path.display());
    let state = scratch_dir(&format!("{name}-state"));
    let args: Vec<String> = [
        "--source",
        &url("table=orders"),
        "--sink",
        &url("table=totals&key=key,window_start"),
        "--create-table",
        "--aggregate",
        "{n: count, total: sum(.amount), hi: max(.amount)}",
        "--group-by",
        ".customer",
        "--event-time",
        ".ts",
        "--window",
        "tumbling=10s",
        "--chunk-rows",
        "3000",
        "--jq",
        "select(.ts != null)",
        "--state-dir",
        &state.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    (path, conn, args)
}

/// Every window of the orders with a time, as the table `totals` must hold them.
fn assert_scan_exact(conn: &rusqlite::Connection, orders: &[Order]) {
    let mut want: BTreeMap<(String, i64), Agg> = BTreeMap::new();
    for o in orders.iter().filter(|o| o.ts.is_some()) {
        let t = (o.ts.unwrap() * 1000.0).floor() as i64;
        let e = want.entry((o.customer.clone(), t.div_euclid(10_000) * 10_000)).or_insert(Agg {
            n: 0,
            total: 0.0,
            hi: f64::MIN,
        });
        e.n += 1;
        e.total += o.amount;
        e.hi = e.hi.max(o.amount);
    }
    let mut q = conn.prepare("SELECT key, window_start, n, total, hi FROM totals").unwrap();
    let got: BTreeMap<(String, i64), Agg> = q
        .query_map([], |r| {
            let start: String = r.get(1)?;
            let agg = Agg { n: r.get::<_, i64>(2)? as u64, total: r.get(3)?, hi: r.get(4)? };
            Ok(((r.get(0)?, rfc3339_millis(&start)), agg))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.len(), want.len());
    let wrong: Vec<_> = want.iter().filter(|(k, w)| got.get(*k) != Some(*w)).take(5).collect();
    assert!(wrong.is_empty(), "windows differ from the reference, e.g. {wrong:?}");
}

#[test]
fn a_table_scan_aggregated_into_a_table_closes_every_window_at_its_end() {
    let orders = orders(20_000, 5);
    let (_, conn, args) = scan_setup("winscan", &orders);
    let out = command().args(&args).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    // A scan is finite: every window is closed and written, and no row is late, however the chunks interleave.
    assert_scan_exact(&conn, &orders);
}

#[test]
fn an_aggregated_scan_stopped_mid_way_goes_on_and_counts_every_row_once() {
    let orders = orders(20_000, 17);
    let (_, conn, mut args) = scan_setup("winscanstop", &orders);
    args.extend(["--max-rate", "5000"].map(String::from));
    let mut first = start(&args);
    assert!(first.wait_ready(Duration::from_secs(30)), "{}", first.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(first.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", first.log());
    let windows: i64 = conn.query_row("SELECT count(*) FROM totals", [], |r| r.get(0)).unwrap_or(0);
    assert_eq!(windows, 0, "a drain closes no window: the scan is not over");
    let second = command().args(without(&args, &["max-rate"])).output().unwrap();
    let log = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{log}");
    assert!(log.contains("aggregation state restored"), "{log}");
    assert_scan_exact(&conn, &orders);
}

#[test]
fn bad_aggregation_flags_exit_2_with_one_line() {
    for (flags, says) in [
        (vec!["--aggregate", "{n: median(.a)}"], "'median' is not an aggregate"),
        (vec!["--aggregate", "n: count"], "--aggregate: it is not an object"),
        (vec!["--aggregate", "{n: sum(.a | )}"], "does not compile"),
        (
            vec!["--aggregate", "{n: count}", "--window", "tumbling=10 seconds"],
            "--window: '10 seconds' is not a duration",
        ),
        (vec!["--aggregate", "{n: count}", "--lateness", "soon"], "--lateness: 'soon' is not a duration"),
        (vec!["--window", "tumbling=10s"], "--window needs --aggregate"),
        (vec!["--aggregate", "{f: fold(0; . + 1)}", "--window", "session=5s"], "fold cannot be used with session"),
        (vec!["--aggregate", "{n: count}", "--output-key", ".a"], "--output-key does not go with --aggregate"),
    ] {
        let out = command().args(["--brokers", "127.0.0.1:1"]).args(&flags).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{flags:?}: one line: {err}");
    }
}

#[test]
fn a_re_keying_pipeline_is_one_command_and_keys_every_output_by_the_field() {
    let broker = Broker::with_topics("rekey");
    // Keyed by order number, not by customer: several instances would split a customer's windows.
    let orders = orders(3_000, 13);
    let events: Vec<Event> = events_of(&orders)
        .into_iter()
        .enumerate()
        .map(|(i, (_, v))| (Some(format!("order-{i}").into_bytes()), v))
        .collect();
    let mut bad = events.clone();
    bad.push((Some(b"order-x".to_vec()), Some(br#"{"customer": {"id": 7}, "amount": 1}"#.to_vec())));
    bad.push((Some(b"order-y".to_vec()), Some(br#"{"amount": 2}"#.to_vec())));
    produce(&broker.addr, "src", &bad);
    let mut args = base_args(&broker.addr, "rekey");
    args.extend(["--jq", ".", "--output-key", ".customer"].map(String::from));
    let mut sup = start(&args);
    let msgs = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= bad.len());
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    assert_eq!(msgs.len(), bad.len(), "every event, re-keyed");
    let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
    for m in &msgs {
        let v: serde_json::Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
        let want: Option<Vec<u8>> = match &v["customer"] {
            serde_json::Value::String(s) => Some(s.clone().into_bytes()),
            serde_json::Value::Null => None,
            other => Some(other.to_string().into_bytes()),
        };
        assert_eq!(m.key, want, "{v}");
        if let Some(k) = &m.key {
            let p = *partition_of.entry(k.clone()).or_insert(m.partition);
            assert_eq!(p, m.partition, "a customer's orders all land in one partition");
        }
    }
    assert_eq!(partition_of.len(), 21, "20 customers and the one keyed by an object");
}

#[test]
fn a_state_another_pipeline_holds_and_a_text_keyed_scan_that_cannot_resume_are_refused() {
    let orders = orders(20_000, 19);
    let (path, conn, mut args) = scan_setup("winscanheld", &orders);
    args.extend(["--max-rate", "3000"].map(String::from));
    let mut first = start(&args);
    assert!(first.wait_ready(Duration::from_secs(30)), "{}", first.log());
    // The same source and state directory: the state is the first one's.
    let second = command().args(&args).output().unwrap();
    let log = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{log}");
    assert!(log.contains("is another pipeline with the same source, group and --state-dir running?"), "{log}");
    assert_eq!(first.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", first.log());

    // A text key cannot be compared here as the database orders it: a scan stopped mid-way says to start over.
    conn.execute_batch(
        "CREATE TABLE named (id TEXT PRIMARY KEY, customer TEXT, amount REAL, ts REAL);
         INSERT INTO named SELECT printf('o%06d', id), customer, amount, ts FROM orders;",
    )
    .unwrap();
    // One chunk, so that the stop below leaves it part read.
    let mut named: Vec<String> = args.iter().map(|a| a.replace("table=orders", "table=named")).collect();
    let rows = named.iter().position(|a| a == "--chunk-rows").unwrap() + 1;
    named[rows] = "20000".into();
    let state = scratch_dir("winscanheld-named");
    let named = [without(&named, &["state-dir"]), vec!["--state-dir".into(), state.display().to_string()]].concat();
    let mut stopped = start(&named);
    // Stopped once rows are in the state, and long before the scan's end (20,000 rows at 3,000 a second).
    let taken = stopped.wait_metrics(Duration::from_secs(30), |m| {
        m.get("supervisor_aggregate_events_total").is_some_and(|n| n >= 3000.0)
    });
    assert!(taken.is_some(), "{}", stopped.log());
    assert_eq!(stopped.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", stopped.log());
    let again = command().args(without(&named, &["max-rate"])).output().unwrap();
    let log = String::from_utf8_lossy(&again.stderr);
    assert_ne!(again.status.code(), Some(0), "{log}");
    assert!(log.contains("--rescan"), "{log}");
    let windows: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM totals", [], |r| r.get(0))
        .unwrap_or(0);
    assert_eq!(windows, 0, "nothing half-counted is written");
    let rescan = command().args(without(&named, &["max-rate"])).arg("--rescan").output().unwrap();
    assert_eq!(rescan.status.code(), Some(0), "{}", String::from_utf8_lossy(&rescan.stderr));
}
