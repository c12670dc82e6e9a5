//! An incremental server-sent events decoder, exact to the WHATWG HTML parsing rules.
//!
//! Bytes may arrive in pieces split anywhere: inside a CRLF, a UTF-8 character or a field name.
//! The decoder is a byte-level state machine that never rescans input: each byte is looked at
//! once (line ends and colons are found with `memchr`), and each payload byte is copied once,
//! straight into the buffer it ends up in. Field names, values and line ends are ASCII, so parsing
//! bytes and decoding each value as UTF-8 afterwards (invalid sequences become U+FFFD, as the
//! spec's decoder does) gives the same result as decoding the stream first.
//!
//! Memory is bounded by [`DecoderLimits`]: a line or an event that grows past its limit is an
//! error, not unbounded growth.

use std::mem;

use super::Event;
use crate::error::{Error, Result};

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Size limits that keep a decoder's memory bounded whatever the peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// The longest line, in bytes, without its line end.
    pub max_line_len: usize,
    /// The most `data` bytes one event may accumulate.
    pub max_event_size: usize,
}

impl Default for DecoderLimits {
    /// 1 MiB lines and 4 MiB events: far above any chat chunk, far below trouble.
    fn default() -> Self {
        Self {
            max_line_len: 1 << 20,
            max_event_size: 4 << 20,
        }
    }
}

/// What the decoder produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event.
    Event(Event),
    /// A comment line (`: text`), with one leading space removed. Servers send comments as
    /// keep-alives; the spec ignores them, but a client may want to reset an idle timer.
    Comment(String),
    /// A valid `retry` field: the new reconnection time in milliseconds.
    Retry(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Id,
    Retry,
    Comment,
    Ignored,
}

impl Field {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"data" => Self::Data,
            b"event" => Self::Event,
            b"id" => Self::Id,
            b"retry" => Self::Retry,
            _ => Self::Ignored,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// Reading a field name, up to the first colon or line end.
    Name,
    /// Just after the colon: one space here is dropped.
    ValueStart(Field),
    /// Reading the value, up to the line end.
    Value(Field),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Line,
    Event,
}

