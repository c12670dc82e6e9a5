//! OpenAI response-side types: completions, stream chunks, usage, the model list and the error
//! body.
//!
//! Serialization follows what OpenAI sends byte for byte where clients care (for example
//! `"finish_reason": null` on every chunk but the last). Deserialization is lenient about what
//! other servers omit or add (missing `created`, `role` on every chunk, `content: null`), so the
//! same types decode third-party streams.

use serde::{Deserialize, Deserializer, Serialize};

use crate::tools::{ToolCall, ToolCallChunk};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// Newer OpenAI name for system instructions; treated like [`Role::System`].
    Developer,
    /// The human side of the conversation.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

impl Role {
    /// The wire name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Developer => "developer",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FinishReason {
    /// The model ended its answer or hit a stop sequence.
    Stop,
    /// The token limit (`max_tokens` or the context) was reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// Content was filtered.
    ContentFilter,
    /// The request was cancelled before it finished (an extension: OpenAI never sends it).
    Cancelled,
    /// Any other value a server sent.
    Other(String),
}

impl FinishReason {
    /// The wire name of the reason.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
            Self::Cancelled => "cancelled",
            Self::Other(other) => other,
        }
    }
}

impl Serialize for FinishReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FinishReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(match name.as_str() {
            "stop" => Self::Stop,
            "length" => Self::Length,
            "tool_calls" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            "cancelled" => Self::Cancelled,
            _ => Self::Other(name),
        })
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt after the chat template was applied.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// The sum of both.
    pub total_tokens: u32,
}

impl Usage {
    /// Usage with `total_tokens` computed from the two parts.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// A non-streaming chat completion (`"object": "chat.completion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// The response id, `chatcmpl-...`.
    #[serde(default)]
    pub id: String,
    /// Always `chat.completion`.
    #[serde(default = "object_chat_completion")]
    pub object: String,
    /// Unix seconds when the response was created.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// One choice per requested completion.
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

fn object_chat_completion() -> String {
    "chat.completion".to_owned()
}

/// One answer in a [`ChatCompletion`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position of this choice.
    #[serde(default)]
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// The chunk's tokens with their log probabilities, when the request asked for
    /// `logprobs`; otherwise `null`.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// The message of a non-streaming [`Choice`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// Always [`Role::Assistant`].
    pub role: Role,
    /// The generated text; `null` when the answer is only tool calls.
    #[serde(default)]
    pub content: Option<String>,
    /// The calls the model made, when it made any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One chunk of a streamed completion (`"object": "chat.completion.chunk"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// The response id, the same on every chunk of one response.
    #[serde(default)]
    pub id: String,
    /// Always `chat.completion.chunk`.
    #[serde(default = "object_chat_completion_chunk")]
    pub object: String,
    /// Unix seconds when the response was created.
    #[serde(default)]
    pub created: u64,
    /// The model that answers.
    #[serde(default)]
    pub model: String,
    /// The deltas; empty on the usage-only chunk. Required when decoding, which is how a chunk
    /// is told apart from an `{"error": ...}` payload in one parse.
    pub choices: Vec<ChunkChoice>,
    /// Present on the usage-only chunk when `stream_options.include_usage` was set, and on
    /// every chunk with text or a finish reason when `continuous_usage_stats` was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

fn object_chat_completion_chunk() -> String {
    "chat.completion.chunk".to_owned()
}

impl ChatCompletionChunk {
    /// Whether this is the final usage-only chunk: no choices, usage present.
    pub fn is_usage_only(&self) -> bool {
        self.choices.is_empty() && self.usage.is_some()
    }
}

/// One choice of a [`ChatCompletionChunk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Position of this choice.
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Delta,
    /// The chunk's tokens with their log probabilities, when the request asked for
    /// `logprobs`; otherwise `null`.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// `null` until the last chunk of the choice.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// The incremental part of a [`ChunkChoice`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Set on the first chunk (some servers repeat it on every chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// New text; `null` or absent when the chunk carries none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Pieces of tool calls: a call's index, id, type and name first, then its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallChunk>>,
}

