//! The OpenAI chat-completions stream.
//!
//! The first chunk's delta is `{"role":"assistant","content":""}`, then one chunk per delta,
//! then a chunk with `finish_reason`, then (with `stream_options.include_usage`) a chunk with
//! `"choices": []` and `usage`, then `data: [DONE]`. With `n` above 1 each choice has its own
//! role chunk and finish chunk under its `index`, their deltas interleaved as generated, and the
//! usage chunk counts them all. An error after the stream started is sent as
//! `data: {"error": {...}}` followed by `data: [DONE]`. Events of resumable streams carry
//! `id: RESPONSE:N`.

use bytes::Bytes;
use llm_engine::{Finish, TextDelta, ToolCallDelta};
use llm_protocol::tools::{FunctionCallChunk, ToolCallChunk, ToolType};
use llm_protocol::{
    ChatCompletionChunk, ChoiceLogprobs, ChunkChoice, Delta, FinishReason, Role, Usage,
};

use super::encoder::Encoder;
use super::frame::Framer;
use crate::error::Error;
use crate::http::response_id;

/// What every chunk of one response repeats.
#[derive(Debug, Clone)]
pub(crate) struct ChunkMeta {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
    /// `stream_options.continuous_usage_stats`: usage on every chunk with text or a finish.
    pub(crate) continuous_usage: bool,
    /// How many choices (`n`), at least 1.
    pub(crate) choices: u32,
}

impl ChunkMeta {
    fn chunk(
        &self,
        index: u32,
        delta: Delta,
        finish_reason: Option<FinishReason>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index,
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
            ..self.chunk(0, Delta::default(), None)
        }
    }
}

/// Encodes one chat-completions stream.
#[derive(Debug)]
pub(crate) struct ChunkEncoder {
    meta: ChunkMeta,
    framer: Framer,
    /// For each choice, `data: ` and a delta chunk's JSON up to its content string: the same
    /// for every delta of the choice, rendered once.
    delta_prefixes: Vec<String>,
    /// Which choices have sent their finish chunk.
    finished: Vec<bool>,
}

/// What follows the content string in a delta chunk's JSON.
const DELTA_SUFFIX: &str = "},\"logprobs\":null,\"finish_reason\":null}]}\n\n";

impl ChunkEncoder {
    pub(crate) fn new(meta: ChunkMeta, resumable: bool) -> Self {
        let json = |text: &str| serde_json::to_string(text).expect("strings serialize");
        let choices = meta.choices.max(1);
        let delta_prefixes = (0..choices)
            .map(|index| {
                format!(
                    "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\
                     \"model\":{},\"choices\":[{{\"index\":{index},\"delta\":{{\"content\":",
                    json(&meta.id),
                    meta.created,
                    json(&meta.model)
                )
            })
            .collect();
        Self {
            framer: Framer::new(&meta.id, resumable),
            meta,
            delta_prefixes,
            finished: vec![false; choices as usize],
        }
    }

    /// The finish chunk of choice `index`, with its usage when every chunk carries usage.
    fn finish_chunk(&mut self, index: u32, reason: FinishReason, usage: Option<Usage>) -> Bytes {
        if let Some(done) = self.finished.get_mut(index as usize) {
            *done = true;
        }
        let mut chunk = self.meta.chunk(index, Delta::default(), Some(reason));
        if self.meta.continuous_usage {
            chunk.usage = usage;
        }
        self.framer.json(None, &chunk)
    }

    /// The usage chunk (when asked for) and `[DONE]`.
    fn tail(&mut self, usage: Option<Usage>) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(2);
        if let Some(usage) = usage.filter(|_| self.meta.include_usage) {
            let chunk = self.meta.usage_chunk(usage);
            frames.push(self.framer.json(None, &chunk));
        }
        frames.push(self.framer.done());
        frames
    }
}

