//! OpenAI's legacy completions: `POST /v1/completions`, raw text continued with no chat
//! template.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::ResponseFormat;
use crate::generate::{GenerateRequest, Prompt};
use crate::parse::{
    self, check_choices, check_resumable, check_sampling, check_stops, check_token_limit,
    null_as_default, one_or_many,
};
use crate::request::{StreamOptions, MAX_STOP_SEQUENCES};
use crate::types::{FinishReason, Usage};

/// The token limit of a completion that names none: OpenAI's documented default.
pub const DEFAULT_COMPLETION_TOKENS: u32 = 16;

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CompletionRequest {
    /// The model to use. Empty means the server's default.
    #[serde(default)]
    pub model: String,
    /// The text to continue: a string, or an array holding one string.
    #[serde(deserialize_with = "text_prompt")]
    pub prompt: String,
    /// Stream the answer as server-sent events.
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    /// Options for streaming.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate; [`DEFAULT_COMPLETION_TOKENS`] when absent.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Sequences that end generation; a string or up to four strings.
    #[serde(default, deserialize_with = "one_or_many")]
    pub stop: Option<Vec<String>>,
    /// How many choices to generate.
    #[serde(default)]
    pub n: Option<u32>,
    /// Penalty for tokens already present, -2 to 2.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Penalty proportional to token frequency, -2 to 2.
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Seed for reproducible sampling.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Send the prompt back before the completion.
    #[serde(default, deserialize_with = "null_as_default")]
    pub echo: bool,
    /// Text after the insertion point: not supported.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Candidates to generate server-side: only 1 is supported.
    #[serde(default)]
    pub best_of: Option<u32>,
    /// Log probabilities of the likeliest tokens: not supported.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Token biases: not supported, refused unless empty.
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// Extension (as vLLM's): structured output, as chat's `response_format`.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// An end-user id, for logs.
    #[serde(default)]
    pub user: Option<String>,
    /// Extension: a stream that can be resumed with `Last-Event-ID`
    /// (`GET /v1/completions/{id}/stream`). Only with `stream`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub resumable: bool,
}

fn text_prompt<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    use serde::de::Error as _;
    let value = serde_json::Value::deserialize(deserializer)?;
    match value {
        serde_json::Value::String(text) => Ok(text),
        serde_json::Value::Array(items) => match items.as_slice() {
            [serde_json::Value::String(text)] => Ok(text.clone()),
            [] => Err(D::Error::custom("the prompt list is empty")),
            items if items.iter().all(serde_json::Value::is_string) => Err(D::Error::custom(
                "one prompt per request is supported; send several requests instead",
            )),
            _ => Err(D::Error::custom(
                "token-id prompts are not supported; send the prompt as a string",
            )),
        },
        _ => Err(D::Error::custom(
            "expected a string or an array of one string",
        )),
    }
}

impl CompletionRequest {
    /// Parses and validates a request body.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the offending field.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let request: Self = parse::from_json(body)?;
        request.validate()?;
        Ok(request)
    }

    /// Checks ranges and the fields this server cannot honour.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        check_sampling(
            self.temperature,
            self.top_p,
            self.presence_penalty,
            self.frequency_penalty,
        )?;
        check_token_limit("max_tokens", self.max_tokens)?;
        check_choices(self.n)?;
        check_resumable(self.resumable, self.stream)?;
        check_stops(
            "stop",
            self.stop.as_deref().unwrap_or_default(),
            MAX_STOP_SEQUENCES,
        )?;
        if self.suffix.is_some() {
            return Err(Error::invalid_param(
                "suffix",
                "`suffix` (text inserted before a suffix) is not supported",
            ));
        }
        if self.best_of.is_some_and(|best_of| best_of != 1) {
            return Err(Error::invalid_param(
                "best_of",
                "`best_of` above 1 is not supported; send several requests instead",
            ));
        }
        if self.logprobs.is_some() {
            return Err(Error::invalid_param(
                "logprobs",
                "`logprobs` is not supported on completions",
            ));
        }
        if self
            .logit_bias
            .as_ref()
            .is_some_and(|bias| !bias.is_empty())
        {
            return Err(Error::invalid_param(
                "logit_bias",
                "`logit_bias` is not supported: biasing token logits is not served",
            ));
        }
        if let Some(format) = &self.response_format {
            format.validate()?;
        }
        Ok(())
    }

    /// Whether the client asked for the usage-only chunk at the end of a stream.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .is_some_and(|options| options.include_usage)
    }
}

