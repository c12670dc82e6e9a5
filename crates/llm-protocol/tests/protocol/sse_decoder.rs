//! Table-driven tests of the SSE decoder against the WHATWG parsing rules. Every case is decoded
//! whole, one byte at a time, and split at every pair of positions: the result must not change.

use llm_protocol::sse::{DecoderLimits, Event, SseDecoder, SseItem};
use llm_protocol::Error;

fn event(data: &str) -> SseItem {
    SseItem::Event(Event::data(data))
}

fn event_with_id(data: &str, id: &str) -> SseItem {
    SseItem::Event(Event::data(data).with_id(id))
}

fn typed(kind: &str, data: &str) -> SseItem {
    SseItem::Event(Event::data(data).with_event(kind))
}

fn comment(text: &str) -> SseItem {
    SseItem::Comment(text.to_owned())
}

fn decode_pieces(pieces: &[&[u8]]) -> Vec<SseItem> {
    let mut decoder = SseDecoder::new();
    let mut out = Vec::new();
    for piece in pieces {
        decoder.push(piece, &mut out).expect("within limits");
    }
    decoder.finish();
    out
}

fn check(input: &[u8], expected: &[SseItem]) {
    let name = String::from_utf8_lossy(input);
    assert_eq!(decode_pieces(&[input]), expected, "whole: {name:?}");
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(decode_pieces(&bytes), expected, "byte by byte: {name:?}");
    for first in 0..=input.len() {
        for second in first..=input.len() {
            let pieces = [&input[..first], &input[first..second], &input[second..]];
            assert_eq!(
                decode_pieces(&pieces),
                expected,
                "split at {first} and {second}: {name:?}"
            );
        }
    }
}

#[test]
fn whatwg_spec_examples() {
    // "Interpreting an event stream": the stock ticker example.
    check(
        b"data: YHOO\ndata: +2\ndata: 10\n\n",
        &[event("YHOO\n+2\n10")],
    );
    // Comments, ids, an id without value resetting the last id, a leading space kept.
    check(
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        &[
            comment("test stream"),
            event_with_id("first event", "1"),
            event("second event"),
            event(" third event"),
        ],
    );
    // Empty data, a lone newline, and an unterminated block that is discarded.
    check(b"data\n\ndata\ndata\n\ndata:", &[event(""), event("\n")]);
    // With and without the space after the colon: identical events.
    check(
        b"data:test\n\ndata: test\n\n",
        &[event("test"), event("test")],
    );
}

#[test]
fn line_ends() {
    let expected = [event("a"), event("b")];
    check(b"data: a\r\n\r\ndata: b\r\n\r\n", &expected);
    check(b"data: a\r\rdata: b\r\r", &expected);
    check(b"data: a\n\ndata: b\n\n", &expected);
    check(b"data: a\r\n\ndata: b\n\r\n", &expected);
    // A CR followed by a CR is two line ends, not one.
    check(b"data: a\r\r\r\n", &[event("a")]);
    // A lone LF after a CRLF is a blank line.
    check(b"data: x\r\n\n", &[event("x")]);
}

#[test]
fn bom() {
    check(b"\xEF\xBB\xBFdata: a\n\n", &[event("a")]);
    // Only one BOM is stripped; a second one starts a field name that matches nothing.
    check(
        b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n",
        &[event("b")],
    );
    // A BOM-like prefix that is not a BOM is content.
    check(b"\xEF\xBBdata: a\n\ndata: b\n\n", &[event("b")]);
    check(b"\xEFdata: a\n\n", &[]);
    // A BOM anywhere but the start is content too.
    check(b"data: \xEF\xBB\xBFa\n\n", &[event("\u{FEFF}a")]);
}

#[test]
fn fields() {
    // Event type, and its reset after dispatch.
    check(
        b"event: add\ndata: 1\n\ndata: 2\n\n",
        &[typed("add", "1"), event("2")],
    );
    // `event:` with an empty value means `message`.
    check(b"event: x\nevent:\ndata: 1\n\n", &[event("1")]);
    // The last id persists across events until changed.
    check(
        b"id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\n",
        &[
            event_with_id("a", "7"),
            event_with_id("b", "7"),
            event_with_id("c", "8"),
        ],
    );
    // An id containing NUL is ignored.
    check(
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        &[event_with_id("a", "1"), event_with_id("b", "1")],
    );
    // An event with empty data is not dispatched, but its id still counts.
    check(b"id: 5\n\ndata: a\n\n", &[event_with_id("a", "5")]);
    check(
        b"id: 5\nevent: x\n\ndata: a\n\n",
        &[event_with_id("a", "5")],
    );
    // Unknown fields and fields with odd names are ignored; a line without a colon is a field
    // with an empty value.
    check(
        b"foo: bar\nDATA: x\ndata : y\nretry\ndata: a\n\n",
        &[event("a")],
    );
    // Only the first colon separates; later ones are part of the value.
    check(b"data: a: b:c\n\n", &[event("a: b:c")]);
    // Only one leading space is removed.
    check(b"data:   x\n\n", &[event("  x")]);
    // A tab is not a space.
    check(b"data:\tx\n\n", &[event("\tx")]);
}

