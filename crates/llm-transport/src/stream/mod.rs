//! Streaming one generation to clients.
//!
//! A [`Generation`] is the engine's events for one request, with its metrics and log line. An
//! [`Encoder`] turns those events into a dialect's frames: [`ChunkEncoder`] writes OpenAI chat
//! chunks, [`CompletionEncoder`] completions chunks, [`ResponsesEncoder`] the Responses API's
//! events and [`MessagesEncoder`] Anthropic's. [`pump`] writes the frames straight to one client; [`produce`] appends them to a
//! replay log that any number of clients read with [`follow`]. Every silent stream gets
//! keep-alives on one [`KeepAlive`] clock.

mod anthropic;
mod chat;
mod completion;
mod encoder;
mod frame;
mod generation;
mod keep_alive;
mod pump;
mod responses;

pub(crate) use anthropic::{message, stop_reason, MessagesEncoder};
pub(crate) use chat::{ChunkEncoder, ChunkMeta};
pub(crate) use completion::{CompletionEncoder, CompletionMeta};
pub(crate) use encoder::Encoder;
pub(crate) use generation::{usage_of, Generation};
pub(crate) use keep_alive::KeepAlive;
pub(crate) use pump::{follow, produce, pump, Watched};
pub(crate) use responses::{finished_response, response_object, ResponsesEncoder};
