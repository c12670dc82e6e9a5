//! Tool calls: the functions a chat request offers the model, how it may use them, the calls
//! in a conversation's history and in an answer, and the [`ToolUse`] an engine receives.
//!
//! The wire shapes are OpenAI's: `tools: [{"type": "function", "function": {"name",
//! "description", "parameters", "strict"}}]`, `tool_choice: "none" | "auto" | "required" |
//! {"type": "function", "function": {"name"}}`, and calls as `{"id", "type": "function",
//! "function": {"name", "arguments"}}` with the arguments as a JSON string. A stream carries
//! a call in pieces ([`ToolCallChunk`]): its index, id, type and name first, then the
//! arguments' text as it is generated.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The most tools a request may offer, as in OpenAI's API.
pub const MAX_TOOLS: usize = 128;

/// The longest function name, as in OpenAI's API.
pub const MAX_FUNCTION_NAME: usize = 64;

/// The one kind of tool there is: a function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolType {
    /// A function the client runs.
    #[default]
    Function,
}

/// One entry of a request's `tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: ToolType,
    /// The function.
    pub function: FunctionDefinition,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// 1 to 64 letters, digits, `_` or `-`; unique among the request's tools.
    pub name: String,
    /// What the function does, for the model to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The arguments as a JSON schema object; absent means any JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// OpenAI's strict mode. A call the model is made to produce (`tool_choice` `required`
    /// or a named function) always holds to the schema, whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl FunctionDefinition {
    /// The schema the arguments must validate against.
    pub fn parameters_schema(&self) -> Value {
        self.parameters
            .clone()
            .unwrap_or_else(|| serde_json::json!({"type": "object"}))
    }
}

/// How the model may use the tools: chat's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// No calls: the model answers with text, and is not shown the tools.
    None,
    /// The model chooses between text and calls (the default when tools are given).
    #[default]
    Auto,
    /// The model must call one of the tools.
    Required,
    /// The model must call this function.
    Function(String),
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => serializer.serialize_str("none"),
            Self::Auto => serializer.serialize_str("auto"),
            Self::Required => serializer.serialize_str("required"),
            Self::Function(name) => Named {
                kind: ToolType::Function,
                function: NamedFunction { name: name.clone() },
            }
            .serialize(serializer),
        }
    }
}

/// `{"type": "function", "function": {"name": ...}}`, a [`ToolChoice::Function`] on the wire.
#[derive(Serialize, Deserialize)]
struct Named {
    #[serde(rename = "type")]
    kind: ToolType,
    function: NamedFunction,
}

#[derive(Serialize, Deserialize)]
struct NamedFunction {
    name: String,
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        const EXPECTED: &str = "expected `none`, `auto`, `required` or \
                                `{\"type\": \"function\", \"function\": {\"name\": ...}}`";
        match Value::deserialize(deserializer)? {
            Value::String(mode) => match mode.as_str() {
                "none" => Ok(Self::None),
                "auto" => Ok(Self::Auto),
                "required" => Ok(Self::Required),
                other => Err(D::Error::custom(format!(
                    "unknown tool choice `{other}`; {EXPECTED}"
                ))),
            },
            object @ Value::Object(_) => match Named::deserialize(object) {
                Ok(Named {
                    kind: ToolType::Function,
                    function,
                }) => Ok(Self::Function(function.name)),
                Err(error) => Err(D::Error::custom(format!("{error}; {EXPECTED}"))),
            },
            _ => Err(D::Error::custom(EXPECTED)),
        }
    }
}

/// A call the model made: in an assistant message of the history, or in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, which the `tool` message with its result names as `tool_call_id`.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default)]
    pub kind: ToolType,
    /// The function and its arguments.
    pub function: FunctionCall,
}

/// The function of a [`ToolCall`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments as JSON text, as the model wrote them.
    #[serde(default)]
    pub arguments: String,
}

