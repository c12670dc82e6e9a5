//! SSE decoding throughput: `llm_protocol::sse::SseDecoder` against the `eventsource-stream`
//! crate, on the same 64 MiB stream of realistic chat chunks delivered in the same pieces.
//!
//! Run with `cargo bench -p llm-protocol --bench sse_decode`. Figures are printed and written
//! into `docs/benchmarks.md` between the `sse-decode` markers. Both decoders run alternately in
//! one process, so the ratio holds even on a noisy machine; the absolute numbers do not.

#![allow(clippy::print_stdout, missing_docs)] // A benchmark binary reports on stdout.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use llm_protocol::sse::{self, Event, SseDecoder, SseItem};
use llm_protocol::{ChatCompletionChunk, ChunkChoice, Delta};

const STREAM_BYTES: usize = 64 << 20;
const ROUNDS: usize = 5;

/// Deterministic pieces and tokens: the same stream on every machine.
struct Rng(fastrand::Rng);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }
}

/// Token texts as a chat model emits them: words, punctuation, Korean, emoji, escapes.
const TOKENS: &[&str] = &[
    " the",
    " of",
    " and",
    " streaming",
    " server",
    ",",
    ".",
    " 안녕",
    "하세요",
    " 👋",
    "\n",
    " \"quoted\"",
    " tab\t",
    " model",
    " token",
    "s",
    " is",
    " a",
    " fast",
    " Rust",
];

fn build_stream(rng: &mut Rng) -> (Bytes, usize, usize) {
    let mut wire = BytesMut::with_capacity(STREAM_BYTES + 4096);
    let mut events = 0;
    let mut data_bytes = 0;
    let mut response = 0u64;
    while wire.len() < STREAM_BYTES {
        response += 1;
        let id = format!("chatcmpl-{response:016x}");
        for position in 0..(50 + rng.below(400)) {
            let chunk = ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk".to_owned(),
                created: 1_764_000_000,
                model: "SmolLM2-135M-Instruct".to_owned(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: None,
                        content: Some(TOKENS[rng.below(TOKENS.len())].to_owned()),
                        tool_calls: None,
                    },
                    logprobs: None,
                    finish_reason: None,
                }],
                usage: None,
            };
            let data = serde_json::to_string(&chunk).expect("chunks serialize");
            data_bytes += data.len();
            events += 1;
            sse::write_event(
                &mut wire,
                &Event::data(data).with_id(format!("{id}.{position}")),
            );
            if rng.below(64) == 0 {
                sse::write_comment(&mut wire, "keep-alive");
            }
        }
        sse::write_done(&mut wire);
        events += 1;
        data_bytes += sse::DONE.len();
    }
    (wire.freeze(), events, data_bytes)
}

/// Cuts the stream the way socket reads do: pieces of 1 byte to 16 KiB, mostly a few KiB.
fn split(wire: &Bytes, rng: &mut Rng) -> Vec<Bytes> {
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let len = match rng.below(10) {
            0 => 1 + rng.below(64),
            1..=7 => 1024 + rng.below(8192),
            _ => 8192 + rng.below(8192),
        };
        let end = (at + len).min(wire.len());
        pieces.push(wire.slice(at..end));
        at = end;
    }
    pieces
}

fn ours(pieces: &[Bytes]) -> (usize, usize) {
    let mut decoder = SseDecoder::new();
    let mut items = Vec::new();
    let (mut events, mut data_bytes) = (0, 0);
    for piece in pieces {
        decoder
            .push(piece, &mut items)
            .expect("benchmark stream is valid");
        for item in items.drain(..) {
            if let SseItem::Event(event) = item {
                events += 1;
                data_bytes += event.data.len();
            }
        }
    }
    (events, data_bytes)
}

fn theirs(pieces: &[Bytes]) -> (usize, usize) {
    let stream = futures::stream::iter(pieces.iter().cloned().map(Ok::<_, Infallible>));
    futures::executor::block_on(stream.eventsource().fold(
        (0, 0),
        |(events, data_bytes), event| async move {
            let event = event.expect("benchmark stream is valid");
            (events + 1, data_bytes + event.data.len())
        },
    ))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn mib_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / time.as_secs_f64()
}

fn main() {
    let mut rng = Rng(fastrand::Rng::with_seed(0x5eed_cafe_f00d_d00d));
    let (wire, events, data_bytes) = build_stream(&mut rng);
    let pieces = split(&wire, &mut rng);
    println!(
        "stream: {:.1} MiB, {events} events, {} pieces",
        wire.len() as f64 / (1 << 20) as f64,
        pieces.len()
    );

    let (mut ours_times, mut theirs_times) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        assert_eq!(
            ours(&pieces),
            (events, data_bytes),
            "llm-protocol decodes every event"
        );
        ours_times.push(start.elapsed());
        let start = Instant::now();
        assert_eq!(
            theirs(&pieces),
            (events, data_bytes),
            "eventsource-stream decodes every event"
        );
        theirs_times.push(start.elapsed());
    }
    let (ours_time, theirs_time) = (median(ours_times), median(theirs_times));
    let ours_rate = mib_per_s(wire.len(), ours_time);
    let theirs_rate = mib_per_s(wire.len(), theirs_time);
    let ratio = ours_rate / theirs_rate;

    let report = format!(
        "| decoder | median time | throughput |\n\
         |---|---|---|\n\
         | `llm_protocol::sse::SseDecoder` | {:.1} ms | {ours_rate:.0} MiB/s |\n\
         | `eventsource-stream` 0.2 | {:.1} ms | {theirs_rate:.0} MiB/s |\n\
         \n\
         **Ratio: {ratio:.1}x** the throughput of `eventsource-stream` \
         ({:.1} MiB, {events} events in {} pieces of 1 B to 16 KiB, median of {ROUNDS} alternating rounds).\n",
        ours_time.as_secs_f64() * 1e3,
        theirs_time.as_secs_f64() * 1e3,
        wire.len() as f64 / (1 << 20) as f64,
        pieces.len(),
    );
    println!("{report}");
    write_report(&report);
}

/// Replaces the section between the markers in `docs/benchmarks.md`.
fn write_report(report: &str) {
    const BEGIN: &str = "<!-- sse-decode:begin -->";
    const END: &str = "<!-- sse-decode:end -->";
    // `cargo bench` sets CARGO_MANIFEST_DIR for the process: it wins over the compile-time
    // value, which names the checkout that built the binary. A runtime value is used only if
    // it is this crate's (a process started by another cargo command inherits that one's),
    // as in the other benchmarks.
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .filter(|dir| dir.ends_with("crates/llm-protocol"))
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../docs/benchmarks.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let section = format!("{BEGIN}\n{report}{END}");
    let updated = match (current.find(BEGIN), current.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!(
                "{}{section}{}",
                &current[..begin],
                &current[end + END.len()..]
            )
        }
        _ => format!("{current}\n{section}\n"),
    };
    match std::fs::write(path, updated) {
        Ok(()) => println!("written to docs/benchmarks.md"),
        Err(error) => println!("could not write docs/benchmarks.md: {error}"),
    }
}
