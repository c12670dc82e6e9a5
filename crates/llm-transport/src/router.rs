//! Routing: which handler answers a path and method, whether it needs a key, its label in
//! metrics, and what every answer gets (request id, CORS headers, the log line).

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::cors::Cors;
use crate::error::{Dialect, Error, Result};
use crate::handlers;
use crate::http::{log_millis, request_id, Peer, RequestInfo, Streamed};
use crate::ratelimit::{reset_text, Status};
use crate::state::State;

/// The generating routes whose streams can be resumed: each has its path and the prefix of
/// its response ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Chat,
    Completions,
    Responses,
    Messages,
}

impl Family {
    const ALL: [Self; 4] = [
        Self::Chat,
        Self::Completions,
        Self::Responses,
        Self::Messages,
    ];

    fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Responses => "/v1/responses",
            Self::Messages => "/v1/messages",
        }
    }

    /// What the family's response ids start with.
    fn id_prefix(self) -> &'static str {
        match self {
            Self::Chat => "chatcmpl-",
            Self::Completions => "cmpl-",
            Self::Responses => "resp_",
            Self::Messages => "msg_",
        }
    }

    fn resume_endpoint(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions/{id}/stream",
            Self::Completions => "/v1/completions/{id}/stream",
            Self::Responses => "/v1/responses/{id}/stream",
            Self::Messages => "/v1/messages/{id}/stream",
        }
    }
}

/// The routes, with the methods each takes, its label in metrics, and whether it needs a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Index,
    Health,
    Metrics,
    Models,
    ChatCompletions,
    Completions,
    Responses,
    Messages,
    CountTokens,
    /// vLLM's `POST /tokenize` and `POST /detokenize`.
    Tokenize,
    Detokenize,
    Resume(Family, String),
    /// `GET /v1/responses/{id}`: with `stream=true`, the OpenAI SDK's way to resume.
    RetrieveResponse(String),
    EventSource,
    WebSocket,
}

impl Route {
    fn find(path: &str) -> Option<Self> {
        Some(match path {
            "/" => Self::Index,
            "/health" => Self::Health,
            "/metrics" => Self::Metrics,
            "/v1/models" => Self::Models,
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/responses" => Self::Responses,
            "/v1/messages" => Self::Messages,
            "/v1/messages/count_tokens" => Self::CountTokens,
            "/tokenize" => Self::Tokenize,
            "/detokenize" => Self::Detokenize,
            "/stream" => Self::EventSource,
            "/ws/chat" => Self::WebSocket,
            _ => {
                for family in Family::ALL {
                    let Some(rest) = path
                        .strip_prefix(family.path())
                        .and_then(|rest| rest.strip_prefix('/'))
                    else {
                        continue;
                    };
                    if let Some(id) = rest.strip_suffix("/stream") {
                        return valid_id(id).then(|| Self::Resume(family, id.to_owned()));
                    }
                    if family == Family::Responses && valid_id(rest) {
                        return Some(Self::RetrieveResponse(rest.to_owned()));
                    }
                }
                return None;
            }
        })
    }

    fn method(&self) -> Method {
        match self {
            Self::ChatCompletions
            | Self::Completions
            | Self::Responses
            | Self::Messages
            | Self::CountTokens
            | Self::Tokenize
            | Self::Detokenize => Method::POST,
            _ => Method::GET,
        }
    }

    /// The label in metrics: bounded, whatever the paths clients send.
    fn endpoint(route: Option<&Self>) -> &'static str {
        match route {
            Some(Self::Index) => "/",
            Some(Self::Health) => "/health",
            Some(Self::Metrics) => "/metrics",
            Some(Self::Models) => "/v1/models",
            Some(Self::ChatCompletions) => "/v1/chat/completions",
            Some(Self::Completions) => "/v1/completions",
            Some(Self::Responses) => "/v1/responses",
            Some(Self::Messages) => "/v1/messages",
            Some(Self::CountTokens) => "/v1/messages/count_tokens",
            Some(Self::Tokenize) => "/tokenize",
            Some(Self::Detokenize) => "/detokenize",
            Some(Self::Resume(family, _)) => family.resume_endpoint(),
            Some(Self::RetrieveResponse(_)) => "/v1/responses/{id}",
            Some(Self::EventSource) => "/stream",
            Some(Self::WebSocket) => "/ws/chat",
            None => "other",
        }
    }

    fn needs_key(&self) -> bool {
        !matches!(self, Self::Index | Self::Health | Self::Metrics)
    }

    /// The shape of the route's errors.
    fn dialect(route: Option<&Self>) -> Dialect {
        match route {
            Some(Self::Messages | Self::CountTokens | Self::Resume(Family::Messages, _)) => {
                Dialect::Anthropic
            }
            _ => Dialect::OpenAi,
        }
    }
}

