//! Tools built on the public parts: the embedded demo and the single-process yardstick.

pub mod demo;
pub mod demo_branch;
pub mod demo_cdc;
pub mod demo_sql;
pub mod demo_window;
pub mod yardstick;
