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

#[test]
fn the_sql_demo_checks_every_row_and_resumes_after_ctrl_c() {
    let (small, dir) = (scratch_dir("demo-sql-small"), scratch_dir("demo-sql"));
    let demo_in = |dir: &std::path::Path, rows: &str| {
        let mut c = command();
        c.args(["demo", "sql", "--rows", rows, "--dir"]).arg(dir).args(["--hashers", "2"]).env("RUST_LOG", "info");
        c
    };
    let demo = |rows: &str| demo_in(&dir, rows);
    let out = demo_in(&small, "50000").output().unwrap();
    let (report, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{report}\n{log}");
    assert_eq!(after(&report, "verdict"), "OK: nothing lost", "{report}");
    assert_eq!(after(&report, "rows in DESTINATION"), "50000", "{report}");

    // Ctrl-C in the middle of a bigger run, then a second run resumes it.
    let first =
        demo("600000").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let db = dir.join("article.sqlite");
    let written = || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM DESTINATION", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    let t0 = std::time::Instant::now();
    while written() < 50_000 && t0.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill(Pid::from_raw(first.id() as i32), Signal::SIGINT).unwrap();
    let out = first.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(after(&report, "verdict").starts_with("stopped after "), "{report}");
    let out = demo("600000").output().unwrap();
    let (report, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{report}\n{log}");
    assert!(log.contains("resuming the scan"), "{log}");
    assert_eq!(after(&report, "verdict"), "OK: nothing lost", "{report}");
}

#[test]
fn a_demo_whose_pipeline_failed_never_says_ok() {
    for bad in [
        &["--jq", "select("][..],
        &["--metrics-addr", "nonsense"],
        &["-X", "nosuch.prop=1"],
        &["--exec", "python3 /nonexistent/nosuch.py"],
    ] {
        let out = command().args(["demo", "--events", "2000"]).args(bad).output().unwrap();
        let (report, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_ne!(out.status.code(), Some(0), "{bad:?}: {report}\n{log}");
        assert!(!report.contains("OK: nothing lost"), "{bad:?}: {report}");
        assert!(after(&report, "verdict").starts_with("FAILED: the pipeline exited 2"), "{bad:?}: {report}");
    }
}

#[test]
/// `demo cdc` on a throwaway PostgreSQL cluster: the copy equals the changing source, the cluster is gone after; a
/// demo whose pipeline cannot start says FAILED.
fn the_cdc_demo_follows_a_changing_table_and_checks_every_row() {
    let dir = scratch_dir("demo-cdc");
    let demo = |extra: &[&str]| {
        let mut c = command();
        c.args(["demo", "cdc", "--rows", "30000", "--seconds", "4", "--dir"]).arg(&dir);
        c.args(["--hashers", "2"]).args(extra).env("RUST_LOG", "info");
        c.output().unwrap()
    };
    let out = demo(&[]);
    let (report, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{report}\n{log}");
    assert_eq!(after(&report, "verdict"), "OK: tables equal", "{report}");
    assert_eq!(after(&report, "writer"), "finished", "{report}");
    assert_eq!(after(&report, "rows in the source"), after(&report, "rows in the copy"), "{report}");
    assert!(log.contains("the snapshot of accounts is taken"), "{log}");
    let removed = !std::fs::read_dir(std::env::temp_dir()).unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("supervisor-demo-cdc-")
            && log.contains(&*e.path().to_string_lossy())
    });
    assert!(removed, "the throwaway cluster is removed: {log}");

    let out = demo(&["--jq", "select("]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{report}");
    assert_eq!(after(&report, "verdict"), "FAILED: the pipeline exited 2", "{report}");
}