impl From<&CompletionRequest> for GenerateRequest {
    fn from(request: &CompletionRequest) -> Self {
        Self {
            model: request.model.clone(),
            prompt: Prompt::Text(request.prompt.clone()),
            max_tokens: Some(request.max_tokens.unwrap_or(DEFAULT_COMPLETION_TOKENS)),
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
            logprobs: None,
            tools: None,
        }
    }
}

/// One choice of a completion or of a completion chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// The text (of this chunk, in a stream).
    pub text: String,
    /// The choice's index.
    #[serde(default)]
    pub index: u32,
    /// Always `null`: log probabilities are not computed.
    #[serde(default)]
    pub logprobs: Option<serde_json::Value>,
    /// Why generation stopped; `null` until the last chunk.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// A completion, or one chunk of a completion stream (`"object": "text_completion"` both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextCompletion {
    /// The response id, `cmpl-...`.
    #[serde(default)]
    pub id: String,
    /// `text_completion`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The choices; empty in the usage chunk of a stream.
    #[serde(default)]
    pub choices: Vec<CompletionChoice>,
    /// Token counts: on a whole completion, and on the last chunk of a stream that asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> (Option<String>, String) {
        match CompletionRequest::from_json(body.as_bytes()) {
            Err(Error::InvalidRequest { param, message }) => (param, message),
            other => panic!("expected {body} to be refused, got {other:?}"),
        }
    }

    #[test]
    fn a_prompt_is_a_string_or_a_list_of_one() {
        for body in [r#"{"prompt":"Once"}"#, r#"{"prompt":["Once"]}"#] {
            let request = CompletionRequest::from_json(body.as_bytes()).expect("valid");
            assert_eq!(request.prompt, "Once");
            let generate = GenerateRequest::from(&request);
            assert_eq!(generate.prompt, Prompt::Text("Once".into()));
            assert_eq!(generate.max_tokens, Some(DEFAULT_COMPLETION_TOKENS));
        }
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        for (body, field, needle) in [
            (r#"{"prompt":[1,2,3]}"#, "prompt", "token-id"),
            (r#"{"prompt":[[1,2]]}"#, "prompt", "token-id"),
            (r#"{"prompt":["a","b"]}"#, "prompt", "one prompt"),
            (r#"{"prompt":[]}"#, "prompt", "empty"),
            (r#"{"prompt":7}"#, "prompt", "string"),
            (r#"{}"#, "prompt", "required"),
            (r#"{"prompt":"x","suffix":"y"}"#, "suffix", "suffix"),
            (r#"{"prompt":"x","best_of":2}"#, "best_of", "best_of"),
            (r#"{"prompt":"x","logprobs":2}"#, "logprobs", "logprobs"),
            (
                r#"{"prompt":"x","logit_bias":{"7":1}}"#,
                "logit_bias",
                "not supported",
            ),
            (
                r#"{"prompt":"x","response_format":{"type":"json_schema","json_schema":{"name":""}}}"#,
                "response_format.json_schema.name",
                "letters",
            ),
            (
                r#"{"prompt":"x","max_tokens":0}"#,
                "max_tokens",
                "at least 1",
            ),
            (
                r#"{"prompt":"x","temperature":9}"#,
                "temperature",
                "between",
            ),
            (r#"{"prompt":"x","resumable":true}"#, "resumable", "stream"),
            (
                r#"{"prompt":"x","stop":["a","b","c","d","e"]}"#,
                "stop",
                "at most",
            ),
        ] {
            let (param, message) = refused(body);
            assert_eq!(param.as_deref(), Some(field), "{body}: {message}");
            assert!(message.contains(needle), "{body}: {message}");
        }
        let request = CompletionRequest::from_json(br#"{"prompt":"x","best_of":1,"suffix":null}"#)
            .expect("best_of 1 and a null suffix are fine");
        assert!(!request.echo);
    }
}
