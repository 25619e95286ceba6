//! `--sink`, given once or more: where events go. A value is a URL (a table, or `kafka:TOPIC`), or `NAME=URL` so that
//! `--route` can send each output to the sinks it names. Each sink is one process with its own dead letters.

use super::topics;
use crate::sql::url::TableUrl;

/// One sink as the settings name it.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkDef {
    /// What `--route` calls it; `None` for the one unnamed sink.
    pub name: Option<String>,
    pub target: SinkTarget,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkTarget {
    Topic { topic: String, dead_letters: String },
    Table(TableUrl),
}

impl SinkDef {
    /// How the status line, the summary and `/metrics` (`sink="..."`) name it: its name, else its destination.
    pub fn label(&self) -> String {
        match (&self.name, &self.target) {
            (Some(name), _) => name.clone(),
            (None, SinkTarget::Topic { topic, .. }) => topic.clone(),
            (None, SinkTarget::Table(url)) => url.describe(),
        }
    }
}

/// The most sinks one pipeline may have (a route is a 64-bit set of them).
pub const MAX_SINKS: usize = 64;

/// The longest sink name: it shows in process titles and metric labels.
const NAME_MAX: usize = 64;

/// `NAME=URL`, or a bare URL. What comes before the first `=` is a name only if it looks like one: a URL's own `=`
/// comes after its `?` (`sqlite:x.db?table=t`), and a name holds no `:`, `/` or `?`.
fn split_name(given: &str) -> (Option<&str>, &str) {
    match given.split_once('=') {
        Some((name, url))
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
        {
            (Some(name), url)
        }
        _ => (None, given),
    }
}

/// One `--sink` value. `dlq_topic`: `--dlq-topic` or its default, for an unnamed `kafka:TOPIC` sink.
fn parse_one(given: &str, dlq_topic: Option<&str>) -> Result<SinkDef, String> {
    let (name, url) = split_name(given);
    if let Some(name) = name {
        if name.len() > NAME_MAX {
            return Err(format!("--sink: the name {name:?} is longer than {NAME_MAX} characters"));
        }
    }
    let target = match url.strip_prefix("kafka:") {
        Some(topic) => {
            let topic = topic.strip_prefix("//").unwrap_or(topic);
            if let Some(why) = topics::invalid(topic) {
                return Err(format!("--sink {url}: the topic {why}"));
            }
            let dead_letters = match (name, dlq_topic) {
                (None, Some(dlq)) => dlq.to_string(),
                _ => format!("{topic}.dlq"),
            };
            SinkTarget::Topic { topic: topic.to_string(), dead_letters }
        }
        None => {
            let url = TableUrl::parse(url).map_err(|e| format!("--sink: {e}"))?;
            url.table().map_err(|e| format!("--sink: {e}"))?;
            SinkTarget::Table(url)
        }
    };
    Ok(SinkDef { name: name.map(str::to_string), target })
}

/// Every `--sink` value, or the default topic sink when none is given. Several sinks must each have a name, and no
/// two the same one.
pub fn parse(given: &[String], dest_topic: &str, dlq_topic: Option<&str>) -> Result<Vec<SinkDef>, String> {
    if given.is_empty() {
        let dead_letters = dlq_topic.map_or_else(|| format!("{dest_topic}.dlq"), str::to_string);
        return Ok(vec![SinkDef {
            name: None,
            target: SinkTarget::Topic { topic: dest_topic.to_string(), dead_letters },
        }]);
    }
    let sinks: Vec<SinkDef> = given.iter().map(|g| parse_one(g, dlq_topic)).collect::<Result<_, _>>()?;
    if sinks.len() > MAX_SINKS {
        return Err(format!("--sink is given {} times; a pipeline has at most {MAX_SINKS} sinks", sinks.len()));
    }
    if sinks.len() > 1 {
        if let Some(unnamed) = sinks.iter().find(|s| s.name.is_none()) {
            return Err(format!(
                "--sink {}: with several sinks, name each one (--sink NAME=URL) so that --route can choose",
                unnamed.label()
            ));
        }
    }
    for (i, s) in sinks.iter().enumerate() {
        if let Some(twin) = sinks[..i].iter().find(|t| t.name.is_some() && t.name == s.name) {
            return Err(format!("--sink: two sinks are named {:?}; give each its own name", twin.label()));
        }
    }
    Ok(sinks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(given: &[&str]) -> Result<Vec<SinkDef>, String> {
        parse(&given.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "out", None)
    }

    #[test]
    fn a_name_is_what_comes_before_an_equals_sign_that_no_url_holds() {
        assert_eq!(split_name("raw=sqlite:x.db?table=t"), (Some("raw"), "sqlite:x.db?table=t"));
        assert_eq!(split_name("sqlite:x.db?table=t"), (None, "sqlite:x.db?table=t"));
        assert_eq!(split_name("postgres://u@h/db?table=t"), (None, "postgres://u@h/db?table=t"));
        assert_eq!(split_name("alerts=kafka:alerts"), (Some("alerts"), "kafka:alerts"));
    }

    #[test]
    fn no_sink_is_the_destination_topic_and_a_topic_sink_has_its_own_dead_letters() {
        let default = sinks(&[]).unwrap();
        assert_eq!(default[0].target, SinkTarget::Topic { topic: "out".into(), dead_letters: "out.dlq".into() });
        let named = sinks(&["alerts=kafka:alerts", "raw=sqlite:/tmp/r.db?table=raw"]).unwrap();
        assert_eq!(named[0].target, SinkTarget::Topic { topic: "alerts".into(), dead_letters: "alerts.dlq".into() });
        assert_eq!((named[0].label(), named[1].label()), ("alerts".to_string(), "raw".to_string()));
        let unnamed = parse(&["kafka:t".to_string()], "out", Some("mine")).unwrap();
        assert_eq!(unnamed[0].target, SinkTarget::Topic { topic: "t".into(), dead_letters: "mine".into() });
    }

    #[test]
    fn several_sinks_are_named_and_named_apart() {
        let e = sinks(&["a=kafka:x", "kafka:y"]).unwrap_err();
        assert!(e.contains("name each one"), "{e}");
        let e = sinks(&["a=kafka:x", "a=kafka:y"]).unwrap_err();
        assert_eq!(e, "--sink: two sinks are named \"a\"; give each its own name");
        let e = sinks(&["a=kafka:bad topic"]).unwrap_err();
        assert!(e.starts_with("--sink kafka:bad topic: the topic"), "{e}");
        assert!(sinks(&["a=ftp://x"]).is_err());
    }
}
