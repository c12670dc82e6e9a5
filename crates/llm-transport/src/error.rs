//! The transport's error type and the one table that turns every error into a response.
//!
//! Each variant has its HTTP status and OpenAI error `type` side by side in
//! [`Error::classify`]. Clients get the safe message of `Display`; the log gets the detail
//! (`source()` chains) from the caller.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use llm_protocol::anthropic::AnthropicErrorBody;
use llm_protocol::{ApiError, ErrorBody};

use crate::body::ResponseBody;

/// Everything a request can fail with at the HTTP layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine refused or failed the request.
    #[error(transparent)]
    Engine(#[from] llm_engine::Error),
    /// The request body is larger than the configured limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The request body could not be read.
    #[error("the request body could not be read")]
    BodyRead,
    /// The request body is not a valid request.
    #[error(transparent)]
    InvalidRequest(#[from] llm_protocol::Error),
    /// The request names a model this server does not serve.
    #[error("the model `{0}` does not exist; GET /v1/models lists the served model")]
    ModelNotFound(String),
    /// No route matches the path.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists, but not for this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
        /// The method the route takes, for the `Allow` header.
        allow: &'static str,
    },
    /// The model is still loading.
    #[error("the model is still loading; retry shortly")]
    Loading,
    /// No valid API key.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A resume names a stream this server never had.
    #[error("no resumable stream `{0}`")]
    StreamNotFound(String),
    /// A resume names a stream whose replay buffer has expired.
    #[error("the stream `{0}` has expired and can no longer be resumed")]
    StreamExpired(String),
    /// A request to retrieve a response, which a stateless server does not keep.
    #[error(
        "responses are not stored, so `{0}` cannot be retrieved; `?stream=true` replays a \
         resumable stream"
    )]
    ResponseNotStored(String),
    /// A `Last-Event-ID` that does not name an event of the stream.
    #[error("`Last-Event-ID` `{0}` does not name an event of this stream")]
    InvalidLastEventId(String),
    /// Live resumable streams fill the replay memory budget.
    #[error(
        "replay buffers are full ({budget} bytes); retry shortly, or request a stream \
         without `resumable`"
    )]
    ReplayFull {
        /// The configured budget.
        budget: usize,
    },
    /// A live resumable stream would take the replay logs past their memory budget: it ends
    /// with this error, cut short.
    #[error(
        "the replay buffers reached their budget of {budget} bytes, so this resumable stream \
         was cut short; request shorter answers, or streams without `resumable`"
    )]
    ReplayBudgetExceeded {
        /// The configured budget.
        budget: usize,
    },
    /// The server is shutting down and starts no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A non-streaming request ran past the request timeout; its generation was cancelled.
    #[error("the request did not finish within {0:?}")]
    Timeout(std::time::Duration),
    /// The client is past one of its rate limits; nothing was started.
    #[error(
        "rate limit reached: {value} {limit}{} for this client; retry in {:.1} s",
        if *limit == "concurrent requests" { "" } else { " per minute" },
        retry_after.as_secs_f64()
    )]
    RateLimited {
        /// `requests`, `tokens` or `concurrent requests`.
        limit: &'static str,
        /// The limit.
        value: u32,
        /// When the request would fit.
        retry_after: std::time::Duration,
    },
    /// The rate limits are shared by replicas, their store cannot be reached, and they fail
    /// closed: nothing was started.
    #[error("the rate limits cannot be checked right now (the shared state store is unreachable); retry shortly")]
    StateUnavailable,
    /// The server has as many connections as it accepts.
    #[error("the server has reached its limit of {limit} connections; retry shortly")]
    TooManyConnections {
        /// The configured limit.
        limit: usize,
    },
    /// A WebSocket chat message arrived while a generation runs on the socket.
    #[error(
        "a generation is already running on this socket; wait for `done` or send \
         {{\"type\":\"cancel\"}}"
    )]
    Busy,
    /// A WebSocket message that is not text.
    #[error("only text messages with JSON are accepted")]
    BinaryMessage,
    /// A browser page from an origin that is not allowed opened a WebSocket.
    #[error("WebSocket connections from origin `{0}` are not allowed; see --cors-origin")]
    OriginNotAllowed(String),
    /// A request to `/ws/chat` that is not a valid WebSocket upgrade.
    #[error("not a WebSocket upgrade: {0}")]
    InvalidUpgrade(&'static str),
}

/// The error shape a route answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

/// Where an error stands in the table.
struct Class {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
}

