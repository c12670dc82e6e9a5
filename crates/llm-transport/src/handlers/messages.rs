//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API,
//! streamed as its named events or answered with the `message` object. Errors on these
//! routes take Anthropic's shape.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use llm_protocol::anthropic::{AnthropicUsage, ContentBlock, MessagesRequest, TokenCount};
use llm_protocol::tokenize::TokenizeRequest;
use llm_protocol::GenerateRequest;

use super::generate::{
    check_model, collect, start_generation, start_stream, whole_response, StreamOptions,
};
use crate::body::ResponseBody;
use crate::error::Result;
use crate::http::{json_response, read_body, response_id, RequestInfo};
use crate::state::State;
use crate::stream::{message, stop_reason, MessagesEncoder};

pub(crate) async fn messages(
    state: &State,
    request: Request<Incoming>,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config().body_limit).await?;
    let request = MessagesRequest::from_json(&body)?;
    let generate: GenerateRequest = (&request).into();
    let id = response_id("msg_");
    if request.stream {
        let options = StreamOptions {
            id: &id,
            resumable: request.resumable,
            prelude: None,
        };
        return start_stream(state, &generate, info, options, |model| {
            Box::new(MessagesEncoder::new(id.clone(), model, request.resumable))
        })
        .await;
    }
    let (mut generation, model) = start_generation(state, &generate, info).await?;
    let completion = collect(state, &mut generation).await?;
    let finish = completion.finish;
    let mut answer = message(&id, &model, vec![ContentBlock::text(completion.text)]);
    answer.stop_reason = Some(stop_reason(&finish));
    answer.stop_sequence = finish.stop_sequence.clone();
    answer.usage = AnthropicUsage {
        input_tokens: finish.usage.prompt_tokens,
        output_tokens: finish.usage.completion_tokens,
    };
    Ok(whole_response(&answer))
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens after the chat template, what
/// `usage.input_tokens` of the same request reports.
pub(crate) async fn count_tokens(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config().body_limit).await?;
    let request = MessagesRequest::count_tokens_from_json(&body)?;
    let generate = GenerateRequest::from(&request);
    let backend = state.backend()?;
    check_model(&generate.model, backend.model())?;
    generate.validate()?;
    let count = backend
        .tokenize(&TokenizeRequest::of_prefill(&generate))
        .await?
        .len();
    let body = TokenCount {
        input_tokens: u32::try_from(count).unwrap_or(u32::MAX),
    };
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).expect("counts serialize"),
    ))
}
