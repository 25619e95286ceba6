//! One aggregate's running value, as pure logic: updated by an event's values, merged with another (two sessions
//! joined by an event between them), written as the result's field and saved as JSON.
//!
//! Every result is a function of the set of events, not of their order, except `fold`, which applies events in the
//! order they arrive. Sums are exact: integers in 128 bits, floats as Shewchuk's non-overlapping partials, rounded
//! once when written, so a sum replayed in another order after a crash is the same number to the last bit. `first`
//! and `last` are by event time, ties broken by the value.

use crate::config::aggregate::Agg;
use jaq_json::Val;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// Whether `value` is one the aggregate can take: a sum takes numbers (and skips null), as SQL's does.
pub fn check(agg: &Agg, value: &Val) -> Result<(), String> {
    match (agg, value) {
        (Agg::Sum(_) | Agg::Avg(_), Val::Null | Val::Int(_) | Val::Float(_) | Val::Num(_)) => Ok(()),
        (Agg::Sum(_), other) => Err(format!("sum of a value that is not a number: {other}")),
        (Agg::Avg(_), other) => Err(format!("avg of a value that is not a number: {other}")),
        _ => Ok(()),
    }
}

/// An aggregate's running value.
#[derive(Debug, Clone, PartialEq)]
pub enum Acc {
    Count(u64),
    // Boxed: a sum is the largest aggregate, and every window holds its aggregates side by side.
    Sum(Box<Sum>),
    Avg(Box<Sum>),
    Min(Option<Val>),
    Max(Option<Val>),
    First(Option<(i64, Val)>),
    Last(Option<(i64, Val)>),
    /// Each distinct value's compact JSON.
    Distinct(BTreeSet<String>),
    /// How often each value (its compact JSON) came, and how many to show.
    Top(usize, BTreeMap<String, u64>),
    Fold(Val),
}

impl Acc {
    /// The empty aggregate; `init` is a fold's INIT, evaluated once.
    pub fn new(agg: &Agg, init: Option<Val>) -> Acc {
        match agg {
            Agg::Count => Acc::Count(0),
            Agg::Sum(_) => Acc::Sum(Box::default()),
            Agg::Avg(_) => Acc::Avg(Box::default()),
            Agg::Min(_) => Acc::Min(None),
            Agg::Max(_) => Acc::Max(None),
            Agg::First(_) => Acc::First(None),
            Agg::Last(_) => Acc::Last(None),
            Agg::Distinct(_) => Acc::Distinct(BTreeSet::new()),
            Agg::Top(k, _) => Acc::Top(*k, BTreeMap::new()),
            Agg::Fold(..) => Acc::Fold(init.unwrap_or(Val::Null)),
        }
    }

    /// Takes one event's value (already checked); `time` is its event time. A fold's new value comes computed.
    pub fn update(&mut self, value: Val, time: i64) {
        match self {
            Acc::Count(n) => *n += 1,
            Acc::Sum(s) | Acc::Avg(s) => s.add(&value),
            // null is no value, as in SQL.
            _ if value == Val::Null && !matches!(self, Acc::Fold(_)) => {}
            Acc::Min(m) => {
                if m.as_ref().is_none_or(|m| value < *m) {
                    *m = Some(value);
                }
            }
            Acc::Max(m) => {
                if m.as_ref().is_none_or(|m| value > *m) {
                    *m = Some(value);
                }
            }
            Acc::First(f) => {
                if f.as_ref().is_none_or(|(t, v)| (time, &value) < (*t, v)) {
                    *f = Some((time, value));
                }
            }
            Acc::Last(l) => {
                if l.as_ref().is_none_or(|(t, v)| (time, &value) > (*t, v)) {
                    *l = Some((time, value));
                }
            }
            Acc::Distinct(set) => {
                set.insert(value.to_string());
            }
            Acc::Top(_, counts) => *counts.entry(value.to_string()).or_default() += 1,
            Acc::Fold(v) => *v = value,
        }
    }

