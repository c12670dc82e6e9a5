//! What a submitted request gives back: a stream of events, and the types in it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use llm_protocol::{FinishReason, Usage};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// One event of a generation. Not `#[non_exhaustive]`: every consumer in the workspace maps
/// each event to a frame, and a new event must be a compile error there, not a dropped one.
#[derive(Debug)]
pub enum EngineEvent {
    /// New text. Always whole UTF-8 characters; never empty.
    Delta(String),
    /// The generation ended normally. Nothing follows.
    Finished(Finish),
    /// The generation failed. Nothing follows.
    Error(Error),
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// `stop` (end of answer or a stop sequence) or `length` (token limit).
    pub reason: FinishReason,
    /// The stop sequence that ended the answer (with `stop`); `None` when the model ended
    /// it.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: Usage,
    /// Where the time went.
    pub timings: Timings,
}

/// Timings of one request, all measured from its submission.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Time spent waiting for a running slot.
    pub queue: Duration,
    /// Time until the first delta was produced.
    pub time_to_first_token: Option<Duration>,
    /// When each delta was produced, as offsets from submission; consecutive differences are
    /// the inter-token latencies.
    pub token_times: Vec<Duration>,
    /// Time until the request finished.
    pub total: Duration,
}

impl Timings {
    /// The gaps between consecutive deltas.
    pub fn inter_token_latencies(&self) -> impl Iterator<Item = Duration> + '_ {
        self.token_times
            .windows(2)
            .map(|pair| pair[1].saturating_sub(pair[0]))
    }
}

/// A complete, non-streamed answer: the concatenated deltas and how they ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// How generation ended.
    pub finish: Finish,
}

/// The final event of a request, handed from the request's task to its stream outside the
/// bounded delta buffer, so that a full buffer never holds back the end of a stream.
pub(crate) type TerminalSlot = Arc<Mutex<Option<EngineEvent>>>;

/// The events of one request: deltas, then exactly one [`EngineEvent::Finished`] or
/// [`EngineEvent::Error`], then `None`.
///
/// Dropping the stream cancels the request: if it is still waiting for a slot it never reaches
/// mistral.rs; if it is generating, it stops at the next decode step.
///
/// Cancel safety: [`next`](Self::next) is cancel safe; an event is never lost if the future is
/// dropped before it completes.
#[derive(Debug)]
pub struct ChatStream {
    deltas: mpsc::Receiver<String>,
    terminal: TerminalSlot,
    ended: bool,
}

impl ChatStream {
    pub(crate) fn new(deltas: mpsc::Receiver<String>, terminal: TerminalSlot) -> Self {
        Self {
            deltas,
            terminal,
            ended: false,
        }
    }

    /// The next event, or `None` after the final one.
    pub async fn next(&mut self) -> Option<EngineEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Cancels the request. Equivalent to dropping the stream.
    pub fn cancel(self) {}

    /// Reads the whole answer, as a non-streaming client wants it.
    ///
    /// # Errors
    /// The error the generation ended with.
    pub async fn collect(mut self) -> Result<Completion> {
        let mut text = String::new();
        while let Some(event) = self.next().await {
            match event {
                EngineEvent::Delta(delta) => text.push_str(&delta),
                EngineEvent::Finished(finish) => return Ok(Completion { text, finish }),
                EngineEvent::Error(error) => return Err(error),
            }
        }
        Err(ended_early())
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<EngineEvent>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.deltas.poll_recv(cx) {
            Poll::Ready(Some(delta)) => Poll::Ready(Some(EngineEvent::Delta(delta))),
            Poll::Ready(None) => {
                self.ended = true;
                let terminal = self
                    .terminal
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take();
                // No terminal event means the request's task died without saying why.
                Poll::Ready(Some(
                    terminal.unwrap_or_else(|| EngineEvent::Error(ended_early())),
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn ended_early() -> Error {
    Error::Generation {
        source: "the generation task ended without a final event".into(),
    }
}

impl futures_core::Stream for ChatStream {
    type Item = EngineEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}
