//! `llm-bench transport`: thousands of concurrent SSE streams from a scripted engine that emits
//! tokens at a fixed rate, to measure what the transport itself costs: the latency it adds to
//! each token, memory per open stream, and CPU time per million chunks.
//!
//! The server runs in a child process (its memory and CPU are measured alone); the clients run
//! here, on the same machine, so the two share its cores. Each token carries its emission time
//! (wall clock, microseconds), and each client compares it with its own clock on arrival.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use llm_protocol::{ChatStreamDecoder, StreamEvent};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::child::ChildServer;
use crate::stats::{self, Summary};

#[derive(Debug, Args)]
pub(crate) struct TransportArgs {
    /// Numbers of concurrent streams, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    streams: Vec<usize>,
    /// Tokens per second of each stream.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Length of each stream, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Also write the table into docs/benchmarks.md (section `transport`).
    #[arg(long)]
    write_docs: bool,
}

#[derive(Debug, Serialize)]
struct Level {
    streams: usize,
    completed: usize,
    failed: usize,
    chunks: u64,
    added_latency_ms: Summary,
    rss_per_stream_kib: f64,
    cpu_seconds_per_million_chunks: f64,
    server_cpu_seconds: f64,
    wall_seconds: f64,
}

pub(crate) async fn run(args: TransportArgs) -> anyhow::Result<()> {
    let tokens = (args.rate * args.seconds).round().max(1.0) as usize;
    let interval_ms = 1e3 / args.rate;
    let mut levels = Vec::new();
    for &streams in &args.streams {
        let server = ChildServer::start(tokens, interval_ms, 5.0)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pid = server.pid();
        let rss_before = stats::rss_bytes(pid)?;
        let cpu_before = stats::cpu_seconds(pid)?;
        let started = Instant::now();
        // Connections open 256 at a time, so the listen backlog never overflows.
        let opening = Arc::new(Semaphore::new(256));
        let clients: Vec<_> = (0..streams)
            .map(|_| tokio::spawn(client(server.address, Arc::clone(&opening))))
            .collect();
        // Memory while every stream is open: halfway through the streams.
        let opened = async {
            while opening.available_permits() < 256 || started.elapsed().as_secs_f64() < 1.0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        opened.await;
        tokio::time::sleep(Duration::from_secs_f64(args.seconds / 2.0)).await;
        let rss_during = stats::rss_bytes(pid)?;
        let mut latencies = Vec::new();
        let (mut completed, mut failed, mut chunks) = (0, 0, 0u64);
        for client in clients {
            match client.await? {
                Ok(samples) => {
                    completed += 1;
                    chunks += samples.len() as u64;
                    latencies.extend(samples);
                }
                Err(_) => failed += 1,
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = stats::cpu_seconds(pid)? - cpu_before;
        drop(server);
        let level = Level {
            streams,
            completed,
            failed,
            chunks,
            added_latency_ms: Summary::of(&mut latencies),
            rss_per_stream_kib: rss_during.saturating_sub(rss_before) as f64
                / 1024.0
                / streams as f64,
            cpu_seconds_per_million_chunks: cpu / chunks.max(1) as f64 * 1e6,
            server_cpu_seconds: cpu,
            wall_seconds: wall,
        };
        eprintln!(
            "{streams} streams: added p50 {:.2} ms p99 {:.2} ms, {:.1} KiB/stream, \
             {:.1} CPU s per million chunks, {failed} failed",
            level.added_latency_ms.p50,
            level.added_latency_ms.p99,
            level.rss_per_stream_kib,
            level.cpu_seconds_per_million_chunks
        );
        levels.push(level);
    }
    let path = stats::write_json(
        "transport",
        &serde_json::json!({"rate": args.rate, "seconds": args.seconds, "levels": levels}),
    )?;
    let mut table = String::from(
        "| streams | completed | failed | chunks | added latency p50 / p99 / max (ms) | \
         memory per stream (KiB) | server CPU s per million chunks |\n\
         |---:|---:|---:|---:|---|---:|---:|\n",
    );
    for l in &levels {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} / {:.2} / {:.1} | {:.1} | {:.1} |\n",
            l.streams,
            l.completed,
            l.failed,
            l.chunks,
            l.added_latency_ms.p50,
            l.added_latency_ms.p99,
            l.added_latency_ms.max,
            l.rss_per_stream_kib,
            l.cpu_seconds_per_million_chunks
        ));
    }
    eprintln!("\n{table}\nJSON: {}", path.display());
    if args.write_docs {
        let text = format!(
            "Each stream: {} tokens/s for {} s from the scripted engine; server and clients share \
             this machine's cores.\n\n{table}",
            args.rate, args.seconds
        );
        stats::write_section("benchmarks.md", "transport", &text)?;
    }
    Ok(())
}

/// One stream: the latency of each token, in milliseconds.
async fn client(address: SocketAddr, opening: Arc<Semaphore>) -> anyhow::Result<Vec<f64>> {
    let body = r#"{"stream":true,"messages":[{"role":"user","content":"go"}]}"#;
    let mut socket = {
        let _permit = opening.acquire().await?;
        let mut socket = TcpStream::connect(address).await?;
        // HTTP/1.0: the body is the raw event stream, ended by the server closing.
        let request = format!(
            "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(request.as_bytes()).await?;
        socket
    };
    let mut buffer = vec![0; 16 << 10];
    let mut decoder = ChatStreamDecoder::new();
    let mut events = Vec::new();
    let mut latencies = Vec::new();
    let mut head_done = false;
    let mut head = Vec::new();
    loop {
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            anyhow::bail!("closed before [DONE]");
        }
        let mut data = &buffer[..read];
        if !head_done {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            head_done = true;
            let rest = head.split_off(end + 4);
            decoder.push(&rest, &mut events)?;
            data = &[];
        }
        decoder.push(data, &mut events)?;
        let now = now_micros();
        for event in events.drain(..) {
            match event {
                StreamEvent::Chunk(chunk) => {
                    let stamp = chunk
                        .choices
                        .first()
                        .and_then(|c| c.delta.content.as_deref())
                        .and_then(|text| text.trim().parse::<u64>().ok());
                    if let Some(stamp) = stamp {
                        latencies.push(now.saturating_sub(stamp) as f64 / 1e3);
                    }
                }
                StreamEvent::Done => return Ok(latencies),
                _ => {}
            }
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
