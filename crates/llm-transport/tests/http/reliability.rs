//! The reliability suite's fast parts: a disconnect storm, idle sockets, an overload burst,
//! slow headers, and a corpus of malformed requests. `llm-bench reliability` adds the slow
//! parts (memory baseline, SIGTERM under load).

use std::time::Duration;

use futures_util::future::join_all;
use llm_transport::{Backend, Script, ScriptedEngine, TransportConfig};

use super::*;

const STREAM: &str = r#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_storm_cancels_every_generation() {
    // Each generation would run for 400 tokens at 5 ms, two seconds: one that finishes was
    // not cancelled when its client left.
    let script = Script::words(&"word ".repeat(400)).interval(Duration::from_millis(5));
    let test = scripted(script, TransportConfig::default()).await;
    // Seeded, so that a failure can be replayed.
    let mut random = fastrand::Rng::with_seed(7);
    let clients = (0..100).map(|_| {
        let chunks = random.usize(1..=20);
        let address = test.address;
        async move {
            let mut reader = send(address, &post("/v1/chat/completions", STREAM)).await;
            assert_eq!(read_head(&mut reader).await.0, 200);
            for _ in 0..chunks {
                read_chunk(&mut reader).await.expect("a chunk");
            }
            // Dropping the socket mid-stream.
        }
    });
    join_all(clients).await;
    // A bound on the wait, so that a hang fails rather than blocks; not a speed claim.
    for _ in 0..1000 {
        let stats = test.engine.stats();
        if stats.running == 0 && stats.cancelled == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = test.engine.stats();
    assert_eq!(
        (stats.running, stats.cancelled, stats.finished),
        (0, 100, 0),
        "every generation cancelled, none run to its end: {stats:?}"
    );
    // Connections are released too: only the scrape's own is open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics =
        String::from_utf8(exchange(test.address, &get("/metrics")).await.body()).expect("UTF-8");
    assert!(
        metrics.lines().any(|line| line == "llm_open_connections 1"),
        "{metrics}"
    );
    assert!(metrics
        .lines()
        .any(|line| line == "llm_requests_cancelled_total 100"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_do_not_stop_new_requests() {
    let test = scripted(Script::words("Still here."), TransportConfig::default()).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(test.address).await.expect("connect"));
    }
    let response = exchange(test.address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&frames(&response)), "Still here.");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_burst_gets_429s_none_hangs_and_service_resumes() {
    let (server, address) = listen(TransportConfig::default()).await;
    let script = Script::words(&"busy ".repeat(20)).interval(Duration::from_millis(10));
    let engine = ScriptedEngine::new(script).capacity(4);
    server.set_engine(engine.clone());
    let raw = post("/v1/chat/completions", STREAM);
    let burst = (0..50).map(|_| exchange(address, &raw));
    let responses = tokio::time::timeout(Duration::from_secs(10), join_all(burst))
        .await
        .expect("no request hangs");
    let (mut served, mut refused) = (0, 0);
    for response in &responses {
        match response.status {
            200 => {
                assert_eq!(
                    frames(response).last().map(String::as_str),
                    Some("data: [DONE]\n\n")
                );
                served += 1;
            }
            429 => {
                assert_eq!(response.header("retry-after"), Some("1"));
                assert_eq!(error_of(response).error.code.as_deref(), Some("queue_full"));
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(served + refused, 50, "every request got an answer");
    assert!(
        served >= 4 && refused >= 1,
        "{served} served, {refused} refused"
    );
    // After the burst the server serves normally.
    let after = exchange(address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(after.status, 200);
    assert_eq!(engine.stats().running, 0);
}

#[tokio::test]
async fn headers_sent_byte_by_byte_within_the_timeout_are_served() {
    let test = scripted(Script::words("Hi."), TransportConfig::default()).await;
    let mut socket = TcpStream::connect(test.address).await.expect("connect");
    for byte in get("/health") {
        socket.write_all(&[byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut reader = BufReader::new(socket);
    assert_eq!(read_head(&mut reader).await.0, 200);
}

/// Builds `{"messages":[{"role":"user","content":"x"}], FIELD}` around one field.
fn with(field: &str) -> String {
    format!(r#"{{"messages":[{{"role":"user","content":"x"}}],{field}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_in_openai_shape_and_never_5xx() {
    let mut config = TransportConfig::default();
    config.body_limit = 1 << 20;
    let test = scripted(Script::words("Fine."), config).await;
    let chat = "/v1/chat/completions";
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(2 << 20)
    );
    // (name, request, status, param) for requests that reach the router. Parameters the real
    // engine refuses (`seed`, `n` above 1) are covered by the real-model tests.
    let json_cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("truncated JSON", "{".into(), 400, None),
        ("empty body", String::new(), 400, None),
        ("null", "null".into(), 400, None),
        ("array", "[]".into(), 400, None),
        ("string", r#""hi""#.into(), 400, None),
        ("number", "42".into(), 400, None),
        (
            "trailing garbage",
            format!("{} xyz", with(r#""n":1"#)),
            400,
            None,
        ),
        (
            "messages a string",
            r#"{"messages":"hi"}"#.into(),
            400,
            Some("messages"),
        ),
        (
            "messages empty",
            r#"{"messages":[]}"#.into(),
            400,
            Some("messages"),
        ),
        (
            "message empty",
            r#"{"messages":[{}]}"#.into(),
            400,
            Some("messages[0].role"),
        ),
        (
            "no content",
            r#"{"messages":[{"role":"user"}]}"#.into(),
            400,
            Some("messages[0].content"),
        ),
        (
            "unknown role",
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#.into(),
            400,
            Some("messages[0].role"),
        ),
        (
            "role a number",
            r#"{"messages":[{"role":1,"content":"x"}]}"#.into(),
            400,
            Some("messages[0].role"),
        ),
        (
            "content a number",
            r#"{"messages":[{"role":"user","content":5}]}"#.into(),
            400,
            Some("messages[0].content"),
        ),
        (
            "negative max_tokens",
            with(r#""max_tokens":-1"#),
            400,
            Some("max_tokens"),
        ),
        (
            "zero max_tokens",
            with(r#""max_tokens":0"#),
            400,
            Some("max_tokens"),
        ),
        (
            "text max_tokens",
            with(r#""max_tokens":"ten""#),
            400,
            Some("max_tokens"),
        ),
        (
            "fractional max_tokens",
            with(r#""max_tokens":1.5"#),
            400,
            Some("max_tokens"),
        ),
        (
            "enormous max_tokens",
            with(r#""max_tokens":1e20"#),
            400,
            Some("max_tokens"),
        ),
        (
            "negative max_completion_tokens",
            with(r#""max_completion_tokens":-3"#),
            400,
            Some("max_completion_tokens"),
        ),
        (
            "cold temperature",
            with(r#""temperature":-1"#),
            400,
            Some("temperature"),
        ),
        (
            "hot temperature",
            with(r#""temperature":3"#),
            400,
            Some("temperature"),
        ),
        (
            "text temperature",
            with(r#""temperature":"hot""#),
            400,
            Some("temperature"),
        ),
        ("top_p above 1", with(r#""top_p":2"#), 400, Some("top_p")),
        (
            "presence_penalty",
            with(r#""presence_penalty":5"#),
            400,
            Some("presence_penalty"),
        ),
        (
            "frequency_penalty",
            with(r#""frequency_penalty":-5"#),
            400,
            Some("frequency_penalty"),
        ),
        (
            "stream a string",
            with(r#""stream":"yes""#),
            400,
            Some("stream"),
        ),
        (
            "stream_options a number",
            with(r#""stream":true,"stream_options":5"#),
            400,
            Some("stream_options"),
        ),
        ("stop a number", with(r#""stop":5"#), 400, Some("stop")),
        (
            "five stops",
            with(r#""stop":["a","b","c","d","e"]"#),
            400,
            Some("stop"),
        ),
        ("empty stop", with(r#""stop":[""]"#), 400, Some("stop[0]")),
        ("zero choices", with(r#""n":0"#), 400, Some("n")),
        ("model a number", with(r#""model":5"#), 400, Some("model")),
        (
            "unknown model",
            with(r#""model":"gpt-4o""#),
            404,
            Some("model"),
        ),
        (
            "resumable without stream",
            with(r#""resumable":true"#),
            400,
            Some("resumable"),
        ),
        (
            "deep nesting in messages",
            format!(r#"{{"messages":{deep}}}"#),
            400,
            None,
        ),
        (
            "deep nesting in an unknown field",
            format!(r#"{{"extra":{deep},"messages":[]}}"#),
            400,
            None,
        ),
        (
            "lone surrogate",
            r#"{"messages":[{"role":"user","content":"\ud800"}]}"#.into(),
            400,
            None,
        ),
        (
            "duplicate field",
            r#"{"messages":[],"messages":[]}"#.into(),
            400,
            None,
        ),
        ("huge string over the body limit", huge, 413, None),
    ];
    let mut cases: Vec<(String, Vec<u8>, u16, Option<&str>)> = json_cases
        .into_iter()
        .map(|(name, body, status, param)| (name.to_owned(), post(chat, &body), status, param))
        .collect();
    let mut invalid_utf8 = post(chat, r#"{"messages":[{"role":"user","content":"..."}]}"#);
    let at = invalid_utf8.len() - 6;
    invalid_utf8[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let raw: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("invalid UTF-8 in the body", invalid_utf8, 400, None),
        ("GET on the chat route", get(chat), 405, None),
        (
            "PUT on models",
            request("PUT", "/v1/models", &[], "{}"),
            405,
            None,
        ),
        ("unknown path", get("/v2/chat"), 404, None),
        (
            "declared body over the limit",
            format!("POST {chat} HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n")
                .into_bytes(),
            413,
            None,
        ),
        (
            "bad chunked body",
            format!("POST {chat} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .into_bytes(),
            400,
            None,
        ),
        (
            "bad bearer scheme",
            request("GET", "/v1/models", &["Authorization: Basic abc"], ""),
            200,
            None,
        ),
        (
            "resume of an unknown stream",
            get("/v1/chat/completions/chatcmpl-x/stream"),
            404,
            None,
        ),
        (
            "garbage Last-Event-ID",
            request("GET", "/stream", &["Last-Event-ID: garbage"], ""),
            400,
            Some("last_event_id"),
        ),
        (
            "stream without a question",
            get("/stream?max_tokens=3"),
            400,
            Some("q"),
        ),
        (
            "stream with a text temperature",
            get("/stream?q=hi&temperature=abc"),
            400,
            Some("temperature"),
        ),
        (
            "stream with bad messages",
            get("/stream?messages=notjson"),
            400,
            Some("messages"),
        ),
        (
            "stream with negative max_tokens",
            get("/stream?q=hi&max_tokens=-5"),
            400,
            Some("max_tokens"),
        ),
        (
            "WebSocket route without upgrade",
            get("/ws/chat"),
            400,
            None,
        ),
        (
            "WebSocket version 8",
            request(
                "GET",
                "/ws/chat",
                &[
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    "Sec-WebSocket-Version: 8",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                ],
                "",
            ),
            400,
            None,
        ),
        (
            "WebSocket without key",
            request(
                "GET",
                "/ws/chat",
                &[
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    "Sec-WebSocket-Version: 13",
                ],
                "",
            ),
            400,
            None,
        ),
        (
            "OPTIONS without preflight headers",
            request("OPTIONS", "/v1/models", &[], ""),
            405,
            None,
        ),
    ];
    cases.extend(
        raw.into_iter()
            .map(|(name, bytes, status, param)| (name.to_owned(), bytes, status, param)),
    );
    // Requests hyper refuses before routing (bad framing) get a bare 4xx and a closed
    // connection; what matters is the status and that the server keeps serving.
    let framing: Vec<(&str, Vec<u8>)> = vec![
        ("header without a colon", b"GET /health HTTP/1.1\r\nHost: t\r\nbroken\r\n\r\n".to_vec()),
        ("non-numeric Content-Length", b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n".to_vec()),
        ("two Content-Lengths", b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec()),
        ("huge header", format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(200_000)).into_bytes()),
        ("bad request line", b"HELLO\r\n\r\n".to_vec()),
        ("bad method token", b"G(T /health HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()),
    ];
    let total = cases.len() + framing.len();
    assert!(total >= 50, "the corpus has {total} requests");
    for (name, bytes, status, param) in cases {
        let response = exchange(test.address, &bytes).await;
        assert_eq!(response.status, status, "{name}");
        if status >= 400 {
            let error = error_of(&response).error;
            assert!(!error.message.is_empty(), "{name}");
            assert_eq!(error.kind, "invalid_request_error", "{name}");
            if param.is_some() {
                assert_eq!(error.param.as_deref(), param, "{name}: {}", error.message);
            }
        }
    }
    for (name, bytes) in framing {
        let mut reader = send(test.address, &bytes).await;
        let (status, _) = read_head(&mut reader).await;
        assert!((400..500).contains(&status), "{name}: {status}");
    }
    // Bad WebSocket frames: an unmasked client frame breaks the protocol; the socket closes and
    // the server goes on.
    let mut socket = TcpStream::connect(test.address).await.expect("connect");
    socket
        .write_all(&ws_handshake(&[]))
        .await
        .expect("handshake");
    let mut reader = BufReader::new(socket);
    assert_eq!(read_head(&mut reader).await.0, 101);
    reader
        .get_mut()
        .write_all(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'])
        .await
        .expect("an unmasked frame");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the socket is closed after a protocol error"
    );
    // The server never crashed and still answers.
    let health = exchange(test.address, &get("/health")).await;
    assert_eq!(health.status, 200);
    let fine = exchange(test.address, &post(chat, STREAM)).await;
    assert_eq!(streamed_text(&frames(&fine)), "Fine.");
}
