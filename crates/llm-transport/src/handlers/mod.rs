//! The handlers of every route. Each one answers a request, or fails with the [`Error`] the
//! router turns into the dialect's error response.
//!
//! [`Error`]: crate::error::Error

mod chat;
mod eventsource;
mod generate;
mod info;
mod resume;
mod websocket;

pub(crate) use chat::chat_completions;
pub(crate) use eventsource::eventsource;
pub(crate) use info::{health, index, metrics, models};
pub(crate) use resume::resume_by_path;
pub(crate) use websocket::upgrade as websocket;
