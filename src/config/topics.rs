//! The topic names a run uses, checked before anything connects: each must be a name Kafka accepts, and no output may
//! be the input, or every event written would be read again without end (a dead letter copied into its own topic
//! grows a header each time round).

/// The longest topic name Kafka accepts.
const MAX_LEN: usize = 249;

/// Why `name` cannot be a Kafka topic, if it cannot.
pub fn invalid(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name == "." || name == ".." {
        return Some(format!("{name:?} is not allowed as a topic name"));
    }
    if name.len() > MAX_LEN {
        return Some(format!("is {} characters long; Kafka allows at most {MAX_LEN}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Some(format!(
            "{name:?} holds {c:?}; a topic name may hold only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    None
}

/// The topics of a run: `source` when events come from Kafka, `dest` and `dead_letter` when they go to Kafka.
#[derive(Debug, Clone, Copy)]
pub struct Topics<'a> {
    pub source: Option<&'a str>,
    pub dest: Option<&'a str>,
    pub dead_letter: Option<&'a str>,
}

impl Topics<'_> {
    /// The first problem with these topics, as one line naming the flag.
    pub fn check(&self) -> Result<(), String> {
        let named = [("--source-topic", self.source), ("--dest-topic", self.dest), ("--dlq-topic", self.dead_letter)];
        for (flag, name) in named {
            if let Some(why) = name.and_then(invalid) {
                return Err(format!("{flag}: {why}"));
            }
        }
        if let Some(source) = self.source {
            for (flag, name) in &named[1..] {
                if *name == Some(source) {
                    return Err(format!(
                        "{flag} {source:?} is the source topic: every event written there would be read again, \
                         without end; choose another topic"
                    ));
                }
            }
        }
        if let (Some(dest), Some(dead)) = (self.dest, self.dead_letter) {
            if dest == dead {
                return Err(format!(
                    "--dlq-topic {dead:?} is the destination topic: rejected events would be mixed into the output; \
                     choose another topic"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka_to_kafka<'a>(source: &'a str, dest: &'a str, dead_letter: &'a str) -> Topics<'a> {
        Topics { source: Some(source), dest: Some(dest), dead_letter: Some(dead_letter) }
    }

    #[test]
    fn kafka_names_are_checked() {
        assert_eq!(invalid("name_stream.v2-a"), None);
        assert_eq!(invalid(&"a".repeat(249)), None);
        assert!(invalid("").unwrap().contains("empty"));
        assert!(invalid("..").is_some());
        assert!(invalid(&"a".repeat(250)).unwrap().contains("at most 249"));
        assert!(invalid("with space").unwrap().contains("' '"));
        assert!(invalid("ünicode").is_some());
    }

    #[test]
    fn no_output_may_be_the_input() {
        assert!(kafka_to_kafka("in", "out", "out.dlq").check().is_ok());
        let e = kafka_to_kafka("in", "in", "out.dlq").check().unwrap_err();
        assert!(e.starts_with("--dest-topic \"in\" is the source topic"), "{e}");
        let e = kafka_to_kafka("in", "out", "in").check().unwrap_err();
        assert!(e.starts_with("--dlq-topic \"in\" is the source topic"), "{e}");
        let e = kafka_to_kafka("in", "out", "out").check().unwrap_err();
        assert!(e.starts_with("--dlq-topic \"out\" is the destination topic"), "{e}");
        let e = kafka_to_kafka("in", "out", "").check().unwrap_err();
        assert_eq!(e, "--dlq-topic: is empty");
    }

    #[test]
    fn only_the_topics_in_use_are_checked() {
        // A table sink: the destination and dead-letter topics are not used, whatever they are.
        assert!(Topics { source: Some("in"), dest: None, dead_letter: None }.check().is_ok());
        // A table source: events written to the topic are never read back by this run.
        assert!(Topics { source: None, dest: Some("t"), dead_letter: Some("t.dlq") }.check().is_ok());
    }
}
