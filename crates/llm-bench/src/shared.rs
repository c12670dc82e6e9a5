//! `llm-bench shared-state`: what keeping the rate limits in Redis (`--state-url`) costs a
//! request, against the same limits kept in the process and against no limits, measured side
//! by side in one run on a real `redis-server` started on a free port.
//!
//! Each configuration is a server in this process with a scripted engine that answers at once,
//! so that the time of a request is the transport's and the limiter's. Rounds alternate the
//! configurations, so that a noisy neighbour affects them alike.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use llm_protocol::{ChatStreamDecoder, StreamEvent};
use llm_transport::{RateLimits, Script, ScriptedEngine, Server, SharedState, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stats::{self, Summary};

/// `llm-bench shared-state`.
#[derive(Debug, Args)]
pub(crate) struct SharedStateArgs {
    /// The `redis-server` program, started on a free loopback port.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Requests per configuration, one at a time.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Rounds the requests are split into, alternating the configurations.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Resumable streams dropped and resumed, alternately on their own replica and the other.
    #[arg(long, default_value_t = 40)]
    resumes: usize,
    /// Write the figures into docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
}

/// A `redis-server` child, killed when dropped.
struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One configuration's server.
struct Case {
    label: &'static str,
    address: SocketAddr,
    samples: Vec<f64>,
}

async fn serve(config: TransportConfig) -> anyhow::Result<SocketAddr> {
    serve_script(config, Script::words("ok")).await
}

async fn serve_script(config: TransportConfig, script: Script) -> anyhow::Result<SocketAddr> {
    let server = Server::try_new(config)?;
    server.set_engine(ScriptedEngine::new(script));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        server
            .serve(listener, std::future::pending(), Duration::from_secs(1))
            .await
    });
    Ok(address)
}

