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

/// How often, and how long apart, a resume on another replica asks again for a copy that
/// trails the events its client has seen (at most half a second in all).
const CATCH_UP_TRIES: usize = 20;
const CATCH_UP_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// `GET /v1/chat/completions/{id}/stream`, with `Last-Event-ID` or `?last_event_id=`.
pub(crate) async fn resume_by_path<B>(
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
    resume(state, id, last, None).await
}

/// `GET /v1/responses/{id}?stream=true&starting_after=N`: how the OpenAI SDK resumes a
/// response stream (`client.responses.retrieve(id, stream=True, starting_after=N)`). Event N
/// of a resumable Responses stream has sequence number N, so `starting_after` is the
/// `Last-Event-ID` number. Nothing is stored, so without `stream=true` there is nothing to
/// retrieve.
pub(crate) async fn retrieve_response<B>(
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
            resume(state, id, Some(last), None).await
        }
        None => resume_by_path(state, request, id).await,
    }
}

/// Replays a resumable stream after event `last` (from its start with `None`), then follows
/// it live. `prelude` goes first. A stream this replica does not hold is followed from the
/// shared store, when there is one and it holds the stream.
pub(crate) async fn resume(
    state: &State,
    id: &str,
    last: Option<usize>,
    prelude: Option<Bytes>,
) -> Result<Response<ResponseBody>> {
    let from = last.map_or(0, |n| n + 1);
    let log: Arc<ReplayLog> = match state.replay().get(id) {
        Lookup::Found(log) => log,
        Lookup::Expired => return Err(Error::StreamExpired(id.to_owned())),
        Lookup::Unknown => return resume_remote(state, id, from, prelude).await,
    };
    let (available, finished) = log.progress();
    if let Some(response) = check_position(id, from, available, finished)? {
        return Ok(response);
    }
    tracing::info!(stream = id, from, "resume from this replica's log");
    Ok(followed(state, |body, keep_alive| {
        follow(log.attach(), from, prelude, body, keep_alive)
    }))
}

/// A resume of a stream another replica generates, from its copy in the shared store.
async fn resume_remote(
    state: &State,
    id: &str,
    from: usize,
    prelude: Option<Bytes>,
) -> Result<Response<ResponseBody>> {
    let not_found = || Error::StreamNotFound(id.to_owned());
    let Some(store) = state.shared() else {
        return Err(not_found());
    };
    // The copy trails the owner's log by a round trip: a client that reconnects at once may
    // know events the copy does not hold yet. Wait for it a little before calling the id
    // unknown or out of range.
    let mut remote = store.remote_log(id).await;
    for attempt in 0..CATCH_UP_TRIES {
        let behind = match &remote {
            Ok(Some(remote)) => from > remote.available && !remote.finished,
            Ok(None) => attempt < 2,
            Err(_) => false,
        };
        if !behind {
            break;
        }
        tokio::time::sleep(CATCH_UP_PAUSE).await;
        remote = store.remote_log(id).await;
    }
    let remote = match remote {
        Ok(Some(remote)) => remote,
        Ok(None) => return Err(not_found()),
        Err(error) => {
            // Another replica may still hold it: 404 lets a proxy try the next one.
            tracing::warn!(%error, "a resume could not ask the shared store");
            return Err(not_found());
        }
    };
    if from < remote.first {
        // The copy no longer holds the events asked for.
        return Err(Error::StreamExpired(id.to_owned()));
    }
    if let Some(response) = check_position(id, from, remote.available, remote.finished)? {
        return Ok(response);
    }
    tracing::info!(stream = id, from, "resume from the shared store");
    let (store, id) = (Arc::clone(store), id.to_owned());
    Ok(followed(state, |body, keep_alive| {
        store.follow(id, remote, from, prelude, body, keep_alive)
    }))
}

/// The event stream a follower task writes: `follower` gets the response body's sender and
/// the keep-alive interval, and runs until shutdown has waited for it.
fn followed<F>(
    state: &State,
    follower: impl FnOnce(mpsc::Sender<Bytes>, std::time::Duration) -> F,
) -> Response<ResponseBody>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let config = state.config();
    let (sender, receiver) = mpsc::channel(config.stream_buffer);
    state
        .shutdown()
        .spawn(follower(sender, config.keep_alive_interval));
    event_stream_response(receiver)
}

/// Whether a resume from event `from` of a stream with `available` events can go on: `None`
/// when it can, 204 when a finished stream has nothing after it.
///
/// # Errors
/// [`Error::InvalidLastEventId`] for an event the stream has not reached.
fn check_position(
    id: &str,
    from: usize,
    available: usize,
    finished: bool,
) -> Result<Option<Response<ResponseBody>>> {
    if from > available {
        return Err(Error::InvalidLastEventId(format!("{id}:{}", from - 1)));
    }
    if finished && from == available {
        // Nothing after the last event: 204 tells an EventSource to stop reconnecting.
        let mut response = Response::new(ResponseBody::full(Vec::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        return Ok(Some(response));
    }
    Ok(None)
}
