//! `POST /v1/responses`: OpenAI's Responses API, stateless, streamed as named events or
//! answered with the `response` object.

use http::{Request, Response};
use hyper::body::Incoming;
use llm_protocol::responses::ResponsesRequest;
use llm_protocol::GenerateRequest;

use super::generate::{collect, start_generation, start_stream, whole_response, StreamOptions};
use crate::body::ResponseBody;
use crate::error::Result;
use crate::http::{read_body, response_id, unix_now, RequestInfo};
use crate::state::State;
use crate::stream::{finished_response, response_object, ResponsesEncoder};

pub(crate) async fn responses(
    state: &State,
    request: Request<Incoming>,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config().body_limit).await?;
    let request = ResponsesRequest::from_json(&body)?;
    let generate: GenerateRequest = (&request).into();
    let id = response_id("resp_");
    let item_id = response_id("msg_");
    let created_at = unix_now();
    if request.stream {
        let options = StreamOptions {
            id: &id,
            resumable: request.resumable,
            prelude: None,
        };
        return start_stream(state, &generate, info, options, |model| {
            let response = response_object(&request, id.clone(), created_at, model);
            Box::new(ResponsesEncoder::new(response, item_id, request.resumable))
        })
        .await;
    }
    let (mut generation, model) = start_generation(state, &generate, info).await?;
    let completion = collect(state, &mut generation).await?;
    let response = response_object(&request, id, created_at, model);
    let finish = completion.finish;
    Ok(whole_response(&finished_response(
        response,
        &item_id,
        completion.text,
        &finish.reason,
        finish.usage,
    )))
}
