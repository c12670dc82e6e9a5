//! `POST /tokenize` and `POST /detokenize`, in vLLM's shapes: a prompt's tokens exactly as the
//! model will prefill them (raw text, or a conversation after the chat template), and text back
//! from token ids.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, Prompt};
use crate::parse;
use crate::request::ChatMessage;

/// A parsed `POST /tokenize` body: `{"model", "prompt"}` or `{"model", "messages"}`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenizeRequest {
    /// The model asked for; empty means the served one.
    pub model: String,
    /// Raw text, or a conversation rendered with the chat template.
    pub prompt: Prompt,
    /// Add the tokenizer's special tokens (a beginning-of-text token, where the model has one).
    /// vLLM's defaults: `true` for a prompt, `false` for messages (the template writes them).
    pub add_special_tokens: bool,
    /// End a conversation with the assistant's turn opened, as a chat request is prefilled.
    /// `true` unless asked otherwise; meaningless for a raw prompt.
    pub add_generation_prompt: bool,
}

#[derive(Deserialize)]
struct RawTokenize {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(default)]
    return_token_strs: Option<bool>,
}

impl TokenizeRequest {
    /// Parses and validates a body.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the offending field: neither or both of `prompt` and
    /// `messages`, no message, a field of the wrong type, or `return_token_strs` (token
    /// strings are not returned).
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let raw: RawTokenize = parse::from_json(body)?;
        if raw.return_token_strs == Some(true) {
            return Err(Error::invalid_param(
                "return_token_strs",
                "token strings are not returned; send the ids to /detokenize",
            ));
        }
        let (prompt, special_default) = match (raw.prompt, raw.messages) {
            (Some(text), None) => (Prompt::Text(text), true),
            (None, Some(messages)) if messages.is_empty() => {
                return Err(Error::invalid_param(
                    "messages",
                    "`messages` must contain at least one message",
                ))
            }
            (None, Some(messages)) => (Prompt::Chat(messages), false),
            (Some(_), Some(_)) => {
                return Err(Error::invalid_param(
                    "messages",
                    "send either `prompt` or `messages`, not both",
                ))
            }
            (None, None) => {
                return Err(Error::invalid_param(
                    "prompt",
                    "`prompt` (text) or `messages` (a conversation) is required",
                ))
            }
        };
        Ok(Self {
            model: raw.model.unwrap_or_default(),
            prompt,
            add_special_tokens: raw.add_special_tokens.unwrap_or(special_default),
            add_generation_prompt: raw.add_generation_prompt.unwrap_or(true),
        })
    }

    /// The tokenization a generation's prefill uses: special tokens added as the engine adds
    /// them, the assistant's turn opened after a conversation.
    pub fn of_prefill(request: &GenerateRequest) -> Self {
        Self {
            model: request.model.clone(),
            prompt: request.prompt.clone(),
            add_special_tokens: true,
            add_generation_prompt: true,
        }
    }
}

/// The answer to `POST /tokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenizeResponse {
    /// How many tokens.
    pub count: usize,
    /// Prompt plus answer, in tokens: the model's context.
    pub max_model_len: usize,
    /// The token ids.
    pub tokens: Vec<u32>,
    /// Always `null`: token strings are not returned.
    pub token_strs: Option<Vec<String>>,
}

impl TokenizeResponse {
    /// The answer for `tokens` of a model with a context of `max_model_len`.
    pub fn new(tokens: Vec<u32>, max_model_len: usize) -> Self {
        Self {
            count: tokens.len(),
            max_model_len,
            tokens,
            token_strs: None,
        }
    }
}

/// A parsed `POST /detokenize` body: `{"model", "tokens"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct DetokenizeRequest {
    /// The model asked for; empty means the served one.
    #[serde(default)]
    pub model: String,
    /// The token ids to turn into text.
    pub tokens: Vec<u32>,
}

impl DetokenizeRequest {
    /// Parses a body.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the offending field (`tokens[3]` for an id that is not
    /// a non-negative integer).
    pub fn from_json(body: &[u8]) -> Result<Self> {
        parse::from_json(body)
    }
}

/// The answer to `POST /detokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DetokenizeResponse {
    /// The text.
    pub prompt: String,
}

impl DetokenizeResponse {
    /// The answer carrying `prompt`.
    pub fn new(prompt: String) -> Self {
        Self { prompt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str) -> Option<String> {
        match TokenizeRequest::from_json(body.as_bytes()) {
            Err(Error::InvalidRequest { param, .. }) => param,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_prompt_or_messages_with_vllm_defaults() {
        let text = TokenizeRequest::from_json(br#"{"model":"m","prompt":"Hello"}"#).expect("ok");
        assert_eq!(text.prompt, Prompt::Text("Hello".into()));
        assert!(text.add_special_tokens && text.add_generation_prompt);
        let chat = TokenizeRequest::from_json(
            br#"{"messages":[{"role":"user","content":"hi"}],"add_generation_prompt":false}"#,
        )
        .expect("ok");
        assert!(matches!(chat.prompt, Prompt::Chat(ref messages) if messages.len() == 1));
        assert!(!chat.add_special_tokens && !chat.add_generation_prompt);
    }

    #[test]
    fn bad_bodies_name_their_field() {
        assert_eq!(param("{}").as_deref(), Some("prompt"));
        assert_eq!(param(r#"{"messages":[]}"#).as_deref(), Some("messages"));
        assert_eq!(
            param(r#"{"prompt":"a","messages":[{"role":"user","content":"b"}]}"#).as_deref(),
            Some("messages")
        );
        assert_eq!(param(r#"{"prompt":5}"#).as_deref(), Some("prompt"));
        assert_eq!(
            param(r#"{"messages":[{"role":"wizard","content":"b"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(r#"{"prompt":"a","return_token_strs":true}"#).as_deref(),
            Some("return_token_strs")
        );
        match DetokenizeRequest::from_json(br#"{"tokens":[1,-2]}"#) {
            Err(Error::InvalidRequest { param, .. }) => {
                assert_eq!(param.as_deref(), Some("tokens[1]"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_in_vllm_shapes() {
        let answer = serde_json::to_value(TokenizeResponse::new(vec![5, 6], 8192)).expect("json");
        assert_eq!(
            answer,
            serde_json::json!({"count": 2, "max_model_len": 8192, "tokens": [5, 6], "token_strs": null})
        );
        let answer = serde_json::to_value(DetokenizeResponse::new("hi".into())).expect("json");
        assert_eq!(answer, serde_json::json!({"prompt": "hi"}));
    }
}
