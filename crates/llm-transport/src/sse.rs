//! Streaming a chat completion as server-sent events, OpenAI style.
//!
//! The first chunk's delta is `{"role":"assistant","content":""}`, then one chunk per delta,
//! then a chunk with `finish_reason`, then (with `stream_options.include_usage`) a chunk with
//! `"choices": []` and `usage`, then `data: [DONE]`. An error after the stream started is sent
//! as `data: {"error": {...}}` followed by `data: [DONE]`. Each chunk is its own body frame,
//! written as soon as it exists. Events of resumable streams carry `id: RESPONSE:N`.
//!
//! A [`Generation`] turns engine events into frames; [`pump`] writes them straight to one
//! client, [`produce`] appends them to a replay log that any number of clients read with
//! [`follow`].

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use llm_engine::{Completion, EngineEvent, Finish};
use llm_protocol::{
    sse, ChatCompletionChunk, ChunkChoice, Delta, ErrorBody, FinishReason, Role, Usage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::EventStream;
use crate::error::Error;
use crate::metrics::{Metrics, RequestObserver};
use crate::replay::{Attached, ReplayLog, ReplayStore};
use crate::server::Deadline;

/// What every chunk of one response repeats.
#[derive(Debug, Clone)]
pub(crate) struct ChunkMeta {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
}

impl ChunkMeta {
    fn chunk(&self, delta: Delta, finish_reason: Option<FinishReason>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        }
    }

    fn usage_chunk(&self, usage: Usage) -> ChatCompletionChunk {
        ChatCompletionChunk {
            choices: Vec::new(),
            usage: Some(usage),
            ..self.chunk(Delta::default(), None)
        }
    }
}

/// Encodes the events of one response, numbering them when the stream is resumable.
#[derive(Debug)]
pub(crate) struct ChunkEncoder {
    meta: ChunkMeta,
    resumable: bool,
    next: u64,
    /// `data: ` and a delta chunk's JSON up to its content string: the same for every delta of
    /// the response, rendered once.
    delta_prefix: String,
}

/// What follows the content string in a delta chunk's JSON.
const DELTA_SUFFIX: &str = "},\"logprobs\":null,\"finish_reason\":null}]}\n\n";

impl ChunkEncoder {
    pub(crate) fn new(meta: ChunkMeta, resumable: bool) -> Self {
        let json = |text: &str| serde_json::to_string(text).expect("strings serialize");
        let delta_prefix = format!(
            "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\
             \"choices\":[{{\"index\":0,\"delta\":{{\"content\":",
            json(&meta.id),
            meta.created,
            json(&meta.model)
        );
        Self {
            meta,
            resumable,
            next: 0,
            delta_prefix,
        }
    }

    /// The next event's number, as its `id:` when the stream is resumable.
    fn next_id(&mut self) -> Option<String> {
        let id = self
            .resumable
            .then(|| format!("{}:{}", self.meta.id, self.next));
        self.next += 1;
        id
    }

    fn frame(&mut self, data: String) -> Bytes {
        let id = self.next_id();
        let event = sse::Event {
            event: None,
            data,
            id,
            retry: None,
        };
        let mut buf = BytesMut::with_capacity(event.data.len() + 48);
        sse::write_event(&mut buf, &event);
        buf.freeze()
    }

    fn json(&mut self, value: &impl serde::Serialize) -> Bytes {
        self.frame(serde_json::to_string(value).expect("chunks serialize"))
    }

    fn done(&mut self) -> Bytes {
        self.frame(sse::DONE.to_owned())
    }

    /// The opening chunk: the assistant role and empty content.
    pub(crate) fn role(&mut self) -> Bytes {
        let delta = Delta {
            role: Some(Role::Assistant),
            content: Some(String::new()),
        };
        let chunk = self.meta.chunk(delta, None);
        self.json(&chunk)
    }

