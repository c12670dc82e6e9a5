//! A streaming chat client that survives dropped connections. It asks for a resumable stream,
//! decodes it with `llm-protocol`'s incremental decoder, and when the connection breaks it
//! reconnects with exponential backoff and `Last-Event-ID`, so the server replays exactly the
//! events it missed: the same answer, with no duplicated or missing text (asking the model to
//! "continue" would change the conversation instead).
//!
//! ```sh
//! cargo run -p llm-server &                       # in another terminal
//! cargo run -p resume-client -- "Why is the sky blue?"
//! # Cut the connection on purpose after every 5 events, to watch it resume:
//! cargo run -p resume-client -- --drop-every 5 "Why is the sky blue?"
//! ```
//!
//! The answer goes to stdout; connection notes go to stderr.

#![allow(clippy::print_stdout, clippy::print_stderr)] // Printing is the point of this example.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::StreamExt;
use llm_protocol::{ChatStreamDecoder, StreamEvent};
use reqwest::StatusCode;

#[derive(Debug, Parser)]
struct Args {
    /// The server's address.
    #[arg(long, env = "LLM_STREAM_BASE", default_value = "http://127.0.0.1:8000")]
    base: String,
    /// An API key, when the server requires one.
    #[arg(long, env = "LLM_STREAM_API_KEY")]
    api_key: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Drop the connection on purpose after every N events (0: never), to show resuming.
    #[arg(long, default_value_t = 0)]
    drop_every: usize,
    /// Reconnection attempts in a row without progress before giving up.
    #[arg(long, default_value_t = 8)]
    max_retries: u32,
    /// The question.
    question: String,
}

/// How one connection ended.
enum Ended {
    /// `[DONE]` arrived: the answer is complete.
    Done,
    /// The connection ended early; `progress` says whether any event arrived on it.
    Broken { progress: bool, why: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let mut decoder = ChatStreamDecoder::new();
    let mut response_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let request = match &response_id {
            None => client
                .post(format!("{}/v1/chat/completions", args.base))
                .json(&serde_json::json!({
                    "messages": [{"role": "user", "content": args.question}],
                    "stream": true,
                    "resumable": true,
                    "temperature": 0,
                    "max_tokens": args.max_tokens,
                })),
            Some(id) => client
                .get(format!("{}/v1/chat/completions/{id}/stream", args.base))
                .header("Last-Event-ID", decoder.last_event_id()),
        };
        let request = match &args.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let ended = match request.send().await {
            Ok(response) => match response.status() {
                StatusCode::OK => read(response, &mut decoder, &mut response_id, &args).await?,
                // Nothing after our last event: the answer was already complete.
                StatusCode::NO_CONTENT => Ended::Done,
                status @ (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
                    Ended::Broken {
                        progress: false,
                        why: format!("server busy ({status})"),
                    }
                }
                status => {
                    let body = response.text().await.unwrap_or_default();
                    bail!("the server answered {status}: {body}");
                }
            },
            Err(error) => Ended::Broken {
                progress: false,
                why: error.to_string(),
            },
        };
        match ended {
            Ended::Done => break,
            Ended::Broken { progress, why } => {
                failures = if progress { 1 } else { failures + 1 };
                if failures > args.max_retries {
                    bail!("giving up after {} failed attempts: {why}", failures - 1);
                }
                // 100 ms, 200 ms, 400 ms ... capped at 5 s, reset by any progress.
                let backoff =
                    Duration::from_millis(100 << (failures - 1).min(6)).min(Duration::from_secs(5));
                eprintln!(
                    "\n[connection lost: {why}; resuming after `{}` in {backoff:?}]",
                    decoder.last_event_id()
                );
                tokio::time::sleep(backoff).await;
                decoder.reconnect();
            }
        }
    }
    println!();
    Ok(())
}

/// Reads one connection's events, printing the text as it arrives.
async fn read(
    response: reqwest::Response,
    decoder: &mut ChatStreamDecoder,
    response_id: &mut Option<String>,
    args: &Args,
) -> anyhow::Result<Ended> {
    let mut body = response.bytes_stream();
    let mut events = Vec::new();
    let mut seen = 0;
    let mut stdout = std::io::stdout();
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(error) => {
                return Ok(Ended::Broken {
                    progress: seen > 0,
                    why: error.to_string(),
                })
            }
        };
        decoder
            .push(&piece, &mut events)
            .context("the server sent an error in the stream")?;
        for event in events.drain(..) {
            match event {
                StreamEvent::Chunk(chunk) => {
                    response_id.get_or_insert(chunk.id);
                    if let Some(text) = chunk.choices.first().and_then(|c| c.delta.content.as_ref())
                    {
                        print!("{text}");
                        stdout.flush()?;
                    }
                }
                StreamEvent::Done => return Ok(Ended::Done),
                _ => {}
            }
            seen += 1;
            if args.drop_every > 0 && seen == args.drop_every {
                // Dropping the body closes the connection, as a network cut would.
                return Ok(Ended::Broken {
                    progress: true,
                    why: format!("dropped on purpose after {seen} events"),
                });
            }
        }
    }
    Ok(Ended::Broken {
        progress: seen > 0,
        why: "the connection closed before [DONE]".to_owned(),
    })
}
