//! The Anthropic Messages stream (`/v1/messages`).
//!
//! `message_start` (the message with no content; `input_tokens` is 0 there, since the prompt
//! is counted once the request runs), `content_block_start`, a `ping`, one
//! `content_block_delta` (`text_delta`) per delta, then `content_block_stop`, `message_delta`
//! (`stop_reason`, `stop_sequence`, and the cumulative `usage` with both counts) and
//! `message_stop`. The keep-alive is the `ping` event. A failure after the start is an
//! `error` event in Anthropic's shape, and nothing follows it.

use bytes::Bytes;
use llm_engine::Finish;
use llm_protocol::anthropic::{
    AnthropicErrorBody, AnthropicRole, AnthropicUsage, ContentBlock, Message, MessageDelta,
    MessageEvent, StopReason,
};
use llm_protocol::FinishReason;

use super::encoder::Encoder;
use super::frame::Framer;
use crate::error::Error;

/// Anthropic's stop reason for how generation finished.
pub(crate) fn stop_reason(finish: &Finish) -> StopReason {
    match (&finish.reason, &finish.stop_sequence) {
        (FinishReason::Length, _) => StopReason::MaxTokens,
        (_, Some(_)) => StopReason::StopSequence,
        _ => StopReason::EndTurn,
    }
}

/// The `message` object with `content`, before or after generation.
pub(crate) fn message(id: &str, model: &str, content: Vec<ContentBlock>) -> Message {
    Message {
        id: id.to_owned(),
        kind: "message".to_owned(),
        role: AnthropicRole::Assistant,
        content,
        model: model.to_owned(),
        stop_reason: None,
        stop_sequence: None,
        usage: AnthropicUsage::default(),
    }
}

/// The keep-alive: `event: ping`, `data: {"type": "ping"}`.
const PING: &[u8] = b"event: ping\ndata: {\"type\":\"ping\"}\n\n";

/// What follows the text in a delta event's JSON.
const DELTA_SUFFIX: &str = "}}\n\n";

/// Encodes one Messages stream.
#[derive(Debug)]
pub(crate) struct MessagesEncoder {
    id: String,
    model: String,
    framer: Framer,
}

impl MessagesEncoder {
    pub(crate) fn new(id: String, model: String, resumable: bool) -> Self {
        Self {
            framer: Framer::new(&id, resumable),
            id,
            model,
        }
    }

    fn frame(&mut self, event: &MessageEvent) -> Bytes {
        self.framer.json(Some(event.kind()), event)
    }

    fn frames(&mut self, events: &[MessageEvent]) -> Vec<Bytes> {
        events.iter().map(|event| self.frame(event)).collect()
    }
}

impl Encoder for MessagesEncoder {
    fn open(&mut self) -> Vec<Bytes> {
        let message = message(&self.id, &self.model, Vec::new());
        self.frames(&[
            MessageEvent::MessageStart { message },
            MessageEvent::ContentBlockStart {
                index: 0,
                content_block: ContentBlock::text(""),
            },
            MessageEvent::Ping,
        ])
    }

    /// Byte for byte what serializing the event gives, without building it.
    fn delta(&mut self, text: &str) -> Bytes {
        self.framer.text_event(
            Some("content_block_delta"),
            "data: {\"type\":\"content_block_delta\",\"index\":0,\
             \"delta\":{\"type\":\"text_delta\",\"text\":",
            text,
            DELTA_SUFFIX,
        )
    }

    fn finish(&mut self, finish: &Finish) -> Vec<Bytes> {
        self.frames(&[
            MessageEvent::ContentBlockStop { index: 0 },
            MessageEvent::MessageDelta {
                delta: MessageDelta {
                    stop_reason: Some(stop_reason(finish)),
                    stop_sequence: finish.stop_sequence.clone(),
                },
                usage: AnthropicUsage {
                    input_tokens: finish.usage.prompt_tokens,
                    output_tokens: finish.usage.completion_tokens,
                },
            },
            MessageEvent::MessageStop,
        ])
    }

    fn cancelled(&mut self) -> Vec<Bytes> {
        let error = AnthropicErrorBody::new(
            "api_error",
            "no client resumed the stream within the resume grace period, so its generation \
             was cancelled",
        );
        vec![self.frame(&MessageEvent::Error { error: error.error })]
    }

    fn error(&mut self, error: &Error) -> Vec<Bytes> {
        let error = error.to_anthropic().error;
        vec![self.frame(&MessageEvent::Error { error })]
    }

    fn keep_alive(&self) -> Bytes {
        Bytes::from_static(PING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendered delta frame is exactly what encoding the event gives.
    #[test]
    fn fast_delta_frames_equal_serialized_events() {
        for resumable in [false, true] {
            let mut fast = MessagesEncoder::new("msg_\"1".to_owned(), "m".to_owned(), resumable);
            let mut slow = Framer::new("msg_\"1", resumable);
            for text in ["Hi", " \"q\"\n", "한국어 😀", ""] {
                let event = MessageEvent::ContentBlockDelta {
                    index: 0,
                    delta: llm_protocol::anthropic::TextDelta {
                        kind: "text_delta".to_owned(),
                        text: text.to_owned(),
                    },
                };
                assert_eq!(fast.delta(text), slow.json(Some(event.kind()), &event));
            }
        }
        let ping = serde_json::to_string(&MessageEvent::Ping).expect("serializes");
        assert_eq!(PING, format!("event: ping\ndata: {ping}\n\n").as_bytes());
    }

    #[test]
    fn stop_reasons_follow_the_finish() {
        let finish = |reason, stop_sequence: Option<&str>| Finish {
            reason,
            stop_sequence: stop_sequence.map(str::to_owned),
            usage: llm_protocol::Usage::new(1, 1),
            timings: llm_engine::Timings::default(),
        };
        assert_eq!(
            stop_reason(&finish(FinishReason::Stop, None)),
            StopReason::EndTurn
        );
        assert_eq!(
            stop_reason(&finish(FinishReason::Stop, Some("\n"))),
            StopReason::StopSequence
        );
        assert_eq!(
            stop_reason(&finish(FinishReason::Length, None)),
            StopReason::MaxTokens
        );
    }
}
