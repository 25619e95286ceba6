//! The transforms a worker runs on each event. Today one: [`md5::Md5`], which adds `"hash"`.

pub mod md5;

use std::fmt;

/// What a worker does to each event's payload.
pub trait Transform {
    /// Writes the output event into `out` (cleared first), or says why the event cannot be transformed: it then goes
    /// to the dead-letter destination unchanged.
    fn apply(&mut self, payload: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), Rejection>;
}

/// Why an event cannot be transformed; it goes to the dead-letter destination with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A tombstone: the event has no payload at all.
    NullPayload,
    EmptyPayload,
    /// Not valid JSON, or valid JSON that is not an object.
    NotAnObject(String),
}

impl Rejection {
    /// A short, stable name, used in the dead-letter header.
    pub fn as_str(&self) -> &str {
        match self {
            Rejection::NullPayload => "null payload",
            Rejection::EmptyPayload => "empty payload",
            Rejection::NotAnObject(why) => why,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
