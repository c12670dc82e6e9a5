//! The routes that generate nothing: the page at `/`, `/health`, `/metrics` and
//! `/v1/models`.

use http::{header, HeaderValue, Response, StatusCode};
use llm_protocol::{Model, ModelList};

use crate::body::ResponseBody;
use crate::error::{Error, Result};
use crate::http::json_response;
use crate::metrics;
use crate::state::State;

/// The configured page, or 404.
pub(crate) fn index(state: &State) -> Result<Response<ResponseBody>> {
    let Some(page) = state.config().index_html.clone() else {
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
pub(crate) fn health(state: &State) -> Result<Response<ResponseBody>> {
    let restarts = state.backend()?.stats().engine_restarts;
    Ok(json_response(
        StatusCode::OK,
        format!(r#"{{"status":"ok","engine_restarts":{restarts}}}"#).into_bytes(),
    ))
}

/// The metrics in OpenMetrics text.
pub(crate) fn metrics(state: &State) -> Response<ResponseBody> {
    let stats = state.loaded_backend().map(|backend| backend.stats());
    let mut response = Response::new(ResponseBody::full(state.metrics().render(stats)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

/// The one served model.
pub(crate) fn models(state: &State) -> Result<Response<ResponseBody>> {
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
