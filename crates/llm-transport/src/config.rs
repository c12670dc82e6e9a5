//! The transport's named, configurable limits.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

/// Limits, timings and policies of the HTTP layer. Every limit has a name here and a flag in
/// the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Largest accepted request body, in bytes; larger bodies get 413. Also the largest
    /// WebSocket message.
    pub body_limit: usize,
    /// Largest request head (request line and headers), in bytes; larger heads get 431.
    pub header_limit: usize,
    /// How long a client may take to send its request headers before the connection is
    /// closed, so that slow clients cannot hold connections forever.
    pub header_read_timeout: Duration,
    /// A comment line is sent on a stream that has been silent this long (queue wait, long
    /// prefill), so that proxies with idle timeouts keep it open. WebSockets get a ping.
    pub keep_alive_interval: Duration,
    /// How many encoded chunks may wait for a slow client before the stream stops pulling from
    /// the engine (whose own per-request buffer then takes over).
    pub stream_buffer: usize,
    /// Open connections beyond this get an immediate 503 and are closed.
    pub max_connections: usize,
    /// A non-streaming request that has not finished after this long gets 504 and its
    /// generation is cancelled.
    pub request_timeout: Duration,
    /// The most choices (`n`) one chat request may ask for; more get 400 naming `n`. Each
    /// choice is a generation of its own in the engine, taking a running slot.
    pub max_choices: u32,
    /// API keys; empty means no authentication. `/v1/*`, `/stream` and `/ws/chat` then need
    /// `Authorization: Bearer KEY` or, for browsers, `?api_key=KEY`.
    pub api_keys: Vec<String>,
    /// A TOML file of named API keys, each with its own limits and allowed models, besides
    /// `api_keys`; read again on [`Server::reload_keys`](crate::Server::reload_keys).
    pub api_keys_file: Option<PathBuf>,
    /// Origins allowed to call the API from a browser (`*` for any); empty disables CORS.
    pub cors_origins: Vec<String>,
    /// Replay buffers of resumable streams.
    pub resume: ResumeConfig,
    /// Per-client rate limits of the generating routes, the default of every key; none by
    /// default.
    pub rate_limits: RateLimits,
    /// State shared by replicas; `None` keeps it in this process.
    pub shared_state: Option<SharedState>,
    /// The page served at `/`; `None` answers 404 there.
    pub index_html: Option<Bytes>,
}

/// Limits every client gets; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute: a request's prompt and `max_tokens` at admission, settled to what it
    /// used when it ends.
    pub tokens_per_minute: Option<u32>,
    /// Requests running at once.
    pub concurrency: Option<u32>,
}

impl RateLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.requests_per_minute.is_some()
            || self.tokens_per_minute.is_some()
            || self.concurrency.is_some()
    }
}

/// Where replicas keep the state they share, in Redis: rate-limit counters, and copies of
/// resumable streams that any replica can replay and follow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedState {
    /// `redis://[user:password@]host[:port][/db]`, or `redis+unix:///path/to/socket`.
    pub url: String,
    /// What a request gets when the store cannot be reached.
    pub on_failure: OnFailure,
    /// The longest one round trip to the store may take before it counts as unreachable.
    pub timeout: Duration,
    /// Prepended to every key the server writes, so that several services can share one
    /// Redis.
    pub key_prefix: String,
    /// The most events the copy of one resumable stream keeps (`XADD MAXLEN`); a resume from
    /// before the oldest kept event elsewhere than on its replica gets 410.
    pub replay_max_events: usize,
}

impl SharedState {
    /// The store at `url`, failing open, with a 250 ms timeout, the prefix `llm-stream:`, and
    /// copies of at most 100,000 events per stream.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            on_failure: OnFailure::Open,
            timeout: Duration::from_millis(250),
            key_prefix: "llm-stream:".to_owned(),
            replay_max_events: 100_000,
        }
    }
}

/// What happens to a request when the shared store cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Each replica enforces the limits on its own until the store is back.
    #[default]
    Open,
    /// Requests are refused with 503 until the store is back.
    Closed,
}

/// How resumable streams are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResumeConfig {
    /// A resumable stream with no client attached keeps generating this long, then is
    /// cancelled.
    pub grace: Duration,
    /// A finished stream can be replayed this long after its end.
    pub ttl: Duration,
    /// The memory all replay buffers may hold together, in bytes. Past it, finished streams
    /// are forgotten oldest first, and new resumable streams are refused while live ones fill
    /// it.
    pub budget: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            body_limit: 4 << 20,
            header_limit: 64 << 10,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(15),
            stream_buffer: 64,
            max_connections: 1024,
            request_timeout: Duration::from_secs(300),
            max_choices: 8,
            api_keys: Vec::new(),
            api_keys_file: None,
            cors_origins: Vec::new(),
            resume: ResumeConfig::default(),
            rate_limits: RateLimits::default(),
            shared_state: None,
            index_html: None,
        }
    }
}

impl Default for ResumeConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
            ttl: Duration::from_secs(300),
            budget: 64 << 20,
        }
    }
}
