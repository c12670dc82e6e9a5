//! The chat completion request and its validation.
//!
//! [`ChatCompletionRequest::from_json`] is the one way in from the wire: it tolerates fields it
//! does not know (SDKs send extras), and rejects a field of the wrong type or a value out of range
//! with an [`Error::InvalidRequest`] that names the field, such as `messages[2].role` or
//! `temperature`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::format::ResponseFormat;
use crate::parse::{
    self, check_choices, check_resumable, check_sampling, check_stops, check_token_limit,
    null_as_default, one_or_many,
};
use crate::tools::{self, Tool, ToolCall, ToolChoice};
use crate::types::Role;

/// The most stop sequences a request may carry, as in OpenAI's API.
pub const MAX_STOP_SEQUENCES: usize = 4;

/// The most `top_logprobs` a request may ask for, as in OpenAI's API.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// The model to use. Empty means the server's default.
    #[serde(default)]
    pub model: String,
    /// The conversation so far; at least one message.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    /// Options for streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Sampling temperature, 0 to 2. 0 means greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Most tokens to generate (legacy name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Most tokens to generate (current name; wins over `max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sequences that end generation; a string or an array of up to four strings.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop: Option<Vec<String>>,
    /// How many choices to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Penalty for tokens already present, -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Penalty proportional to token frequency, -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Seed for reproducible sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// An end-user id, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Return each generated token with its log probability.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub logprobs: bool,
    /// With `logprobs`: how many of the likeliest tokens to list at each position, 0 to
    /// [`MAX_TOP_LOGPROBS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Structured output: free text, any JSON object, or JSON that validates against a schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// Whether and which tools the model may call; `auto` by default when `tools` are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Extension: keep the stream's events so that a client that loses the connection can
    /// resume it with `Last-Event-ID` (`GET /v1/chat/completions/{id}/stream`). Only with
    /// `stream`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub resumable: bool,
    /// Top-level fields of the body outside OpenAI's schema and this server's extensions, in
    /// the order sent: accepted and ignored, and named in the answer's `x-ignored-fields`
    /// header. Set by [`from_json`](Self::from_json).
    #[serde(skip)]
    pub unknown_fields: Vec<String>,
}

/// `stream_options` of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send one more chunk with `"choices": []` and `usage` before `[DONE]`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub include_usage: bool,
    /// Extension (vLLM's): put the token counts so far on every chunk with text or a finish
    /// reason.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub continuous_usage_stats: bool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text; may be absent on an assistant message that only called tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// An optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For [`Role::Tool`] messages: the call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For [`Role::Assistant`] messages: the calls the model made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

impl ChatMessage {
    /// A message with plain text content.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(MessageContent::Text(content.into())),
            name: None,
            tool_call_id: None,
            tool_calls: None,
        }
    }

    /// The message's text, with text parts joined; empty when there is no content.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(MessageContent::Text(text)) => text.clone(),
            Some(MessageContent::Parts(parts)) => parts
                .iter()
                .map(|ContentPart::Text { text }| text.as_str())
                .collect(),
        }
    }
}

/// Message content: a string, or an array of parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// `"content": "text"`.
    Text(String),
    /// `"content": [{"type": "text", "text": "..."}]`.
    Parts(Vec<ContentPart>),
}

/// One part of an array content. Only text parts are accepted: the served models read text only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// A text part.
    Text {
        /// The text.
        text: String,
    },
}

impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Dispatch on the JSON shape ourselves: `untagged` would only say "did not match any
        // variant", which tells the client nothing.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MessageContent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(text.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(text))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<PartSeed>()? {
                    parts.push(part.0);
                }
                Ok(MessageContent::Parts(parts))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Deserializes one content part with a message that names the unsupported type.
struct PartSeed(ContentPart);

impl<'de> Deserialize<'de> for PartSeed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct RawPart {
            #[serde(rename = "type")]
            kind: String,
            text: Option<String>,
        }
        let raw = RawPart::deserialize(deserializer)?;
        match (raw.kind.as_str(), raw.text) {
            ("text", Some(text)) => Ok(PartSeed(ContentPart::Text { text })),
            ("text", None) => Err(D::Error::missing_field("text")),
            (other, _) => Err(D::Error::custom(format!(
                "content part type `{other}` is not supported; only `text` parts are"
            ))),
        }
    }
}

