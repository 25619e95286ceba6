//! End to end against a real broker: what arrives, with which hash, in which order, what is committed, and how the
//! process exits.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const PARTITIONS: i32 = 4;

/// Checks one destination event against its source: the same bytes with `,"hash":"<md5 of the source>"` spliced in.
fn source_of(out: &[u8]) -> (Vec<u8>, String) {
    let s = std::str::from_utf8(out).expect("output is UTF-8");
    let at = s.rfind(",\"hash\":\"").expect("output has a hash");
    let hash = s[at + 9..at + 9 + 32].to_string();
    assert_eq!(&s[at + 9 + 32..], "\"}", "the hash is the last field");
    let mut src = s[..at].to_string();
    src.push('}');
    (src.into_bytes(), hash)
}

struct Checked {
    unique: usize,
    duplicates: usize,
}

/// Every source event is in `dst` with its right hash, per-key order holds, and nothing else is there.
fn check_destination(sent: &[Event], dst: &[Msg]) -> Checked {
    let want: HashSet<&[u8]> = sent.iter().map(|(_, v)| v.as_deref().unwrap()).collect();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut last_seq: HashMap<(i32, Vec<u8>), i64> = HashMap::new();
    let mut by_partition: Vec<&Msg> = dst.iter().collect();
    by_partition.sort_by_key(|m| (m.partition, m.offset));
    for m in by_partition {
        let (src, hash) = source_of(m.payload.as_deref().unwrap());
        assert!(
            want.contains(&src[..]),
            "unexpected event {}",
            String::from_utf8_lossy(&src)
        );
        assert_eq!(
            hash,
            md5_hex(&src),
            "wrong hash for {}",
            String::from_utf8_lossy(&src)
        );
        let v: serde_json::Value = serde_json::from_slice(&src).unwrap();
        assert_eq!(
            m.key.as_deref(),
            Some(v["key"].as_str().unwrap().as_bytes()),
            "the key is kept"
        );
        let seq = v["seq"].as_i64().unwrap();
        let first = *seen.entry(src.clone()).and_modify(|c| *c += 1).or_insert(1) == 1;
        // Per key, first deliveries come in source order (a re-delivery after a restart may repeat older ones).
        if first {
            let last = last_seq
                .entry((m.partition, m.key.clone().unwrap()))
                .or_insert(-1);
            assert!(
                seq > *last,
                "key {:?}: seq {seq} arrived after {last}",
                String::from_utf8_lossy(m.key.as_deref().unwrap())
            );
            *last = seq;
        }
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|w| !seen.contains_key(**w))
        .take(3)
        .collect();
    assert!(
        missing.is_empty(),
        "{} events missing, e.g. {:?}",
        want.len() - seen.len(),
        missing
            .iter()
            .map(|m| String::from_utf8_lossy(m))
            .collect::<Vec<_>>()
    );
    Checked {
        unique: seen.len(),
        duplicates: seen.values().map(|c| c - 1).sum(),
    }
}

/// One past the last offset written to each partition: what a complete run must have committed.
fn end_offsets(landed: &[(i32, i64)]) -> Vec<i64> {
    let mut end = vec![0; PARTITIONS as usize];
    for &(p, o) in landed {
        end[p as usize] = end[p as usize].max(o + 1);
    }
    end
}

#[test]
fn sigint_drains_everything_with_the_right_hashes_and_commits_the_end() {
    let broker = Broker::start("sigint");
    broker.create_topics(&[("src", PARTITIONS), ("dst", PARTITIONS)]);
    let good = name_events(20_000, 64);
    let bad: Vec<Event> = vec![
        (
            Some(b"bad".to_vec()),
            Some(br#"{"first_name": "Trunc"#.to_vec()),
        ),
        (Some(b"bad".to_vec()), Some(b"[1, 2, 3]".to_vec())),
        (Some(b"bad".to_vec()), Some(Vec::new())),
        (Some(b"bad".to_vec()), None),
        (Some(b"bad".to_vec()), Some(b"\xff\xfe\x00binary".to_vec())),
        (Some(b"bad".to_vec()), Some(b"null".to_vec())),
    ];
    let mut all = good.clone();
    all.splice(5000..5000, bad.iter().cloned());
    let landed = produce(&broker.addr, "src", &all);

    let mut args = base_args(&broker.addr, "g1");
    args.extend(["--hashers", "3"].map(String::from));
    let mut sup = start(&args);
    assert!(
        sup.wait_for_log("pipeline running", Duration::from_secs(30)),
        "did not start:\n{}",
        sup.log()
    );
    let dst = read_until(
        &broker.addr,
        "dst",
        PARTITIONS,
        Duration::from_secs(120),
        |m| m.len() >= good.len(),
    );
    assert!(
        dst.len() >= good.len(),
        "only {} of {} events arrived",
        dst.len(),
        good.len()
    );
    let dlq = read_until(
        &broker.addr,
        "dst.dlq",
        PARTITIONS,
        Duration::from_secs(30),
        |m| m.len() >= bad.len(),
    );

    sup.signal(Signal::SIGINT);
    let status = sup
        .wait_timeout(Duration::from_secs(30))
        .expect("exits after SIGINT");
    assert_eq!(status.code(), Some(0), "exit code; log:\n{}", sup.log());

    let dst = read_until(
        &broker.addr,
        "dst",
        PARTITIONS,
        Duration::from_secs(30),
        |m| m.len() >= good.len(),
    );
    let checked = check_destination(&good, &dst);
    assert_eq!(
        (checked.unique, checked.duplicates),
        (good.len(), 0),
        "a clean run delivers each event once"
    );

    // Bad input: in the dead-letter topic, unchanged, with where it came from and why.
    assert_eq!(dlq.len(), bad.len(), "dead letters: {dlq:?}");
    let bad_at: HashMap<(i32, i64), &Option<Vec<u8>>> = bad
        .iter()
        .enumerate()
        .map(|(i, (_, v))| (landed[5000 + i], v))
        .collect();
    for m in &dlq {
        let p: i32 = m.headers["dlq.source.partition"].parse().unwrap();
        let o: i64 = m.headers["dlq.source.offset"].parse().unwrap();
        assert_eq!(m.headers["dlq.source.topic"], "src");
        assert!(!m.headers["dlq.error"].is_empty());
        let original = bad_at
            .get(&(p, o))
            .unwrap_or_else(|| panic!("no bad event at {p}/{o}"));
        assert_eq!(&m.payload, *original, "dead letters are unchanged");
    }

    assert_eq!(
        committed(&broker.addr, "g1", "src", PARTITIONS),
        end_offsets(&landed),
        "committed offsets"
    );
    let log = sup.log();
    assert!(log.contains("draining"), "{log}");
}
