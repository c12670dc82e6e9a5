//! Routing and the request handlers.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use llm_protocol::{
    AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, Model, ModelList, Role,
};
use tokio::sync::{mpsc, watch};

use crate::auth::ApiKeys;
use crate::backend::Backend;
use crate::body::ResponseBody;
use crate::config::TransportConfig;
use crate::cors::Cors;
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::replay::{self, Lookup, ReplayLog, ReplayStore};
use crate::server::{Deadline, Tasks};
use crate::sse::{ChunkEncoder, ChunkMeta, Generation, RequestInfo};
use crate::{eventsource, websocket};

/// What every handler shares.
pub(crate) struct State {
    pub(crate) config: TransportConfig,
    pub(crate) backend: OnceLock<Arc<dyn Backend>>,
    pub(crate) keys: ApiKeys,
    pub(crate) cors: Cors,
    pub(crate) replay: Arc<ReplayStore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set once the shutdown grace has run out.
    pub(crate) deadline: watch::Sender<bool>,
    /// Set when shutdown begins: idle WebSockets close, busy ones after their turn.
    pub(crate) draining: watch::Sender<bool>,
    pub(crate) tasks: Tasks,
}

impl State {
    pub(crate) fn backend(&self) -> Result<&Arc<dyn Backend>> {
        self.backend.get().ok_or(Error::Loading)
    }

    pub(crate) fn deadline(&self) -> Deadline {
        Deadline::new(&self.deadline)
    }
}

/// Marks a streamed response: its log line is written when the stream ends.
#[derive(Debug, Clone, Copy)]
struct Streamed;

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
    let origin = state.cors.allowed_origin(request.headers());
    let mut response = if Cors::is_preflight(&method, request.headers()) {
        state.cors.preflight(request.headers())
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
    state.cors.decorate(origin, headers);
    state.metrics.request(info.endpoint, status);
    if response.extensions().get::<Streamed>().is_none() {
        tracing::info!(
            request_id = %info.id,
            %method,
            path,
            status,
            millis = crate::sse::log_millis(received.elapsed()),
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
        state.keys.check(request.headers(), request.uri().query())?;
    }
    match route {
        Route::Index => index(state),
        Route::Health => health(state),
        Route::Metrics => Ok(metrics(state)),
        Route::Models => models(state),
        Route::ChatCompletions => chat_completions(state, request, info).await,
        Route::Resume(id) => resume_by_path(state, &request, &id),
        Route::EventSource => eventsource::handle(state, &request, info),
        Route::WebSocket => websocket::upgrade(state, request, info),
    }
}

fn index(state: &State) -> Result<Response<ResponseBody>> {
    let Some(page) = state.config.index_html.clone() else {
        return Err(Error::NotFound("/".to_owned()));
    };
    let mut response = Response::new(ResponseBody::full(page));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(response)
}

/// `200 {"status":"ok","engine_restarts":N}` once an engine serves; `engine_restarts` counts
/// the times the model engine died (failing the requests it held) and was started again.
fn health(state: &State) -> Result<Response<ResponseBody>> {
    let restarts = state.backend()?.stats().engine_restarts;
    Ok(json_response(
        StatusCode::OK,
        format!(r#"{{"status":"ok","engine_restarts":{restarts}}}"#).into_bytes(),
    ))
}

fn metrics(state: &State) -> Response<ResponseBody> {
    let stats = state.backend.get().map(|backend| backend.stats());
    let mut response = Response::new(ResponseBody::full(state.metrics.render(stats)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

fn models(state: &State) -> Result<Response<ResponseBody>> {
    let info = state.backend()?.model();
    let list = ModelList::new(vec![Model::new(
        info.name.clone(),
        info.created,
        "llm-stream",
    )]);
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&list).expect("model lists serialize"),
    ))
}

async fn chat_completions(
    state: &Arc<State>,
    request: Request<Incoming>,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config.body_limit).await?;
    let request = ChatCompletionRequest::from_json(&body)?;
    if !request.stream {
        return complete(state, &request, info).await;
    }
    let resumable = request.resumable;
    start_stream(state, &request, info, resumable, None)
}

/// Starts a generation and answers with its event stream; a resumable one is written to a
/// replay log first. `prelude` goes before the first event (the `retry:` of `/stream`).
pub(crate) fn start_stream(
    state: &Arc<State>,
    request: &ChatCompletionRequest,
    info: &RequestInfo,
    resumable: bool,
    prelude: Option<Bytes>,
) -> Result<Response<ResponseBody>> {
    if resumable {
        // Refuse before the engine sees the request when replay memory is full.
        state.replay.check_room()?;
    }
    let (generation, meta) = submit(state, request, info, resumable)?;
    let config = &state.config;
    let (sender, receiver) = mpsc::channel(config.stream_buffer);
    if resumable {
        let log = state.replay.create(&meta.id)?;
        // The client is attached before the producer starts, so that the grace period only
        // counts time with no client at all.
        let follower =
            crate::sse::follow(log.attach(), 0, prelude, sender, config.keep_alive_interval);
        state.tasks.spawn(crate::sse::produce(
            generation,
            Arc::clone(&log),
            Arc::clone(&state.replay),
            config.resume.grace,
            state.deadline(),
        ));
        state.tasks.spawn(follower);
    } else {
        state.tasks.spawn(crate::sse::pump(
            generation,
            sender,
            config.keep_alive_interval,
            state.deadline(),
        ));
    }
    Ok(event_stream_response(receiver))
}

/// Submits a request to the engine, checking the model name first. Returns the generation and
/// what every chunk of its response repeats (id, creation time, model).
pub(crate) fn submit(
    state: &State,
    request: &ChatCompletionRequest,
    info: &RequestInfo,
    resumable: bool,
) -> Result<(Generation, ChunkMeta)> {
    let backend = state.backend()?;
    let model = backend.model().name.clone();
    if !request.model.is_empty() && request.model != model {
        return Err(Error::ModelNotFound(request.model.clone()));
    }
    let stream = backend.submit(request)?;
    let meta = ChunkMeta {
        id: response_id(),
        created: unix_now(),
        model,
        include_usage: request.include_usage(),
    };
    let encoder = ChunkEncoder::new(meta.clone(), resumable);
    let generation = Generation::new(stream, encoder, Arc::clone(&state.metrics), info);
    Ok((generation, meta))
}

async fn complete(
    state: &State,
    request: &ChatCompletionRequest,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let (mut generation, meta) = submit(state, request, info, false)?;
    let timeout = state.config.request_timeout;
    let mut deadline = state.deadline();
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(timeout, generation.collect()) => outcome,
        () = deadline.reached() => {
            generation.cancel("server shutting down");
            return Err(Error::Engine(llm_engine::Error::ShuttingDown));
        }
    };
    let completion = match outcome {
        Ok(completion) => completion?,
        Err(_) => {
            generation.cancel("request timeout");
            return Err(Error::Engine(llm_engine::Error::Timeout(timeout)));
        }
    };
    let body = ChatCompletion {
        id: meta.id,
        object: "chat.completion".to_owned(),
        created: meta.created,
        model: meta.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: Role::Assistant,
                content: Some(completion.text),
            },
            logprobs: None,
            finish_reason: Some(completion.finish.reason),
        }],
        usage: Some(completion.finish.usage),
    };
    let mut response = json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).expect("completions serialize"),
    );
    // The generation's own log line (with its tokens) stands for this request.
    response.extensions_mut().insert(Streamed);
    Ok(response)
}

