//! Requests that probe how the server takes bad input, for the reliability tests and the
//! reliability harness: a fixed corpus of malformed requests, each with the answer it must get,
//! and a seeded mutator of valid requests for every route and dialect. Probes are raw bytes, so
//! that what no HTTP client would send can be sent; [`exchange`] sends one and reads the answer,
//! and [`Probe::check`] says whether the answer is one the server may give.
//!
//! What every answer must be: a status below 500; an error body in the route's own dialect (the
//! OpenAI shape, or Anthropic's on `/v1/messages`) with a message; a success read to its end.
//! Only requests that HTTP framing refuses before any route may get a bare 4xx.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// One request, and what its answer must be.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Probe {
    /// What the probe tries, for failure messages.
    pub name: String,
    /// The route it aims at (`chat`, `completions`, `responses`, `messages`, `count_tokens`,
    /// `tokenize`, `detokenize`, `eventsource`, `resume`, `websocket`, or `other`), for
    /// tallies.
    pub route: &'static str,
    /// The request as sent.
    pub request: Vec<u8>,
    /// For a WebSocket probe: the message sent once the socket is open; binary when it is not
    /// UTF-8.
    pub message: Option<Vec<u8>>,
    /// What the answer must be.
    pub expect: Expect,
}

/// What a probe's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// This status; below 200 or from 400, an error body in the route's dialect, of type
    /// `invalid_request_error` in the OpenAI shape, blaming `param` when one is given.
    Status(u16, Option<&'static str>),
    /// Refused by HTTP framing before any route: a 4xx, with or without a body.
    Framing,
    /// Any answer the server may give: success read to its end, or a 4xx error in the
    /// route's dialect.
    NoServerError,
}

/// An answer read off the socket.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Reply {
    /// The HTTP status (101 for an opened WebSocket).
    pub status: u16,
    /// The header lines, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked; for a WebSocket, the server's messages, one per line.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header called `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The shape of a route's error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    OpenAi,
    Anthropic,
}

impl Probe {
    fn new(name: impl Into<String>, route: &'static str, request: Vec<u8>, expect: Expect) -> Self {
        Self {
            name: name.into(),
            route,
            request,
            message: None,
            expect,
        }
    }

    /// A request sent as it is, whose answer must be no server error.
    pub fn raw(name: impl Into<String>, request: Vec<u8>) -> Self {
        Self::new(name, "other", request, Expect::NoServerError)
    }

    /// The request's path, from its request line.
    fn path(&self) -> &str {
        std::str::from_utf8(&self.request)
            .ok()
            .and_then(|text| text.split(' ').nth(1))
            .unwrap_or("")
    }

    fn shape(&self) -> Shape {
        if self.path().starts_with("/v1/messages") {
            Shape::Anthropic
        } else {
            Shape::OpenAi
        }
    }

    /// Whether `reply` is an answer this probe may get; the reason when it is not.
    ///
    /// # Errors
    /// A sentence saying what is wrong with the answer.
    pub fn check(&self, reply: &Reply) -> Result<(), String> {
        let status = reply.status;
        if status >= 500 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&reply.body)
            ));
        }
        match self.expect {
            Expect::Framing => {
                return if (400..500).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("status {status}, not a 4xx"))
                };
            }
            Expect::Status(expected, _) if status != expected => {
                return Err(format!(
                    "status {status}, not {expected}: {}",
                    String::from_utf8_lossy(&reply.body)
                ));
            }
            _ => {}
        }
        if self.message.is_some() {
            return check_websocket(reply);
        }
        // Headers past the server's limit are refused by HTTP framing before any route, so
        // without a body, whatever the probe aimed at.
        if status == 431 && self.expect == Expect::NoServerError {
            return Ok(());
        }
        if (200..400).contains(&status) {
            return check_success(reply);
        }
        check_error(self.shape(), reply, self.expect)
    }
}

