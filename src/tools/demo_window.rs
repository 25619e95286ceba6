//! `supervisor demo window`: totals per customer per 10 s tumbling window, on an embedded Kafka, every window checked.
//!
//! A broker process runs librdkafka's mock cluster and a generator writing orders with event times: a tenth of them
//! up to 1.5 s out of order (within the 2 s lateness), one in 200 half a minute late. The parent runs the real
//! supervisor with `--aggregate` into a SQLite table keyed by (key, window_start). Once every window that event time
//! has closed is written, or on Ctrl-C, the pipeline drains, and each window in the table is compared with a batch
//! computation over the orders generated, and the late orders with the dead letters.
//!
//! The orders are the same every run (a fixed seed), and the table and the aggregation's state stay in the demo's
//! directory. A second run generates them again into a fresh embedded Kafka: the orders its first run took into the
//! state are recognised by their positions and skipped, so it goes on where the first stopped.

use super::demo::Check;
use crate::config::aggregate::{self, Emit, Window};
use crate::config::{default_state_dir, Aggregation, Cli, Config, Tables, WindowDemoArgs};
use crate::error::{Error, Exit, Result};
use crate::sql::url::TableUrl;
use crate::supervisor::Signals;
use ipc_channel::ipc::{IpcReceiver, IpcSender};
use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 4;
const CUSTOMERS: u64 = 50;
/// 2026-12-03T10:00:00Z: the first order's time, in milliseconds.
const BASE_MS: i64 = 1_796_292_000_000;
/// Event time between one order and the next.
const STEP_MS: i64 = 10;
const WINDOW_MS: i64 = 10_000;
const LATENESS_MS: i64 = 2_000;
const AGGREGATE: &str = "{orders: count, total: sum(.amount), biggest: max(.amount)}";

/// One order: its customer, amount (in quarters, so that every sum is exact in any order) and time in ms.
#[derive(Debug, Clone, Copy)]
struct Order {
    customer: u64,
    quarters: u64,
    ms: i64,
}

/// The `i`th order, the same in every run.
fn order(i: u64) -> Order {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66;
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    let mut ms = BASE_MS + i as i64 * STEP_MS;
    if x % 10 == 0 {
        ms -= (x / 10 % 1500) as i64;
    }
    if x % 200 == 7 {
        ms -= 30_000;
    }
    Order { customer: (x >> 8) % CUSTOMERS, quarters: (x >> 20) % 4000 + 1, ms }
}

