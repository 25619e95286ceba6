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
/// What `--source-topic` names: one topic or a comma-separated list, or (starting with `^`) a pattern that every topic
/// it matches, now or later, is read from, as librdkafka subscribes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceTopics<'a> {
    Listed(Vec<&'a str>),
    Pattern(&'a str),
}

impl<'a> SourceTopics<'a> {
    pub fn parse(given: &'a str) -> SourceTopics<'a> {
        match given.starts_with('^') {
            true => SourceTopics::Pattern(given),
            false => SourceTopics::Listed(given.split(',').map(str::trim).collect()),
        }
    }

    /// Whether events come from more than one topic, or may.
    pub fn several(&self) -> bool {
        !matches!(self, SourceTopics::Listed(one) if one.len() == 1)
    }
}

/// Whether the pattern (POSIX extended, as librdkafka reads a subscription's) matches `name`; `None` when it does not
/// compile.
pub fn matches(pattern: &str, name: &str) -> Option<bool> {
    use nix::libc::{regcomp, regex_t, regexec, regfree, REG_EXTENDED, REG_NOSUB};
    let (pattern, name) = (std::ffi::CString::new(pattern).ok()?, std::ffi::CString::new(name).ok()?);
    let mut re = std::mem::MaybeUninit::<regex_t>::uninit();
    // SAFETY: regcomp initialises `re` when it returns 0, and only then is it read (by regexec) and freed (regfree);
    // both strings are NUL-terminated and outlive the calls.
    unsafe {
        if regcomp(re.as_mut_ptr(), pattern.as_ptr(), REG_EXTENDED | REG_NOSUB) != 0 {
            return None;
        }
        let found = regexec(re.as_ptr(), name.as_ptr(), 0, std::ptr::null_mut(), 0) == 0;
        regfree(re.as_mut_ptr());
        Some(found)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Topics<'a> {
    pub source: Option<&'a str>,
    pub dest: Option<&'a str>,
    pub dead_letter: Option<&'a str>,
}

impl Topics<'_> {
    /// The first problem with these topics, as one line naming the flag.
    pub fn check(&self) -> Result<(), String> {
        let sources = match self.source.map(SourceTopics::parse) {
            Some(SourceTopics::Listed(names)) => names,
            Some(SourceTopics::Pattern(pattern)) => {
                for (flag, name) in [("--dest-topic", self.dest), ("--dlq-topic", self.dead_letter)] {
                    match name.map(|n| (n, matches(pattern, n))) {
                        Some((_, None)) => {
                            return Err(format!("--source-topic {pattern:?} is not a regular expression"))
                        }
                        Some((n, Some(true))) => {
                            return Err(format!(
                                "{flag} {n:?} matches the source pattern {pattern:?}: every event written there would \
                                 be read again, without end; choose another topic or pattern"
                            ))
                        }
                        _ => {}
                    }
                }
                Vec::new()
            }
            None => Vec::new(),
        };
        let named = [("--dest-topic", self.dest), ("--dlq-topic", self.dead_letter)];
        for (flag, name) in sources.iter().map(|s| ("--source-topic", Some(*s))).chain(named) {
            if let Some(why) = name.and_then(invalid) {
                return Err(format!("{flag}: {why}"));
            }
        }
        if let Some(twice) = sources.iter().enumerate().find_map(|(i, s)| sources[..i].contains(s).then_some(s)) {
            return Err(format!("--source-topic names {twice:?} twice"));
        }
        for source in sources {
            for (flag, name) in &named {
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
    fn several_source_topics_are_a_list_or_a_pattern() {
        assert_eq!(SourceTopics::parse("a, b"), SourceTopics::Listed(vec!["a", "b"]));
        assert!(!SourceTopics::parse("a").several() && SourceTopics::parse("^shop\\..*").several());
        assert!(kafka_to_kafka("a,b", "out", "out.dlq").check().is_ok());
        let e = kafka_to_kafka("a,out", "out", "out.dlq").check().unwrap_err();
        assert!(e.starts_with("--dest-topic \"out\" is the source topic"), "{e}");
        assert!(kafka_to_kafka("a,,b", "out", "x").check().unwrap_err().contains("empty"));
        assert!(kafka_to_kafka("a,a", "out", "x").check().unwrap_err().contains("twice"));
        assert!(kafka_to_kafka("^shop\\..*", "out", "out.dlq").check().is_ok());
        let e = kafka_to_kafka("^shop.*", "shop_out", "x").check().unwrap_err();
        assert!(e.starts_with("--dest-topic \"shop_out\" matches the source pattern"), "{e}");
        assert!(kafka_to_kafka("^(", "out", "x").check().unwrap_err().contains("not a regular expression"));
        assert_eq!(matches("^shop\\..*", "shop.eu"), Some(true));
        assert_eq!(matches("^shop\\..*", "shopping"), Some(false));
    }

    #[test]
    fn only_the_topics_in_use_are_checked() {
        // A table sink: the destination and dead-letter topics are not used, whatever they are.
        assert!(Topics { source: Some("in"), dest: None, dead_letter: None }.check().is_ok());
        // A table source: events written to the topic are never read back by this run.
        assert!(Topics { source: None, dest: Some("t"), dead_letter: Some("t.dlq") }.check().is_ok());
    }
}
