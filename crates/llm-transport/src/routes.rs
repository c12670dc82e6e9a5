//! Routing and the request handlers.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use llm_engine::Engine;
use llm_protocol::{
    AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, Model, ModelList, Role,
};
use tokio::sync::mpsc;

use crate::body::ResponseBody;
use crate::config::TransportConfig;
use crate::error::{Error, Result};
use crate::sse::{self, ChunkMeta};

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: TransportConfig,
    pub(crate) engine: OnceLock<Engine>,
}

impl State {
    fn engine(&self) -> Result<&Engine> {
        self.engine.get().ok_or(Error::Loading)
    }
}

/// Answers one request. Never fails: errors become OpenAI error responses.
pub(crate) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = route(&state, request)
        .await
        .unwrap_or_else(Error::into_response);
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        millis = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(response)
}

async fn route(state: &State, request: Request<Incoming>) -> Result<Response<ResponseBody>> {
    let path = request.uri().path();
    let allowed: &[Method] = match path {
        "/health" | "/v1/models" => &[Method::GET],
        "/v1/chat/completions" => &[Method::POST],
        _ => return Err(Error::NotFound(path.to_owned())),
    };
    if !allowed.contains(request.method()) {
        return Err(Error::MethodNotAllowed {
            method: request.method().to_string(),
            path: path.to_owned(),
        });
    }
    match path {
        "/health" => health(state),
        "/v1/models" => models(state),
        _ => chat_completions(state, request).await,
    }
}

fn health(state: &State) -> Result<Response<ResponseBody>> {
    state.engine()?;
    Ok(json_response(
        StatusCode::OK,
        br#"{"status":"ok"}"#.to_vec(),
    ))
}

fn models(state: &State) -> Result<Response<ResponseBody>> {
    let info = state.engine()?.model();
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
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config.body_limit).await?;
    let request = ChatCompletionRequest::from_json(&body)?;
    let engine = state.engine()?;
    let model = engine.model().name.clone();
    if !request.model.is_empty() && request.model != model {
        return Err(Error::ModelNotFound(request.model));
    }
    let stream = engine.submit(&request)?;
    let meta = ChunkMeta {
        id: response_id(),
        created: unix_now(),
        model,
        include_usage: request.include_usage(),
    };
    if request.stream {
        let (sender, receiver) = mpsc::channel(state.config.stream_buffer);
        tokio::spawn(sse::pump(
            stream,
            sender,
            meta,
            state.config.keep_alive_interval,
        ));
        let mut response = Response::new(ResponseBody::Channel(receiver));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(response);
    }
    let completion = stream.collect().await?;
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
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).expect("completions serialize"),
    ))
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

/// A fresh `chatcmpl-` id with 64 random bits.
fn response_id() -> String {
    format!(
        "chatcmpl-{:016x}",
        RandomState::new().hash_one(Instant::now())
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
