//! Structured output: the shape generated text must take, in each dialect's terms, and the one
//! [`OutputFormat`] the engine receives.
//!
//! Chat completions name it `response_format`, with the schema one level down:
//! `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`. The Responses API
//! names it `text.format`, with the schema's fields beside `type`:
//! `{"type": "json_schema", "name", "schema", "strict"}`. Both also know `{"type": "text"}`
//! (no constraint) and `{"type": "json_object"}` (any JSON object).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The longest `name` a JSON schema format may have, as in OpenAI's API.
pub const MAX_SCHEMA_NAME: usize = 64;

/// What the output is constrained to, token by token.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object.
    JsonObject,
    /// A JSON value that validates against this JSON schema (`{}` allows any value).
    JsonSchema(Value),
}

/// A constrained output as an engine receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFormat {
    /// The grammar to follow.
    pub grammar: Grammar,
    /// The request field that asked for it (`response_format`, `text.format`): an engine that
    /// cannot compile the grammar names it in its error.
    pub field: &'static str,
}

/// A named JSON schema, as both dialects carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    /// The schema's name: 1 to 64 letters, digits, `_` or `-`.
    pub name: String,
    /// What the output is for; the model does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON schema, an object; absent allows any JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// OpenAI's strict mode. The output is always held to the whole schema, so both values
    /// behave as `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl JsonSchemaFormat {
    /// Checks the name and that the schema is an object; `field` is where the format sits
    /// (`response_format.json_schema`, `text.format`).
    fn check(&self, field: &str) -> Result<()> {
        if !crate::tools::is_name(&self.name, MAX_SCHEMA_NAME) {
            return Err(Error::invalid_param(
                format!("{field}.name"),
                format!(
                    "`{field}.name` must be 1 to {MAX_SCHEMA_NAME} letters, digits, `_` or `-`"
                ),
            ));
        }
        match &self.schema {
            None | Some(Value::Object(_)) => Ok(()),
            Some(_) => Err(Error::invalid_param(
                format!("{field}.schema"),
                format!("`{field}.schema` must be a JSON schema object"),
            )),
        }
    }

    fn grammar(&self) -> Grammar {
        Grammar::JsonSchema(
            self.schema
                .clone()
                .unwrap_or_else(|| Value::Object(serde_json::Map::new())),
        )
    }
}

/// Chat's `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    try_from = "RawResponseFormat"
)]
pub enum ResponseFormat {
    /// Free text: no constraint.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that validates against a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format` as it is parsed: a plain struct, so that an error inside `json_schema`
/// keeps its path (an internally tagged enum buffers its content and loses it).
#[derive(Deserialize)]
struct RawResponseFormat {
    #[serde(rename = "type")]
    kind: FormatKind,
    #[serde(default)]
    json_schema: Option<JsonSchemaFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FormatKind {
    Text,
    JsonObject,
    JsonSchema,
}

impl TryFrom<RawResponseFormat> for ResponseFormat {
    type Error = &'static str;

    fn try_from(raw: RawResponseFormat) -> Result<Self, Self::Error> {
        match (raw.kind, raw.json_schema) {
            (FormatKind::Text, _) => Ok(Self::Text),
            (FormatKind::JsonObject, _) => Ok(Self::JsonObject),
            (FormatKind::JsonSchema, Some(json_schema)) => Ok(Self::JsonSchema { json_schema }),
            // Worded as serde words it, so that the error names `response_format.json_schema`.
            (FormatKind::JsonSchema, None) => Err("missing field `json_schema`"),
        }
    }
}

impl ResponseFormat {
    /// The wire field.
    pub const FIELD: &'static str = "response_format";

    /// Checks the schema's name and shape.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming `response_format.json_schema.name` or `.schema`.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::JsonSchema { json_schema } => json_schema.check("response_format.json_schema"),
            Self::Text | Self::JsonObject => Ok(()),
        }
    }

    /// The constraint for the engine; `None` for free text.
    pub fn output_format(&self) -> Option<OutputFormat> {
        let grammar = match self {
            Self::Text => return None,
            Self::JsonObject => Grammar::JsonObject,
            Self::JsonSchema { json_schema } => json_schema.grammar(),
        };
        Some(OutputFormat {
            grammar,
            field: Self::FIELD,
        })
    }
}

/// The Responses API's `text.format`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TextFormat {
    /// Free text: no constraint.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that validates against a schema.
    JsonSchema(JsonSchemaFormat),
}

impl TextFormat {
    /// The wire field.
    pub const FIELD: &'static str = "text.format";

    /// Checks the schema's name and shape.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming `text.format.name` or `text.format.schema`.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::JsonSchema(json_schema) => json_schema.check(Self::FIELD),
            Self::Text | Self::JsonObject => Ok(()),
        }
    }

    /// The constraint for the engine; `None` for free text.
    pub fn output_format(&self) -> Option<OutputFormat> {
        let grammar = match self {
            Self::Text => return None,
            Self::JsonObject => Grammar::JsonObject,
            Self::JsonSchema(json_schema) => json_schema.grammar(),
        };
        Some(OutputFormat {
            grammar,
            field: Self::FIELD,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chat_formats_become_grammars() {
        let parse = |value: Value| serde_json::from_value::<ResponseFormat>(value).expect("parses");
        assert_eq!(parse(json!({"type": "text"})).output_format(), None);
        assert_eq!(
            parse(json!({"type": "json_object"})).output_format(),
            Some(OutputFormat {
                grammar: Grammar::JsonObject,
                field: "response_format"
            })
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format = parse(json!({"type": "json_schema",
            "json_schema": {"name": "a_b-1", "schema": schema, "strict": true}}));
        format.validate().expect("valid");
        assert_eq!(
            format.output_format().map(|format| format.grammar),
            Some(Grammar::JsonSchema(schema))
        );
        let unschemed = parse(json!({"type": "json_schema", "json_schema": {"name": "any"}}));
        assert_eq!(
            unschemed.output_format().map(|format| format.grammar),
            Some(Grammar::JsonSchema(json!({})))
        );
    }

    #[test]
    fn responses_formats_carry_the_schema_beside_the_type() {
        let format: TextFormat = serde_json::from_value(
            json!({"type": "json_schema", "name": "n", "schema": {"type": "string"}}),
        )
        .expect("parses");
        format.validate().expect("valid");
        assert_eq!(
            format.output_format(),
            Some(OutputFormat {
                grammar: Grammar::JsonSchema(json!({"type": "string"})),
                field: "text.format"
            })
        );
        assert_eq!(
            serde_json::to_value(&format).expect("serializes"),
            json!({"type": "json_schema", "name": "n", "schema": {"type": "string"}})
        );
    }

    #[test]
    fn a_bad_name_or_schema_is_named() {
        let check = |json_schema: Value| {
            let format: ResponseFormat =
                serde_json::from_value(json!({"type": "json_schema", "json_schema": json_schema}))
                    .expect("parses");
            match format.validate() {
                Err(Error::InvalidRequest { param, .. }) => param,
                other => panic!("{other:?}"),
            }
        };
        for name in ["", "has space", "dot.ted", &"x".repeat(MAX_SCHEMA_NAME + 1)] {
            assert_eq!(
                check(json!({"name": name})).as_deref(),
                Some("response_format.json_schema.name"),
                "{name:?}"
            );
        }
        for schema in [json!(true), json!("object"), json!([])] {
            assert_eq!(
                check(json!({"name": "n", "schema": schema})).as_deref(),
                Some("response_format.json_schema.schema")
            );
        }
    }
}
