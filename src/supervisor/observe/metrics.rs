//! `--metrics-addr`: the pipeline's counts in Prometheus' text format, on `/metrics`.
//!
//! Only the supervisor listens; the children's counts reach it in their heartbeats. The supervisor never starts a
//! thread (its forks must stay safe), so the server is non-blocking and served from its loop, a little at a time:
//! a slow or idle client holds nothing up, and is dropped after `CLIENT_TIMEOUT`.

use crate::error::{Error, Result};
use crate::position::{Lane, Position};
use crate::stage::Kind;
use crate::telemetry::counters::StageStats;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long a client has to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; more wait in the kernel's accept queue.
const MAX_CLIENTS: usize = 16;
/// A request line and headers larger than this are refused.
const MAX_REQUEST: usize = 16 * 1024;

/// The listening socket and the clients being served.
pub struct Server {
    listener: TcpListener,
    clients: Vec<Client>,
}

struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    since: Instant,
}

impl Server {
    /// Listens on `addr` (`HOST:PORT`; port 0 picks a free one).
    pub fn bind(addr: &str) -> Result<Server> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| Error::MetricsAddress { addr: addr.to_string(), source })?
            .collect();
        let bind = |source| Error::MetricsBind { addr: addr.to_string(), source };
        let listener = TcpListener::bind(&addrs[..]).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(Server { listener, clients: Vec::new() })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts new clients and moves every client on as far as it goes without blocking. `render` is called only
    /// when a scrape is to be answered, at most once per call.
    pub fn serve(&mut self, render: impl FnOnce() -> String) {
        self.accept();
        let mut render = Some(render);
        let mut page: Option<String> = None;
        let now = Instant::now();
        self.clients.retain_mut(|c| {
            if now.duration_since(c.since) > CLIENT_TIMEOUT {
                return false;
            }
            if c.response.is_empty() {
                match c.read_request() {
                    Request::Pending => return true,
                    Request::Closed => return false,
                    Request::Complete => {
                        let metrics =
                            || page.get_or_insert_with(|| render.take().map_or_else(String::new, |r| r())).clone();
                        c.response = respond(&c.request, metrics);
                    }
                }
            }
            c.write_response()
        });
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        log::debug!("metrics: turning {peer} away: {} clients already", self.clients.len());
                        continue;
                    }
                    self.clients.push(Client {
                        stream,
                        request: Vec::new(),
                        response: Vec::new(),
                        written: 0,
                        since: Instant::now(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of file descriptors, say: the next round tries again.
                    log::warn!("metrics: cannot accept a connection: {e}");
                    return;
                }
            }
        }
    }
}

/// How far a client's request has come.
enum Request {
    Pending,
    Complete,
    Closed,
}

impl Client {
    fn read_request(&mut self) -> Request {
        let mut buf = [0u8; 2048];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Request::Closed,
                Ok(n) => {
                    self.request.extend_from_slice(&buf[..n]);
                    if self.request.windows(4).any(|w| w == b"\r\n\r\n") || self.request.len() > MAX_REQUEST {
                        return Request::Complete;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Request::Pending,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Request::Closed,
            }
        }
    }

