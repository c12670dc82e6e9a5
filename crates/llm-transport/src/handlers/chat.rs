//! `POST /v1/chat/completions`: OpenAI's chat completions, streamed as chunks or answered
//! whole.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use llm_engine::Completion;
use llm_protocol::tools::{ToolCall, ToolType};
use llm_protocol::{
    AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, ChoiceLogprobs, Role,
};

use super::generate::{
    collect_choices, start_generation, start_stream, whole_response, StreamOptions,
};
use crate::body::ResponseBody;
use crate::error::Result;
use crate::http::{read_body, response_id, unix_now, RequestInfo};
use crate::state::State;
use crate::stream::{usage_of, ChunkEncoder, ChunkMeta};

pub(crate) async fn chat_completions(
    state: &State,
    request: Request<Incoming>,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config().body_limit).await?;
    let request = ChatCompletionRequest::from_json(&body)?;
    let mut response = if request.stream {
        chat_stream(state, &request, info, request.resumable, None).await?
    } else {
        complete(state, &request, info).await?
    };
    if let Some(value) = ignored_fields(&request.unknown_fields) {
        response.headers_mut().insert(IGNORED_FIELDS, value);
    }
    Ok(response)
}

/// The header that names the request's fields outside OpenAI's schema, which were ignored.
pub(crate) const IGNORED_FIELDS: http::HeaderName =
    http::HeaderName::from_static("x-ignored-fields");

/// The most field names [`IGNORED_FIELDS`] lists; more are counted.
const MAX_IGNORED_FIELDS: usize = 16;

/// `names` as a header value: comma-separated, bytes outside printable ASCII (and `,`, `%`)
/// percent-encoded, at most [`MAX_IGNORED_FIELDS`] of them, then `+N more`.
fn ignored_fields(names: &[String]) -> Option<http::HeaderValue> {
    use std::fmt::Write as _;
    if names.is_empty() {
        return None;
    }
    let mut value = String::new();
    for name in names.iter().take(MAX_IGNORED_FIELDS) {
        if !value.is_empty() {
            value.push_str(", ");
        }
        for byte in name.bytes().take(64) {
            if byte.is_ascii_graphic() && byte != b',' && byte != b'%' {
                value.push(char::from(byte));
            } else {
                let _ = write!(value, "%{byte:02X}");
            }
        }
    }
    if names.len() > MAX_IGNORED_FIELDS {
        let _ = write!(value, ", +{} more", names.len() - MAX_IGNORED_FIELDS);
    }
    http::HeaderValue::from_str(&value).ok()
}

/// Starts a chat generation and answers with its chunk stream; a resumable one gets a replay
/// log. `prelude` goes before the first event.
pub(crate) async fn chat_stream(
    state: &State,
    request: &ChatCompletionRequest,
    info: &RequestInfo,
    resumable: bool,
    prelude: Option<Bytes>,
) -> Result<Response<ResponseBody>> {
    let id = response_id("chatcmpl-");
    let options = StreamOptions {
        id: &id,
        resumable,
        prelude,
    };
    start_stream(state, &request.into(), info, options, |model| {
        let meta = ChunkMeta {
            id: id.clone(),
            created: unix_now(),
            model,
            include_usage: request.include_usage(),
            continuous_usage: request.continuous_usage(),
            choices: request.n.unwrap_or(1).max(1),
        };
        Box::new(ChunkEncoder::new(meta, resumable))
    })
    .await
}

/// The whole answer as one `chat.completion`, within the request timeout.
async fn complete(
    state: &State,
    request: &ChatCompletionRequest,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let (mut generation, model) = start_generation(state, &request.into(), info).await?;
    let completions = collect_choices(state, &mut generation).await?;
    let usage = usage_of(completions.iter().map(|completion| &completion.finish));
    let choices = completions
        .into_iter()
        .zip(0..)
        .map(|(completion, index)| choice(request, index, completion))
        .collect();
    Ok(whole_response(&ChatCompletion {
        id: response_id("chatcmpl-"),
        object: "chat.completion".to_owned(),
        created: unix_now(),
        model,
        choices,
        usage: Some(usage),
    }))
}

/// One choice of a whole answer.
fn choice(request: &ChatCompletionRequest, index: u32, completion: Completion) -> Choice {
    Choice {
        index,
        message: AssistantMessage {
            role: Role::Assistant,
            // An answer that is only calls has no content, as OpenAI's.
            content: (completion.tool_calls.is_empty() || !completion.text.is_empty())
                .then_some(completion.text),
            tool_calls: (!completion.tool_calls.is_empty()).then(|| {
                completion
                    .tool_calls
                    .into_iter()
                    .map(|function| ToolCall {
                        id: response_id("call_"),
                        kind: ToolType::Function,
                        function,
                    })
                    .collect()
            }),
        },
        logprobs: request.logprobs.then_some(ChoiceLogprobs {
            content: completion.logprobs,
        }),
        finish_reason: Some(completion.finish.reason),
    }
}
