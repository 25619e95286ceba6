//! SIGINT and SIGTERM, counted: the first starts a drain, a second one during the drain stops everything at once.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts SIGINT/SIGTERM arrivals; the handler only touches atomics, which is async-signal-safe.
#[derive(Clone)]
pub struct Signals {
    count: Arc<AtomicUsize>,
    last: Arc<AtomicI32>,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let s = Signals { count: Arc::new(AtomicUsize::new(0)), last: Arc::new(AtomicI32::new(0)) };
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let (count, last) = (s.count.clone(), s.last.clone());
            // SAFETY: the handler only stores to atomics.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    last.store(sig, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                })
            }
            .map_err(Error::InstallSignals)?;
        }
        Ok(s)
    }

    /// Whether a SIGINT or SIGTERM has arrived.
    pub fn received(&self) -> bool {
        self.count() > 0
    }

    /// How many have arrived.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The last one's name.
    pub fn last_name(&self) -> &'static str {
        match self.last.load(Ordering::SeqCst) {
            signal_hook::consts::SIGTERM => "SIGTERM",
            _ => "SIGINT",
        }
    }
}
