//! The `--max-dead-letters` setting: when dead letters stop being the odd bad event. The sink's judge
//! (`sink::refusals`) applies it.

use std::fmt;
use std::str::FromStr;

/// Fates a share is judged over: the most recent ones.
pub const WINDOW: usize = 1000;

/// The `--max-dead-letters` setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDeadLetters {
    Off,
    /// Percent of the last [`WINDOW`] events, above which the pipeline stops.
    Share(f64),
    /// Dead letters in all, above which the pipeline stops.
    Count(u64),
}

impl Default for MaxDeadLetters {
    fn default() -> MaxDeadLetters {
        MaxDeadLetters::Share(10.0)
    }
}

impl FromStr for MaxDeadLetters {
    type Err = String;

    fn from_str(s: &str) -> Result<MaxDeadLetters, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(MaxDeadLetters::Off);
        }
        let wrong = || format!("{s:?}: expected a share of the last {WINDOW} events (10%), a count (500) or off");
        match s.strip_suffix('%') {
            Some(share) => match share.trim().parse::<f64>() {
                Ok(p) if (0.0..100.0).contains(&p) => Ok(MaxDeadLetters::Share(p)),
                Ok(_) => Err(format!("{s:?}: a share is at least 0% and under 100% (use off to never stop)")),
                Err(_) => Err(wrong()),
            },
            None => s.parse::<u64>().map(MaxDeadLetters::Count).map_err(|_| wrong()),
        }
    }
}

impl fmt::Display for MaxDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxDeadLetters::Off => f.write_str("off"),
            MaxDeadLetters::Share(p) => write!(f, "{p}%"),
            MaxDeadLetters::Count(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_reads_a_share_a_count_or_off() {
        assert_eq!("10%".parse(), Ok(MaxDeadLetters::Share(10.0)));
        assert_eq!(" 0.5 % ".parse(), Ok(MaxDeadLetters::Share(0.5)));
        assert_eq!("500".parse(), Ok(MaxDeadLetters::Count(500)));
        assert_eq!("OFF".parse(), Ok(MaxDeadLetters::Off));
        assert!("100%".parse::<MaxDeadLetters>().unwrap_err().contains("under 100%"));
        assert!("ten".parse::<MaxDeadLetters>().unwrap_err().contains("expected a share"));
        assert_eq!(MaxDeadLetters::default().to_string(), "10%");
    }
}
