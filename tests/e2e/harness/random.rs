//! A tiny deterministic generator for tests that act at random moments: each prints its seed, and `SEED=<n>` replays
//! a failing run.

pub struct Random(u64);

impl Random {
    /// Seeded from `SEED` if set, else from the clock; says which.
    pub fn from_env() -> Random {
        let seed = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("seed {seed} (SEED={seed} replays this run)");
        Random(seed | 1)
    }

    /// A number below `n` (xorshift).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
