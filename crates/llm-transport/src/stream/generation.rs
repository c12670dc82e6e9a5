//! One generation being served: the engine's events, its metrics, and its log line.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::SelectAll;
use futures_util::StreamExt;
use llm_engine::{Completion, EngineEvent, Finish};
use llm_protocol::Usage;

use super::encoder::Encoder;
use crate::backend::EventStream;
use crate::error::Error;
use crate::http::{log_millis, RequestInfo};
use crate::metrics::{Metrics, RequestObserver};
use crate::ratelimit::Admission;

/// The engine's events for one request, recorded in the metrics as they pass, and the
/// request's log line, written when the generation is dropped. A request for `n` choices is
/// `n` engine streams, their events merged as they come, each with its choice's index.
pub(crate) struct Generation {
    streams: SelectAll<Choice>,
    /// How many choices; the generation is finished when all of them are.
    choices: u32,
    /// The finishes of the choices that ended.
    finished: Vec<Finish>,
    /// The request's place under its client's rate limits, settled when it ends.
    admission: Option<Admission>,
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

/// One choice's engine events, each with the choice's index.
type Choice = futures_util::stream::Map<
    EventStream,
    Box<dyn FnMut(EngineEvent) -> (u32, EngineEvent) + Send>,
>;

impl Generation {
    /// The generation of one engine stream per choice, in index order.
    pub(crate) fn new(
        streams: Vec<EventStream>,
        metrics: Arc<Metrics>,
        request: &RequestInfo,
    ) -> Self {
        let choices = u32::try_from(streams.len()).unwrap_or(u32::MAX);
        let tagged = streams.into_iter().zip(0..).map(|(stream, index)| {
            let tag: Box<dyn FnMut(EngineEvent) -> (u32, EngineEvent) + Send> =
                Box::new(move |event| (index, event));
            stream.map(tag)
        });
        Self {
            streams: futures_util::stream::select_all(tagged),
            choices,
            finished: Vec::new(),
            admission: None,
            observer: RequestObserver::new(request.received),
            metrics,
            request_id: request.id.clone(),
            endpoint: request.endpoint,
            outcome: Outcome::Open,
        }
    }

