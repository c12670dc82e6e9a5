//! OpenAI's Responses API, stateless: `POST /v1/responses`, its `response` object and the
//! named events of its stream.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::format::TextFormat;
use crate::generate::{GenerateRequest, Prompt};
use crate::parse::{self, check_resumable, check_sampling, check_token_limit, null_as_default};
use crate::request::ChatMessage;
use crate::types::Role;

/// `POST /v1/responses` body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ResponsesRequest {
    /// The model to use. Empty means the server's default.
    #[serde(default)]
    pub model: String,
    /// A string (one user message), or a list of message items.
    pub input: ResponseInput,
    /// System instructions, put before the input.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Stream the answer as named server-sent events.
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    /// Accepted; responses are never stored (the server is stateless).
    #[serde(default)]
    pub store: Option<bool>,
    /// Continuing a stored response: not supported by a stateless server.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Running in the background: not supported.
    #[serde(default)]
    pub background: Option<bool>,
    /// Tools the model may call: not supported.
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// The output format: free text, any JSON object, or JSON that validates against a schema.
    #[serde(default)]
    pub text: Option<TextConfig>,
    /// An end-user id, for logs.
    #[serde(default)]
    pub user: Option<String>,
    /// Extension: a stream that can be resumed with `Last-Event-ID`
    /// (`GET /v1/responses/{id}/stream`). Only with `stream`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub resumable: bool,
}

/// `text` of a request: the output format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// The format; absent is free text.
    #[serde(default)]
    pub format: Option<TextFormat>,
}

/// The `input` of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseInput {
    /// One user message.
    Text(String),
    /// Messages, in order.
    Items(Vec<ChatMessage>),
}

impl Default for ResponseInput {
    fn default() -> Self {
        Self::Items(Vec::new())
    }
}

impl<'de> Deserialize<'de> for ResponseInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ResponseInput;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of message items")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(ResponseInput::Text(text.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(InputItem(message)) = seq.next_element()? {
                    items.push(message);
                }
                Ok(ResponseInput::Items(items))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One input item: a message, with `type` `message` or absent.
struct InputItem(ChatMessage);

impl<'de> Deserialize<'de> for InputItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "type", default)]
            kind: Option<String>,
            role: Option<Role>,
            content: Option<InputContent>,
        }
        let raw = Raw::deserialize(deserializer)?;
        match raw.kind.as_deref() {
            None | Some("message") => {}
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "input items of type `{other}` are not supported; only messages are"
                )))
            }
        }
        let role = raw.role.ok_or_else(|| D::Error::missing_field("role"))?;
        if role == Role::Tool {
            return Err(D::Error::custom("the `tool` role is not supported here"));
        }
        let content = raw
            .content
            .ok_or_else(|| D::Error::missing_field("content"))?;
        Ok(Self(ChatMessage::new(role, content.0)))
    }
}

/// A message's content: a string, or text parts (`input_text`, or `output_text` in earlier
/// assistant turns), joined.
struct InputContent(String);

impl<'de> Deserialize<'de> for InputContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse::joined_text(deserializer, &["input_text", "output_text"]).map(Self)
    }
}

