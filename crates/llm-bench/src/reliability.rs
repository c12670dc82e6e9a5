//! `llm-bench reliability`: the reliability suite against a scripted server in a process of its
//! own, measured. Disconnect storms (resident memory before, at the peak and after), idle
//! sockets (the latency of a request served beside them), an overload burst (429s, hangs, the
//! time until service resumes), SIGTERM under load, and malformed requests (the fixed corpus and
//! seeded mutations of valid requests, for every route and dialect). The checks are counts and
//! states; durations are reported, never thresholds. With `--write-docs` each check writes its
//! section of `docs/reliability.md`, and so do the soak and fuzzing results passed in as JSON
//! (`cargo xtask reliability --write-docs` runs them and passes them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use futures_util::StreamExt;
use llm_transport::probe::{self, Mutator, Probe};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::child::ChildServer;
use crate::stats::{self, Summary};

#[derive(Debug, Args)]
pub(crate) struct ReliabilityArgs {
    /// Disconnect storms after the warm-up ones.
    #[arg(long, default_value_t = 5)]
    storms: usize,
    /// Clients per storm.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Idle sockets held open while requests are timed.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Requests of the overload burst, against a server with room for 4 at once.
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// Mutated requests beside the fixed corpus.
    #[arg(long, default_value_t = 2000)]
    mutations: usize,
    /// The mutator's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results into `docs/reliability.md`.
    #[arg(long)]
    write_docs: bool,
    /// The soak test's results (`LLM_STREAM_SOAK_REPORT`), for its section.
    #[arg(long)]
    soak: Option<PathBuf>,
    /// The fuzzing results `cargo xtask reliability` writes, for their section.
    #[arg(long)]
    fuzz: Option<PathBuf>,
}

/// One section of `docs/reliability.md`: what was tried, what held, what was measured.
struct Row {
    marker: &'static str,
    title: &'static str,
    tried: String,
    held: String,
    measured: String,
}

pub(crate) async fn run(args: ReliabilityArgs) -> anyhow::Result<()> {
    let mut rows = vec![
        disconnect_storms(&args).await?,
        idle_sockets(&args).await?,
        overload_burst(&args).await?,
        sigterm_under_load().await?,
        malformed_requests(&args).await?,
    ];
    if let Some(path) = &args.fuzz {
        rows.push(fuzzing(path)?);
    }
    if let Some(path) = &args.soak {
        rows.push(soak(path)?);
    }
    let cpu = llm_engine::cpu_description();
    for row in &rows {
        eprintln!(
            "{}: tried {}; held: {}; measured: {}",
            row.title, row.tried, row.held, row.measured
        );
    }
    eprintln!("{cpu}");
    stats::write_json("reliability", &rows_json(&rows, &cpu))?;
    if args.write_docs {
        let date = today()?;
        for row in &rows {
            let text = format!(
                "## {}\n\n| tried | held | measured | CPU, date |\n|---|---|---|---|\n\
                 | {} | {} | {} | {cpu}; {date} |\n",
                row.title, row.tried, row.held, row.measured
            );
            stats::write_section("reliability.md", row.marker, &text)?;
        }
    }
    eprintln!("reliability: all checks passed");
    Ok(())
}

fn rows_json(rows: &[Row], cpu: &str) -> serde_json::Value {
    let rows: Vec<_> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "check": row.title, "tried": row.tried, "held": row.held,
                "measured": row.measured,
            })
        })
        .collect();
    serde_json::json!({ "cpu": cpu, "rows": rows })
}