/// Incremental SSE decoder. Feed it byte pieces with [`push`](Self::push); it appends complete
/// items to a caller-owned `Vec`, which can be reused between calls.
///
/// ```
/// use llm_protocol::sse::{SseDecoder, SseItem};
///
/// let mut decoder = SseDecoder::new();
/// let mut items = Vec::new();
/// decoder.push(b"id: 1\ndata: hel", &mut items)?;
/// assert!(items.is_empty());
/// decoder.push(b"lo\r", &mut items)?;
/// decoder.push(b"\n\r\n", &mut items)?;
/// let SseItem::Event(event) = &items[0] else { unreachable!() };
/// assert_eq!((event.data.as_str(), event.id.as_deref()), ("hello", Some("1")));
/// # Ok::<(), llm_protocol::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SseDecoder {
    limits: DecoderLimits,
    /// `Some(n)` while the first `n` bytes of the stream matched a BOM and more are needed.
    bom_matched: Option<usize>,
    state: LineState,
    /// The previous line ended with CR: a LF right after it belongs to that line end.
    skip_lf: bool,
    line_len: usize,
    name: Vec<u8>,
    value: Vec<u8>,
    data: Vec<u8>,
    event_type: String,
    id_buffer: String,
    last_event_id: String,
    failed: Option<Failure>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with the default limits.
    pub fn new() -> Self {
        Self::with_limits(DecoderLimits::default())
    }

    /// A decoder with the given limits.
    pub fn with_limits(limits: DecoderLimits) -> Self {
        Self {
            limits,
            bom_matched: Some(0),
            state: LineState::Name,
            skip_lf: false,
            line_len: 0,
            name: Vec::new(),
            value: Vec::new(),
            data: Vec::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
            failed: None,
        }
    }

    /// The stream's last event id, as a reconnecting client sends it in `Last-Event-ID`. It is
    /// updated when an event block ends, even one with no data, and survives
    /// [`finish`](Self::finish).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Decodes the next piece of the stream, appending every completed item to `out`.
    ///
    /// # Errors
    /// [`Error::LineTooLong`] or [`Error::EventTooLarge`] when the input breaks a limit. The
    /// decoder cannot resynchronise after that: every later call returns the same error.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<SseItem>) -> Result<()> {
        self.check_failed()?;
        if let Some(mut matched) = self.bom_matched {
            while matched < BOM.len() && input.first() == Some(&BOM[matched]) {
                matched += 1;
                input = &input[1..];
            }
            if matched == BOM.len() {
                self.bom_matched = None;
            } else if input.is_empty() {
                self.bom_matched = Some(matched);
                return Ok(());
            } else {
                // Not a BOM after all: what looked like its start is content.
                self.bom_matched = None;
                self.feed(&BOM[..matched], out)?;
            }
        }
        self.feed(input, out)
    }

    /// Ends the stream. An incomplete event (no blank line yet) is discarded, as the spec says.
    /// The decoder is then ready for a new stream (a reconnection); the last event id is kept.
    pub fn finish(&mut self) {
        let last_event_id = mem::take(&mut self.last_event_id);
        *self = Self::with_limits(self.limits);
        self.id_buffer.clone_from(&last_event_id);
        self.last_event_id = last_event_id;
    }

    /// Decodes a whole stream at once: [`push`](Self::push) then [`finish`](Self::finish).
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn decode_all(&mut self, input: &[u8]) -> Result<Vec<SseItem>> {
        let mut out = Vec::new();
        self.push(input, &mut out)?;
        self.finish();
        Ok(out)
    }

    fn check_failed(&self) -> Result<()> {
        match self.failed {
            None => Ok(()),
            Some(Failure::Line) => Err(Error::LineTooLong {
                limit: self.limits.max_line_len,
            }),
            Some(Failure::Event) => Err(Error::EventTooLarge {
                limit: self.limits.max_event_size,
            }),
        }
    }

    fn fail(&mut self, failure: Failure) -> Result<()> {
        self.failed = Some(failure);
        // Release what the broken stream made us hold.
        self.name = Vec::new();
        self.value = Vec::new();
        self.data = Vec::new();
        self.check_failed()
    }

    fn feed(&mut self, input: &[u8], out: &mut Vec<SseItem>) -> Result<()> {
        let mut at = 0;
        while at < input.len() {
            if mem::take(&mut self.skip_lf) && input[at] == b'\n' {
                at += 1;
                continue;
            }
            let rest = &input[at..];
            match self.state {
                LineState::Name => match memchr::memchr3(b':', b'\r', b'\n', rest) {
                    None => {
                        self.grow_line(rest.len())?;
                        self.name.extend_from_slice(rest);
                        at = input.len();
                    }
                    Some(end) => {
                        self.grow_line(end)?;
                        self.name.extend_from_slice(&rest[..end]);
                        at += end + 1;
                        if rest[end] == b':' {
                            self.grow_line(1)?;
                            let field = if self.name.is_empty() {
                                Field::Comment
                            } else {
                                Field::from_name(&self.name)
                            };
                            self.state = LineState::ValueStart(field);
                        } else {
                            self.end_line(rest[end], out)?;
                        }
                    }
                },
                LineState::ValueStart(field) => {
                    self.state = LineState::Value(field);
                    if rest[0] == b' ' {
                        self.grow_line(1)?;
                        at += 1;
                    }
                }
                LineState::Value(field) => match memchr::memchr2(b'\r', b'\n', rest) {
                    None => {
                        self.extend_value(field, rest)?;
                        at = input.len();
                    }
                    Some(end) => {
                        self.extend_value(field, &rest[..end])?;
                        at += end + 1;
                        self.end_line(rest[end], out)?;
                    }
                },
            }
        }
        Ok(())
    }

    fn grow_line(&mut self, by: usize) -> Result<()> {
        self.line_len += by;
        if self.line_len > self.limits.max_line_len {
            return self.fail(Failure::Line);
        }
        Ok(())
    }

    fn extend_value(&mut self, field: Field, bytes: &[u8]) -> Result<()> {
        self.grow_line(bytes.len())?;
        match field {
            Field::Data => {
                if self.data.len() + bytes.len() > self.limits.max_event_size {
                    return self.fail(Failure::Event);
                }
                self.data.extend_from_slice(bytes);
            }
            Field::Event | Field::Id | Field::Retry | Field::Comment => {
                self.value.extend_from_slice(bytes);
            }
            Field::Ignored => {}
        }
        Ok(())
    }

    fn end_line(&mut self, terminator: u8, out: &mut Vec<SseItem>) -> Result<()> {
        self.skip_lf = terminator == b'\r';
        let field = match mem::replace(&mut self.state, LineState::Name) {
            LineState::Name if self.name.is_empty() => {
                self.dispatch(out);
                return Ok(());
            }
            // A line without a colon is a field whose value is empty.
            LineState::Name => Field::from_name(&self.name),
            LineState::ValueStart(field) | LineState::Value(field) => field,
        };
        self.line_len = 0;
        self.name.clear();
        match field {
            Field::Data => {
                if self.data.len() >= self.limits.max_event_size {
                    return self.fail(Failure::Event);
                }
                self.data.push(b'\n');
            }
            Field::Event => self.event_type = take_text(&mut self.value),
            Field::Id => {
                if !self.value.contains(&0) {
                    self.id_buffer = take_text(&mut self.value);
                }
            }
            Field::Retry => {
                if !self.value.is_empty() && self.value.iter().all(u8::is_ascii_digit) {
                    let millis = self.value.iter().fold(0u64, |acc, digit| {
                        acc.saturating_mul(10)
                            .saturating_add(u64::from(digit - b'0'))
                    });
                    out.push(SseItem::Retry(millis));
                }
            }
            Field::Comment => out.push(SseItem::Comment(take_text(&mut self.value))),
            Field::Ignored => {}
        }
        self.value.clear();
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        self.line_len = 0;
        if self.last_event_id != self.id_buffer {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        if self.data.last() == Some(&b'\n') {
            self.data.pop();
        }
        let event = Event {
            event: (!self.event_type.is_empty()).then(|| mem::take(&mut self.event_type)),
            data: take_text(&mut self.data),
            id: (!self.last_event_id.is_empty()).then(|| self.last_event_id.clone()),
            retry: None,
        };
        self.event_type.clear();
        out.push(SseItem::Event(event));
    }
}

/// Moves the bytes out as text, replacing invalid UTF-8 with U+FFFD. Valid input is not copied.
fn take_text(bytes: &mut Vec<u8>) -> String {
    match String::from_utf8(mem::take(bytes)) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    }
}