impl Order {
    fn json(&self) -> String {
        // A time as RFC 3339, which --event-time reads as it is.
        let at = crate::sql::time::rfc3339_millis(self.ms);
        format!(r#"{{"customer":"c{}","amount":{},"at":"{at}"}}"#, self.customer, self.quarters as f64 / 4.0)
    }
}

pub fn run(cli: &Cli, args: &WindowDemoArgs, signals: Signals) -> Exit {
    match run_inner(cli, args, signals) {
        Ok(exit) => exit,
        Err(e) => {
            log::error!("demo window: {e}");
            e.exit()
        }
    }
}

fn run_inner(cli: &Cli, args: &WindowDemoArgs, signals: Signals) -> Result<Exit> {
    let dir =
        args.dir.clone().unwrap_or_else(|| cli.state_dir.clone().unwrap_or_else(default_state_dir).join("demo-window"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::DbQuery { doing: format!("creating {}", dir.display()), source: e.into() })?;
    let db = dir.join("windows.sqlite");
    // The sink writes into a database that exists (the table it creates). SQLite starts no thread.
    crate::sql::open_sqlite(&db.display().to_string(), true)
        .map_err(|source| Error::DbQuery { doing: format!("demo window: creating {}", db.display()), source })?;
    let orders = args.orders;
    let broker = |(boot_tx, check_rx, verdict_tx)| broker_main(orders, args.rate, &db, boot_tx, check_rx, verdict_tx);
    let configure = |cfg: &mut Config| {
        let sink =
            TableUrl::parse(&format!("sqlite:{}?table=totals&key=key,window_start", db.display())).map_err(|e| {
                Error::DbSchema { message: format!("demo window: {} cannot be named in a URL: {e}", db.display()) }
            })?;
        cfg.tables = Tables { source: None, sink: Some(sink), checkpoint: None, state_dir: None, sinks: vec![] };
        cfg.create_table = true;
        cfg.state_dir = Some(dir.join("state"));
        let aggregates = aggregate::aggregates(AGGREGATE).map_err(|message| Error::DbSchema { message })?;
        cfg.aggregation = Some(Aggregation {
            aggregates,
            group_by: Some(".customer".into()),
            window: Window::Tumbling { size: WINDOW_MS },
            event_time: Some(".at".into()),
            lateness: LATENESS_MS,
            emit: Emit::Final,
            idle_timeout: 30_000,
        });
        cfg.aggregate = Some(AGGREGATE.into());
        if cli.queue_capacity.is_none() {
            cfg.queue_capacity = crate::config::QUEUE_CAPACITY_AGGREGATING;
        }
        log::info!(
            "demo window: {orders} orders of {CUSTOMERS} customers (some out of order, some late) on an embedded Kafka \
             → {} workers ({}) → --aggregate '{AGGREGATE}' --group-by .customer --window tumbling=10s --event-time \
             .at --lateness 2s → table totals in {}; Ctrl-C stops it, running it again goes on",
            cfg.hashers,
            cfg.transform.label(),
            db.display()
        );
        Ok(())
    };
    super::demo::checked_on_embedded_kafka(cli, signals, ("demo-window", TOPIC), broker, configure)
}

/// Where each order landed: (partition, offset) by order number.
type Landed = Mutex<Vec<Option<(i32, i64)>>>;

struct Delivered(Arc<Landed>);

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, r: &DeliveryResult<'_>, i: Box<u64>) {
        if let Ok(m) = r {
            let mut landed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = landed.get_mut(*i as usize) {
                *slot = Some((m.partition(), m.offset()));
            }
        }
    }
}

fn broker_main(
    n: u64,
    rate: u64,
    db: &Path,
    boot_tx: IpcSender<String>,
    check_rx: IpcReceiver<Check>,
    verdict_tx: IpcSender<bool>,
) -> Result<()> {
    let cluster = MockCluster::new(1).map_err(Error::MockCluster)?;
    cluster.create_topic(TOPIC, PARTITIONS, 1).map_err(Error::MockCluster)?;
    let brokers = cluster.bootstrap_servers();
    boot_tx.send(brokers.clone()).map_err(Error::Send)?;
    let landed: Arc<Landed> = Arc::new(Mutex::new(vec![None; n as usize]));
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        // Idempotent, so that a retry never reorders: every run puts each order at the same offset.
        let producer: ThreadedProducer<Delivered> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create_with_context(Delivered(landed.clone()))
            .map_err(Error::CreateClient)?;
        let (written, stop) = (written.clone(), stop.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            for i in 0..n {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if rate > 0 {
                    let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let o = order(i);
                let (key, body) = (format!("c{}", o.customer), o.json());
                let mut rec =
                    BaseRecord::with_opaque_to(TOPIC, Box::new(i)).key(key.as_bytes()).payload(body.as_bytes());
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            rec = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                written.store(i + 1, Ordering::Relaxed);
            }
            let _ = producer.flush(Duration::from_secs(30));
        })
    };
    let mut last = Instant::now();
    let mut signalled = false;
    let exit = loop {
        match check_rx.try_recv_timeout(Duration::from_millis(200)) {
            Ok(Check { exit }) => break exit,
            Err(ipc_channel::TryRecvError::Empty) => {}
            Err(_) => return Ok(()),
        }
        if last.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last = Instant::now();
        let want = reference(&landed, None);
        let (windows, late) = written_so_far(db);
        log::info!(
            "generated {}  windows written {windows} of {} closed so far  late orders {late}",
            written.load(Ordering::Relaxed),
            want.closed().count()
        );
        // Every order out and every window that event time closed written: stop, the same way Ctrl-C does.
        let all_out = written.load(Ordering::Relaxed) == n && want.delivered == n as usize;
        if !signalled && all_out && windows >= want.closed().count() as u64 {
            let _ = nix::sys::signal::kill(nix::unistd::getppid(), nix::sys::signal::Signal::SIGINT);
            signalled = true;
        }
    };
    stop.store(true, Ordering::SeqCst);
    let _ = generator.join();
    // What the pipeline took, by its commits: the check covers those orders, and every window they closed.
    let committed = super::demo::group_committed(&brokers, "demo-window", TOPIC, PARTITIONS)?;
    let want = reference(&landed, Some(&committed));
    let (ok, report) = verdict(db, &want);
    println!();
    println!("  orders generated          {} ({} taken by the pipeline)", landed_count(&landed), want.delivered);
    for line in report {
        println!("  {line}");
    }
    let all = want.delivered as u64 == n;
    let said = match (ok, exit) {
        (true, 0) if all => "OK: every window exact".to_string(),
        (true, 0) => format!(
            "stopped after {} of {n} orders, every window they closed exact; run the same command again to go on",
            want.delivered
        ),
        (true, code) => format!("FAILED: the pipeline exited {code} (the windows written are exact)"),
        (false, 0) => "FAILED".to_string(),
        (false, code) => format!("FAILED: the pipeline exited {code}, and the check failed"),
    };
    println!("  verdict                   {said}");
    println!();
    let _ = verdict_tx.send(ok && exit == 0);
    drop(cluster);
    Ok(())
}

