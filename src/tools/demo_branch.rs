//! `supervisor demo branch`: one stream, enriched and branched. Orders on an embedded Kafka are joined with a SQLite
//! customers table (`--lookup`), every order goes into a SQLite table and the large ones also into an alerts topic
//! (two `--sink`, `--route`). Once everything is through, or on Ctrl-C, the pipeline drains and both outputs are
//! checked against the orders: every order taken is in the table once with its customer's name and tier, and the
//! alerts topic holds exactly the large ones.
//!
//! Each run starts afresh: a new embedded Kafka, and the demo's database made again.

use super::demo::Check;
use crate::config::lookups::{LookupDef, LookupTarget};
use crate::config::sinks::{SinkDef, SinkTarget};
use crate::config::{default_state_dir, BranchDemoArgs, Cli, Config, JqSpec, TransformSpec};
use crate::error::{Error, Exit, Result};
use crate::sql::url::TableUrl;
use crate::supervisor::Signals;
use ipc_channel::ipc::{IpcReceiver, IpcSender};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const TOPIC: &str = "orders";
const ALERTS: &str = "alerts";
const PARTITIONS: i32 = 4;
const CUSTOMERS: u64 = 20;
/// An order this large or larger is also an alert.
const ALERT_FROM: u64 = 900;
const FILTER: &str = r#"(lookup("customers"; .customer) // {}) as $c | .name = $c.name | .tier = $c.tier"#;
const ROUTE: &str = r#"if .amount >= 900 then ["orders", "alerts"] else "orders" end"#;

/// The `i`th order: its customer (one in 50 of a customer the table does not have) and amount, the same every run.
fn order(i: u64) -> (u64, u64) {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    let customer = if x % 50 == 0 { 999 } else { x % CUSTOMERS + 1 };
    (customer, (x >> 8) % 1000)
}

/// A customer's name and tier, as the table holds them.
fn customer(c: u64) -> Option<(String, &'static str)> {
    (1..=CUSTOMERS).contains(&c).then(|| (format!("customer-{c}"), if c % 4 == 0 { "gold" } else { "standard" }))
}

pub fn run(cli: &Cli, args: &BranchDemoArgs, signals: Signals) -> Exit {
    match run_inner(cli, args, signals) {
        Ok(exit) => exit,
        Err(e) => {
            log::error!("demo branch: {e}");
            e.exit()
        }
    }
}

fn db_error(doing: String) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::DbQuery { doing, source: e.into() }
}

fn run_inner(cli: &Cli, args: &BranchDemoArgs, signals: Signals) -> Result<Exit> {
    let dir =
        args.dir.clone().unwrap_or_else(|| cli.state_dir.clone().unwrap_or_else(default_state_dir).join("demo-branch"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::DbQuery { doing: format!("creating {}", dir.display()), source: e.into() })?;
    let db = dir.join("branch.sqlite");
    // Afresh every run. SQLite starts no thread, and the connection is closed before the fork.
    for stale in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{stale}", db.display()));
    }
    {
        let c = rusqlite::Connection::open(&db).map_err(db_error(format!("creating {}", db.display())))?;
        c.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL)")
            .map_err(db_error("creating the customers table".into()))?;
        for c_id in 1..=CUSTOMERS {
            if let Some((name, tier)) = customer(c_id) {
                c.execute("INSERT INTO customers VALUES (?1, ?2, ?3)", (c_id as i64, name, tier))
                    .map_err(db_error("filling the customers table".into()))?;
            }
        }
    }
    let n = args.orders;
    let broker = |(boot_tx, check_rx, verdict_tx)| broker_main(n, &db, boot_tx, check_rx, verdict_tx);
    let configure = |cfg: &mut Config| {
        let url = |table: &str, key: &str| {
            TableUrl::parse(&format!("sqlite:{}?table={table}&key={key}", db.display())).map_err(|e| Error::DbSchema {
                message: format!("demo branch: {} cannot be named in a URL: {e}", db.display()),
            })
        };
        let orders = url("orders", "id")?;
        cfg.tables.sink = Some(orders.clone());
        cfg.tables.sinks = vec![
            SinkDef { name: Some("orders".into()), target: SinkTarget::Table(orders) },
            SinkDef {
                name: Some("alerts".into()),
                target: SinkTarget::Topic { topic: ALERTS.into(), dead_letters: format!("{ALERTS}.dlq") },
            },
        ];
        cfg.route = Some(ROUTE.into());
        cfg.create_table = true;
        let customers = url("customers", "id")?;
        cfg.lookups = vec![LookupDef { name: "customers".into(), target: LookupTarget::Table(customers) }];
        cfg.settings.transform =
            TransformSpec::Jq(JqSpec { filter: FILTER.into(), file: None, hmac_key: None, hmac_key_file: None });
        log::info!(
            "demo branch: {n} orders on an embedded Kafka → {} workers (--jq '{FILTER}' --lookup customers=<the \
             customers table>) → --sink orders=<table orders> --sink alerts=kafka:alerts --route '{ROUTE}'; database {}",
            cfg.hashers,
            db.display()
        );
        Ok(())
    };
    super::demo::checked_on_embedded_kafka(cli, signals, ("demo-branch", TOPIC), broker, configure)
}

