//! Writing server-sent events into a `BytesMut`.
//!
//! Every function appends complete lines, so a buffer can be flushed after any call. Line breaks
//! inside `data` (LF, CR or CRLF) become several `data:` lines, which a decoder joins with LF.
//! `event` and `id` cannot hold line breaks on the wire; CR and LF are dropped from them.

use bytes::{BufMut, BytesMut};

use super::Event;

/// The payload OpenAI streams end with.
pub const DONE: &str = "[DONE]";

/// Appends a complete event, terminated by its blank line.
pub fn write_event(buf: &mut BytesMut, event: &Event) {
    if let Some(kind) = &event.event {
        write_single_line_field(buf, b"event: ", kind);
    }
    if let Some(id) = &event.id {
        write_single_line_field(buf, b"id: ", id);
    }
    if let Some(retry) = event.retry {
        buf.put_slice(b"retry: ");
        buf.put_slice(retry.to_string().as_bytes());
        buf.put_u8(b'\n');
    }
    write_data_lines(buf, &event.data);
    buf.put_u8(b'\n');
}

/// Appends a `message` event holding only `data` (the common case for JSON chunks).
pub fn write_data(buf: &mut BytesMut, data: &str) {
    write_data_lines(buf, data);
    buf.put_u8(b'\n');
}

/// Appends `data: [DONE]` and its blank line.
pub fn write_done(buf: &mut BytesMut) {
    buf.put_slice(b"data: [DONE]\n\n");
}

/// Appends a comment (`: text`), one comment line per line of `text`. Decoders ignore comments,
/// which makes them the keep-alive of choice.
pub fn write_comment(buf: &mut BytesMut, text: &str) {
    for line in lines(text) {
        if line.is_empty() {
            buf.put_slice(b":\n");
        } else {
            buf.put_slice(b": ");
            buf.put_slice(line.as_bytes());
            buf.put_u8(b'\n');
        }
    }
}

fn write_data_lines(buf: &mut BytesMut, data: &str) {
    // JSON payloads never contain raw line breaks: one reserve, one copy.
    if memchr::memchr2(b'\n', b'\r', data.as_bytes()).is_none() {
        buf.reserve(data.len() + 7);
        buf.put_slice(b"data: ");
        buf.put_slice(data.as_bytes());
        buf.put_u8(b'\n');
        return;
    }
    for line in lines(data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
}

fn write_single_line_field(buf: &mut BytesMut, name: &[u8], value: &str) {
    buf.put_slice(name);
    for piece in value.split(['\r', '\n']) {
        buf.put_slice(piece.as_bytes());
    }
    buf.put_u8(b'\n');
}

/// Splits on LF, CR and CRLF, the line ends of the SSE grammar. Always yields at least one line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr2(b'\n', b'\r', current.as_bytes()) {
            None => {
                rest = None;
                Some(current)
            }
            Some(at) => {
                let skip = if current[at..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[at + skip..]);
                Some(&current[..at])
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(write: impl FnOnce(&mut BytesMut)) -> String {
        let mut buf = BytesMut::new();
        write(&mut buf);
        String::from_utf8(buf.to_vec()).expect("encoder writes UTF-8")
    }

    #[test]
    fn check_encodings() {
        let cases: &[(Event, &str)] = &[
            (Event::data("{}"), "data: {}\n\n"),
            (Event::data(""), "data: \n\n"),
            (Event::data("a\nb"), "data: a\ndata: b\n\n"),
            (
                Event::data("a\r\nb\rc\n"),
                "data: a\ndata: b\ndata: c\ndata: \n\n",
            ),
            (
                Event::data("x").with_id("7").with_event("token"),
                "event: token\nid: 7\ndata: x\n\n",
            ),
            (
                Event {
                    retry: Some(1500),
                    ..Event::data("x")
                },
                "retry: 1500\ndata: x\n\n",
            ),
            (Event::data("x").with_id("a\r\nb"), "id: ab\ndata: x\n\n"),
        ];
        for (event, expected) in cases {
            assert_eq!(
                encoded(|buf| write_event(buf, event)),
                *expected,
                "{event:?}"
            );
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(encoded(write_done), "data: [DONE]\n\n");
        assert_eq!(
            encoded(|buf| write_data(buf, "{\"a\":1}")),
            "data: {\"a\":1}\n\n"
        );
        assert_eq!(encoded(|buf| write_comment(buf, "")), ":\n");
        assert_eq!(
            encoded(|buf| write_comment(buf, "keep-alive\nmore")),
            ": keep-alive\n: more\n"
        );
    }
}