    /// Takes in another window's value of the same aggregate (sessions that an event joined). A fold cannot be
    /// merged; sessions with a fold are refused when the flags are read.
    pub fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a), Acc::Sum(b)) | (Acc::Avg(a), Acc::Avg(b)) => a.merge(*b),
            (me @ (Acc::Min(_) | Acc::Max(_)), Acc::Min(Some(v)) | Acc::Max(Some(v))) => me.update(v, 0),
            (me @ (Acc::First(_) | Acc::Last(_)), Acc::First(Some((t, v))) | Acc::Last(Some((t, v)))) => {
                me.update(v, t)
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => a.extend(b),
            (Acc::Top(_, a), Acc::Top(_, b)) => {
                for (v, n) in b {
                    *a.entry(v).or_default() += n;
                }
            }
            _ => {}
        }
    }

    /// The result's field.
    pub fn result(&self) -> Val {
        match self {
            Acc::Count(n) => int(i128::from(*n)),
            Acc::Sum(s) => s.total(),
            Acc::Avg(s) => match s.values {
                0 => Val::Null,
                n => match s.total() {
                    Val::Int(i) => Val::Float(i as f64 / n as f64),
                    Val::Float(f) => Val::Float(f / n as f64),
                    other => other,
                },
            },
            Acc::Min(v) | Acc::Max(v) => v.clone().unwrap_or(Val::Null),
            Acc::First(v) | Acc::Last(v) => v.as_ref().map_or(Val::Null, |(_, v)| v.clone()),
            Acc::Distinct(set) => int(set.len() as i128),
            Acc::Top(k, counts) => {
                let mut all: Vec<(u64, Val)> = counts.iter().map(|(v, n)| (*n, parse(v))).collect();
                all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                all.truncate(*k);
                let entry = |(n, v): (u64, Val)| Val::from(json!({"count": n, "value": Value::from(v)}));
                Val::Arr(Rc::new(all.into_iter().map(entry).collect()))
            }
            Acc::Fold(v) => v.clone(),
        }
    }

    /// As saved in the state store.
    pub fn save(&self) -> Value {
        let val = |v: &Val| Value::from(v.clone());
        match self {
            Acc::Count(n) => json!(n),
            Acc::Sum(s) | Acc::Avg(s) => s.save(),
            Acc::Min(v) | Acc::Max(v) => v.as_ref().map_or(Value::Null, |v| json!([val(v)])),
            Acc::First(v) | Acc::Last(v) => v.as_ref().map_or(Value::Null, |(t, v)| json!([t, val(v)])),
            Acc::Distinct(set) => json!(set),
            Acc::Top(_, counts) => json!(counts),
            Acc::Fold(v) => val(v),
        }
    }

    /// `save`, written straight into `out`: the common aggregates without building a JSON value first.
    pub fn save_into(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Acc::Count(n) => {
                let _ = write!(out, "{n}");
            }
            Acc::Sum(s) | Acc::Avg(s) if s.special.is_none() => {
                let _ = write!(out, "{{\"i\":\"{}\",\"p\":[", s.int);
                for (i, p) in s.partials.iter().enumerate() {
                    // Shortest round-trip form: a partial read back is the same float.
                    let _ = write!(out, "{}{}", if i > 0 { "," } else { "" }, ryu::Buffer::new().format_finite(*p));
                }
                let _ = write!(out, "],\"x\":null,\"f\":{},\"n\":{}}}", s.floats, s.values);
            }
            other => out.push_str(&other.save().to_string()),
        }
    }

    /// Reads what `save` wrote, for this aggregate.
    pub fn load(agg: &Agg, saved: &Value) -> Option<Acc> {
        let val = |v: &Value| Val::from(v.clone());
        let opt = |f: &dyn Fn(&Value) -> Option<(i64, Val)>| match saved {
            Value::Null => Some(None),
            v => f(v).map(Some),
        };
        Some(match agg {
            Agg::Count => Acc::Count(saved.as_u64()?),
            Agg::Sum(_) => Acc::Sum(Box::new(Sum::load(saved)?)),
            Agg::Avg(_) => Acc::Avg(Box::new(Sum::load(saved)?)),
            Agg::Min(_) => Acc::Min(opt(&|v| Some((0, val(v.get(0)?))))?.map(|(_, v)| v)),
            Agg::Max(_) => Acc::Max(opt(&|v| Some((0, val(v.get(0)?))))?.map(|(_, v)| v)),
            Agg::First(_) => Acc::First(opt(&|v| Some((v.get(0)?.as_i64()?, val(v.get(1)?))))?),
            Agg::Last(_) => Acc::Last(opt(&|v| Some((v.get(0)?.as_i64()?, val(v.get(1)?))))?),
            Agg::Distinct(_) => Acc::Distinct(serde_json::from_value(saved.clone()).ok()?),
            Agg::Top(k, _) => Acc::Top(*k, serde_json::from_value(saved.clone()).ok()?),
            Agg::Fold(..) => Acc::Fold(val(saved)),
        })
    }
}

