//! The real model's engine dying mid-generation: every request it held says so in its own
//! shape, none ends as if it succeeded, health and metrics count the restart, and the server
//! keeps serving.

use futures_util::SinkExt;
use llm_engine::Engine;
use llm_transport::TransportConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{connect, receive};
use super::*;

const QUESTION: &str = r#"{"temperature":0,"max_tokens":32,"messages":[{"role":"user","content":"What is the capital of France? Answer in one sentence."}]}"#;

const LONG: &str = "Write a very long story about a lighthouse keeper and her cat.";

fn chat(stream: bool, resumable: bool) -> String {
    json!({
        "stream": stream,
        "resumable": resumable,
        "temperature": 0,
        "max_tokens": 1500,
        "messages": [{"role": "user", "content": LONG}],
    })
    .to_string()
}

/// The `data:` payloads of SSE frames.
fn payloads(frames: &[String]) -> Vec<String> {
    frames
        .iter()
        .flat_map(|frame| frame.lines())
        .filter_map(|line| line.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

/// Asserts that a stream's events end with an `engine_failed` error, then `[DONE]`, and that no
/// chunk before it claimed a finish.
fn assert_failed_stream(label: &str, data: &[String]) {
    let n = data.len();
    assert!(n >= 3, "{label}: {data:?}");
    assert_eq!(data[n - 1], "[DONE]", "{label}");
    let error: Value = serde_json::from_str(&data[n - 2]).expect("JSON");
    assert_eq!(error["error"]["type"], "server_error", "{label}: {error}");
    assert_eq!(error["error"]["code"], "engine_failed", "{label}: {error}");
    for chunk in &data[..n - 2] {
        let chunk: Value = serde_json::from_str(chunk).expect("JSON");
        assert!(
            chunk["choices"][0]["finish_reason"].is_null(),
            "{label}: no finish before the error: {chunk}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_failure_fails_every_request_it_held_and_the_server_recovers() {
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let address = test.address;
    let before = exchange(address, &post("/v1/chat/completions", QUESTION)).await;
    assert_eq!(before.status, 200);

    // A stream, a resumable stream, a whole response and a WebSocket turn, all generating.
    let mut plain = send(address, &post("/v1/chat/completions", &chat(true, false))).await;
    assert_eq!(read_head(&mut plain).await.0, 200);
    let mut resumable = send(address, &post("/v1/chat/completions", &chat(true, true))).await;
    assert_eq!(read_head(&mut resumable).await.0, 200);
    let whole = tokio::spawn(async move {
        exchange(address, &post("/v1/chat/completions", &chat(false, false))).await
    });
    let mut socket = connect(address, "").await;
    let mut turn: Value = serde_json::from_str(&chat(false, false)).expect("JSON");
    turn["type"] = json!("chat");
    socket
        .send(Message::text(turn.to_string()))
        .await
        .expect("send");
    let mut plain_frames = Vec::new();
    let mut resumable_frames = Vec::new();
    for _ in 0..4 {
        plain_frames
            .push(String::from_utf8(read_chunk(&mut plain).await.expect("chunk")).expect("UTF-8"));
        resumable_frames.push(
            String::from_utf8(read_chunk(&mut resumable).await.expect("chunk")).expect("UTF-8"),
        );
    }
    assert_eq!(receive(&mut socket).await["type"], "token");
    for _ in 0..500 {
        if test.engine.stats().running == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(test.engine.stats().running, 4);

    test.engine
        .crash_model_engine()
        .await
        .expect("the crash request is sent");

    while let Some(chunk) = read_chunk(&mut plain).await {
        plain_frames.push(String::from_utf8(chunk).expect("UTF-8"));
    }
    assert_failed_stream("stream", &payloads(&plain_frames));
    while let Some(chunk) = read_chunk(&mut resumable).await {
        resumable_frames.push(String::from_utf8(chunk).expect("UTF-8"));
    }
    assert_failed_stream("resumable stream", &payloads(&resumable_frames));
    // The replay log recorded the failure: a resume from the start replays it.
    let id = event_id(&resumable_frames[0])
        .and_then(|id| id.rsplit_once(':'))
        .map(|(id, _)| id.to_owned())
        .expect("resumable events carry ids");
    let replay = exchange(
        address,
        &request("GET", &format!("/v1/chat/completions/{id}/stream"), &[], ""),
    )
    .await;
    assert_eq!(replay.status, 200);
    assert_failed_stream("replayed log", &payloads(&frames(&replay)));

    let whole = whole.await.expect("the request task ends");
    assert_eq!(whole.status, 500);
    let error = error_of(&whole);
    assert_eq!(error.error.kind, "server_error");
    assert_eq!(error.error.code.as_deref(), Some("engine_failed"));

    loop {
        let message = receive(&mut socket).await;
        match message["type"].as_str() {
            Some("token") => continue,
            Some("error") => {
                assert_eq!(message["error"]["code"], "engine_failed", "{message}");
                break;
            }
            other => panic!("the WebSocket turn ended with {other:?}: {message}"),
        }
    }

    // Health and metrics show the restart, and the server answers again.
    let mut restarts = 0;
    for _ in 0..300 {
        restarts = test.engine.stats().engine_restarts;
        if restarts > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(restarts, 1);
    let health = exchange(address, &get("/health")).await;
    assert_eq!(health.body(), br#"{"status":"ok","engine_restarts":1}"#);
    let metrics =
        String::from_utf8(exchange(address, &get("/metrics")).await.body()).expect("UTF-8");
    assert!(metrics.contains("llm_engine_restarts_total 1"), "{metrics}");
    assert_eq!(test.engine.stats().failed, 4);

    // The same request answers as it did before the failure.
    let again = exchange(address, &post("/v1/chat/completions", QUESTION)).await;
    assert_eq!(again.status, 200);
    let answer = |response: &RawResponse| {
        let body: Value = serde_json::from_slice(&response.body()).expect("JSON");
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(answer(&again).contains("Paris"), "{}", answer(&again));
    assert_eq!(answer(&again), answer(&before));
}
