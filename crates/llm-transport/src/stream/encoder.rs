//! What a dialect supplies to stream a generation: its frames for each engine event.

use bytes::Bytes;
use llm_engine::{Finish, TextDelta};

use crate::error::Error;

/// Turns one generation's events into the frames of one dialect. Frames are complete SSE
/// events (numbered with `id:` when the stream is resumable), written to the socket or the
/// replay log as they are.
pub(crate) trait Encoder: Send + 'static {
    /// The frames that open the stream, before any text.
    fn open(&mut self) -> Vec<Bytes>;

    /// The frame of one piece of text. This is the one frame written per token: it should
    /// allocate once.
    fn delta(&mut self, text: &str) -> Bytes;

    /// The frames of a delta with what comes with its text (log probabilities, token counts
    /// so far, tool calls). Dialects whose requests cannot ask for those send the text alone.
    fn text_delta(&mut self, delta: &TextDelta) -> Vec<Bytes> {
        if delta.text.is_empty() {
            return Vec::new();
        }
        vec![self.delta(&delta.text)]
    }

    /// The frames of a delta of choice `index`, when the request asked for several (`n`).
    /// Dialects with one choice per request send it as [`text_delta`](Self::text_delta).
    fn choice_delta(&mut self, index: u32, delta: &TextDelta) -> Vec<Bytes> {
        debug_assert_eq!(index, 0, "this dialect has one choice per request");
        self.text_delta(delta)
    }

    /// The frames that end choice `index` of several; [`finish`](Self::finish) follows when
    /// every choice has ended.
    fn choice_finished(&mut self, index: u32, finish: &Finish) -> Vec<Bytes> {
        let _ = (index, finish);
        Vec::new()
    }

    /// The frames that end a finished generation, the stream's end marker included.
    fn finish(&mut self, finish: &Finish) -> Vec<Bytes>;

    /// The frames that end a resumable generation the server cut because no client came
    /// back within the resume grace.
    fn cancelled(&mut self) -> Vec<Bytes>;

    /// The frames that end a failed stream: the error in the dialect's shape, then its end
    /// marker.
    fn error(&mut self, error: &Error) -> Vec<Bytes>;

    /// The frame that keeps a silent stream open through proxies' idle timeouts.
    fn keep_alive(&self) -> Bytes {
        // A comment line, then a blank line: clients that split the stream on blank lines
        // (rather than parse it line by line) see one empty block and skip it.
        Bytes::from_static(b": keep-alive\n\n")
    }
}
