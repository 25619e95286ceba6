//! The `--exec` protocol's lines, as pure logic: an event as the one line the command reads, and the one line it
//! writes back as zero or more output events.

use super::super::{not_json, Outputs, Rejection};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// Appends `payload` to `line` as one line of compact JSON, or says why it is not JSON.
///
/// A valid JSON text holds a raw newline only as whitespace between tokens (inside a string it must be escaped), so
/// turning every CR and LF into a space keeps its meaning and puts it on one line.
pub fn request(payload: Option<&[u8]>, line: &mut Vec<u8>) -> Result<(), Rejection> {
    let input = payload.ok_or(Rejection::NullPayload)?;
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::EmptyPayload);
    }
    serde_json::from_slice::<IgnoredAny>(input).map_err(|e| Rejection::NotJson(not_json(input, &e)))?;
    line.extend(input.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    line.push(b'\n');
    Ok(())
}

/// Reads one reply line (without its newline): an object is one output event, an array is one output event per
/// element (none for `[]`), each of which must be an object. The outputs keep the command's bytes.
pub fn outputs(reply: &[u8], out: &mut Outputs) -> Result<(), Rejection> {
    let reply = reply.trim_ascii();
    let refuse = |what: String| Rejection::Reply(format!("the --exec command's reply {what} ({} bytes)", reply.len()));
    match reply.first() {
        Some(b'{') => {
            serde_json::from_slice::<IgnoredAny>(reply).map_err(|e| refuse(format!("is not JSON: {e}")))?;
            out.push(reply);
        }
        Some(b'[') => {
            let events: Vec<&RawValue> =
                serde_json::from_slice(reply).map_err(|e| refuse(format!("is not JSON: {e}")))?;
            if let Some(i) = events.iter().position(|e| !e.get().starts_with('{')) {
                return Err(refuse(format!("is an array whose element {i} is not an object")));
            }
            for event in events {
                out.push(event.get().as_bytes());
            }
        }
        Some(_) => {
            return Err(match serde_json::from_slice::<IgnoredAny>(reply) {
                Ok(_) => refuse("is neither a JSON object nor an array".to_string()),
                Err(e) => refuse(format!("is not JSON: {e}")),
            })
        }
        None => return Err(refuse("is empty: one line is expected per event, an object or an array".to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::Verdict;
    use super::*;

    #[test]
    fn a_request_is_one_line_of_the_same_json() {
        let mut line = Vec::new();
        request(Some(b"{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n2]\n}"), &mut line).unwrap();
        assert_eq!(line, b"{   \"a\": \"x\\ny\",    \"b\": [1, 2] }\n");
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["a"], "x\ny");
        assert_eq!(request(None, &mut line), Err(Rejection::NullPayload));
        assert_eq!(request(Some(b" \n"), &mut line), Err(Rejection::EmptyPayload));
        assert!(matches!(request(Some(b"{\"a\":"), &mut line), Err(Rejection::NotJson(_))));
        let binary = request(Some(b"\xff\xd8"), &mut line).unwrap_err();
        assert_eq!(binary.as_str(), "not UTF-8 text (invalid byte at offset 0)");
        request(Some(b"[1,2]"), &mut Vec::new()).expect("any JSON value may be sent");
    }

    fn replies(reply: &[u8]) -> Result<Vec<String>, Rejection> {
        let mut out = Outputs::default();
        outputs(reply, &mut out)?;
        out.done();
        let Verdict::Outputs(range) = out.verdicts()[0].clone() else { unreachable!() };
        Ok(range.map(|i| String::from_utf8(out.output(i).to_vec()).unwrap()).collect())
    }

    #[test]
    fn an_object_is_one_event_and_an_array_any_number() {
        assert_eq!(replies(b"{\"a\": 1}\r").unwrap(), ["{\"a\": 1}"]);
        assert_eq!(replies(b"[{\"a\":1}, {\"b\":[2]}]").unwrap(), ["{\"a\":1}", "{\"b\":[2]}"]);
        assert!(replies(b"[]").unwrap().is_empty(), "[] drops the event");
    }

    #[test]
    fn anything_else_is_refused_and_says_why() {
        for (bad, why) in [
            (&b"Traceback (most recent call last):"[..], "is not JSON"),
            (b"{\"a\":", "is not JSON"),
            (b"42", "is neither a JSON object nor an array"),
            (b"\"x\"", "is neither a JSON object nor an array"),
            (b"[{\"a\":1}, 2]", "element 1 is not an object"),
            (b"", "is empty"),
            (b"{\"a\":1} {\"b\":2}", "is not JSON"),
        ] {
            let e = replies(bad).unwrap_err();
            assert!(
                matches!(&e, Rejection::Reply(m) if m.contains(why)),
                "{e:?} for {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
