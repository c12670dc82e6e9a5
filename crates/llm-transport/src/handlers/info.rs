//! The routes that generate nothing: the page at `/`, `/health`, `/metrics` and
//! `/v1/models`.

use http::{header, HeaderValue, Response, StatusCode};
use llm_protocol::{Model, ModelList};

use crate::body::ResponseBody;
use crate::config::OnFailure;
use crate::error::{Error, Result};
use crate::http::{json_response, RequestInfo};
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
///
/// With a shared state store, `"shared_state":"ok"` or `"unreachable"` (asked within its
/// timeout); unreachable makes the status `degraded`, still 200 when limits fail open (this
/// replica serves, enforcing them alone), 503 when they fail closed (it refuses generations).
pub(crate) async fn health(state: &State) -> Result<Response<ResponseBody>> {
    let restarts = state.backend()?.stats().engine_restarts;
    let Some(store) = state.shared() else {
        return Ok(json_response(
            StatusCode::OK,
            format!(r#"{{"status":"ok","engine_restarts":{restarts}}}"#).into_bytes(),
        ));
    };
    let reachable = store.ping().await;
    let closed = state
        .config()
        .shared_state
        .as_ref()
        .is_some_and(|shared| shared.on_failure == OnFailure::Closed);
    let (code, status, shared) = match (reachable, closed) {
        (true, _) => (StatusCode::OK, "ok", "ok"),
        (false, false) => (StatusCode::OK, "degraded", "unreachable"),
        (false, true) => (StatusCode::SERVICE_UNAVAILABLE, "degraded", "unreachable"),
    };
    Ok(json_response(
        code,
        format!(
            r#"{{"status":"{status}","engine_restarts":{restarts},"shared_state":"{shared}"}}"#
        )
        .into_bytes(),
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

/// The one served model, unless the caller's key may not use it.
pub(crate) fn models(state: &State, request: &RequestInfo) -> Result<Response<ResponseBody>> {
    let info = state.backend()?.model();
    let allowed = request
        .key
        .as_ref()
        .is_none_or(|key| key.may_use(&info.name));
    let models = allowed.then(|| Model::new(info.name.clone(), info.created, "llm-stream"));
    let list = ModelList::new(models.into_iter().collect());
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&list).expect("model lists serialize"),
    ))
}
