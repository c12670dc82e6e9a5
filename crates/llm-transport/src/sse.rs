//! Streaming a chat completion as server-sent events, OpenAI style.
//!
//! The first chunk's delta is `{"role":"assistant","content":""}`, then one chunk per delta,
//! then a chunk with `finish_reason`, then (with `stream_options.include_usage`) a chunk with
//! `"choices": []` and `usage`, then `data: [DONE]`. An error after the stream started is sent
//! as `data: {"error": {...}}` followed by `data: [DONE]`. Each chunk is its own body frame,
//! written as soon as it exists.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use llm_engine::{ChatStream, EngineEvent};
use llm_protocol::{
    sse, ChatCompletionChunk, ChunkChoice, Delta, ErrorBody, FinishReason, Role, Usage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::Error;

/// What every chunk of one response repeats.
#[derive(Debug, Clone)]
pub(crate) struct ChunkMeta {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
}

impl ChunkMeta {
    fn chunk(&self, delta: Delta, finish_reason: Option<FinishReason>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        }
    }

    fn usage_chunk(&self, usage: Usage) -> ChatCompletionChunk {
        ChatCompletionChunk {
            choices: Vec::new(),
            usage: Some(usage),
            ..self.chunk(Delta::default(), None)
        }
    }
}

fn encode_json(value: &impl serde::Serialize) -> Bytes {
    let json = serde_json::to_string(value).expect("chunks serialize");
    let mut buf = BytesMut::with_capacity(json.len() + 8);
    sse::write_data(&mut buf, &json);
    buf.freeze()
}

fn done() -> Bytes {
    let mut buf = BytesMut::new();
    sse::write_done(&mut buf);
    buf.freeze()
}

/// Pumps one engine stream into the response body channel until the end, an error, or the
/// client leaving (which drops `stream`, and so cancels the generation at once).
pub(crate) async fn pump(
    mut stream: ChatStream,
    body: mpsc::Sender<Bytes>,
    meta: ChunkMeta,
    keep_alive: Duration,
) {
    let first = meta.chunk(
        Delta {
            role: Some(Role::Assistant),
            content: Some(String::new()),
        },
        None,
    );
    if body.send(encode_json(&first)).await.is_err() {
        return;
    }
    let mut quiet_since = Instant::now();
    loop {
        let event = tokio::select! {
            biased;
            () = body.closed() => return,
            event = stream.next() => event,
            () = tokio::time::sleep_until(quiet_since + keep_alive) => {
                let mut buf = BytesMut::new();
                sse::write_comment(&mut buf, "keep-alive");
                if body.send(buf.freeze()).await.is_err() {
                    return;
                }
                quiet_since = Instant::now();
                continue;
            }
        };
        let (frames, last) = match event {
            Some(EngineEvent::Delta(text)) => {
                let delta = Delta {
                    role: None,
                    content: Some(text),
                };
                (vec![encode_json(&meta.chunk(delta, None))], false)
            }
            Some(EngineEvent::Finished(finish)) => {
                let mut frames = vec![encode_json(
                    &meta.chunk(Delta::default(), Some(finish.reason.clone())),
                )];
                if meta.include_usage {
                    frames.push(encode_json(&meta.usage_chunk(finish.usage)));
                }
                frames.push(done());
                (frames, true)
            }
            Some(EngineEvent::Error(error)) => (error_frames(Error::Engine(error)), true),
            Some(_) => continue,
            None => return,
        };
        for frame in frames {
            if body.send(frame).await.is_err() {
                return;
            }
        }
        if last {
            return;
        }
        quiet_since = Instant::now();
    }
}

/// An error in the middle of a stream: the error object, then `[DONE]`.
pub(crate) fn error_frames(error: Error) -> Vec<Bytes> {
    tracing::warn!(error = %error, detail = ?error, "stream ended with an error");
    vec![encode_json(&ErrorBody::from(error.to_api_error())), done()]
}
