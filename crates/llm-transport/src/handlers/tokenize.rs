//! `POST /tokenize` and `POST /detokenize`, in vLLM's shapes: a prompt's token ids exactly as a
//! generation prefills them (a conversation after the chat template), and text from ids.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use llm_protocol::tokenize::{
    DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse,
};

use super::generate::check_model;
use crate::body::ResponseBody;
use crate::error::Result;
use crate::http::{json_response, read_body};
use crate::state::State;

/// `POST /tokenize`: `{"model", "prompt"}` or `{"model", "messages"}` to
/// `{"count", "max_model_len", "tokens", "token_strs"}`.
pub(crate) async fn tokenize(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config().body_limit).await?;
    let request = TokenizeRequest::from_json(&body)?;
    let backend = state.backend()?;
    check_model(&request.model, backend.model())?;
    let tokens = backend.tokenize(&request).await?;
    let answer = TokenizeResponse::new(tokens, backend.model().context_length);
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&answer).expect("token lists serialize"),
    ))
}

/// `POST /detokenize`: `{"model", "tokens"}` to `{"prompt"}`.
pub(crate) async fn detokenize(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>> {
    let body = read_body(request, state.config().body_limit).await?;
    let request = DetokenizeRequest::from_json(&body)?;
    let backend = state.backend()?;
    check_model(&request.model, backend.model())?;
    let prompt = backend.detokenize(request.tokens).await?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&DetokenizeResponse::new(prompt)).expect("text serializes"),
    ))
}
