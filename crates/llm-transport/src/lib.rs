//! The HTTP layer of an OpenAI-compatible streaming server, on bare `hyper` 1.x.
//!
//! - `POST /v1/chat/completions`, streaming (`"stream": true`, server-sent events) or not;
//! - `GET /v1/models`, and `GET /health` (503 while the model loads, 200 once ready).
//!
//! Every chunk is flushed as its own frame with `TCP_NODELAY`; a silent stream gets keep-alive
//! comments; a client that disconnects cancels its generation at once; every error becomes
//! OpenAI's error shape through one table ([`Error`]). The transport knows the engine only
//! through `llm_engine`'s API.
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

mod body;
mod config;
mod error;
mod routes;
mod server;
mod sse;

pub use config::TransportConfig;
pub use error::{Error, Result};
pub use server::Server;