/// Fields of OpenAI's chat request that would change the output and are not served yet: a
/// request that sets one to anything but its no-op value is refused with 400 naming it, rather
/// than answered as if it had not been sent. The same pass over the body collects the names of
/// fields outside OpenAI's schema, for the answer's warning header.
#[derive(Default)]
struct UnservedFields {
    functions: Option<serde_json::Value>,
    function_call: Option<serde_json::Value>,
    logit_bias: Option<serde_json::Value>,
    modalities: Option<serde_json::Value>,
    audio: Option<serde_json::Value>,
    prediction: Option<serde_json::Value>,
    web_search_options: Option<serde_json::Value>,
    store: Option<serde_json::Value>,
    verbosity: Option<serde_json::Value>,
    /// Top-level fields that are not OpenAI's and not this server's.
    unknown: Vec<String>,
}

/// Every top-level field of OpenAI's chat request, and this server's extensions.
const KNOWN_FIELDS: [&str; 35] = [
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "messages",
    "metadata",
    "modalities",
    "model",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
    "resumable",
];

impl<'de> Deserialize<'de> for UnservedFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UnservedFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a request object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = UnservedFields::default();
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "functions" => &mut fields.functions,
                        "function_call" => &mut fields.function_call,
                        "logit_bias" => &mut fields.logit_bias,
                        "modalities" => &mut fields.modalities,
                        "audio" => &mut fields.audio,
                        "prediction" => &mut fields.prediction,
                        "web_search_options" => &mut fields.web_search_options,
                        "store" => &mut fields.store,
                        "verbosity" => &mut fields.verbosity,
                        known if KNOWN_FIELDS.contains(&known) => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            fields.unknown.push(key);
                            continue;
                        }
                    };
                    // A JSON `null` is `None`, as if the field were absent.
                    *slot = map.next_value()?;
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// What a field holds when it changes nothing: a JSON `null` is already `None`.
type NoOp = fn(&serde_json::Value) -> bool;

impl UnservedFields {
    fn check(&self) -> Result<()> {
        use serde_json::{json, Value};
        let empty: NoOp = |value| match value {
            Value::Array(items) => items.is_empty(),
            Value::Object(map) => map.is_empty(),
            _ => false,
        };
        let no_call: NoOp = |value| value == "none" || value == "auto";
        let never: NoOp = |_| false;
        let checks: [(&str, &Option<Value>, NoOp, &str); 9] = [
            (
                "functions",
                &self.functions,
                empty,
                "the deprecated `functions` are not served; send them as `tools`",
            ),
            (
                "function_call",
                &self.function_call,
                no_call,
                "the deprecated `function_call` is not served; use `tool_choice`",
            ),
            (
                "logit_bias",
                &self.logit_bias,
                empty,
                "biasing token logits is not served",
            ),
            (
                "modalities",
                &self.modalities,
                |value| *value == json!(["text"]),
                "only text output is served; audio output is not",
            ),
            ("audio", &self.audio, never, "audio output is not served"),
            (
                "prediction",
                &self.prediction,
                never,
                "predicted outputs are not served",
            ),
            (
                "web_search_options",
                &self.web_search_options,
                never,
                "web search is not served",
            ),
            (
                "store",
                &self.store,
                |value| *value == json!(false),
                "this server stores no completions; leave `store` out or set it to false",
            ),
            (
                "verbosity",
                &self.verbosity,
                |value| *value == json!("medium"),
                "the served model has no verbosity control; say in the prompt how long to answer",
            ),
        ];
        let refused = checks
            .into_iter()
            .find(|(_, value, no_op, _)| value.as_ref().is_some_and(|value| !no_op(value)));
        match refused {
            Some((field, _, _, reason)) => Err(Error::invalid_param(
                field,
                format!("`{field}` is not supported: {reason}"),
            )),
            None => Ok(()),
        }
    }
}

