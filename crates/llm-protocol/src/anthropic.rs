//! Anthropic's Messages API: `POST /v1/messages`, `POST /v1/messages/count_tokens`, the
//! `message` object, the events of its stream, and its error shape.

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, Prompt, MAX_ENGINE_STOP_SEQUENCES};
use crate::parse::{self, check_range, check_resumable, check_stops, null_as_default};
use crate::request::ChatMessage;
use crate::types::Role;

/// `POST /v1/messages` body (and, without `max_tokens`, `POST /v1/messages/count_tokens`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MessagesRequest {
    /// The model to use. Empty means the server's default.
    #[serde(default)]
    pub model: String,
    /// Most tokens to generate: required by `POST /v1/messages`.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// System instructions: a string or text blocks.
    #[serde(default)]
    pub system: Option<Blocks>,
    /// The conversation: `user` and `assistant` turns.
    pub messages: Vec<AnthropicMessage>,
    /// Sequences that end generation.
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    /// Sampling temperature, 0 to 1.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Sample among the `top_k` likeliest tokens only.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Stream the answer as named server-sent events.
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    /// Tools the model may call: not supported.
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// Extended thinking: not supported.
    #[serde(default)]
    pub thinking: Option<serde_json::Value>,
    /// Extension: a stream that can be resumed with `Last-Event-ID`
    /// (`GET /v1/messages/{id}/stream`). Only with `stream`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub resumable: bool,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AnthropicMessage {
    /// `user` or `assistant`.
    pub role: AnthropicRole,
    /// A string or text blocks.
    pub content: Blocks,
}

/// The two roles of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnthropicRole {
    /// The human.
    User,
    /// The model.
    Assistant,
}

/// Text given as a string or as an array of text blocks, joined.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blocks(pub String);

impl<'de> Deserialize<'de> for Blocks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse::joined_text(deserializer, &["text"]).map(Blocks)
    }
}

impl MessagesRequest {
    /// Parses and validates a `POST /v1/messages` body.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the offending field.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let request = Self::count_tokens_from_json(body)?;
        match request.max_tokens {
            None => Err(Error::invalid_param(
                "max_tokens",
                "`max_tokens` is required",
            )),
            Some(0) => Err(Error::invalid_param(
                "max_tokens",
                "`max_tokens` must be at least 1",
            )),
            Some(_) => Ok(request),
        }
    }

    /// Parses and validates a `POST /v1/messages/count_tokens` body, where `max_tokens` is
    /// not needed.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the offending field.
    pub fn count_tokens_from_json(body: &[u8]) -> Result<Self> {
        let request: Self = parse::from_json(body)?;
        request.validate()?;
        Ok(request)
    }

    fn validate(&self) -> Result<()> {
        if self.messages.is_empty() {
            return Err(Error::invalid_param(
                "messages",
                "`messages` must hold at least one message",
            ));
        }
        check_range("temperature", self.temperature, 0.0, 1.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        if self.top_k == Some(0) {
            return Err(Error::invalid_param("top_k", "`top_k` must be at least 1"));
        }
        check_stops(
            "stop_sequences",
            self.stop_sequences.as_deref().unwrap_or_default(),
            MAX_ENGINE_STOP_SEQUENCES,
        )?;
        check_resumable(self.resumable, self.stream)?;
        if self.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
            return Err(Error::invalid_param("tools", "tools are not supported"));
        }
        let thinking = self
            .thinking
            .as_ref()
            .and_then(|thinking| thinking.get("type"))
            .and_then(serde_json::Value::as_str);
        if thinking.is_some_and(|kind| kind != "disabled") {
            return Err(Error::invalid_param(
                "thinking",
                "extended thinking is not supported",
            ));
        }
        Ok(())
    }

    /// The conversation: the system text, then the turns.
    pub fn chat_messages(&self) -> Vec<ChatMessage> {
        let system = self
            .system
            .as_ref()
            .filter(|system| !system.0.is_empty())
            .map(|system| ChatMessage::new(Role::System, system.0.clone()));
        system
            .into_iter()
            .chain(self.messages.iter().map(|message| {
                let role = match message.role {
                    AnthropicRole::User => Role::User,
                    AnthropicRole::Assistant => Role::Assistant,
                };
                ChatMessage::new(role, message.content.0.clone())
            }))
            .collect()
    }
}

impl From<&MessagesRequest> for GenerateRequest {
    fn from(request: &MessagesRequest) -> Self {
        Self {
            model: request.model.clone(),
            prompt: Prompt::Chat(request.chat_messages()),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            stop: request.stop_sequences.clone().unwrap_or_default(),
            ..Self::default()
        }
    }
}

/// Why a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn.
    EndTurn,
    /// `max_tokens` (or the context) was reached.
    MaxTokens,
    /// One of `stop_sequences` was generated.
    StopSequence,
}

/// Token counts of a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnthropicUsage {
    /// Prompt tokens, after the chat template.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

/// A text content block of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentBlock {
    /// `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
}

impl ContentBlock {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: "text".to_owned(),
            text: text.into(),
        }
    }
}

/// The `message` object: the non-streamed answer, and the start of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `msg_...`.
    pub id: String,
    /// `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `assistant`.
    pub role: AnthropicRole,
    /// The answer's blocks (none at the start of a stream).
    pub content: Vec<ContentBlock>,
    /// The model that answered.
    pub model: String,
    /// Why it ended; `null` at the start of a stream.
    pub stop_reason: Option<StopReason>,
    /// The stop sequence that ended it, with [`StopReason::StopSequence`].
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: AnthropicUsage,
}