fn int(i: i128) -> Val {
    match isize::try_from(i) {
        Ok(i) => Val::Int(i),
        Err(_) => Val::Num(Rc::new(i.to_string())),
    }
}

fn parse(json: &str) -> Val {
    serde_json::from_str::<Value>(json).map(Val::from).unwrap_or(Val::Null)
}

/// An exact sum: integers in 128 bits, floats as non-overlapping partials whose exact sum is the floats' exact sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sum {
    int: i128,
    partials: Vec<f64>,
    /// An infinity or NaN met: IEEE arithmetic decides it, whatever the order.
    special: Option<f64>,
    floats: bool,
    /// Numbers taken (null is not one).
    values: u64,
}

impl Sum {
    fn add(&mut self, v: &Val) {
        match v {
            Val::Int(i) => self.add_int(*i as i128),
            Val::Float(f) => self.add_float(*f),
            Val::Num(n) => match n.parse::<i128>() {
                Ok(i) => self.add_int(i),
                Err(_) => self.add_float(n.parse().unwrap_or(f64::NAN)),
            },
            _ => return,
        }
        self.values += 1;
    }

    fn add_int(&mut self, i: i128) {
        match self.int.checked_add(i) {
            Some(sum) => self.int = sum,
            // Past 128 bits: on as floats, split so that no bit is lost in the conversion.
            None => {
                let hi = (i >> 64) as f64 * 2f64.powi(64);
                self.add_float(hi);
                self.add_float((i & 0xFFFF_FFFF_FFFF_FFFF) as f64);
            }
        }
    }

