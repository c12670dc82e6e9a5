//! `GET /stream`: the chat stream for the browser's `EventSource`, which can only send a GET
//! with the question in the query string and reconnects by itself with `Last-Event-ID`.
//! Every such stream is resumable.

use http::{Request, Response};
use llm_protocol::ChatCompletionRequest;
use serde_json::{json, Map, Value};

use super::chat::chat_stream;
use super::resume::resume;
use crate::body::ResponseBody;
use crate::error::Result;
use crate::http::{event_position, last_event_id, retry_prelude, RequestInfo};
use crate::state::State;

/// How long a browser waits before reconnecting a dropped stream, in milliseconds.
const RECONNECT_MILLIS: u64 = 1000;

/// A new stream from the query string, or, with `Last-Event-ID`, the rest of one.
pub(crate) async fn eventsource<B>(
    state: &State,
    request: &Request<B>,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let prelude = Some(retry_prelude(RECONNECT_MILLIS));
    if let Some(text) = last_event_id(request) {
        let (id, number) = event_position(&text)?;
        return resume(state, id, Some(number), prelude).await;
    }
    let chat = request_from_query(request.uri().query().unwrap_or(""))?;
    chat_stream(state, &chat, info, true, prelude).await
}

/// Builds the chat request from `q` (one user message) or `messages` (a JSON array), and the
/// sampling parameters, each validated like the same field of a POST body.
fn request_from_query(query: &str) -> Result<ChatCompletionRequest, llm_protocol::Error> {
    let mut body = Map::new();
    let mut stops = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let field = match &*name {
            "q" => {
                let message = json!([{"role": "user", "content": value}]);
                set_once(&mut body, "messages", message)?;
                continue;
            }
            "messages" => serde_json::from_str(&value).map_err(|error| {
                llm_protocol::Error::invalid_param(
                    "messages",
                    format!("`messages` must be a JSON array of messages: {error}"),
                )
            })?,
            "max_tokens" | "max_completion_tokens" => {
                Value::from(value.parse::<u64>().map_err(|_| {
                    llm_protocol::Error::invalid_param(
                        name.to_string(),
                        format!("`{name}` must be a positive integer, got `{value}`"),
                    )
                })?)
            }
            "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => {
                let number = value
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .ok_or_else(|| {
                        llm_protocol::Error::invalid_param(
                            name.to_string(),
                            format!("`{name}` must be a number, got `{value}`"),
                        )
                    })?;
                Value::Number(number)
            }
            "stop" => {
                stops.push(Value::String(value.into_owned()));
                continue;
            }
            "model" => Value::String(value.into_owned()),
            "include_usage" => {
                body.insert(
                    "stream_options".to_owned(),
                    json!({"include_usage": value == "true" || value == "1"}),
                );
                continue;
            }
            // Credentials and resume ids are read elsewhere; unknown names are ignored, as
            // unknown body fields are.
            _ => continue,
        };
        set_once(&mut body, &name, field)?;
    }
    if !body.contains_key("messages") {
        return Err(llm_protocol::Error::invalid_param(
            "q",
            "`q` (the question) or `messages` (a JSON array) is required",
        ));
    }
    if !stops.is_empty() {
        body.insert("stop".to_owned(), Value::Array(stops));
    }
    body.insert("stream".to_owned(), Value::Bool(true));
    body.insert("resumable".to_owned(), Value::Bool(true));
    let json = serde_json::to_vec(&body).expect("a JSON map serializes");
    ChatCompletionRequest::from_json(&json)
}

fn set_once(
    body: &mut Map<String, Value>,
    name: &str,
    value: Value,
) -> Result<(), llm_protocol::Error> {
    if body.insert(name.to_owned(), value).is_some() {
        let name = if name == "messages" { "q" } else { name };
        return Err(llm_protocol::Error::invalid_param(
            name,
            format!("`{name}` is given more than once (or both `q` and `messages`)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_become_requests() {
        let request =
            request_from_query("q=Hello%20there&max_tokens=5&temperature=0&stop=a&stop=b")
                .expect("valid");
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.messages[0].text(), "Hello there");
        assert_eq!(request.max_tokens, Some(5));
        assert_eq!(request.temperature, Some(0.0));
        assert_eq!(request.stop, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert!(request.stream && request.resumable);

        let messages =
            r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]"#;
        let query = format!("messages={}&api_key=k", urlencode(messages));
        let request = request_from_query(&query).expect("valid");
        assert_eq!(request.messages.len(), 2);
    }

    #[test]
    fn bad_query_strings_name_the_parameter() {
        for (query, param) in [
            ("", "q"),
            ("max_tokens=5", "q"),
            ("q=hi&max_tokens=-1", "max_tokens"),
            ("q=hi&max_tokens=0", "max_tokens"),
            ("q=hi&temperature=hot", "temperature"),
            ("q=hi&temperature=9", "temperature"),
            ("q=hi&messages=[]", "q"),
            ("messages=nope", "messages"),
            ("q=a&q=b", "q"),
        ] {
            match request_from_query(query) {
                Err(llm_protocol::Error::InvalidRequest { param: got, .. }) => {
                    assert_eq!(got.as_deref(), Some(param), "{query}");
                }
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    fn urlencode(text: &str) -> String {
        form_urlencoded::byte_serialize(text.as_bytes()).collect()
    }
}
