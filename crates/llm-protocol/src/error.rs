//! The crate's one error type.

use crate::types::ApiError;

/// Everything that can go wrong while parsing requests or decoding streams.
///
/// Variants carry structured data (the offending field, the limit that was hit) so callers can
/// branch on them and build responses without looking at message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request body was not valid JSON, had a field of the wrong type, or held a value out of
    /// range. `param` names the field (for example `messages[1].role`) when one is to blame.
    #[error("{message}")]
    InvalidRequest {
        /// The path of the offending field, if the problem is with one field.
        param: Option<String>,
        /// A message that is safe to show to the client.
        message: String,
    },
    /// One SSE line grew past the decoder's configured line limit.
    #[error("SSE line longer than the limit of {limit} bytes")]
    LineTooLong {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// One SSE event's data grew past the decoder's configured event limit.
    #[error("SSE event larger than the limit of {limit} bytes")]
    EventTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The server sent `{"error": {...}}` in the middle of a stream.
    #[error("the server reported an error: {}", .0.message)]
    Api(ApiError),
    /// A `data:` payload of an OpenAI stream was neither a chunk, an error nor `[DONE]`.
    #[error("malformed stream chunk: {0}")]
    MalformedChunk(#[source] serde_json::Error),
}

impl Error {
    /// Builds an [`Error::InvalidRequest`] that blames one field.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            param: Some(param.into()),
            message: message.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