/// A success must be whole: JSON that parses, or an event stream that ends as its dialect ends.
fn check_success(reply: &Reply) -> Result<(), String> {
    let body = String::from_utf8_lossy(&reply.body);
    match reply.header("content-type") {
        Some(kind) if kind.starts_with("text/event-stream") => {
            let ends = ["data: [DONE]", "event: message_stop", "response.completed"];
            if ends.iter().any(|end| body.contains(end)) {
                Ok(())
            } else {
                Err(format!("an event stream without its end: {body}"))
            }
        }
        Some(kind) if kind.starts_with("application/json") => serde_json::from_str::<Value>(&body)
            .map(drop)
            .map_err(|error| format!("a JSON body that does not parse ({error}): {body}")),
        _ => Ok(()),
    }
}

/// An error must be JSON in the route's dialect, with a message.
fn check_error(shape: Shape, reply: &Reply, expect: Expect) -> Result<(), String> {
    let text = String::from_utf8_lossy(&reply.body);
    if reply.header("content-type") != Some("application/json") {
        return Err(format!("an error that is not JSON: {text}"));
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|error| format!("an error body that does not parse ({error}): {text}"))?;
    let error = &body["error"];
    let message = error["message"].as_str().unwrap_or_default();
    let kind = error["type"].as_str().unwrap_or_default();
    if message.is_empty() || kind.is_empty() {
        return Err(format!("an error without a type and a message: {text}"));
    }
    match shape {
        Shape::Anthropic if body["type"] != "error" => {
            Err(format!("an error not in Anthropic's shape: {text}"))
        }
        Shape::Anthropic => Ok(()),
        Shape::OpenAi => match expect {
            Expect::Status(..) if kind != "invalid_request_error" => {
                Err(format!("an error of type {kind}: {text}"))
            }
            Expect::Status(_, Some(param)) if error["param"] != param => Err(format!(
                "an error blaming {}, not {param}: {text}",
                error["param"]
            )),
            _ => Ok(()),
        },
    }
}

/// A WebSocket turn ends with `done` or an `error` that is not the server's fault, or the
/// server closes the socket for a protocol error.
fn check_websocket(reply: &Reply) -> Result<(), String> {
    let text = String::from_utf8_lossy(&reply.body);
    let last = text.lines().last().unwrap_or_default();
    if last.starts_with("close ") {
        return if last == format!("close {}", u16::from(CloseCode::Error)) {
            Err(format!("closed as an internal error: {text}"))
        } else {
            Ok(())
        };
    }
    let message: Value = serde_json::from_str(last).unwrap_or_default();
    match message["type"].as_str() {
        Some("done") => Ok(()),
        Some("error") if message["error"]["type"] == "server_error" => {
            Err(format!("a server error: {text}"))
        }
        Some("error") => Ok(()),
        _ => Err(format!("a turn without its end: {text}")),
    }
}

/// Sends `probe` to `address` and reads the answer to its end. A server that closes the
/// connection before it has read all of a request (413 on a declared length, 431 on huge
/// headers) still leaves its answer to read.
///
/// # Errors
/// The connection failed, or closed without a complete answer.
pub async fn exchange(address: SocketAddr, probe: &Probe) -> std::io::Result<Reply> {
    let mut socket = TcpStream::connect(address).await?;
    if let Some(message) = &probe.message {
        return exchange_websocket(socket, probe, message).await;
    }
    if let Err(error) = socket.write_all(&probe.request).await {
        if !matches!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ) {
            return Err(error);
        }
    }
    let mut reader = BufReader::new(socket);
    let (status, headers) = read_head(&mut reader).await?;
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    if reply.header("transfer-encoding") == Some("chunked") {
        read_chunked(&mut reader, &mut reply.body).await?;
    } else if let Some(length) = reply.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid("a bad content-length"))?;
        reply.body.resize(length, 0);
        reader.read_exact(&mut reply.body).await?;
    }
    Ok(reply)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads a response's status line and headers.