impl ResponsesRequest {
    /// Parses and validates a request body.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the offending field.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let request: Self = parse::from_json(body)?;
        request.validate()?;
        Ok(request)
    }

    /// Checks ranges and the fields a stateless text server cannot honour.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        if matches!(&self.input, ResponseInput::Items(items) if items.is_empty()) {
            return Err(Error::invalid_param(
                "input",
                "`input` must hold at least one message",
            ));
        }
        check_sampling(self.temperature, self.top_p, None, None)?;
        check_token_limit("max_output_tokens", self.max_output_tokens)?;
        check_resumable(self.resumable, self.stream)?;
        if self.previous_response_id.is_some() {
            return Err(Error::invalid_param(
                "previous_response_id",
                "this server stores no responses; send the whole conversation in `input`",
            ));
        }
        if self.background == Some(true) {
            return Err(Error::invalid_param(
                "background",
                "background responses are not supported; stream with `resumable` to survive \
                 a lost connection",
            ));
        }
        if self.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
            return Err(Error::invalid_param("tools", "tools are not supported"));
        }
        match self.text_format() {
            Some(format) => format.validate(),
            None => Ok(()),
        }
    }

    /// The requested `text.format`, if any.
    pub fn text_format(&self) -> Option<&TextFormat> {
        self.text.as_ref().and_then(|text| text.format.as_ref())
    }

    /// The conversation: the instructions as a system message, then the input.
    pub fn messages(&self) -> Vec<ChatMessage> {
        let mut messages: Vec<ChatMessage> = self
            .instructions
            .iter()
            .map(|text| ChatMessage::new(Role::System, text.clone()))
            .collect();
        match &self.input {
            ResponseInput::Text(text) => messages.push(ChatMessage::new(Role::User, text.clone())),
            ResponseInput::Items(items) => messages.extend(items.iter().cloned()),
        }
        messages
    }
}

impl From<&ResponsesRequest> for GenerateRequest {
    fn from(request: &ResponsesRequest) -> Self {
        Self {
            model: request.model.clone(),
            prompt: Prompt::Chat(request.messages()),
            max_tokens: request.max_output_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            format: request.text_format().and_then(TextFormat::output_format),
            ..Self::default()
        }
    }
}

/// A `response` object, in every lifecycle event and as the non-streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseObject {
    /// `resp_...`.
    pub id: String,
    /// `response`.
    pub object: String,
    /// Unix seconds.
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    /// Why a failed response failed.
    pub error: Option<ResponseError>,
    /// Why an incomplete response is incomplete.
    pub incomplete_details: Option<IncompleteDetails>,
    /// The request's instructions.
    pub instructions: Option<String>,
    /// The request's token limit.
    pub max_output_tokens: Option<u32>,
    /// The model that answered.
    pub model: String,
    /// The output items (one message).
    pub output: Vec<OutputMessage>,
    /// `true`, as OpenAI reports it when no tools are given.
    pub parallel_tool_calls: bool,
    /// Always `null`: nothing is stored.
    pub previous_response_id: Option<String>,
    /// Always `false`: nothing is stored.
    pub store: bool,
    /// The request's temperature.
    pub temperature: Option<f64>,
    /// The request's `text` configuration: `{"format": {"type": "text"}}` unless it asked for
    /// JSON.
    pub text: serde_json::Value,
    /// `auto`.
    pub tool_choice: String,
    /// Always empty.
    pub tools: Vec<serde_json::Value>,
    /// The request's `top_p`.
    pub top_p: Option<f64>,
    /// `disabled`.
    pub truncation: String,
    /// Token counts, once finished.
    pub usage: Option<ResponseUsage>,
    /// The request's `user`.
    pub user: Option<String>,
    /// Always empty.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// `error` of a failed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseError {
    /// `server_error`, `rate_limit_exceeded`, ...
    pub code: String,
    /// What happened.
    pub message: String,
}

/// `incomplete_details` of an incomplete response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: String,
}

/// An output message item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputMessage {
    /// `msg_...`.
    pub id: String,
    /// `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: String,
    /// `assistant`.
    pub role: String,
    /// The text parts (one, once started).
    pub content: Vec<OutputText>,
}

/// An `output_text` content part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputText {
    /// `output_text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
    /// Always empty.
    pub annotations: Vec<serde_json::Value>,
    /// Always empty: log probabilities are not computed.
    pub logprobs: Vec<serde_json::Value>,
}

impl OutputText {
    /// A part holding `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            kind: "output_text".to_owned(),
            text: text.into(),
            annotations: Vec::new(),
            logprobs: Vec::new(),
        }
    }
}

