//! Server-sent events: the event type, an encoder and an incremental decoder.
//!
//! The decoder follows the WHATWG HTML "server-sent events" parsing rules exactly; the encoder
//! writes what that decoder (and every browser) reads back unchanged.

mod decode;
mod encode;

pub use decode::{DecoderLimits, SseDecoder, SseItem};
pub use encode::{write_comment, write_data, write_done, write_event, DONE};

/// One server-sent event.
///
/// On the decoding side `event` is `None` for the default type `message`, `id` is the stream's
/// last event id at the time of dispatch (it persists across events, as the spec says), and
/// `retry` is always `None`: a `retry` field changes the reconnection time of the stream, so the
/// decoder reports it as [`SseItem::Retry`] instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The event type; `None` means `message`.
    pub event: Option<String>,
    /// The payload. Line breaks become several `data:` lines on the wire.
    pub data: String,
    /// The event id (`Last-Event-ID` on reconnect).
    pub id: Option<String>,
    /// Reconnection time in milliseconds to announce to the client.
    pub retry: Option<u64>,
}

impl Event {
    /// A `message` event with the given data and nothing else.
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            data: data.into(),
            ..Self::default()
        }
    }

    /// Sets the event id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the event type.
    #[must_use]
    pub fn with_event(mut self, event: impl Into<String>) -> Self {
        self.event = Some(event.into());
        self
    }
}
