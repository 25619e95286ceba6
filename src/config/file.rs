//! The config file (`--config FILE`): TOML with the long flag names as keys and librdkafka properties in a `[kafka]`
//! table. Each setting keeps where it was written, so that a bad value is reported at its line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One flag the file sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFlag {
    /// The long flag name, as written in the file.
    pub key: String,
    /// The environment variable that carries it into the flag parser.
    pub env: String,
    pub value: String,
    /// 1-based, of the value.
    pub line: usize,
    pub column: usize,
}

/// What a config file says, sorted into what feeds the flags and what goes to librdkafka.
#[derive(Debug, Default, PartialEq)]
pub struct FileSettings {
    pub path: PathBuf,
    pub flags: Vec<FileFlag>,
    /// The [kafka] table (TOML keys are unique, so their order does not matter).
    pub kafka: Vec<(String, String)>,
}

fn scalar(key: &str, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        // A repeatable flag (sink = ["a=...", "b=..."]): its values travel in one environment variable, a line each.
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_str()) => {
            Ok(items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join("\n"))
        }
        other => Err(format!("'{key}' must be a string, number or boolean, not {}", other.type_str())),
    }
}

/// The [kafka] table's properties. An unquoted dotted key (`sasl.password = "x"`) is a nested table to TOML; to
/// librdkafka it is the property `sasl.password`.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<(), String> {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out)?,
            v => out.push((key.clone(), scalar(&key, v)?)),
        }
    }
    Ok(())
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl FileSettings {
    /// Reads and parses `path`; `keys` maps each long flag name the file may use to its environment variable.
    pub fn read(path: &Path, keys: &[(String, String)]) -> Result<FileSettings, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("config file {}: {e}", path.display()))?;
        FileSettings::parse(&text, path, keys)
    }

    pub fn parse(text: &str, path: &Path, keys: &[(String, String)]) -> Result<FileSettings, String> {
        let at = |offset: usize| {
            let (line, column) = line_column(text, offset);
            format!("config file {}, line {line}, column {column}", path.display())
        };
        let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(text).map_err(|e| {
            // The message alone: toml's rendering quotes the line, which may hold a secret.
            let place = e.span().map_or_else(|| format!("config file {}", path.display()), |s| at(s.start));
            format!("{place}: {}", e.message().trim_end().replace('\n', "; "))
        })?;
        let mut out = FileSettings { path: path.to_path_buf(), ..FileSettings::default() };
        for (key, value) in &table {
            let (name, span) = (key.get_ref(), value.span());
            if name == "kafka" {
                let kafka = value
                    .get_ref()
                    .as_table()
                    .ok_or_else(|| format!("{}: 'kafka' must be a table of librdkafka properties", at(span.start)))?;
                flatten("", kafka, &mut out.kafka).map_err(|e| format!("{}: {e}", at(span.start)))?;
            } else if let Some((_, env)) = keys.iter().find(|(long, _)| long == name) {
                let v = scalar(name, value.get_ref()).map_err(|e| format!("{}: {e}", at(span.start)))?;
                let (line, column) = line_column(text, span.start);
                out.flags.push(FileFlag { key: name.clone(), env: env.clone(), value: v, line, column });
            } else {
                let known: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
                return Err(format!(
                    "{}: unknown setting '{name}' (known: {}, and a [kafka] table)",
                    at(key.span().start),
                    known.join(", ")
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(String, String)> {
        [
            ("brokers", "SUPERVISOR_BROKERS"),
            ("hashers", "SUPERVISOR_HASHERS"),
            ("drain-timeout", "SUPERVISOR_DRAIN_TIMEOUT"),
        ]
        .iter()
        .map(|(k, e)| (k.to_string(), e.to_string()))
        .collect()
    }

    fn parse(text: &str) -> Result<FileSettings, String> {
        FileSettings::parse(text, Path::new("f.toml"), &keys())
    }

    #[test]
    fn a_config_file_feeds_flags_and_kafka_properties() {
        let f = parse(
            "brokers = \"k1:9092\"\nhashers = 3\ndrain-timeout = 2.5\n[kafka]\n\"sasl.password\" = \"hunter2\"\n",
        )
        .unwrap();
        let flags: Vec<(&str, &str, usize, usize)> =
            f.flags.iter().map(|f| (f.env.as_str(), f.value.as_str(), f.line, f.column)).collect();
        assert_eq!(
            flags,
            vec![
                ("SUPERVISOR_BROKERS", "k1:9092", 1, 11),
                ("SUPERVISOR_DRAIN_TIMEOUT", "2.5", 3, 17),
                ("SUPERVISOR_HASHERS", "3", 2, 11)
            ]
        );
        assert_eq!(f.kafka, vec![("sasl.password".to_string(), "hunter2".to_string())]);
        let dotted = parse("[kafka]\nsasl.password = \"pw\"\nsasl.mechanism = \"PLAIN\"\nacks = \"all\"\n").unwrap();
        let keys: Vec<&str> = dotted.kafka.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["acks", "sasl.mechanism", "sasl.password"], "unquoted dotted keys are property names");
    }

    #[test]
    fn errors_say_where() {
        let e = parse("brokers = \"a\"\nhasher = 3").unwrap_err();
        assert!(
            e.starts_with("config file f.toml, line 2, column 1: unknown setting 'hasher' (known: brokers,"),
            "{e}"
        );
        let e = parse("brokers = [1]").unwrap_err();
        assert!(e.contains("line 1, column 11: 'brokers' must be a string"), "{e}");
        let e = parse("hashers = 2\nbrokers = ").unwrap_err();
        assert!(e.starts_with("config file f.toml, line 2, column "), "{e}");
        let e = parse("[kafka]\n\"sasl.password\" = hunter2\n").unwrap_err();
        assert!(e.starts_with("config file f.toml, line 2, column ") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("a\nbé = 1", 6), (2, 4));
        assert_eq!(line_column("", 0), (1, 1));
    }
}
