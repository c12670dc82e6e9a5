//! Starting a generation, shared by every route that generates: the model check, the
//! submission to the engine, and the stream that answers it (resumable or not).

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use llm_protocol::ChatCompletionRequest;
use tokio::sync::mpsc;

use crate::body::ResponseBody;
use crate::error::{Error, Result};
use crate::http::{event_stream_response, RequestInfo};
use crate::state::State;
use crate::stream::{follow, produce, pump, Encoder, Generation};

/// Checks that the request names the served model (or none) and starts its generation.
///
/// # Errors
/// [`Error::ModelNotFound`] for another model; the engine's refusal (invalid, unsupported,
/// overloaded, shutting down).
pub(crate) fn start_generation(
    state: &State,
    request: &ChatCompletionRequest,
    info: &RequestInfo,
) -> Result<(Generation, String)> {
    let backend = state.backend()?;
    let model = backend.model().name.clone();
    if !request.model.is_empty() && request.model != model {
        return Err(Error::ModelNotFound(request.model.clone()));
    }
    let stream = backend.submit(request)?;
    let generation = Generation::new(stream, Arc::clone(state.metrics()), info);
    Ok((generation, model))
}

/// Answers with the event stream of `generation` in `encoder`'s dialect. A resumable one is
/// written to the replay log `id` first, and the client follows the log. `prelude` goes
/// before the first event (the `retry:` of `/stream`).
///
/// # Errors
/// [`Error::ReplayFull`] when a resumable stream finds live ones filling the replay budget.
pub(crate) fn stream_response(
    state: &State,
    generation: Generation,
    encoder: Box<dyn Encoder>,
    resumable: Option<&str>,
    prelude: Option<Bytes>,
) -> Result<Response<ResponseBody>> {
    let config = state.config();
    let (sender, receiver) = mpsc::channel(config.stream_buffer);
    let shutdown = state.shutdown();
    if let Some(id) = resumable {
        let log = state.replay().create(id, encoder.keep_alive())?;
        // The client is attached before the producer starts, so that the grace period only
        // counts time with no client at all.
        let follower = follow(log.attach(), 0, prelude, sender, config.keep_alive_interval);
        shutdown.spawn(produce(
            generation,
            encoder,
            Arc::clone(&log),
            Arc::clone(state.replay()),
            config.resume.grace,
            shutdown.deadline(),
        ));
        shutdown.spawn(follower);
    } else {
        shutdown.spawn(pump(
            generation,
            encoder,
            sender,
            config.keep_alive_interval,
            shutdown.deadline(),
        ));
    }
    Ok(event_stream_response(receiver))
}
