//! The md5 transform: a JSON object in, the same bytes out with `"hash"` (md5 hex of the raw input) added.
//!
//! The input is validated by serde_json but never re-serialised: the output is the input with `,"hash":"…"`
//! spliced in before the closing brace, so field order, spacing and number formatting survive byte for byte.
//! An input that already has a top-level `"hash"` gets that value replaced in place.

use super::{not_json, Outputs, PerEvent, Rejection};
use crate::channel::batch::Record;
use md5::{Digest, Md5 as Md5Hasher};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::ops::Range;

/// The md5 of `bytes` as 32 lowercase hex digits.
pub fn md5_hex(bytes: &[u8]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Md5Hasher::digest(bytes);
    let mut out = [0u8; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    out
}

/// Today's transform: adds `"hash"`, byte for byte.
#[derive(Debug, Default, Clone, Copy)]
pub struct Md5;

impl PerEvent for Md5 {
    fn apply(&mut self, record: &Record<'_>, out: &mut Outputs) -> Result<(), Rejection> {
        out.push_with(|bytes| add_hash(record.payload.map(|p| &p[..]), bytes))
    }
}

/// Appends the transformed event to `out`, or says why it cannot be transformed.
pub fn add_hash(payload: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), Rejection> {
    let input = payload.ok_or(Rejection::NullPayload)?;
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::EmptyPayload);
    }
    let shape = scan_object(input)?;
    let hash = md5_hex(input);
    out.reserve(input.len() + 48);
    if shape.hash_values.is_empty() {
        // validated as an object, so the last non-blank byte is its closing brace
        let close = input.iter().rposition(|b| !b.is_ascii_whitespace()).unwrap_or(0);
        out.extend_from_slice(&input[..close]);
        if shape.fields > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"hash\":\"");
        out.extend_from_slice(&hash);
        out.push(b'"');
        out.extend_from_slice(&input[close..]);
    } else {
        let mut at = 0;
        for span in &shape.hash_values {
            out.extend_from_slice(&input[at..span.start]);
            out.push(b'"');
            out.extend_from_slice(&hash);
            out.push(b'"');
            at = span.end;
        }
        out.extend_from_slice(&input[at..]);
    }
    Ok(())
}

struct Shape {
    fields: usize,
    /// Byte ranges of the values of any top-level "hash" fields already there.
    hash_values: Vec<Range<usize>>,
}

fn scan_object(input: &[u8]) -> Result<Shape, Rejection> {
    let reject = |e: serde_json::Error| Rejection::NotAnObject(not_json(input, &e));
    let mut de = serde_json::Deserializer::from_slice(input);
    let shape = de.deserialize_map(ObjectScan { base: input.as_ptr() as usize }).map_err(reject)?;
    de.end().map_err(reject)?;
    Ok(shape)
}

struct ObjectScan {
    base: usize,
}

impl<'de> Visitor<'de> for ObjectScan {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut shape = Shape { fields: 0, hash_values: Vec::new() };
        while let Some(IsHash(is_hash)) = map.next_key()? {
            let value: &'de RawValue = map.next_value()?;
            if is_hash {
                // RawValue borrows from the input, so its address gives its position there.
                let start = value.get().as_ptr() as usize - self.base;
                shape.hash_values.push(start..start + value.get().len());
            }
            shape.fields += 1;
        }
        Ok(shape)
    }
}

/// A key, compared with "hash" without allocating.
struct IsHash(bool);

impl<'de> de::Deserialize<'de> for IsHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsHash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IsHash, E> {
                Ok(IsHash(v == "hash"))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform(input: &[u8]) -> Result<String, Rejection> {
        let mut out = Vec::new();
        add_hash(Some(input), &mut out).map(|()| String::from_utf8(out).unwrap())
    }

    fn md5_str(input: &[u8]) -> String {
        String::from_utf8(md5_hex(input).to_vec()).unwrap()
    }

    #[test]
    fn md5_hex_matches_known_digests() {
        assert_eq!(md5_str(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_str(b"The quick brown fox jumps over the lazy dog"), "9e107d9d372bb6826bd81d3542a419d6");
    }

    #[test]
    fn the_hash_is_appended_and_everything_else_kept_byte_for_byte() {
        let input = br#"{"first_name": "Bonita", "last_name": "Kautzer", "n": 1.50, "z": {"hash": 1}}"#;
        let out = transform(input).unwrap();
        let want = format!(
            r#"{{"first_name": "Bonita", "last_name": "Kautzer", "n": 1.50, "z": {{"hash": 1}},"hash":"{}"}}"#,
            md5_str(input)
        );
        assert_eq!(out, want);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["hash"], md5_str(input));
    }

    #[test]
    fn field_order_is_kept() {
        let out = transform(br#"{"z":1,"a":2,"m":3}"#).unwrap();
        let keys: Vec<&str> = ["\"z\"", "\"a\"", "\"m\"", "\"hash\""].to_vec();
        let pos: Vec<usize> = keys.iter().map(|k| out.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{out}");
    }

    #[test]
    fn empty_objects_and_surrounding_blanks_work() {
        let h = md5_str(b" {} \n");
        assert_eq!(transform(b" {} \n").unwrap(), format!(" {{\"hash\":\"{h}\"}} \n"));
    }

    #[test]
    fn an_existing_hash_is_replaced_in_place() {
        let input = br#"{"a":1, "hash" : [1,2,{"x":"}"}], "b":2}"#;
        let h = md5_str(input);
        assert_eq!(transform(input).unwrap(), format!(r#"{{"a":1, "hash" : "{h}", "b":2}}"#));
        let escaped = br#"{"h\u0061sh":null}"#;
        assert_eq!(transform(escaped).unwrap(), format!(r#"{{"h\u0061sh":"{}"}}"#, md5_str(escaped)));
    }

    #[test]
    fn unicode_passes_through() {
        let input = "{\"name\":\"Zoë 日本\"}".as_bytes();
        assert!(transform(input).unwrap().starts_with("{\"name\":\"Zoë 日本\",\"hash\":"));
    }

    #[test]
    fn anything_but_an_object_is_rejected() {
        let mut out = Vec::new();
        assert_eq!(add_hash(None, &mut out), Err(Rejection::NullPayload));
        assert_eq!(transform(b""), Err(Rejection::EmptyPayload));
        assert_eq!(transform(b"  \n"), Err(Rejection::EmptyPayload));
        for bad in [
            &b"[1,2]"[..],
            b"null",
            b"42",
            b"\"str\"",
            b"{\"a\":1",
            b"{\"a\":1}}",
            b"{\"a\":1} x",
            b"{\"a\":\"\xff\xfe\"}",
            b"\x00\x01\x02",
            b"{a:1}",
        ] {
            assert!(matches!(transform(bad), Err(Rejection::NotAnObject(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        let binary = transform(b"\xff\xd8\xff\xe0 a JPEG").unwrap_err();
        assert_eq!(binary.as_str(), "not UTF-8 text (invalid byte at offset 0)");
        let inside = transform(b"{\"a\":\"\xff\"}").unwrap_err();
        assert_eq!(inside.as_str(), "not UTF-8 text (invalid byte at offset 6)");
    }

    #[test]
    fn deeply_nested_objects_are_valid_and_do_not_overflow_the_stack() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let out = transform(deep.as_bytes()).unwrap();
        assert!(out.ends_with(&format!("],\"hash\":\"{}\"}}", md5_str(deep.as_bytes()))));
        let unbalanced = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(99_999));
        assert!(matches!(transform(unbalanced.as_bytes()), Err(Rejection::NotAnObject(_))));
    }
}
