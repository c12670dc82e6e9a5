//! The handlers of every route. Each one answers a request, or fails with the [`Error`] the
//! router turns into the dialect's error response.
//!
//! [`Error`]: crate::error::Error

mod chat;
mod completions;
mod eventsource;
mod generate;
mod info;
mod messages;
mod responses;
mod resume;
mod tokenize;
mod websocket;

pub(crate) use chat::chat_completions;
pub(crate) use completions::completions;
pub(crate) use eventsource::eventsource;
pub(crate) use info::{health, index, metrics, models};
pub(crate) use messages::{count_tokens, messages};
pub(crate) use responses::responses;
pub(crate) use resume::{resume_by_path, retrieve_response};
pub(crate) use tokenize::{detokenize, tokenize};
pub(crate) use websocket::upgrade as websocket;
