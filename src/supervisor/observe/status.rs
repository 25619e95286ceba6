//! The periodic status (rates since the last one, in flight, lag, dead letters, restarts) and the summary on exit.

use crate::position::Position;
use crate::telemetry::count;
use crate::telemetry::counters::{Scan, StageStats};
use std::time::{Duration, Instant};

/// How often the status is logged when stderr is not a terminal (piped, or the journal).
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// When the next status is due, and the totals the rates are measured from.
#[derive(Debug)]
pub struct StatusLine {
    last: Instant,
    last_totals: StageStats,
    every: Duration,
    /// The transform's name when it is not the default md5, whose figures the line then shows.
    transform: Option<&'static str>,
    /// Whether an aggregation runs, whose state the line then shows.
    aggregating: bool,
}

impl StatusLine {
    pub fn new(every: Duration, transform: &'static str, aggregating: bool) -> StatusLine {
        let transform = (transform != "md5").then_some(transform);
        StatusLine { last: Instant::now(), last_totals: StageStats::default(), every, transform, aggregating }
    }

    /// The status line when one is due at `now`: from the totals of every stage, and the workers' own counts for the
    /// transform's figures (the totals add the sink's received events to the workers').
    pub fn due(&mut self, now: Instant, totals: StageStats, workers: &StageStats, restarts: u64) -> Option<String> {
        let since = now.duration_since(self.last);
        if since < self.every {
            return None;
        }
        let mut line = line(&self.last_totals, &totals, since, restarts);
        if let Some(name) = self.transform {
            line.push_str(&format!("; {}", transform(name, workers)));
        }
        if let Some(lookups) = lookups(workers) {
            line.push_str(&format!("; {lookups}"));
        }
        if self.aggregating {
            line.push_str(&format!("; {}", aggregation(&totals, wall_millis())));
        }
        self.last = now;
        self.last_totals = totals;
        Some(line)
    }
}

fn line(before: &StageStats, now: &StageStats, since: Duration, restarts: u64) -> String {
    let per_s = |now: u64, before: u64| now.saturating_sub(before) as f64 / since.as_secs_f64();
    let out = per_s(now.delivered + now.dead_lettered, before.delivered + before.dead_lettered);
    let behind = match (now.lanes.scan, now.lanes.slot) {
        (Some(scan), Some(slot)) if scan.done == scan.chunks => format!("snapshot taken, {}", slot_lag(&slot)),
        (Some(scan), Some(slot)) => format!("scan {}, {}", progress(&scan, out), slot_lag(&slot)),
        (Some(scan), None) => format!("scan {}", progress(&scan, out)),
        // librdkafka's first statistics come a second after the partitions are assigned.
        (None, _) => {
            format!("lag {}", now.lanes.total_lag().map_or_else(|| "not known yet".to_string(), |l| l.to_string()))
        }
    };
    format!(
        "in {:.0}/s, out {out:.0}/s, in flight {}, {behind}, written {}, dead letters {}, restarts {restarts}",
        per_s(now.consumed, before.consumed),
        now.in_flight,
        now.delivered,
        now.dead_lettered,
    )
}

/// A followed table's slot: `slot lag 1.2 MiB, 0.3s`: the WAL it keeps, and how long the oldest transaction passed
/// on has waited for its acknowledgement.
fn slot_lag(slot: &crate::telemetry::counters::Slot) -> String {
    let bytes = match slot.lag_bytes {
        b if b < 0 => "not known yet".to_string(),
        b => format!("{:.1} MiB", b as f64 / 1048576.0),
    };
    format!("slot lag {bytes}, {:.1}s", slot.lag_ms as f64 / 1000.0)
}

/// An aggregation's state: `windows 240 open (20 keys), state 1.2 MiB, watermark 3s behind, late 7`.
pub fn aggregation(t: &StageStats, now_ms: i64) -> String {
    let behind = match t.watermark_ms {
        0 => "no watermark yet".to_string(),
        w => format!("watermark {:.0}s behind", (now_ms - w as i64).max(0) as f64 / 1000.0),
    };
    format!(
        "windows {} open ({} keys), state {:.1} MiB, {behind}, late {}",
        t.open_windows,
        t.keys_held,
        t.state_bytes as f64 / (1 << 20) as f64,
        t.late
    )
}