/// The orders written, by (partition, offset): what the checks read back against.
type Landed = BTreeMap<(i32, i64), u64>;

fn broker_main(
    n: u64,
    db: &Path,
    boot_tx: IpcSender<String>,
    check_rx: IpcReceiver<Check>,
    verdict_tx: IpcSender<bool>,
) -> Result<()> {
    let cluster = MockCluster::new(1).map_err(Error::MockCluster)?;
    for topic in [TOPIC, ALERTS, "alerts.dlq"] {
        cluster.create_topic(topic, PARTITIONS, 1).map_err(Error::MockCluster)?;
    }
    let brokers = cluster.bootstrap_servers();
    boot_tx.send(brokers.clone()).map_err(Error::Send)?;
    let landed = generate(&brokers, n)?;
    let big = |i: &u64| order(*i).1 >= ALERT_FROM;
    let want_alerts: BTreeSet<u64> = landed.values().copied().filter(big).collect();
    let mut signalled = false;
    let mut last = Instant::now();
    let exit = loop {
        match check_rx.try_recv_timeout(Duration::from_millis(200)) {
            Ok(Check { exit }) => break exit,
            Err(ipc_channel::TryRecvError::Empty) => {}
            Err(_) => return Ok(()),
        }
        if signalled || last.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last = Instant::now();
        let rows = table_rows(db).map_or(0, |r| r.len());
        log::info!("orders in the table {rows} of {n}");
        // Everything in the table: stop, the same way Ctrl-C does; the drain delivers the alerts still in flight.
        if rows as u64 == n {
            let _ = nix::sys::signal::kill(nix::unistd::getppid(), nix::sys::signal::Signal::SIGINT);
            signalled = true;
        }
    };
    // What the pipeline took, by its commits: the check covers those orders.
    let committed = super::demo::group_committed(&brokers, "demo-branch", TOPIC, PARTITIONS)?;
    let taken: BTreeSet<u64> = landed
        .iter()
        .filter(|((p, o), _)| committed.get(*p as usize).is_some_and(|end| o < end))
        .map(|(_, i)| *i)
        .collect();
    let (ok, report) = verdict(db, &brokers, &taken, &want_alerts);
    println!();
    println!("  orders generated          {n} ({} taken by the pipeline)", taken.len());
    for line in report {
        println!("  {line}");
    }
    let said = match (ok, exit) {
        (true, 0) if taken.len() as u64 == n => "OK: every order in the table, enriched; every alert in the topic",
        (true, 0) => "OK for the orders taken before the stop (each run starts afresh)",
        (_, 0) => "FAILED",
        (_, _) => "FAILED: the pipeline did not stop cleanly",
    };
    println!("  verdict                   {said}");
    println!();
    let _ = verdict_tx.send(ok && exit == 0);
    drop(cluster);
    Ok(())
}

