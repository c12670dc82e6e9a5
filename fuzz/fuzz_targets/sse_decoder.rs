//! Fuzzes the SSE decoder and the OpenAI stream decoder on top of it.
//!
//! The first two bytes choose where the rest is cut into pieces. Beyond "no panic", the oracle
//! is split invariance: decoding the pieces must give exactly what decoding the whole input
//! gives, or the same limit error. Small limits make the limit paths reachable; they also bound
//! the memory a decoder may hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_protocol::sse::{DecoderLimits, SseDecoder, SseItem};
use llm_protocol::ChatStreamDecoder;

const LIMITS: DecoderLimits = DecoderLimits {
    max_line_len: 512,
    max_event_size: 2048,
};

fn decode(pieces: &[&[u8]]) -> Result<Vec<SseItem>, String> {
    let mut decoder = SseDecoder::with_limits(LIMITS);
    let mut out = Vec::new();
    for piece in pieces {
        decoder.push(piece, &mut out).map_err(|error| error.to_string())?;
    }
    decoder.finish();
    Ok(out)
}

fuzz_target!(|input: &[u8]| {
    let Some((&[a, b], rest)) = input.split_first_chunk::<2>() else {
        return;
    };
    let (a, b) = (usize::from(a), usize::from(b));
    let first = a.min(rest.len());
    let second = (first + b).min(rest.len());
    let whole = decode(&[rest]);
    let split = decode(&[&rest[..first], &rest[first..second], &rest[second..]]);
    let bytes: Vec<&[u8]> = rest.chunks(1).collect();
    let byte_by_byte = decode(&bytes);
    match (&whole, &split, &byte_by_byte) {
        (Ok(w), Ok(s), Ok(b)) => {
            assert_eq!(w, s, "split at {first}/{second} changed the result");
            assert_eq!(w, b, "byte-by-byte feeding changed the result");
            for item in w {
                if let SseItem::Event(event) = item {
                    assert!(event.data.len() <= 3 * LIMITS.max_event_size);
                }
            }
        }
        (Err(w), Err(s), Err(b)) => {
            assert_eq!(w, s);
            assert_eq!(w, b);
        }
        _ => panic!("whole {whole:?}, split {split:?}, byte by byte {byte_by_byte:?} disagree"),
    }

    let mut stream = ChatStreamDecoder::with_limits(LIMITS);
    let mut events = Vec::new();
    for piece in [&rest[..first], &rest[first..second], &rest[second..]] {
        if stream.push(piece, &mut events).is_err() {
            break;
        }
    }
});
