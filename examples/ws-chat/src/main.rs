//! A multi-turn conversation over `GET /ws/chat`. Each argument is one user turn; with no
//! arguments, each line typed on stdin is one. The client keeps the conversation and sends it
//! whole each turn; the server streams `token` messages (deltas) and one `done`.
//!
//! ```sh
//! cargo run -p llm-server &                       # in another terminal
//! cargo run -p ws-chat -- "What is the capital of France?" "And of Germany?"
//! ```
//!
//! `LLM_STREAM_WS` sets the URL (default `ws://127.0.0.1:8000/ws/chat`); with an API key, add
//! `?api_key=KEY` to it, since the WebSocket handshake of browsers cannot carry headers and this
//! example works the same way.

#![allow(clippy::print_stdout, clippy::print_stderr)] // Printing is the point of this example.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use llm_protocol::ws::ServerMessage;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url =
        std::env::var("LLM_STREAM_WS").unwrap_or_else(|_| "ws://127.0.0.1:8000/ws/chat".to_owned());
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("could not open {url}"))?;
    let turns: Vec<String> = std::env::args().skip(1).collect();
    let mut lines = (turns.is_empty()).then(|| std::io::stdin().lock().lines());
    let mut turns = turns.into_iter();
    let mut history: Vec<Value> = Vec::new();
    loop {
        let question = match &mut lines {
            None => turns.next(),
            Some(lines) => {
                eprint!("> ");
                lines.next().transpose()?
            }
        };
        let Some(question) = question else { break };
        history.push(json!({"role": "user", "content": question}));
        let request =
            json!({"type": "chat", "messages": history, "temperature": 0, "max_tokens": 128});
        socket.send(Message::text(request.to_string())).await?;
        let mut answer = String::new();
        loop {
            let Some(message) = socket.next().await else {
                bail!("the server closed the socket");
            };
            let Message::Text(text) = message? else {
                continue; // Pings are answered by the protocol layer.
            };
            match serde_json::from_str::<ServerMessage>(&text)? {
                ServerMessage::Token { content } => {
                    print!("{content}");
                    std::io::stdout().flush()?;
                    answer.push_str(&content);
                }
                ServerMessage::Done { finish_reason, .. } => {
                    println!();
                    eprintln!("[{}]", finish_reason.as_str());
                    break;
                }
                ServerMessage::Error { error } => bail!("the server refused: {}", error.message),
                _ => {}
            }
        }
        history.push(json!({"role": "assistant", "content": answer}));
    }
    socket.close(None).await?;
    Ok(())
}
