//! What a run delivered, checked against what was sent: every event there with its right hash, per-key order, the
//! committed offsets, and the at-least-once promise.

use super::broker::{committed, read_until, Broker, Event, Msg, PARTITIONS};
use super::running::{start, Signal};
use md5::{Digest, Md5};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub fn md5_hex(b: &[u8]) -> String {
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks one destination event against its source: the same bytes with `,"hash":"<md5 of the source>"` spliced in.
pub fn source_of(out: &[u8]) -> (Vec<u8>, String) {
    let s = std::str::from_utf8(out).expect("output is UTF-8");
    let at = s.rfind(",\"hash\":\"").expect("output has a hash");
    let hash = s[at + 9..at + 9 + 32].to_string();
    assert_eq!(&s[at + 9 + 32..], "\"}", "the hash is the last field");
    let mut src = s[..at].to_string();
    src.push('}');
    (src.into_bytes(), hash)
}

#[derive(Debug)]
pub struct Checked {
    pub unique: usize,
    pub duplicates: usize,
}

/// Every source event is in `dst` with its right hash, per-key order holds, and nothing else is there.
pub fn check_destination(sent: &[Event], dst: &[Msg]) -> Checked {
    let want: HashSet<&[u8]> = sent.iter().map(|(_, v)| v.as_deref().unwrap()).collect();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut last_seq: HashMap<(i32, Vec<u8>), i64> = HashMap::new();
    let mut by_partition: Vec<&Msg> = dst.iter().collect();
    by_partition.sort_by_key(|m| (m.partition, m.offset));
    for m in by_partition {
        let (src, hash) = source_of(m.payload.as_deref().unwrap());
        assert!(want.contains(&src[..]), "unexpected event {}", String::from_utf8_lossy(&src));
        assert_eq!(hash, md5_hex(&src), "wrong hash for {}", String::from_utf8_lossy(&src));
        let v: serde_json::Value = serde_json::from_slice(&src).unwrap();
        assert_eq!(m.key.as_deref(), Some(v["key"].as_str().unwrap().as_bytes()), "the key is kept");
        let seq = v["seq"].as_i64().unwrap();
        let first = *seen.entry(src.clone()).and_modify(|c| *c += 1).or_insert(1) == 1;
        // Per key, first deliveries come in source order (a re-delivery after a restart may repeat older ones).
        if first {
            let last = last_seq.entry((m.partition, m.key.clone().unwrap())).or_insert(-1);
            assert!(
                seq > *last,
                "key {:?}: seq {seq} arrived after {last}",
                String::from_utf8_lossy(m.key.as_deref().unwrap())
            );
            *last = seq;
        }
    }
    let missing: Vec<_> = want.iter().filter(|w| !seen.contains_key(**w)).take(3).collect();
    assert!(
        missing.is_empty(),
        "{} events missing, e.g. {:?}",
        want.len() - seen.len(),
        missing.iter().map(|m| String::from_utf8_lossy(m)).collect::<Vec<_>>()
    );
    Checked { unique: seen.len(), duplicates: seen.values().map(|c| c - 1).sum() }
}

/// One past the last offset written to each partition: what a complete run must have committed.
pub fn end_offsets(landed: &[(i32, i64)]) -> Vec<i64> {
    let mut end = vec![0; PARTITIONS as usize];
    for &(p, o) in landed {
        end[p as usize] = end[p as usize].max(o + 1);
    }
    end
}

/// Every source event below the committed offsets must be in the destination: the at-least-once promise.
pub fn assert_committed_are_delivered(sent: &[Event], landed: &[(i32, i64)], committed: &[i64], dst: &[Msg]) {
    let there: HashSet<Vec<u8>> = dst.iter().map(|m| source_of(m.payload.as_deref().unwrap()).0).collect();
    for (i, &(p, o)) in landed.iter().enumerate() {
        if o < committed[p as usize] {
            assert!(
                there.contains(sent[i].1.as_deref().unwrap()),
                "partition {p} offset {o} committed but not delivered"
            );
        }
    }
}

/// Waits for every event in `dst`, stops the pipeline with `sig` (it must exit 0), and checks what arrived: each
/// event with its right hash, none missing, and `group` committed at the end of every partition.
pub fn stop_and_check(
    sup: &mut super::running::Running,
    sig: Signal,
    brokers: &str,
    group: &str,
    events: &[Event],
    landed: &[(i32, i64)],
) -> Checked {
    let _ = read_until(brokers, "dst", Duration::from_secs(120), |m| m.len() >= events.len());
    assert_eq!(sup.stop(sig, Duration::from_secs(30)), Some(0), "{}", sup.log());
    let dst = read_until(brokers, "dst", Duration::from_secs(30), |m| m.len() >= events.len());
    let checked = check_destination(events, &dst);
    assert_eq!(checked.unique, events.len(), "events missing");
    assert_eq!(committed(brokers, group, "src"), end_offsets(landed), "committed offsets");
    checked
}

/// Runs the pipeline again until the source is consumed, stops it with SIGINT, and checks that every event arrived
/// with the right hash and that the group committed the end of every partition.
pub fn finish_and_check(
    broker: &Broker,
    args: &[String],
    group: &str,
    events: &[Event],
    landed: &[(i32, i64)],
) -> Checked {
    let mut again = start(args);
    stop_and_check(&mut again, Signal::SIGINT, &broker.addr, group, events, landed)
}
