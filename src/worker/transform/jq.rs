//! `--jq`: a jq filter, run by jaq, compiled once per worker.
//!
//! Each event is parsed as JSON and run through the filter. Every value the filter outputs is one output event, in
//! order, with the input's key, headers and timestamp; no output filters the event out (`select`), several fan it out
//! (`.items[]`). An error, even after some outputs, rejects the whole event to the dead-letter destination, so an
//! event is never half transformed.
//!
//! Added to jq's functions: `md5`, `sha256` and `hmac_sha256` (keyed by `--hmac-key-file` or `SUPERVISOR_HMAC_KEY`),
//! each the lowercase hex digest of its input (a string's UTF-8 bytes, or any other value's compact JSON); and
//! `$meta`, the event's key, topic, partition, offset, timestamp and headers.

use super::hash;
use super::{not_json, Outputs, PerEvent, Rejection};
use crate::channel::batch::Record;
use crate::config::JqSpec;
use crate::error::{Error, Result};
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Ctx, Native, RcIter, RunPtr};
use jaq_json::Val;
use serde_bytes::Bytes;
use std::sync::OnceLock;

pub type Filter = jaq_core::Filter<Native<Val>>;

/// The key of `hmac_sha256`. A native jq function is a plain function pointer, so the key it needs lives here, set
/// once per process (each worker is its own process) before the filter is compiled.
static HMAC_KEY: OnceLock<Vec<u8>> = OnceLock::new();

/// The name of the metadata variable.
pub const META: &str = "$meta";

/// A compiled filter.
pub struct Jq {
    filter: Filter,
    /// Whether the filter mentions `$meta` at all: building it costs, and most filters never look.
    wants_meta: bool,
    source: MetaSource,
}

impl Jq {
    /// Compiles the filter; a filter that does not compile is a configuration error that says where.
    pub fn compile(spec: &JqSpec, source: MetaSource) -> Result<Jq> {
        if let Some(key) = &spec.hmac_key {
            let _ = HMAC_KEY.set(key.as_bytes().to_vec());
        }
        let origin = match &spec.file {
            Some(file) => format!("--jq-file {}", file.display()),
            None => "--jq".to_string(),
        };
        let filter = compile(spec.filter.as_str(), &origin, &[META], spec.hmac_key.is_some())?;
        Ok(Jq { filter, wants_meta: spec.filter.contains(META), source })
    }

    fn meta(&self, record: &Record<'_>) -> Val {
        meta(&self.source, record)
    }
}