/// The batch computation: per (customer, window start) the count, sum (in quarters) and largest amount, from each
/// partition read in its order as the pipeline reads it, an order being late once its partition's latest order time
/// has passed its window's end plus the lateness.
struct Reference {
    windows: BTreeMap<(String, i64), (u64, u64, u64)>,
    /// Where the late orders are: (partition, offset).
    late: Vec<(i32, i64)>,
    /// Orders to generate in all.
    orders: u64,
    /// The smallest of the partitions' latest order times: windows ending (plus lateness) by then are closed.
    watermark: i64,
    delivered: usize,
}

impl Reference {
    fn closed(&self) -> impl Iterator<Item = (&(String, i64), &(u64, u64, u64))> {
        self.windows.iter().filter(|((_, start), _)| start + WINDOW_MS + LATENESS_MS <= self.watermark)
    }
}

/// The reference over the orders that landed, or only those below `committed` (per partition).
fn reference(landed: &Landed, committed: Option<&[i64]>) -> Reference {
    let landed = landed.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut lanes: BTreeMap<i32, Vec<(i64, u64)>> = BTreeMap::new();
    let mut taken = 0;
    for (i, at) in landed.iter().enumerate() {
        if let Some((p, off)) = at {
            if committed.is_some_and(|c| c.get(*p as usize).is_none_or(|end| off >= end)) {
                continue;
            }
            lanes.entry(*p).or_default().push((*off, i as u64));
            taken += 1;
        }
    }
    let (mut windows, mut late, mut marks) = (BTreeMap::new(), Vec::new(), Vec::new());
    for (p, mut orders) in lanes.iter().map(|(p, o)| (*p, o.clone())) {
        orders.sort_unstable();
        let mut mark: Option<i64> = None;
        for (off, i) in orders {
            let o = order(i);
            let start = o.ms.div_euclid(WINDOW_MS) * WINDOW_MS;
            if mark.is_some_and(|m| start + WINDOW_MS + LATENESS_MS <= m) {
                late.push((p, off));
            } else {
                let w: &mut (u64, u64, u64) = windows.entry((format!("c{}", o.customer), start)).or_default();
                *w = (w.0 + 1, w.1 + o.quarters, w.2.max(o.quarters));
            }
            mark = Some(mark.map_or(o.ms, |m| m.max(o.ms)));
        }
        marks.push(mark.unwrap_or(i64::MIN));
    }
    let watermark =
        if lanes.len() == PARTITIONS as usize { marks.into_iter().min().unwrap_or(i64::MIN) } else { i64::MIN };
    Reference { windows, late, watermark, delivered: taken, orders: landed.len() as u64 }
}