/// `GET /v1/chat/completions/{id}/stream`, with `Last-Event-ID` or `?last_event_id=`.
fn resume_by_path<B>(
    state: &Arc<State>,
    request: &Request<B>,
    id: &str,
) -> Result<Response<ResponseBody>> {
    let last = match last_event_id(request) {
        Some(text) => {
            let (stream, number) = event_position(&text)?;
            if stream != id {
                return Err(Error::InvalidLastEventId(text));
            }
            Some(number)
        }
        None => None,
    };
    resume(state, id, last, None)
}

/// The response id and event number a `Last-Event-ID` names.
///
/// # Errors
/// [`Error::InvalidLastEventId`] when it is not `RESPONSE:N`.
pub(crate) fn event_position(text: &str) -> Result<(&str, usize)> {
    replay::parse_event_id(text).ok_or_else(|| Error::InvalidLastEventId(text.to_owned()))
}

/// The `Last-Event-ID` header, or the `last_event_id` query parameter for clients that
/// cannot set headers.
pub(crate) fn last_event_id<B>(request: &Request<B>) -> Option<String> {
    if let Some(value) = request.headers().get("last-event-id") {
        // A value that is not visible ASCII is passed on to fail parsing, not ignored.
        return Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "last_event_id")
        .map(|(_, value)| value.into_owned())
}

/// Replays a resumable stream after event `last` (from its start with `None`), then follows
/// it live.
pub(crate) fn resume(
    state: &Arc<State>,
    id: &str,
    last: Option<usize>,
    prelude: Option<Bytes>,
) -> Result<Response<ResponseBody>> {
    let log: Arc<ReplayLog> = match state.replay.get(id) {
        Lookup::Found(log) => log,
        Lookup::Expired => return Err(Error::StreamExpired(id.to_owned())),
        Lookup::Unknown => return Err(Error::StreamNotFound(id.to_owned())),
    };
    let from = last.map_or(0, |n| n + 1);
    let (available, finished) = log.progress();
    if from > available {
        return Err(Error::InvalidLastEventId(format!("{id}:{}", from - 1)));
    }
    if finished && from == available {
        // Nothing after the last event: 204 tells an EventSource to stop reconnecting.
        let mut response = Response::new(ResponseBody::full(Vec::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        return Ok(response);
    }
    let (sender, receiver) = mpsc::channel(state.config.stream_buffer);
    state.tasks.spawn(crate::sse::follow(
        log.attach(),
        from,
        prelude,
        sender,
        state.config.keep_alive_interval,
    ));
    Ok(event_stream_response(receiver))
}

fn event_stream_response(receiver: mpsc::Receiver<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Channel(receiver));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.extensions_mut().insert(Streamed);
    response
}

/// `retry: MILLIS` alone in a block, sent first on `GET /stream` so that browsers reconnect
/// quickly. With no `data:` field the block dispatches no event.
pub(crate) fn retry_prelude(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::BodyTooLarge { limit });
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Error::BodyTooLarge { limit })
        }
        Err(_) => Err(Error::BodyRead),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("req-{:016x}", random_u64()), str::to_owned)
}

fn random_u64() -> u64 {
    getrandom::u64().expect("the operating system's random generator works")
}

/// A fresh `chatcmpl-` id with 128 random bits from the operating system: knowing a response
/// id is what allows resuming its stream.
fn response_id() -> String {
    format!("chatcmpl-{:016x}{:016x}", random_u64(), random_u64())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