pub(crate) async fn run(args: SharedStateArgs) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _redis = Redis(
        Command::new(&args.redis_server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start {}", args.redis_server))?,
    );
    let redis = SocketAddr::from(([127, 0, 0, 1], port));
    let mut ready = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(redis).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        bail!("redis-server did not listen on {port}");
    }

    // Every limit set, so that each decision touches both buckets and the concurrency set.
    let limits = RateLimits {
        requests_per_minute: Some(1_000_000),
        tokens_per_minute: Some(100_000_000),
        concurrency: Some(64),
    };
    let mut cases = Vec::new();
    for (label, limited, shared) in [
        ("no limits", false, false),
        ("limits in the process", true, false),
        ("limits in Redis", true, true),
    ] {
        let mut config = TransportConfig::default();
        if limited {
            config.rate_limits = limits;
        }
        if shared {
            config.shared_state = Some(SharedState::new(format!("redis://{redis}")));
        }
        cases.push(Case {
            label,
            address: serve(config).await?,
            samples: Vec::new(),
        });
    }

    let client = reqwest::Client::new();
    let body = r#"{"max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#;
    let per_round = (args.requests / args.rounds.max(1)).max(1);
    for round in 0..=args.rounds {
        for case in &mut cases {
            let url = format!("http://{}/v1/chat/completions", case.address);
            for _ in 0..per_round {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                response.bytes().await?;
                if !status.is_success() {
                    bail!("{}: HTTP {status}", case.label);
                }
                // Round 0 warms the connections and Redis's script cache up.
                if round > 0 {
                    case.samples.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    let mut ping = Vec::new();
    let mut socket = tokio::net::TcpStream::connect(redis).await?;
    socket.set_nodelay(true)?;
    let mut reply = [0u8; 16];
    for _ in 0..per_round * args.rounds {
        let started = Instant::now();
        socket.write_all(b"PING\r\n").await?;
        let _ = socket.read(&mut reply).await?;
        ping.push(started.elapsed().as_secs_f64() * 1e3);
    }

    let resumes = measure_resumes(redis, args.resumes).await?;

    let summaries: Vec<(&str, Summary)> = cases
        .iter_mut()
        .map(|case| (case.label, Summary::of(&mut case.samples)))
        .collect();
    let ping = Summary::of(&mut ping);
    let mut table = String::from(
        "| configuration | requests | p50 (ms) | p90 (ms) | p99 (ms) |\n|---|---:|---:|---:|---:|\n",
    );
    for (label, summary) in &summaries {
        table.push_str(&format!(
            "| {label} | {} | {:.3} | {:.3} | {:.3} |\n",
            summary.count, summary.p50, summary.p90, summary.p99
        ));
    }
    table.push_str(&format!(
        "| a bare Redis `PING` round trip | {} | {:.3} | {:.3} | {:.3} |\n",
        ping.count, ping.p50, ping.p90, ping.p99
    ));
    let added = summaries[2].1.p50 - summaries[1].1.p50;
    let cpu = llm_engine::cpu_description();
    let mut resume_table = String::from(
        "| resumed on | resumes | time to the first event p50 / p90 (ms) | live event latency p50 / p90 / p99 (ms) |\n|---|---:|---|---|\n",
    );
    for (label, first, live) in [
        (
            "the generation's replica (its log)",
            &resumes.local_first,
            &resumes.local_live,
        ),
        (
            "another replica (Redis Streams)",
            &resumes.remote_first,
            &resumes.remote_live,
        ),
    ] {
        resume_table.push_str(&format!(
            "| {label} | {} | {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |\n",
            first.count, first.p50, first.p90, live.p50, live.p90, live.p99
        ));
    }
    let added_first = resumes.remote_first.p50 - resumes.local_first.p50;
    let added_event = resumes.remote_live.p50 - resumes.local_live.p50;
    eprintln!(
        "\n{table}\nRedis adds {added:.3} ms at the median\n\n{resume_table}\n\
         a resume elsewhere adds {added_first:.2} ms to the first event, {added_event:.2} ms per \
         live event\nCPU: {cpu}"
    );
    stats::write_json(
        "shared-state",
        &serde_json::json!({
            "cpu": cpu,
            "cases": summaries.iter().map(|(label, s)| serde_json::json!({"label": label, "latency_ms": s})).collect::<Vec<_>>(),
            "ping_ms": ping,
            "resume_first_event_ms": {"local": resumes.local_first, "remote": resumes.remote_first},
            "live_event_latency_ms": {"local": resumes.local_live, "remote": resumes.remote_live},
        }),
    )?;
    if args.write_docs {
        let text = format!(
            "Non-streaming requests one at a time, a scripted engine answering at once, every \
             limit set (requests, tokens and concurrency per minute); {} requests per \
             configuration in {} alternating rounds, on loopback. {cpu}.\n\n{table}\n\
             Keeping the limits in Redis adds {added:.3} ms to a request at the median: the one \
             admission script on the request's path (the settle script runs after the answer).\n\n\
             Resumable streams on two replicas sharing that Redis (a scripted engine, a token \
             every 10 ms, each stamped with its emission time): {} streams dropped after their \
             first event and resumed from it, alternately on the replica that generates them and \
             on the other one. \"Live event latency\" is from a token's emission to its arrival \
             at the resumed client, for tokens emitted after the resume began.\n\n{resume_table}\n\
             A resume on another replica adds {added_first:.2} ms to the first event and \
             {added_event:.2} ms to each live event: the owner's `XADD` round trip and the \
             follower's `XREAD BLOCK` wake-up.\n",
            per_round * args.rounds,
            args.rounds,
            args.resumes,
        );
        stats::write_section("benchmarks.md", "shared-state", &text)?;
    }
    Ok(())
}

/// Resume measurements: time to the first event, and live event latency, in milliseconds.
struct Resumes {
    local_first: Summary,
    remote_first: Summary,
    local_live: Summary,
    remote_live: Summary,
}

/// Two replicas sharing the Redis at `redis`; `count` resumable streams started on the first,
/// dropped after one event and resumed, alternately on the first and the second.
async fn measure_resumes(redis: SocketAddr, count: usize) -> anyhow::Result<Resumes> {
    let script = || Script::stamped(60).interval(Duration::from_millis(10));
    let config = || {
        let mut config = TransportConfig::default();
        config.shared_state = Some(SharedState::new(format!("redis://{redis}")));
        config
    };
    let owner = serve_script(config(), script()).await?;
    let other = serve_script(config(), script()).await?;
    let client = reqwest::Client::new();
    let (mut local_first, mut remote_first) = (Vec::new(), Vec::new());
    let (mut local_live, mut remote_live) = (Vec::new(), Vec::new());
    for round in 0..count {
        let response = client
            .post(format!("http://{owner}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"stream":true,"resumable":true,"messages":[{"role":"user","content":"go"}]}"#)
            .send()
            .await?;
        let mut body = response.bytes_stream();
        let mut decoder = ChatStreamDecoder::new();
        let mut events = Vec::new();
        let id = loop {
            let Some(bytes) = body.next().await else {
                bail!("the stream ended before its first chunk");
            };
            decoder.push(&bytes?, &mut events)?;
            if let Some(StreamEvent::Chunk(chunk)) = events.first() {
                break chunk.id.clone();
            }
        };
        drop(body);
        let remote = round % 2 == 1;
        let replica = if remote { other } else { owner };
        let started = Instant::now();
        let started_micros = now_micros();
        let resumed = client
            .get(format!("http://{replica}/v1/chat/completions/{id}/stream"))
            .header("last-event-id", format!("{id}:0"))
            .send()
            .await?;
        if !resumed.status().is_success() {
            bail!("a resume got HTTP {}", resumed.status());
        }
        let mut body = resumed.bytes_stream();
        let mut decoder = ChatStreamDecoder::new();
        let mut first = None;
        'read: while let Some(bytes) = body.next().await {
            let mut events = Vec::new();
            decoder.push(&bytes?, &mut events)?;
            let now = now_micros();
            for event in events {
                match event {
                    StreamEvent::Chunk(chunk) => {
                        first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
                        let stamp = chunk
                            .choices
                            .first()
                            .and_then(|c| c.delta.content.as_deref())
                            .and_then(|text| text.trim().parse::<u64>().ok());
                        if let Some(stamp) = stamp.filter(|stamp| *stamp > started_micros) {
                            let latency = now.saturating_sub(stamp) as f64 / 1e3;
                            if remote {
                                &mut remote_live
                            } else {
                                &mut local_live
                            }
                            .push(latency);
                        }
                    }
                    StreamEvent::Done => break 'read,
                    _ => {}
                }
            }
        }
        let first = first.context("a resume carried no chunk")?;
        if remote {
            &mut remote_first
        } else {
            &mut local_first
        }
        .push(first);
    }
    Ok(Resumes {
        local_first: Summary::of(&mut local_first),
        remote_first: Summary::of(&mut remote_first),
        local_live: Summary::of(&mut local_live),
        remote_live: Summary::of(&mut remote_live),
    })
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}
