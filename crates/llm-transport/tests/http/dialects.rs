//! The other dialects on the wire, driven by a scripted engine: `/v1/completions`,
//! `/v1/responses` and Anthropic's `/v1/messages`. Exact event sequences, whole answers,
//! errors in each dialect's shape, keep-alives, resume, cancel on disconnect, overload and
//! metrics labels.

use std::time::Duration;

use llm_transport::{Backend, Script, ScriptedEngine, TransportConfig};
use serde_json::{json, Value};

use super::*;

fn words() -> Script {
    Script::words("One two three four five.")
}

/// Each frame's `event:` name (if any) and its data as JSON; `[DONE]` as the string.
pub(super) fn sse_events(frames: &[String]) -> Vec<(Option<String>, Value)> {
    frames
        .iter()
        .filter(|frame| !frame.starts_with(':'))
        .map(|frame| {
            let name = frame
                .lines()
                .find_map(|line| line.strip_prefix("event: "))
                .map(str::to_owned);
            let data = frame
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("a data line in {frame:?}"));
            let data = serde_json::from_str(data).unwrap_or_else(|_| Value::from(data));
            (name, data)
        })
        .collect()
}

/// The text of a stream in any dialect: completions chunks' `text`, Responses' text deltas,
/// Anthropic's `text_delta`s.
pub(super) fn dialect_text(frames: &[String]) -> String {
    sse_events(frames)
        .iter()
        .filter_map(|(_, data)| {
            let text = if data["type"] == "response.output_text.delta" {
                &data["delta"]
            } else if data["type"] == "content_block_delta" {
                &data["delta"]["text"]
            } else {
                &data["choices"][0]["text"]
            };
            text.as_str().map(str::to_owned)
        })
        .collect()
}

fn names(events: &[(Option<String>, Value)]) -> Vec<&str> {
    events
        .iter()
        .map(|(name, _)| name.as_deref().unwrap_or("-"))
        .collect()
}

pub(super) fn json_body(response: &RawResponse) -> Value {
    serde_json::from_slice(&response.body()).expect("a JSON body")
}

const COMPLETION: &str = r#"{"prompt":"Count:","max_tokens":50,"stream":true,
    "stream_options":{"include_usage":true}}"#;