/// The wall clock in milliseconds since the epoch, which event times are compared with.
pub fn wall_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The line cut to `width` columns, ending in `…` where cut: a line redrawn in place must not wrap, or each redraw
/// leaves a wrapped remainder behind on a narrow terminal.
pub fn fit(line: &str, width: usize) -> String {
    // The last column stays free: a character written there makes some terminals wrap at once.
    let room = width.saturating_sub(1);
    if line.chars().count() <= room {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(room.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The columns of the terminal on stderr, if it is one.
pub fn terminal_width() -> Option<usize> {
    let mut size = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct it is given, which lives for the call.
    let r = unsafe { nix::libc::ioctl(nix::libc::STDERR_FILENO, nix::libc::TIOCGWINSZ, &mut size) };
    (r == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// A table scan's progress: chunks and rows done, and when it should end at the rate rows go out now.
pub fn progress(scan: &Scan, rate: f64) -> String {
    let percent = if scan.estimate > 0 { (scan.rows as f64 * 100.0 / scan.estimate as f64).min(100.0) } else { 100.0 };
    let left = scan.estimate.saturating_sub(scan.rows);
    let eta = if scan.done == scan.chunks {
        "done".to_string()
    } else if rate >= 1.0 {
        format!("ETA {:.0?}", Duration::from_secs((left as f64 / rate).ceil() as u64))
    } else {
        "ETA unknown".to_string()
    };
    format!("{} of {} chunks, {} of ~{} rows ({percent:.0}%), {eta}", scan.done, scan.chunks, scan.rows, scan.estimate)
}

/// What a transform other than the default did, from the workers' counts: inputs to outputs, filtered out, fanned out,
/// failed, command restarts, inputs never finished and the time it took per input.
pub fn transform(name: &str, t: &StageStats) -> String {
    let inputs = t.transformed + t.rejected;
    let per_input = if inputs > 0 { t.transform_us as f64 / inputs as f64 } else { 0.0 };
    let restarts =
        if name == "exec" { format!(", {}", count(t.command_restarts, "command restart")) } else { String::new() };
    // Handed to a worker that stopped (gave up, was killed, was drained out) before the transform finished them.
    let unfinished = match t.received.saturating_sub(inputs) {
        0 => String::new(),
        n => format!(", {n} unfinished (not acknowledged: read again on the next start)"),
    };
    format!(
        "{name}: {inputs} in, {} out, {} filtered out, {} fanned out, {} failed{restarts}{unfinished}, {per_input:.1} \
         µs per event",
        t.outputs, t.filtered, t.fanned_out, t.rejected
    )
}

/// The workers' lookups, when there were any: `lookups 120000, 99.2% at hand` (the cache's hit rate).
pub fn lookups(workers: &StageStats) -> Option<String> {
    let calls = workers.lookup_hits + workers.lookup_misses;
    (calls > 0).then(|| format!("lookups {calls}, {:.1}% at hand", workers.lookup_hits as f64 * 100.0 / calls as f64))
}

/// One sink's part of the status line and of the summary, when there are several: `sink alerts: 120 written, 2
/// dead-lettered, 0 retried`.
pub fn sink(name: &str, s: &StageStats) -> String {
    format!("sink {name}: {} written, {} dead-lettered, {} retried", s.delivered, s.dead_lettered, s.retried)
}

/// The closing summary: what the whole run did, across restarts, and what it committed.
pub fn summary(totals: &StageStats, committed: &[Position], restarts: u64, took: Duration) -> String {
    let committed: Vec<String> = match totals.lanes.scan {
        // A table scan's positions are its chunks' checkpoints.
        Some(scan) => {
            let mut parts =
                vec![format!("{} of {} chunks finished, {} rows in all", scan.done, scan.chunks, scan.rows)];
            if let Some(slot) = totals.lanes.slot {
                let lsn = format!("{:X}/{:X}", slot.confirmed >> 32, slot.confirmed & 0xFFFF_FFFF);
                parts.push(format!("and the replication slot up to {lsn} ({} changes followed)", slot.changes));
            }
            parts
        }
        None => committed.iter().map(Position::to_string).collect(),
    };
    format!(
        "summary: {} consumed, {} delivered, {} dead-lettered, {} retried, {} in {took:.1?}; committed {}",
        totals.consumed,
        totals.delivered,
        totals.dead_lettered,
        totals.retried,
        count(restarts, "restart"),
        if committed.is_empty() { "nothing".to_string() } else { committed.join(" ") }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::counters::Lanes;

    #[test]
    fn the_status_gives_rates_since_the_last_one() {
        let mut s = StatusLine::new(Duration::from_secs(2), "md5", false);
        let t0 = s.last;
        let totals = |consumed, delivered| StageStats {
            consumed,
            delivered,
            dead_lettered: 2,
            in_flight: 7,
            lanes: Lanes { lag: vec![(0, 3), (1, 4)], ..Lanes::default() },
            ..StageStats::default()
        };
        let none = StageStats::default();
        assert_eq!(s.due(t0 + Duration::from_secs(1), totals(10, 10), &none, 0), None, "not due yet");
        let first = s.due(t0 + Duration::from_secs(2), totals(1000, 600), &none, 1).unwrap();
        assert_eq!(first, "in 500/s, out 301/s, in flight 7, lag 7, written 600, dead letters 2, restarts 1");
        let second = s.due(t0 + Duration::from_secs(4), totals(1200, 1000), &none, 1).unwrap();
        assert!(second.starts_with("in 100/s, out 200/s,"), "{second}");
        let unknown = line(&StageStats::default(), &StageStats::default(), Duration::from_secs(1), 0);
        assert!(unknown.contains("lag not known yet,"), "{unknown}");
    }

    #[test]
    fn a_transform_other_than_md5_shows_what_it_did() {
        let t = StageStats {
            transformed: 9,
            rejected: 1,
            outputs: 12,
            filtered: 2,
            fanned_out: 3,
            command_restarts: 1,
            transform_us: 45,
            ..StageStats::default()
        };
        assert_eq!(
            transform("exec", &t),
            "exec: 10 in, 12 out, 2 filtered out, 3 fanned out, 1 failed, 1 command restart, 4.5 µs per event"
        );
        assert!(transform("jq", &t).ends_with("1 failed, 4.5 µs per event"));
        let mut s = StatusLine::new(Duration::from_secs(1), "jq", false);
        // The sink's received events are not the workers': they never count as unfinished.
        let totals = StageStats { received: 500, ..t.clone() };
        let line = s.due(s.last + Duration::from_secs(1), totals, &t, 0).unwrap();
        assert!(
            line.ends_with("; jq: 10 in, 12 out, 2 filtered out, 3 fanned out, 1 failed, 4.5 µs per event"),
            "{line}"
        );
    }

    #[test]
    fn the_summary_names_every_committed_position() {
        let totals = StageStats { consumed: 10, delivered: 8, dead_lettered: 2, ..StageStats::default() };
        let committed = [Position::new(0, 4), Position::new(1, 6)];
        let s = summary(&totals, &committed, 0, Duration::from_millis(1500));
        assert_eq!(
            s,
            "summary: 10 consumed, 8 delivered, 2 dead-lettered, 0 retried, 0 restarts in 1.5s; committed 0:4 1:6"
        );
        assert!(summary(&totals, &[], 0, Duration::ZERO).ends_with("committed nothing"));
        assert!(summary(&totals, &[], 1, Duration::ZERO).contains(", 1 restart in "));
        let scan = Scan { chunks: 11, done: 4, rows: 400, estimate: 1000 };
        let totals = StageStats { lanes: Lanes { scan: Some(scan), ..Lanes::default() }, ..totals };
        assert!(
            summary(&totals, &[], 0, Duration::ZERO).ends_with("committed 4 of 11 chunks finished, 400 rows in all")
        );
    }

    #[test]
    fn an_aggregation_shows_its_state() {
        let t = StageStats {
            open_windows: 240,
            keys_held: 20,
            state_bytes: 3 << 19,
            watermark_ms: 10_000,
            late: 7,
            ..StageStats::default()
        };
        assert_eq!(aggregation(&t, 13_400), "windows 240 open (20 keys), state 1.5 MiB, watermark 3s behind, late 7");
        assert!(aggregation(&StageStats::default(), 5).contains("no watermark yet"));
    }

    #[test]
    fn a_redrawn_line_never_wraps() {
        let line = "in 5433/s, out 4050/s, in flight 0, lag 0, written 40500, dead letters 27, restarts 0";
        assert_eq!(fit(line, 200), line);
        let cut = fit(line, 40);
        assert_eq!(cut.chars().count(), 39, "{cut}");
        assert_eq!(cut, "in 5433/s, out 4050/s, in flight 0, la…");
        assert_eq!(fit("µs µs", 4), "µs…");
        assert_eq!(fit(line, 0), "…");
    }

    #[test]
    fn a_scan_shows_its_chunks_rows_and_eta() {
        let scan = Scan { chunks: 11, done: 4, rows: 400_000, estimate: 1_000_000 };
        assert_eq!(progress(&scan, 100_000.0), "4 of 11 chunks, 400000 of ~1000000 rows (40%), ETA 6s");
        assert!(progress(&scan, 0.0).ends_with("ETA unknown"));
        let done = Scan { done: 11, rows: 1_000_003, ..scan };
        assert!(progress(&done, 0.0).ends_with("(100%), done"));
        let now = StageStats { lanes: Lanes { scan: Some(scan), ..Lanes::default() }, ..StageStats::default() };
        let l = line(&StageStats::default(), &now, Duration::from_secs(1), 0);
        assert!(l.contains(", scan 4 of 11 chunks,") && !l.contains("lag"), "{l}");
    }
}