/// Compiles jq code with our functions and the global variables `vars` (`$meta` among them, if wanted); `origin`
/// names the flag in the error. `keyed`: an HMAC key was given, so `hmac_sha256` exists.
pub fn compile(code: &str, origin: &str, vars: &[&'static str], keyed: bool) -> Result<Filter> {
    let refuse = |message: String| Error::JqCompile { origin: origin.to_string(), message };
    let loader = Loader::new(jaq_std::defs().chain(jaq_json::defs()));
    let arena = Arena::default();
    let modules = loader.load(&arena, File { code, path: () }).map_err(|errors| refuse(load_errors(code, errors)))?;
    // jaq's halt and halt_error end the process: in a worker they would end it on every event that reaches
    // them, and it would be restarted onto the same event. Here they fail that event instead.
    let funs = jaq_std::funs()
        .filter(|(name, _, _)| !matches!(*name, "halt" | "halt_error"))
        .chain(jaq_json::funs())
        .chain(ours(keyed).map(jaq_std::run));
    jaq_core::Compiler::default().with_funs(funs).with_global_vars(vars.iter().copied()).compile(modules).map_err(
        |errors| {
            let mut message = compile_errors(code, errors);
            if message.contains("hmac_sha256") && !keyed {
                message.push_str(" (hmac_sha256 needs a key: --hmac-key-file FILE, or SUPERVISOR_HMAC_KEY)");
            }
            refuse(message)
        },
    )
}

/// `$meta` for an event.
pub fn meta(source: &MetaSource, record: &Record<'_>) -> Val {
    let key = record.key.map(|k| meta_bytes(k));
    Val::from(match source {
        MetaSource::Topic(topic) => serde_json::json!({
            "key": key,
            "topic": record.topic.unwrap_or(topic),
            "partition": crate::position::partition_of(record.at.lane),
            "offset": record.at.seq,
            "timestamp": record.timestamp,
            "headers": meta_headers(&record.headers),
        }),
        // A row has a table and a key; partitions, offsets and headers are Kafka's. A followed table's change has
        // what it did (`op`), and where and when it committed (`lsn`, `commit_time`): its source put them in headers.
        MetaSource::Table(table) => {
            let mut meta = serde_json::json!({ "key": key, "table": table });
            for (name, value) in &record.headers {
                if let (true, Some(v)) = (["op", "lsn", "commit_time"].contains(name), value) {
                    meta[*name] = meta_bytes(v);
                }
            }
            meta
        }
    })
}

/// Where events come from, as `$meta` tells it.
#[derive(Debug, Clone)]
pub enum MetaSource {
    Topic(String),
    Table(String),
}

/// Bytes in `$meta`: a string where they are UTF-8 text, else `{"base64": "..."}`, so that no byte is changed
/// without a mark.
fn meta_bytes(b: &[u8]) -> serde_json::Value {
    use base64::Engine as _;
    match std::str::from_utf8(b) {
        Ok(text) => serde_json::Value::String(text.to_string()),
        Err(_) => serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

/// The headers in `$meta`: each name with its value (null for a header with none), or an array of its values, in
/// order, when the name comes more than once (Kafka allows that, and none may be lost).
fn meta_headers(headers: &[(&str, Option<&Bytes>)]) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut map = serde_json::Map::new();
    // A single value is never an array, so an array here always means a repeated name.
    for (name, value) in headers {
        let value = value.map_or(Value::Null, |v| meta_bytes(v));
        match map.get_mut(*name) {
            None => {
                map.insert(name.to_string(), value);
            }
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
        }
    }
    map
}

impl PerEvent for Jq {
    fn apply(&mut self, record: &Record<'_>, out: &mut Outputs) -> std::result::Result<(), Rejection> {
        let input = record.payload.ok_or(Rejection::NullPayload)?;
        if input.iter().all(u8::is_ascii_whitespace) {
            return Err(Rejection::EmptyPayload);
        }
        let value = parse(input)?;
        let meta = if self.wants_meta { self.meta(record) } else { Val::Null };
        let inputs = RcIter::new(core::iter::empty());
        for output in self.filter.run((Ctx::new([meta], &inputs), value)) {
            let output = output.map_err(|e| {
                // error("text") reads as its text, as jq prints it; other errors as jaq words them.
                let why = match e.into_val() {
                    Val::Str(s) => s.to_string(),
                    other => jaq_core::Error::new(other).to_string(),
                };
                Rejection::Filter(format!("the jq filter failed: {why}"))
            })?;
            // Writing to a Vec cannot fail.
            let _ = out.push_with(|bytes| {
                super::json_out::write_val(bytes, &output);
                Ok::<(), std::convert::Infallible>(())
            });
        }
        Ok(())
    }
}

/// The event as a jq value. serde_json judges it first, for the same errors (and the same "not UTF-8 text") as the
/// other transforms give.
pub fn parse(input: &[u8]) -> std::result::Result<Val, Rejection> {
    use hifijson::token::Lex;
    let mut lexer = hifijson::SliceLexer::new(input);
    match lexer.exactly_one(Val::parse) {
        Ok(value) => Ok(value),
        Err(hifi) => Err(Rejection::NotJson(match serde_json::from_slice::<serde::de::IgnoredAny>(input) {
            Err(e) => not_json(input, &e),
            Ok(_) => format!("not JSON: {hifi}"),
        })),
    }
}

/// The functions this program adds to jq.
fn ours(keyed: bool) -> impl Iterator<Item = jaq_std::Filter<RunPtr<Val>>> {
    let md5: jaq_std::Filter<RunPtr<Val>> = ("md5", jaq_std::v(0), |_, cv| digest(cv.1, hash::md5_hex));
    let sha256: jaq_std::Filter<RunPtr<Val>> = ("sha256", jaq_std::v(0), |_, cv| digest(cv.1, hash::sha256_hex));
    let hmac: jaq_std::Filter<RunPtr<Val>> = ("hmac_sha256", jaq_std::v(0), |_, cv| {
        digest(cv.1, |b| hash::hmac_sha256_hex(HMAC_KEY.get().map_or(&[][..], Vec::as_slice), b))
    });
    let halt: jaq_std::Filter<RunPtr<Val>> = ("halt", jaq_std::v(0), |_, _| {
        Box::new(core::iter::once(Err(jaq_core::Error::new(Val::from("halt".to_string())).into())))
    });
    let halt_error: jaq_std::Filter<RunPtr<Val>> = ("halt_error", jaq_std::v(1), |_, mut cv| {
        let code = cv.0.pop_var();
        // As jq prints it: a string as it is, anything else as JSON.
        let said = match &cv.1 {
            Val::Str(s) => s.trim_end().to_string(),
            other => other.to_string(),
        };
        let why = format!("halt_error (exit code {code}): {said}");
        Box::new(core::iter::once(Err(jaq_core::Error::new(Val::from(why)).into())))
    });
    // lookup(NAME; KEY): a row of a --lookup table or topic (crate::worker::lookup), or null.
    let lookup: jaq_std::Filter<RunPtr<Val>> = ("lookup", jaq_std::v(2), |_, mut cv| {
        let key = cv.0.pop_var();
        let name = cv.0.pop_var();
        let row = crate::worker::lookup::lookup(&name, &key).map_err(|why| jaq_core::Error::new(Val::from(why)).into());
        Box::new(core::iter::once(row))
    });
    [md5, sha256, halt, halt_error, lookup].into_iter().chain(keyed.then_some(hmac))
}

/// A digest of a string's UTF-8 bytes, or of any other value's compact JSON.
fn digest<'a>(value: Val, f: impl Fn(&[u8]) -> String) -> jaq_core::ValXs<'a, Val> {
    let hex = match &value {
        Val::Str(s) => f(s.as_bytes()),
        other => f(other.to_string().as_bytes()),
    };
    Box::new(core::iter::once(Ok(Val::from(hex))))
}

/// Line and column (from 1) of `at`, a slice of `code`, or `None` if it is not one.
fn locate(code: &str, at: &str) -> Option<(usize, usize)> {
    let offset = (at.as_ptr() as usize).checked_sub(code.as_ptr() as usize)?;
    let before = code.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

fn at(code: &str, slice: &str) -> String {
    match locate(code, slice) {
        Some((line, column)) => format!(" at line {line}, column {column}"),
        None => String::new(),
    }
}

fn load_errors(code: &str, errors: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error as E;
    let mut said = Vec::new();
    for (_, error) in errors {
        match error {
            E::Io(errs) => said.extend(errs.into_iter().map(|(path, e)| format!("cannot load {path}: {e}"))),
            E::Lex(errs) => said.extend(
                errs.into_iter().map(|(expect, rest)| format!("expected {}{}", expect.as_str(), at(code, rest))),
            ),
            E::Parse(errs) => said.extend(errs.into_iter().map(|(expect, found)| {
                let found = if found.is_empty() { "the end".to_string() } else { format!("'{found}'") };
                format!("expected {} but found {found}{}", expect.as_str(), at(code, found_slice(code, &found)))
            })),
        }
    }
    said.join("; ")
}

/// The parse error's token, to locate it: the quoted form is for the message only.
fn found_slice<'a>(code: &'a str, found: &str) -> &'a str {
    let token = found.trim_matches('\'');
    code.find(token).map_or(&code[code.len()..], |i| &code[i..])
}

fn compile_errors(code: &str, errors: jaq_core::compile::Errors<&str, ()>) -> String {
    use jaq_core::compile::Undefined;
    let mut said = Vec::new();
    for (_, errs) in errors {
        for (name, undefined) in errs {
            let what = match undefined {
                Undefined::Mod => "module".to_string(),
                Undefined::Var => "variable".to_string(),
                Undefined::Label => "label".to_string(),
                Undefined::Filter(arity) => format!("filter (with {arity} arguments)"),
                _ => "name".to_string(),
            };
            said.push(format!("undefined {what} {name}{}", at(code, name)));
        }
    }
    said.join("; ")
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::position::Position;
    use serde_bytes::Bytes;

    fn spec(filter: &str) -> JqSpec {
        JqSpec { filter: filter.to_string(), file: None, hmac_key: None, hmac_key_file: None }
    }

    fn run(filter: &str, payload: &[u8]) -> std::result::Result<Vec<String>, Rejection> {
        let mut jq = Jq::compile(&spec(filter), MetaSource::Topic("in".into())).unwrap();
        let record = Record {
            at: Position::new(2, 40),
            timestamp: Some(1_700_000_000_000),
            key: Some(Bytes::new(b"k1")),
            headers: vec![("trace", Some(Bytes::new(b"t1"))), ("none", None)],
            payload: Some(Bytes::new(payload)),
            dead_letter: None,
            topic: None,
            outputs: 1,
        };
        let mut out = Outputs::default();
        jq.apply(&record, &mut out)?;
        out.done();
        let Verdict::Outputs(range) = out.verdicts()[0].clone() else { unreachable!() };
        Ok(range.map(|i| String::from_utf8(out.output(i).to_vec()).unwrap()).collect())
    }

    #[test]
    fn a_map_a_select_and_a_fan_out() {
        assert_eq!(run(".n += 1 | .s = \"x\"", br#"{"n":1}"#).unwrap(), [r#"{"n":2,"s":"x"}"#]);
        assert!(run("select(.n > 5)", br#"{"n":1}"#).unwrap().is_empty());
        assert_eq!(run(".items[]", br#"{"items":[{"a":1},2,"three"]}"#).unwrap(), [r#"{"a":1}"#, "2", r#""three""#]);
    }

    #[test]
    fn a_filter_error_rejects_the_event_and_says_why() {
        let e = run(".n + \"x\"", br#"{"n":1}"#).unwrap_err();
        assert!(matches!(&e, Rejection::Filter(m) if m.starts_with("the jq filter failed: ")), "{e:?}");
        let e = run("1, error(\"boom\")", br#"{}"#).unwrap_err();
        assert_eq!(e.as_str(), "the jq filter failed: boom", "an error after an output rejects it all");
        let e = run("if .id == 2 then halt else . end", br#"{"id":2}"#).unwrap_err();
        assert_eq!(e.as_str(), "the jq filter failed: halt", "halt fails the event, never the worker");
        let e = run(r#""no such customer\n" | halt_error"#, br#"{}"#).unwrap_err();
        assert_eq!(e.as_str(), "the jq filter failed: halt_error (exit code 5): no such customer");
        let e = run("{bad: .id} | halt_error(1)", br#"{"id":2}"#).unwrap_err();
        assert_eq!(e.as_str(), r#"the jq filter failed: halt_error (exit code 1): {"bad":2}"#);
        assert_eq!(run("if .id == 2 then halt else . end", br#"{"id":1}"#).unwrap(), [r#"{"id":1}"#]);
        assert!(matches!(run(".", b"{\"a\":"), Err(Rejection::NotJson(_))));
        assert_eq!(run(".", b"\xff").unwrap_err().as_str(), "not UTF-8 text (invalid byte at offset 0)");
        assert_eq!(run(".", b"  "), Err(Rejection::EmptyPayload));
    }

    #[test]
    fn hash_functions_give_known_digests() {
        let got = run("[(.a | md5), (.a | sha256), ({} | md5)]", br#"{"a":"abc"}"#).unwrap();
        assert_eq!(
            got,
            [
                r#"["900150983cd24fb0d6963f7d28e17f72","ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","99914b932bd37a50b983c5e7c90ae93b"]"#
            ]
        );
    }

    #[test]
    fn hmac_needs_a_key_and_uses_it() {
        let e =
            Jq::compile(&spec(".h = (.a | hmac_sha256)"), MetaSource::Topic("in".into())).err().unwrap().to_string();
        assert!(e.contains("undefined filter") && e.contains("--hmac-key-file"), "{e}");
        let keyed = JqSpec { hmac_key: Some("Jefe".into()), ..spec(".a | hmac_sha256") };
        let mut jq = Jq::compile(&keyed, MetaSource::Topic("in".into())).unwrap();
        let record = Record {
            at: Position::new(0, 0),
            timestamp: None,
            key: None,
            headers: Vec::new(),
            payload: Some(Bytes::new(br#"{"a":"what do ya want for nothing?"}"#)),
            dead_letter: None,
            topic: None,
            outputs: 1,
        };
        let mut out = Outputs::default();
        jq.apply(&record, &mut out).unwrap();
        assert_eq!(out.output(0), br#""5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843""#);
    }

    #[test]
    fn meta_holds_the_events_origin() {
        let got = run("$meta", b"{}").unwrap();
        let v: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"key": "k1", "topic": "in", "partition": 2, "offset": 40, "timestamp": 1_700_000_000_000i64,
                               "headers": {"trace": "t1", "none": null}})
        );
    }

    #[test]
    fn a_table_rows_meta_has_its_table_and_key() {
        let mut jq = Jq::compile(&spec("$meta"), MetaSource::Table("orders".into())).unwrap();
        let record = Record {
            at: crate::position::Position::new(3, 17),
            timestamp: None,
            key: Some(Bytes::new(b"42")),
            headers: Vec::new(),
            payload: Some(Bytes::new(b"{}")),
            dead_letter: None,
            topic: None,
            outputs: 1,
        };
        let mut out = Outputs::default();
        jq.apply(&record, &mut out).unwrap();
        assert_eq!(out.output(0), br#"{"key":"42","table":"orders"}"#);
    }

    #[test]
    fn meta_keeps_repeated_headers_and_marks_bytes_that_are_not_text() {
        let headers = [
            ("trace", Some(Bytes::new(b"t1"))),
            ("hop", Some(Bytes::new(b"a"))),
            ("hop", None),
            ("bin", Some(Bytes::new(b"\xff\x00"))),
            ("hop", Some(Bytes::new(b"c"))),
        ];
        assert_eq!(
            serde_json::Value::Object(meta_headers(&headers)),
            serde_json::json!({"trace": "t1", "hop": ["a", null, "c"], "bin": {"base64": "/wA="}})
        );
        assert_eq!(meta_bytes(b"\xc3\x28"), serde_json::json!({"base64": "wyg="}));
    }

    #[test]
    fn a_filter_that_does_not_compile_says_where() {
        let e = Jq::compile(&spec(".a |\n  foo(1)"), MetaSource::Topic("in".into())).err().unwrap().to_string();
        assert_eq!(
            e,
            "the jq filter (--jq) does not compile: undefined filter (with 1 arguments) foo at line 2, column 3"
        );
        let e = Jq::compile(&spec(".a | | .b"), MetaSource::Topic("in".into())).err().unwrap().to_string();
        assert!(e.starts_with("the jq filter (--jq) does not compile: expected term"), "{e}");
        let e = Jq::compile(&spec("if . then 1"), MetaSource::Topic("in".into())).err().unwrap().to_string();
        assert!(e.contains("expected else or end"), "{e}");
    }
}
