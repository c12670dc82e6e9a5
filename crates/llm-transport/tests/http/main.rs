//! Wire tests: raw HTTP/1.1 bytes over a real socket. Where the format matters (SSE framing,
//! headers), exact bytes are asserted. `real` runs the real default model end to end, and
//! `failure` kills its engine mid-generation;
//! `soak` compares batched answers with solo ones over a seeded random schedule;
//! `scripted`, `resume` and `websocket` drive the transport with a scripted engine whose tokens
//! and faults are exactly timed.

mod dialects;
mod failure;
mod real;
mod reliability;
mod resume;
mod scripted;
mod soak;
mod websocket;

use std::net::SocketAddr;
use std::time::Duration;

use llm_engine::{Engine, EngineBuilder};
use llm_protocol::ErrorBody;
use llm_transport::{Backend, Script, ScriptedEngine, Server, TransportConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// A server running a scripted engine, with a handle to shut it down.
struct Scripted {
    address: SocketAddr,
    engine: ScriptedEngine,
    server: Server,
    shutdown: Option<oneshot::Sender<()>>,
    serving: JoinHandle<std::io::Result<()>>,
}

impl Scripted {
    /// Sends the shutdown signal; `serving` ends once streams are done or the grace is over.
    fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Waits until the engine has no running generation, or panics after two seconds.
    async fn wait_idle(&self) {
        for _ in 0..200 {
            if self.engine.stats().running == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("still running: {:?}", self.engine.stats());
    }
}

async fn scripted_with_grace(script: Script, config: TransportConfig, grace: Duration) -> Scripted {
    serve_scripted(ScriptedEngine::new(script), config, grace).await
}

/// A server running `engine`, shut down with a `grace`.
async fn serve_scripted(
    engine: ScriptedEngine,
    config: TransportConfig,
    grace: Duration,
) -> Scripted {
    let server = Server::new(config);
    server.set_engine(engine.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (shutdown, signal) = oneshot::channel::<()>();
    let serving = server.clone();
    let serving = tokio::spawn(async move {
        serving
            .serve(
                listener,
                async {
                    let _ = signal.await;
                },
                grace,
            )
            .await
    });
    Scripted {
        address,
        engine,
        server,
        shutdown: Some(shutdown),
        serving,
    }
}

async fn scripted(script: Script, config: TransportConfig) -> Scripted {
    scripted_with_grace(script, config, Duration::from_secs(1)).await
}

/// A request with extra header lines (each `Name: value`).
fn request(method: &str, path: &str, headers: &[&str], body: &str) -> Vec<u8> {
    llm_transport::probe::request(method, path, headers, body.as_bytes())
}

/// A valid WebSocket handshake for `/ws/chat`, with extra header lines.
fn ws_handshake(extra: &[&str]) -> Vec<u8> {
    let mut headers = vec![
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    headers.extend_from_slice(extra);
    request("GET", "/ws/chat", &headers, "")
}

/// The body's chunks as text.
fn frames(response: &RawResponse) -> Vec<String> {
    response
        .chunks
        .iter()
        .map(|chunk| String::from_utf8(chunk.clone()).expect("UTF-8 frames"))
        .collect()
}

/// The concatenated `delta.content` of the chunks of an SSE body.
fn streamed_text(frames: &[String]) -> String {
    let mut text = String::new();
    for frame in frames {
        let Some(data) = frame.lines().find_map(|line| line.strip_prefix("data: ")) else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(data).expect("JSON data");
        if let Some(content) = value["choices"][0]["delta"]["content"].as_str() {
            text.push_str(content);
        }
    }
    text
}

/// The `id:` line of an SSE frame.
fn event_id(frame: &str) -> Option<&str> {
    frame.lines().find_map(|line| line.strip_prefix("id: "))
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
    // The server may answer and close before reading everything (413 on a declared length,
    // 431 on huge headers): a failed write still leaves its response to read.
    if let Err(error) = socket.write_all(raw_request).await {
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "write request: {error}"
        );
    }
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

fn error_of(response: &RawResponse) -> ErrorBody {
    assert_eq!(response.header("content-type"), Some("application/json"));
    serde_json::from_slice(&response.body()).expect("an OpenAI error body")
}