    /// Shewchuk's algorithm, as Python's `math.fsum` keeps it.
    fn add_float(&mut self, mut x: f64) {
        self.floats = true;
        if !x.is_finite() {
            self.special = Some(self.special.map_or(x, |s| s + x));
            return;
        }
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
            if !x.is_finite() {
                // The partials overflowed: the sum is that infinity.
                self.special = Some(self.special.map_or(x, |s| s + x));
                self.partials.clear();
                return;
            }
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    fn merge(&mut self, other: Sum) {
        self.add_int(other.int);
        for p in other.partials {
            self.add_float(p);
        }
        if let Some(s) = other.special {
            self.special = Some(self.special.map_or(s, |m| m + s));
        }
        self.floats |= other.floats;
        self.values += other.values;
    }

    /// The sum, correctly rounded when any float was in it; null when no number was.
    fn total(&self) -> Val {
        if self.values == 0 {
            return Val::Null;
        }
        if !self.floats {
            return int(self.int);
        }
        if let Some(s) = self.special {
            return Val::Float(s);
        }
        let mut all = self.clone();
        all.floats = true;
        let int = std::mem::take(&mut all.int);
        let hi = (int >> 64) as f64 * 2f64.powi(64);
        all.add_float(hi);
        all.add_float((int & 0xFFFF_FFFF_FFFF_FFFF) as f64);
        if let Some(s) = all.special {
            return Val::Float(s);
        }
        Val::Float(round(&all.partials))
    }

    fn save(&self) -> Value {
        // An infinity or NaN as text ("inf", "NaN"): JSON has no number for it.
        let special = self.special.map(|x| x.to_string());
        json!({"i": self.int.to_string(), "p": self.partials, "x": special, "f": self.floats, "n": self.values})
    }

    fn load(v: &Value) -> Option<Sum> {
        Some(Sum {
            int: v.get("i")?.as_str()?.parse().ok()?,
            partials: serde_json::from_value(v.get("p")?.clone()).ok()?,
            special: match v.get("x")? {
                Value::Null => None,
                x => Some(x.as_str()?.parse().ok()?),
            },
            floats: v.get("f")?.as_bool()?,
            values: v.get("n")?.as_u64()?,
        })
    }
}

/// The correctly rounded sum of non-overlapping partials in increasing magnitude (`math.fsum`'s last step).
fn round(partials: &[f64]) -> f64 {
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    // Half-way cases: round as the exact sum says, not as the first rounding did.
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(values: &[Val]) -> Val {
        let mut s = Acc::new(&Agg::Sum(".".into()), None);
        for v in values {
            s.update(v.clone(), 0);
        }
        s.result()
    }

    #[test]
    fn a_float_sum_is_the_same_in_any_order() {
        let xs: Vec<f64> =
            (0..2000).map(|i| ((i * 7919 % 1000) as f64 + 0.1) * if i % 3 == 0 { 1e-3 } else { 1.7 }).collect();
        let forward = sum_of(&xs.iter().map(|x| Val::Float(*x)).collect::<Vec<_>>());
        let mut rev = xs.clone();
        rev.reverse();
        let backward = sum_of(&rev.iter().map(|x| Val::Float(*x)).collect::<Vec<_>>());
        assert_eq!(forward, backward);
        // And what a naive sum gets wrong, this does not: 0.1 ten times is 1.
        assert_eq!(sum_of(&vec![Val::Float(0.1); 10]), Val::Float(1.0));
        assert_eq!(sum_of(&[Val::Float(1e100), Val::Float(1.0), Val::Float(-1e100)]), Val::Float(1.0));
    }

    #[test]
    fn saved_sums_read_back_to_the_bit_infinities_included() {
        let agg = Agg::Sum(String::new());
        for values in [vec![0.1, 0.2, 1e-300, 3.0000000000000004], vec![f64::INFINITY, 1.0], vec![f64::NAN]] {
            let mut s = Acc::new(&agg, None);
            for v in &values {
                s.update(Val::Float(*v), 0);
            }
            let mut text = String::new();
            s.save_into(&mut text);
            let back = Acc::load(&agg, &serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(back.result().to_string(), s.result().to_string(), "{values:?}: {text}");
            let back = Acc::load(&agg, &s.save()).unwrap();
            assert_eq!(back.result().to_string(), s.result().to_string(), "{values:?}");
        }
    }

    #[test]
    fn integer_sums_stay_integers_and_null_is_skipped() {
        assert_eq!(sum_of(&[Val::Int(2), Val::Null, Val::Int(3)]), Val::Int(5));
        assert_eq!(sum_of(&[Val::Int(2), Val::Float(0.5)]), Val::Float(2.5));
        assert_eq!(sum_of(&[Val::Null]), Val::Null);
        let big = sum_of(&[Val::Int(isize::MAX), Val::Int(isize::MAX)]);
        assert_eq!(big.to_string(), (2 * (isize::MAX as i128)).to_string());
        assert!(check(&Agg::Sum(String::new()), &Val::from("x".to_string())).is_err());
    }

    #[test]
    fn merged_values_equal_one_value_over_both() {
        let aggs = [
            Agg::Count,
            Agg::Sum(String::new()),
            Agg::Avg(String::new()),
            Agg::Min(String::new()),
            Agg::Max(String::new()),
            Agg::First(String::new()),
            Agg::Last(String::new()),
            Agg::Distinct(String::new()),
            Agg::Top(2, String::new()),
        ];
        let events: Vec<(i64, Val)> = (0..50).map(|i| ((i * 37) % 11, Val::Int(((i * 13) % 7) as isize))).collect();
        for agg in &aggs {
            let mut whole = Acc::new(agg, None);
            let (mut a, mut b) = (Acc::new(agg, None), Acc::new(agg, None));
            for (i, (t, v)) in events.iter().enumerate() {
                whole.update(v.clone(), *t);
                if i % 3 == 0 { &mut a } else { &mut b }.update(v.clone(), *t);
            }
            a.merge(b);
            assert_eq!(a.result(), whole.result(), "{agg:?}");
            let reloaded = Acc::load(agg, &whole.save()).unwrap();
            assert_eq!(reloaded.result(), whole.result(), "{agg:?} saved and loaded");
        }
    }

    #[test]
    fn results_read_as_they_should() {
        let mut top = Acc::new(&Agg::Top(2, String::new()), None);
        for v in ["b", "a", "b", "c", "a", "b"] {
            top.update(Val::from(v.to_string()), 0);
        }
        assert_eq!(top.result().to_string(), r#"[{"count":3,"value":"b"},{"count":2,"value":"a"}]"#);
        let mut first = Acc::new(&Agg::First(String::new()), None);
        first.update(Val::Int(5), 20);
        first.update(Val::Int(9), 10);
        first.update(Val::Int(7), 10);
        assert_eq!(first.result(), Val::Int(7), "the earliest, ties by value");
        let mut avg = Acc::new(&Agg::Avg(String::new()), None);
        for v in [1, 2, 2] {
            avg.update(Val::Int(v), 0);
        }
        assert_eq!(avg.result(), Val::Float(5.0 / 3.0));
        let mut distinct = Acc::new(&Agg::Distinct(String::new()), None);
        for v in [Val::Int(1), Val::Int(1), Val::Null, Val::from("1".to_string())] {
            distinct.update(v, 0);
        }
        assert_eq!(distinct.result(), Val::Int(2), "1 and \"1\"; null is no value");
    }
}
