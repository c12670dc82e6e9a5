//! The HTTP layer of an OpenAI-compatible streaming server, on bare `hyper` 1.x.
//!
//! - `POST /v1/chat/completions`, streaming (`"stream": true`, server-sent events) or not;
//!   with `"resumable": true` a stream can be resumed after a lost connection at
//!   `GET /v1/chat/completions/{id}/stream` with `Last-Event-ID`;
//! - `GET /stream?q=...`: the same stream for the browser's `EventSource`, always resumable;
//! - `GET /ws/chat`: chat over a WebSocket, several turns per socket, with cancellation;
//! - `GET /v1/models`, `GET /health` (503 while the model loads), `GET /metrics` (Prometheus),
//!   and an optional page at `/`;
//! - API keys (`Authorization: Bearer`, or `?api_key=` for browsers), named in a keys file
//!   reloaded on [`Server::reload_keys`], CORS with preflight, and per-key rate limits with
//!   OpenAI's `x-ratelimit-*` headers, kept in this process or, for replicas, in Redis
//!   ([`SharedState`]).
//!
//! Every chunk is flushed as its own frame with `TCP_NODELAY`; a silent stream gets keep-alive
//! comments; a client that disconnects cancels its generation at once (a resumable one after
//! a grace period); every limit is named in [`TransportConfig`]; every error becomes OpenAI's
//! error shape through one table ([`Error`]). The transport knows the engine only through the
//! [`Backend`] trait, which [`llm_engine::Engine`] implements. With the `test-util` feature,
//! `ScriptedEngine` imitates it for tests and benchmarks of this layer.
//!
//! # Example
//!
//! ```no_run
//! use llm_transport::{Server, TransportConfig};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::new(TransportConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! let engine = llm_engine::Engine::builder().build().await?;
//! server.set_engine(engine);
//! server.serve(listener, std::future::pending(), Duration::from_secs(30)).await?;
//! # Ok(())
//! # }
//! ```

// Modules in layer order: each one uses only those above it (`xtask/src/tidy.rs` keeps it so).
// Leaves: settings, errors, bodies, credentials, CORS, metrics, replay logs, the engine seam.
mod auth;
mod backend;
mod body;
mod config;
mod connection;
mod cors;
mod error;
mod metrics;
#[cfg(feature = "test-util")]
pub mod probe;
mod ratelimit;
mod replay;
#[cfg(feature = "test-util")]
mod scripted;
mod shared;
// Shared by everything below.
mod shutdown;
mod state;
// HTTP helpers, then the streaming parts, then the handlers, the router and the server.
mod handlers;
mod http;
mod router;
mod server;
mod stream;

pub use auth::KeysFileError;
pub use backend::{Backend, EventStream};
pub use config::{OnFailure, RateLimits, ResumeConfig, SharedState, TransportConfig};
pub use error::{Error, Result};
#[cfg(feature = "test-util")]
pub use scripted::{Script, ScriptedEngine};
pub use server::Server;
pub use shutdown::shutdown_signal;
pub use state::ConfigError;
