//! What every dialect asks an engine for: a prompt and how to sample its continuation.
//!
//! Each dialect's request (chat completions, completions, responses, Anthropic messages)
//! parses and validates itself under its own field names, then converts into one
//! [`GenerateRequest`]; the engine sees nothing else.

use crate::error::{Error, Result};
use crate::format::{OutputFormat, ResponseFormat};
use crate::parse::{check_choices, check_sampling, check_stops, check_token_limit};
use crate::request::{ChatCompletionRequest, ChatMessage};
use crate::tools::ToolUse;

/// The most stop sequences an engine request carries, whatever the dialect allows on its
/// wire: each one is matched against the streamed text.
pub const MAX_ENGINE_STOP_SEQUENCES: usize = 16;

/// What to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text, continued as it is (no chat template).
    Text(String),
}

impl Default for Prompt {
    fn default() -> Self {
        Self::Chat(Vec::new())
    }
}

/// One generation, in no dialect's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateRequest {
    /// The model asked for; empty means the served one.
    pub model: String,
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate; `None` is the room left in the context.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2; `None` is 1. 0 means greedy.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    pub top_p: Option<f64>,
    /// Sample among the `top_k` likeliest tokens only.
    pub top_k: Option<u32>,
    /// Penalty for tokens already present, -2 to 2.
    pub presence_penalty: Option<f64>,
    /// Penalty proportional to token frequency, -2 to 2.
    pub frequency_penalty: Option<f64>,
    /// Sequences that end generation; the text stops before the first one found.
    pub stop: Vec<String>,
    /// How many choices to generate.
    pub n: Option<u32>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// The shape the output must take, enforced token by token; `None` is free text.
    pub format: Option<OutputFormat>,
    /// Report each generated token's log probability, with this many of the likeliest
    /// alternatives (0 to [`MAX_TOP_LOGPROBS`](crate::MAX_TOP_LOGPROBS)); `None` reports none.
    pub logprobs: Option<u8>,
    /// Functions the model may call, and whether it must; `None` when it may call none.
    pub tools: Option<ToolUse>,
}

impl GenerateRequest {
    /// Checks what every engine relies on. Dialect parsers check the same under their own
    /// field names first, so a client sees this only from a program that builds requests
    /// itself.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        match &self.prompt {
            Prompt::Chat(messages) if messages.is_empty() => {
                return Err(Error::invalid_param(
                    "messages",
                    "`messages` must contain at least one message",
                ))
            }
            _ => {}
        }
        check_sampling(
            self.temperature,
            self.top_p,
            self.presence_penalty,
            self.frequency_penalty,
        )?;
        check_token_limit("max_tokens", self.max_tokens)?;
        if self.top_k == Some(0) {
            return Err(Error::invalid_param("top_k", "`top_k` must be at least 1"));
        }
        check_choices(self.n)?;
        if self.format.is_some() && self.tools.as_ref().is_some_and(ToolUse::forced) {
            return Err(Error::invalid_param(
                "tool_choice",
                "a forced tool call and an output format cannot both shape the answer",
            ));
        }
        if self
            .logprobs
            .is_some_and(|top| u32::from(top) > crate::MAX_TOP_LOGPROBS)
        {
            return Err(Error::invalid_param(
                "top_logprobs",
                format!(
                    "`top_logprobs` must be between 0 and {}",
                    crate::MAX_TOP_LOGPROBS
                ),
            ));
        }
        check_stops("stop", &self.stop, MAX_ENGINE_STOP_SEQUENCES)
    }
}

impl From<&ChatCompletionRequest> for GenerateRequest {
    fn from(request: &ChatCompletionRequest) -> Self {
        Self {
            model: request.model.clone(),
            prompt: Prompt::Chat(request.messages.clone()),
            max_tokens: request.max_new_tokens(),
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: None,
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            stop: request.stop.clone().unwrap_or_default(),
            n: request.n,
            seed: request.seed,
            format: request
                .response_format
                .as_ref()
                .and_then(ResponseFormat::output_format),
            logprobs: request.logprobs.then(|| {
                let top = request
                    .top_logprobs
                    .unwrap_or(0)
                    .min(crate::MAX_TOP_LOGPROBS);
                u8::try_from(top).unwrap_or(u8::MAX)
            }),
            tools: ToolUse::new(request.tools.as_deref(), request.tool_choice.as_ref()),
        }
    }
}

impl From<ChatCompletionRequest> for GenerateRequest {
    fn from(request: ChatCompletionRequest) -> Self {
        Self::from(&request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Role;

    #[test]
    fn a_chat_request_keeps_every_sampling_field() {
        let chat = ChatCompletionRequest::from_json(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":9,
                "max_completion_tokens":7,"temperature":0.5,"top_p":0.9,"stop":"x",
                "presence_penalty":1,"frequency_penalty":-1,"n":1,"seed":3}"#,
        )
        .expect("valid");
        let request = GenerateRequest::from(&chat);
        assert_eq!(
            request,
            GenerateRequest {
                model: "m".into(),
                prompt: Prompt::Chat(vec![ChatMessage::new(Role::User, "hi")]),
                max_tokens: Some(7),
                temperature: Some(0.5),
                top_p: Some(0.9),
                top_k: None,
                presence_penalty: Some(1.0),
                frequency_penalty: Some(-1.0),
                stop: vec!["x".into()],
                n: Some(1),
                seed: Some(3),
                format: None,
                logprobs: None,
                tools: None,
            }
        );
        request.validate().expect("valid");
    }

    #[test]
    fn validation_names_the_field() {
        let base = GenerateRequest {
            prompt: Prompt::Text("x".into()),
            ..GenerateRequest::default()
        };
        let cases = [
            (GenerateRequest::default(), "messages"),
            (
                GenerateRequest {
                    top_k: Some(0),
                    ..base.clone()
                },
                "top_k",
            ),
            (
                GenerateRequest {
                    temperature: Some(3.0),
                    ..base.clone()
                },
                "temperature",
            ),
            (
                GenerateRequest {
                    stop: vec![String::new()],
                    ..base.clone()
                },
                "stop[0]",
            ),
            (
                GenerateRequest {
                    stop: vec!["s".into(); MAX_ENGINE_STOP_SEQUENCES + 1],
                    ..base.clone()
                },
                "stop",
            ),
        ];
        for (request, field) in cases {
            match request.validate() {
                Err(Error::InvalidRequest { param, .. }) => {
                    assert_eq!(param.as_deref(), Some(field));
                }
                other => panic!("expected {field} to be refused, got {other:?}"),
            }
        }
        base.validate().expect("a text prompt alone is valid");
    }
}