    /// A delta chunk: byte for byte what serializing the chunk gives, without building it. This
    /// is the one frame written per token, so it allocates once and copies the prefix.
    fn delta(&mut self, text: &str) -> Bytes {
        let mut buf =
            BytesMut::with_capacity(self.delta_prefix.len() + text.len() + DELTA_SUFFIX.len() + 64);
        if let Some(id) = self.next_id() {
            buf.extend_from_slice(b"id: ");
            buf.extend_from_slice(id.as_bytes());
            buf.extend_from_slice(b"\n");
        }
        buf.extend_from_slice(self.delta_prefix.as_bytes());
        serde_json::to_writer(bytes::BufMut::writer(&mut buf), text)
            .expect("writing to memory cannot fail");
        buf.extend_from_slice(DELTA_SUFFIX.as_bytes());
        buf.freeze()
    }

    fn finish(&mut self, reason: FinishReason, usage: Option<Usage>) -> Vec<Bytes> {
        let chunk = self.meta.chunk(Delta::default(), Some(reason));
        let mut frames = vec![self.json(&chunk)];
        if let Some(usage) = usage.filter(|_| self.meta.include_usage) {
            let chunk = self.meta.usage_chunk(usage);
            frames.push(self.json(&chunk));
        }
        frames.push(self.done());
        frames
    }

    /// An error in the middle of a stream: the error object, then `[DONE]`.
    pub(crate) fn error(&mut self, error: &Error) -> Vec<Bytes> {
        let body = ErrorBody::from(error.to_api_error());
        vec![self.json(&body), self.done()]
    }
}

/// One generation being streamed: the engine's events, the encoder, and the bookkeeping that
/// ends in the request's log line when it is dropped.
pub(crate) struct Generation {
    stream: EventStream,
    pub(crate) encoder: ChunkEncoder,
    observer: RequestObserver,
    metrics: Arc<Metrics>,
    request_id: String,
    endpoint: &'static str,
    outcome: Outcome,
}

/// How a generation ended, for the log.
#[derive(Debug)]
enum Outcome {
    Open,
    Finished(Finish),
    Failed(String),
    Cancelled(&'static str),
}

impl Generation {
    pub(crate) fn new(
        stream: EventStream,
        encoder: ChunkEncoder,
        metrics: Arc<Metrics>,
        request: &RequestInfo,
    ) -> Self {
        Self {
            stream,
            encoder,
            observer: RequestObserver::new(request.received),
            metrics,
            request_id: request.id.clone(),
            endpoint: request.endpoint,
            outcome: Outcome::Open,
        }
    }

    /// The next engine event, recorded in the metrics. `None` after the last one.
    pub(crate) async fn next_event(&mut self) -> Option<EngineEvent> {
        if !matches!(self.outcome, Outcome::Open) {
            return None;
        }
        let event = self.stream.next().await.unwrap_or_else(|| {
            EngineEvent::Error(llm_engine::Error::Generation {
                source: "the engine stream ended without a final event".into(),
            })
        });
        match &event {
            EngineEvent::Delta(_) => self.observer.delta(&self.metrics),
            EngineEvent::Finished(finish) => {
                self.observer.finished(&self.metrics, finish);
                self.outcome = Outcome::Finished(finish.clone());
            }
            EngineEvent::Error(error) => {
                self.observer.failed(&self.metrics);
                self.outcome = Outcome::Failed(error.to_string());
            }
            _ => {}
        }
        Some(event)
    }

    /// The frames of the next event, and whether they end the stream.
    pub(crate) async fn next_frames(&mut self) -> Option<(Vec<Bytes>, bool)> {
        Some(match self.next_event().await? {
            EngineEvent::Delta(text) => (vec![self.encoder.delta(&text)], false),
            EngineEvent::Finished(finish) => {
                (self.encoder.finish(finish.reason, Some(finish.usage)), true)
            }
            EngineEvent::Error(error) => {
                let error = Error::Engine(error);
                tracing::warn!(request_id = %self.request_id, error = %error, detail = ?error,
                    "stream ended with an error");
                (self.encoder.error(&error), true)
            }
            _ => (Vec::new(), false),
        })
    }

