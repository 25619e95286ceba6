//! `supervisor demo`, as a new user runs it: on its embedded cluster, it must end "OK: nothing lost", and its summary
//! must say exactly what the checker found committed.

use crate::harness::*;

/// A value after `label` on the line that has it, up to the end of the line.
fn after<'a>(text: &'a str, label: &str) -> &'a str {
    let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label:?} in:\n{text}"));
    line.split(label).nth(1).unwrap_or_default().trim()
}

#[test]
fn the_demo_delivers_everything_and_its_summary_tells_what_was_committed() {
    let out = command().args(["demo", "--events", "20000", "--hashers", "2"]).env("RUST_LOG", "info").output().unwrap();
    let (report, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{report}\n{log}");
    assert_eq!(after(&report, "verdict"), "OK: nothing lost", "{report}");
    assert_eq!(after(&report, "duplicates"), "0", "{report}");
    let summary = after(&log, "summary:");
    assert!(
        summary.starts_with("20000 consumed, 19980 delivered, 20 dead-lettered, 0 retried, 0 restarts"),
        "{summary}"
    );
    // What the pipeline says it committed is what the group has committed on the broker, partition by partition.
    let committed = summary.rsplit("; committed ").next().unwrap_or_default();
    assert_eq!(committed, after(&report, "committed offsets"), "{summary}\n{report}");
    let sum: i64 = committed.split(' ').map(|p| p.split_once(':').map_or(0, |(_, o)| o.parse().unwrap())).sum();
    assert_eq!(sum, 20_000, "every partition committed to its end: {committed}");
}
