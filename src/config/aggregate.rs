//! What `--aggregate`, `--group-by`, `--window`, `--event-time`, `--lateness`, `--emit` and `--idle-timeout` say,
//! read as pure logic into an [`Aggregation`]. The jq expressions inside are kept as text here, and compiled by the
//! operator (`crate::aggregate`), in the process that runs it.

use super::Cli;
use std::fmt;

/// The aggregation the flags ask for, settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregation {
    pub aggregates: Vec<Named>,
    /// `--group-by`; `None`: the event's key.
    pub group_by: Option<String>,
    pub window: Window,
    /// `--event-time`; `None`: the message's timestamp (a table row: the time it was read).
    pub event_time: Option<String>,
    /// Milliseconds.
    pub lateness: i64,
    pub emit: Emit,
    /// Milliseconds.
    pub idle_timeout: i64,
}

impl Aggregation {
    /// `None` without `--aggregate`; the other flags of the family are refused without it.
    pub fn resolve(cli: &Cli) -> Result<Option<Aggregation>, String> {
        let Some(text) = &cli.aggregate else {
            let given = [
                ("--group-by", cli.group_by.is_some()),
                ("--window", cli.window.is_some()),
                ("--event-time", cli.event_time.is_some()),
                ("--emit", cli.emit.is_some()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                return Err(format!("{flag} needs --aggregate: what to compute, e.g. --aggregate '{{n: count}}'"));
            }
            return Ok(None);
        };
        let aggregates = aggregates(text).map_err(|e| format!("--aggregate: {e}"))?;
        if cli.output_key.is_some() {
            return Err(
                "--output-key does not go with --aggregate, whose results are keyed by their group key: re-key \
                        the topic in a pipeline of its own first (--jq . --output-key EXPR)"
                    .into(),
            );
        }
        let window = match &cli.window {
            Some(w) => window(w).map_err(|e| format!("--window: {e}"))?,
            None => Window::Running,
        };
        let has_fold = aggregates.iter().any(|n| matches!(n.agg, Agg::Fold(..)));
        if has_fold && matches!(window, Window::Session { .. }) {
            return Err("--aggregate: fold cannot be used with session windows: two sessions that an event joins \
                        would need their folds merged, and a fold has no merge"
                .into());
        }
        let lateness = duration(&cli.lateness, true).map_err(|e| format!("--lateness: {e}"))?;
        let idle_timeout = duration(&cli.idle_timeout, false).map_err(|e| format!("--idle-timeout: {e}"))?;
        let emit = match (cli.emit, window) {
            (Some(e), _) => e,
            (None, Window::Running) => Emit::Every,
            (None, _) => Emit::Final,
        };
        Ok(Some(Aggregation {
            aggregates,
            group_by: cli.group_by.clone(),
            window,
            event_time: cli.event_time.clone(),
            lateness,
            emit,
            idle_timeout,
        }))
    }

    /// What the saved state was computed by: a state made by other settings is not this aggregation's.
    pub fn fingerprint(&self) -> String {
        let aggs: Vec<String> = self.aggregates.iter().map(|n| format!("{}: {:?}", n.name, n.agg)).collect();
        format!(
            "aggregate {{{}}} group-by {:?} window {} event-time {:?} lateness {}",
            aggs.join(", "),
            self.group_by,
            self.window,
            self.event_time,
            Millis(self.lateness)
        )
    }
}

/// One named aggregate of `--aggregate`: `total: sum(.amount)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub agg: Agg,
}

/// An aggregate and the jq expressions it reads, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agg {
    Count,
    Sum(String),
    Avg(String),
    Min(String),
    Max(String),
    First(String),
    Last(String),
    /// An exact count of distinct values.
    Distinct(String),
    /// The `k` most frequent values, with their counts.
    Top(usize, String),
    /// `fold(INIT; UPDATE)`: as jq's `reduce .[] as $event (INIT; UPDATE)`.
    Fold(String, String),
}

impl Agg {
    /// The jq expressions it runs on each event, in order.
    pub fn expressions(&self) -> Vec<&str> {
        match self {
            Agg::Count => vec![],
            Agg::Sum(f)
            | Agg::Avg(f)
            | Agg::Min(f)
            | Agg::Max(f)
            | Agg::First(f)
            | Agg::Last(f)
            | Agg::Distinct(f)
            | Agg::Top(_, f) => vec![f],
            Agg::Fold(init, update) => vec![init, update],
        }
    }
}

/// `--window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// No window: one running aggregate per key that never closes.
    Running,
    Tumbling {
        size: i64,
    },
    Hopping {
        size: i64,
        step: i64,
    },
    Session {
        gap: i64,
    },
}

/// `--emit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Emit {
    Final,
    Every,
}

