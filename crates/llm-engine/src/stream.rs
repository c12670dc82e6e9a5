//! What a submitted request gives back: a stream of events, and the types in it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use llm_protocol::tools::FunctionCall;
use llm_protocol::{FinishReason, TokenLogprob, Usage};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// One event of a generation. Not `#[non_exhaustive]`: every consumer in the workspace maps
/// each event to a frame, and a new event must be a compile error there, not a dropped one.
#[derive(Debug)]
pub enum EngineEvent {
    /// New text or pieces of tool calls; never empty.
    Delta(TextDelta),
    /// The generation ended normally. Nothing follows.
    Finished(Finish),
    /// The generation failed. Nothing follows.
    Error(Error),
}

/// A piece of generated text, or of tool calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextDelta {
    /// Answer text: whole UTF-8 characters. Empty only when `tool_calls` is not.
    pub text: String,
    /// Pieces of tool calls, in order, after `text`.
    pub tool_calls: Vec<ToolCallDelta>,
    /// With `logprobs` asked for, the tokens whose text this delta releases, each with its
    /// log probability (a token holding part of a character comes with the delta that
    /// completes it); otherwise empty.
    pub logprobs: Vec<TokenLogprob>,
    /// Token counts so far: the prompt's, and the tokens generated up to this delta.
    pub usage: Usage,
}

/// A piece of one tool call: its name first, then its arguments' JSON text as generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Which call of the answer, from 0.
    pub index: u32,
    /// The function's name, on the call's first piece only.
    pub name: Option<String>,
    /// The next piece of the arguments (empty on a first piece that has none yet).
    pub arguments: String,
}

impl From<String> for TextDelta {
    fn from(text: String) -> Self {
        Self {
            text,
            ..Self::default()
        }
    }
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
    /// The tool calls the model made, in order.
    pub tool_calls: Vec<FunctionCall>,
    /// Its tokens' log probabilities, when they were asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// How generation ended.
    pub finish: Finish,
}

/// A whole answer being read from a request's events, as a non-streaming client wants it.
#[derive(Debug, Default)]
pub struct Collecting {
    text: String,
    tool_calls: Vec<FunctionCall>,
    logprobs: Vec<TokenLogprob>,
}

impl Collecting {
    /// Takes the next event; the whole answer (or the error) once the event is the last.
    pub fn add(&mut self, event: EngineEvent) -> Option<Result<Completion>> {
        match event {
            EngineEvent::Delta(delta) => {
                self.text.push_str(&delta.text);
                for piece in delta.tool_calls {
                    let index = piece.index as usize;
                    if self.tool_calls.len() <= index {
                        self.tool_calls
                            .resize_with(index + 1, FunctionCall::default);
                    }
                    let call = &mut self.tool_calls[index];
                    if let Some(name) = piece.name {
                        call.name = name;
                    }
                    call.arguments.push_str(&piece.arguments);
                }
                self.logprobs.extend(delta.logprobs);
                None
            }
            EngineEvent::Finished(finish) => Some(Ok(Completion {
                text: std::mem::take(&mut self.text),
                tool_calls: std::mem::take(&mut self.tool_calls),
                logprobs: std::mem::take(&mut self.logprobs),
                finish,
            })),
            EngineEvent::Error(error) => Some(Err(error)),
        }
    }
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
    deltas: mpsc::Receiver<TextDelta>,
    terminal: TerminalSlot,
    ended: bool,
}

impl ChatStream {
    pub(crate) fn new(deltas: mpsc::Receiver<TextDelta>, terminal: TerminalSlot) -> Self {
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
        let mut answer = Collecting::default();
        while let Some(event) = self.next().await {
            if let Some(done) = answer.add(event) {
                return done;
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
