//! Turning mistral.rs's streamed chunks of one request into our events: the stop filter, the
//! flush of held-back text on finish, the finish reason, and the token counts. Pure: the one
//! place that talks to mistral.rs (`engine.rs`) feeds it each chunk's three fields.

use llm_protocol::{FinishReason, Usage};

use crate::error::Error;
use crate::stop::{Filtered, StopFilter};

/// What mistral.rs said in one streamed chunk of one sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Chunk<'a> {
    /// The token's text (empty when it ends inside a character).
    pub(crate) text: &'a str,
    /// mistral.rs's finish reason, on the sequence's last chunk.
    pub(crate) finish_reason: Option<&'a str>,
    /// mistral.rs's token counts, on the last chunk: prompt and completion tokens.
    pub(crate) usage: Option<(usize, usize)>,
}

/// What a chunk means for the stream.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Text to send (possibly empty); generation goes on.
    Text(String),
    /// Text to send (possibly empty), then the end.
    Finished {
        text: String,
        reason: FinishReason,
        /// The stop sequence that ended the answer, if one did.
        stop_sequence: Option<String>,
        usage: Usage,
    },
    /// The sequence ended without an answer to stand by.
    Failed(Error),
}

/// The state of one request's response.
#[derive(Debug)]
pub(crate) struct ResponseDecoder {
    stops: StopFilter,
    prompt_tokens: usize,
    tokens: usize,
}

impl ResponseDecoder {
    pub(crate) fn new(stops: Vec<String>, prompt_tokens: usize) -> Self {
        Self {
            stops: StopFilter::new(stops),
            prompt_tokens,
            tokens: 0,
        }
    }

    /// Tokens generated so far.
    pub(crate) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Decodes the next chunk. After `Finished` or `Failed` the request is over.
    pub(crate) fn push(&mut self, chunk: Chunk<'_>) -> Decoded {
        self.tokens += 1;
        let (text, stopped) = match self.stops.push(chunk.text) {
            Filtered::Pass(text) => (text, None),
            Filtered::Stop { text, stop } => (text, Some(stop)),
        };
        if let Some(stop) = stopped {
            // Our stop sequence ends the answer, whatever mistral.rs says of this token: the
            // counts are ours too, since mistral.rs's would include tokens after the cut.
            return Decoded::Finished {
                text,
                reason: FinishReason::Stop,
                stop_sequence: Some(stop),
                usage: self.usage(),
            };
        }
        let Some(reason) = chunk.finish_reason else {
            return Decoded::Text(text);
        };
        let reason = match reason {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            // This request's receiver is alive, so mistral.rs stopped it on its own (its
            // "terminate all sequences"): a cut answer, not a finished one.
            "canceled" => {
                return Decoded::Failed(Error::Generation {
                    source: "mistral.rs cancelled the sequence".into(),
                })
            }
            // Tool calls, images and speech are never asked for: an answer that ends so is
            // not the text the client asked for.
            other => {
                return Decoded::Failed(Error::Generation {
                    source: format!("mistral.rs ended the sequence with `{other}`").into(),
                })
            }
        };
        let usage = match chunk.usage {
            Some((prompt, completion)) => Usage::new(count(prompt), count(completion)),
            None => self.usage(),
        };
        Decoded::Finished {
            text: text + &self.stops.flush(),
            reason,
            stop_sequence: None,
            usage,
        }
    }

    /// Token counts so far.
    pub(crate) fn usage(&self) -> Usage {
        Usage::new(count(self.prompt_tokens), count(self.tokens))
    }
}

fn count(tokens: usize) -> u32 {
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Chunk<'_> {
        Chunk {
            text,
            ..Chunk::default()
        }
    }

    fn last<'a>(text: &'a str, reason: &'a str, usage: Option<(usize, usize)>) -> Chunk<'a> {
        Chunk {
            text,
            finish_reason: Some(reason),
            usage,
        }
    }

    /// A decision in a line: `"text"`, `stop "text" 7/2`, or `failed`.
    fn shape(decoded: Decoded) -> String {
        match decoded {
            Decoded::Text(text) => format!("{text:?}"),
            Decoded::Finished {
                text,
                reason,
                stop_sequence,
                usage,
            } => format!(
                "{}{} {text:?} {}/{}",
                reason.as_str(),
                stop_sequence.map_or_else(String::new, |stop| format!("({stop:?})")),
                usage.prompt_tokens,
                usage.completion_tokens
            ),
            Decoded::Failed(_) => "failed".to_owned(),
        }
    }

    /// Runs chunks through a decoder with `stops` and a 7-token prompt.
    fn check(stops: &[&str], chunks: &[Chunk<'_>], expected: &[&str]) {
        let mut decoder = ResponseDecoder::new(stops.iter().map(|s| (*s).to_owned()).collect(), 7);
        let got: Vec<String> = chunks
            .iter()
            .map(|chunk| shape(decoder.push(chunk.clone())))
            .collect();
        assert_eq!(got, expected, "stops {stops:?}");
    }

    #[test]
    fn finish_reasons_map_one_by_one() {
        check(
            &[],
            &[text("Hi"), last(".", "stop", Some((7, 2)))],
            &["\"Hi\"", "stop \".\" 7/2"],
        );
        check(
            &[],
            &[last("a", "length", Some((7, 1)))],
            &["length \"a\" 7/1"],
        );
        for reason in [
            "canceled",
            "tool_calls",
            "generated_image",
            "generated_speech",
            "new",
        ] {
            check(&[], &[last("x", reason, Some((7, 1)))], &["failed"]);
        }
    }

    #[test]
    fn usage_falls_back_to_our_counts() {
        check(
            &[],
            &[text("a"), text("b"), last("", "length", None)],
            &["\"a\"", "\"b\"", "length \"\" 7/3"],
        );
    }

    #[test]
    fn a_stop_sequence_ends_with_our_counts_whatever_mistral_says() {
        check(
            &["END"],
            &[text("one E"), last("ND two", "length", Some((7, 9)))],
            &["\"one \"", "stop(\"END\") \"\" 7/2"],
        );
        check(
            &["\n\n"],
            &[text("a\n"), last("\nb", "stop", Some((7, 2)))],
            &["\"a\"", "stop(\"\\n\\n\") \"\" 7/2"],
        );
    }

    #[test]
    fn held_back_text_is_flushed_on_finish() {
        check(
            &["STOP"],
            &[text("go ST"), last("", "length", Some((7, 2)))],
            &["\"go \"", "length \"ST\" 7/2"],
        );
        check(
            &["STOP"],
            &[text("go S"), last("T", "stop", None)],
            &["\"go \"", "stop \"ST\" 7/2"],
        );
    }

    #[test]
    fn an_empty_last_chunk_still_finishes() {
        // The last token left a character unfinished: mistral.rs sends the finish reason with
        // no text.
        check(
            &[],
            &[text("\u{d55c}"), last("", "length", Some((7, 2)))],
            &["\"\u{d55c}\"", "length \"\" 7/2"],
        );
    }
}
