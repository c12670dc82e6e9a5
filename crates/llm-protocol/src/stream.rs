//! The OpenAI chat stream decoder: SSE events in, typed chunks out.
//!
//! It accepts what real servers send, not only what OpenAI sends: `data:` without the space,
//! CRLF line ends, keep-alive comments, `role` repeated on every chunk, `content: null`, and an
//! `{"error": {...}}` payload in the middle of the stream (which becomes [`Error::Api`]).

use crate::error::{Error, Result};
use crate::sse::{DecoderLimits, SseDecoder, SseItem, DONE};
use crate::types::{ChatCompletionChunk, ErrorBody, Usage};

/// What an OpenAI chat stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A chunk with choices (deltas and finish reasons).
    Chunk(ChatCompletionChunk),
    /// The usage-only chunk (`"choices": []`) sent when `stream_options.include_usage` is set.
    Usage(Usage),
    /// A comment line: the server is alive but has nothing to say yet.
    KeepAlive,
    /// `data: [DONE]`: the stream is complete. Nothing follows.
    Done,
}

/// Decodes an OpenAI chat completion stream from raw bytes, incrementally.
///
/// ```
/// use llm_protocol::{ChatStreamDecoder, StreamEvent};
///
/// let mut decoder = ChatStreamDecoder::new();
/// let mut events = Vec::new();
/// decoder.push(b"data:{\"id\":\"1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n", &mut events)?;
/// decoder.push(b": keep-alive\n\ndata: [DONE]\n\n", &mut events)?;
/// let StreamEvent::Chunk(chunk) = &events[0] else { unreachable!() };
/// assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("Hi"));
/// assert_eq!(events[1..], [StreamEvent::KeepAlive, StreamEvent::Done]);
/// assert!(decoder.is_done());
/// # Ok::<(), llm_protocol::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChatStreamDecoder {
    sse: SseDecoder,
    items: Vec<SseItem>,
    done: bool,
}

impl ChatStreamDecoder {
    /// A decoder with the default SSE limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with the given SSE limits.
    pub fn with_limits(limits: DecoderLimits) -> Self {
        Self {
            sse: SseDecoder::with_limits(limits),
            ..Self::default()
        }
    }

    /// Whether `[DONE]` has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The id of the last SSE event, to send as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> &str {
        self.sse.last_event_id()
    }

    /// Ends one connection's byte stream, discarding a half-received event, so that the bytes of
    /// a reconnection can follow. The last event id is kept.
    pub fn reconnect(&mut self) {
        self.sse.finish();
    }

    /// Decodes the next piece of bytes, appending complete events to `out`. Input after
    /// `[DONE]` is ignored.
    ///
    /// # Errors
    /// - [`Error::Api`] when the server sent an error object; events decoded before it in the
    ///   same piece are in `out`.
    /// - [`Error::MalformedChunk`] when a payload is neither a chunk, an error nor `[DONE]`.
    /// - The SSE decoder's limit errors.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let mut items = std::mem::take(&mut self.items);
        let pushed = self.sse.push(bytes, &mut items);
        let mut result = Ok(());
        for item in items.drain(..) {
            if self.done || result.is_err() {
                continue;
            }
            result = self.translate(item, out);
        }
        self.items = items;
        pushed.and(result)
    }

    fn translate(&mut self, item: SseItem, out: &mut Vec<StreamEvent>) -> Result<()> {
        let event = match item {
            SseItem::Comment(_) => {
                out.push(StreamEvent::KeepAlive);
                return Ok(());
            }
            SseItem::Retry(_) => return Ok(()),
            SseItem::Event(event) => event,
        };
        let data = event.data.trim();
        if data == DONE {
            self.done = true;
            out.push(StreamEvent::Done);
            return Ok(());
        }
        match serde_json::from_str::<ChatCompletionChunk>(data) {
            Ok(chunk) if chunk.is_usage_only() => {
                out.push(StreamEvent::Usage(chunk.usage.unwrap_or_default()));
                Ok(())
            }
            Ok(chunk) => {
                out.push(StreamEvent::Chunk(chunk));
                Ok(())
            }
            Err(chunk_error) => match serde_json::from_str::<ErrorBody>(data) {
                Ok(body) => Err(Error::Api(body.error)),
                Err(_) => Err(Error::MalformedChunk(chunk_error)),
            },
        }
    }
}
