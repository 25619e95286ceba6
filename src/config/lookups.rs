//! `--lookup NAME=URL`, given once or more: the tables and compacted topics that jq's `lookup("NAME"; KEY)` reads.

use super::topics;
use crate::sql::url::TableUrl;

#[derive(Debug, Clone, PartialEq)]
pub struct LookupDef {
    pub name: String,
    pub target: LookupTarget,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LookupTarget {
    /// Rows by their key (`key=COLUMN`, else the primary key), fetched a batch at a time and cached.
    Table(TableUrl),
    /// A compacted topic read to its end at start and followed after that: the message key is the key, the JSON
    /// payload the row, a tombstone (null payload) a deletion.
    Topic(String),
}

/// Every `--lookup` value: each named, no two the same name.
pub fn parse(given: &[String]) -> Result<Vec<LookupDef>, String> {
    let mut out: Vec<LookupDef> = Vec::new();
    for g in given {
        let Some((name, url)) = g
            .split_once('=')
            .filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        else {
            return Err(format!(
                "--lookup {g}: give it as NAME=URL (customers=postgres://HOST/DB?table=customers&key=id, or \
                 NAME=kafka:TOPIC); jq reads it as lookup(\"NAME\"; KEY)"
            ));
        };
        let target = match url.strip_prefix("kafka:") {
            Some(topic) => {
                let topic = topic.strip_prefix("//").unwrap_or(topic);
                if let Some(why) = topics::invalid(topic) {
                    return Err(format!("--lookup {name}: the topic {why}"));
                }
                LookupTarget::Topic(topic.to_string())
            }
            None => {
                let url = TableUrl::parse(url).map_err(|e| format!("--lookup {name}: {e}"))?;
                url.table().map_err(|e| format!("--lookup {name}: {e}"))?;
                LookupTarget::Table(url)
            }
        };
        if out.iter().any(|d| d.name == name) {
            return Err(format!("--lookup: two lookups are named {name:?}; give each its own name"));
        }
        out.push(LookupDef { name: name.to_string(), target });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(given: &[&str]) -> Result<Vec<LookupDef>, String> {
        parse(&given.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_lookup_is_a_named_table_or_topic() {
        let l = parsed(&["customers=sqlite:/tmp/c.db?table=customers&key=id", "prices=kafka:prices"]).unwrap();
        assert_eq!(l[0].name, "customers");
        assert!(matches!(&l[0].target, LookupTarget::Table(u) if u.describe().contains("customers")));
        assert_eq!(l[1].target, LookupTarget::Topic("prices".into()));
    }

    #[test]
    fn bad_lookups_say_what_is_wrong() {
        assert!(parsed(&["sqlite:/tmp/c.db?table=t"]).unwrap_err().contains("give it as NAME=URL"));
        assert!(parsed(&["c=ftp://x"]).unwrap_err().starts_with("--lookup c: "));
        assert!(parsed(&["c=sqlite:/tmp/c.db"]).unwrap_err().starts_with("--lookup c: "), "no table");
        let e = parsed(&["c=kafka:a", "c=kafka:b"]).unwrap_err();
        assert_eq!(e, "--lookup: two lookups are named \"c\"; give each its own name");
    }
}
