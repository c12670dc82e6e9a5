//! Messages of the `/ws/chat` WebSocket.
//!
//! The client sends a chat request as JSON (the same fields as `POST /v1/chat/completions`,
//! optionally with `"type": "chat"`), or `{"type": "cancel"}` to stop the current generation.
//! The server answers each request with `token` messages carrying deltas (never the cumulative
//! text) and, when the model calls tools, `tool_call` messages with their pieces, then one
//! `done`, or an `error`. Several turns may share one socket.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::request::ChatCompletionRequest;
use crate::types::{ApiError, FinishReason, Usage};

/// A message from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Start a generation.
    Chat(Box<ChatCompletionRequest>),
    /// Stop the current generation; the server answers with `done` and `finish_reason`
    /// `cancelled`.
    Cancel,
}

impl ClientMessage {
    /// Parses a text frame.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for JSON that is not an object, an unknown `type`, or a chat
    /// request that [`ChatCompletionRequest::from_json`] rejects.
    pub fn from_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type", default)]
            kind: Option<String>,
        }
        let kind = serde_json::from_str::<Kind>(text).map_err(|error| Error::InvalidRequest {
            param: None,
            message: format!("message is not a JSON object: {error}"),
        })?;
        match kind.kind.as_deref() {
            Some("cancel") => Ok(Self::Cancel),
            None | Some("chat") => Ok(Self::Chat(Box::new(ChatCompletionRequest::from_json(
                text.as_bytes(),
            )?))),
            Some(other) => Err(Error::invalid_param(
                "type",
                format!("unknown message type `{other}`; expected `chat` or `cancel`"),
            )),
        }
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMessage {
    /// New text: a delta to append.
    Token {
        /// The delta.
        content: String,
    },
    /// A piece of a tool call: the call's `id` and `name` on its first piece, then the
    /// arguments' JSON text in pieces.
    ToolCall {
        /// Which call of the answer, from 0.
        index: u32,
        /// The call's id, on its first piece.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The function's name, on the call's first piece.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The next piece of the arguments.
        arguments: String,
    },
    /// The generation ended.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts; absent when the client cancelled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// The request failed or the message was invalid. The socket stays usable.
    Error {
        /// What went wrong, in OpenAI's error shape.
        error: ApiError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        assert_eq!(
            ClientMessage::from_json(r#"{"type":"cancel"}"#).expect("cancel"),
            ClientMessage::Cancel
        );
        for text in [
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"type":"chat","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        ] {
            let ClientMessage::Chat(request) = ClientMessage::from_json(text).expect("chat") else {
                panic!("{text} is a chat request");
            };
            assert_eq!(request.messages[0].text(), "hi");
        }
        for (text, param) in [
            ("[1]", None),
            ("nope", None),
            (r#"{"type":"dance"}"#, Some("type")),
            (
                r#"{"messages":[{"role":"x","content":"hi"}]}"#,
                Some("messages[0].role"),
            ),
        ] {
            match ClientMessage::from_json(text) {
                Err(Error::InvalidRequest { param: got, .. }) => {
                    assert_eq!(got.as_deref(), param, "{text}");
                }
                other => panic!("{text} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn server_messages_serialize_with_a_type_tag() {
        let cases = [
            (
                ServerMessage::Token {
                    content: "Hi".into(),
                },
                r#"{"type":"token","content":"Hi"}"#,
            ),
            (
                ServerMessage::Done {
                    finish_reason: FinishReason::Stop,
                    usage: Some(Usage::new(1, 2)),
                },
                r#"{"type":"done","finish_reason":"stop","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            ),
            (
                ServerMessage::Error {
                    error: ApiError::new("invalid_request_error", "bad"),
                },
                r#"{"type":"error","error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#,
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(serde_json::to_string(&message).expect("json"), expected);
            let back: ServerMessage = serde_json::from_str(expected).expect("round trip");
            assert_eq!(back, message);
        }
    }
}
