//! `--route`: which sinks an output goes to, from a jq expression over the output event. A sink's name, an array of
//! names (a tee), or null or [] (dropped). Without `--route`, every output goes to every sink.

use crate::config::Config;
use crate::error::Result;
use crate::worker::transform::{self, expr::Expr, jq};
use jaq_json::Val;

/// The sinks an output goes to, one bit each in `--sink`'s order (at most 64 sinks).
pub type Sinks = u64;

use crate::config::sinks::MAX_SINKS;

pub struct Router {
    /// Every sink, by name, in `--sink`'s order.
    names: Vec<String>,
    /// `--route`, and whether it reads `$meta`.
    expr: Option<(Expr, bool)>,
    source: jq::MetaSource,
}

impl Router {
    pub fn compile(cfg: &Config) -> Result<Router> {
        let names = cfg.sinks().iter().map(|s| s.name.clone().unwrap_or_default()).collect();
        let expr = match &cfg.route {
            Some(code) => Some((Expr::compile(code, "--route")?, Expr::wants_meta(code))),
            None => None,
        };
        Ok(Router { names, expr, source: transform::meta_source(cfg) })
    }

    /// Whether the route reads the output event (there is a `--route`), and whether it reads its input's `$meta`.
    pub fn reads(&self) -> Option<bool> {
        self.expr.as_ref().map(|(_, meta)| *meta)
    }

    /// Where `$meta` comes from.
    pub fn source(&self) -> &jq::MetaSource {
        &self.source
    }

    /// Whether an output may go to one place only, unasked: one sink and no `--route`.
    pub fn trivial(&self) -> bool {
        self.expr.is_none() && self.names.len() == 1
    }

    /// Every sink: where an output goes without `--route`.
    pub fn all(&self) -> Sinks {
        match self.names.len() {
            MAX_SINKS.. => Sinks::MAX,
            n => (1 << n) - 1,
        }
    }

    /// Where an output goes, given it parsed (`event`) and its input's `$meta` (null where the route does not read
    /// it), or why it cannot go anywhere (a dead letter).
    pub fn route(&self, event: &Val, meta: &Val) -> std::result::Result<Sinks, String> {
        let Some((expr, _)) = &self.expr else { return Ok(self.all()) };
        match expr.first(event, meta, &Val::Null) {
            Ok(None | Some(Val::Null)) => Ok(0),
            Ok(Some(Val::Str(name))) => self.bit(&name),
            Ok(Some(Val::Arr(names))) => names.iter().try_fold(0, |acc, v| match v {
                Val::Str(name) => Ok(acc | self.bit(name)?),
                other => Err(format!("--route gave {other} in its array; a sink's name is a string")),
            }),
            Ok(Some(other)) => {
                Err(format!("--route gave {other}; it must give a sink's name, an array of names, or null"))
            }
            Err(why) => Err(format!("--route: {why}")),
        }
    }

    fn bit(&self, name: &str) -> std::result::Result<Sinks, String> {
        match self.names.iter().position(|n| n == name) {
            Some(i) => Ok(1 << i),
            None => {
                Err(format!("--route gave {name:?}, and no sink has that name (the sinks: {})", self.names.join(", ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::batch::Record;
    use crate::config::Cli;
    use crate::position::Position;

    fn router(args: &[&str]) -> Router {
        let cli = Cli::load(std::iter::once("supervisor").chain(args.iter().copied()).map(Into::into).collect())
            .unwrap_or_else(|_| panic!("settings refused: {args:?}"));
        Router::compile(&Config::from_cli(&cli)).unwrap()
    }

    /// Where the router sends `output`, an output of an input at partition 0 offset 1.
    fn route(r: &Router, output: &[u8]) -> std::result::Result<Sinks, String> {
        let input = Record {
            at: Position::new(0, 1),
            timestamp: None,
            key: None,
            headers: vec![],
            payload: None,
            dead_letter: None,
            topic: None,
            outputs: 1,
        };
        if r.reads().is_none() {
            return r.route(&Val::Null, &Val::Null);
        }
        let event = jq::parse(output).map_err(|e| format!("--route: {}", e.as_str()))?;
        r.route(&event, &jq::meta(r.source(), &input))
    }

    #[test]
    fn an_output_goes_where_the_route_says() {
        let r = router(&[
            "--sink",
            "raw=kafka:raw",
            "--sink",
            "alerts=kafka:alerts",
            "--route",
            "if .amount > 100 then [\"raw\", \"alerts\"] elif .amount < 0 then null else \"raw\" end",
        ]);
        assert!(!r.trivial());
        assert_eq!(route(&r, br#"{"amount": 500}"#), Ok(0b11));
        assert_eq!(route(&r, br#"{"amount": 5}"#), Ok(0b01));
        assert_eq!(route(&r, br#"{"amount": -5}"#), Ok(0));
        let e = route(&router(&["--sink", "a=kafka:a", "--route", "\"b\""]), b"{}").unwrap_err();
        assert_eq!(e, "--route gave \"b\", and no sink has that name (the sinks: a)");
        let e = route(&router(&["--sink", "a=kafka:a", "--route", "1"]), b"{}").unwrap_err();
        assert!(e.contains("must give a sink's name"), "{e}");
        assert!(route(&router(&["--sink", "a=kafka:a", "--route", "[]"]), b"{}") == Ok(0));
    }

    #[test]
    fn without_a_route_every_output_goes_to_every_sink() {
        let r = router(&["--sink", "a=kafka:a", "--sink", "b=kafka:b", "--sink", "c=kafka:c"]);
        assert_eq!(route(&r, b"not even json"), Ok(0b111));
        assert!(router(&[]).trivial());
    }
}
