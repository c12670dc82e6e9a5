//! `llm-bench load`: N concurrent streaming clients against any OpenAI-compatible server.
//!
//! Every prompt is first answered alone, one request at a time; every answer under load is
//! compared with that answer (temperature 0). A level where any answer differs gets no
//! throughput figure: a figure measured on wrong answers is not a figure.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use llm_protocol::{ChatStreamDecoder, StreamEvent};
use serde::Serialize;

use crate::stats::{self, Summary};

/// Prompts of varied length and kind, used round-robin when no file is given.
const PROMPTS: &[&str] = &[
    "Why is the sky blue? Answer in two sentences.",
    "Write a short poem about the sea.",
    "List five fruits and one fact about each.",
    "Explain what a hash table is to a beginner.",
    "What are the three states of matter?",
    "Give me a recipe for pancakes.",
    "Summarise the plot of a detective story you invent.",
    "What is the capital of France, and what is it known for?",
];

#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// The server's OpenAI base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000/v1")]
    base: String,
    /// An API key, when the server needs one.
    #[arg(long, env = "LLM_STREAM_API_KEY")]
    api_key: Option<String>,
    /// The model name; by default the first of `GET /models`.
    #[arg(long)]
    model: Option<String>,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    concurrency: Vec<usize>,
    /// Requests each client sends, one after the other, per level.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// A file with one prompt per line, instead of the built-in set.
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    /// The server's name in the report.
    #[arg(long, default_value = "llm-server")]
    label: String,
    /// Also write the table into docs/benchmarks.md (section `load-LABEL`).
    #[arg(long)]
    write_docs: bool,
}

/// What one request measured.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    pub(crate) ttft: Option<f64>,
    pub(crate) inter_token: Vec<f64>,
    e2e: f64,
    pub(crate) tokens: u64,
    text: String,
    /// Which prompt it answered.
    prompt: usize,
    pub(crate) error: Option<String>,
}

/// One concurrency level.
#[derive(Debug, Serialize)]
struct Level {
    concurrency: usize,
    requests: usize,
    errors: usize,
    /// Answers equal to the same prompt's answer alone.
    equal_to_alone: usize,
    ttft_ms: Summary,
    inter_token_ms: Summary,
    e2e_s: Summary,
    generated_tokens: u64,
    seconds: f64,
    aggregate_tokens_per_second: f64,
}

pub(crate) async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let model = match &args.model {
        Some(model) => model.clone(),
        None => first_model(&client, &args).await?,
    };
    let prompts: Vec<String> = match &args.prompts {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("could not read {}", path.display()))?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        None => PROMPTS.iter().map(|p| (*p).to_owned()).collect(),
    };
    if prompts.is_empty() {
        bail!("no prompts");
    }
    // Each prompt alone first: the answers every answer under load must equal.
    let mut alone = Vec::new();
    for (index, prompt) in prompts.iter().enumerate() {
        let sample = one(&client, &Target::of(&args), &model, index, prompt).await;
        if let Some(error) = sample.error {
            bail!("the prompt {prompt:?} failed alone: {error}");
        }
        alone.push(sample.text);
    }
    let args = Arc::new(args);
    let prompts = Arc::new(prompts);
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        let started = Instant::now();
        let workers = (0..concurrency).map(|worker| {
            let (client, args, prompts, model) = (
                client.clone(),
                Arc::clone(&args),
                Arc::clone(&prompts),
                model.clone(),
            );
            tokio::spawn(async move {
                let mut samples = Vec::new();
                for round in 0..args.rounds {
                    let index = (worker + round * concurrency) % prompts.len();
                    let target = Target::of(&args);
                    samples.push(one(&client, &target, &model, index, &prompts[index]).await);
                }
                samples
            })
        });
        let mut samples = Vec::new();
        for worker in futures_util::future::join_all(workers).await {
            samples.extend(worker?);
        }
        let seconds = started.elapsed().as_secs_f64();
        let level = summarise(concurrency, seconds, &samples, &alone);
        eprintln!(
            "{concurrency:>3} clients: {:.1} tok/s, TTFT p50 {:.0} ms, ITL p50 {:.1} ms, {} errors",
            level.aggregate_tokens_per_second,
            level.ttft_ms.p50,
            level.inter_token_ms.p50,
            level.errors
        );
        if let Some(error) = samples.iter().find_map(|s| s.error.as_ref()) {
            eprintln!("    first error: {error}");
        }
        if let Some(wrong) = samples
            .iter()
            .find(|s| s.error.is_none() && s.text != alone[s.prompt])
        {
            eprintln!(
                "    an answer differs from the same prompt alone: {:?}\n      alone:      {:?}\n      under load: {:?}",
                prompts[wrong.prompt], alone[wrong.prompt], wrong.text
            );
        }
        levels.push(level);
    }
    let report = serde_json::json!({
        "label": args.label, "base": args.base, "model": model,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "levels": levels,
    });
    let path = stats::write_json(&format!("load-{}", args.label), &report)?;
    let table = table(&levels);
    eprintln!("\n{table}\nJSON: {}", path.display());
    if args.write_docs {
        let text = format!(
            "`{}` serving `{model}`, {} tokens per request, {} requests per client per level:\n\n\
             {table}",
            args.label, args.max_tokens, args.rounds
        );
        stats::write_section("benchmarks.md", &format!("load-{}", args.label), &text)?;
    }
    Ok(())
}