/// Writes the orders, each keyed by its customer; returns where each landed.
fn generate(brokers: &str, n: u64) -> Result<Landed> {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Landing::default())
        .map_err(Error::CreateClient)?;
    for i in 0..n {
        let (c, amount) = order(i);
        let (key, body) = (c.to_string(), format!(r#"{{"id":{i},"customer":{c},"amount":{amount}}}"#));
        let mut rec = BaseRecord::with_opaque_to(TOPIC, Box::new(i)).key(key.as_bytes()).payload(body.as_bytes());
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    let _ = producer.flush(Duration::from_secs(60));
    let landed = producer.context().0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    Ok(landed)
}

#[derive(Default)]
struct Landing(std::sync::Mutex<Landed>);

impl rdkafka::ClientContext for Landing {}

impl rdkafka::producer::ProducerContext for Landing {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, r: &rdkafka::producer::DeliveryResult<'_>, i: Box<u64>) {
        if let Ok(m) = r {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert((m.partition(), m.offset()), *i);
        }
    }
}

/// The table's rows: id → (customer, amount, name, tier).
type Rows = BTreeMap<u64, (u64, u64, Option<String>, Option<String>)>;

fn table_rows(db: &Path) -> rusqlite::Result<Rows> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut q = c.prepare("SELECT id, customer, amount, name, tier FROM orders")?;
    let rows = q.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64, r.get(3)?, r.get(4)?)))
    })?;
    rows.collect()
}

/// Every alert on the topic, by order id, with how often it is there.
fn alerts(brokers: &str) -> Result<BTreeMap<u64, usize>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "demo-branch-check")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(Error::CreateClient)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(ALERTS, p, Offset::Beginning).map_err(Error::Subscribe)?;
    }
    consumer.assign(&tpl).map_err(Error::Subscribe)?;
    let mut out = BTreeMap::new();
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(2) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            quiet = Instant::now();
            let id = m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v["id"].as_u64());
            if let Some(id) = id {
                *out.entry(id).or_default() += 1;
            }
        }
    }
    Ok(out)
}

/// Every order taken in the table, once, with its customer's name and tier (none for an unknown customer), and
/// nothing else there; the alerts topic holding exactly the large ones among them.
fn verdict(db: &Path, brokers: &str, taken: &BTreeSet<u64>, big: &BTreeSet<u64>) -> (bool, Vec<String>) {
    let rows = match table_rows(db) {
        Ok(rows) => rows,
        Err(e) => return (false, vec![format!("cannot read the orders from {}: {e}", db.display())]),
    };
    let wrong = taken
        .iter()
        .filter(|i| {
            let (c, amount) = order(**i);
            let want = customer(c);
            rows.get(i) != Some(&(c, amount, want.as_ref().map(|w| w.0.clone()), want.map(|w| w.1.to_string())))
        })
        .count();
    let strange = rows.keys().filter(|i| !taken.contains(i)).count();
    let alerts = match alerts(brokers) {
        Ok(a) => a,
        Err(e) => return (false, vec![format!("cannot read the alerts topic: {e}")]),
    };
    let want_alerts: BTreeSet<u64> = big.intersection(taken).copied().collect();
    let missing_alerts = want_alerts.iter().filter(|i| !alerts.contains_key(i)).count();
    let wrong_alerts = alerts.keys().filter(|i| !big.contains(i)).count();
    let repeated: usize = alerts.values().map(|n| n - 1).sum();
    let unknown = taken.iter().filter(|i| customer(order(**i).0).is_none()).count();
    let report = vec![
        format!(
            "orders in the table       {} ({wrong} of those taken wrong or missing, {strange} not taken; {unknown} of \
             an unknown customer, with no name)",
            rows.len()
        ),
        format!(
            "alerts in the topic       {} (amount >= {ALERT_FROM}; {missing_alerts} missing, {wrong_alerts} not large, \
             {repeated} repeated)",
            alerts.len()
        ),
    ];
    (!taken.is_empty() && wrong == 0 && strange == 0 && missing_alerts == 0 && wrong_alerts == 0, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_orders_are_the_same_every_run_some_large_and_some_of_no_customer() {
        let orders: Vec<(u64, u64)> = (0..5000).map(order).collect();
        assert_eq!(orders, (0..5000).map(order).collect::<Vec<_>>());
        let large = orders.iter().filter(|o| o.1 >= ALERT_FROM).count();
        let unknown = orders.iter().filter(|o| customer(o.0).is_none()).count();
        assert!((300..700).contains(&large), "{large}");
        assert!((50..200).contains(&unknown), "{unknown}");
    }
}