fn landed_count(landed: &Landed) -> usize {
    landed.lock().unwrap_or_else(PoisonError::into_inner).iter().flatten().count()
}

/// Windows and late orders in the demo's tables now (0 while a table does not exist yet).
fn written_so_far(db: &Path) -> (u64, u64) {
    let Ok(c) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return (0, 0);
    };
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).map_or(0, |n| n.max(0) as u64);
    (
        count("SELECT count(*) FROM totals"),
        count("SELECT count(DISTINCT at) FROM totals_dead_letter WHERE reason = 'late'"),
    )
}

/// A window as the table has it: key, start, orders, total, biggest.
type Row = (String, String, f64, f64, f64);

/// Every closed window of the reference in the table, exactly; no window in the table the reference does not have;
/// and the late orders in the dead letters.
fn verdict(db: &Path, want: &Reference) -> (bool, Vec<String>) {
    let rows = (|| -> rusqlite::Result<Vec<Row>> {
        let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut q = c.prepare("SELECT key, window_start, orders, total, biggest FROM totals")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        rows.collect()
    })();
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return (false, vec![format!("cannot read the windows from {}: {e}", db.display())]),
    };
    let mut got = BTreeMap::new();
    for (key, start, n, total, biggest) in rows {
        let Some(start) = crate::sql::time::epoch_millis(&start) else { continue };
        got.insert((key, start), (n as u64, (total * 4.0).round() as u64, (biggest * 4.0).round() as u64));
    }
    let closed: Vec<_> = want.closed().collect();
    let wrong = closed.iter().filter(|(k, w)| got.get(*k) != Some(*w)).count();
    let strange = got.keys().filter(|k| !want.windows.contains_key(*k)).count();
    let (_, late) = written_so_far(db);
    let late_missing = late_missing(db, want);
    let report = vec![
        format!("windows closed            {} ({CUSTOMERS} customers × 10 s windows; the last stay open for newer orders)", closed.len()),
        format!(
            "windows in the table      {} ({wrong} of the closed ones wrong or missing, {strange} {})",
            got.len(),
            if want.delivered as u64 == want.orders { "not in the orders" } else { "from orders not taken yet" }
        ),
        format!("late orders               {late} (dead letters, reason \"late\"; {late_missing} of the {} the batch computation finds are missing)", want.late.len()),
    ];
    // Windows or late orders the orders generated this run do not explain can only come from an earlier run that got
    // further: judged only once every order was generated.
    let all = want.delivered as u64 == want.orders;
    let extra = all && (strange > 0 || late > want.late.len() as u64);
    (want.delivered > 0 && wrong == 0 && late_missing == 0 && !extra, report)
}

/// The late orders of the reference that are not in the dead letters.
fn late_missing(db: &Path, want: &Reference) -> usize {
    let Ok(c) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return want.late.len();
    };
    let Ok(mut q) = c.prepare("SELECT 1 FROM totals_dead_letter WHERE reason = 'late' AND at = ?1 LIMIT 1") else {
        return want.late.len();
    };
    want.late.iter().filter(|(p, o)| !q.exists([format!("{p}:{o}")]).unwrap_or(false)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_orders_are_the_same_every_run_and_some_are_late() {
        let first: Vec<i64> = (0..1000).map(|i| order(i).ms).collect();
        assert_eq!(first, (0..1000).map(|i| order(i).ms).collect::<Vec<_>>());
        let late = (0..10_000).filter(|&i| order(i).ms < BASE_MS + i as i64 * STEP_MS - 20_000).count();
        assert!((20..100).contains(&late), "{late}");
        assert!(order(3).json().starts_with(r#"{"customer":"c"#));
    }
}