/// The date, as `date -u +%F` prints it.
fn today() -> anyhow::Result<String> {
    let output = std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .context("could not run date")?;
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
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

/// One storm: `clients` streams dropped mid-stream; how long until nothing runs.
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

/// Samples a process's resident memory every few milliseconds; keeps the largest.
struct PeakMemory {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakMemory {
    fn watch(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let peak = Arc::clone(&peak);
            async move {
                while let Ok(rss) = stats::rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Self { peak, task }
    }

    fn stop(self) -> u64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed)
    }
}

async fn disconnect_storms(args: &ReliabilityArgs) -> anyhow::Result<Row> {
    let server = ChildServer::start(2000, 5.0, 5.0)?;
    // Warm-up storms grow the allocator's per-thread pools to their working size (measured:
    // resident memory rises for the first storms, then stays flat however many follow).
    for seed in 0..WARM_UP_STORMS {
        storm(server.address, args.clients, 1000 + seed).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = stats::rss_bytes(server.pid())?;
    let watch = PeakMemory::watch(server.pid());
    let mut settled = Vec::new();
    for round in 0..args.storms {
        settled.push(ms(
            storm(server.address, args.clients, round as u64 + 2).await?
        ));
    }
    let peak = watch.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = stats::rss_bytes(server.pid())?;
    let cancelled = metric(server.address, "llm_requests_cancelled_total").await?;
    let expected = args.clients * (args.storms + WARM_UP_STORMS as usize);
    ensure!(
        cancelled as usize == expected,
        "expected every dropped stream to be cancelled: {cancelled} of {expected}"
    );
    let allowed = baseline + (baseline / 10).max(2 << 20);
    ensure!(
        after <= allowed,
        "memory did not return to its baseline: {after} bytes after, {baseline} before"
    );
    let settled = Summary::of(&mut settled);
    Ok(Row {
        marker: "storm",
        title: "Disconnect storm",
        tried: format!(
            "{} storms of {} streaming clients that drop their connections at random points of \
             the stream (after {WARM_UP_STORMS} warm-up storms), against a scripted engine of \
             2,000 tokens at 5 ms",
            args.storms, args.clients
        ),
        held: format!(
            "every generation cancelled ({cancelled} of {expected}, none ran to its end); \
             resident memory back within 10% of its baseline"
        ),
        measured: format!(
            "nothing running {:.1} ms (median storm) and {:.1} ms (slowest) after the last \
             client left; resident memory {:.1} MiB before, {:.1} MiB at the peak, {:.1} MiB \
             after",
            settled.p50,
            settled.max,
            mib(baseline),
            mib(peak),
            mib(after)
        ),
    })
}

/// A short stream, read to its end: the time it took, and its status.
async fn timed_request(address: SocketAddr) -> anyhow::Result<(Duration, u16)> {
    let started = Instant::now();
    let (status, _, ended) = stream_request(address).await?;
    ensure!(ended, "a stream without its end");
    Ok((started.elapsed(), status))
}

async fn latencies(address: SocketAddr, count: usize) -> anyhow::Result<Summary> {
    let mut samples = Vec::new();
    for _ in 0..count {
        let (took, status) = timed_request(address).await?;
        ensure!(status == 200, "status {status}");
        samples.push(ms(took));
    }
    Ok(Summary::of(&mut samples))
}

async fn idle_sockets(args: &ReliabilityArgs) -> anyhow::Result<Row> {
    // Streams of 8 tokens, 1 ms apart.
    let server = ChildServer::start(8, 1.0, 1.0)?;
    const REQUESTS: usize = 50;
    latencies(server.address, 10).await?;
    let alone = latencies(server.address, REQUESTS).await?;
    // Half of them connect and send nothing; half send part of a request line, then stop.
    let mut idle = Vec::with_capacity(args.idle);
    for index in 0..args.idle {
        let mut socket = TcpStream::connect(server.address).await?;
        if index % 2 == 1 {
            socket.write_all(b"POST /v1/chat/compl").await?;
        }
        idle.push(socket);
    }
    let beside = latencies(server.address, REQUESTS).await?;
    let open = metric(server.address, "llm_open_connections").await?;
    drop(idle);
    Ok(Row {
        marker: "idle",
        title: "Idle sockets (slowloris)",
        tried: format!(
            "{} idle connections held open (half silent, half stopped inside a request line) \
             while {REQUESTS} short streams ran one after another",
            args.idle
        ),
        held: format!("all {REQUESTS} streams served whole, with status 200"),
        measured: format!(
            "a stream took {:.2} ms (median) and {:.2} ms (p90) beside the idle sockets, \
             against {:.2} ms and {:.2} ms without them; {open} connections open while they \
             were held",
            beside.p50, beside.p90, alone.p50, alone.p90
        ),
    })
}

/// The status a streaming request gets; the connection is dropped once it is read.
async fn status_of(address: SocketAddr) -> anyhow::Result<u16> {
    let mut socket = TcpStream::connect(address).await?;
    socket.write_all(post(STREAM).as_bytes()).await?;
    Ok(probe::read_head(&mut BufReader::new(socket)).await?.0)
}

/// Sends one streaming request; its status, its `Retry-After`, and whether the stream ended.
async fn stream_request(address: SocketAddr) -> anyhow::Result<(u16, Option<String>, bool)> {
    let probe = Probe::raw("stream", post(STREAM).into_bytes());
    let reply = probe::exchange(address, &probe).await?;
    let ended = String::from_utf8_lossy(&reply.body).contains("data: [DONE]");
    Ok((
        reply.status,
        reply.header("retry-after").map(str::to_owned),
        ended,
    ))
}

async fn overload_burst(args: &ReliabilityArgs) -> anyhow::Result<Row> {
    const CAPACITY: usize = 4;
    // Streams of 20 tokens, 10 ms apart: 200 ms each.
    let server = ChildServer::with_capacity(20, 10.0, 1.0, CAPACITY)?;
    let address = server.address;
    let sent = Instant::now();
    let burst: Vec<_> = (0..args.burst)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), stream_request(address)).await
            })
        })
        .collect();
    // Service resumes when a fresh request, tried every 5 ms from the burst on, is taken.
    let prober = tokio::spawn(async move {
        loop {
            if status_of(address).await? == 200 {
                return anyhow::Ok(sent.elapsed());
            }
            ensure!(
                sent.elapsed() < Duration::from_secs(30),
                "no request served 30 s after the burst"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (mut served, mut refused, mut hung, mut other) = (0, 0, 0, Vec::new());
    let mut last_refusal = Duration::ZERO;
    for task in burst {
        match task.await? {
            Err(_) => hung += 1,
            Ok(result) => match result? {
                (200, _, true) => served += 1,
                (429, Some(retry), _) if retry.parse::<u64>().is_ok() => {
                    refused += 1;
                    last_refusal = last_refusal.max(sent.elapsed());
                }
                (status, retry, ended) => other.push(format!(
                    "status {status}, Retry-After {retry:?}, ended {ended}"
                )),
            },
        }
    }
    let resumed = prober.await??;
    ensure!(
        hung == 0,
        "{hung} requests of the burst got no answer in 10 s"
    );
    ensure!(
        other.is_empty(),
        "answers neither served nor refused: {other:?}"
    );
    ensure!(
        served >= CAPACITY && refused >= 1,
        "{served} served, {refused} refused"
    );
    Ok(Row {
        marker: "overload",
        title: "Overload burst",
        tried: format!(
            "{} streaming requests sent at once to a server with room for {CAPACITY} \
             generations (each 20 tokens at 10 ms)",
            args.burst
        ),
        held: format!(
            "{served} served whole, {refused} refused with 429 and `Retry-After`, {hung} hung, \
             no other answer"
        ),
        measured: format!(
            "the last refusal {:.0} ms after the burst was sent; a fresh request taken again \
             {:.0} ms after it (as the first served streams ended)",
            ms(last_refusal),
            ms(resumed)
        ),
    })
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

async fn sigterm_under_load() -> anyhow::Result<Row> {
    const STREAMS: usize = 20;
    // Streams of 20 s; the grace is 1 s: every stream is cut by the deadline.
    let server = ChildServer::start(1000, 20.0, 1.0)?;
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
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
    let signalled = Instant::now();
    let exit =
        tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(10))).await??;
    let exited = signalled.elapsed();
    let (mut ended_with_error, mut finished) = (0, 0);
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
            finished += 1;
        }
    }
    ensure!(exit == 0, "the server exited with status {exit}");
    Ok(Row {
        marker: "sigterm",
        title: "SIGTERM under load",
        tried: format!(
            "SIGTERM to a server with {STREAMS} streams in flight, each 20 s long, and a grace \
             period of 1 s"
        ),
        held: format!(
            "all {STREAMS} streams ended with `[DONE]`: {finished} after a final chunk, \
             {ended_with_error} after a `shutting_down` error event; exit status {exit}"
        ),
        measured: format!("the process exited {:.0} ms after the signal", ms(exited)),
    })
}

