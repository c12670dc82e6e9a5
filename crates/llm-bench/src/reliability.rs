//! `llm-bench reliability`: the parts of the reliability suite that need a process of their
//! own: memory returning to its baseline after disconnect storms, and SIGTERM under load. The
//! fast parts run with the test suite (`crates/llm-transport/tests/http/reliability.rs`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::child::ChildServer;
use crate::stats;

#[derive(Debug, Args)]
pub(crate) struct ReliabilityArgs {
    /// Disconnect storms after the warm-up one.
    #[arg(long, default_value_t = 5)]
    storms: usize,
    /// Clients per storm.
    #[arg(long, default_value_t = 100)]
    clients: usize,
}

pub(crate) async fn run(args: ReliabilityArgs) -> anyhow::Result<()> {
    memory_after_storms(&args).await?;
    sigterm_under_load().await?;
    eprintln!("reliability: all checks passed");
    Ok(())
}

/// Storms run before the memory baseline is taken.
const WARM_UP_STORMS: u64 = 10;

const STREAM: &str = r#"{"stream":true,"messages":[{"role":"user","content":"go"}]}"#;

fn post(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Opens a stream, reads `lines` lines of it, and drops the connection.
async fn drop_after(address: SocketAddr, lines: usize) -> anyhow::Result<()> {
    let mut socket = TcpStream::connect(address).await?;
    socket.write_all(post(STREAM).as_bytes()).await?;
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    for _ in 0..lines {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the stream ended early");
        }
    }
    Ok(())
}

async fn metric(address: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let mut socket = TcpStream::connect(address).await?;
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    socket.read_to_string(&mut text).await?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

async fn storm(address: SocketAddr, clients: usize, seed: u64) -> anyhow::Result<Duration> {
    let mut rng = fastrand::Rng::with_seed(seed);
    // Past the head (about 10 lines), then anywhere in the first 60 chunks.
    let drops = (0..clients).map(|_| drop_after(address, 12 + rng.usize(..120)));
    for result in futures_util::future::join_all(drops).await {
        result?;
    }
    let dropped = Instant::now();
    loop {
        if metric(address, "llm_requests_running").await? == 0.0 {
            return Ok(dropped.elapsed());
        }
        // A bound on the wait, so that a hang fails rather than blocks; the time itself is
        // a measurement, reported, not a threshold.
        ensure!(
            dropped.elapsed() < Duration::from_secs(30),
            "generations still running 30 s after their clients left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn memory_after_storms(args: &ReliabilityArgs) -> anyhow::Result<()> {
    let server = ChildServer::start(2000, 5.0, 5.0)?;
    // Warm-up storms grow the allocator's per-thread pools to their working size (measured:
    // resident memory rises for the first storms, then stays flat however many follow).
    for seed in 0..WARM_UP_STORMS {
        storm(server.address, args.clients, 1000 + seed).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = stats::rss_bytes(server.pid())?;
    let mut slowest = Duration::ZERO;
    for round in 0..args.storms {
        slowest = slowest.max(storm(server.address, args.clients, round as u64 + 2).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = stats::rss_bytes(server.pid())?;
    let cancelled = metric(server.address, "llm_requests_cancelled_total").await?;
    let allowed = baseline + (baseline / 10).max(2 << 20);
    eprintln!(
        "disconnect storms: {} x {} clients, all cancelled within {slowest:?}, \
         {cancelled} cancelled in all; memory {:.1} MiB before, {:.1} MiB after",
        args.storms,
        args.clients,
        baseline as f64 / f64::from(1 << 20),
        after as f64 / f64::from(1 << 20)
    );
    ensure!(
        cancelled as usize == args.clients * (args.storms + WARM_UP_STORMS as usize),
        "expected every dropped stream to be cancelled"
    );
    ensure!(
        after <= allowed,
        "memory did not return to its baseline: {after} bytes after, {baseline} before"
    );
    Ok(())
}

/// Reads a stream to its end; returns its last two events.
async fn read_to_end(mut reader: BufReader<TcpStream>) -> anyhow::Result<Vec<String>> {
    let mut text = String::new();
    reader.read_to_string(&mut text).await?;
    let events: Vec<String> = text
        .lines()
        .filter(|line| line.starts_with("data: "))
        .map(str::to_owned)
        .collect();
    Ok(events[events.len().saturating_sub(2)..].to_vec())
}

async fn sigterm_under_load() -> anyhow::Result<()> {
    // Streams of 20 s; the grace is 1 s: every stream is cut by the deadline.
    let server = ChildServer::start(1000, 20.0, 1.0)?;
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut socket = TcpStream::connect(server.address).await?;
        socket.write_all(post(STREAM).as_bytes()).await?;
        let mut reader = BufReader::new(socket);
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            reader.read_line(&mut line).await?;
        }
        readers.push(tokio::spawn(read_to_end(reader)));
    }
    let exit =
        tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(10))).await??;
    let mut ended_with_error = 0;
    for reader in readers {
        let last = reader.await??;
        ensure!(
            last.len() == 2 && last[1] == "data: [DONE]",
            "a stream did not end with [DONE]: {last:?}"
        );
        if last[0].contains(r#""code":"shutting_down""#) {
            ended_with_error += 1;
        } else {
            ensure!(
                last[0].contains("\"finish_reason\""),
                "the event before [DONE] is neither a final chunk nor an error: {}",
                last[0]
            );
        }
    }
    eprintln!(
        "SIGTERM under load: 20 streams, {ended_with_error} ended with a shutting_down error \
         event then [DONE], exit status {exit}"
    );
    ensure!(exit == 0, "the server exited with status {exit}");
    Ok(())
}