#[test]
fn retry() {
    check(b"retry: 1500\n\n", &[SseItem::Retry(1500)]);
    check(b"retry:0\ndata: a\n\n", &[SseItem::Retry(0), event("a")]);
    // Only ASCII digits: anything else is ignored.
    check(
        b"retry: 15s\nretry: -1\nretry: 1.5\nretry: \nretry: \xd9\xa1\n\n",
        &[],
    );
    // Absurdly long digit strings saturate instead of overflowing.
    check(
        b"retry: 99999999999999999999999\n\n",
        &[SseItem::Retry(u64::MAX)],
    );
}

#[test]
fn comments() {
    check(b":\n", &[comment("")]);
    check(
        b": keep-alive\n:no space\n:  two\n",
        &[comment("keep-alive"), comment("no space"), comment(" two")],
    );
    // Comments in the middle of an event do not end it.
    check(
        b"data: a\n: ping\ndata: b\n\n",
        &[comment("ping"), event("a\nb")],
    );
}

#[test]
fn utf8() {
    check(
        "data: 안녕하세요 👋\n\n".as_bytes(),
        &[event("안녕하세요 👋")],
    );
    check(
        "event: 이벤트\nid: 아이디\ndata: x\n\n".as_bytes(),
        &[SseItem::Event(
            Event::data("x").with_event("이벤트").with_id("아이디"),
        )],
    );
    // Invalid sequences become U+FFFD (maximal subparts, as the WHATWG decoder does).
    check(b"data: a\xffb\n\n", &[event("a\u{FFFD}b")]);
    check(b"data: \xe2\x82\n\n", &[event("\u{FFFD}")]);
    check(
        b"data: \xe2\x82\ndata: \xac\n\n",
        &[event("\u{FFFD}\n\u{FFFD}")],
    );
    check(b"data: \xf0\x9f\x91\n\n", &[event("\u{FFFD}")]);
    check(b": \xc3\n", &[comment("\u{FFFD}")]);
}

#[test]
fn end_of_stream_discards_the_incomplete_event() {
    check(b"data: a\n\ndata: b\n", &[event("a")]);
    check(b"data: a\n\ndata: b", &[event("a")]);
    check(b"data: a\n\ndata: b\r", &[event("a")]);
}

#[test]
fn last_event_id_survives_finish_and_seeds_the_next_stream() {
    let mut decoder = SseDecoder::new();
    let first = decoder
        .decode_all(b"id: 3\ndata: a\n\nid: 4\ndata: partial")
        .expect("ok");
    assert_eq!(first, [event_with_id("a", "3")]);
    assert_eq!(decoder.last_event_id(), "3");
    let second = decoder.decode_all(b"data: b\n\n").expect("ok");
    assert_eq!(second, [event_with_id("b", "3")]);
}

#[test]
fn limits_are_enforced_with_a_clear_error() {
    let limits = DecoderLimits {
        max_line_len: 16,
        max_event_size: 24,
    };
    let mut out = Vec::new();

    let mut decoder = SseDecoder::with_limits(limits);
    decoder
        .push(b"data: 0123456789", &mut out)
        .expect("16 bytes fit");
    let error = decoder.push(b"x", &mut out).expect_err("17 bytes do not");
    assert!(matches!(error, Error::LineTooLong { limit: 16 }));
    assert_eq!(
        error.to_string(),
        "SSE line longer than the limit of 16 bytes"
    );
    // The decoder stays failed.
    assert!(matches!(
        decoder.push(b"\n\n", &mut out),
        Err(Error::LineTooLong { .. })
    ));

    // A long field name or comment counts as well.
    let mut decoder = SseDecoder::with_limits(limits);
    assert!(decoder.push(&[b'a'; 17], &mut out).is_err());
    let mut decoder = SseDecoder::with_limits(limits);
    assert!(decoder.push(&[b':'; 17], &mut out).is_err());

    // Many short data lines add up to one large event.
    let mut decoder = SseDecoder::with_limits(limits);
    let error = decoder
        .push(
            b"data: 0123456789\ndata: 0123456789\ndata: 0123\n",
            &mut out,
        )
        .expect_err("event too large");
    assert!(matches!(error, Error::EventTooLarge { limit: 24 }));
    assert!(out.is_empty());

    // Lines past the limit in total are fine as long as each fits.
    let mut decoder = SseDecoder::with_limits(limits);
    for _ in 0..1000 {
        decoder
            .push(b"data: 0123456789\n\n", &mut out)
            .expect("fits");
    }
    assert_eq!(out.len(), 1000);
}