/// A piece of a streamed call, in a chunk's `delta.tool_calls`: the first piece of a call
/// carries its `id`, `type` and `function.name`, the later ones only argument text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallChunk {
    /// Which call of the answer this piece belongs to, from 0.
    pub index: u32,
    /// The call's id, on its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on the call's first piece.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ToolType>,
    /// The function's name (first piece) and the next argument text.
    pub function: FunctionCallChunk,
}

/// The function part of a [`ToolCallChunk`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallChunk {
    /// The function's name, on the call's first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text (empty on a first piece that has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// The tools of a request, as an engine receives them: only when the model may call them
/// (`tool_choice` is not `none`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// The functions, in the request's order.
    pub functions: Vec<FunctionDefinition>,
    /// [`ToolChoice::Auto`], [`ToolChoice::Required`] or [`ToolChoice::Function`].
    pub choice: ToolChoice,
}

impl ToolUse {
    /// What `tools` and `tool_choice` ask of the engine; `None` when no call can be made.
    pub fn new(tools: Option<&[Tool]>, choice: Option<&ToolChoice>) -> Option<Self> {
        let tools = tools.filter(|tools| !tools.is_empty())?;
        let choice = choice.cloned().unwrap_or_default();
        (choice != ToolChoice::None).then(|| Self {
            functions: tools.iter().map(|tool| tool.function.clone()).collect(),
            choice,
        })
    }

    /// Whether the answer must be a call.
    pub fn forced(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Function(_))
    }

    /// The functions a forced answer may call: the named one, or all of them.
    pub fn callable(&self) -> impl Iterator<Item = &FunctionDefinition> {
        self.functions
            .iter()
            .filter(move |function| match &self.choice {
                ToolChoice::Function(name) => function.name == *name,
                _ => true,
            })
    }
}

/// OpenAI's rule for function and schema names: 1 to `max` letters, digits, `_` or `-`.
pub(crate) fn is_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// What is wrong with a request's tools: the field, and a message naming it.
pub(crate) type Invalid = (String, String);

fn invalid(param: impl Into<String>, message: impl Into<String>) -> Invalid {
    (param.into(), message.into())
}