impl Error {
    /// The table: status, OpenAI `type`, `code` and `param` of every error.
    fn classify(&self) -> Class {
        use llm_engine::Error as E;
        let class = |status, kind, code: Option<&'static str>| Class {
            status,
            kind,
            code,
            param: None,
        };
        const INVALID: &str = "invalid_request_error";
        match self {
            Self::Engine(error) => match error {
                E::InvalidRequest { param, .. } => Class {
                    param: param.clone(),
                    ..class(StatusCode::BAD_REQUEST, INVALID, None)
                },
                E::Unsupported { param, .. } => Class {
                    param: Some((*param).to_owned()),
                    ..class(
                        StatusCode::BAD_REQUEST,
                        INVALID,
                        Some("unsupported_parameter"),
                    )
                },
                E::ContextOverflow { .. } => Class {
                    param: Some("messages".to_owned()),
                    ..class(
                        StatusCode::BAD_REQUEST,
                        INVALID,
                        Some("context_length_exceeded"),
                    )
                },
                E::Overloaded { .. } => class(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    Some("queue_full"),
                ),
                E::SlowConsumer { .. } => class(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    Some("slow_consumer"),
                ),
                E::ShuttingDown => class(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("shutting_down"),
                ),
                E::EngineFailed { .. } => class(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    Some("engine_failed"),
                ),
                E::Generation { .. }
                | E::ModelFetch { .. }
                | E::InvalidModel { .. }
                | E::Conversion { .. }
                | E::ModelLoad { .. }
                | E::Device { .. } => {
                    class(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
                }
            },
            Self::InvalidRequest(llm_protocol::Error::InvalidRequest { param, .. }) => Class {
                param: param.clone(),
                ..class(StatusCode::BAD_REQUEST, INVALID, None)
            },
            Self::InvalidRequest(_) | Self::BodyRead => {
                class(StatusCode::BAD_REQUEST, INVALID, None)
            }
            Self::BodyTooLarge { .. } => class(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                Some("request_too_large"),
            ),
            Self::ModelNotFound(_) => Class {
                param: Some("model".to_owned()),
                ..class(StatusCode::NOT_FOUND, INVALID, Some("model_not_found"))
            },
            Self::NotFound(_) => class(StatusCode::NOT_FOUND, INVALID, Some("not_found")),
            Self::MethodNotAllowed { .. } => class(
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                Some("method_not_allowed"),
            ),
            Self::Loading => class(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("model_loading"),
            ),
            Self::Unauthorized(_) => {
                class(StatusCode::UNAUTHORIZED, INVALID, Some("invalid_api_key"))
            }
            Self::StreamNotFound(_) => {
                class(StatusCode::NOT_FOUND, INVALID, Some("stream_not_found"))
            }
            Self::StreamExpired(_) => class(StatusCode::GONE, INVALID, Some("stream_expired")),
            Self::ResponseNotStored(_) => {
                class(StatusCode::NOT_FOUND, INVALID, Some("response_not_found"))
            }
            Self::InvalidLastEventId(_) => Class {
                param: Some("last_event_id".to_owned()),
                ..class(
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    Some("invalid_last_event_id"),
                )
            },
            Self::ReplayFull { .. } => class(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("replay_budget_exhausted"),
            ),
            Self::ReplayBudgetExceeded { .. } => class(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("replay_budget_exhausted"),
            ),
            Self::ShuttingDown => class(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("shutting_down"),
            ),
            Self::Timeout(_) => class(StatusCode::GATEWAY_TIMEOUT, "server_error", Some("timeout")),
            // OpenAI's type names the limit: `requests` or `tokens`.
            Self::RateLimited { limit, .. } => class(
                StatusCode::TOO_MANY_REQUESTS,
                if *limit == "tokens" {
                    "tokens"
                } else {
                    "requests"
                },
                Some("rate_limit_exceeded"),
            ),
            Self::StateUnavailable => class(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("state_unavailable"),
            ),
            Self::TooManyConnections { .. } => class(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("too_many_connections"),
            ),
            Self::Busy => class(StatusCode::CONFLICT, INVALID, Some("generation_running")),
            Self::BinaryMessage => class(StatusCode::BAD_REQUEST, INVALID, Some("binary_message")),
            Self::OriginNotAllowed(_) => {
                class(StatusCode::FORBIDDEN, INVALID, Some("origin_not_allowed"))
            }
            Self::InvalidUpgrade(_) => {
                class(StatusCode::BAD_REQUEST, INVALID, Some("invalid_upgrade"))
            }
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.classify().status
    }

    /// The OpenAI error object clients see.
    pub fn to_api_error(&self) -> ApiError {
        let class = self.classify();
        ApiError {
            message: self.to_string(),
            kind: class.kind.to_owned(),
            param: class.param,
            code: class.code.map(str::to_owned),
        }
    }

    /// Anthropic's error `type` for this error: its class by status, as Anthropic's API
    /// reports them.
    pub(crate) fn anthropic_kind(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND | StatusCode::GONE => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            StatusCode::GATEWAY_TIMEOUT => "timeout_error",
            status if status.is_client_error() => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The error in Anthropic's shape.
    pub(crate) fn to_anthropic(&self) -> AnthropicErrorBody {
        AnthropicErrorBody::new(self.anthropic_kind(), self.to_string())
    }

    /// The JSON error body in `dialect`'s shape.
    pub(crate) fn body(&self, dialect: Dialect) -> Vec<u8> {
        match dialect {
            Dialect::OpenAi => serde_json::to_vec(&ErrorBody::from(self.to_api_error())),
            Dialect::Anthropic => serde_json::to_vec(&self.to_anthropic()),
        }
        .expect("error bodies serialize")
    }

    /// The full response: status, the JSON error body in `dialect`'s shape, and
    /// `Retry-After` where retrying helps.
    pub(crate) fn into_response(self, dialect: Dialect) -> Response<ResponseBody> {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, detail = ?self, "request failed");
        }
        let body = self.body(dialect);
        let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::MethodNotAllowed { allow, .. } = &self {
            headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Self::RateLimited { retry_after, .. } = &self {
            // Whole seconds, rounded up: retrying at once would be refused again.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        } else if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `Result` with the transport's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
