//! Structured output against the real default model: a 135M model that left alone answers in
//! prose returns JSON that parses and validates, streamed token by token, when the request
//! carries a JSON schema or asks for a JSON object.

use llm_engine::{Engine, EngineEvent, Error};
use llm_protocol::format::ResponseFormat;
use llm_protocol::{ChatCompletionRequest, FinishReason};
use serde_json::{json, Value};

mod common;

use common::ask;

/// A city, with a bounded name, a whole-number population and up to three languages from a
/// list: every kind of constraint a client schema typically has.
fn city_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 40},
            "population": {"type": "integer", "minimum": 0},
            "languages": {
                "type": "array",
                "items": {"enum": ["French", "English", "German", "Spanish"]},
                "minItems": 1,
                "maxItems": 3
            },
            "capital": {"type": "boolean"}
        },
        "required": ["city", "population", "languages", "capital"],
        "additionalProperties": false
    })
}

/// Checks `value` against [`city_schema`], keyword by keyword.
fn assert_city(value: &Value) {
    let object = value.as_object().expect("an object");
    let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["capital", "city", "languages", "population"],
        "{value}"
    );
    let city = object["city"].as_str().expect("city is a string");
    assert!((1..=40).contains(&city.chars().count()), "{value}");
    assert!(object["population"].as_u64().is_some(), "{value}");
    let languages = object["languages"]
        .as_array()
        .expect("languages is an array");
    assert!((1..=3).contains(&languages.len()), "{value}");
    for language in languages {
        assert!(
            ["French", "English", "German", "Spanish"]
                .contains(&language.as_str().expect("a string")),
            "{value}"
        );
    }
    assert!(object["capital"].is_boolean(), "{value}");
}

fn with_format(prompt: &str, max_tokens: u32, format: Value) -> ChatCompletionRequest {
    ChatCompletionRequest {
        response_format: Some(serde_json::from_value::<ResponseFormat>(format).expect("a format")),
        ..ask(prompt, max_tokens)
    }
}

fn schema_format(schema: Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}})
}

/// Streams `request` to its end: the concatenated deltas and how it finished.
async fn stream(engine: &Engine, request: &ChatCompletionRequest) -> (String, FinishReason) {
    let mut stream = engine.submit(request).expect("accepted");
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            EngineEvent::Delta(delta) => text.push_str(&delta.text),
            EngineEvent::Finished(finish) => return (text, finish.reason),
            EngineEvent::Error(error) => panic!("failed: {error}"),
        }
    }
    panic!("the stream ended without a final event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_schema_holds_the_streamed_answer_to_it() {
    let engine = Engine::builder()
        .build()
        .await
        .expect("the default model loads");
    let prompt = "Tell me about Paris.";
    // Unconstrained, the model answers in prose: what the constraint changes.
    let (free, _) = stream(&engine, &ask(prompt, 48)).await;
    assert!(serde_json::from_str::<Value>(&free).is_err(), "{free:?}");

    let request = with_format(prompt, 96, schema_format(city_schema()));
    let (text, reason) = stream(&engine, &request).await;
    assert_eq!(reason, FinishReason::Stop, "the JSON closed: {text:?}");
    let value: Value = serde_json::from_str(&text).expect("the answer is JSON");
    assert_city(&value);
    // The layout is one space after `,` and `:`, nothing else: what a client's parser expects
    // and all a small model can emit between tokens.
    assert_eq!(
        text,
        serde_json::to_string(&value)
            .expect("serializes")
            .replace(",\"", ", \"")
            .replace("\":", "\": ")
    );

    // Sampled at temperature 1, every answer still validates.
    for _ in 0..3 {
        let sampled = ChatCompletionRequest {
            temperature: Some(1.0),
            ..request.clone()
        };
        let (text, reason) = stream(&engine, &sampled).await;
        assert_eq!(reason, FinishReason::Stop, "{text:?}");
        assert_city(&serde_json::from_str(&text).expect("JSON"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_returns_an_object_and_an_unschemed_format_any_value() {
    let engine = Engine::builder()
        .build()
        .await
        .expect("the default model loads");
    let object = with_format("Describe a cat.", 96, json!({"type": "json_object"}));
    let (text, reason) = stream(&engine, &object).await;
    assert_eq!(reason, FinishReason::Stop, "{text:?}");
    let value: Value = serde_json::from_str(&text).expect("JSON");
    assert!(value.is_object(), "{text}");

    let schema = json!({"type": "json_schema", "json_schema": {"name": "any"}});
    let (text, _) = stream(&engine, &with_format("Pick a number.", 32, schema)).await;
    serde_json::from_str::<Value>(&text).expect("JSON");

    let pattern = schema_format(json!({"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}));
    let (text, reason) = stream(&engine, &with_format("Give a phone number.", 32, pattern)).await;
    assert_eq!(reason, FinishReason::Stop, "{text:?}");
    let number: String = serde_json::from_str(&text).expect("a JSON string");
    assert!(
        number.len() == 8 && number.as_bytes()[3] == b'-',
        "{number:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_cannot_be_compiled_is_refused_before_it_is_queued() {
    let engine = Engine::builder()
        .build()
        .await
        .expect("the default model loads");
    for schema in [
        json!({"$ref": "#/definitions/missing"}),
        json!({"type": "integer", "minimum": 5, "maximum": 1}),
        json!({"type": "object", "properties": {"a": {"type": "tuple"}}}),
    ] {
        match engine.submit(with_format("Hi", 8, schema_format(schema.clone()))) {
            Err(Error::InvalidRequest { param, message }) => {
                assert_eq!(
                    param.as_deref(),
                    Some("response_format"),
                    "{schema}: {message}"
                );
                assert!(message.contains("cannot be used"), "{message}");
            }
            other => panic!("{schema} was accepted: {other:?}"),
        }
    }
    assert_eq!(engine.stats().started, 0, "nothing reached the model");
}
