//! The transport's own behaviour, driven by a scripted engine: keep-alive, mid-stream errors,
//! auth, CORS, request ids, metrics, limits, timeouts and shutdown.

use std::time::Duration;

use llm_transport::{Backend, RateLimits, Script, TransportConfig};

use super::*;

const STREAM: &str = r#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const PLAIN: &str = r#"{"messages":[{"role":"user","content":"hi"}]}"#;

fn words() -> Script {
    Script::words("One two three four five.")
}

#[tokio::test]
async fn a_silent_stream_gets_keep_alive_comments() {
    let mut config = TransportConfig::default();
    config.keep_alive_interval = Duration::from_millis(50);
    let script = words().first_token_delay(Duration::from_millis(280));
    let test = scripted(script, config).await;
    let response = exchange(test.address, &post("/v1/chat/completions", STREAM)).await;
    let frames = frames(&response);
    assert!(frames[0].starts_with("data: {"), "the role chunk first");
    let comments = frames
        .iter()
        .take_while(|frame| !frame.contains("\"content\":\"One\""))
        .filter(|frame| *frame == ": keep-alive\n\n")
        .count();
    assert!(
        (3..=6).contains(&comments),
        "about one comment per 50 ms of the 280 ms wait, got {comments}: {frames:?}"
    );
    assert_eq!(streamed_text(&frames), "One two three four five.");
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
}

#[tokio::test]
async fn fields_outside_openais_schema_are_named_in_a_header() {
    let test = scripted(words(), TransportConfig::default()).await;
    let odd = r#"{"messages":[{"role":"user","content":"hi"}],"top_k":5,"guided_json":{},"név, 2":1,"user":"u"STREAM}"#;
    for stream in ["", r#","stream":true"#] {
        let body = odd.replace("STREAM", stream);
        let response = exchange(test.address, &post("/v1/chat/completions", &body)).await;
        assert_eq!(response.status, 200, "{body}");
        assert_eq!(
            response.header("x-ignored-fields"),
            Some("top_k, guided_json, n%C3%A9v%2C%202"),
            "{body}"
        );
    }
    let many: String = (0..20).map(|i| format!(r#","x{i}":{i}"#)).collect();
    let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}]{many}}}"#);
    let response = exchange(test.address, &post("/v1/chat/completions", &body)).await;
    let listed = response.header("x-ignored-fields").expect("the header");
    assert!(
        listed.starts_with("x0, x1, ") && listed.ends_with("x15, +4 more"),
        "{listed}"
    );
    let plain = exchange(test.address, &post("/v1/chat/completions", PLAIN)).await;
    assert_eq!(plain.header("x-ignored-fields"), None);
}