    /// Writes what the socket takes; false once the client is done with (all written, or gone).
    fn write_response(&mut self) -> bool {
        while self.written < self.response.len() {
            match self.stream.write(&self.response[self.written..]) {
                Ok(0) => return false,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        false
    }
}

/// The whole HTTP/1.1 response to one request; every response closes the connection.
fn respond(request: &[u8], metrics: impl FnOnce() -> String) -> Vec<u8> {
    let line = request.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = if request.len() > MAX_REQUEST {
        ("431 Request Header Fields Too Large", "text/plain; charset=utf-8", "request too large\n".to_string())
    } else if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET and HEAD\n".to_string())
    } else if path == "/metrics" {
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics())
    } else if path == "/" {
        ("200 OK", "text/plain; charset=utf-8", "supervisor: metrics are at /metrics\n".to_string())
    } else {
        ("404 Not Found", "text/plain; charset=utf-8", "not found: metrics are at /metrics\n".to_string())
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" }
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Everything a scrape shows, as the supervisor sees it at that moment.
pub struct Snapshot<'a> {
    pub source_topic: &'a str,
    /// Each kind's counters, summed over its processes and over every generation since the start, in [`Kind::ALL`]
    /// order.
    pub stages: &'a [StageStats; 4],
    /// Consumed and not yet acknowledged, from the newest source; bounded by `capacity`.
    pub in_flight: u64,
    pub capacity: usize,
    /// Handed to librdkafka and not yet acknowledged, from the newest sink.
    pub sink_queue: u64,
    /// Each sink by name, with its counters.
    pub sinks: &'a [(&'a str, &'a StageStats)],
    /// Per partition the source owns, its lag, when known.
    pub lag: &'a [(Lane, i64)],
    /// Per partition the source owns, the last committed offset.
    pub committed: &'a [Position],
    /// The partitions the live sources own.
    pub assigned: usize,
    /// Pipeline restarts, by the kind of child whose failure caused them.
    pub restarts: &'a [(&'a str, u64)],
    /// Live child processes by kind, in [`Kind::ALL`] order.
    pub children: &'a [usize; 4],
    /// The workers' transform: md5, jq or exec.
    pub transform: &'a str,
    pub ready: bool,
    pub drains: u64,
    pub last_drain: Option<Duration>,
    /// A table scan's progress, when the source is a table.
    pub scan: Option<crate::telemetry::counters::Scan>,
    /// A followed table's replication slot.
    pub slot: Option<crate::telemetry::counters::Slot>,
    /// An aggregation's state (the newest sink's gauges, the counters over every sink), when one runs.
    pub aggregation: Option<&'a StageStats>,
    pub uptime: Duration,
}

