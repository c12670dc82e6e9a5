//! Wire formats of an OpenAI-compatible chat streaming service, with no IO.
//!
//! - [`ChatCompletionRequest`] and the response types ([`ChatCompletion`],
//!   [`ChatCompletionChunk`], [`Usage`], [`ModelList`], [`ErrorBody`]) with serde. Requests are
//!   parsed with [`ChatCompletionRequest::from_json`], which names the offending field in its
//!   errors.
//! - [`sse`]: an encoder that writes events into a `BytesMut`, and [`sse::SseDecoder`], an
//!   incremental decoder exact to the WHATWG rules, linear in time and bounded in memory.
//! - [`ChatStreamDecoder`]: raw stream bytes in, typed chunks out.
//! - [`ws`]: the messages of the `/ws/chat` WebSocket.
//! - The other dialects: [`completions`] (`/v1/completions`), [`responses`] (OpenAI's
//!   Responses API) and [`anthropic`] (Anthropic's Messages API), each with its request, its
//!   answer and its stream events.
//! - [`tokenize`]: `POST /tokenize` and `POST /detokenize`, in vLLM's shapes.
//! - [`GenerateRequest`]: what every dialect's request becomes for the engine, with
//!   [`format::OutputFormat`] for structured output.
//!
//! The crate depends on no async runtime, HTTP stack or inference engine, so any Rust program
//! (a client, a proxy, a test) can use it alone.
//!
//! # Example
//!
//! A server encodes a chunk; a client decodes it from bytes that arrive in arbitrary pieces.
//!
//! ```
//! use bytes::BytesMut;
//! use llm_protocol::{sse, ChatStreamDecoder, StreamEvent};
//!
//! let mut wire = BytesMut::new();
//! sse::write_data(&mut wire, r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"안녕"}}]}"#);
//! sse::write_done(&mut wire);
//!
//! let mut decoder = ChatStreamDecoder::new();
//! let mut events = Vec::new();
//! for piece in wire.chunks(3) {
//!     decoder.push(piece, &mut events)?;
//! }
//! let StreamEvent::Chunk(chunk) = &events[0] else { unreachable!() };
//! assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("안녕"));
//! assert_eq!(events[1], StreamEvent::Done);
//! # Ok::<(), llm_protocol::Error>(())
//! ```

pub mod anthropic;
pub mod completions;
mod error;
pub mod format;
mod generate;
mod parse;
mod request;
pub mod responses;
pub mod sse;
mod stream;
pub mod tokenize;
pub mod tools;
mod types;
pub mod ws;

pub use error::{Error, Result};
pub use generate::{GenerateRequest, Prompt, MAX_ENGINE_STOP_SEQUENCES};
pub use parse::MAX_CHOICES;
pub use request::{
    ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, StreamOptions,
    MAX_STOP_SEQUENCES, MAX_TOP_LOGPROBS,
};
pub use stream::{ChatStreamDecoder, StreamEvent};
pub use types::{
    ApiError, AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChoiceLogprobs,
    ChunkChoice, Delta, ErrorBody, FinishReason, Model, ModelList, Role, TokenLogprob, TopLogprob,
    Usage,
};
