//! The one keep-alive clock of every streaming loop (SSE pumps, replay followers, WebSocket
//! sessions): a silent stream gets a keep-alive once per interval of silence.

use std::time::Duration;

use tokio::time::Instant;

/// When a stream last said something, and how long it may stay silent.
#[derive(Debug)]
pub(crate) struct KeepAlive {
    interval: Duration,
    quiet_since: Instant,
}

impl KeepAlive {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            quiet_since: Instant::now(),
        }
    }

    /// Resolves once the stream has been silent for the interval. Cancel safe.
    pub(crate) async fn due(&self) {
        tokio::time::sleep_until(self.quiet_since + self.interval).await;
    }

    /// The stream just sent something (a keep-alive included).
    pub(crate) fn sent(&mut self) {
        self.quiet_since = Instant::now();
    }
}