    /// Reads the whole answer for a non-streaming client.
    pub(crate) async fn collect(&mut self) -> Result<Completion, llm_engine::Error> {
        let mut text = String::new();
        while let Some(event) = self.next_event().await {
            match event {
                EngineEvent::Delta(delta) => text.push_str(&delta),
                EngineEvent::Finished(finish) => return Ok(Completion { text, finish }),
                EngineEvent::Error(error) => return Err(error),
                _ => {}
            }
        }
        Err(llm_engine::Error::Generation {
            source: "the generation already ended".into(),
        })
    }

    /// Ends the generation early, with `why` in the log.
    pub(crate) fn cancel(&mut self, why: &'static str) {
        if matches!(self.outcome, Outcome::Open) {
            self.outcome = Outcome::Cancelled(why);
        }
    }

    /// Deltas seen so far.
    pub(crate) fn deltas(&self) -> usize {
        self.observer.deltas
    }

    /// The frames that end a stream the server is shutting down.
    fn shutdown_frames(&mut self) -> Vec<Bytes> {
        self.cancel("server shutting down");
        self.encoder
            .error(&Error::Engine(llm_engine::Error::ShuttingDown))
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let ttft_ms = self.observer.time_to_first_token.map(log_millis);
        let millis = log_millis(self.observer.elapsed());
        let (outcome, prompt_tokens, completion_tokens) = match &self.outcome {
            Outcome::Finished(finish) => (
                finish.reason.as_str().to_owned(),
                Some(finish.usage.prompt_tokens),
                finish.usage.completion_tokens,
            ),
            Outcome::Failed(error) => (format!("error: {error}"), None, self.deltas() as u32),
            Outcome::Cancelled(why) => (format!("cancelled: {why}"), None, self.deltas() as u32),
            Outcome::Open => (
                "cancelled: client gone".to_owned(),
                None,
                self.deltas() as u32,
            ),
        };
        tracing::info!(
            request_id = %self.request_id,
            endpoint = self.endpoint,
            status = 200,
            ttft_ms,
            prompt_tokens,
            completion_tokens,
            millis,
            outcome,
            "stream"
        );
    }
}

/// Milliseconds with two decimals, for log lines.
pub(crate) fn log_millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e5).round() / 100.0
}

/// What the log and metrics need to know about a request.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    pub(crate) id: String,
    pub(crate) endpoint: &'static str,
    pub(crate) received: std::time::Instant,
}

/// A comment line, then a blank line: clients that split the stream on blank lines (rather
/// than parse it line by line) see it as one empty block and skip it.
fn keep_alive_frame() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

async fn send_all(body: &mpsc::Sender<Bytes>, frames: Vec<Bytes>) -> bool {
    for frame in frames {
        if body.send(frame).await.is_err() {
            return false;
        }
    }
    true
}

/// Writes one generation straight to one client, until its end, the client leaving (which
/// drops the generation and so cancels it at once), or the shutdown deadline.
pub(crate) async fn pump(
    mut generation: Generation,
    body: mpsc::Sender<Bytes>,
    keep_alive: Duration,
    mut deadline: Deadline,
) {
    let role = generation.encoder.role();
    if body.send(role).await.is_err() {
        return;
    }
    let mut quiet_since = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = body.closed() => {
                generation.cancel("client disconnected");
                return;
            }
            () = deadline.reached() => {
                let frames = generation.shutdown_frames();
                send_all(&body, frames).await;
                return;
            }
            step = generation.next_frames() => {
                let Some((frames, end)) = step else { return };
                if !send_all(&body, frames).await {
                    generation.cancel("client disconnected");
                    return;
                }
                if end {
                    return;
                }
                quiet_since = Instant::now();
            }
            () = tokio::time::sleep_until(quiet_since + keep_alive) => {
                if body.send(keep_alive_frame()).await.is_err() {
                    generation.cancel("client disconnected");
                    return;
                }
                quiet_since = Instant::now();
            }
        }
    }
}