impl std::str::FromStr for Emit {
    type Err = String;
    fn from_str(s: &str) -> Result<Emit, String> {
        match s {
            "final" => Ok(Emit::Final),
            "every" => Ok(Emit::Every),
            _ => Err(format!("'{s}' is not final or every")),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |ms: i64| Millis(ms).to_string();
        match *self {
            Window::Running => f.write_str("running"),
            Window::Tumbling { size } => write!(f, "tumbling={}", d(size)),
            Window::Hopping { size, step } => write!(f, "hopping={},{}", d(size), d(step)),
            Window::Session { gap } => write!(f, "session={}", d(gap)),
        }
    }
}

/// A duration in milliseconds, written back the way `--window` takes it.
pub struct Millis(pub i64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, ms) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
            if self.0 != 0 && self.0 % ms == 0 {
                return write!(f, "{}{unit}", self.0 / ms);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

/// `500ms`, `10s`, `5m`, `1h`, `1d` as milliseconds; `0s` only where `zero` allows it.
pub fn duration(s: &str, zero: bool) -> Result<i64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("'{s}' is not a duration: a whole number and ms, s, m, h or d (500ms, 10s, 5m, 1h)")),
    };
    let n: i64 = number.parse().map_err(|_| format!("'{s}' is not a duration: it has no number (10s)"))?;
    let ms = n.checked_mul(scale).filter(|ms| *ms <= 366 * 86_400_000).ok_or(format!("'{s}' is longer than a year"))?;
    if ms == 0 && !zero {
        return Err(format!("'{s}' is no time at all: a window needs a length"));
    }
    Ok(ms)
}

/// `tumbling=10s`, `hopping=1m,10s` (size, then step), `session=30s`.
pub fn window(s: &str) -> Result<Window, String> {
    let (kind, value) = s.split_once('=').ok_or_else(|| {
        format!("'{s}' is not a window: tumbling=DURATION, hopping=SIZE,STEP or session=GAP (tumbling=10s)")
    })?;
    match kind.trim() {
        "tumbling" => Ok(Window::Tumbling { size: duration(value, false)? }),
        "session" => Ok(Window::Session { gap: duration(value, false)? }),
        "hopping" => {
            let (size, step) = value.split_once(',').ok_or_else(|| format!("'{s}': hopping takes SIZE,STEP"))?;
            let (size, step) = (duration(size, false)?, duration(step, false)?);
            if step > size {
                return Err(format!("'{s}': a hop longer than the window would leave events out of every window"));
            }
            if size % step != 0 {
                return Err(format!("'{s}': the size must be a whole number of steps"));
            }
            Ok(Window::Hopping { size, step })
        }
        other => Err(format!("'{other}' is not a kind of window: tumbling, hopping or session")),
    }
}

/// `{orders: count, total: sum(.amount)}`: the named aggregates in their order. A name is an identifier or a quoted
/// string; each aggregate's arguments are jq expressions, split at the `;` that are not inside brackets or strings.
pub fn aggregates(s: &str) -> Result<Vec<Named>, String> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or("it is not an object: {name: aggregate, ...}, e.g. {orders: count, total: sum(.amount)}")?;
    let mut named: Vec<Named> = Vec::new();
    if inner.trim().is_empty() {
        return Err("it names no aggregate: {orders: count}".into());
    }
    for entry in split_top(inner, b',')? {
        if entry.trim().is_empty() {
            return Err("an entry is empty (two commas in a row?)".into());
        }
        let (name, call) = split_name(entry)?;
        if named.iter().any(|n| n.name == name) || ["key", "window_start", "window_end"].contains(&name.as_str()) {
            return Err(format!("'{name}' is named twice (key, window_start and window_end are the output's own)"));
        }
        let agg = call_of(call.trim()).map_err(|e| format!("{name}: {e}"))?;
        named.push(Named { name, agg });
    }
    if named.is_empty() {
        return Err("it names no aggregate: {orders: count}".into());
    }
    Ok(named)
}

fn split_name(entry: &str) -> Result<(String, &str), String> {
    let entry = entry.trim_start();
    if entry.starts_with('"') {
        // The name is a JSON string; find where it ends.
        let end = string_end(entry.as_bytes(), 0).ok_or("a name's string is not closed")?;
        let name: String = serde_json::from_str(&entry[..=end]).map_err(|e| format!("a name's string: {e}"))?;
        let rest = entry[end + 1..].trim_start().strip_prefix(':').ok_or(format!("'{name}' has no ':' after it"))?;
        return Ok((name, rest));
    }
    let (name, rest) = entry.split_once(':').ok_or(format!("'{}' has no name: NAME: AGGREGATE", entry.trim()))?;
    let name = name.trim();
    let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ident {
        return Err(format!("'{name}' is not a name: letters, digits and _, or a \"quoted string\""));
    }
    Ok((name.to_string(), rest))
}

const KNOWN: &str =
    "count, sum(f), avg(f), min(f), max(f), first(f), last(f), distinct(f), top(k; f), fold(INIT; UPDATE)";