fn summarise(concurrency: usize, seconds: f64, samples: &[Sample], alone: &[String]) -> Level {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let equal_to_alone = ok.iter().filter(|s| s.text == alone[s.prompt]).count();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|s| s.ttft).map(|t| t * 1e3).collect();
    let mut itl: Vec<f64> = ok
        .iter()
        .flat_map(|s| s.inter_token.iter().map(|t| t * 1e3))
        .collect();
    let mut e2e: Vec<f64> = ok.iter().map(|s| s.e2e).collect();
    let tokens: u64 = ok.iter().map(|s| s.tokens).sum();
    Level {
        concurrency,
        requests: samples.len(),
        errors: samples.len() - ok.len(),
        equal_to_alone,
        ttft_ms: Summary::of(&mut ttft),
        inter_token_ms: Summary::of(&mut itl),
        e2e_s: Summary::of(&mut e2e),
        generated_tokens: tokens,
        seconds,
        aggregate_tokens_per_second: tokens as f64 / seconds,
    }
}

fn table(levels: &[Level]) -> String {
    let mut text = String::from(
        "| clients | requests | errors | answers equal to alone | TTFT p50 / p90 / p99 (ms) | \
         ITL p50 / p99 (ms) | e2e p50 / p99 (s) | aggregate tok/s |\n\
         |---:|---:|---:|---:|---|---|---|---:|\n",
    );
    for l in levels {
        // No throughput for a level with wrong answers.
        let aggregate = if l.equal_to_alone == l.requests {
            format!("{:.1}", l.aggregate_tokens_per_second)
        } else {
            "none: answers differ".to_owned()
        };
        text.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} | {:.2} / {:.2} | {aggregate} |\n",
            l.concurrency,
            l.requests,
            l.errors,
            l.equal_to_alone,
            l.ttft_ms.p50,
            l.ttft_ms.p90,
            l.ttft_ms.p99,
            l.inter_token_ms.p50,
            l.inter_token_ms.p99,
            l.e2e_s.p50,
            l.e2e_s.p99,
        ));
    }
    text
}

async fn first_model(client: &reqwest::Client, args: &LoadArgs) -> anyhow::Result<String> {
    first_model_at(client, &args.base, args.api_key.as_deref()).await
}

/// The first model `GET BASE/models` lists.
pub(crate) async fn first_model_at(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
) -> anyhow::Result<String> {
    let mut request = client.get(format!("{base}/models"));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let models: serde_json::Value = request
        .send()
        .await
        .context("could not reach the server")?
        .error_for_status()?
        .json()
        .await?;
    models["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .context("GET /models listed no model")
}

/// One streamed request of `max_tokens` at temperature 0 to the server at `base`, timed.
pub(crate) async fn timed(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
    model: &str,
    prompt: &str,
    max_tokens: u32,
) -> Sample {
    let target = Target {
        base,
        api_key,
        max_tokens,
    };
    one(client, &target, model, 0, prompt).await
}

/// Where a request goes and how long it may be.
struct Target<'a> {
    base: &'a str,
    api_key: Option<&'a str>,
    max_tokens: u32,
}

impl<'a> Target<'a> {
    fn of(args: &'a LoadArgs) -> Self {
        Self {
            base: &args.base,
            api_key: args.api_key.as_deref(),
            max_tokens: args.max_tokens,
        }
    }
}

/// One streamed request, timed.
async fn one(
    client: &reqwest::Client,
    target: &Target<'_>,
    model: &str,
    index: usize,
    prompt: &str,
) -> Sample {
    let started = Instant::now();
    let mut sample = Sample {
        prompt: index,
        ..Sample::default()
    };
    if let Err(error) = stream(client, target, model, prompt, started, &mut sample).await {
        sample.error = Some(format!("{error:#}"));
    }
    sample.e2e = started.elapsed().as_secs_f64();
    sample
}

async fn stream(
    client: &reqwest::Client,
    target: &Target<'_>,
    model: &str,
    prompt: &str,
    started: Instant,
    sample: &mut Sample,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": target.max_tokens,
        "temperature": 0,
    });
    let mut request = client
        .post(format!("{}/chat/completions", target.base))
        .json(&body);
    if let Some(key) = target.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let mut body = response.bytes_stream();
    let mut decoder = ChatStreamDecoder::new();
    let mut events = Vec::new();
    let mut last: Option<Instant> = None;
    let mut deltas = 0;
    while let Some(piece) = body.next().await {
        decoder.push(&piece?, &mut events)?;
        let now = Instant::now();
        for event in events.drain(..) {
            match event {
                StreamEvent::Chunk(chunk) => {
                    let content = chunk
                        .choices
                        .first()
                        .and_then(|c| c.delta.content.as_deref())
                        .unwrap_or_default();
                    sample.text.push_str(content);
                    if !content.is_empty() {
                        deltas += 1;
                        match last {
                            None => sample.ttft = Some((now - started).as_secs_f64()),
                            Some(previous) => {
                                sample.inter_token.push((now - previous).as_secs_f64());
                            }
                        }
                        last = Some(now);
                    }
                }
                StreamEvent::Usage(usage) => sample.tokens = u64::from(usage.completion_tokens),
                StreamEvent::Done => {
                    if sample.tokens == 0 {
                        sample.tokens = deltas;
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
    }
    bail!("the stream ended without [DONE] after {deltas} deltas")
}