#[tokio::test]
async fn a_completions_stream_is_text_chunks_a_finish_usage_and_done() {
    let test = scripted(words(), TransportConfig::default()).await;
    let response = exchange(test.address, &post("/v1/completions", COMPLETION)).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&frames(&response));
    assert_eq!(events.len(), 5 + 3, "{events:?}");
    let text: String = events[..5]
        .iter()
        .map(|(_, chunk)| chunk["choices"][0]["text"].as_str().expect("text"))
        .collect();
    assert_eq!(text, "One two three four five.");
    for (name, chunk) in &events[..7] {
        assert_eq!(*name, None);
        assert_eq!(chunk["object"], "text_completion");
        assert!(chunk["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("cmpl-")));
    }
    assert_eq!(events[0].1["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(events[5].1["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[5].1["choices"][0]["text"], "");
    assert_eq!(events[6].1["choices"], json!([]));
    assert_eq!(
        events[6].1["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13})
    );
    assert_eq!(events[7].1, Value::from("[DONE]"));

    // `echo` sends the prompt first; the whole answer has the same text.
    let echo = exchange(
        test.address,
        &post(
            "/v1/completions",
            r#"{"prompt":"Count:","echo":true,"stream":true}"#,
        ),
    )
    .await;
    let echoed = sse_events(&frames(&echo));
    assert_eq!(echoed[0].1["choices"][0]["text"], "Count:");
    let whole = exchange(
        test.address,
        &post("/v1/completions", r#"{"prompt":["Count:"],"echo":true}"#),
    )
    .await;
    assert_eq!(whole.status, 200);
    let whole = json_body(&whole);
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(
        whole["choices"][0]["text"],
        "Count:One two three four five."
    );
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    assert_eq!(whole["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn a_completion_names_no_token_limit_and_gets_sixteen() {
    let text = "w ".repeat(40);
    let test = scripted(Script::words(&text), TransportConfig::default()).await;
    let whole = exchange(test.address, &post("/v1/completions", r#"{"prompt":"x"}"#)).await;
    let whole = json_body(&whole);
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 16);
}

#[tokio::test]
async fn completions_refuse_what_they_cannot_honour_by_name() {
    let test = scripted(words(), TransportConfig::default()).await;
    for (body, param) in [
        (r#"{"prompt":"x","suffix":"y"}"#, "suffix"),
        (r#"{"prompt":"x","best_of":3}"#, "best_of"),
        (r#"{"prompt":[1,2]}"#, "prompt"),
        (r#"{"prompt":"x","model":"other"}"#, "model"),
    ] {
        let response = exchange(test.address, &post("/v1/completions", body)).await;
        let status = if param == "model" { 404 } else { 400 };
        assert_eq!(response.status, status, "{body}");
        assert_eq!(
            error_of(&response).error.param.as_deref(),
            Some(param),
            "{body}"
        );
    }
}

const RESPONSE: &str = r#"{"input":"hi","instructions":"Be brief.","stream":true}"#;

#[tokio::test]
async fn a_responses_stream_sends_openais_events_in_order_with_rising_sequence_numbers() {
    let test = scripted(words(), TransportConfig::default()).await;
    let response = exchange(test.address, &post("/v1/responses", RESPONSE)).await;
    assert_eq!(response.status, 200);
    let events = sse_events(&frames(&response));
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 5]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names(&events), expected);
    for (number, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"].as_str(), name.as_deref());
        assert_eq!(data["sequence_number"], number);
    }
    let created = &events[0].1["response"];
    let id = created["id"].as_str().expect("an id");
    assert!(id.starts_with("resp_"));
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["instructions"], "Be brief.");
    let item_id = events[2].1["item"]["id"].as_str().expect("an item id");
    assert!(item_id.starts_with("msg_"));
    let deltas: String = events[4..9]
        .iter()
        .map(|(_, data)| {
            assert_eq!(data["item_id"], item_id);
            data["delta"].as_str().expect("delta")
        })
        .collect();
    assert_eq!(deltas, "One two three four five.");
    assert_eq!(events[9].1["text"], deltas);
    assert_eq!(events[10].1["part"]["text"], deltas);
    assert_eq!(events[11].1["item"]["status"], "completed");
    let completed = &events[12].1["response"];
    assert_eq!(completed["id"], id);
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0]["id"], item_id);
    assert_eq!(completed["output"][0]["content"][0]["text"], deltas);
    assert_eq!(completed["usage"]["input_tokens"], 8);
    assert_eq!(completed["usage"]["output_tokens"], 5);
    assert_eq!(completed["usage"]["total_tokens"], 13);

    // The whole answer is the same response object, completed.
    let whole = exchange(test.address, &post("/v1/responses", r#"{"input":"hi"}"#)).await;
    let whole = json_body(&whole);
    assert_eq!(whole["object"], "response");
    assert_eq!(whole["status"], "completed");
    assert_eq!(whole["output"][0]["content"][0]["text"], deltas);
    assert_eq!(whole["store"], false);
}

#[tokio::test]
async fn a_responses_stream_cut_at_the_limit_is_incomplete_and_a_failure_is_failed() {
    let test = scripted(words(), TransportConfig::default()).await;
    let cut = exchange(
        test.address,
        &post(
            "/v1/responses",
            r#"{"input":"hi","stream":true,"max_output_tokens":2}"#,
        ),
    )
    .await;
    let cut = sse_events(&frames(&cut));
    let (name, last) = cut.last().expect("events");
    assert_eq!(name.as_deref(), Some("response.incomplete"));
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        "One two"
    );

    let failing = scripted(words().fail_after(2), TransportConfig::default()).await;
    let failed = exchange(failing.address, &post("/v1/responses", RESPONSE)).await;
    assert_eq!(failed.status, 200);
    let failed = sse_events(&frames(&failed));
    assert_eq!(
        names(&failed),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.failed",
        ]
    );
    let response = &failed[6].1["response"];
    assert_eq!(response["status"], "failed");
    assert_eq!(response["error"]["code"], "server_error");
    assert_eq!(failed[6].1["sequence_number"], 6);
}

#[tokio::test]
async fn responses_refuse_state_and_tools_by_name() {
    let test = scripted(words(), TransportConfig::default()).await;
    for (body, param) in [
        (
            r#"{"input":"x","previous_response_id":"resp_1"}"#,
            "previous_response_id",
        ),
        (r#"{"input":"x","background":true}"#, "background"),
        (
            r#"{"input":"x","tools":[{"type":"function","name":"f"}]}"#,
            "tools",
        ),
    ] {
        let response = exchange(test.address, &post("/v1/responses", body)).await;
        assert_eq!(response.status, 400, "{body}");
        assert_eq!(error_of(&response).error.param.as_deref(), Some(param));
    }
    let retrieve = exchange(test.address, &get("/v1/responses/resp_1")).await;
    assert_eq!(retrieve.status, 404);
    assert_eq!(
        error_of(&retrieve).error.code.as_deref(),
        Some("response_not_found")
    );
}

const MESSAGE: &str = r#"{"model":"","max_tokens":50,"system":"Be brief.","stream":true,
    "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;

#[tokio::test]
async fn a_messages_stream_sends_anthropics_events_in_order() {
    let test = scripted(words(), TransportConfig::default()).await;
    let response = exchange(
        test.address,
        &request(
            "POST",
            "/v1/messages",
            &["anthropic-version: 2023-06-01"],
            MESSAGE,
        ),
    )
    .await;
    assert_eq!(response.status, 200);
    let events = sse_events(&frames(&response));
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 5]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected);
    for (name, data) in &events {
        assert_eq!(data["type"].as_str(), name.as_deref());
    }
    let message = &events[0].1["message"];
    assert!(message["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], json!([]));
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = events[3..8]
        .iter()
        .map(|(_, data)| {
            assert_eq!(data["delta"]["type"], "text_delta");
            data["delta"]["text"].as_str().expect("text")
        })
        .collect();
    assert_eq!(text, "One two three four five.");
    assert_eq!(
        events[9].1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"input_tokens": 8, "output_tokens": 5}})
    );

    let cut = exchange(
        test.address,
        &post(
            "/v1/messages",
            r#"{"max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    )
    .await;
    assert_eq!(cut.status, 200);
    let cut = json_body(&cut);
    assert_eq!(cut["type"], "message");
    assert_eq!(cut["content"], json!([{"type": "text", "text": "One two"}]));
    assert_eq!(cut["stop_reason"], "max_tokens");
    assert_eq!(cut["usage"], json!({"input_tokens": 8, "output_tokens": 2}));
}

/// An Anthropic error body: its `error.type`.
fn anthropic_error(response: &RawResponse) -> String {
    let body = json_body(response);
    assert_eq!(body["type"], "error", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["type"].as_str().expect("a type").to_owned()
}

#[tokio::test]
async fn messages_errors_take_anthropics_shape_and_status() {
    let mut config = TransportConfig::default();
    config.api_keys = vec!["sesame".to_owned()];
    let test = scripted(words().fail_after(1), config).await;
    let key = "x-api-key: sesame";
    let no_key = exchange(test.address, &post("/v1/messages", MESSAGE)).await;
    assert_eq!(no_key.status, 401);
    assert_eq!(anthropic_error(&no_key), "authentication_error");
    let invalid = exchange(
        test.address,
        &request(
            "POST",
            "/v1/messages",
            &[key],
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    )
    .await;
    assert_eq!(invalid.status, 400);
    assert_eq!(anthropic_error(&invalid), "invalid_request_error");
    assert!(String::from_utf8_lossy(&invalid.body()).contains("max_tokens"));
    let unknown = exchange(
        test.address,
        &request("GET", "/v1/messages/msg_nope/stream", &[key], ""),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(anthropic_error(&unknown), "not_found_error");

    // Mid-stream, the failure is an `error` event in the same shape, and nothing follows.
    let failed = exchange(
        test.address,
        &request("POST", "/v1/messages", &[key], MESSAGE),
    )
    .await;
    assert_eq!(failed.status, 200);
    let failed = sse_events(&frames(&failed));
    assert_eq!(
        names(&failed),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(failed[4].1["type"], "error");
    assert_eq!(failed[4].1["error"]["type"], "api_error");

    // The OpenAI routes keep OpenAI's shape.
    let chat = exchange(test.address, &post("/v1/chat/completions", "{}")).await;
    assert_eq!(chat.status, 401);
    assert_eq!(
        error_of(&chat).error.code.as_deref(),
        Some("invalid_api_key")
    );
}

#[tokio::test]
async fn an_overloaded_engine_is_429_with_retry_after_in_every_dialect() {
    let slow = words().interval(Duration::from_secs(30));
    let engine = ScriptedEngine::new(slow).capacity(1);
    let test = serve_scripted(engine, TransportConfig::default(), Duration::from_secs(1)).await;
    // A first stream holds the engine's one place.
    let holder = read_first(test.address, &post("/v1/completions", COMPLETION)).await;
    for (path, body) in [
        ("/v1/completions", COMPLETION),
        ("/v1/responses", RESPONSE),
        ("/v1/messages", MESSAGE),
    ] {
        let response = exchange(test.address, &post(path, body)).await;
        assert_eq!(response.status, 429, "{path}");
        assert_eq!(response.header("retry-after"), Some("1"), "{path}");
        if path == "/v1/messages" {
            assert_eq!(anthropic_error(&response), "rate_limit_error");
        } else {
            assert_eq!(error_of(&response).error.kind, "rate_limit_error");
        }
    }
    drop(holder);
}

/// Sends a streaming request and reads its head and first chunk; the connection stays open
/// while the reader lives.
async fn read_first(address: SocketAddr, raw: &[u8]) -> BufReader<TcpStream> {
    let mut reader = send(address, raw).await;
    assert_eq!(read_head(&mut reader).await.0, 200);
    read_chunk(&mut reader).await.expect("a first chunk");
    reader
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_generation_in_every_dialect() {
    let slow = words().interval(Duration::from_secs(30));
    let test = scripted(slow, TransportConfig::default()).await;
    for (n, (path, body)) in [
        ("/v1/completions", COMPLETION),
        ("/v1/responses", RESPONSE),
        ("/v1/messages", MESSAGE),
    ]
    .into_iter()
    .enumerate()
    {
        let reader = read_first(test.address, &post(path, body)).await;
        assert_eq!(test.engine.stats().running, 1, "{path}");
        drop(reader);
        test.wait_idle().await;
        let stats = test.engine.stats();
        assert_eq!(stats.cancelled, n as u64 + 1, "{path}: {stats:?}");
        assert_eq!(stats.finished, 0, "{path}");
    }
}

#[tokio::test]
async fn silent_streams_get_each_dialects_keep_alive() {
    let mut config = TransportConfig::default();
    config.keep_alive_interval = Duration::from_millis(50);
    let late = words().first_token_delay(Duration::from_millis(280));
    let test = scripted(late, config).await;
    for (path, body, keep_alive) in [
        ("/v1/completions", COMPLETION, ": keep-alive\n\n"),
        ("/v1/responses", RESPONSE, ": keep-alive\n\n"),
        (
            "/v1/messages",
            MESSAGE,
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        ),
    ] {
        let frames = frames(&exchange(test.address, &post(path, body)).await);
        let count = frames.iter().filter(|frame| *frame == keep_alive).count();
        // Messages also send one ping right after the block starts, as Anthropic does.
        assert!(count >= 3, "{path}: {frames:?}");
    }
}

/// Reads `n` chunks of a stream and returns them with the stream's id, then drops it.
async fn first_frames(address: SocketAddr, raw: &[u8], n: usize) -> (Vec<String>, String) {
    let mut reader = send(address, raw).await;
    assert_eq!(read_head(&mut reader).await.0, 200);
    let mut frames = Vec::new();
    while frames.len() < n {
        let chunk = read_chunk(&mut reader).await.expect("a chunk");
        let chunk = String::from_utf8(chunk).expect("UTF-8");
        if !chunk.starts_with(':') {
            frames.push(chunk);
        }
    }
    let id = event_id(&frames[0]).expect("resumable events carry ids");
    let (id, number) = id.rsplit_once(':').expect("RESPONSE:N");
    assert_eq!(number, "0");
    (frames.clone(), id.to_owned())
}

#[tokio::test]
async fn every_dialect_resumes_after_its_last_event_with_no_gap_or_duplicate() {
    let script = words().interval(Duration::from_millis(20));
    let test = scripted(script, TransportConfig::default()).await;
    for (path, body) in [
        (
            "/v1/completions",
            r#"{"prompt":"x","max_tokens":50,"stream":true,"resumable":true}"#,
        ),
        (
            "/v1/responses",
            r#"{"input":"hi","stream":true,"resumable":true}"#,
        ),
        (
            "/v1/messages",
            r#"{"max_tokens":50,"stream":true,"resumable":true,
                "messages":[{"role":"user","content":"hi"}]}"#,
        ),
    ] {
        let (first, id) = first_frames(test.address, &post(path, body), 3).await;
        let last = format!("{id}:2");
        let resume = request(
            "GET",
            &format!("{path}/{id}/stream"),
            &[&format!("Last-Event-ID: {last}")],
            "",
        );
        let rest = frames(&exchange(test.address, &resume).await);
        let rest: Vec<String> = rest.into_iter().filter(|f| event_id(f).is_some()).collect();
        let ids: Vec<String> = rest
            .iter()
            .filter_map(|f| event_id(f).map(str::to_owned))
            .collect();
        let expected: Vec<String> = (3..3 + ids.len()).map(|n| format!("{id}:{n}")).collect();
        assert_eq!(ids, expected, "{path}: consecutive ids from 3");
        let mut whole = first;
        whole.extend(rest);
        let all = frames(&exchange(test.address, &get(&format!("{path}/{id}/stream"))).await);
        let all: Vec<String> = all.into_iter().filter(|f| event_id(f).is_some()).collect();
        assert_eq!(
            all, whole,
            "{path}: the replay from the start is the same stream"
        );
        let text = dialect_text(&whole);
        assert_eq!(text, "One two three four five.", "{path}");
        // Another dialect's route does not serve this stream.
        let other = if path == "/v1/messages" {
            "/v1/completions"
        } else {
            "/v1/messages"
        };
        let wrong = exchange(test.address, &get(&format!("{other}/{id}/stream"))).await;
        assert_eq!(wrong.status, 404, "{path} id on {other}");
    }
}

#[tokio::test]
async fn the_openai_sdks_retrieve_resumes_a_response_stream_after_a_sequence_number() {
    let script = words().interval(Duration::from_millis(20));
    let test = scripted(script, TransportConfig::default()).await;
    let body = r#"{"input":"hi","stream":true,"resumable":true}"#;
    let (first, id) = first_frames(test.address, &post("/v1/responses", body), 5).await;
    let rest = exchange(
        test.address,
        &get(&format!("/v1/responses/{id}?stream=true&starting_after=4")),
    )
    .await;
    assert_eq!(rest.status, 200);
    let rest = sse_events(&frames(&rest));
    assert_eq!(rest[0].1["sequence_number"], 5);
    assert_eq!(sse_events(&first)[4].1["sequence_number"], 4);
    assert_eq!(
        rest.last().map(|(name, _)| name.as_deref()),
        Some(Some("response.completed"))
    );
}

#[tokio::test]
async fn count_tokens_answers_with_the_prompts_tokens() {
    let test = scripted(words(), TransportConfig::default()).await;
    let response = exchange(
        test.address,
        &post(
            "/v1/messages/count_tokens",
            r#"{"model":"","system":"Be brief.","messages":[{"role":"user","content":"hi there"}]}"#,
        ),
    )
    .await;
    assert_eq!(response.status, 200);
    // The scripted engine counts a token per word and one per message.
    assert_eq!(json_body(&response), json!({"input_tokens": 6}));
    let invalid = exchange(
        test.address,
        &post("/v1/messages/count_tokens", r#"{"messages":[]}"#),
    )
    .await;
    assert_eq!(invalid.status, 400);
    assert_eq!(anthropic_error(&invalid), "invalid_request_error");
    assert_eq!(test.engine.stats().started, 0, "counting generates nothing");
}

#[tokio::test]
async fn metrics_label_each_dialects_routes() {
    let test = scripted(words(), TransportConfig::default()).await;
    for (path, body) in [
        ("/v1/completions", r#"{"prompt":"x"}"#),
        ("/v1/responses", r#"{"input":"x"}"#),
        (
            "/v1/messages",
            r#"{"max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
        ),
        (
            "/v1/messages/count_tokens",
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
        ),
    ] {
        assert_eq!(
            exchange(test.address, &post(path, body)).await.status,
            200,
            "{path}"
        );
    }
    test.wait_idle().await;
    let text =
        String::from_utf8(exchange(test.address, &get("/metrics")).await.body()).expect("UTF-8");
    for endpoint in [
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ] {
        let line = format!(r#"llm_requests_total{{endpoint="{endpoint}",status="200"}} 1"#);
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}

#[tokio::test]
async fn tokenize_and_detokenize_answer_in_vllm_shapes() {
    let test = scripted(words(), TransportConfig::default()).await;
    let context = test.engine.model().context_length;
    let tokenized = exchange(
        test.address,
        &post(
            "/tokenize",
            r#"{"model":"scripted","prompt":"one two three"}"#,
        ),
    )
    .await;
    assert_eq!(tokenized.status, 200);
    // The scripted engine's stand-in: a token per word, ids counting from 0.
    assert_eq!(
        json_body(&tokenized),
        json!({"count": 3, "max_model_len": context, "tokens": [0, 1, 2], "token_strs": null})
    );
    let chat = exchange(
        test.address,
        &post(
            "/tokenize",
            r#"{"messages":[{"role":"user","content":"hi there"}]}"#,
        ),
    )
    .await;
    assert_eq!(json_body(&chat)["count"], 3);
    let text = exchange(test.address, &post("/detokenize", r#"{"tokens":[0,1]}"#)).await;
    assert_eq!(text.status, 200);
    assert_eq!(json_body(&text), json!({"prompt": "<0><1>"}));
    for (path, body, status, param) in [
        ("/tokenize", "{}", 400, Some("prompt")),
        (
            "/tokenize",
            r#"{"prompt":"x","model":"other"}"#,
            404,
            Some("model"),
        ),
        (
            "/tokenize",
            r#"{"prompt":"x","return_token_strs":true}"#,
            400,
            Some("return_token_strs"),
        ),
        ("/detokenize", r#"{"tokens":"1 2"}"#, 400, Some("tokens")),
        (
            "/detokenize",
            r#"{"tokens":[1,-1]}"#,
            400,
            Some("tokens[1]"),
        ),
    ] {
        let response = exchange(test.address, &post(path, body)).await;
        assert_eq!(response.status, status, "{path} {body}");
        assert_eq!(
            error_of(&response).error.param.as_deref(),
            param,
            "{path} {body}"
        );
    }
    let wrong_method = exchange(test.address, &get("/tokenize")).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert_eq!(
        test.engine.stats().started,
        0,
        "tokenizing generates nothing"
    );
}