/// Runs one resumable generation into its replay log. With no client attached for `grace`,
/// the generation is cancelled and the log ends with `finish_reason: "cancelled"`.
pub(crate) async fn produce(
    mut generation: Generation,
    log: Arc<ReplayLog>,
    store: Arc<ReplayStore>,
    grace: Duration,
    mut deadline: Deadline,
) {
    log.append(vec![generation.encoder.role()]);
    let mut attached = log.attached();
    let mut alone_since = (*attached.borrow_and_update() == 0).then(Instant::now);
    loop {
        tokio::select! {
            biased;
            () = deadline.reached() => {
                log.append(generation.shutdown_frames());
                break;
            }
            changed = attached.changed() => {
                if changed.is_err() {
                    break;
                }
                let alone = *attached.borrow_and_update() == 0;
                alone_since = match (alone, alone_since) {
                    (true, None) => Some(Instant::now()),
                    (true, since) => since,
                    (false, _) => None,
                };
            }
            () = sleep_until_some(alone_since.map(|since| since + grace)) => {
                generation.cancel("no client within the resume grace period");
                let frames = generation.encoder.finish(FinishReason::Cancelled, None);
                log.append(frames);
                break;
            }
            step = generation.next_frames() => {
                let Some((frames, end)) = step else { break };
                log.append(frames);
                if end {
                    break;
                }
            }
        }
    }
    drop(generation);
    store.finish(&log);
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends a replay log to one client from event number `from`, then follows it live until its
/// end, with keep-alive comments while it is silent. Leaving detaches the client; the
/// generation goes on for its grace period.
pub(crate) async fn follow(
    attached: Attached,
    from: usize,
    prelude: Option<Bytes>,
    body: mpsc::Sender<Bytes>,
    keep_alive: Duration,
) {
    let log = attached.log();
    if let Some(prelude) = prelude {
        if body.send(prelude).await.is_err() {
            return;
        }
    }
    let mut events = log.subscribe();
    let mut position = from;
    let mut quiet_since = Instant::now();
    loop {
        let (frames, finished) = {
            let state = events.borrow_and_update();
            let frames = state.frames.get(position..).unwrap_or_default().to_vec();
            (frames, state.finished)
        };
        position += frames.len();
        if !frames.is_empty() {
            if !send_all(&body, frames).await {
                return;
            }
            quiet_since = Instant::now();
        }
        if finished {
            return;
        }
        tokio::select! {
            biased;
            () = body.closed() => return,
            changed = events.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(quiet_since + keep_alive) => {
                if body.send(keep_alive_frame()).await.is_err() {
                    return;
                }
                quiet_since = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendered delta frame is exactly what encoding the chunk gives.
    #[test]
    fn fast_delta_frames_equal_serialized_chunks() {
        for resumable in [false, true] {
            let meta = ChunkMeta {
                id: "chatcmpl-\"odd\\id".to_owned(),
                created: 1_700_000_000,
                model: "Model \u{e9}\n".to_owned(),
                include_usage: false,
            };
            let mut fast = ChunkEncoder::new(meta.clone(), resumable);
            let mut slow = ChunkEncoder::new(meta.clone(), resumable);
            for text in [
                "Hello",
                " \"quoted\"",
                "line\nbreak\r\t",
                "\u{1}\u{1f}",
                "한국어 😀",
                "",
            ] {
                let expected = slow.json(&meta.chunk(
                    Delta {
                        role: None,
                        content: Some(text.to_owned()),
                    },
                    None,
                ));
                assert_eq!(fast.delta(text), expected, "{text:?}");
            }
        }
    }
}
