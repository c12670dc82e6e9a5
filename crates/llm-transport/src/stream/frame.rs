//! SSE events with the ids of resumable streams: the framing every dialect shares.

use bytes::{BufMut, Bytes, BytesMut};
use llm_protocol::{sse, ErrorBody};

use crate::error::Error;

/// Writes the events of one response, numbering them `RESPONSE:N` when the stream is
/// resumable, so that a client can resume after any event with `Last-Event-ID`.
#[derive(Debug)]
pub(crate) struct Framer {
    response_id: String,
    resumable: bool,
    next: u64,
}

impl Framer {
    pub(crate) fn new(response_id: &str, resumable: bool) -> Self {
        Self {
            response_id: response_id.to_owned(),
            resumable,
            next: 0,
        }
    }

    /// The next event's number, as its `id:` when the stream is resumable.
    fn next_id(&mut self) -> Option<String> {
        let id = self
            .resumable
            .then(|| format!("{}:{}", self.response_id, self.next));
        self.next += 1;
        id
    }

    /// One event: `event:` when named, then `data:`.
    pub(crate) fn event(&mut self, name: Option<&str>, data: String) -> Bytes {
        let event = sse::Event {
            event: name.map(str::to_owned),
            data,
            id: self.next_id(),
            retry: None,
        };
        let mut buf = BytesMut::with_capacity(event.data.len() + 64);
        sse::write_event(&mut buf, &event);
        buf.freeze()
    }

    /// One event whose data is `value` as JSON.
    pub(crate) fn json(&mut self, name: Option<&str>, value: &impl serde::Serialize) -> Bytes {
        self.event(
            name,
            serde_json::to_string(value).expect("stream events serialize"),
        )
    }

    /// The end of a failed OpenAI stream: `data: {"error": {...}}`, then `data: [DONE]`.
    pub(crate) fn openai_error(&mut self, error: &Error) -> Vec<Bytes> {
        let body = ErrorBody::from(error.to_api_error());
        vec![self.json(None, &body), self.done()]
    }

    /// `data: [DONE]`, the end of an OpenAI stream.
    pub(crate) fn done(&mut self) -> Bytes {
        self.event(None, sse::DONE.to_owned())
    }

    /// An event (named `name`, when given) whose data is `prefix`, `text` as a JSON string,
    /// then `suffix`: the per-token frame, built with one allocation. `prefix` starts with
    /// `data: `; `suffix` ends with the blank line.
    pub(crate) fn text_event(
        &mut self,
        name: Option<&str>,
        prefix: &str,
        text: &str,
        suffix: &str,
    ) -> Bytes {
        let mut buf = BytesMut::with_capacity(prefix.len() + text.len() + suffix.len() + 96);
        if let Some(name) = name {
            buf.extend_from_slice(b"event: ");
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b"\n");
        }
        if let Some(id) = self.next_id() {
            buf.extend_from_slice(b"id: ");
            buf.extend_from_slice(id.as_bytes());
            buf.extend_from_slice(b"\n");
        }
        buf.extend_from_slice(prefix.as_bytes());
        serde_json::to_writer((&mut buf).writer(), text).expect("writing to memory cannot fail");
        buf.extend_from_slice(suffix.as_bytes());
        buf.freeze()
    }
}
