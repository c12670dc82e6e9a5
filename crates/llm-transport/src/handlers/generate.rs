//! Starting a generation, shared by every route that generates: the model check, the
//! submission to the engine, and the stream that answers it (resumable or not).

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use llm_engine::{Completion, ModelInfo};
use llm_protocol::{GenerateRequest, Prompt};
use tokio::sync::mpsc;

use crate::body::ResponseBody;
use crate::error::{Error, Result};
use crate::http::{event_stream_response, json_response, RequestInfo, Streamed};
use crate::ratelimit::Refused;
use crate::state::State;
use crate::stream::{follow, produce, pump, Encoder, Generation, Watched};

/// Checks that the request names the served model (or none) and that its key may use it,
/// admits it under its client's rate limits, and starts its generation.
///
/// # Errors
/// [`Error::ModelNotFound`] for another model, or one the key may not use;
/// [`Error::RateLimited`] past a limit; [`Error::StateUnavailable`] when the shared limits
/// cannot be checked and fail closed; the engine's refusal (invalid, unsupported, overloaded,
/// shutting down).
pub(crate) async fn start_generation(
    state: &State,
    request: &GenerateRequest,
    info: &RequestInfo,
) -> Result<(Generation, String)> {
    let backend = state.backend()?;
    let model = check_model(&request.model, backend.model())?;
    if let Some(key) = info.key.as_ref().filter(|key| !key.may_use(&model)) {
        tracing::debug!(key = %key.name, model, "model not allowed for the key");
        return Err(Error::ModelNotFound(model));
    }
    let admission = if info.limits.any() {
        let tokens = estimated_tokens(request, backend.model().context_length);
        let admission = state
            .limiter()
            .admit(&info.client, info.limits, tokens)
            .await
            .map_err(|refused| match refused {
                Refused::Limit(refusal) => {
                    tracing::debug!(client = %info.client, limit = refusal.limit, "rate limited");
                    state.metrics().rate_limited(
                        info.key.as_ref().map(|key| key.name.as_str()),
                        refusal.limit,
                    );
                    Error::RateLimited {
                        limit: refusal.limit,
                        value: refusal.value,
                        retry_after: refusal.retry_after,
                    }
                }
                Refused::Unavailable => Error::StateUnavailable,
            })?;
        let _ = info.rate.set(admission.status());
        Some(admission)
    } else {
        None
    };
    let streams = match request.n {
        Some(n) if n > 1 => {
            let limit = state.config().max_choices;
            if n > limit {
                return Err(Error::InvalidRequest(llm_protocol::Error::invalid_param(
                    "n",
                    format!("`n` may be at most {limit} on this server (--max-choices), got {n}"),
                )));
            }
            // One engine request per choice; dropping the ones already submitted when a
            // later one is refused cancels them.
            (0..n)
                .map(|index| backend.submit(&choice(request, index)))
                .collect::<llm_engine::Result<Vec<_>>>()?
        }
        _ => vec![backend.submit(request)?],
    };
    let generation =
        Generation::new(streams, Arc::clone(state.metrics()), info).admitted(admission);
    Ok((generation, model))
}

/// The tokens a request is charged at admission: its prompt's, estimated as one for every
/// four bytes of text, and `max_tokens` (the rest of the context when absent), for each
/// choice. The charge is settled to the real count when the generation ends.
fn estimated_tokens(request: &GenerateRequest, context: usize) -> u64 {
    let bytes: usize = match &request.prompt {
        Prompt::Chat(messages) => messages.iter().map(|message| message.text().len()).sum(),
        Prompt::Text(text) => text.len(),
    };
    let prompt = bytes.div_ceil(4).max(1) as u64;
    let generated = request
        .max_tokens
        .map_or((context as u64).saturating_sub(prompt), u64::from);
    (prompt + generated).saturating_mul(u64::from(request.n.unwrap_or(1).max(1)))
}

/// Choice `index` of a request for several: one choice, with the seed (when there is one)
/// moved by the index, so that a seeded request's choices differ and each is reproducible.
fn choice(request: &GenerateRequest, index: u32) -> GenerateRequest {
    GenerateRequest {
        n: None,
        seed: request.seed.map(|seed| seed.wrapping_add(i64::from(index))),
        ..request.clone()
    }
}