impl Encoder for ChunkEncoder {
    /// The assistant role and empty content, for each choice.
    fn open(&mut self) -> Vec<Bytes> {
        (0..self.meta.choices.max(1))
            .map(|index| {
                let delta = Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    tool_calls: None,
                };
                let chunk = self.meta.chunk(index, delta, None);
                self.framer.json(None, &chunk)
            })
            .collect()
    }

    /// Byte for byte what serializing the chunk gives, without building it.
    fn delta(&mut self, text: &str) -> Bytes {
        self.framer
            .text_event(None, &self.delta_prefixes[0], text, DELTA_SUFFIX)
    }

    fn text_delta(&mut self, delta: &TextDelta) -> Vec<Bytes> {
        self.choice_delta(0, delta)
    }

    /// A delta chunk with `logprobs.content` or the usage so far, when asked for: serialized,
    /// as those are rare; otherwise the rendered frame of [`Encoder::delta`]. Then one chunk
    /// per tool-call piece, a call's first with a new call id.
    fn choice_delta(&mut self, index: u32, delta: &TextDelta) -> Vec<Bytes> {
        let usage = self.meta.continuous_usage.then_some(delta.usage);
        let mut frames = Vec::with_capacity(1 + delta.tool_calls.len());
        if delta.logprobs.is_empty() && usage.is_none() && !delta.text.is_empty() {
            let prefix = &self.delta_prefixes[index as usize];
            frames.push(
                self.framer
                    .text_event(None, prefix, &delta.text, DELTA_SUFFIX),
            );
        } else if !delta.text.is_empty() {
            let content = Delta {
                content: Some(delta.text.clone()),
                ..Delta::default()
            };
            let mut chunk = self.meta.chunk(index, content, None);
            if !delta.logprobs.is_empty() {
                chunk.choices[0].logprobs = Some(ChoiceLogprobs {
                    content: delta.logprobs.clone(),
                });
            }
            chunk.usage = usage;
            frames.push(self.framer.json(None, &chunk));
        }
        for piece in &delta.tool_calls {
            let call = Delta {
                tool_calls: Some(vec![tool_call_chunk(piece)]),
                ..Delta::default()
            };
            let mut chunk = self.meta.chunk(index, call, None);
            chunk.usage = usage;
            frames.push(self.framer.json(None, &chunk));
        }
        frames
    }

    fn choice_finished(&mut self, index: u32, finish: &Finish) -> Vec<Bytes> {
        vec![self.finish_chunk(index, finish.reason.clone(), Some(finish.usage))]
    }

    /// With one choice, its finish chunk; then the usage chunk and `[DONE]`. With several,
    /// each choice's finish chunk has already gone.
    fn finish(&mut self, finish: &Finish) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(3);
        if self.meta.choices <= 1 {
            frames.push(self.finish_chunk(0, finish.reason.clone(), Some(finish.usage)));
        }
        frames.extend(self.tail(Some(finish.usage)));
        frames
    }

    /// A `cancelled` finish chunk for every choice still open, then `[DONE]`.
    fn cancelled(&mut self) -> Vec<Bytes> {
        let open: Vec<u32> = (0..)
            .zip(&self.finished)
            .filter(|(_, done)| !**done)
            .map(|(index, _)| index)
            .collect();
        let mut frames: Vec<Bytes> = open
            .into_iter()
            .map(|index| self.finish_chunk(index, FinishReason::Cancelled, None))
            .collect();
        frames.extend(self.tail(None));
        frames
    }

    fn error(&mut self, error: &Error) -> Vec<Bytes> {
        self.framer.openai_error(error)
    }
}

