//! What the Kafka source and sink share: reaching the brokers at start-up.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::telemetry::logging;
use rdkafka::client::Client;
use rdkafka::metadata::Metadata;
use rdkafka::ClientContext;
use std::time::{Duration, Instant};

/// The brokers' metadata for `topic`, within the start-up timeout. A refused TLS handshake or SASL authentication
/// ends the wait at once: the brokers are there, and retrying with the same settings cannot help.
///
/// `serve` polls the client, which runs its error callback: that is where librdkafka reports a refusal.
pub fn metadata<C: ClientContext>(client: &Client<C>, cfg: &Config, topic: &str, serve: impl Fn()) -> Result<Metadata> {
    let deadline = Instant::now() + cfg.startup_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Short tries, so that a refusal logged meanwhile is seen within half a second.
        match client.fetch_metadata(Some(topic), left.min(Duration::from_millis(500))) {
            Ok(md) => return Ok(md),
            Err(source) => {
                serve();
                if let Some(reason) = logging::refusal() {
                    return Err(Error::Refused { brokers: cfg.brokers.clone(), security: cfg.security(), reason });
                }
                if Instant::now() >= deadline {
                    return Err(Error::Metadata { brokers: cfg.brokers.clone(), source });
                }
            }
        }
    }
}
