//! `/ws/chat` with a scripted engine: turns, cancel, bad messages, busy sockets, ping, close.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use llm_transport::{Backend, Script, TransportConfig};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::*;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn connect(address: SocketAddr, query: &str) -> Socket {
    let url = format!("ws://{address}/ws/chat{query}");
    let (socket, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the WebSocket handshake succeeds");
    assert_eq!(response.status(), 101);
    socket
}

pub(crate) async fn receive(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sends a chat turn and collects its deltas up to `done` (returned) or `error`.
pub(crate) async fn turn(socket: &mut Socket, chat: &str) -> (String, Value) {
    socket.send(Message::text(chat)).await.expect("send");
    let mut text = String::new();
    loop {
        let message = receive(socket).await;
        match message["type"].as_str() {
            Some("token") => text.push_str(message["content"].as_str().expect("content")),
            Some("done" | "error") => return (text, message),
            other => panic!("unexpected message type {other:?}"),
        }
    }
}

const CHAT: &str = r#"{"type":"chat","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn turns_tokens_and_done_on_one_socket() {
    let script = Script::words("Hello from the socket.");
    let test = scripted(script.clone(), TransportConfig::default()).await;
    let mut socket = connect(test.address, "").await;
    for _ in 0..2 {
        let (text, done) = turn(&mut socket, CHAT).await;
        assert_eq!(text, script.text());
        assert_eq!(done["type"], "done");
        assert_eq!(done["finish_reason"], "stop");
        assert_eq!(done["usage"]["completion_tokens"], 4);
    }
    // `type` may be left out.
    let (text, _) = turn(
        &mut socket,
        r#"{"messages":[{"role":"user","content":"again"}]}"#,
    )
    .await;
    assert_eq!(text, script.text());
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_socket_stays_usable() {
    let test = scripted(Script::words("Fine."), TransportConfig::default()).await;
    let mut socket = connect(test.address, "").await;
    for (message, param) in [
        ("not json", Value::Null),
        (r#"{"type":"dance"}"#, Value::from("type")),
        (r#"{"messages":[]}"#, Value::from("messages")),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"temperature":7}"#,
            Value::from("temperature"),
        ),
    ] {
        let (_, reply) = turn(&mut socket, message).await;
        assert_eq!(reply["type"], "error", "{message}");
        assert_eq!(reply["error"]["type"], "invalid_request_error");
        assert_eq!(reply["error"]["param"], param, "{message}");
    }
    socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    let reply = receive(&mut socket).await;
    assert_eq!(reply["error"]["code"], "binary_message");
    let (text, done) = turn(&mut socket, CHAT).await;
    assert_eq!(
        (text.as_str(), &done["type"]),
        ("Fine.", &Value::from("done"))
    );
}

#[tokio::test]
async fn cancel_stops_the_generation_and_a_busy_socket_refuses_a_second_chat() {
    let slow = Script::words(&"tick ".repeat(100)).interval(Duration::from_millis(20));
    let test = scripted(slow, TransportConfig::default()).await;
    let mut socket = connect(test.address, "").await;
    socket.send(Message::text(CHAT)).await.expect("send");
    assert_eq!(receive(&mut socket).await["type"], "token");
    socket.send(Message::text(CHAT)).await.expect("send");
    // Tokens of the running turn may come before the refusal.
    let refusal = loop {
        let message = receive(&mut socket).await;
        if message["type"] != "token" {
            break message;
        }
    };
    assert_eq!(refusal["error"]["code"], "generation_running");
    socket
        .send(Message::text(r#"{"type":"cancel"}"#))
        .await
        .expect("send");
    let done = loop {
        let message = receive(&mut socket).await;
        if message["type"] != "token" {
            break message;
        }
    };
    assert_eq!(done["type"], "done");
    assert_eq!(done["finish_reason"], "cancelled");
    assert!(done.get("usage").is_none());
    test.wait_idle().await;
    assert_eq!(test.engine.stats().cancelled, 1);
}

#[tokio::test]
async fn closing_the_socket_cancels_and_pings_are_answered() {
    let slow = Script::words(&"tick ".repeat(100)).interval(Duration::from_millis(20));
    let test = scripted(slow, TransportConfig::default()).await;
    let mut socket = connect(test.address, "").await;
    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a pong in time")
        .expect("open")
        .expect("valid");
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
    socket.send(Message::text(CHAT)).await.expect("send");
    assert_eq!(receive(&mut socket).await["type"], "token");
    assert_eq!(test.engine.stats().running, 1);
    socket.close(None).await.expect("close");
    drop(socket);
    test.wait_idle().await;
    assert_eq!(test.engine.stats().cancelled, 1);
}

#[tokio::test]
async fn websockets_need_a_key_when_keys_are_set() {
    let mut config = TransportConfig::default();
    config.api_keys = vec!["secret".to_owned()];
    let test = scripted(Script::words("Yes."), config).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", test.address)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let mut socket = connect(test.address, "?api_key=secret").await;
    let (text, _) = turn(&mut socket, CHAT).await;
    assert_eq!(text, "Yes.");
    // A plain GET is not an upgrade.
    let plain = exchange(
        test.address,
        &request("GET", "/ws/chat", &["Authorization: Bearer secret"], ""),
    )
    .await;
    assert_eq!(plain.status, 400);
    assert_eq!(
        error_of(&plain).error.code.as_deref(),
        Some("invalid_upgrade")
    );
}

#[tokio::test]
async fn browser_pages_from_other_origins_cannot_open_a_socket() {
    let mut config = TransportConfig::default();
    config.cors_origins = vec!["http://app.example".to_owned()];
    let test = scripted(Script::words("Hi."), config).await;
    let handshake = |origin: &str| ws_handshake(&[&format!("Origin: {origin}")]);
    let evil = exchange(test.address, &handshake("http://evil.example")).await;
    assert_eq!(evil.status, 403);
    assert_eq!(
        error_of(&evil).error.code.as_deref(),
        Some("origin_not_allowed")
    );
    for allowed in ["http://app.example", "http://test"] {
        let mut reader = send(test.address, &handshake(allowed)).await;
        assert_eq!(read_head(&mut reader).await.0, 101, "{allowed}");
    }
}

#[tokio::test]
async fn open_sockets_count_against_the_connection_limit() {
    let mut config = TransportConfig::default();
    config.max_connections = 1;
    let test = scripted(Script::words("Hi."), config).await;
    let socket = connect(test.address, "").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = exchange(test.address, &get("/health")).await;
    assert_eq!(refused.status, 503, "the socket holds the only connection");
    drop(socket);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if exchange(test.address, &get("/health")).await.status == 200 {
            return;
        }
    }
    panic!("the socket's place was not released");
}

#[tokio::test]
async fn an_idle_socket_closes_at_once_when_shutdown_begins() {
    let mut test = scripted_with_grace(
        Script::words("Hi."),
        TransportConfig::default(),
        // Longer than any test runs: returning at all shows that nothing waited for it.
        Duration::from_secs(3600),
    )
    .await;
    let mut socket = connect(test.address, "").await;
    test.shut_down();
    // Bounds on the waits, so that a hang fails rather than blocks; not speed claims.
    let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
        .await
        .expect("a close frame in time")
        .expect("a frame")
        .expect("valid");
    let Message::Close(Some(frame)) = message else {
        panic!("expected a close frame, got {message:?}");
    };
    assert_eq!(u16::from(frame.code), 1001);
    drop(socket);
    tokio::time::timeout(Duration::from_secs(60), &mut test.serving)
        .await
        .expect("serve returns without waiting for the grace")
        .expect("no panic")
        .expect("no error");
}