fn call_of(call: &str) -> Result<Agg, String> {
    let (name, args) = match call.find('(') {
        Some(open) => {
            let args = call[open + 1..].strip_suffix(')').ok_or(format!("'{call}' does not end with ')'"))?;
            (call[..open].trim(), split_top(args, b';')?.into_iter().map(str::trim).collect::<Vec<_>>())
        }
        None => (call, Vec::new()),
    };
    let one = |f: fn(String) -> Agg| -> Result<Agg, String> {
        match args.as_slice() {
            [e] if !e.is_empty() => Ok(f(e.to_string())),
            _ => Err(format!("{name} takes one jq expression: {name}(.amount)")),
        }
    };
    match name {
        "count" if args.is_empty() => Ok(Agg::Count),
        "count" => Err("count takes no argument".into()),
        "sum" => one(Agg::Sum),
        "avg" => one(Agg::Avg),
        "min" => one(Agg::Min),
        "max" => one(Agg::Max),
        "first" => one(Agg::First),
        "last" => one(Agg::Last),
        "distinct" => one(Agg::Distinct),
        "top" => match args.as_slice() {
            [k, f] if !f.is_empty() => {
                let k: usize = k
                    .parse()
                    .ok()
                    .filter(|k| (1..=10_000).contains(k))
                    .ok_or(format!("top's first argument is how many values to keep, 1 to 10000, not '{k}'"))?;
                Ok(Agg::Top(k, f.to_string()))
            }
            _ => Err("top takes a count and a jq expression: top(3; .item)".into()),
        },
        "fold" => match args.as_slice() {
            [init, update] if !init.is_empty() && !update.is_empty() => {
                Ok(Agg::Fold(init.to_string(), update.to_string()))
            }
            _ => Err("fold takes INIT and UPDATE: fold(0; . + $event.amount)".into()),
        },
        other => Err(format!("'{other}' is not an aggregate: use one of {KNOWN}")),
    }
}

/// The index of the quote that ends the JSON string starting at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// `s` split at every `sep` outside brackets and strings.
fn split_top(s: &str, sep: u8) -> Result<Vec<&str>, String> {
    let b = s.as_bytes();
    let (mut depth, mut from, mut i, mut parts) = (0i32, 0, 0, Vec::new());
    while i < b.len() {
        match b[i] {
            b'"' => i = string_end(b, i).ok_or("a string is not closed")?,
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("'{}' closes a bracket it never opened", b[i] as char));
                }
            }
            c if c == sep && depth == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err("a bracket is not closed".into());
    }
    parts.push(&s[from..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_of_aggregates_is_read_in_its_order() {
        let a = aggregates(
            r#"{orders: count, total: sum(.amount), "avg price": avg(.items | map(.price) | add), top: top(3; .item),
                f: fold({n: 0}; .n += ($event.amount // 0)), s: distinct(.tags[0] // "none")}"#,
        )
        .unwrap();
        let names: Vec<_> = a.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["orders", "total", "avg price", "top", "f", "s"]);
        assert_eq!(a[0].agg, Agg::Count);
        assert_eq!(a[2].agg, Agg::Avg(".items | map(.price) | add".into()));
        assert_eq!(a[3].agg, Agg::Top(3, ".item".into()));
        assert_eq!(a[4].agg, Agg::Fold("{n: 0}".into(), ".n += ($event.amount // 0)".into()));
        assert_eq!(a[5].agg, Agg::Distinct(r#".tags[0] // "none""#.into()));
    }

    #[test]
    fn a_bad_object_says_what_is_wrong() {
        for (bad, says) in [
            ("orders: count", "not an object"),
            ("{}", "names no aggregate"),
            ("{n: count(.a)}", "count takes no argument"),
            ("{n: median(.a)}", "'median' is not an aggregate"),
            ("{n: sum()}", "sum takes one jq expression"),
            ("{n: sum(.a}", "not closed"),
            ("{n: top(x; .a)}", "how many values"),
            ("{n: count, n: sum(.a)}", "named twice"),
            ("{key: count}", "named twice"),
            ("{2n: count}", "is not a name"),
            ("{count}", "has no name"),
            ("{a: count,, b: count}", "empty"),
        ] {
            let e = aggregates(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_and_windows() {
        assert_eq!(duration("500ms", false), Ok(500));
        assert_eq!(duration("10s", false), Ok(10_000));
        assert_eq!(duration("5m", false), Ok(300_000));
        assert_eq!(duration("1h", false), Ok(3_600_000));
        assert_eq!(duration("0s", true), Ok(0));
        for bad in ["0s", "10", "s", "1.5s", "-1s", "10 sec", "400d"] {
            assert!(duration(bad, false).is_err(), "{bad}");
        }
        assert_eq!(window("tumbling=10s"), Ok(Window::Tumbling { size: 10_000 }));
        assert_eq!(window("hopping=1m,10s"), Ok(Window::Hopping { size: 60_000, step: 10_000 }));
        assert_eq!(window("session=30s"), Ok(Window::Session { gap: 30_000 }));
        assert!(window("hopping=10s,1m").unwrap_err().contains("hop longer"));
        assert!(window("hopping=10s,3s").unwrap_err().contains("whole number of steps"));
        assert!(window("sliding=10s").unwrap_err().contains("not a kind of window"));
        assert!(window("10s").unwrap_err().contains("tumbling=DURATION"));
        assert_eq!(Window::Hopping { size: 60_000, step: 1500 }.to_string(), "hopping=1m,1500ms");
    }
}