/// Starts `request`'s generation and answers with its event stream, in the dialect of the
/// encoder `encoder` builds from the served model's name. `id` is the response id: the
/// replay log's, when `resumable`. `prelude` goes before the first event.
///
/// # Errors
/// As [`start_generation`]; [`Error::ReplayFull`] for a resumable stream when replay memory
/// is full, before the engine sees the request.
pub(crate) async fn start_stream(
    state: &State,
    request: &GenerateRequest,
    info: &RequestInfo,
    stream: StreamOptions<'_>,
    encoder: impl FnOnce(String) -> Box<dyn Encoder>,
) -> Result<Response<ResponseBody>> {
    if stream.resumable {
        // Refuse before the engine sees the request when replay memory is full.
        state.replay().check_room()?;
    }
    let (generation, model) = start_generation(state, request, info).await?;
    stream_response(
        state,
        generation,
        encoder(model),
        stream.resumable.then_some(stream.id),
        stream.prelude,
    )
}

/// How a stream is answered: its response id, whether it is resumable, and what goes before
/// its first event.
pub(crate) struct StreamOptions<'a> {
    pub(crate) id: &'a str,
    pub(crate) resumable: bool,
    pub(crate) prelude: Option<Bytes>,
}

/// Reads the whole answer of `generation` for a non-streaming client, within the request
/// timeout.
///
/// # Errors
/// The generation's error; [`Error::Timeout`] past the request timeout and
/// [`Error::ShuttingDown`] at the shutdown deadline, both of which cancel the generation.
pub(crate) async fn collect(state: &State, generation: &mut Generation) -> Result<Completion> {
    let mut choices = collect_choices(state, generation).await?;
    Ok(choices.swap_remove(0))
}

/// [`collect`] for a request of several choices: every choice's answer, in index order.
///
/// # Errors
/// As [`collect`].
pub(crate) async fn collect_choices(
    state: &State,
    generation: &mut Generation,
) -> Result<Vec<Completion>> {
    let timeout = state.config().request_timeout;
    let deadline = state.shutdown().deadline();
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(timeout, generation.collect()) => outcome,
        () = deadline.cancelled() => {
            generation.cancel("server shutting down");
            return Err(Error::ShuttingDown);
        }
    };
    match outcome {
        Ok(completion) => Ok(completion?),
        Err(_) => {
            generation.cancel("request timeout");
            Err(Error::Timeout(timeout))
        }
    }
}

/// A whole answer's JSON body, whose log line is its generation's.
pub(crate) fn whole_response(body: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut response = json_response(
        StatusCode::OK,
        serde_json::to_vec(body).expect("answers serialize"),
    );
    // The generation's own log line (with its tokens) stands for this request.
    response.extensions_mut().insert(Streamed);
    response
}

/// The served model's name, when `request` names it or none.
///
/// # Errors
/// [`Error::ModelNotFound`] for another model.
pub(crate) fn check_model(model: &str, served: &ModelInfo) -> Result<String> {
    if !model.is_empty() && model != served.name {
        return Err(Error::ModelNotFound(model.to_owned()));
    }
    Ok(served.name.clone())
}

/// Answers with the event stream of `generation` in `encoder`'s dialect. A resumable one is
/// written to the replay log `id` first, and the client follows the log. `prelude` goes
/// before the first event (the `retry:` of `/stream`).
///
/// # Errors
/// [`Error::ReplayFull`] when a resumable stream finds live ones filling the replay budget.
fn stream_response(
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
        // With a shared store, the log is copied there for resumes on other replicas, whose
        // followers keep the generation going past its grace.
        let watched = state.shared().map(|store| {
            shutdown.spawn(Arc::clone(store).mirror(Arc::clone(&log), config.resume.ttl));
            let (store, id) = (Arc::clone(store), id.to_owned());
            let watched: Watched = Arc::new(move || {
                let (store, id) = (Arc::clone(&store), id.clone());
                Box::pin(async move { store.watched(&id).await })
            });
            watched
        });
        shutdown.spawn(produce(
            generation,
            encoder,
            Arc::clone(&log),
            Arc::clone(state.replay()),
            config.resume.grace,
            watched,
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
