//! The OpenAI completions stream (`/v1/completions`).
//!
//! One `text_completion` chunk per delta (`choices[0].text`), then a chunk with
//! `finish_reason` and empty text, then (with `stream_options.include_usage`) a chunk with
//! `"choices": []` and `usage`, then `data: [DONE]`. With `echo` the prompt comes first, as a
//! chunk of its own. Errors after the start are `data: {"error": {...}}` and `[DONE]`, as on
//! chat.

use bytes::Bytes;
use llm_engine::Finish;
use llm_protocol::completions::{CompletionChoice, TextCompletion};
use llm_protocol::{FinishReason, Usage};

use super::encoder::Encoder;
use super::frame::Framer;
use crate::error::Error;

/// What every chunk of one completion repeats.
#[derive(Debug, Clone)]
pub(crate) struct CompletionMeta {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
    /// The prompt, sent first, when the request asked for `echo`.
    pub(crate) echo: Option<String>,
}

impl CompletionMeta {
    pub(crate) fn completion(
        &self,
        text: String,
        finish_reason: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> TextCompletion {
        TextCompletion {
            id: self.id.clone(),
            object: "text_completion".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason,
            }],
            usage,
        }
    }
}

/// Encodes one completions stream.
#[derive(Debug)]
pub(crate) struct CompletionEncoder {
    meta: CompletionMeta,
    framer: Framer,
    /// `data: ` and a chunk's JSON up to its text: the same for every delta, rendered once.
    delta_prefix: String,
}

/// What follows the text in a delta chunk's JSON.
const DELTA_SUFFIX: &str = ",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n";

impl CompletionEncoder {
    pub(crate) fn new(meta: CompletionMeta, resumable: bool) -> Self {
        let json = |text: &str| serde_json::to_string(text).expect("strings serialize");
        let delta_prefix = format!(
            "data: {{\"id\":{},\"object\":\"text_completion\",\"created\":{},\"model\":{},\
             \"choices\":[{{\"text\":",
            json(&meta.id),
            meta.created,
            json(&meta.model)
        );
        Self {
            framer: Framer::new(&meta.id, resumable),
            meta,
            delta_prefix,
        }
    }

    fn end(&mut self, reason: FinishReason, usage: Option<Usage>) -> Vec<Bytes> {
        let chunk = self.meta.completion(String::new(), Some(reason), None);
        let mut frames = vec![self.framer.json(None, &chunk)];
        if let Some(usage) = usage.filter(|_| self.meta.include_usage) {
            let chunk = TextCompletion {
                choices: Vec::new(),
                usage: Some(usage),
                ..self.meta.completion(String::new(), None, None)
            };
            frames.push(self.framer.json(None, &chunk));
        }
        frames.push(self.framer.done());
        frames
    }
}

impl Encoder for CompletionEncoder {
    /// Nothing, or the echoed prompt.
    fn open(&mut self) -> Vec<Bytes> {
        match self.meta.echo.take() {
            Some(prompt) => vec![self.delta(&prompt)],
            None => Vec::new(),
        }
    }

    fn delta(&mut self, text: &str) -> Bytes {
        self.framer
            .text_event(None, &self.delta_prefix, text, DELTA_SUFFIX)
    }

    fn finish(&mut self, finish: &Finish) -> Vec<Bytes> {
        self.end(finish.reason.clone(), Some(finish.usage))
    }

    fn cancelled(&mut self) -> Vec<Bytes> {
        self.end(FinishReason::Cancelled, None)
    }

    fn error(&mut self, error: &Error) -> Vec<Bytes> {
        self.framer.openai_error(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendered delta frame is exactly what encoding the chunk gives.
    #[test]
    fn fast_delta_frames_equal_serialized_chunks() {
        for resumable in [false, true] {
            let meta = CompletionMeta {
                id: "cmpl-\"odd\\id".to_owned(),
                created: 1_700_000_000,
                model: "Model \u{e9}\n".to_owned(),
                include_usage: false,
                echo: None,
            };
            let mut fast = CompletionEncoder::new(meta.clone(), resumable);
            let mut slow = Framer::new(&meta.id, resumable);
            for text in ["Hello", " \"quoted\"", "line\nbreak\r\t", "한국어 😀", ""] {
                let expected = slow.json(None, &meta.completion(text.to_owned(), None, None));
                assert_eq!(fast.delta(text), expected, "{text:?}");
            }
        }
    }
}
