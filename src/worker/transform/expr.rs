//! One jq expression (an aggregation's, `--output-key`), compiled once: a plain path (`.amount`, `.customer.id`) is looked up
//! directly, anything else runs through jaq.

use crate::error::Result;
use crate::worker::transform::jq::{self, Filter};
use jaq_core::{Ctx, RcIter};
use jaq_json::Val;

pub enum Expr {
    /// `.a.b`: the fields, looked up without running a filter.
    Path(Vec<String>),
    Jq(Box<Filter>),
}

/// The global variables an expression sees: `$meta`, and in a fold's UPDATE `$event`.
pub const VARS: [&str; 2] = [jq::META, "$event"];

impl Expr {
    pub fn compile(code: &str, origin: &str) -> Result<Expr> {
        if let Some(path) = plain_path(code) {
            return Ok(Expr::Path(path));
        }
        Ok(Expr::Jq(Box::new(jq::compile(code, origin, &VARS, false)?)))
    }

    /// The expression's first value on `input` (null when it gives none), or its error in jq's words.
    pub fn first(&self, input: &Val, meta: &Val, event: &Val) -> Result<Option<Val>, String> {
        match self {
            Expr::Path(fields) => {
                let null = Val::Null;
                let mut v = input;
                for f in fields {
                    v = match v {
                        Val::Obj(map) => map.get(f).unwrap_or(&null),
                        // As jaq has it (jq itself would give null).
                        Val::Null => return Err("cannot use null as iterable (array or object)".into()),
                        other => return Err(format!("cannot index {other} with \"{f}\"")),
                    };
                }
                Ok(Some(v.clone()))
            }
            Expr::Jq(filter) => {
                let inputs = RcIter::new(core::iter::empty());
                let ctx = Ctx::new([meta.clone(), event.clone()], &inputs);
                let first = filter.run((ctx, input.clone())).next();
                match first {
                    None => Ok(None),
                    Some(Ok(v)) => Ok(Some(v)),
                    Some(Err(e)) => Err(match e.into_val() {
                        Val::Str(s) => s.to_string(),
                        other => jaq_core::Error::new(other).to_string(),
                    }),
                }
            }
        }
    }

    pub fn wants_meta(code: &str) -> bool {
        code.contains(jq::META)
    }
}

/// `.a.b` as its fields; `None` for anything else.
fn plain_path(code: &str) -> Option<Vec<String>> {
    let code = code.trim();
    let rest = code.strip_prefix('.')?;
    let fields: Vec<String> = rest.split('.').map(str::to_string).collect();
    let ident = |f: &String| {
        f.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    fields.iter().all(ident).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(json: &str) -> Val {
        Val::from(serde_json::from_str::<serde_json::Value>(json).unwrap())
    }

    #[test]
    fn a_plain_path_reads_as_jq_would() {
        let e = val(r#"{"a": {"b": 3}, "s": "x"}"#);
        for (code, want) in
            [(".a.b", Ok(Some(val("3")))), (".missing", Ok(Some(Val::Null))), (".a", Ok(Some(val(r#"{"b":3}"#))))]
        {
            let fast = Expr::compile(code, "t").unwrap();
            assert!(matches!(fast, Expr::Path(_)), "{code}");
            assert_eq!(fast.first(&e, &Val::Null, &Val::Null), want, "{code}");
            let slow = Expr::Jq(Box::new(jq::compile(code, "t", &VARS, false).unwrap()));
            assert_eq!(slow.first(&e, &Val::Null, &Val::Null), want, "{code} through jaq");
        }
        for code in [".s.x", ".missing.b"] {
            assert!(Expr::compile(code, "t").unwrap().first(&e, &Val::Null, &Val::Null).is_err(), "{code}");
            let slow = Expr::Jq(Box::new(jq::compile(code, "t", &VARS, false).unwrap()));
            assert!(slow.first(&e, &Val::Null, &Val::Null).is_err(), "{code} through jaq");
        }
        assert!(matches!(Expr::compile(".a | .b", "t").unwrap(), Expr::Jq(_)));
        assert!(matches!(Expr::compile(".[0]", "t").unwrap(), Expr::Jq(_)));
        assert!(Expr::compile(".a +", "t").is_err());
    }
}
