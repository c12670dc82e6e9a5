//! `POST /v1/chat/completions`: OpenAI's chat completions, streamed as chunks or answered
//! whole.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use llm_protocol::{AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, Role};

use super::generate::{start_generation, stream_response};
use crate::body::ResponseBody;
use crate::error::{Error, Result};
use crate::http::{json_response, read_body, response_id, unix_now, RequestInfo, Streamed};
use crate::state::State;
use crate::stream::{ChunkEncoder, ChunkMeta};

pub(crate) async fn chat_completions(
    state: &State,
    request: Request<Incoming>,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config().body_limit).await?;
    let request = ChatCompletionRequest::from_json(&body)?;
    if request.stream {
        chat_stream(state, &request, info, request.resumable, None)
    } else {
        complete(state, &request, info).await
    }
}

/// Starts a chat generation and answers with its chunk stream; a resumable one gets a replay
/// log. `prelude` goes before the first event.
pub(crate) fn chat_stream(
    state: &State,
    request: &ChatCompletionRequest,
    info: &RequestInfo,
    resumable: bool,
    prelude: Option<Bytes>,
) -> Result<Response<ResponseBody>> {
    if resumable {
        // Refuse before the engine sees the request when replay memory is full.
        state.replay().check_room()?;
    }
    let (generation, model) = start_generation(state, request, info)?;
    let meta = ChunkMeta {
        id: response_id("chatcmpl"),
        created: unix_now(),
        model,
        include_usage: request.include_usage(),
    };
    let id = meta.id.clone();
    let encoder = Box::new(ChunkEncoder::new(meta, resumable));
    stream_response(
        state,
        generation,
        encoder,
        resumable.then_some(id.as_str()),
        prelude,
    )
}

/// The whole answer as one `chat.completion`, within the request timeout.
async fn complete(
    state: &State,
    request: &ChatCompletionRequest,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let (mut generation, model) = start_generation(state, request, info)?;
    let timeout = state.config().request_timeout;
    let deadline = state.shutdown().deadline();
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(timeout, generation.collect()) => outcome,
        () = deadline.cancelled() => {
            generation.cancel("server shutting down");
            return Err(Error::ShuttingDown);
        }
    };
    let completion = match outcome {
        Ok(completion) => completion?,
        Err(_) => {
            generation.cancel("request timeout");
            return Err(Error::Timeout(timeout));
        }
    };
    let body = ChatCompletion {
        id: response_id("chatcmpl"),
        object: "chat.completion".to_owned(),
        created: unix_now(),
        model,
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
