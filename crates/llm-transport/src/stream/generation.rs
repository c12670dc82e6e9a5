//! One generation being served: the engine's events, its metrics, and its log line.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use llm_engine::{Completion, EngineEvent, Finish};

use super::encoder::Encoder;
use crate::backend::EventStream;
use crate::error::Error;
use crate::http::{log_millis, RequestInfo};
use crate::metrics::{Metrics, RequestObserver};

/// The engine's events for one request, recorded in the metrics as they pass, and the
/// request's log line, written when the generation is dropped.
pub(crate) struct Generation {
    stream: EventStream,
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
    pub(crate) fn new(stream: EventStream, metrics: Arc<Metrics>, request: &RequestInfo) -> Self {
        Self {
            stream,
            observer: RequestObserver::new(request.received),
            metrics,
            request_id: request.id.clone(),
            endpoint: request.endpoint,
            outcome: Outcome::Open,
        }
    }

    /// The next engine event, recorded in the metrics. `None` after the last one. Cancel safe.
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
        }
        Some(event)
    }

    /// The frames of the next event in `encoder`'s dialect, and whether they end the stream.
    /// Cancel safe.
    pub(crate) async fn next_frames(
        &mut self,
        encoder: &mut dyn Encoder,
    ) -> Option<(Vec<Bytes>, bool)> {
        Some(match self.next_event().await? {
            EngineEvent::Delta(delta) => (encoder.text_delta(&delta), false),
            EngineEvent::Finished(finish) => (encoder.finish(&finish), true),
            EngineEvent::Error(error) => {
                let error = Error::Engine(error);
                tracing::warn!(request_id = %self.request_id, error = %error, detail = ?error,
                    "stream ended with an error");
                (encoder.error(&error), true)
            }
        })
    }

    /// Reads the whole answer for a non-streaming client.
    ///
    /// # Errors
    /// The error the generation ended with.
    pub(crate) async fn collect(&mut self) -> Result<Completion, llm_engine::Error> {
        let mut answer = llm_engine::Collecting::default();
        while let Some(event) = self.next_event().await {
            if let Some(done) = answer.add(event) {
                return done;
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