/// Token counts of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseUsage {
    /// Prompt tokens, after the chat template.
    pub input_tokens: u32,
    /// `{"cached_tokens": 0}`.
    pub input_tokens_details: serde_json::Value,
    /// Generated tokens.
    pub output_tokens: u32,
    /// `{"reasoning_tokens": 0}`.
    pub output_tokens_details: serde_json::Value,
    /// Both.
    pub total_tokens: u32,
}

impl From<crate::types::Usage> for ResponseUsage {
    fn from(usage: crate::types::Usage) -> Self {
        Self {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: serde_json::json!({ "cached_tokens": 0 }),
            output_tokens: usage.completion_tokens,
            output_tokens_details: serde_json::json!({ "reasoning_tokens": 0 }),
            total_tokens: usage.total_tokens,
        }
    }
}

/// One event of a response stream; `type` is also the SSE `event:` name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ResponseEvent {
    /// The first event.
    #[serde(rename = "response.created")]
    Created {
        /// The response, `in_progress` with no output.
        response: ResponseObject,
        /// This event's place in the stream, from 0.
        sequence_number: u64,
    },
    /// Generation started.
    #[serde(rename = "response.in_progress")]
    InProgress {
        /// The response, `in_progress`.
        response: ResponseObject,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// The message item begins.
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        /// Its index in `output`.
        output_index: u32,
        /// The item, `in_progress`, with no content.
        item: OutputMessage,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// The text part begins.
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        /// The message item's id.
        item_id: String,
        /// Its index in `output`.
        output_index: u32,
        /// The part's index in the item's content.
        content_index: u32,
        /// The part, with empty text.
        part: OutputText,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// A piece of text.
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        /// The message item's id.
        item_id: String,
        /// Its index in `output`.
        output_index: u32,
        /// The part's index in the item's content.
        content_index: u32,
        /// The text.
        delta: String,
        /// Always empty.
        logprobs: Vec<serde_json::Value>,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// The part's whole text.
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        /// The message item's id.
        item_id: String,
        /// Its index in `output`.
        output_index: u32,
        /// The part's index in the item's content.
        content_index: u32,
        /// The whole text.
        text: String,
        /// Always empty.
        logprobs: Vec<serde_json::Value>,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// The part is complete.
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        /// The message item's id.
        item_id: String,
        /// Its index in `output`.
        output_index: u32,
        /// The part's index in the item's content.
        content_index: u32,
        /// The part, with its whole text.
        part: OutputText,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// The message item is complete.
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        /// Its index in `output`.
        output_index: u32,
        /// The item, with its whole content.
        item: OutputMessage,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// The last event of a finished response.
    #[serde(rename = "response.completed")]
    Completed {
        /// The response, `completed`, with its output and usage.
        response: ResponseObject,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// The last event of a response cut at its token limit.
    #[serde(rename = "response.incomplete")]
    Incomplete {
        /// The response, `incomplete`, with its output, usage and `incomplete_details`.
        response: ResponseObject,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// The last event of a response whose generation failed.
    #[serde(rename = "response.failed")]
    Failed {
        /// The response, `failed`, with its `error`.
        response: ResponseObject,
        /// This event's place in the stream.
        sequence_number: u64,
    },
    /// An error outside a response's own lifecycle (the server shutting down, replay memory
    /// exhausted); the last event.
    #[serde(rename = "error")]
    Error {
        /// A machine-readable code.
        code: Option<String>,
        /// What happened.
        message: String,
        /// The request field to blame, if any.
        param: Option<String>,
        /// This event's place in the stream.
        sequence_number: u64,
    },
}

impl ResponseEvent {
    /// The event's `type`, which is also its SSE `event:` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "response.created",
            Self::InProgress { .. } => "response.in_progress",
            Self::OutputItemAdded { .. } => "response.output_item.added",
            Self::ContentPartAdded { .. } => "response.content_part.added",
            Self::OutputTextDelta { .. } => "response.output_text.delta",
            Self::OutputTextDone { .. } => "response.output_text.done",
            Self::ContentPartDone { .. } => "response.content_part.done",
            Self::OutputItemDone { .. } => "response.output_item.done",
            Self::Completed { .. } => "response.completed",
            Self::Incomplete { .. } => "response.incomplete",
            Self::Failed { .. } => "response.failed",
            Self::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_a_string_or_message_items() {
        let request = ResponsesRequest::from_json(
            br#"{"input":[{"role":"user","content":"hi"},
                {"type":"message","role":"assistant","content":[{"type":"output_text","text":"yo"}]},
                {"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_text","text":"b"}]}],
              "instructions":"be brief","store":true}"#,
        )
        .expect("valid");
        let texts: Vec<_> = request
            .messages()
            .iter()
            .map(|m| (m.role, m.text()))
            .collect();
        assert_eq!(
            texts,
            [
                (Role::System, "be brief".to_owned()),
                (Role::User, "hi".to_owned()),
                (Role::Assistant, "yo".to_owned()),
                (Role::User, "ab".to_owned()),
            ]
        );
        let plain = ResponsesRequest::from_json(br#"{"input":"hi"}"#).expect("valid");
        assert_eq!(plain.messages(), [ChatMessage::new(Role::User, "hi")]);
    }

    #[test]
    fn a_text_format_becomes_the_engine_constraint() {
        let request = ResponsesRequest::from_json(
            br#"{"input":"x","text":{"format":{"type":"json_schema","name":"n","schema":{"type":"object"},"strict":true}}}"#,
        )
        .expect("valid");
        let format = GenerateRequest::from(&request).format.expect("constrained");
        assert_eq!(format.field, "text.format");
        assert_eq!(
            format.grammar,
            crate::format::Grammar::JsonSchema(serde_json::json!({"type": "object"}))
        );
        for free in [
            r#"{"input":"x"}"#,
            r#"{"input":"x","text":{"format":{"type":"text"}}}"#,
        ] {
            let request = ResponsesRequest::from_json(free.as_bytes()).expect("valid");
            assert_eq!(GenerateRequest::from(&request).format, None, "{free}");
        }
    }

    #[test]
    fn what_a_stateless_text_server_cannot_do_is_refused_by_name() {
        for (body, field) in [
            (
                r#"{"input":"x","previous_response_id":"resp_1"}"#,
                "previous_response_id",
            ),
            (r#"{"input":"x","background":true}"#, "background"),
            (r#"{"input":"x","tools":[{"type":"web_search"}]}"#, "tools"),
            (
                r#"{"input":"x","text":{"format":{"type":"json_schema","schema":{}}}}"#,
                "text.format.name",
            ),
            (
                r#"{"input":"x","text":{"format":{"type":"json_schema","name":"a.b"}}}"#,
                "text.format.name",
            ),
            (
                r#"{"input":"x","text":{"format":{"type":"grammar"}}}"#,
                "text.format.type",
            ),
            (r#"{"input":[]}"#, "input"),
            (
                r#"{"input":[{"type":"function_call_output","call_id":"c","output":"o"}]}"#,
                "input[0]",
            ),
            (
                r#"{"input":[{"role":"user","content":[{"type":"input_image","image_url":"u"}]}]}"#,
                "input[0].content[0]",
            ),
            (
                r#"{"input":"x","max_output_tokens":0}"#,
                "max_output_tokens",
            ),
            (r#"{"input":"x","temperature":2.5}"#, "temperature"),
            (r#"{}"#, "input"),
        ] {
            match ResponsesRequest::from_json(body.as_bytes()) {
                Err(Error::InvalidRequest { param, message }) => {
                    assert_eq!(param.as_deref(), Some(field), "{body}: {message}");
                }
                other => panic!("expected {body} to be refused, got {other:?}"),
            }
        }
    }
}
