//! `POST /v1/completions`: OpenAI's legacy completions, raw text continued with no chat
//! template, streamed as `text_completion` chunks or answered whole.

use http::{Request, Response};
use hyper::body::Incoming;
use llm_protocol::completions::CompletionRequest;
use llm_protocol::GenerateRequest;

use super::generate::{collect, start_generation, start_stream, whole_response, StreamOptions};
use crate::body::ResponseBody;
use crate::error::Result;
use crate::http::{read_body, response_id, unix_now, RequestInfo};
use crate::state::State;
use crate::stream::{CompletionEncoder, CompletionMeta};

pub(crate) async fn completions(
    state: &State,
    request: Request<Incoming>,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config().body_limit).await?;
    let request = CompletionRequest::from_json(&body)?;
    let generate: GenerateRequest = (&request).into();
    if generate.n.is_some_and(|n| n > 1) {
        return Err(llm_engine::Error::Unsupported {
            param: "n",
            reason: "completions generate one choice per request; send several requests, or use \
                     chat completions",
        }
        .into());
    }
    let id = response_id("cmpl-");
    let meta = |model| CompletionMeta {
        id: id.clone(),
        created: unix_now(),
        model,
        include_usage: request.include_usage(),
        echo: request.echo.then(|| request.prompt.clone()),
    };
    if request.stream {
        let options = StreamOptions {
            id: &id,
            resumable: request.resumable,
            prelude: None,
        };
        return start_stream(state, &generate, info, options, |model| {
            Box::new(CompletionEncoder::new(meta(model), request.resumable))
        })
        .await;
    }
    let (mut generation, model) = start_generation(state, &generate, info).await?;
    let completion = collect(state, &mut generation).await?;
    let meta = meta(model);
    let text = match &meta.echo {
        Some(prompt) => format!("{prompt}{}", completion.text),
        None => completion.text,
    };
    let finish = completion.finish;
    Ok(whole_response(&meta.completion(
        text,
        Some(finish.reason),
        Some(finish.usage),
    )))
}