///
/// # Errors
/// The connection failed, or what came is not an HTTP response head.
pub async fn read_head(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(invalid("the head ended early"));
        }
        let trimmed = line.trim_end_matches("\r\n");
        if trimmed.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = trimmed
            .split_once(':')
            .ok_or_else(|| invalid("a header without a colon"))?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
}

async fn read_chunked(
    reader: &mut BufReader<TcpStream>,
    body: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut size_line = String::new();
    loop {
        size_line.clear();
        reader.read_line(&mut size_line).await?;
        let size = usize::from_str_radix(size_line.trim_end(), 16)
            .map_err(|_| invalid("a bad chunk size"))?;
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..]).await?;
        body.truncate(start + size);
        if size == 0 {
            return Ok(());
        }
    }
}

/// Opens the WebSocket, sends the message, and reads the server's messages until a `done`, an
/// `error`, or a close; each goes on a line of the reply's body (`close CODE` for a close).
async fn exchange_websocket(
    socket: TcpStream,
    probe: &Probe,
    message: &[u8],
) -> std::io::Result<Reply> {
    let url = format!("ws://probe{}", probe.path());
    let (mut socket, response) = tokio_tungstenite::client_async(url, socket)
        .await
        .map_err(std::io::Error::other)?;
    let frame = match String::from_utf8(message.to_vec()) {
        Ok(text) => Message::text(text),
        Err(_) => Message::binary(message.to_vec()),
    };
    socket.send(frame).await.map_err(std::io::Error::other)?;
    let mut reply = Reply {
        status: response.status().as_u16(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    while let Some(message) = socket.next().await {
        let line = match message.map_err(std::io::Error::other)? {
            Message::Text(text) => text.to_string(),
            Message::Close(frame) => {
                let code = frame.map_or(1005, |frame| u16::from(frame.code));
                format!("close {code}")
            }
            _ => continue,
        };
        reply.body.extend_from_slice(line.as_bytes());
        reply.body.push(b'\n');
        let kind = serde_json::from_str::<Value>(&line).unwrap_or_default()["type"].clone();
        if line.starts_with("close ") || kind == "done" || kind == "error" {
            break;
        }
    }
    let _ = socket.close(None).await;
    Ok(reply)
}

/// A request with extra header lines (each `Name: value`) and a JSON body (with its
/// `Content-Type` and `Content-Length` when there is one, or for `POST`).
pub fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn post(path: &str, body: &str) -> Vec<u8> {
    request("POST", path, &[], body.as_bytes())
}

fn get(path: &str) -> Vec<u8> {
    request("GET", path, &[], b"")
}

const CHAT: &str = "/v1/chat/completions";

/// A chat request around one field: `{"messages":[{"role":"user","content":"x"}], FIELD}`.
fn with(field: &str) -> String {
    format!(r#"{{"messages":[{{"role":"user","content":"x"}}],{field}}}"#)
}

/// A corpus case sent as raw bytes: name, route, request, status, blamed field.
type RawCase = (
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

/// The fixed corpus: malformed requests for every route and dialect, each with the status it
/// must get and, where one field is to blame, that field. `body_limit` is the server's
/// (`TransportConfig::body_limit`): one case goes past it.
pub fn corpus(body_limit: usize) -> Vec<Probe> {
    let mut probes = Vec::new();
    let chat = |name: &str, body: String, status: u16, param: Option<&'static str>| {
        Probe::new(
            name,
            "chat",
            post(CHAT, &body),
            Expect::Status(status, param),
        )
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let chat_cases: Vec<(&str, String, u16, Option<&'static str>)> = vec![
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
        (
            "an unknown response format",
            with(r#""response_format":{"type":"yaml"}"#),
            400,
            Some("response_format.type"),
        ),
        (
            "a JSON schema that is not an object",
            with(
                r#""response_format":{"type":"json_schema","json_schema":{"name":"n","schema":[]}}"#,
            ),
            400,
            Some("response_format.json_schema.schema"),
        ),
        (
            "a tool choice naming a function not offered",
            with(
                r#""tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}"#,
            ),
            400,
            Some("tool_choice"),
        ),
        (
            "a tool result without the call it answers",
            r#"{"messages":[{"role":"user","content":"x"},{"role":"tool","content":"r"}]}"#
                .to_owned(),
            400,
            Some("messages[1].tool_call_id"),
        ),
        (
            "too many top_logprobs",
            with(r#""logprobs":true,"top_logprobs":21"#),
            400,
            Some("top_logprobs"),
        ),
        (
            "audio output",
            with(r#""modalities":["audio"]"#),
            400,
            Some("modalities"),
        ),
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
        (
            "huge string over the body limit",
            format!(
                r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
                "a".repeat(body_limit + 1)
            ),
            413,
            None,
        ),
    ];
    probes.extend(
        chat_cases
            .into_iter()
            .map(|(name, body, status, param)| chat(name, body, status, param)),
    );
    let mut invalid_utf8 = post(CHAT, r#"{"messages":[{"role":"user","content":"..."}]}"#);
    let at = invalid_utf8.len() - 6;
    invalid_utf8[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let ws = |headers: &[&str]| request("GET", "/ws/chat", headers, b"");
    let raw: Vec<RawCase> = vec![
        ("invalid UTF-8 in the body", "chat", invalid_utf8, 400, None),
        ("GET on the chat route", "chat", get(CHAT), 405, None),
        (
            "PUT on models",
            "other",
            request("PUT", "/v1/models", &[], b"{}"),
            405,
            None,
        ),
        ("unknown path", "other", get("/v2/chat"), 404, None),
        (
            "declared body over the limit",
            "chat",
            format!("POST {CHAT} HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n")
                .into_bytes(),
            413,
            None,
        ),
        (
            "bad chunked body",
            "chat",
            format!("POST {CHAT} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .into_bytes(),
            400,
            None,
        ),
        (
            "bad bearer scheme",
            "other",
            request("GET", "/v1/models", &["Authorization: Basic abc"], b""),
            200,
            None,
        ),
        (
            "resume of an unknown stream",
            "resume",
            get("/v1/chat/completions/chatcmpl-x/stream"),
            404,
            None,
        ),
        (
            "garbage Last-Event-ID",
            "eventsource",
            request("GET", "/stream", &["Last-Event-ID: garbage"], b""),
            400,
            Some("last_event_id"),
        ),
        (
            "stream without a question",
            "eventsource",
            get("/stream?max_tokens=3"),
            400,
            Some("q"),
        ),
        (
            "stream with a text temperature",
            "eventsource",
            get("/stream?q=hi&temperature=abc"),
            400,
            Some("temperature"),
        ),
        (
            "stream with bad messages",
            "eventsource",
            get("/stream?messages=notjson"),
            400,
            Some("messages"),
        ),
        (
            "stream with negative max_tokens",
            "eventsource",
            get("/stream?q=hi&max_tokens=-5"),
            400,
            Some("max_tokens"),
        ),
        (
            "WebSocket route without upgrade",
            "websocket",
            get("/ws/chat"),
            400,
            None,
        ),
        (
            "WebSocket version 8",
            "websocket",
            ws(&[
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Version: 8",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ]),
            400,
            None,
        ),
        (
            "WebSocket without key",
            "websocket",
            ws(&[
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Version: 13",
            ]),
            400,
            None,
        ),
        (
            "OPTIONS without preflight headers",
            "other",
            request("OPTIONS", "/v1/models", &[], b""),
            405,
            None,
        ),
        (
            "completions without a prompt",
            "completions",
            post("/v1/completions", "{}"),
            400,
            Some("prompt"),
        ),
        (
            "completions with a prompt of numbers",
            "completions",
            post("/v1/completions", r#"{"prompt":{"a":1}}"#),
            400,
            Some("prompt"),
        ),
        (
            "completions with negative max_tokens",
            "completions",
            post("/v1/completions", r#"{"prompt":"x","max_tokens":-2}"#),
            400,
            Some("max_tokens"),
        ),
        (
            "responses without input",
            "responses",
            post("/v1/responses", "{}"),
            400,
            Some("input"),
        ),
        (
            "responses with a hot temperature",
            "responses",
            post("/v1/responses", r#"{"input":"x","temperature":9}"#),
            400,
            Some("temperature"),
        ),
        (
            "retrieve of an unknown response",
            "resume",
            get("/v1/responses/resp_x?stream=true"),
            404,
            None,
        ),
        (
            "messages without max_tokens",
            "messages",
            post(
                "/v1/messages",
                r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            ),
            400,
            None,
        ),
        (
            "messages with a system role message",
            "messages",
            post(
                "/v1/messages",
                r#"{"max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#,
            ),
            400,
            None,
        ),
        (
            "messages truncated",
            "messages",
            post("/v1/messages", r#"{"max_tokens":"#),
            400,
            None,
        ),
        (
            "count_tokens of nothing",
            "count_tokens",
            post("/v1/messages/count_tokens", "[]"),
            400,
            None,
        ),
        (
            "tokenize without a prompt",
            "tokenize",
            post("/tokenize", r#"{"model":"scripted"}"#),
            400,
            Some("prompt"),
        ),
        (
            "tokenize with empty messages",
            "tokenize",
            post("/tokenize", r#"{"messages":[]}"#),
            400,
            Some("messages"),
        ),
        (
            "detokenize of text",
            "detokenize",
            post("/detokenize", r#"{"tokens":"hello"}"#),
            400,
            Some("tokens"),
        ),
        (
            "detokenize of a negative id",
            "detokenize",
            post("/detokenize", r#"{"tokens":[3,-3]}"#),
            400,
            Some("tokens[1]"),
        ),
        (
            "GET on messages",
            "messages",
            get("/v1/messages"),
            405,
            None,
        ),
    ];
    probes.extend(raw.into_iter().map(|(name, route, bytes, status, param)| {
        Probe::new(name, route, bytes, Expect::Status(status, param))
    }));
    let framing: Vec<(&str, Vec<u8>)> = vec![
        ("header without a colon", b"GET /health HTTP/1.1\r\nHost: t\r\nbroken\r\n\r\n".to_vec()),
        (
            "non-numeric Content-Length",
            format!("POST {CHAT} HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n").into_bytes(),
        ),
        (
            "two Content-Lengths",
            format!("POST {CHAT} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}")
                .into_bytes(),
        ),
        (
            "huge header",
            format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(200_000))
                .into_bytes(),
        ),
        ("bad request line", b"HELLO\r\n\r\n".to_vec()),
        ("bad method token", b"G(T /health HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()),
    ];
    probes.extend(
        framing
            .into_iter()
            .map(|(name, bytes)| Probe::new(name, "other", bytes, Expect::Framing)),
    );
    let handshake = ws(&[
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]);
    for (name, message) in [
        ("WebSocket message not JSON", b"hello".to_vec()),
        (
            "WebSocket message of an unknown type",
            br#"{"type":"dance"}"#.to_vec(),
        ),
        ("WebSocket binary message", vec![0xff, 0x00, 0x01]),
        (
            "WebSocket chat without messages",
            br#"{"type":"chat"}"#.to_vec(),
        ),
    ] {
        let mut probe = Probe::new(
            name,
            "websocket",
            handshake.clone(),
            Expect::Status(101, None),
        );
        probe.message = Some(message);
        probes.push(probe);
    }
    probes
}

/// A valid request of each route, as the mutator starts from.
struct Base {
    route: &'static str,
    method: &'static str,
    path: &'static str,
    body: Value,
}

fn bases() -> Vec<Base> {
    let chat = json!({
        "model": "scripted",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "again"}
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": 8,
        "temperature": 0,
        "top_p": 1,
        "stop": ["zz"],
        "resumable": false
    });
    vec![
        Base {
            route: "chat",
            method: "POST",
            path: CHAT,
            body: chat.clone(),
        },
        Base {
            route: "completions",
            method: "POST",
            path: "/v1/completions",
            body: json!({"model": "scripted", "prompt": ["Once", "upon"], "max_tokens": 8,
                         "stream": true, "stop": "\n", "echo": false, "temperature": 0}),
        },
        Base {
            route: "responses",
            method: "POST",
            path: "/v1/responses",
            body: json!({"model": "scripted", "instructions": "Be brief.",
                         "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                         "max_output_tokens": 16, "stream": true, "store": true}),
        },
        Base {
            route: "messages",
            method: "POST",
            path: "/v1/messages",
            body: json!({"model": "scripted", "max_tokens": 8, "system": "Be brief.",
                         "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                         "stream": true, "stop_sequences": ["zz"], "temperature": 0}),
        },
        Base {
            route: "count_tokens",
            method: "POST",
            path: "/v1/messages/count_tokens",
            body: json!({"model": "scripted", "system": "Be brief.",
                         "messages": [{"role": "user", "content": "hi"}]}),
        },
        Base {
            route: "tokenize",
            method: "POST",
            path: "/tokenize",
            body: json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                         "add_generation_prompt": true, "add_special_tokens": false}),
        },
        Base {
            route: "detokenize",
            method: "POST",
            path: "/detokenize",
            body: json!({"model": "scripted", "tokens": [1, 2, 3]}),
        },
        Base {
            route: "eventsource",
            method: "GET",
            path: "/stream",
            body: json!({"q": "hi", "max_tokens": "8", "temperature": "0"}),
        },
        Base {
            route: "resume",
            method: "GET",
            path: "/v1/chat/completions/chatcmpl-0/stream",
            body: json!({"last_event_id": "chatcmpl-0:3"}),
        },
        Base {
            route: "websocket",
            method: "GET",
            path: "/ws/chat",
            body: chat,
        },
    ]
}

/// A seeded mutator of valid requests, for every route and dialect: each probe is a valid
/// request with one to three mutations (a field removed, a value replaced by one of another
/// type or out of range, an unknown field, a list grown, deep nesting, the bytes truncated or
/// corrupted, another method or content type). Its answer must be no server error.
#[derive(Debug, Clone)]
pub struct Mutator {
    rng: fastrand::Rng,
    made: usize,
}

impl Mutator {
    /// A mutator whose sequence of probes is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            made: 0,
        }
    }

    /// The next probe.
    pub fn next_probe(&mut self) -> Probe {
        let bases = bases();
        let base = &bases[self.rng.usize(..bases.len())];
        let mut body = base.body.clone();
        let mut done = Vec::new();
        for _ in 0..=self.rng.usize(..3) {
            done.push(self.mutate_value(&mut body));
        }
        let mut bytes = match base.route {
            "eventsource" | "resume" => query_or_header(&body),
            _ => serde_json::to_vec(&body).expect("JSON values serialize"),
        };
        if self.rng.usize(..4) == 0 {
            done.push(self.mutate_bytes(&mut bytes));
        }
        // What goes in a request line or a header stays printable, so that the request is
        // still one: bytes outside are escaped in a query and dropped from a header.
        match base.route {
            "eventsource" => {
                bytes = bytes
                    .iter()
                    .flat_map(|&byte| match byte {
                        b'A'..=b'Z'
                        | b'a'..=b'z'
                        | b'0'..=b'9'
                        | b'-'
                        | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'&'
                        | b'='
                        | b'+' => vec![byte],
                        _ => format!("%{byte:02X}").into_bytes(),
                    })
                    .collect();
            }
            "resume" => bytes.retain(|byte| (b' '..=b'~').contains(byte)),
            _ => {}
        }
        self.made += 1;
        let name = format!(
            "mutation {} of {}: {}",
            self.made,
            base.route,
            done.join(", ")
        );
        let mut method = base.method;
        let mut headers: Vec<&str> = Vec::new();
        if self.rng.usize(..12) == 0 {
            method = ["GET", "PUT", "DELETE", "PATCH", "POST"][self.rng.usize(..5)];
        }
        if self.rng.usize(..12) == 0 {
            headers.push(
                ["Content-Type: text/plain", "Content-Type: application/xml"][self.rng.usize(..2)],
            );
        }
        match base.route {
            "websocket" => {
                let handshake = request(
                    "GET",
                    base.path,
                    &[
                        "Upgrade: websocket",
                        "Connection: Upgrade",
                        "Sec-WebSocket-Version: 13",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                    ],
                    b"",
                );
                let mut probe = Probe::new(name, base.route, handshake, Expect::NoServerError);
                probe.message = Some(bytes);
                probe
            }
            "eventsource" => {
                let path = format!("{}?{}", base.path, String::from_utf8_lossy(&bytes));
                Probe::new(
                    name,
                    base.route,
                    request(method, &path, &headers, b""),
                    Expect::NoServerError,
                )
            }
            "resume" => {
                let header = format!("Last-Event-ID: {}", String::from_utf8_lossy(&bytes));
                headers.push(&header);
                let path = if self.rng.bool() {
                    base.path
                } else {
                    "/v1/messages/msg_0/stream"
                };
                Probe::new(
                    name,
                    base.route,
                    request(method, path, &headers, b""),
                    Expect::NoServerError,
                )
            }
            _ => Probe::new(
                name,
                base.route,
                request(method, base.path, &headers, &bytes),
                Expect::NoServerError,
            ),
        }
    }

    /// A value of some other type, or out of range.
    fn odd_value(&mut self) -> Value {
        match self.rng.usize(..20) {
            0 => Value::Null,
            1 => json!(true),
            2 => json!(-1),
            3 => json!(0),
            4 => json!(2.5),
            5 => json!(1e300),
            6 => json!(-1e300),
            7 => json!(4_294_967_296_u64),
            8 => json!(""),
            9 => json!("x"),
            10 => json!("\u{0}"),
            11 => json!("x".repeat(self.rng.usize(1..20_000))),
            12 => json!("😀\u{202e}"),
            13 => json!([]),
            14 => json!({}),
            15 => json!([1, "a", null]),
            16 => json!({"type": "text"}),
            17 => json!({"role": "user", "content": "hi"}),
            18 => json!([{"type": "image_url", "image_url": {"url": "data:,"}}]),
            _ => json!({"type": "tool_result", "tool_use_id": "x", "content": [{"type": "text"}]}),
        }
    }

    /// Mutates one node of `value`; says what it did.
    fn mutate_value(&mut self, value: &mut Value) -> String {
        let mut nodes = Vec::new();
        collect_paths(value, &mut Vec::new(), &mut nodes);
        let path = nodes[self.rng.usize(..nodes.len())].clone();
        let label = path_label(&path);
        let choice = self.rng.usize(..6);
        let replacement = match choice {
            0 | 1 => Some(self.odd_value()),
            4 => {
                let depth = self.rng.usize(1..300);
                let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                Some(serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            _ => None,
        };
        let Some(node) = node_at(value, &path) else {
            return format!("nothing at {label}");
        };
        match (choice, replacement) {
            (_, Some(replacement)) => {
                *node = replacement;
                format!("{label} replaced")
            }
            (2, None) => {
                if let Value::Object(map) = node {
                    let key = ["n", "seed", "tools", "logprobs", "x", "", "stream", "type"]
                        [self.rng.usize(..8)];
                    map.insert(key.to_owned(), self.odd_value());
                    format!("{label}.{key} added")
                } else {
                    *node = json!([node.take()]);
                    format!("{label} wrapped in a list")
                }
            }
            (3, None) => {
                if let Value::Array(items) = node {
                    if let Some(first) = items.first().cloned() {
                        let copies = self.rng.usize(1..200);
                        items.extend(std::iter::repeat_n(first, copies));
                    }
                    format!("{label} grown")
                } else {
                    *node = json!({"value": node.take()});
                    format!("{label} wrapped in an object")
                }
            }
            _ => {
                remove_at(value, &path);
                format!("{label} removed")
            }
        }
    }

    /// Corrupts the serialized bytes; says how.
    fn mutate_bytes(&mut self, bytes: &mut Vec<u8>) -> String {
        if bytes.is_empty() {
            return "nothing to corrupt".to_owned();
        }
        let at = self.rng.usize(..bytes.len());
        match self.rng.usize(..4) {
            0 => {
                bytes.truncate(at);
                format!("cut at byte {at}")
            }
            1 => {
                bytes[at] = self.rng.u8(..);
                format!("byte {at} changed")
            }
            2 => {
                let junk: Vec<u8> = (0..self.rng.usize(1..8)).map(|_| self.rng.u8(..)).collect();
                bytes.splice(at..at, junk);
                format!("bytes inserted at {at}")
            }
            _ => {
                let other = self.rng.usize(..bytes.len());
                bytes.swap(at, other);
                format!("bytes {at} and {other} swapped")
            }
        }
    }
}

/// An object of strings as a query string, or a `last_event_id` value as it is.
fn query_or_header(body: &Value) -> Vec<u8> {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match body {
        Value::Object(map) if map.contains_key("last_event_id") && map.len() == 1 => {
            text(&map["last_event_id"]).into_bytes()
        }
        Value::Object(map) => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (key, value) in map {
                query.append_pair(key, &text(value));
            }
            query.finish().into_bytes()
        }
        other => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("q", &text(other));
            query.finish().into_bytes()
        }
    }
}

/// A step into a JSON value: a member's key or an element's index.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn collect_paths(value: &Value, path: &mut Vec<Step>, into: &mut Vec<Vec<Step>>) {
    into.push(path.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(Step::Key(key.clone()));
                collect_paths(child, path, into);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                path.push(Step::Index(index));
                collect_paths(child, path, into);
                path.pop();
            }
        }
        _ => {}
    }
}

fn path_label(path: &[Step]) -> String {
    let mut label = String::from("$");
    for step in path {
        match step {
            Step::Key(key) => {
                label.push('.');
                label.push_str(key);
            }
            Step::Index(index) => label.push_str(&format!("[{index}]")),
        }
    }
    label
}

fn node_at<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |node, step| match step {
        Step::Key(key) => node.get_mut(key.as_str()),
        Step::Index(index) => node.get_mut(*index),
    })
}

fn remove_at(value: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        *value = Value::Null;
        return;
    };
    match (node_at(value, parent), last) {
        (Some(Value::Object(map)), Step::Key(key)) => {
            map.remove(key);
        }
        (Some(Value::Array(items)), Step::Index(index)) if *index < items.len() => {
            items.remove(*index);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mutator_is_seeded() {
        let names = |seed| {
            let mut mutator = Mutator::new(seed);
            (0..50)
                .map(|_| {
                    let probe = mutator.next_probe();
                    (probe.name, probe.request, probe.message)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(3), names(3));
        assert_ne!(names(3), names(4));
    }

    #[test]
    fn the_mutator_reaches_every_route() {
        let mut mutator = Mutator::new(1);
        let routes: std::collections::BTreeSet<&str> =
            (0..400).map(|_| mutator.next_probe().route).collect();
        assert_eq!(routes.len(), bases().len(), "{routes:?}");
    }

    #[test]
    fn an_error_in_the_wrong_dialect_is_caught() {
        let probe = Probe::new(
            "x",
            "messages",
            post("/v1/messages", "{}"),
            Expect::NoServerError,
        );
        let openai = Reply {
            status: 400,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#.to_vec(),
        };
        assert!(probe.check(&openai).is_err());
        let anthropic = Reply {
            body: br#"{"type":"error","error":{"message":"bad","type":"invalid_request_error"}}"#
                .to_vec(),
            ..openai.clone()
        };
        assert_eq!(probe.check(&anthropic), Ok(()));
        let server_error = Reply {
            status: 500,
            ..anthropic
        };
        assert!(probe.check(&server_error).is_err());
    }
}
