//! A row's key: what a scan orders and splits on, and what a checkpoint remembers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A key value. Integer and text keys are what `ORDER BY key` orders the same way in every database (by number, by
/// the column's collation); other key types are read as text. (Tagged on our channels: bincode cannot read an untagged
/// enum back.)
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Int(i64),
    Text(String),
}

impl Key {
    /// As the checkpoint store keeps it: JSON, so that 10 and "10" stay apart.
    pub fn to_json(&self) -> String {
        match self {
            Key::Int(i) => i.to_string(),
            Key::Text(s) => serde_json::Value::from(s.as_str()).to_string(),
        }
    }

    pub fn from_json(text: &str) -> Result<Key, String> {
        match serde_json::from_str(text) {
            Ok(serde_json::Value::String(s)) => Ok(Key::Text(s)),
            Ok(serde_json::Value::Number(n)) if n.is_i64() => Ok(Key::Int(n.as_i64().unwrap_or_default())),
            Ok(other) => Err(format!("a checkpointed key {other} is neither an integer nor a string")),
            Err(e) => Err(format!("a checkpointed key {text:?} cannot be read: {e}")),
        }
    }

    /// The bytes the key travels as, the event's key in Kafka terms.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Key::Int(i) => i.to_string().into_bytes(),
            Key::Text(s) => s.clone().into_bytes(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Text(s) => write!(f, "{s:?}"),
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
        for k in [Key::Int(-5), Key::Int(i64::MAX), Key::Text("10".into()), Key::Text("é \"q\"".into())] {
            assert_eq!(Key::from_json(&k.to_json()).unwrap(), k);
        }
        assert_eq!(Key::Int(10).to_json(), "10");
        assert_eq!(Key::Text("10".into()).to_json(), "\"10\"");
        assert!(Key::from_json("[1]").is_err());
        assert!(Key::from_json("1.5").is_err());
        // And on our channels, in bincode.
        let cfg = bincode::config::standard();
        for k in [Key::Int(7), Key::Text("x".into())] {
            let bytes = bincode::serde::encode_to_vec(&k, cfg).unwrap();
            assert_eq!(bincode::serde::decode_from_slice::<Key, _>(&bytes, cfg).unwrap().0, k);
        }
    }
}