/// What the probes got: counts by status and by route, and what went wrong.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, usize>,
    routes: BTreeMap<&'static str, usize>,
    server_errors: usize,
    hung: usize,
    failures: Vec<String>,
}

impl Tally {
    fn classes(&self) -> String {
        let mut classes: BTreeMap<u16, usize> = BTreeMap::new();
        for (status, count) in &self.statuses {
            *classes.entry(status / 100).or_default() += count;
        }
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        let classes: Vec<String> = classes
            .iter()
            .map(|(class, count)| format!("{class}xx: {count}"))
            .collect();
        format!("{} ({})", classes.join(", "), statuses.join(", "))
    }
}

/// Sends every probe, eight at a time, and tallies the answers.
async fn send_all(address: SocketAddr, probes: Vec<Probe>) -> Tally {
    let answers = futures_util::stream::iter(probes)
        .map(|probe| async move {
            let answer =
                tokio::time::timeout(Duration::from_secs(10), probe::exchange(address, &probe))
                    .await;
            (probe, answer)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut tally = Tally::default();
    for (probe, answer) in answers {
        *tally.routes.entry(probe.route).or_default() += 1;
        match answer {
            Err(_) => {
                tally.hung += 1;
                tally
                    .failures
                    .push(format!("{}: no answer in 10 s", probe.name));
            }
            Ok(Err(error)) => tally
                .failures
                .push(format!("{}: the exchange failed: {error}", probe.name)),
            Ok(Ok(reply)) => {
                *tally.statuses.entry(reply.status).or_default() += 1;
                if reply.status >= 500 {
                    tally.server_errors += 1;
                }
                if let Err(why) = probe.check(&reply) {
                    let request = String::from_utf8_lossy(&probe.request);
                    let request: String = request.chars().take(400).collect();
                    tally.failures.push(format!(
                        "{}: status {}: {why}\n{request}",
                        probe.name, reply.status
                    ));
                }
            }
        }
    }
    tally
}

async fn malformed_requests(args: &ReliabilityArgs) -> anyhow::Result<Row> {
    let server = ChildServer::start(3, 1.0, 1.0)?;
    let corpus = probe::corpus(llm_transport::TransportConfig::default().body_limit);
    let corpus_size = corpus.len();
    let fixed = send_all(server.address, corpus).await;
    let mut mutator = Mutator::new(args.seed);
    let mutated: Vec<Probe> = (0..args.mutations).map(|_| mutator.next_probe()).collect();
    let random = send_all(server.address, mutated).await;
    for tally in [&fixed, &random] {
        ensure!(
            tally.failures.is_empty(),
            "{} answers were wrong; the first: {}",
            tally.failures.len(),
            tally.failures[0]
        );
    }
    // The server still serves.
    let (_, status) = timed_request(server.address).await?;
    ensure!(status == 200, "after the probes, a stream got {status}");
    let routes: Vec<String> = random
        .routes
        .iter()
        .map(|(route, count)| format!("{route} {count}"))
        .collect();
    Ok(Row {
        marker: "malformed",
        title: "Malformed requests",
        tried: format!(
            "a fixed corpus of {corpus_size} malformed requests (bad JSON, wrong types, values \
             out of range, bad framing, bad WebSocket handshakes and messages) on every route \
             and dialect, and {} mutations of valid requests from a seeded mutator (seed {}; \
             by route: {})",
            args.mutations,
            args.seed,
            routes.join(", ")
        ),
        held: format!(
            "every answer as specified: the corpus's each with its status and blamed field, \
             errors in the route's own dialect; {} 5xx, {} hung; the server served on",
            fixed.server_errors + random.server_errors,
            fixed.hung + random.hung
        ),
        measured: format!(
            "corpus: {}; mutations: {}",
            fixed.classes(),
            random.classes()
        ),
    })
}

/// One fuzz target's run, as `cargo xtask reliability` records it.
#[derive(Debug, Deserialize)]
struct FuzzRun {
    target: String,
    seconds: u64,
    executions: u64,
    crashes: u64,
    peak_rss_mb: Option<u64>,
}

fn fuzzing(path: &PathBuf) -> anyhow::Result<Row> {
    let runs: Vec<FuzzRun> = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?,
    )?;
    ensure!(!runs.is_empty(), "no fuzz runs in {}", path.display());
    let crashes: u64 = runs.iter().map(|run| run.crashes).sum();
    ensure!(crashes == 0, "fuzzing found {crashes} crashes");
    let each: Vec<String> = runs
        .iter()
        .map(|run| {
            format!(
                "`{}`: {} executions in {} s, {} crashes{}",
                run.target,
                run.executions,
                run.seconds,
                run.crashes,
                run.peak_rss_mb
                    .map(|mb| format!(", peak RSS {mb} MB"))
                    .unwrap_or_default()
            )
        })
        .collect();
    Ok(Row {
        marker: "fuzz",
        title: "Fuzzing",
        tried: format!(
            "every `cargo fuzz` target ({}) for {} s each, AddressSanitizer on",
            runs.len(),
            runs[0].seconds
        ),
        held: format!("{crashes} crashes, memory within libFuzzer's 1,024 MB limit"),
        measured: each.join("; "),
    })
}

/// The soak test's results (`crates/llm-transport/tests/http/soak.rs`).
#[derive(Debug, Deserialize)]
struct SoakRun {
    seed: u64,
    seconds: u64,
    waves: u64,
    compared: u64,
    differed: u64,
    cancelled: u64,
    distinct: u64,
}

fn soak(path: &PathBuf) -> anyhow::Result<Row> {
    let run: SoakRun = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?,
    )?;
    ensure!(run.differed == 0, "{} soak answers differed", run.differed);
    Ok(Row {
        marker: "soak",
        title: "Differential soak",
        tried: format!(
            "{} s of a seeded random schedule (seed {}) against the real default model: {} \
             waves of concurrent requests, {} distinct requests (prompt lengths, arrival times, \
             repeats, shared prefixes, stops, `max_tokens`, cancels, streaming, whole and \
             WebSocket turns, seeded sampling at temperature 1, JSON-constrained output)",
            run.seconds, run.seed, run.waves, run.distinct
        ),
        held: format!(
            "{} answers compared with the same request alone: {} differed, none failed",
            run.compared, run.differed
        ),
        measured: format!(
            "{} cancelled mid-stream, their text a prefix of the solo answer",
            run.cancelled
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_groups_statuses_by_class() {
        let mut tally = Tally::default();
        tally.statuses.extend([(200, 3), (400, 5), (404, 1)]);
        assert_eq!(tally.classes(), "2xx: 3, 4xx: 6 (200: 3, 400: 5, 404: 1)");
    }
}