/// An id segment of a path: not empty, no further segments.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('/')
}

/// Answers one request. Never fails: errors become error responses in the route's dialect.
pub(crate) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let received = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let route = Route::find(&path);
    let peer = request.extensions().get::<Peer>().map(|peer| peer.0.ip());
    let mut info = RequestInfo {
        id: request_id(request.headers()),
        endpoint: Route::endpoint(route.as_ref()),
        received,
        client: peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
        key: None,
        limits: state.config().rate_limits,
        rate: std::sync::OnceLock::new(),
    };
    let origin = state.cors().allowed_origin(request.headers());
    let mut response = if Cors::is_preflight(&method, request.headers()) {
        state.cors().preflight(request.headers())
    } else {
        let dialect = Route::dialect(route.as_ref());
        dispatch(&state, route, request, &mut info)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(request_id = %info.id, error = %error, "request refused");
                error.into_response(dialect)
            })
    };
    let status = response.status().as_u16();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&info.id) {
        headers.insert("x-request-id", value);
    }
    if path.starts_with("/v1/") {
        let status = match info.rate.get() {
            Some(status) => *status,
            None => state.limiter().status(&info.client, &info.limits).await,
        };
        rate_headers(status, headers);
    }
    state.cors().decorate(origin, headers);
    state.metrics().request(info.endpoint, status);
    if response.extensions().get::<Streamed>().is_none() {
        tracing::info!(
            request_id = %info.id,
            %method,
            path,
            status,
            millis = log_millis(received.elapsed()),
            "request"
        );
    }
    Ok(response)
}

/// OpenAI's `x-ratelimit-*` headers: the client's limits, what is left of them, and when they
/// are whole again; none when no limit is set.
fn rate_headers(status: Status, headers: &mut http::HeaderMap) {
    for (kind, quota) in [("requests", status.requests), ("tokens", status.tokens)] {
        let Some(quota) = quota else {
            continue;
        };
        for (name, value) in [
            ("limit", quota.limit.to_string()),
            ("remaining", quota.remaining.to_string()),
            ("reset", reset_text(quota.reset)),
        ] {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(format!("x-ratelimit-{name}-{kind}")),
                HeaderValue::try_from(value),
            ) {
                headers.insert(name, value);
            }
        }
    }
}

async fn dispatch(
    state: &Arc<State>,
    route: Option<Route>,
    request: Request<Incoming>,
    info: &mut RequestInfo,
) -> Result<Response<ResponseBody>> {
    let path = request.uri().path();
    let Some(route) = route else {
        return Err(Error::NotFound(path.to_owned()));
    };
    if request.method() != route.method() {
        return Err(Error::MethodNotAllowed {
            method: request.method().to_string(),
            path: path.to_owned(),
            allow: if route.method() == Method::POST {
                "POST"
            } else {
                "GET"
            },
        });
    }
    if route.needs_key() {
        let key = state
            .keys()
            .check(request.headers(), request.uri().query())?;
        if let Some(key) = key {
            info.client.clone_from(&key.name);
            info.limits = key.limits;
            info.key = Some(key);
        }
    }
    let info = &*info;
    match route {
        Route::Index => handlers::index(state),
        Route::Health => handlers::health(state).await,
        Route::Metrics => Ok(handlers::metrics(state)),
        Route::Models => handlers::models(state, info),
        Route::ChatCompletions => handlers::chat_completions(state, request, info).await,
        Route::Completions => handlers::completions(state, request, info).await,
        Route::Responses => handlers::responses(state, request, info).await,
        Route::Messages => handlers::messages(state, request, info).await,
        Route::CountTokens => handlers::count_tokens(state, request).await,
        Route::Tokenize => handlers::tokenize(state, request).await,
        Route::Detokenize => handlers::detokenize(state, request).await,
        Route::Resume(family, id) => {
            if !id.starts_with(family.id_prefix()) {
                return Err(Error::StreamNotFound(id));
            }
            handlers::resume_by_path(state, &request, &id).await
        }
        Route::RetrieveResponse(id) => handlers::retrieve_response(state, &request, &id).await,
        Route::EventSource => handlers::eventsource(state, &request, info).await,
        Route::WebSocket => handlers::websocket(state, request, info),
    }
}
