//! What the Kafka source and sink share: reaching the brokers at start-up, and running an admin call.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::telemetry::logging;
use rdkafka::client::Client;
use rdkafka::metadata::Metadata;
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The brokers' metadata for `topic`, within the start-up timeout. A refused TLS handshake or SASL authentication
/// ends the wait at once: the brokers are there, and retrying with the same settings cannot help.
///
/// `serve` polls the client, which runs its error callback: that is where librdkafka reports a refusal.
/// `topic`: `None` asks for every topic's.
pub fn metadata<C: ClientContext>(
    client: &Client<C>,
    cfg: &Config,
    topic: Option<&str>,
    serve: impl Fn(),
) -> Result<Metadata> {
    let deadline = Instant::now() + cfg.startup_timeout;
    // Short tries first, so that a refusal is seen within half a second; longer ones after, for brokers that are slow
    // to answer.
    let mut each = Duration::from_millis(500);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.fetch_metadata(topic, left.min(each)) {
            Ok(md) => return Ok(md),
            Err(source) => {
                each = (each * 2).min(Duration::from_secs(4));
                // A poll serves one queued event (a log line, an error): serve what has piled up.
                for _ in 0..256 {
                    serve();
                }
                if let Some(refused) = logging::refusal() {
                    let (brokers, security) = (cfg.brokers.clone(), cfg.security());
                    return Err(Error::Refused { brokers, security, reason: refused.reason, tls: refused.tls });
                }
                if Instant::now() >= deadline {
                    return Err(Error::Metadata { brokers: cfg.brokers.clone(), source });
                }
            }
        }
    }
}

/// Runs a future to completion on this thread: the admin API is the only async call we make (the tests' harness
/// uses it too).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