impl ChatCompletionRequest {
    /// Parses and validates a request body.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when the body is not JSON, a field has the wrong type, or a
    /// value is out of range. `param` names the field, and the message says what was expected.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let mut request: Self = parse::from_json(body)?;
        request.validate()?;
        let unserved: UnservedFields = parse::from_json(body)?;
        unserved.check()?;
        request.unknown_fields = unserved.unknown;
        Ok(request)
    }

    /// Checks ranges and cross-field rules that types alone cannot express.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        if self.messages.is_empty() {
            return Err(Error::invalid_param(
                "messages",
                "`messages` must contain at least one message",
            ));
        }
        check_sampling(
            self.temperature,
            self.top_p,
            self.presence_penalty,
            self.frequency_penalty,
        )?;
        check_token_limit("max_tokens", self.max_tokens)?;
        check_token_limit("max_completion_tokens", self.max_completion_tokens)?;
        check_choices(self.n)?;
        check_resumable(self.resumable, self.stream)?;
        check_stops(
            "stop",
            self.stop.as_deref().unwrap_or_default(),
            MAX_STOP_SEQUENCES,
        )?;
        if let Some(format) = &self.response_format {
            format.validate()?;
        }
        tools::check(self.tools.as_deref(), self.tool_choice.as_ref())
            .map_err(|(param, message)| Error::invalid_param(param, message))?;
        let forced = matches!(
            self.tool_choice,
            Some(ToolChoice::Required | ToolChoice::Function(_))
        );
        let shaped = self
            .response_format
            .as_ref()
            .is_some_and(|format| *format != ResponseFormat::Text);
        if forced && shaped {
            return Err(Error::invalid_param(
                "tool_choice",
                "a forced tool call and a `response_format` other than `text` cannot both shape \
                 the answer",
            ));
        }
        if let Some(top) = self.top_logprobs {
            if top > MAX_TOP_LOGPROBS {
                return Err(Error::invalid_param(
                    "top_logprobs",
                    format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
                ));
            }
            if top > 0 && !self.logprobs {
                return Err(Error::invalid_param(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
        }
        for (index, message) in self.messages.iter().enumerate() {
            let role = message.role.as_str();
            if message.content.is_none() && message.role != Role::Assistant {
                return Err(Error::invalid_param(
                    format!("messages[{index}].content"),
                    format!("`messages[{index}].content` is required for role `{role}`"),
                ));
            }
            if message.tool_calls.is_some() && message.role != Role::Assistant {
                return Err(Error::invalid_param(
                    format!("messages[{index}].tool_calls"),
                    format!("`messages[{index}].tool_calls` belongs on `assistant` messages only, not `{role}`"),
                ));
            }
            if message.role == Role::Tool && message.tool_call_id.is_none() {
                return Err(Error::invalid_param(
                    format!("messages[{index}].tool_call_id"),
                    format!("`messages[{index}].tool_call_id` is required for role `tool`: it names the call answered"),
                ));
            }
        }
        Ok(())
    }

    /// The generation limit the client asked for: `max_completion_tokens`, else `max_tokens`.
    pub fn max_new_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the client asked for the usage-only chunk at the end of a stream.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .is_some_and(|options| options.include_usage)
    }

    /// Whether the client asked for usage on every chunk (`continuous_usage_stats`).
    pub fn continuous_usage(&self) -> bool {
        self.stream_options
            .is_some_and(|options| options.continuous_usage_stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Role;
    use crate::GenerateRequest;

    fn parse(body: &str) -> Result<ChatCompletionRequest> {
        ChatCompletionRequest::from_json(body.as_bytes())
    }

    /// Asserts that `body` is rejected, blaming `param`, with a message containing `needle`.
    fn check_rejected(body: &str, param: Option<&str>, needle: &str) {
        match parse(body) {
            Err(Error::InvalidRequest {
                param: got,
                message,
            }) => {
                assert_eq!(got.as_deref(), param, "param for {body}: {message}");
                assert!(
                    message.contains(needle),
                    "message for {body} was {message:?}, wanted {needle:?}"
                );
            }
            other => panic!("{body} was not rejected: {other:?}"),
        }
    }

    #[test]
    fn fields_that_would_change_the_output_are_refused_not_ignored() {
        let with =
            |field: &str| format!(r#"{{"messages":[{{"role":"user","content":"x"}}],{field}}}"#);
        for (field, param) in [
            (r#""functions":[{"name":"f"}]"#, "functions"),
            (r#""function_call":{"name":"f"}"#, "function_call"),
            (r#""logit_bias":{"50256":-100}"#, "logit_bias"),
            (r#""modalities":["text","audio"]"#, "modalities"),
            (r#""audio":{"voice":"alloy","format":"wav"}"#, "audio"),
            (
                r#""prediction":{"type":"content","content":"x"}"#,
                "prediction",
            ),
            (r#""web_search_options":{}"#, "web_search_options"),
            (r#""store":true"#, "store"),
            (r#""verbosity":"low""#, "verbosity"),
        ] {
            check_rejected(&with(field), Some(param), "is not supported");
        }
        // Their no-op values change nothing and are accepted.
        for field in [
            r#""response_format":{"type":"text"}"#,
            r#""tools":[],"tool_choice":"none""#,
            r#""tool_choice":"auto""#,
            r#""logprobs":false,"top_logprobs":0"#,
            r#""logit_bias":{}"#,
            r#""modalities":["text"],"audio":null,"prediction":null"#,
            r#""store":false,"verbosity":"medium","metadata":{"k":"v"},"service_tier":"auto""#,
            r#""parallel_tool_calls":true,"prompt_cache_key":"k","safety_identifier":"s""#,
            r#""reasoning_effort":"low","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":false,"include_obfuscation":true}"#,
        ] {
            assert!(parse(&with(field)).is_ok(), "{field}");
        }
    }

    #[test]
    fn tools_and_tool_history_parse_and_their_rules_are_checked() {
        let request = parse(
            r#"{"messages":[{"role":"user","content":"weather?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
                 "function":{"name":"get_weather","arguments":"{\"city\": \"Oslo\"}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"-3 C"}],
                "tools":[{"type":"function","function":{"name":"get_weather","description":"d",
                 "parameters":{"type":"object","properties":{"city":{"type":"string"}}},"strict":true}}],
                "tool_choice":{"type":"function","function":{"name":"get_weather"}},
                "parallel_tool_calls":false}"#,
        )
        .expect("valid");
        let calls = request.messages[1].tool_calls.as_deref().expect("calls");
        assert_eq!(calls[0].function.arguments, r#"{"city": "Oslo"}"#);
        let tools = GenerateRequest::from(&request).tools.expect("callable");
        assert!(tools.forced());
        let user = r#"{"role":"user","content":"x"}"#;
        let tool = r#"{"type":"function","function":{"name":"f"}}"#;
        for (body, param, needle) in [
            (
                format!(r#"{{"messages":[{user}],"tools":[{{"type":"custom","custom":{{}}}}]}}"#),
                "tools[0].type",
                "unknown variant",
            ),
            (
                format!(r#"{{"messages":[{user}],"tools":[{{"type":"function"}}]}}"#),
                "tools[0].function",
                "missing field",
            ),
            (
                format!(r#"{{"messages":[{user}],"tool_choice":"required"}}"#),
                "tool_choice",
                "at least one tool",
            ),
            (
                format!(r#"{{"messages":[{user}],"tools":[{tool}],"tool_choice":"some"}}"#),
                "tool_choice",
                "unknown tool choice",
            ),
            (
                format!(
                    r#"{{"messages":[{user}],"tools":[{tool}],"tool_choice":"required",
                        "response_format":{{"type":"json_object"}}}}"#
                ),
                "tool_choice",
                "cannot both shape",
            ),
            (
                format!(r#"{{"messages":[{user},{{"role":"tool","content":"r"}}]}}"#),
                "messages[1].tool_call_id",
                "is required",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x","tool_calls":[]}]}"#.to_owned(),
                "messages[0].tool_calls",
                "assistant",
            ),
            (
                format!(
                    r#"{{"messages":[{user},{{"role":"assistant","tool_calls":[{{"id":"c"}}]}}]}}"#
                ),
                "messages[1].tool_calls[0].function",
                "missing field",
            ),
        ] {
            check_rejected(&body, Some(param), needle);
        }
    }

    #[test]
    fn fields_outside_the_schema_are_collected_in_order() {
        let request = parse(
            r#"{"messages":[{"role":"user","content":"x"}],"zeta":1,"temperature":0,
                "guided_json":{"a":[1,2]},"resumable":false,"top_k":5,"seed":3}"#,
        )
        .expect("valid");
        assert_eq!(request.unknown_fields, ["zeta", "guided_json", "top_k"]);
        let plain = parse(r#"{"messages":[{"role":"user","content":"x"}],"user":"u"}"#);
        assert!(plain.expect("valid").unknown_fields.is_empty());
    }

    #[test]
    fn logprobs_parse_and_their_range_is_checked() {
        let with =
            |fields: &str| format!(r#"{{"messages":[{{"role":"user","content":"x"}}],{fields}}}"#);
        let request = parse(&with(r#""logprobs":true,"top_logprobs":20"#)).expect("valid");
        assert_eq!(GenerateRequest::from(&request).logprobs, Some(20));
        let request = parse(&with(r#""logprobs":true"#)).expect("valid");
        assert_eq!(GenerateRequest::from(&request).logprobs, Some(0));
        let request = parse(&with(r#""logprobs":null,"top_logprobs":0"#)).expect("valid");
        assert_eq!(GenerateRequest::from(&request).logprobs, None);
        for (fields, needle) in [
            (r#""logprobs":true,"top_logprobs":21"#, "between 0 and 20"),
            (r#""top_logprobs":2"#, "needs `logprobs: true`"),
            (r#""logprobs":true,"top_logprobs":-1"#, "top_logprobs"),
        ] {
            check_rejected(&with(fields), Some("top_logprobs"), needle);
        }
    }

    #[test]
    fn response_formats_parse_and_bad_ones_are_named() {
        let with = |format: &str| {
            format!(
                r#"{{"messages":[{{"role":"user","content":"x"}}],"response_format":{format}}}"#
            )
        };
        let schema = r#"{"type":"json_schema","json_schema":{"name":"pt","schema":{"type":"object"},"strict":true}}"#;
        let request = parse(&with(schema)).expect("valid");
        assert_eq!(
            GenerateRequest::from(&request).format,
            Some(crate::format::OutputFormat {
                grammar: crate::format::Grammar::JsonSchema(serde_json::json!({"type":"object"})),
                field: "response_format",
            })
        );
        for (format, param, needle) in [
            (
                r#"{"type":"xml"}"#,
                "response_format.type",
                "unknown variant `xml`",
            ),
            (
                r#"{"json_schema":{"name":"a"}}"#,
                "response_format.type",
                "missing field",
            ),
            (
                r#"{"type":"json_schema"}"#,
                "response_format.json_schema",
                "missing field",
            ),
            (
                r#"{"type":"json_schema","json_schema":{"schema":{}}}"#,
                "response_format.json_schema.name",
                "missing field",
            ),
            (
                r#"{"type":"json_schema","json_schema":{"name":"a b"}}"#,
                "response_format.json_schema.name",
                "letters, digits",
            ),
            (
                r#"{"type":"json_schema","json_schema":{"name":"a","schema":1}}"#,
                "response_format.json_schema.schema",
                "object",
            ),
            (r#""json_object""#, "response_format", "invalid type"),
        ] {
            check_rejected(&with(format), Some(param), needle);
        }
    }

    #[test]
    fn accepts_a_full_request_and_ignores_unknown_fields() {
        let request = parse(
            r#"{"model":"m","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]},
                {"role":"assistant","content":null,"tool_calls":[]},
                {"role":"tool","content":"42","tool_call_id":"call_1"}],
              "stream":true,"stream_options":{"include_usage":true},"temperature":0.5,"top_p":0.9,
              "max_tokens":10,"max_completion_tokens":12,"stop":"\n","n":1,"presence_penalty":0.1,
              "frequency_penalty":-0.1,"seed":7,"user":"u","logit_bias":{},"parallel_tool_calls":false}"#,
        )
        .expect("valid request");
        assert!(request.stream && request.include_usage());
        assert_eq!(request.messages[1].text(), "hi there");
        assert_eq!(request.messages[3].role, Role::Tool);
        assert_eq!(request.stop, Some(vec!["\n".to_owned()]));
        assert_eq!(request.max_new_tokens(), Some(12));
        assert_eq!(request.seed, Some(7));
    }

    #[test]
    fn stop_as_array_and_nulls_are_accepted() {
        let request = parse(
            r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b"],"stream":null,"temperature":null}"#,
        )
        .expect("valid");
        assert_eq!(request.stop, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert!(!request.stream);
    }

    #[test]
    fn rejections_name_the_field() {
        let user = r#""messages":[{"role":"user","content":"x"}]"#;
        let cases: &[(String, Option<&str>, &str)] = &[
            ("{".into(), None, "not valid JSON"),
            ("[]".into(), None, "invalid request body"),
            ("{}".into(), Some("messages"), "`messages` is required"),
            (
                r#"{"messages":[]}"#.into(),
                Some("messages"),
                "at least one",
            ),
            (
                r#"{"messages":"hi"}"#.into(),
                Some("messages"),
                "expected a sequence",
            ),
            (
                r#"{"messages":[{"role":"wizard","content":"x"}]}"#.into(),
                Some("messages[0].role"),
                "unknown variant `wizard`",
            ),
            (
                r#"{"messages":[{"content":"x"}]}"#.into(),
                Some("messages[0].role"),
                "missing field `role`",
            ),
            (
                r#"{"messages":[{"role":"user","content":5}]}"#.into(),
                Some("messages[0].content"),
                "a string or an array of content parts",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#
                    .into(),
                Some("messages[0].content[0]"),
                "`image_url` is not supported",
            ),
            (
                r#"{"messages":[{"role":"user"}]}"#.into(),
                Some("messages[0].content"),
                "required for role `user`",
            ),
            (
                format!(r#"{{{user},"temperature":"hot"}}"#),
                Some("temperature"),
                "invalid type",
            ),
            (
                format!(r#"{{{user},"temperature":2.5}}"#),
                Some("temperature"),
                "between 0 and 2",
            ),
            (
                format!(r#"{{{user},"top_p":-0.1}}"#),
                Some("top_p"),
                "between 0 and 1",
            ),
            (
                format!(r#"{{{user},"max_tokens":-1}}"#),
                Some("max_tokens"),
                "-1",
            ),
            (
                format!(r#"{{{user},"max_tokens":0}}"#),
                Some("max_tokens"),
                "at least 1",
            ),
            (
                format!(r#"{{{user},"max_completion_tokens":1.5}}"#),
                Some("max_completion_tokens"),
                "invalid type",
            ),
            (
                format!(r#"{{{user},"n":0}}"#),
                Some("n"),
                "between 1 and 128",
            ),
            (
                format!(r#"{{{user},"stop":5}}"#),
                Some("stop"),
                "string or an array",
            ),
            (
                format!(r#"{{{user},"stop":["a","b","c","d","e"]}}"#),
                Some("stop"),
                "at most 4",
            ),
            (
                format!(r#"{{{user},"stop":["a",""]}}"#),
                Some("stop[1]"),
                "must not be empty",
            ),
            (
                format!(r#"{{{user},"presence_penalty":3}}"#),
                Some("presence_penalty"),
                "-2 and 2",
            ),
            (
                format!(r#"{{{user},"frequency_penalty":-3}}"#),
                Some("frequency_penalty"),
                "-2 and 2",
            ),
            (
                format!(r#"{{{user},"stream":"yes"}}"#),
                Some("stream"),
                "invalid type",
            ),
            (
                format!(r#"{{{user},"stream_options":{{"include_usage":1}}}}"#),
                Some("stream_options.include_usage"),
                "invalid type",
            ),
            (
                format!(r#"{{{user},"seed":"x"}}"#),
                Some("seed"),
                "invalid type",
            ),
            (format!(r#"{{{user}}} trailing"#), None, "not valid JSON"),
        ];
        for (body, param, needle) in cases {
            check_rejected(body, *param, needle);
        }
    }

    #[test]
    fn deep_nesting_and_invalid_utf8_are_errors_not_crashes() {
        // Nesting inside a known field hits serde_json's recursion limit: a clean error.
        let deep = format!(
            r#"{{"messages":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(parse(&deep), Err(Error::InvalidRequest { .. })));
        // Inside an unknown field it is skipped without recursion: accepted, no stack overflow.
        let deep_unknown = format!(
            r#"{{"messages":[{{"role":"user","content":"x"}}],"x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse(&deep_unknown).is_ok());
        let mut bytes = br#"{"messages":[{"role":"user","content":""#.to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(br#""}]}"#);
        assert!(ChatCompletionRequest::from_json(&bytes).is_err());
    }
}