/// The Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let by_stage = |value: &dyn Fn(&StageStats) -> u64, which: &[Kind]| -> Vec<(String, f64)> {
        Kind::ALL
            .iter()
            .zip(s.stages)
            .filter(|(kind, _)| which.contains(kind))
            .map(|(kind, stats)| (format!("{{stage=\"{}\"}}", kind.label()), value(stats) as f64))
            .collect()
    };
    let [source, _, _, sink] = s.stages;
    family(
        "supervisor_events_in_total",
        "counter",
        "Events a stage took in: from the source (source, reader), or from its input channel.",
        &by_stage(&|st| st.consumed + st.received, &Kind::ALL),
    );
    family(
        "supervisor_events_out_total",
        "counter",
        "Events a stage passed on: to its output channel, or acknowledged by the destination (sink).",
        &by_stage(&|st| st.sent + st.delivered + st.dead_lettered, &Kind::ALL),
    );
    family(
        "supervisor_batches_in_total",
        "counter",
        "IPC batches a stage read from its input channels.",
        &by_stage(&|st| st.batches_in, &[Kind::Worker, Kind::Sink]),
    );
    family(
        "supervisor_batches_out_total",
        "counter",
        "IPC batches a stage wrote to its output channels.",
        &by_stage(&|st| st.batches_out, &[Kind::Source, Kind::Worker]),
    );
    family(
        "supervisor_dead_letters_total",
        "counter",
        "Dead letters: events a worker found unfit, and events the sink wrote to the dead-letter destination.",
        &by_stage(&|st| st.rejected + st.dead_lettered, &[Kind::Worker, Kind::Sink]),
    );
    family(
        "supervisor_sink_events_total",
        "counter",
        "Events the sink's destination acknowledged, by outcome: written where they belong, or dead-lettered.",
        &[
            ("{outcome=\"written\"}".to_string(), sink.delivered as f64),
            ("{outcome=\"dead_lettered\"}".to_string(), sink.dead_lettered as f64),
        ],
    );
    let mut each = Vec::new();
    for (name, st) in s.sinks {
        let name = escape(name);
        each.push((format!("{{sink=\"{name}\",outcome=\"written\"}}"), st.delivered as f64));
        each.push((format!("{{sink=\"{name}\",outcome=\"dead_lettered\"}}"), st.dead_lettered as f64));
    }
    family(
        "supervisor_sink_outcomes_total",
        "counter",
        "Events each sink's destination acknowledged, by sink and outcome (supervisor_sink_events_total summed).",
        &each,
    );
    let [_, _, workers, _] = s.stages;
    family(
        "supervisor_lookup_calls_total",
        "counter",
        "lookup() calls in the workers, by whether the row was at hand (a cached row, a topic's) or fetched.",
        &[
            ("{found=\"at_hand\"}".to_string(), workers.lookup_hits as f64),
            ("{found=\"fetched\"}".to_string(), workers.lookup_misses as f64),
        ],
    );
    family(
        "supervisor_route_dropped_total",
        "counter",
        "Outputs --route sent to no sink (null or []).",
        &[(String::new(), workers.dropped as f64)],
    );
    let per_transform = |value: u64| [(format!("{{transform=\"{}\"}}", s.transform), value as f64)];
    family(
        "supervisor_transform_outputs_total",
        "counter",
        "Output events the workers' transform made (an input may become none, one or many).",
        &per_transform(workers.outputs),
    );
    family(
        "supervisor_transform_filtered_total",
        "counter",
        "Input events the transform filtered out: no output; their offsets are committed all the same.",
        &per_transform(workers.filtered),
    );
    family(
        "supervisor_transform_fanned_out_total",
        "counter",
        "Input events the transform turned into more than one output.",
        &per_transform(workers.fanned_out),
    );
    family(
        "supervisor_transform_failed_total",
        "counter",
        "Input events the transform refused or failed on (sent to the dead-letter topic).",
        &per_transform(workers.rejected),
    );
    family(
        "supervisor_transform_command_restarts_total",
        "counter",
        "Restarts of the workers' --exec commands after one ended or hung.",
        &per_transform(workers.command_restarts),
    );
    family(
        "supervisor_transform_seconds_total",
        "counter",
        "Time the workers spent in the transform.",
        &[(format!("{{transform=\"{}\"}}", s.transform), workers.transform_us as f64 / 1e6)],
    );
    family(
        "supervisor_acked_total",
        "counter",
        "Source events whose output the destination acknowledged, as the source counted them for its commits.",
        &[(String::new(), source.acked as f64)],
    );
    family(
        "supervisor_produce_errors_total",
        "counter",
        "Deliveries that failed, whether then retried or dead-lettered.",
        &[(String::new(), sink.produce_errors as f64)],
    );
    family(
        "supervisor_produce_retries_total",
        "counter",
        "Events sent again after a delivery failed.",
        &[(String::new(), sink.retried as f64)],
    );
    family(
        "supervisor_in_flight_events",
        "gauge",
        "Events consumed and not yet acknowledged: every IPC queue and librdkafka's, together.",
        &[(String::new(), s.in_flight as f64)],
    );
    family(
        "supervisor_queue_capacity_events",
        "gauge",
        "The bound on in-flight events (--queue-capacity); at the bound the source waits.",
        &[(String::new(), s.capacity as f64)],
    );
    family(
        "supervisor_queue_depth_events",
        "gauge",
        "In-flight events by where they are: the IPC channels and stages, or librdkafka's produce queue.",
        &[
            ("{queue=\"ipc\"}".to_string(), s.in_flight.saturating_sub(s.sink_queue) as f64),
            ("{queue=\"sink\"}".to_string(), s.sink_queue.min(s.in_flight) as f64),
        ],
    );
    // A lane is a partition of a topic: a listed topic by its name, one a pattern found by its number.
    let listed = match crate::config::topics::SourceTopics::parse(s.source_topic) {
        crate::config::topics::SourceTopics::Listed(names) => names,
        crate::config::topics::SourceTopics::Pattern(_) => Vec::new(),
    };
    let topic_of = |lane: Lane| {
        let i = (lane >> crate::position::PARTITION_BITS) as usize;
        escape(&listed.get(i).map_or_else(|| format!("{}#{i}", s.source_topic), |t| t.to_string()))
    };
    let per_partition = |values: &mut dyn Iterator<Item = (Lane, i64)>| -> Vec<(String, f64)> {
        values
            .map(|(lane, v)| {
                let (topic, p) = (topic_of(lane), crate::position::partition_of(lane));
                (format!("{{topic=\"{topic}\",partition=\"{p}\"}}"), v as f64)
            })
            .collect()
    };
    family(
        "supervisor_consumer_lag_events",
        "gauge",
        "Events past the group's committed offset, per source partition (librdkafka statistics, every second).",
        &per_partition(&mut s.lag.iter().copied()),
    );
    family(
        "supervisor_committed_offset",
        "gauge",
        "The last committed offset per source partition this instance owns: everything before it is delivered.",
        &per_partition(&mut s.committed.iter().map(|p| (p.lane, p.seq))),
    );
    family(
        "supervisor_assigned_partitions",
        "gauge",
        "Source partitions this instance owns now.",
        &[(String::new(), s.assigned as f64)],
    );
    if let Some(slot) = &s.slot {
        family(
            "supervisor_slot_lag_bytes",
            "gauge",
            "WAL the followed table's replication slot keeps on the server (-1 while unknown).",
            &[(String::new(), slot.lag_bytes as f64)],
        );
        family(
            "supervisor_slot_lag_seconds",
            "gauge",
            "How long the oldest change passed on from the replication slot has waited for its acknowledgement.",
            &[(String::new(), slot.lag_ms as f64 / 1000.0)],
        );
        family(
            "supervisor_slot_changes",
            "gauge",
            "Changes passed on from the replication slot by the current source process.",
            &[(String::new(), slot.changes as f64)],
        );
    }
    if let Some(scan) = &s.scan {
        family(
            "supervisor_scan_chunks",
            "gauge",
            "Chunks of the table scan: all of them, and those finished (every row read and acknowledged).",
            &[
                ("{state=\"total\"}".to_string(), scan.chunks as f64),
                ("{state=\"finished\"}".to_string(), scan.done as f64),
            ],
        );
        family(
            "supervisor_scan_rows",
            "gauge",
            "Rows of the table scan: acknowledged by the sink (across runs), and the table's size when it was planned.",
            &[
                ("{state=\"acknowledged\"}".to_string(), scan.rows as f64),
                ("{state=\"estimate\"}".to_string(), scan.estimate as f64),
            ],
        );
    }
    if let Some(a) = s.aggregation {
        let one = |v: f64| vec![(String::new(), v)];
        family(
            "supervisor_aggregate_events_total",
            "counter",
            "Events an aggregation took into its state.",
            &one(a.aggregated as f64),
        );
        family(
            "supervisor_aggregate_late_events_total",
            "counter",
            "Events that came after their window closed (past --lateness), sent to the dead letters as late.",
            &one(a.late as f64),
        );
        family(
            "supervisor_aggregate_open_windows",
            "gauge",
            "Windows open now, over every key.",
            &one(a.open_windows as f64),
        );
        family(
            "supervisor_aggregate_keys",
            "gauge",
            "Group keys holding an open window now.",
            &one(a.keys_held as f64),
        );
        family(
            "supervisor_aggregate_state_bytes",
            "gauge",
            "Bytes the aggregation's state takes on disk (its SQLite file and write-ahead log).",
            &one(a.state_bytes as f64),
        );
        let lag =
            (a.watermark_ms > 0).then(|| (super::status::wall_millis() - a.watermark_ms as i64).max(0) as f64 / 1000.0);
        family(
            "supervisor_aggregate_watermark_lag_seconds",
            "gauge",
            "How far the event-time watermark is behind the wall clock (absent before the first event).",
            &lag.map(one).unwrap_or_default(),
        );
    }
    let labelled = |pairs: &mut dyn Iterator<Item = (&str, u64)>, key: &str| -> Vec<(String, f64)> {
        pairs.map(|(v, n)| (format!("{{{key}=\"{}\"}}", escape(v)), n as f64)).collect()
    };
    family(
        "supervisor_restarts_total",
        "counter",
        "Pipeline restarts, by the role of the child whose failure caused them.",
        &labelled(&mut s.restarts.iter().copied(), "role"),
    );
    family(
        "supervisor_children",
        "gauge",
        "Live child processes, by role.",
        &labelled(&mut Kind::ALL.iter().zip(s.children).map(|(k, n)| (k.label(), *n as u64)), "role"),
    );
    family(
        "supervisor_ready",
        "gauge",
        "1 while every child is up and the source is reading (a Kafka source has joined its group).",
        &[(String::new(), if s.ready { 1.0 } else { 0.0 })],
    );
    family(
        "supervisor_drains_total",
        "counter",
        "Drains finished: after a failure, before a restart (the last one, on stop, ends the process).",
        &[(String::new(), s.drains as f64)],
    );
    family(
        "supervisor_last_drain_seconds",
        "gauge",
        "How long the last drain took, from its start until every child had exited.",
        &s.last_drain.map(|d| vec![(String::new(), d.as_secs_f64())]).unwrap_or_default(),
    );
    family(
        "supervisor_uptime_seconds",
        "gauge",
        "Seconds since the supervisor started.",
        &[(String::new(), s.uptime.as_secs_f64())],
    );
    out
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_text() -> String {
        let consumer = StageStats { consumed: 10, sent: 9, batches_out: 2, acked: 7, ..StageStats::default() };
        let hashers =
            StageStats { received: 9, sent: 8, batches_in: 2, batches_out: 2, rejected: 1, ..Default::default() };
        let producer = StageStats {
            received: 8,
            delivered: 6,
            dead_lettered: 1,
            batches_in: 2,
            produce_errors: 3,
            retried: 2,
            ..StageStats::default()
        };
        render(&Snapshot {
            source_topic: "src\"x",
            stages: &[consumer, StageStats::default(), hashers, producer.clone()],
            in_flight: 3,
            capacity: 100,
            sink_queue: 1,
            sinks: &[("dst", &producer)],
            lag: &[(0, 2)],
            committed: &[Position::new(0, 4)],
            assigned: 2,
            restarts: &[("source", 0), ("worker", 2)],
            children: &[1, 0, 4, 1],
            transform: "md5",
            ready: true,
            drains: 2,
            last_drain: Some(Duration::from_millis(250)),
            scan: None,
            slot: None,
            aggregation: None,
            uptime: Duration::from_secs(5),
        })
    }

    #[test]
    fn every_sample_belongs_to_a_declared_family() {
        let text = snapshot_text();
        let mut declared: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "counters end in _total: {line}");
                declared.push(name);
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last(), Some(&name), "sample after its TYPE line: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn the_counts_land_where_they_belong() {
        let text = snapshot_text();
        for expected in [
            "supervisor_events_in_total{stage=\"source\"} 10",
            "supervisor_events_out_total{stage=\"worker\"} 8",
            "supervisor_events_out_total{stage=\"sink\"} 7",
            "supervisor_dead_letters_total{stage=\"worker\"} 1",
            "supervisor_transform_failed_total{transform=\"md5\"} 1",
            "supervisor_produce_errors_total 3",
            "supervisor_produce_retries_total 2",
            "supervisor_queue_depth_events{queue=\"ipc\"} 2",
            "supervisor_consumer_lag_events{topic=\"src\\\"x\",partition=\"0\"} 2",
            "supervisor_committed_offset{topic=\"src\\\"x\",partition=\"0\"} 4",
            "supervisor_restarts_total{role=\"worker\"} 2",
            "supervisor_children{role=\"worker\"} 4",
            "supervisor_assigned_partitions 2",
            "supervisor_last_drain_seconds 0.25",
        ] {
            assert!(text.lines().any(|l| l == expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("partition=\"1\""), "unknown lag and offsets are left out");
        assert!(!text.contains("supervisor_batches_in_total{stage=\"source\"}"), "the source reads no batches");
    }

    fn get(addr: SocketAddr, request: &str, server: &mut Server) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        stream.set_nonblocking(true).unwrap();
        let mut answer = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            server.serve(|| "up 1\n".to_string());
            let mut buf = [0u8; 1024];
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "no answer to {request:?}");
        }
        String::from_utf8(answer).unwrap()
    }

    #[test]
    fn serves_metrics_over_http_without_blocking() {
        let mut server = Server::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        // An idle client that never sends its request holds nothing up.
        let _idle = TcpStream::connect(addr).unwrap();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &mut server);
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4") && ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        let head = get(addr, "HEAD /metrics HTTP/1.0\r\n\r\n", &mut server);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n", &mut server).starts_with("HTTP/1.1 404"));
        let post = get(addr, "POST /metrics HTTP/1.1\r\n\r\n", &mut server);
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"), "{post}");
    }

    #[test]
    fn a_bad_address_is_a_configuration_error() {
        for addr in ["no-port", "127.0.0.1:99999"] {
            let e = Server::bind(addr).err().unwrap();
            assert_eq!(e.exit(), crate::Exit::Config, "{addr}: {e}");
            assert!(e.to_string().contains(addr), "{e}");
        }
        let taken = Server::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = Server::bind(&addr).err().unwrap();
        assert!(e.to_string().contains("in use"), "{e}");
    }
}
