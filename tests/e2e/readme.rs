//! The README's samples are what the binary prints: each block after a `<!-- sample: ARGS -->` marker (ARGS split as
//! a shell would) must still come out of `supervisor ARGS`, numbers aside (pids, ports, rates and counts differ from
//! run to run); `<!-- sample (exit N): ARGS -->` shows a refusal that exits N. Blocks after `<!-- file: NAME -->` are
//! written to NAME first, in the directory the commands run in.

use crate::harness::*;

/// What the README's `@kafka-password` file holds here; no sample may print it.
const PASSWORD: &str = "readme-Pa55word";

/// The indented block that follows line `i`.
fn block_after(lines: &[&str], i: usize) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines.iter().skip(i + 1) {
        if line.trim().is_empty() {
            out.push(String::new());
        } else if let Some(code) = line.strip_prefix("    ") {
            out.push(code.to_string());
        } else {
            break;
        }
    }
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    while out.first().is_some_and(String::is_empty) {
        out.remove(0);
    }
    out
}

/// A line with its timestamp gone and every number replaced, so that runs compare.
fn normalize(line: &str) -> String {
    let line = line.trim_end();
    let line = match line.split_once(' ') {
        Some((stamp, rest)) if stamp.len() > 20 && stamp.starts_with("20") && stamp.ends_with('Z') => rest,
        _ => line,
    };
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(|c| c.is_ascii_digit() || *c == '.') {
                chars.next();
            }
            out.push('N');
            // A duration's unit changes with its size (887.2ms, 1.6s), so it does not count either.
            let rest: String = chars.clone().take(3).collect();
            for unit in ["ms", "µs", "ns", "s"] {
                let after = rest.strip_prefix(unit);
                if after.is_some_and(|a| !a.starts_with(|c: char| c.is_alphanumeric())) {
                    for _ in unit.chars() {
                        chars.next();
                    }
                    out.push('s');
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn every_sample_in_the_readme_is_what_the_binary_prints() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let dir = scratch_dir("readme");
    std::fs::write(dir.join("kafka-password"), format!("{PASSWORD}\n")).unwrap();
    let mut samples = 0;
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("<!-- file: ").and_then(|l| l.strip_suffix(" -->")) {
            std::fs::write(dir.join(name), block_after(&lines, i).join("\n") + "\n").unwrap();
        }
        // `<!-- sample: ARGS -->` exits 0; `<!-- sample (exit N): ARGS -->` shows a refusal, which exits N.
        let marker = line.strip_prefix("<!-- sample").and_then(|l| l.strip_suffix(" -->"));
        let Some((exit, args)) = marker.and_then(|m| match m.strip_prefix(": ") {
            Some(args) => Some((0, args)),
            None => {
                let (code, args) = m.strip_prefix(" (exit ")?.split_once("): ")?;
                Some((code.parse::<i32>().ok()?, args))
            }
        }) else {
            continue;
        };
        samples += 1;
        let expected = block_after(&lines, i);
        assert!(!expected.is_empty(), "README line {}: a sample marker with no block after it", i + 1);
        let words = shlex::split(args).unwrap_or_else(|| panic!("README line {}: unbalanced quotes in {args}", i + 1));
        let out = command().args(words).current_dir(&dir).env_remove("CREDENTIALS_DIRECTORY").output().unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(exit), "supervisor {args}:\n{printed}");
        assert!(!printed.contains(PASSWORD), "supervisor {args} printed the password:\n{printed}");
        let printed_lines: Vec<String> = printed.lines().map(normalize).collect();
        for want in expected.iter().filter(|l| !l.trim().is_empty()) {
            assert!(
                printed_lines.contains(&normalize(want)),
                "README line {}: `supervisor {args}` no longer prints\n  {want}\nIt printed:\n{printed}",
                i + 1
            );
        }
    }
    assert!(samples >= 4, "the README's samples are marked ({samples} found)");
}

#[test]
fn numbers_and_timestamps_do_not_count() {
    assert_eq!(
        normalize("2026-11-23T21:36:54.039Z INFO  supervisor[31744] summary: 20000 consumed in 3.5s; committed 0:4962"),
        "INFO  supervisor[N] summary: N consumed in Ns; committed N:N"
    );
    assert_eq!(
        normalize("in 887.2ms; 31.0 µs per event, 2 sources"),
        normalize("in 1.6s; 9.5 µs per event, 3 sources")
    );
    assert_ne!(normalize("8 chunks"), normalize("8 sinks"));
    assert_eq!(
        normalize("    verdict                   OK: nothing lost  "),
        "    verdict                   OK: nothing lost"
    );
}
