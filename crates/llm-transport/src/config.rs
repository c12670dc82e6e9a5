//! The transport's named, configurable limits.

use std::time::Duration;

/// Limits and timings of the HTTP layer. Every limit has a name here and a flag in the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Largest accepted request body, in bytes; larger bodies get 413.
    pub body_limit: usize,
    /// How long a client may take to send its request headers before the connection is
    /// closed, so that slow clients cannot hold connections forever.
    pub header_read_timeout: Duration,
    /// A comment line is sent on a stream that has been silent this long (queue wait, long
    /// prefill), so that proxies with idle timeouts keep it open.
    pub keep_alive_interval: Duration,
    /// How many encoded chunks may wait for a slow client before the stream stops pulling from
    /// the engine (whose own per-request buffer then takes over).
    pub stream_buffer: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            body_limit: 4 << 20,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(15),
            stream_buffer: 64,
        }
    }
}
