//! Sources: where events come from.

pub mod gate;
pub mod kafka;
pub mod watermark;