#[tokio::test]
async fn an_error_mid_stream_is_an_error_event_then_done() {
    let test = scripted(words().fail_after(2), TransportConfig::default()).await;
    let response = exchange(test.address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(response.status, 200);
    let frames = frames(&response);
    assert_eq!(frames.len(), 5, "{frames:?}");
    assert_eq!(streamed_text(&frames[..3]), "One two");
    assert!(
        frames[3].starts_with(r#"data: {"error":{"message":"#)
            && frames[3].ends_with("\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"),
        "{}",
        frames[3]
    );
    assert_eq!(frames[4], "data: [DONE]\n\n");
    test.wait_idle().await;
    assert_eq!(test.engine.stats().failed, 1);
}

#[tokio::test]
async fn api_keys_guard_the_api_but_not_health_or_metrics() {
    let mut config = TransportConfig::default();
    config.api_keys = vec!["first".to_owned(), "second".to_owned()];
    let test = scripted(words(), config).await;
    let chat = "/v1/chat/completions";
    for (path, headers, body, status) in [
        (chat, vec![], PLAIN, 401),
        (chat, vec!["Authorization: Bearer wrong"], PLAIN, 401),
        (chat, vec!["Authorization: Bearer second"], PLAIN, 200),
        ("/v1/models", vec![], "", 401),
        ("/v1/models", vec!["Authorization: Bearer first"], "", 200),
        ("/stream?q=hi", vec![], "", 401),
        ("/stream?q=hi&api_key=first", vec![], "", 200),
        ("/health", vec![], "", 200),
        ("/metrics", vec![], "", 200),
    ] {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let response = exchange(test.address, &request(method, path, &headers, body)).await;
        assert_eq!(response.status, status, "{path} {headers:?}");
        if status == 401 {
            let error = error_of(&response).error;
            assert_eq!(error.kind, "invalid_request_error");
            assert_eq!(error.code.as_deref(), Some("invalid_api_key"));
        }
    }
}

#[tokio::test]
async fn cors_preflight_and_headers_for_allowed_origins_only() {
    let mut config = TransportConfig::default();
    config.cors_origins = vec!["http://app.example".to_owned()];
    config.api_keys = vec!["key".to_owned()];
    let test = scripted(words(), config).await;
    let preflight = |origin: &str| {
        request(
            "OPTIONS",
            "/v1/chat/completions",
            &[
                &format!("Origin: {origin}"),
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: authorization, content-type",
            ],
            "",
        )
    };
    // A preflight needs no key: browsers never send credentials with it.
    let allowed = exchange(test.address, &preflight("http://app.example")).await;
    assert_eq!(allowed.status, 204);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(
        allowed.header("access-control-allow-methods"),
        Some("GET, POST, OPTIONS")
    );
    assert_eq!(
        allowed.header("access-control-allow-headers"),
        Some(
            "authorization, content-type, last-event-id, x-request-id, x-api-key, \
             anthropic-version, anthropic-beta, anthropic-dangerous-direct-browser-access"
        )
    );
    let refused = exchange(test.address, &preflight("http://evil.example")).await;
    assert_eq!(refused.status, 204);
    assert_eq!(refused.header("access-control-allow-origin"), None);

    let actual = exchange(
        test.address,
        &request(
            "POST",
            "/v1/chat/completions",
            &["Origin: http://app.example", "Authorization: Bearer key"],
            PLAIN,
        ),
    )
    .await;
    assert_eq!(actual.status, 200);
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(
        actual.header("access-control-expose-headers"),
        Some(
            "x-request-id, retry-after, x-ignored-fields, x-ratelimit-limit-requests, \
             x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, \
             x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
        )
    );
    // Errors carry the CORS headers too, so that scripts can read them.
    let unauthorized = exchange(
        test.address,
        &request(
            "POST",
            "/v1/chat/completions",
            &["Origin: http://app.example"],
            PLAIN,
        ),
    )
    .await;
    assert_eq!(unauthorized.status, 401);
    assert_eq!(
        unauthorized.header("access-control-allow-origin"),
        Some("http://app.example")
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let test = scripted(words(), TransportConfig::default()).await;
    let echoed = exchange(
        test.address,
        &request("GET", "/health", &["X-Request-Id: trace-42"], ""),
    )
    .await;
    assert_eq!(echoed.header("x-request-id"), Some("trace-42"));
    let made = exchange(test.address, &get("/health")).await;
    let id = made.header("x-request-id").expect("an id");
    assert!(id.starts_with("req-") && id.len() == 20, "{id}");
    // A header that is not a sane token is replaced, not echoed.
    let replaced = exchange(
        test.address,
        &request(
            "GET",
            "/health",
            &[&format!("X-Request-Id: {}", "x".repeat(200))],
            "",
        ),
    )
    .await;
    assert!(replaced
        .header("x-request-id")
        .is_some_and(|id| id.starts_with("req-")));
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_latencies() {
    let script = words().interval(Duration::from_millis(5));
    let test = scripted(script, TransportConfig::default()).await;
    let stream = exchange(test.address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(stream.status, 200);
    let plain = exchange(test.address, &post("/v1/chat/completions", PLAIN)).await;
    assert_eq!(plain.status, 200);
    let missing = exchange(test.address, &get("/nope")).await;
    assert_eq!(missing.status, 404);
    let wrong_method = exchange(test.address, &get("/v1/chat/completions")).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    test.wait_idle().await;

    let response = exchange(test.address, &get("/metrics")).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = String::from_utf8(response.body()).expect("UTF-8");
    for line in [
        "llm_requests_running 0",
        "llm_requests_waiting 0",
        "llm_generation_tokens_total 10",
        "llm_requests_cancelled_total 0",
        r#"llm_requests_total{endpoint="/v1/chat/completions",status="200"} 2"#,
        r#"llm_requests_total{endpoint="other",status="404"} 1"#,
        r#"llm_requests_total{endpoint="/v1/chat/completions",status="405"} 1"#,
        "llm_time_to_first_token_seconds_count 2",
        "llm_inter_token_latency_seconds_count 8",
        "llm_e2e_request_latency_seconds_count 2",
        "llm_request_queue_time_seconds_count 2",
        "llm_open_connections 1",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    for name in [
        "llm_prompt_tokens_total",
        "llm_time_to_first_token_seconds_bucket",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_at_once() {
    let mut config = TransportConfig::default();
    config.max_connections = 1;
    let test = scripted(words(), config).await;
    // One connection held open (HTTP/1.1 keep-alive after a request).
    let mut held = send(test.address, &get("/health")).await;
    assert_eq!(read_head(&mut held).await.0, 200);
    let refused = exchange(test.address, &get("/health")).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        error_of(&refused).error.code.as_deref(),
        Some("too_many_connections")
    );
    drop(held);
    // The slot frees when the held connection closes.
    for _ in 0..100 {
        if exchange(test.address, &get("/health")).await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the connection slot was not released");
}

/// A flood of connections past the limit: each one gets its 503 and is closed, and none of
/// them holds a task on the server (a connect flood cannot grow tasks past the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_past_the_limit_holds_no_task() {
    let mut config = TransportConfig::default();
    config.max_connections = 2;
    let test = scripted(words(), config).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut connection = send(test.address, &get("/health")).await;
        assert_eq!(read_head(&mut connection).await.0, 200);
        held.push(connection);
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    // Clients that connect and never read: their sockets stay open on this side.
    let mut flood = Vec::new();
    let mut most = before;
    for _ in 0..300 {
        flood.push(TcpStream::connect(test.address).await.expect("connect"));
        most = most.max(metrics.num_alive_tasks());
    }
    assert!(
        most <= before + 1,
        "{before} tasks before the flood, {most} during it"
    );
    // Every one of them was answered and closed by the server.
    for mut socket in flood {
        let mut answer = String::new();
        socket
            .read_to_string(&mut answer)
            .await
            .expect("the 503, then the close");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(
            answer.contains(r#""code":"too_many_connections""#),
            "{answer}"
        );
    }
    drop(held);
}

#[tokio::test]
async fn a_slow_non_streaming_request_times_out_with_504_and_is_cancelled() {
    let mut config = TransportConfig::default();
    config.request_timeout = Duration::from_millis(100);
    let test = scripted(words().interval(Duration::from_secs(1)), config).await;
    let response = exchange(test.address, &post("/v1/chat/completions", PLAIN)).await;
    assert_eq!(response.status, 504);
    assert_eq!(error_of(&response).error.code.as_deref(), Some("timeout"));
    test.wait_idle().await;
    assert_eq!(test.engine.stats().cancelled, 1);
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_do_not_block_others() {
    let mut config = TransportConfig::default();
    config.header_read_timeout = Duration::from_millis(200);
    let test = scripted(words(), config).await;
    let mut slow = TcpStream::connect(test.address).await.expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: te")
        .await
        .expect("partial headers");
    // Others are served while the slow client dawdles.
    assert_eq!(exchange(test.address, &get("/health")).await.status, 200);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the slow connection was closed by the header timeout"
    );
}

#[tokio::test]
async fn at_the_shutdown_deadline_open_streams_end_with_an_error_and_done() {
    let script = Script::words(&"word ".repeat(200)).interval(Duration::from_millis(20));
    let mut test = scripted_with_grace(
        script,
        TransportConfig::default(),
        Duration::from_millis(300),
    )
    .await;
    let mut reader = send(test.address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(read_head(&mut reader).await.0, 200);
    read_chunk(&mut reader).await.expect("the role chunk");
    test.shut_down();
    // New requests are refused while the open stream finishes its grace.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut frames = Vec::new();
    while let Some(chunk) = read_chunk(&mut reader).await {
        frames.push(String::from_utf8(chunk).expect("UTF-8"));
    }
    let n = frames.len();
    assert!(
        n > 5,
        "tokens kept flowing during the grace period: {frames:?}"
    );
    assert!(
        frames[n - 2].contains(r#""code":"shutting_down""#),
        "{}",
        frames[n - 2]
    );
    assert_eq!(frames[n - 1], "data: [DONE]\n\n");
    let served = tokio::time::timeout(Duration::from_secs(5), &mut test.serving)
        .await
        .expect("serve returns after the deadline");
    assert!(served.expect("no panic").is_ok());
    test.wait_idle().await;
}

#[tokio::test]
async fn shutdown_lets_streams_finish_within_the_grace() {
    let script = words().interval(Duration::from_millis(20));
    let mut test =
        scripted_with_grace(script, TransportConfig::default(), Duration::from_secs(5)).await;
    let mut reader = send(test.address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(read_head(&mut reader).await.0, 200);
    test.shut_down();
    let mut frames = Vec::new();
    while let Some(chunk) = read_chunk(&mut reader).await {
        frames.push(String::from_utf8(chunk).expect("UTF-8"));
    }
    assert_eq!(streamed_text(&frames), "One two three four five.");
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    let served = tokio::time::timeout(Duration::from_secs(2), &mut test.serving)
        .await
        .expect("serve returns once the stream is done");
    assert!(served.expect("no panic").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_does_not_hold_back_other_streams() {
    // Tokens of 4 KiB as fast as they can go: a client that reads nothing fills its socket
    // buffers and then its stream's bounded buffer within milliseconds.
    let big = format!(" {}", "x".repeat(4096));
    let script = Script::words(&big.repeat(2000));
    let test = scripted(script, TransportConfig::default()).await;
    let mut stalled = send(test.address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(read_head(&mut stalled).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another client gets its whole answer meanwhile.
    let short = r#"{"stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        exchange(test.address, &post("/v1/chat/completions", short)),
    )
    .await
    .expect("the other stream is not held back");
    assert_eq!(
        frames(&other).last().map(String::as_str),
        Some("data: [DONE]\n\n")
    );
    assert_eq!(streamed_text(&frames(&other)).len(), 50 * 4097);
    // The stalled stream is still open, waiting for its reader: nothing was dropped.
    assert_eq!(test.engine.stats().running, 1);
    drop(stalled);
    test.wait_idle().await;
}

/// `n` choices on the wire: a role chunk per index first, each choice's deltas and one finish
/// chunk under its index, then the usage of all of them and `[DONE]`. More than
/// `max_choices` is a 400 naming `n`, and a choice the engine refuses refuses the request
/// and cancels the choices already started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_choices_are_chunks_under_their_indexes() {
    let mut config = TransportConfig::default();
    config.max_choices = 2;
    let test = scripted(words(), config).await;
    let ask = |n: u32| {
        format!(
            r#"{{"stream":true,"stream_options":{{"include_usage":true}},"n":{n},
                "messages":[{{"role":"user","content":"x"}}]}}"#
        )
    };
    let response = exchange(test.address, &post("/v1/chat/completions", &ask(2))).await;
    assert_eq!(response.status, 200);
    let chunks: Vec<serde_json::Value> = frames(&response)
        .iter()
        .filter_map(|frame| frame.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data.trim()).unwrap_or(serde_json::Value::Null))
        .collect();
    let shape: Vec<String> = chunks
        .iter()
        .map(|chunk| {
            let Some(choice) = chunk["choices"].get(0) else {
                return match &chunk["usage"] {
                    serde_json::Value::Null => "done".to_owned(),
                    usage => format!("usage {}", usage["completion_tokens"]),
                };
            };
            let index = &choice["index"];
            match (&choice["delta"]["role"], &choice["finish_reason"]) {
                (serde_json::Value::String(_), _) => format!("{index} role"),
                (_, serde_json::Value::String(reason)) => format!("{index} {reason}"),
                _ => format!("{index} text"),
            }
        })
        .collect();
    assert_eq!(&shape[..2], ["0 role", "1 role"], "{shape:?}");
    assert_eq!(&shape[shape.len() - 2..], ["usage 10", "done"], "{shape:?}");
    for index in 0..2 {
        let mine: Vec<&String> = shape
            .iter()
            .filter(|line| line.starts_with(&format!("{index} ")))
            .collect();
        assert_eq!(mine.len(), 1 + 5 + 1, "{index}: {shape:?}");
        assert_eq!(mine[6], &format!("{index} stop"), "{shape:?}");
    }

    let refused = exchange(test.address, &post("/v1/chat/completions", &ask(3))).await;
    assert_eq!(refused.status, 400);
    assert_eq!(error_of(&refused).error.param.as_deref(), Some("n"));

    let busy = serve_scripted(
        ScriptedEngine::new(words()).capacity(1),
        TransportConfig::default(),
        Duration::from_secs(1),
    )
    .await;
    let overloaded = exchange(busy.address, &post("/v1/chat/completions", &ask(2))).await;
    assert_eq!(overloaded.status, 429, "the second choice finds no room");
    busy.wait_idle().await;
}

/// Per-client limits: every `/v1/*` answer carries OpenAI's `x-ratelimit-*` headers, the
/// request past the limit gets 429 `rate_limit_exceeded` with `Retry-After` before any work,
/// on every generating route (a WebSocket turn included), and each API key has its own
/// bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_rate_limit_gets_429_with_openais_headers() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    use super::websocket::{connect, receive};
    let mut config = TransportConfig::default();
    config.api_keys = vec!["alpha".to_owned(), "beta".to_owned()];
    config.rate_limits = RateLimits {
        requests_per_minute: Some(3),
        tokens_per_minute: Some(10_000),
        concurrency: None,
    };
    let test = scripted(words(), config).await;
    let with_key = |key: &str, path: &str, body: &str| {
        request(
            "POST",
            path,
            &[
                &format!("Authorization: Bearer {key}"),
                "Content-Type: application/json",
            ],
            body,
        )
    };
    let chat = r#"{"max_tokens":10,"messages":[{"role":"user","content":"12345678"}]}"#;
    let mut remaining = Vec::new();
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = if path == "/v1/completions" {
            r#"{"prompt":"12345678","max_tokens":10}"#
        } else {
            chat
        };
        let answer = exchange(test.address, &with_key("alpha", path, body)).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(answer.header("x-ratelimit-limit-tokens"), Some("10000"));
        assert!(answer.header("x-ratelimit-reset-requests").is_some());
        remaining.push(
            answer
                .header("x-ratelimit-remaining-requests")
                .map(str::to_owned),
        );
    }
    assert_eq!(remaining, [Some("2".to_owned()), Some("1".to_owned())]);
    // Tokens are charged (2 for the prompt, 10 for max_tokens) and settled to what was used.
    let models = exchange(
        test.address,
        &request("GET", "/v1/models", &["Authorization: Bearer alpha"], ""),
    )
    .await;
    let tokens: u32 = models
        .header("x-ratelimit-remaining-tokens")
        .and_then(|value| value.parse().ok())
        .expect("remaining tokens");
    assert!((10_000 - 2 * 12..10_000).contains(&tokens), "{tokens}");

    // The third request, over the WebSocket: a turn is a request.
    let mut socket = connect(test.address, "?api_key=alpha").await;
    socket.send(Message::text(chat)).await.expect("sent");
    loop {
        let message = receive(&mut socket).await;
        if message["type"] == "done" {
            break;
        }
        assert_eq!(message["type"], "token", "{message}");
    }
    socket.send(Message::text(chat)).await.expect("sent");
    let refused = receive(&mut socket).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["error"]["code"], "rate_limit_exceeded");

    let refused = exchange(
        test.address,
        &with_key("alpha", "/v1/chat/completions", chat),
    )
    .await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        error_of(&refused).error.code.as_deref(),
        Some("rate_limit_exceeded")
    );
    assert_eq!(error_of(&refused).error.kind, "requests");
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .expect("Retry-After");
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(
        test.engine.stats().started,
        3,
        "the refused request started nothing"
    );

    let metrics = exchange(test.address, &get("/metrics")).await;
    let text = String::from_utf8(metrics.body()).expect("UTF-8");
    assert!(
        text.contains(r#"llm_rate_limited_total{client="key-1",limit="requests"} 2"#),
        "{text}"
    );

    // Another key has its own limits.
    let other = exchange(
        test.address,
        &with_key("beta", "/v1/chat/completions", chat),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("x-ratelimit-remaining-requests"), Some("2"));
}

/// A client's concurrent requests: the one past the limit is refused while the others run,
/// and the slot comes back when a stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_past_the_limit_are_refused_until_one_ends() {
    let mut config = TransportConfig::default();
    config.rate_limits = RateLimits {
        concurrency: Some(1),
        ..RateLimits::default()
    };
    let script = Script::words("a b c d e f g h").interval(Duration::from_millis(50));
    let test = scripted(script, config).await;
    let body = r#"{"stream":true,"messages":[{"role":"user","content":"x"}]}"#;
    let mut running = send(test.address, &post("/v1/chat/completions", body)).await;
    assert_eq!(read_head(&mut running).await.0, 200);
    let refused = exchange(test.address, &post("/v1/chat/completions", body)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    while read_chunk(&mut running).await.is_some() {}
    test.wait_idle().await;
    let mut admitted = None;
    for _ in 0..100 {
        let answer = exchange(test.address, &post("/v1/chat/completions", body)).await;
        if answer.status == 200 {
            admitted = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        admitted.is_some(),
        "the slot came back when the stream ended"
    );
}

/// A keys file: named keys with their own limits and models; a reload takes effect for new
/// requests at once while a stream admitted under the old file runs on to its end, and a file
/// that does not read leaves the keys in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_file_gives_keys_names_limits_and_models_and_reloads_under_a_running_stream() {
    let dir = std::env::temp_dir().join(format!("llm-stream-keys-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder");
    let path = dir.join("keys.toml");
    let keys = |text: &str| std::fs::write(&path, text).expect("written");
    keys(
        r#"
        [[keys]]
        name = "alice"
        key = "alpha"
        requests_per_minute = 2

        [[keys]]
        name = "other-model"
        key = "omega"
        models = ["another"]
        "#,
    );
    let mut config = TransportConfig::default();
    config.api_keys_file = Some(path.clone());
    config.rate_limits = RateLimits {
        requests_per_minute: Some(100),
        ..RateLimits::default()
    };
    let script = Script::words("a b c d e f g h i j").interval(Duration::from_millis(30));
    let test = scripted(script, config).await;
    let chat = |key: &str, stream: bool| {
        request(
            "POST",
            "/v1/chat/completions",
            &[
                &format!("Authorization: Bearer {key}"),
                "Content-Type: application/json",
            ],
            &format!(r#"{{"stream":{stream},"messages":[{{"role":"user","content":"x"}}]}}"#),
        )
    };
    let models = |key: &str| {
        request(
            "GET",
            "/v1/models",
            &[&format!("Authorization: Bearer {key}")],
            "",
        )
    };

    // The key's own limit, not the default.
    let mut running = send(test.address, &chat("alpha", true)).await;
    let (status, headers) = read_head(&mut running).await;
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("x-ratelimit-limit-requests".to_owned(), "2".to_owned())),
        "{headers:?}"
    );
    // A key limited to another model: 404 model_not_found, and /v1/models lists nothing.
    let refused = exchange(test.address, &chat("omega", false)).await;
    assert_eq!(refused.status, 404);
    assert_eq!(
        error_of(&refused).error.code.as_deref(),
        Some("model_not_found")
    );
    let listed = exchange(test.address, &models("omega")).await;
    let listed: serde_json::Value = serde_json::from_slice(&listed.body()).expect("JSON");
    assert_eq!(listed["data"], serde_json::json!([]));

    // Reload while alice's stream runs: alice is gone, bob is new.
    keys("[[keys]]\nname = \"bob\"\nkey = \"bravo\"\n");
    assert_eq!(test.server.reload_keys().expect("a valid file"), 1);
    assert_eq!(exchange(test.address, &models("alpha")).await.status, 401);
    let bob = exchange(test.address, &models("bravo")).await;
    assert_eq!(bob.status, 200);
    assert_eq!(
        bob.header("x-ratelimit-limit-requests"),
        Some("100"),
        "the default"
    );
    let mut text = String::new();
    while let Some(chunk) = read_chunk(&mut running).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains(r#""finish_reason":"stop""#), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // A file that does not read: refused, bob still in force.
    keys("[[keys]]\nname = \"broken\"\n");
    let error = test.server.reload_keys().expect_err("no key in the entry");
    assert!(error.to_string().contains("keys[0]"), "{error}");
    assert_eq!(exchange(test.address, &models("bravo")).await.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