/// Checks `tools` and `tool_choice` together: names, schemas, the limit, and a choice that
/// names a function the request offers.
pub(crate) fn check(tools: Option<&[Tool]>, choice: Option<&ToolChoice>) -> Result<(), Invalid> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("`tools` may hold at most {MAX_TOOLS} tools"),
        ));
    }
    for (index, tool) in tools.iter().enumerate() {
        let name = &tool.function.name;
        let field = format!("tools[{index}].function");
        if !is_name(name, MAX_FUNCTION_NAME) {
            return Err(invalid(
                format!("{field}.name"),
                format!(
                    "`{field}.name` must be 1 to {MAX_FUNCTION_NAME} letters, digits, `_` or `-`"
                ),
            ));
        }
        if tools[..index]
            .iter()
            .any(|earlier| earlier.function.name == *name)
        {
            return Err(invalid(
                format!("{field}.name"),
                format!("`{field}.name`: another tool is already named `{name}`"),
            ));
        }
        if let Some(parameters) = &tool.function.parameters {
            if !parameters.is_object() {
                return Err(invalid(
                    format!("{field}.parameters"),
                    format!("`{field}.parameters` must be a JSON schema object"),
                ));
            }
        }
    }
    match choice {
        Some(ToolChoice::Required) if tools.is_empty() => Err(invalid(
            "tool_choice",
            "`tool_choice` `required` needs at least one tool in `tools`",
        )),
        Some(ToolChoice::Function(name))
            if !tools.iter().any(|tool| tool.function.name == *name) =>
        {
            Err(invalid(
                "tool_choice",
                format!("`tool_choice` names `{name}`, which is not among `tools`"),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool {
            kind: ToolType::Function,
            function: FunctionDefinition {
                name: name.to_owned(),
                description: None,
                parameters: None,
                strict: None,
            },
        }
    }

    #[test]
    fn tool_choice_round_trips_in_every_shape() {
        for (json, choice) in [
            (r#""none""#, ToolChoice::None),
            (r#""auto""#, ToolChoice::Auto),
            (r#""required""#, ToolChoice::Required),
            (
                r#"{"type":"function","function":{"name":"f"}}"#,
                ToolChoice::Function("f".into()),
            ),
        ] {
            let parsed: ToolChoice = serde_json::from_str(json).expect(json);
            assert_eq!(parsed, choice);
            assert_eq!(serde_json::to_string(&parsed).expect("serializes"), json);
        }
        for bad in [
            r#""any""#,
            "1",
            r#"{"type":"web_search"}"#,
            r#"{"type":"function"}"#,
        ] {
            let error = serde_json::from_str::<ToolChoice>(bad).expect_err(bad);
            assert!(
                error.to_string().contains("expected `none`"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_streamed_first_piece_is_openais_shape() {
        let first = ToolCallChunk {
            index: 0,
            id: Some("call_1".into()),
            kind: Some(ToolType::Function),
            function: FunctionCallChunk {
                name: Some("get_weather".into()),
                arguments: Some(String::new()),
            },
        };
        assert_eq!(
            serde_json::to_string(&first).expect("serializes"),
            r#"{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}"#
        );
        let next = ToolCallChunk {
            index: 0,
            id: None,
            kind: None,
            function: FunctionCallChunk {
                name: None,
                arguments: Some("{\"".into()),
            },
        };
        assert_eq!(
            serde_json::to_string(&next).expect("serializes"),
            r#"{"index":0,"function":{"arguments":"{\""}}"#
        );
    }

    #[test]
    fn checks_name_the_field() {
        let mut odd = tool("f");
        odd.function.parameters = Some(serde_json::json!([1]));
        let too_many: Vec<Tool> = (0..=MAX_TOOLS).map(|i| tool(&format!("f{i}"))).collect();
        let cases: [(Vec<Tool>, Option<ToolChoice>, &str); 6] = [
            (vec![tool("")], None, "tools[0].function.name"),
            (vec![tool("a b")], None, "tools[0].function.name"),
            (vec![tool("f"), tool("f")], None, "tools[1].function.name"),
            (vec![odd], None, "tools[0].function.parameters"),
            (too_many, None, "tools"),
            (
                vec![tool("f")],
                Some(ToolChoice::Function("g".into())),
                "tool_choice",
            ),
        ];
        for (tools, choice, field) in cases {
            match check(Some(&tools), choice.as_ref()) {
                Err((param, message)) => {
                    assert_eq!(param, field, "{message}");
                    assert!(message.contains(&format!("`{field}")), "{message}");
                }
                other => panic!("expected {field} to be refused, got {other:?}"),
            }
        }
        assert!(check(None, Some(&ToolChoice::Required)).is_err());
        check(None, Some(&ToolChoice::None)).expect("none without tools is harmless");
        check(None, Some(&ToolChoice::Auto)).expect("auto without tools is harmless");
        check(Some(&[tool("f")]), Some(&ToolChoice::Required)).expect("valid");
    }

    #[test]
    fn a_forced_choice_calls_only_the_named_function() {
        let tools = [tool("f"), tool("g")];
        let named =
            ToolUse::new(Some(&tools), Some(&ToolChoice::Function("g".into()))).expect("callable");
        assert!(named.forced());
        let names: Vec<_> = named.callable().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["g"]);
        let auto = ToolUse::new(Some(&tools), None).expect("callable");
        assert!(!auto.forced());
        assert_eq!(auto.callable().count(), 2);
        assert_eq!(ToolUse::new(Some(&tools), Some(&ToolChoice::None)), None);
        assert_eq!(ToolUse::new(Some(&[]), Some(&ToolChoice::Auto)), None);
    }
}
