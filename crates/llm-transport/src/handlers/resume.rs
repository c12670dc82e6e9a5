//! Resuming a resumable stream: `GET /v1/chat/completions/{id}/stream` with `Last-Event-ID`,
//! and the reconnects of `GET /stream`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::body::ResponseBody;
use crate::error::{Error, Result};
use crate::http::{event_position, event_stream_response, last_event_id};
use crate::replay::{Lookup, ReplayLog};
use crate::state::State;
use crate::stream::follow;

/// `GET /v1/chat/completions/{id}/stream`, with `Last-Event-ID` or `?last_event_id=`.
pub(crate) fn resume_by_path<B>(
    state: &State,
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

/// `GET /v1/responses/{id}?stream=true&starting_after=N`: how the OpenAI SDK resumes a
/// response stream (`client.responses.retrieve(id, stream=True, starting_after=N)`). Event N
/// of a resumable Responses stream has sequence number N, so `starting_after` is the
/// `Last-Event-ID` number. Nothing is stored, so without `stream=true` there is nothing to
/// retrieve.
pub(crate) fn retrieve_response<B>(
    state: &State,
    request: &Request<B>,
    id: &str,
) -> Result<Response<ResponseBody>> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let field = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    if field("stream") != Some("true") {
        return Err(Error::ResponseNotStored(id.to_owned()));
    }
    match field("starting_after") {
        Some(number) => {
            let last = number
                .parse()
                .map_err(|_| Error::InvalidLastEventId(format!("{id}:{number}")))?;
            resume(state, id, Some(last), None)
        }
        None => resume_by_path(state, request, id),
    }
}

/// Replays a resumable stream after event `last` (from its start with `None`), then follows
/// it live. `prelude` goes first.
pub(crate) fn resume(
    state: &State,
    id: &str,
    last: Option<usize>,
    prelude: Option<Bytes>,
) -> Result<Response<ResponseBody>> {
    let log: Arc<ReplayLog> = match state.replay().get(id) {
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
    let config = state.config();
    let (sender, receiver) = mpsc::channel(config.stream_buffer);
    state.shutdown().spawn(follow(
        log.attach(),
        from,
        prelude,
        sender,
        config.keep_alive_interval,
    ));
    Ok(event_stream_response(receiver))
}