/// `delta` of a `message_delta` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDelta {
    /// Why the message ended.
    pub stop_reason: Option<StopReason>,
    /// The stop sequence that ended it.
    pub stop_sequence: Option<String>,
}

/// `delta` of a `content_block_delta` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextDelta {
    /// `text_delta`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
}

/// One event of a message stream; `type` is also the SSE `event:` name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageEvent {
    /// The first event: the message, with no content yet.
    MessageStart {
        /// The message.
        message: Message,
    },
    /// A content block begins.
    ContentBlockStart {
        /// The block's index.
        index: u32,
        /// The block, with empty text.
        content_block: ContentBlock,
    },
    /// A piece of a block's text.
    ContentBlockDelta {
        /// The block's index.
        index: u32,
        /// The text.
        delta: TextDelta,
    },
    /// A block is complete.
    ContentBlockStop {
        /// The block's index.
        index: u32,
    },
    /// The message's end: why, and the token counts (cumulative).
    MessageDelta {
        /// Why it ended.
        delta: MessageDelta,
        /// The token counts.
        usage: AnthropicUsage,
    },
    /// The last event of a finished message.
    MessageStop,
    /// The keep-alive.
    Ping,
    /// A failure; the last event.
    Error {
        /// What went wrong.
        error: AnthropicError,
    },
}

impl MessageEvent {
    /// The event's `type`, which is also its SSE `event:` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
            Self::Ping => "ping",
            Self::Error { .. } => "error",
        }
    }
}

/// The inner error of Anthropic's error shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnthropicError {
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `request_too_large`, `rate_limit_error`, `api_error`,
    /// `overloaded_error` or `timeout_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What went wrong.
    pub message: String,
}

/// Anthropic's error body: `{"type": "error", "error": {"type": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnthropicErrorBody {
    /// `error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The error.
    pub error: AnthropicError,
}

impl AnthropicErrorBody {
    /// The body of an error of `kind` with `message`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: "error".to_owned(),
            error: AnthropicError {
                kind: kind.into(),
                message: message.into(),
            },
        }
    }
}

/// The answer of `POST /v1/messages/count_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCount {
    /// The prompt's tokens, after the chat template.
    pub input_tokens: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_blocks_become_chat_messages() {
        let request = MessagesRequest::from_json(
            br#"{"model":"m","max_tokens":5,"system":[{"type":"text","text":"Be "},{"type":"text","text":"brief","cache_control":{"type":"ephemeral"}}],
                "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":"yo"}],
                "stop_sequences":["\n\n"],"top_k":5,"metadata":{"user_id":"u"}}"#,
        )
        .expect("valid");
        let generate = GenerateRequest::from(&request);
        assert_eq!(
            generate.prompt,
            Prompt::Chat(vec![
                ChatMessage::new(Role::System, "Be brief"),
                ChatMessage::new(Role::User, "hi"),
                ChatMessage::new(Role::Assistant, "yo"),
            ])
        );
        assert_eq!(generate.max_tokens, Some(5));
        assert_eq!(generate.top_k, Some(5));
        assert_eq!(generate.stop, ["\n\n"]);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let user = r#""messages":[{"role":"user","content":"hi"}]"#;
        for (body, field) in [
            (format!("{{{user}}}"), "max_tokens"),
            (format!(r#"{{"max_tokens":0,{user}}}"#), "max_tokens"),
            (r#"{"max_tokens":1,"messages":[]}"#.to_owned(), "messages"),
            (format!(r#"{{"max_tokens":1,{user},"temperature":1.5}}"#), "temperature"),
            (format!(r#"{{"max_tokens":1,{user},"tools":[{{"name":"t"}}]}}"#), "tools"),
            (
                format!(r#"{{"max_tokens":1,{user},"thinking":{{"type":"enabled","budget_tokens":9}}}}"#),
                "thinking",
            ),
            (format!(r#"{{"max_tokens":1,{user},"stop_sequences":[""]}}"#), "stop_sequences[0]"),
            (
                r#"{"max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#.to_owned(),
                "messages[0].role",
            ),
            (
                r#"{"max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}"#
                    .to_owned(),
                "messages[0].content[0]",
            ),
        ] {
            match MessagesRequest::from_json(body.as_bytes()) {
                Err(Error::InvalidRequest { param, message }) => {
                    assert_eq!(param.as_deref(), Some(field), "{body}: {message}");
                }
                other => panic!("expected {body} to be refused, got {other:?}"),
            }
        }
        MessagesRequest::count_tokens_from_json(format!("{{{user}}}").as_bytes())
            .expect("count_tokens needs no max_tokens");
    }

    #[test]
    fn events_serialize_as_anthropic_sends_them() {
        let event = MessageEvent::ContentBlockDelta {
            index: 0,
            delta: TextDelta {
                kind: "text_delta".into(),
                text: "Hi".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&event).expect("serializes"),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#
        );
        assert_eq!(
            serde_json::to_string(&MessageEvent::Ping).expect("serializes"),
            r#"{"type":"ping"}"#
        );
        assert_eq!(
            serde_json::to_string(&AnthropicErrorBody::new("overloaded_error", "busy"))
                .expect("serializes"),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#
        );
    }
}
