//! End to end with the real default model.

use llm_engine::Engine;
use llm_protocol::{ChatCompletion, ChatStreamDecoder, StreamEvent};
use llm_transport::TransportConfig;

use super::*;

/// The JSON of every `data:` event of a stream but `[DONE]`.
fn json_chunks(stream: &RawResponse) -> Vec<serde_json::Value> {
    frames(stream)
        .iter()
        .filter_map(|frame| frame.strip_prefix("data: "))
        .filter(|data| data.trim() != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("JSON"))
        .collect()
}

const ASK: &str = r#""temperature":0,"max_tokens":24,"messages":[{"role":"user","content":"What is the capital of France?"}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_openai_chunks_one_per_frame_with_exact_framing() {
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let body = format!(r#"{{"stream":true,"stream_options":{{"include_usage":true}},{ASK}}}"#);
    let response = exchange(test.address, &post("/v1/chat/completions", &body)).await;

    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert_eq!(response.header("x-accel-buffering"), Some("no"));
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));

    // Every HTTP chunk is exactly one SSE event: written and flushed as soon as it exists.
    for chunk in &response.chunks {
        let text = std::str::from_utf8(chunk).expect("UTF-8 frames");
        assert!(
            text.starts_with("data: ") && text.ends_with("\n\n"),
            "{text:?}"
        );
        assert_eq!(
            text.matches("\n\n").count(),
            1,
            "one event per frame: {text:?}"
        );
    }
    let first = std::str::from_utf8(&response.chunks[0]).expect("UTF-8");
    let id = &first["data: {\"id\":\"".len()..first.find("\",\"object\"").expect("object")];
    assert!(id.starts_with("chatcmpl-"));
    let created = first
        .split("\"created\":")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("created");
    assert_eq!(
        first,
        format!(
            "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":{created},\
             \"model\":\"SmolLM2-135M-Instruct\",\"choices\":[{{\"index\":0,\"delta\":\
             {{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        )
    );
    assert_eq!(
        response.chunks.last().map(Vec::as_slice),
        Some(&b"data: [DONE]\n\n"[..])
    );

    let mut decoder = ChatStreamDecoder::new();
    let mut events = Vec::new();
    decoder
        .push(&response.body(), &mut events)
        .expect("a valid stream");
    let n = events.len();
    assert!(matches!(events[n - 1], StreamEvent::Done));
    let StreamEvent::Usage(usage) = &events[n - 2] else {
        panic!("the usage chunk comes before [DONE]: {:?}", events[n - 2]);
    };
    let StreamEvent::Chunk(last) = &events[n - 3] else {
        panic!("the finish chunk comes before usage");
    };
    assert_eq!(
        last.choices[0].finish_reason.as_ref().map(|r| r.as_str()),
        Some("length")
    );
    assert_eq!(usage.completion_tokens, 24);
    let mut text = String::new();
    for event in &events[1..n - 3] {
        let StreamEvent::Chunk(chunk) = event else {
            panic!("deltas are chunks: {event:?}");
        };
        assert_eq!(chunk.id, id, "one id for the whole response");
        assert!(chunk.choices[0].delta.role.is_none());
        assert!(chunk.choices[0].finish_reason.is_none());
        text.push_str(chunk.choices[0].delta.content.as_deref().expect("content"));
    }

    // The same request without streaming gives the same text.
    let plain = exchange(
        test.address,
        &post("/v1/chat/completions", &format!("{{{ASK}}}")),
    )
    .await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-type"), Some("application/json"));
    let completion: ChatCompletion = serde_json::from_slice(&plain.body()).expect("JSON");
    assert_eq!(
        completion.choices[0].message.content.as_deref(),
        Some(text.as_str())
    );
    assert_eq!(completion.usage.map(|u| u.completion_tokens), Some(24));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_include_usage_there_is_no_usage_chunk() {
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let body = format!(r#"{{"stream":true,{ASK}}}"#);
    let response = exchange(test.address, &post("/v1/chat/completions", &body)).await;
    let body = String::from_utf8(response.body()).expect("UTF-8");
    assert!(!body.contains("\"usage\""), "{body}");
    assert!(
        body.ends_with("\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_generation() {
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let body = r#"{"stream":true,"max_tokens":2000,"messages":[{"role":"user","content":"Write a very long story."}]}"#;
    let mut reader = send(test.address, &post("/v1/chat/completions", body)).await;
    let (status, _) = read_head(&mut reader).await;
    assert_eq!(status, 200);
    for _ in 0..4 {
        read_chunk(&mut reader).await.expect("a chunk");
    }
    assert_eq!(test.engine.stats().running, 1);
    drop(reader);
    for _ in 0..500 {
        let stats = test.engine.stats();
        if stats.running == 0 && stats.cancelled == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not cancelled: {:?}", test.engine.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_the_right_status_and_openai_shape() {
    let mut config = TransportConfig::default();
    config.body_limit = 1024;
    let test = start(Engine::builder().max_num_seqs(1).queue_limit(0), config).await;
    let path = "/v1/chat/completions";
    let cases: Vec<(Vec<u8>, u16, &str, Option<&str>)> = vec![
        (post(path, "{"), 400, "invalid_request_error", None),
        (
            post(
                path,
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
            ),
            400,
            "invalid_request_error",
            Some("max_tokens"),
        ),
        (
            post(path, r#"{"messages":[{"role":"wizard","content":"x"}]}"#),
            400,
            "invalid_request_error",
            Some("messages[0].role"),
        ),
        (
            post(
                path,
                r#"{"messages":[{"role":"user","content":"x"}],"n":9}"#,
            ),
            400,
            "invalid_request_error",
            Some("n"),
        ),
        (
            post(
                path,
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#,
            ),
            404,
            "invalid_request_error",
            Some("model"),
        ),
        (
            post(path, &"x".repeat(2000)),
            413,
            "invalid_request_error",
            None,
        ),
        (get("/nope"), 404, "invalid_request_error", None),
        (get(path), 405, "invalid_request_error", None),
    ];
    for (request, status, kind, param) in cases {
        let response = exchange(test.address, &request).await;
        let name = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
        assert_eq!(response.status, status, "{name}");
        let body = error_of(&response);
        assert_eq!(body.error.kind, kind, "{name}");
        assert_eq!(body.error.param.as_deref(), param, "{name}");
        assert!(!body.error.message.is_empty());
    }

    // Overload: one running, no queue: the next gets 429 with Retry-After at once.
    let long = r#"{"stream":true,"max_tokens":2000,"messages":[{"role":"user","content":"Write a very long story."}]}"#;
    let mut running = send(test.address, &post(path, long)).await;
    assert_eq!(read_head(&mut running).await.0, 200);
    read_chunk(&mut running).await.expect("first chunk");
    let refused = exchange(test.address, &post(path, long)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(error_of(&refused).error.code.as_deref(), Some("queue_full"));
    drop(running);

    // The server keeps serving.
    let health = exchange(test.address, &get("/health")).await;
    assert_eq!(health.status, 200);
    let _ = test.server;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_the_model_is_ready() {
    let (server, address) = listen(TransportConfig::default()).await;
    let loading = exchange(address, &get("/health")).await;
    assert_eq!(loading.status, 503);
    assert_eq!(
        error_of(&loading).error.code.as_deref(),
        Some("model_loading")
    );
    let chat = exchange(
        address,
        &post("/v1/chat/completions", &format!("{{{ASK}}}")),
    )
    .await;
    assert_eq!(chat.status, 503);

    server.set_engine(Engine::builder().build().await.expect("loads"));
    let ready = exchange(address, &get("/health")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body(), br#"{"status":"ok","engine_restarts":0}"#);
    let models = exchange(address, &get("/v1/models")).await;
    let body = String::from_utf8(models.body()).expect("UTF-8");
    assert!(
        body.starts_with(
            r#"{"object":"list","data":[{"id":"SmolLM2-135M-Instruct","object":"model","created":"#
        ),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_of_the_real_model_matches_the_uninterrupted_answer() {
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let body = format!(r#"{{"stream":true,"resumable":true,{ASK}}}"#);
    let mut reader = send(test.address, &post("/v1/chat/completions", &body)).await;
    assert_eq!(read_head(&mut reader).await.0, 200);
    let mut first = Vec::new();
    for _ in 0..5 {
        let chunk = read_chunk(&mut reader).await.expect("a chunk");
        first.push(String::from_utf8(chunk).expect("UTF-8"));
    }
    drop(reader);
    let last = event_id(&first[4]).expect("an id").to_owned();
    let (id, _) = last.rsplit_once(':').expect("RESPONSE:N");
    let resume = request(
        "GET",
        &format!("/v1/chat/completions/{id}/stream"),
        &[&format!("Last-Event-ID: {last}")],
        "",
    );
    let rest = frames(&exchange(test.address, &resume).await);
    let mut whole = first;
    whole.extend(rest);
    assert_eq!(streamed_text(&whole), plain_answer(test.address).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_conversation_with_the_real_model() {
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let mut socket = super::websocket::connect(test.address, "").await;
    let question = r#"{"role":"user","content":"What is the capital of France?"}"#;
    let first = format!(r#"{{"temperature":0,"max_tokens":24,"messages":[{question}]}}"#);
    let (answer, done) = super::websocket::turn(&mut socket, &first).await;
    assert_eq!(done["type"], "done");
    assert_eq!(done["usage"]["completion_tokens"], 24);
    assert_eq!(answer, plain_answer(test.address).await);
    // The second turn carries the conversation so far.
    let history = serde_json::json!([
        serde_json::from_str::<serde_json::Value>(question).expect("JSON"),
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And of Germany?"},
    ]);
    let second = format!(r#"{{"temperature":0,"max_tokens":16,"messages":{history}}}"#);
    let (reply, done) = super::websocket::turn(&mut socket, &second).await;
    assert_eq!(done["type"], "done");
    assert!(!reply.is_empty());
    assert!(!reply.contains('\u{fffd}'));
}

/// The non-streaming answer to `ASK`.
async fn plain_answer(address: SocketAddr) -> String {
    let plain = exchange(
        address,
        &post("/v1/chat/completions", &format!("{{{ASK}}}")),
    )
    .await;
    let completion: ChatCompletion = serde_json::from_slice(&plain.body()).expect("JSON");
    completion.choices[0]
        .message
        .content
        .clone()
        .expect("content")
}

/// Every dialect at temperature 0: the streamed text is the whole answer's text, and the
/// token counts agree, including `count_tokens` with the prompt of the same request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_streams_the_text_it_answers_whole() {
    use super::dialects::{dialect_text, json_body};
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let question = r#""What is the capital of France?""#;
    let cases = [
        (
            "/v1/completions",
            r#""temperature":0,"max_tokens":24,"prompt":"The capital of France is""#.to_owned(),
        ),
        (
            "/v1/responses",
            format!(r#""temperature":0,"max_output_tokens":24,"input":{question}"#),
        ),
        (
            "/v1/messages",
            format!(
                r#""temperature":0,"max_tokens":24,"messages":[{{"role":"user","content":{question}}}]"#
            ),
        ),
    ];
    for (path, fields) in cases {
        let stream = exchange(
            test.address,
            &post(path, &format!(r#"{{"stream":true,{fields}}}"#)),
        )
        .await;
        assert_eq!(stream.status, 200, "{path}");
        let streamed = dialect_text(&frames(&stream));
        assert!(!streamed.trim().is_empty(), "{path}: the model answered");
        let whole = exchange(test.address, &post(path, &format!("{{{fields}}}"))).await;
        assert_eq!(whole.status, 200, "{path}");
        let whole = json_body(&whole);
        let (text, output_tokens) = match path {
            "/v1/completions" => (
                &whole["choices"][0]["text"],
                &whole["usage"]["completion_tokens"],
            ),
            "/v1/responses" => (
                &whole["output"][0]["content"][0]["text"],
                &whole["usage"]["output_tokens"],
            ),
            _ => (
                &whole["content"][0]["text"],
                &whole["usage"]["output_tokens"],
            ),
        };
        assert_eq!(text.as_str(), Some(streamed.as_str()), "{path}");
        assert_eq!(output_tokens, 24, "{path}: {whole}");
        if path == "/v1/messages" {
            assert_eq!(whole["stop_reason"], "max_tokens");
            let count = exchange(
                test.address,
                &post("/v1/messages/count_tokens", &format!("{{{fields}}}")),
            )
            .await;
            assert_eq!(
                json_body(&count)["input_tokens"],
                whole["usage"]["input_tokens"],
                "count_tokens agrees with the answer's usage"
            );
        }
    }
    assert_eq!(test.engine.stats().running, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_counts_what_a_generation_prefills_and_detokenize_inverts_it() {
    use super::dialects::json_body;
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let prompt = "The capital of France is";
    let tokenized = json_body(
        &exchange(
            test.address,
            &post("/tokenize", &format!(r#"{{"prompt":"{prompt}"}}"#)),
        )
        .await,
    );
    let count = tokenized["count"].as_u64().expect("a count");
    assert!(count > 0);
    assert_eq!(
        tokenized["tokens"].as_array().map(Vec::len),
        Some(count as usize)
    );
    assert_eq!(
        tokenized["max_model_len"].as_u64(),
        Some(test.engine.model().context_length as u64)
    );
    let completion = json_body(
        &exchange(
            test.address,
            &post(
                "/v1/completions",
                &format!(r#"{{"prompt":"{prompt}","max_tokens":1,"temperature":0}}"#),
            ),
        )
        .await,
    );
    assert_eq!(completion["usage"]["prompt_tokens"].as_u64(), Some(count));
    let text = json_body(
        &exchange(
            test.address,
            &post(
                "/detokenize",
                &format!(r#"{{"tokens":{}}}"#, tokenized["tokens"]),
            ),
        )
        .await,
    );
    assert_eq!(text["prompt"], prompt);

    // A conversation counts as a chat request's prefill, chat template included.
    let messages = r#"[{"role":"user","content":"What is the capital of France?"}]"#;
    let chat_count = json_body(
        &exchange(
            test.address,
            &post("/tokenize", &format!(r#"{{"messages":{messages}}}"#)),
        )
        .await,
    )["count"]
        .as_u64();
    let chat = json_body(
        &exchange(
            test.address,
            &post(
                "/v1/chat/completions",
                &format!(r#"{{"messages":{messages},"max_tokens":1,"temperature":0}}"#),
            ),
        )
        .await,
    );
    assert_eq!(chat["usage"]["prompt_tokens"].as_u64(), chat_count);

    // An id past the vocabulary is refused, not dropped.
    let outside = exchange(
        test.address,
        &post("/detokenize", r#"{"tokens":[1,4000000]}"#),
    )
    .await;
    assert_eq!(outside.status, 400);
    assert_eq!(error_of(&outside).error.param.as_deref(), Some("tokens[1]"));
}

/// Structured output on every dialect that has it: the streamed text and the whole answer are
/// the same JSON, holding to the schema; a schema that cannot be compiled is a 400 naming the
/// dialect's field before anything streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_streams_json_that_holds_to_the_schema() {
    use super::dialects::{dialect_text, json_body};
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let schema = r#"{"type":"object","properties":{"answer":{"type":"string","maxLength":30},"sure":{"type":"boolean"}},"required":["answer","sure"],"additionalProperties":false}"#;
    let question = r#""What is the capital of France?""#;
    let cases = [
        (
            "/v1/chat/completions",
            format!(
                r#""temperature":0,"max_tokens":48,"messages":[{{"role":"user","content":{question}}}],
                "response_format":{{"type":"json_schema","json_schema":{{"name":"a","strict":true,"schema":{schema}}}}}"#
            ),
        ),
        (
            "/v1/responses",
            format!(
                r#""temperature":0,"max_output_tokens":48,"input":{question},
                "text":{{"format":{{"type":"json_schema","name":"a","strict":true,"schema":{schema}}}}}"#
            ),
        ),
        (
            "/v1/completions",
            format!(
                r#""temperature":0,"max_tokens":48,"prompt":"Q: What is the capital of France?\nA (JSON):",
                "response_format":{{"type":"json_schema","json_schema":{{"name":"a","schema":{schema}}}}}"#
            ),
        ),
    ];
    for (path, fields) in &cases {
        let stream = exchange(
            test.address,
            &post(path, &format!(r#"{{"stream":true,{fields}}}"#)),
        )
        .await;
        assert_eq!(stream.status, 200, "{path}");
        let streamed = match *path {
            "/v1/chat/completions" => streamed_text(&frames(&stream)),
            _ => dialect_text(&frames(&stream)),
        };
        let value: serde_json::Value = serde_json::from_str(&streamed)
            .unwrap_or_else(|error| panic!("{path}: {streamed:?} is not JSON: {error}"));
        let keys: Vec<&String> = value.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["answer", "sure"], "{path}: {streamed}");
        assert!(value["answer"]
            .as_str()
            .is_some_and(|answer| answer.chars().count() <= 30));
        assert!(value["sure"].is_boolean(), "{path}: {streamed}");

        let whole = json_body(&exchange(test.address, &post(path, &format!("{{{fields}}}"))).await);
        let (text, finish) = match *path {
            "/v1/chat/completions" => (
                &whole["choices"][0]["message"]["content"],
                &whole["choices"][0]["finish_reason"],
            ),
            "/v1/responses" => {
                assert_eq!(whole["text"]["format"]["type"], "json_schema", "echoed");
                (&whole["output"][0]["content"][0]["text"], &whole["status"])
            }
            _ => (
                &whole["choices"][0]["text"],
                &whole["choices"][0]["finish_reason"],
            ),
        };
        assert_eq!(text.as_str(), Some(streamed.as_str()), "{path}");
        let closed = if *path == "/v1/responses" {
            "completed"
        } else {
            "stop"
        };
        assert_eq!(finish, closed, "{path}: the JSON closed");
    }

    let unusable = r##"{"$ref":"#/definitions/missing"}"##;
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            format!(
                r#"{{"stream":true,"messages":[{{"role":"user","content":"x"}}],"response_format":{{"type":"json_schema","json_schema":{{"name":"a","schema":{unusable}}}}}}}"#
            ),
            "response_format",
        ),
        (
            "/v1/responses",
            format!(
                r#"{{"stream":true,"input":"x","text":{{"format":{{"type":"json_schema","name":"a","schema":{unusable}}}}}}}"#
            ),
            "text.format",
        ),
    ] {
        let refused = exchange(test.address, &post(path, &body)).await;
        assert_eq!(refused.status, 400, "{path}");
        assert_eq!(
            error_of(&refused).error.param.as_deref(),
            Some(param),
            "{path}"
        );
    }
    assert_eq!(test.engine.stats().running, 0);
}

/// `logprobs` on chat: every streamed content chunk carries its tokens, and together they are
/// the whole answer's `logprobs.content`; without `logprobs` chunks keep `"logprobs": null`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_stream_with_every_chunk_and_equal_the_whole_answers() {
    use super::dialects::json_body;
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let fields = format!(r#""logprobs":true,"top_logprobs":2,{ASK}"#);
    let stream = exchange(
        test.address,
        &post(
            "/v1/chat/completions",
            &format!(r#"{{"stream":true,{fields}}}"#),
        ),
    )
    .await;
    assert_eq!(stream.status, 200);
    let mut streamed = Vec::new();
    for frame in frames(&stream) {
        let Some(data) = frame.strip_prefix("data: ") else {
            continue;
        };
        if data.trim() == "[DONE]" {
            continue;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).expect("JSON");
        let choice = &chunk["choices"][0];
        match choice["delta"]["content"].as_str() {
            Some(text) if !text.is_empty() => {
                let content = choice["logprobs"]["content"].as_array().expect("logprobs");
                let joined: String = content
                    .iter()
                    .map(|token| token["token"].as_str().expect("token"))
                    .collect();
                assert_eq!(joined, text, "{data}");
                streamed.extend(content.iter().cloned());
            }
            _ => assert!(choice["logprobs"].is_null(), "{data}"),
        }
    }
    let whole = json_body(
        &exchange(
            test.address,
            &post("/v1/chat/completions", &format!("{{{fields}}}")),
        )
        .await,
    );
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs");
    assert_eq!(&streamed, content);
    assert_eq!(content.len(), 24, "one per token: {whole}");
    for token in content {
        assert!(token["logprob"]
            .as_f64()
            .is_some_and(|logprob| logprob <= 0.0));
        assert_eq!(token["top_logprobs"].as_array().map(Vec::len), Some(2));
        assert_eq!(token["top_logprobs"][0]["token"], token["token"], "greedy");
    }
    let plain = json_body(
        &exchange(
            test.address,
            &post("/v1/chat/completions", &format!("{{{ASK}}}")),
        )
        .await,
    );
    assert!(plain["choices"][0]["logprobs"].is_null());
    assert_eq!(
        plain["choices"][0]["message"],
        whole["choices"][0]["message"]
    );
}

/// `stream_options.continuous_usage_stats` (vLLM's): every chunk with text carries the token
/// counts so far, one more token each, and the finish chunk the final counts, which the
/// usage chunk of `include_usage` repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_usage_counts_tokens_on_every_chunk() {
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let body = format!(
        r#"{{"stream":true,"stream_options":{{"include_usage":true,"continuous_usage_stats":true}},{ASK}}}"#
    );
    let stream = exchange(test.address, &post("/v1/chat/completions", &body)).await;
    assert_eq!(stream.status, 200);
    let chunks: Vec<serde_json::Value> = json_chunks(&stream);
    let (last, body) = chunks.split_last().expect("chunks");
    let mut previous = 0;
    for chunk in &body[1..] {
        let usage = &chunk["usage"];
        let completion = usage["completion_tokens"]
            .as_u64()
            .expect("usage on every chunk");
        // One more token on each chunk with text; the finish chunk repeats the last count.
        let has_text = chunk["choices"][0]["delta"]["content"].is_string();
        assert!(
            completion > previous || !has_text && completion == previous,
            "{previous} then {chunk}"
        );
        previous = completion;
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(usage["prompt_tokens"].as_u64().expect("prompt") + completion)
        );
    }
    assert!(
        chunks[0].get("usage").is_none(),
        "the role chunk comes before any count"
    );
    assert_eq!(previous, 24);
    assert_eq!(last["choices"], serde_json::json!([]));
    assert_eq!(
        last["usage"],
        body[body.len() - 1]["usage"],
        "the finish chunk has the totals"
    );
}

/// A forced tool call (`tool_choice` naming a function, or `required` among several) streams
/// the call's index, id, type and name first, then the arguments in pieces, and ends with
/// `tool_calls`; the arguments validate against the function's schema, and the whole answer
/// carries the same call with `content: null`. History with calls and results reaches the
/// model as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tool_calls_stream_arguments_that_hold_to_the_schema() {
    use super::dialects::json_body;
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"The weather in a city",
        "parameters":{"type":"object","properties":{"city":{"type":"string","maxLength":20},
        "unit":{"type":"string","enum":["celsius","fahrenheit"]}},"required":["city","unit"],
        "additionalProperties":false}}},
        {"type":"function","function":{"name":"get_time","parameters":{"type":"object",
        "properties":{"zone":{"type":"string","maxLength":20}},"required":["zone"],"additionalProperties":false}}}]"#;
    for (question, choice, wanted) in [
        (
            "What is the weather in Paris?",
            r#"{"type":"function","function":{"name":"get_weather"}}"#,
            Some("get_weather"),
        ),
        ("What time is it in Tokyo?", r#""required""#, None),
    ] {
        let fields = format!(
            r#""temperature":0,"max_tokens":60,"tools":{tools},"tool_choice":{choice},
               "messages":[{{"role":"user","content":"{question}"}}]"#
        );
        let stream = exchange(
            test.address,
            &post(
                "/v1/chat/completions",
                &format!(r#"{{"stream":true,{fields}}}"#),
            ),
        )
        .await;
        assert_eq!(stream.status, 200);
        let chunks: Vec<serde_json::Value> = json_chunks(&stream);
        let pieces: Vec<&serde_json::Value> = chunks
            .iter()
            .filter_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].as_array())
            .map(|calls| {
                assert_eq!(calls.len(), 1, "one piece per chunk");
                &calls[0]
            })
            .collect();
        let (first, rest) = pieces.split_first().expect("a call");
        assert!(first["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_")));
        assert_eq!(first["type"], "function");
        assert_eq!(first["function"]["arguments"], "", "the name comes first");
        let name = first["function"]["name"].as_str().expect("a name");
        if let Some(wanted) = wanted {
            assert_eq!(name, wanted);
        }
        let mut arguments = String::new();
        for piece in rest {
            assert_eq!(piece["index"], 0);
            assert!(piece.get("id").is_none() && piece["function"].get("name").is_none());
            arguments.push_str(piece["function"]["arguments"].as_str().expect("text"));
        }
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_none_or(str::is_empty)),
            "no content beside a forced call"
        );
        let finish = chunks
            .iter()
            .find_map(|chunk| chunk["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("tool_calls"));

        let value: serde_json::Value = serde_json::from_str(&arguments)
            .unwrap_or_else(|error| panic!("{arguments:?} is not JSON: {error}"));
        let object = value.as_object().expect("an object");
        let short_string = |key: &str| {
            object[key]
                .as_str()
                .is_some_and(|text| text.chars().count() <= 20)
        };
        match name {
            "get_weather" => {
                let keys: Vec<&String> = object.keys().collect();
                assert_eq!(keys, ["city", "unit"], "{arguments}");
                assert!(short_string("city"), "{arguments}");
                assert!(["celsius", "fahrenheit"].contains(&object["unit"].as_str().unwrap_or("")));
            }
            "get_time" => {
                let keys: Vec<&String> = object.keys().collect();
                assert_eq!(keys, ["zone"], "{arguments}");
                assert!(short_string("zone"), "{arguments}");
            }
            other => panic!("called a function that is not offered: {other}"),
        }

        let whole = json_body(
            &exchange(
                test.address,
                &post("/v1/chat/completions", &format!("{{{fields}}}")),
            )
            .await,
        );
        let choice = &whole["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{whole}");
        assert!(choice["message"]["content"].is_null(), "{whole}");
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_")));
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], name);
        assert_eq!(call["function"]["arguments"], arguments.as_str());
    }

    // The history's calls and results are rendered for the model.
    let history = r#""messages":[{"role":"user","content":"Weather in Oslo?"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_7","type":"function",
         "function":{"name":"get_weather","arguments":"{\"city\": \"Oslo\"}"}}]},
        {"role":"tool","tool_call_id":"call_7","content":"minus three"}]"#;
    let tokens =
        json_body(&exchange(test.address, &post("/tokenize", &format!("{{{history}}}"))).await);
    let text = json_body(
        &exchange(
            test.address,
            &post(
                "/detokenize",
                &format!(r#"{{"tokens":{}}}"#, tokens["tokens"]),
            ),
        )
        .await,
    );
    let prompt = text["prompt"].as_str().expect("text");
    assert!(
        prompt.contains(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
        ) && prompt.contains("<tool_response>\nminus three\n</tool_response>"),
        "{prompt}"
    );
    let answer = exchange(
        test.address,
        &post(
            "/v1/chat/completions",
            &format!(r#"{{"max_tokens":8,"tools":{tools},{history}}}"#),
        ),
    )
    .await;
    assert_eq!(answer.status, 200);
}

/// `n` choices: each streams under its own index with its own role and finish chunk, the
/// usage chunk counts them all, and choice `i` of a seeded request is the answer of the same
/// request alone with the seed moved by `i`. The whole answer lists the same choices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_choices_stream_under_their_indexes() {
    use super::dialects::json_body;
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let ask = r#""temperature":1,"max_tokens":16,"messages":[{"role":"user","content":"Write a story about a dragon."}]"#;
    let stream = exchange(
        test.address,
        &post(
            "/v1/chat/completions",
            &format!(
                r#"{{"stream":true,"stream_options":{{"include_usage":true}},"n":3,"seed":5,{ask}}}"#
            ),
        ),
    )
    .await;
    assert_eq!(stream.status, 200);
    let chunks: Vec<serde_json::Value> = json_chunks(&stream);
    let mut texts = vec![String::new(); 3];
    let mut roles = [0; 3];
    let mut finishes = [0; 3];
    for chunk in &chunks[..chunks.len() - 1] {
        let choice = &chunk["choices"][0];
        let index = choice["index"].as_u64().expect("an index") as usize;
        assert_eq!(
            finishes[index], 0,
            "nothing after a choice's finish: {chunk}"
        );
        if choice["delta"]["role"] == "assistant" {
            roles[index] += 1;
        }
        texts[index].push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        if !choice["finish_reason"].is_null() {
            finishes[index] += 1;
        }
    }
    assert_eq!(roles, [1, 1, 1]);
    assert_eq!(finishes, [1, 1, 1]);
    let usage = &chunks[chunks.len() - 1]["usage"];
    assert_eq!(
        usage["completion_tokens"], 48,
        "three choices of 16: {usage}"
    );

    for (index, text) in texts.iter().enumerate() {
        let alone = json_body(
            &exchange(
                test.address,
                &post(
                    "/v1/chat/completions",
                    &format!(r#"{{"seed":{},{ask}}}"#, 5 + index),
                ),
            )
            .await,
        );
        assert_eq!(
            alone["choices"][0]["message"]["content"],
            text.as_str(),
            "choice {index} is seed {} alone",
            5 + index
        );
    }
    assert_ne!(texts[0], texts[1], "each choice samples with its own seed");

    let whole = json_body(
        &exchange(
            test.address,
            &post(
                "/v1/chat/completions",
                &format!(r#"{{"n":3,"seed":5,{ask}}}"#),
            ),
        )
        .await,
    );
    let choices = whole["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3);
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        assert_eq!(choice["message"]["content"], texts[index].as_str());
    }
    assert_eq!(whole["usage"], *usage);
}
