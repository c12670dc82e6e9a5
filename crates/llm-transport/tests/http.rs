//! Wire tests: raw HTTP/1.1 bytes over a real socket against the server running the real
//! default model. Where the format matters (SSE framing, headers), exact bytes are asserted.

use std::net::SocketAddr;
use std::time::Duration;

use llm_engine::{Engine, EngineBuilder};
use llm_protocol::{ChatCompletion, ChatStreamDecoder, ErrorBody, StreamEvent};
use llm_transport::{Server, TransportConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct TestServer {
    address: SocketAddr,
    engine: Engine,
    server: Server,
}

/// A server listening on a free loopback port, with no engine yet.
async fn listen(config: TransportConfig) -> (Server, SocketAddr) {
    let server = Server::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let serving = server.clone();
    tokio::spawn(async move {
        serving
            .serve(listener, std::future::pending(), Duration::from_secs(1))
            .await
    });
    (server, address)
}

async fn start(builder: EngineBuilder, config: TransportConfig) -> TestServer {
    let (server, address) = listen(config).await;
    let engine = builder.build().await.expect("the default model loads");
    server.set_engine(engine.clone());
    TestServer {
        address,
        engine,
        server,
    }
}

/// A response read off the socket: status line, headers, and the body's chunks as framed.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    /// One entry per HTTP chunk for chunked bodies; one entry for a sized body.
    chunks: Vec<Vec<u8>>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

async fn send(address: SocketAddr, raw_request: &[u8]) -> BufReader<TcpStream> {
    let mut socket = TcpStream::connect(address).await.expect("connect");
    socket.write_all(raw_request).await.expect("write request");
    BufReader::new(socket)
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header line");
        let trimmed = line.trim_end_matches("\r\n");
        if trimmed.is_empty() {
            return (status, headers);
        }
        let (name, value) = trimmed.split_once(':').expect("a header has a colon");
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
}

/// Reads one HTTP chunk; `None` at the terminating zero-size chunk.
async fn read_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size_line = String::new();
    reader.read_line(&mut size_line).await.expect("chunk size");
    let size = usize::from_str_radix(size_line.trim_end(), 16).expect("hex chunk size");
    let mut data = vec![0; size + 2];
    reader.read_exact(&mut data).await.expect("chunk data");
    assert!(data.ends_with(b"\r\n"), "chunk ends with CRLF");
    data.truncate(size);
    (size > 0).then_some(data)
}

async fn exchange(address: SocketAddr, raw_request: &[u8]) -> RawResponse {
    let mut reader = send(address, raw_request).await;
    let (status, headers) = read_head(&mut reader).await;
    let mut response = RawResponse {
        status,
        headers,
        chunks: Vec::new(),
    };
    if response.header("transfer-encoding") == Some("chunked") {
        while let Some(chunk) = read_chunk(&mut reader).await {
            response.chunks.push(chunk);
        }
    } else {
        let length: usize = response
            .header("content-length")
            .map_or(0, |length| length.parse().expect("numeric length"));
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.expect("body");
        response.chunks.push(body);
    }
    response
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
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

fn error_of(response: &RawResponse) -> ErrorBody {
    assert_eq!(response.header("content-type"), Some("application/json"));
    serde_json::from_slice(&response.body()).expect("an OpenAI error body")
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
                r#"{"messages":[{"role":"user","content":"x"}],"seed":1}"#,
            ),
            400,
            "invalid_request_error",
            Some("seed"),
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
    assert_eq!(ready.body(), br#"{"status":"ok"}"#);
    let models = exchange(address, &get("/v1/models")).await;
    let body = String::from_utf8(models.body()).expect("UTF-8");
    assert!(
        body.starts_with(
            r#"{"object":"list","data":[{"id":"SmolLM2-135M-Instruct","object":"model","created":"#
        ),
        "{body}"
    );
}
