//! Routing: which handler answers a path and method, whether it needs a key, its label in
//! metrics, and what every answer gets (request id, CORS headers, the log line).

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::cors::Cors;
use crate::error::{Error, Result};
use crate::handlers;
use crate::http::{log_millis, request_id, RequestInfo, Streamed};
use crate::state::State;

/// The routes, with the methods each takes, its label in metrics, and whether it needs a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Index,
    Health,
    Metrics,
    Models,
    ChatCompletions,
    Resume(String),
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
            "/stream" => Self::EventSource,
            "/ws/chat" => Self::WebSocket,
            _ => {
                let id = path
                    .strip_prefix("/v1/chat/completions/")?
                    .strip_suffix("/stream")?;
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                Self::Resume(id.to_owned())
            }
        })
    }

    fn method(&self) -> Method {
        match self {
            Self::ChatCompletions => Method::POST,
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
            Some(Self::Resume(_)) => "/v1/chat/completions/{id}/stream",
            Some(Self::EventSource) => "/stream",
            Some(Self::WebSocket) => "/ws/chat",
            None => "other",
        }
    }

    fn needs_key(&self) -> bool {
        !matches!(self, Self::Index | Self::Health | Self::Metrics)
    }
}

/// Answers one request. Never fails: errors become OpenAI error responses.
pub(crate) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let received = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let route = Route::find(&path);
    let info = RequestInfo {
        id: request_id(request.headers()),
        endpoint: Route::endpoint(route.as_ref()),
        received,
    };
    let origin = state.cors().allowed_origin(request.headers());
    let mut response = if Cors::is_preflight(&method, request.headers()) {
        state.cors().preflight(request.headers())
    } else {
        dispatch(&state, route, request, &info)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(request_id = %info.id, error = %error, "request refused");
                error.into_response()
            })
    };
    let status = response.status().as_u16();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&info.id) {
        headers.insert("x-request-id", value);
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

async fn dispatch(
    state: &Arc<State>,
    route: Option<Route>,
    request: Request<Incoming>,
    info: &RequestInfo,
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
        state
            .keys()
            .check(request.headers(), request.uri().query())?;
    }
    match route {
        Route::Index => handlers::index(state),
        Route::Health => handlers::health(state),
        Route::Metrics => Ok(handlers::metrics(state)),
        Route::Models => handlers::models(state),
        Route::ChatCompletions => handlers::chat_completions(state, request, info).await,
        Route::Resume(id) => handlers::resume_by_path(state, &request, &id),
        Route::EventSource => handlers::eventsource(state, &request, info),
        Route::WebSocket => handlers::websocket(state, request, info),
    }
}
