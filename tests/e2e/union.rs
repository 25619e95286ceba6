//! Several source topics in one pipeline: a list (`--source-topic a,b`) and a pattern that picks up a topic created
//! while the pipeline runs. Every event once, order per key, each topic's group offsets committed at its end.

use crate::harness::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// The article's events with keys of their own (`x3` rather than `k3`), for a second topic.
fn other_events(n: usize, keys: usize) -> Vec<Event> {
    name_events(n, keys)
        .into_iter()
        .map(|(k, v)| {
            let k = String::from_utf8(k.unwrap()).unwrap().replacen('k', "x", 1);
            let v = String::from_utf8(v.unwrap()).unwrap().replace("\"key\": \"k", "\"key\": \"x");
            (Some(k.into_bytes()), Some(v.into_bytes()))
        })
        .collect()
}

#[test]
fn two_topics_into_one_pipeline_deliver_every_event_and_commit_each_topic() {
    let broker = Broker::with_topics("union");
    broker.create_topics(&[("src2", PARTITIONS)]);
    let (first, second) = (name_events(6_000, 48), other_events(4_000, 32));
    let landed_first = produce(&broker.addr, "src", &first);
    let landed_second = produce(&broker.addr, "src2", &second);
    let mut args = without(&base_args(&broker.addr, "union"), &["source-topic"]);
    args.extend(["--source-topic", "src,src2", "--hashers", "2"].map(String::from));
    let mut sup = start(&args);
    let all: Vec<Event> = first.iter().chain(&second).cloned().collect();
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(90), |m| m.len() >= all.len());
    let checked = check_destination(&all, &dst);
    assert_eq!((checked.unique, checked.duplicates), (all.len(), 0));
    assert_eq!(sup.stop(Signal::SIGTERM, Duration::from_secs(30)), Some(0), "{}", sup.log());
    assert_eq!(committed(&broker.addr, "union", "src"), end_offsets(&landed_first), "src committed at its end");
    assert_eq!(committed(&broker.addr, "union", "src2"), end_offsets(&landed_second), "src2 committed at its end");
}

#[test]
fn a_pattern_picks_up_a_topic_created_while_the_pipeline_runs() {
    let broker = Broker::start("pattern");
    broker.create_topics(&[("in.eu", PARTITIONS), ("dst", PARTITIONS)]);
    let eu = name_events(2_000, 16);
    produce(&broker.addr, "in.eu", &eu);
    let mut args = without(&base_args(&broker.addr, "pattern"), &["source-topic"]);
    let tag = r#".topic = $meta.topic | .partition = $meta.partition"#;
    args.extend(["--source-topic", r"^in\..*", "--jq", tag, "--hashers", "2"].map(String::from));
    args.extend(["-X", "topic.metadata.refresh.interval.ms=1000"].map(String::from));
    let mut sup = start(&args);
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(60), |m| m.len() >= eu.len());
    assert_eq!(dst.len(), eu.len(), "{}", sup.log());
    // A new topic that matches, created now: its events come through too, each tagged with its topic.
    broker.create_topics(&[("in.us", PARTITIONS)]);
    let us = other_events(1_000, 8);
    let landed_us = produce(&broker.addr, "in.us", &us);
    let dst = read_until(&broker.addr, "dst", Duration::from_secs(90), |m| m.len() >= eu.len() + us.len());
    let mut by_topic: BTreeMap<String, usize> = BTreeMap::new();
    for m in &dst {
        let v: serde_json::Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
        let topic = v["topic"].as_str().unwrap().to_string();
        assert!((0..PARTITIONS as i64).contains(&v["partition"].as_i64().unwrap()), "{v}");
        assert_eq!(v["key"].as_str().unwrap().starts_with('x'), topic == "in.us", "{v}");
        *by_topic.entry(topic).or_default() += 1;
    }
    assert_eq!(by_topic, BTreeMap::from([("in.eu".to_string(), eu.len()), ("in.us".to_string(), us.len())]));
    assert_eq!(sup.stop(Signal::SIGINT, Duration::from_secs(30)), Some(0), "{}", sup.log());
    assert_eq!(committed(&broker.addr, "pattern", "in.us"), end_offsets(&landed_us), "the new topic is committed");
}

#[test]
fn a_pattern_that_would_read_its_own_output_is_refused() {
    let mut args = without(&base_args("127.0.0.1:1", "refused"), &["source-topic", "dest-topic"]);
    args.extend(["--source-topic", "^d.*", "--dest-topic", "dst"].map(String::from));
    let out = command().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--dest-topic \"dst\" matches the source pattern"), "{err}");
}