/// A piece of a call in OpenAI's shape: the first with a fresh `call_` id, `type` and name.
fn tool_call_chunk(piece: &ToolCallDelta) -> ToolCallChunk {
    let first = piece.name.is_some();
    ToolCallChunk {
        index: piece.index,
        id: first.then(|| response_id("call_")),
        kind: first.then_some(ToolType::Function),
        function: FunctionCallChunk {
            name: piece.name.clone(),
            arguments: Some(piece.arguments.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_meta() -> ChunkMeta {
        ChunkMeta {
            id: "chatcmpl-1".to_owned(),
            created: 7,
            model: "m".to_owned(),
            include_usage: false,
            continuous_usage: false,
            choices: 1,
        }
    }

    /// The rendered delta frame is exactly what encoding the chunk gives.
    #[test]
    fn fast_delta_frames_equal_serialized_chunks() {
        for resumable in [false, true] {
            let meta = ChunkMeta {
                id: "chatcmpl-\"odd\\id".to_owned(),
                created: 1_700_000_000,
                model: "Model \u{e9}\n".to_owned(),
                include_usage: false,
                continuous_usage: false,
                choices: 1,
            };
            let mut fast = ChunkEncoder::new(meta.clone(), resumable);
            let mut slow = Framer::new(&meta.id, resumable);
            for text in [
                "Hello",
                " \"quoted\"",
                "line\nbreak\r\t",
                "\u{1}\u{1f}",
                "한국어 😀",
                "",
            ] {
                let delta = Delta {
                    role: None,
                    content: Some(text.to_owned()),
                    tool_calls: None,
                };
                let expected = slow.json(None, &meta.chunk(0, delta, None));
                assert_eq!(fast.delta(text), expected, "{text:?}");
            }
        }
    }

    /// A delta with log probabilities, exactly as OpenAI's chunk carries them.
    #[test]
    fn a_delta_with_logprobs_is_openais_chunk() {
        use llm_protocol::{TokenLogprob, TopLogprob};
        let mut encoder = ChunkEncoder::new(plain_meta(), false);
        let token = |text: &str, logprob: f32| TokenLogprob {
            token: text.to_owned(),
            logprob,
            bytes: Some(text.as_bytes().to_vec()),
            top_logprobs: vec![TopLogprob {
                token: text.to_owned(),
                logprob,
                bytes: Some(text.as_bytes().to_vec()),
            }],
        };
        let frames = encoder.text_delta(&TextDelta {
            text: " Hi!".to_owned(),
            tool_calls: Vec::new(),
            logprobs: vec![token(" Hi", -0.5), token("!", -0.25)],
            usage: Usage::new(3, 2),
        });
        assert_eq!(frames.len(), 1);
        assert_eq!(
            std::str::from_utf8(&frames[0]).expect("UTF-8"),
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\
             \"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" Hi!\"},\
             \"logprobs\":{\"content\":[{\"token\":\" Hi\",\"logprob\":-0.5,\"bytes\":[32,72,105],\
             \"top_logprobs\":[{\"token\":\" Hi\",\"logprob\":-0.5,\"bytes\":[32,72,105]}]},\
             {\"token\":\"!\",\"logprob\":-0.25,\"bytes\":[33],\"top_logprobs\":[{\"token\":\"!\",\
             \"logprob\":-0.25,\"bytes\":[33]}]}]},\"finish_reason\":null}]}\n\n"
        );
    }

    /// Call pieces go one per chunk after the text: the first with a `call_` id, `type` and
    /// name, the next with argument text only.
    #[test]
    fn tool_call_pieces_are_openais_chunks() {
        let mut encoder = ChunkEncoder::new(plain_meta(), false);
        let frames = encoder.text_delta(&TextDelta {
            text: "Let me look.".to_owned(),
            tool_calls: vec![
                ToolCallDelta {
                    index: 0,
                    name: Some("get_weather".to_owned()),
                    arguments: String::new(),
                },
                ToolCallDelta {
                    index: 0,
                    name: None,
                    arguments: "{\"city\": ".to_owned(),
                },
            ],
            ..TextDelta::default()
        });
        let chunks: Vec<ChatCompletionChunk> = frames
            .iter()
            .map(|frame| {
                let text = std::str::from_utf8(frame).expect("UTF-8");
                let data = text.strip_prefix("data: ").expect("data line").trim_end();
                serde_json::from_str(data).expect("a chunk")
            })
            .collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks[0].choices[0].delta.content.as_deref(),
            Some("Let me look.")
        );
        let first = &chunks[1].choices[0]
            .delta
            .tool_calls
            .as_deref()
            .expect("calls")[0];
        assert!(
            first
                .id
                .as_deref()
                .is_some_and(|id| id.starts_with("call_")),
            "{first:?}"
        );
        assert_eq!(first.kind, Some(ToolType::Function));
        assert_eq!(first.function.name.as_deref(), Some("get_weather"));
        assert_eq!(first.function.arguments.as_deref(), Some(""));
        let next = std::str::from_utf8(&frames[2]).expect("UTF-8");
        assert_eq!(
            next,
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\
             \"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\
             \"function\":{\"arguments\":\"{\\\"city\\\": \"}}]},\"logprobs\":null,\
             \"finish_reason\":null}]}\n\n"
        );
    }

    /// With several choices, a choice's finish chunk goes under its index, and a cut stream
    /// ends each choice still open with `cancelled`.
    #[test]
    fn several_choices_finish_and_cancel_under_their_indexes() {
        let mut encoder = ChunkEncoder::new(
            ChunkMeta {
                choices: 3,
                ..plain_meta()
            },
            false,
        );
        let reasons = |frames: Vec<Bytes>| -> Vec<String> {
            frames
                .iter()
                .map(|frame| {
                    let text = std::str::from_utf8(frame).expect("UTF-8");
                    let data = text.strip_prefix("data: ").expect("data").trim_end();
                    match serde_json::from_str::<ChatCompletionChunk>(data) {
                        Ok(chunk) => {
                            let choice = &chunk.choices[0];
                            let reason = choice.finish_reason.as_ref().map_or("-", |r| r.as_str());
                            format!("{} {reason}", choice.index)
                        }
                        Err(_) => data.to_owned(),
                    }
                })
                .collect()
        };
        assert_eq!(reasons(encoder.open()), ["0 -", "1 -", "2 -"]);
        assert_eq!(
            reasons(encoder.choice_delta(2, &TextDelta::from("x".to_owned()))),
            ["2 -"]
        );
        let finish = Finish {
            reason: FinishReason::Length,
            stop_sequence: None,
            usage: Usage::new(3, 1),
            timings: llm_engine::Timings::default(),
        };
        assert_eq!(reasons(encoder.choice_finished(1, &finish)), ["1 length"]);
        assert_eq!(
            reasons(encoder.cancelled()),
            ["0 cancelled", "2 cancelled", "[DONE]"]
        );
    }
}
