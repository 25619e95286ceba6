//! A row's key: what a scan orders and splits on, and what a checkpoint remembers. A key has one part per key column
//! (`key=tenant_id,id` gives two), compared as a tuple, in the columns' order.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One column's value in a key. Integer and text keys are what `ORDER BY key` orders the same way in every database
/// (by number, by the column's collation); other key types are read as text. (Tagged on our channels: bincode cannot
/// read an untagged enum back.)
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Int(i64),
    Text(String),
}

impl Part {
    fn to_value(&self) -> serde_json::Value {
        match self {
            Part::Int(i) => serde_json::Value::from(*i),
            Part::Text(s) => serde_json::Value::from(s.as_str()),
        }
    }

    fn from_value(v: serde_json::Value) -> Result<Part, String> {
        match v {
            serde_json::Value::String(s) => Ok(Part::Text(s)),
            serde_json::Value::Number(n) if n.is_i64() => Ok(Part::Int(n.as_i64().unwrap_or_default())),
            other => Err(format!("a checkpointed key {other} is neither an integer nor a string")),
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Int(i) => write!(f, "{i}"),
            Part::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// A key value: one part per key column, never none.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub Vec<Part>);

impl Key {
    /// A one-column integer key.
    pub fn int(i: i64) -> Key {
        Key(vec![Part::Int(i)])
    }

    /// A one-column text key.
    pub fn text(s: impl Into<String>) -> Key {
        Key(vec![Part::Text(s.into())])
    }

    /// The parts as JSON: a one-column key as its value, a composite key as the array of its parts.
    fn to_value(&self) -> serde_json::Value {
        match self.0.as_slice() {
            [one] => one.to_value(),
            parts => serde_json::Value::Array(parts.iter().map(Part::to_value).collect()),
        }
    }

    /// As the checkpoint store keeps it: JSON, so that 10 and "10" stay apart; a composite key is a JSON array
    /// (`[7,"x"]`), a one-column key its bare value, as before composite keys were.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    pub fn from_json(text: &str) -> Result<Key, String> {
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Array(parts)) if !parts.is_empty() => {
                Ok(Key(parts.into_iter().map(Part::from_value).collect::<Result<_, _>>()?))
            }
            Ok(serde_json::Value::Array(_)) => Err("a checkpointed key is an empty array".to_string()),
            Ok(v) => Ok(Key(vec![Part::from_value(v)?])),
            Err(e) => Err(format!("a checkpointed key {text:?} cannot be read: {e}")),
        }
    }

    /// The bytes the key travels as, the event's key in Kafka terms: a one-column key's value as text (`42`, `abc`),
    /// a composite key's parts as a compact JSON array (`[42,"abc"]`).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self.0.as_slice() {
            [Part::Int(i)] => i.to_string().into_bytes(),
            [Part::Text(s)] => s.clone().into_bytes(),
            _ => self.to_json().into_bytes(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            parts => {
                f.write_str("(")?;
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{p}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// What kind of values a key column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Int,
    Text,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_checkpoint_store_keeping_their_type() {
        let pair = Key(vec![Part::Int(7), Part::Text("x,\"y\"".into())]);
        for k in [Key::int(-5), Key::int(i64::MAX), Key::text("10"), Key::text("é \"q\""), pair.clone()] {
            assert_eq!(Key::from_json(&k.to_json()).unwrap(), k);
        }
        // A one-column key is kept as before composite keys: checkpoints of earlier versions still read.
        assert_eq!(Key::int(10).to_json(), "10");
        assert_eq!(Key::text("10").to_json(), "\"10\"");
        assert_eq!(Key::from_json("[1]").unwrap(), Key::int(1));
        assert_eq!(pair.to_json(), r#"[7,"x,\"y\""]"#);
        assert!(Key::from_json("[]").is_err());
        assert!(Key::from_json("1.5").is_err());
        assert!(Key::from_json("[1,[2]]").is_err());
        // The event's key, and how the log shows one.
        assert_eq!(Key::int(42).to_bytes(), b"42");
        assert_eq!(Key::text("abc").to_bytes(), b"abc");
        assert_eq!(pair.to_bytes(), br#"[7,"x,\"y\""]"#);
        assert_eq!(pair.to_string(), r#"(7, "x,\"y\"")"#);
        assert_eq!(Key::text("a").to_string(), "\"a\"");
        // Tuples order part by part.
        assert!(Key(vec![Part::Int(1), Part::Int(9)]) < Key(vec![Part::Int(2), Part::Int(0)]));
        // And on our channels, in bincode.
        let cfg = bincode::config::standard();
        for k in [Key::int(7), Key::text("x"), pair] {
            let bytes = bincode::serde::encode_to_vec(&k, cfg).unwrap();
            assert_eq!(bincode::serde::decode_from_slice::<Key, _>(&bytes, cfg).unwrap().0, k);
        }
    }
}
