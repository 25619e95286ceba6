//! Where events come from and where they go, chosen once from the settings (as the transform is, by
//! [`TransformSpec`](super::TransformSpec)): a Kafka topic or a database table at each end. Each spec names itself in
//! the logs and says how its positions and its dead letters are named, so that no stage asks `cfg.tables` again.

use crate::position::{Place, Position};
use crate::sql::url::TableUrl;

/// The source: a topic, or a table scan.
#[derive(Debug, Clone, Copy)]
pub enum SourceSpec<'a> {
    Topic(&'a str),
    Table(&'a TableUrl),
}

/// The sink: a topic (with its dead-letter topic), or a table (with its dead-letter table beside it).
#[derive(Debug, Clone, Copy)]
pub enum SinkSpec<'a> {
    Topic { topic: &'a str, dead_letters: &'a str },
    Table(&'a TableUrl),
}

impl SourceSpec<'_> {
    /// As the logs name it: the topic, or the table and where it is (no credentials).
    pub fn name(&self) -> String {
        match self {
            SourceSpec::Topic(topic) => topic.to_string(),
            SourceSpec::Table(url) => url.describe(),
        }
    }

    /// An event's place in this source's words: a partition and offset, or a chunk and row.
    pub fn place(&self, at: Position) -> Place {
        Place { at, table: matches!(self, SourceSpec::Table(_)) }
    }

    pub fn is_table(&self) -> bool {
        matches!(self, SourceSpec::Table(_))
    }
}

impl<'a> SourceSpec<'a> {
    pub fn table(&self) -> Option<&'a TableUrl> {
        match *self {
            SourceSpec::Table(url) => Some(url),
            SourceSpec::Topic(_) => None,
        }
    }
}

impl SinkSpec<'_> {
    /// As the logs name it.
    pub fn name(&self) -> String {
        match self {
            SinkSpec::Topic { topic, .. } => topic.to_string(),
            SinkSpec::Table(url) => url.describe(),
        }
    }

    /// Where rejected events go, as the logs name it.
    pub fn dead_letters(&self) -> String {
        match self {
            SinkSpec::Topic { dead_letters, .. } => dead_letters.to_string(),
            SinkSpec::Table(url) => format!(
                "table {}",
                url.table.as_ref().map(|t| t.beside("_dead_letter").to_string()).unwrap_or_default()
            ),
        }
    }

    pub fn is_table(&self) -> bool {
        matches!(self, SinkSpec::Table(_))
    }
}

impl<'a> SinkSpec<'a> {
    pub fn table(&self) -> Option<&'a TableUrl> {
        match *self {
            SinkSpec::Table(url) => Some(url),
            SinkSpec::Topic { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_names_itself_and_its_positions() {
        let url = TableUrl::parse("sqlite:/tmp/x.db?table=orders").unwrap();
        let source = SourceSpec::Table(&url);
        assert!(source.is_table() && source.name().contains("orders"));
        assert_eq!(source.place(Position::new(2, 7)).to_string(), "chunk 2 row 7");
        assert_eq!(SourceSpec::Topic("src").place(Position::new(2, 7)).to_string(), "partition 2 offset 7");
        let sink = SinkSpec::Topic { topic: "dst", dead_letters: "dst.dlq" };
        assert_eq!((sink.name(), sink.dead_letters()), ("dst".to_string(), "dst.dlq".to_string()));
        assert!(SinkSpec::Table(&url).dead_letters().starts_with("table ") && SinkSpec::Table(&url).is_table());
    }
}