    /// Holds `admission` until the generation ends, then settles it to the tokens used.
    pub(crate) fn admitted(mut self, admission: Option<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// The next engine event, recorded in the metrics. `None` after the last one. Cancel safe.
    pub(crate) async fn next_event(&mut self) -> Option<EngineEvent> {
        self.next_choice_event().await.map(|(_, event)| event)
    }

    /// The next engine event of any choice, with the choice's index. `None` after the last
    /// choice finished or one failed. Cancel safe.
    pub(crate) async fn next_choice_event(&mut self) -> Option<(u32, EngineEvent)> {
        if !matches!(self.outcome, Outcome::Open) {
            return None;
        }
        let (index, event) = self.streams.next().await.unwrap_or_else(|| {
            let error = llm_engine::Error::Generation {
                source: "the engine stream ended without a final event".into(),
            };
            (0, EngineEvent::Error(error))
        });
        match &event {
            EngineEvent::Delta(_) => self.observer.delta(&self.metrics),
            EngineEvent::Finished(finish) => {
                self.finished.push(finish.clone());
                if let Some(total) = self.total() {
                    self.observer.finished(&self.metrics, &total);
                    self.outcome = Outcome::Finished(total);
                }
            }
            EngineEvent::Error(error) => {
                self.observer.failed(&self.metrics);
                self.outcome = Outcome::Failed(error.to_string());
            }
        }
        Some((index, event))
    }

    /// Once every choice finished: how the whole generation did, the prompt counted once
    /// and the generated tokens of every choice.
    fn total(&self) -> Option<Finish> {
        if self.finished.len() < self.choices as usize {
            return None;
        }
        let mut total = self.finished.last()?.clone();
        total.usage = usage_of(&self.finished);
        Some(total)
    }

    /// The frames of the next event in `encoder`'s dialect, and whether they end the stream.
    /// Cancel safe.
    pub(crate) async fn next_frames(
        &mut self,
        encoder: &mut dyn Encoder,
    ) -> Option<(Vec<Bytes>, bool)> {
        let several = self.choices > 1;
        Some(match self.next_choice_event().await? {
            (index, EngineEvent::Delta(delta)) => (encoder.choice_delta(index, &delta), false),
            (index, EngineEvent::Finished(finish)) if several => {
                let mut frames = encoder.choice_finished(index, &finish);
                match &self.outcome {
                    Outcome::Finished(total) => {
                        frames.extend(encoder.finish(total));
                        (frames, true)
                    }
                    _ => (frames, false),
                }
            }
            (_, EngineEvent::Finished(finish)) => (encoder.finish(&finish), true),
            (_, EngineEvent::Error(error)) => {
                let error = Error::Engine(error);
                tracing::warn!(request_id = %self.request_id, error = %error, detail = ?error,
                    "stream ended with an error");
                (encoder.error(&error), true)
            }
        })
    }

    /// Reads the whole answer of every choice for a non-streaming client, in index order.
    ///
    /// # Errors
    /// The error a choice's generation ended with.
    pub(crate) async fn collect(&mut self) -> Result<Vec<Completion>, llm_engine::Error> {
        let mut answers: Vec<llm_engine::Collecting> = (0..self.choices)
            .map(|_| llm_engine::Collecting::default())
            .collect();
        let mut done: Vec<Option<Completion>> = (0..self.choices).map(|_| None).collect();
        while let Some((index, event)) = self.next_choice_event().await {
            let index = index as usize;
            if let Some(answer) = answers[index].add(event) {
                done[index] = Some(answer?);
                if done.iter().all(Option::is_some) {
                    return Ok(done.into_iter().flatten().collect());
                }
            }
        }
        Err(llm_engine::Error::Generation {
            source: "the generation already ended".into(),
        })
    }

    /// Ends the generation early, with `why` in the log. Dropping it then cancels the work.
    pub(crate) fn cancel(&mut self, why: &'static str) {
        if matches!(self.outcome, Outcome::Open) {
            self.outcome = Outcome::Cancelled(why);
        }
    }

    /// The frames that end a stream the server is shutting down.
    pub(crate) fn shutdown_frames(&mut self, encoder: &mut dyn Encoder) -> Vec<Bytes> {
        self.cancel("server shutting down");
        encoder.error(&Error::ShuttingDown)
    }

    /// Deltas seen so far.
    fn deltas(&self) -> u32 {
        u32::try_from(self.observer.deltas).unwrap_or(u32::MAX)
    }
}

/// The usage of a request's choices together: the prompt counted once, and the tokens every
/// choice generated.
pub(crate) fn usage_of<'a>(finishes: impl IntoIterator<Item = &'a Finish>) -> Usage {
    let mut finishes = finishes.into_iter().peekable();
    let prompt = finishes
        .peek()
        .map_or(0, |finish| finish.usage.prompt_tokens);
    let generated = finishes
        .map(|finish| finish.usage.completion_tokens)
        .fold(0u32, u32::saturating_add);
    Usage::new(prompt, generated)
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let (Some(admission), Outcome::Finished(finish)) = (&mut self.admission, &self.outcome) {
            admission.used(u64::from(finish.usage.total_tokens));
        }
        let ttft_ms = self.observer.time_to_first_token.map(log_millis);
        let millis = log_millis(self.observer.elapsed());
        let (outcome, prompt_tokens, completion_tokens) = match &self.outcome {
            Outcome::Finished(finish) => (
                finish.reason.as_str().to_owned(),
                Some(finish.usage.prompt_tokens),
                finish.usage.completion_tokens,
            ),
            Outcome::Failed(error) => (format!("error: {error}"), None, self.deltas()),
            Outcome::Cancelled(why) => (format!("cancelled: {why}"), None, self.deltas()),
            Outcome::Open => ("cancelled: client gone".to_owned(), None, self.deltas()),
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