/// The body of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The served models.
    pub data: Vec<Model>,
}

impl ModelList {
    /// A list of the given models.
    pub fn new(data: Vec<Model>) -> Self {
        Self {
            object: "list".to_owned(),
            data,
        }
    }
}

/// One entry of a [`ModelList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// The name clients pass as `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds when the model was loaded.
    pub created: u64,
    /// Who serves the model.
    pub owned_by: String,
}

impl Model {
    /// A model entry.
    pub fn new(id: impl Into<String>, created: u64, owned_by: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            object: "model".to_owned(),
            created,
            owned_by: owned_by.into(),
        }
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

/// The inner object of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A human-readable message, safe to show.
    #[serde(default)]
    pub message: String,
    /// The error class, for example `invalid_request_error`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The request field to blame, if any.
    #[serde(default)]
    pub param: Option<String>,
    /// A machine-readable code, if any. Some servers send numbers here; they are kept as text.
    #[serde(default, deserialize_with = "string_or_number")]
    pub code: Option<String>,
}

impl ApiError {
    /// An error with a message and a type, no param and no code.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: kind.into(),
            param: None,
            code: None,
        }
    }
}

impl From<ApiError> for ErrorBody {
    fn from(error: ApiError) -> Self {
        Self { error }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(
        match Option::<serde_json::Value>::deserialize(deserializer)? {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) => Some(text),
            Some(other) => Some(other.to_string()),
        },
    )
}

/// `logprobs` of a choice: each generated token with its log probability.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    /// One entry per token of the text, in order.
    pub content: Vec<TokenLogprob>,
}

/// One generated token, as OpenAI reports it under `logprobs.content`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text (invalid UTF-8, as in a token that holds part of a character,
    /// replaced; `bytes` is exact).
    pub token: String,
    /// Natural log of the token's probability under the model, at most 0.
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Option<Vec<u8>>,
    /// The likeliest tokens at this position, most likely first (`top_logprobs` of them).
    pub top_logprobs: Vec<TopLogprob>,
}

/// One of the likeliest tokens at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_serializes_like_openai() {
        let chunk = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: object_chat_completion_chunk(),
            created: 7,
            model: "m".into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    tool_calls: None,
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        assert_eq!(
            serde_json::to_string(&chunk).expect("serializable"),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#
        );
    }

    #[test]
    fn chunk_decodes_what_other_servers_send() {
        let chunk: ChatCompletionChunk = serde_json::from_str(
            r#"{"id":"x","choices":[{"delta":{"role":"assistant","content":null},"finish_reason":"eos_token"}],"extra":1}"#,
        )
        .expect("lenient decode");
        assert_eq!(chunk.choices[0].delta.content, None);
        assert_eq!(
            chunk.choices[0].finish_reason,
            Some(FinishReason::Other("eos_token".into()))
        );
        assert_eq!(chunk.object, "chat.completion.chunk");
    }

    #[test]
    fn error_body_has_all_four_fields() {
        let body = ErrorBody::from(ApiError::new("invalid_request_error", "bad"));
        assert_eq!(
            serde_json::to_string(&body).expect("serializable"),
            r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#
        );
        let numeric: ErrorBody =
            serde_json::from_str(r#"{"error":{"message":"m","type":"t","code":429}}"#)
                .expect("numeric code");
        assert_eq!(numeric.error.code.as_deref(), Some("429"));
    }

    #[test]
    fn usage_only_chunk_is_recognised() {
        let chunk: ChatCompletionChunk = serde_json::from_str(
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        )
        .expect("usage chunk");
        assert!(chunk.is_usage_only());
        assert_eq!(chunk.usage, Some(Usage::new(3, 4)));
    }
}
