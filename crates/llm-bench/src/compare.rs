//! `llm-bench compare`: one stream at a time against this server and another
//! OpenAI-compatible server (llama.cpp's `llama-server`, for one), measured side by side in one
//! run: the runs alternate between the two, each with a prompt neither has seen, so that a
//! noisy neighbour or a warming cache affects both alike. The spread of the runs (min, median,
//! max) is printed with the medians, so that one good run does not hide a swing.

use std::time::Instant;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::load::{first_model_at, timed, Sample};
use crate::stats;

/// `llm-bench compare`.
#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// This server's OpenAI base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000/v1")]
    base: String,
    /// The other server's OpenAI base URL; without it, only this server's runs and their
    /// spread.
    #[arg(long)]
    against: Option<String>,
    /// The two servers' names in the report.
    #[arg(long, default_value = "llm-server")]
    label: String,
    /// The other server's name in the report.
    #[arg(long, default_value = "llama-server")]
    against_label: String,
    /// Single-stream runs on each server, back to back and alternating.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Tokens to generate per run.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// What the weights are, for the report (for example `Q8_0 on both`).
    #[arg(long, default_value = "")]
    weights: String,
    /// Also write the table into docs/benchmarks.md (section `compare-LABEL-AGAINST_LABEL`, or
    /// `single-LABEL` alone).
    #[arg(long)]
    write_docs: bool,
}

/// One server's runs.
#[derive(Debug, Default, Serialize)]
struct Side {
    label: String,
    /// Generated tokens per second after the first token, per run.
    decode_tokens_per_second: Vec<f64>,
    /// Time to the first token, per run, in milliseconds.
    ttft_ms: Vec<f64>,
    tokens: Vec<u64>,
}

/// Min, median and max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (sorted[0], median, sorted[n - 1])
}

/// A prompt neither server has seen: this invocation's `nonce` and the run's number lead, so
/// that no prefix cache holds any of it past the chat template, in this run or an earlier one.
fn prompt(nonce: u32, run: usize, side: usize) -> String {
    const TOPICS: &[&str] = &[
        "a lighthouse keeper who finds a message in a bottle",
        "a city where it has rained for a hundred years",
        "a robot that learns to garden",
        "two rival bakers in a small village",
        "an astronaut who hears music on the moon",
        "a river that flows uphill",
        "a library that opens only at midnight",
        "a fox that keeps a diary",
    ];
    let topic = TOPICS[(run * 2 + side) % TOPICS.len()];
    format!(
        "Story {nonce}-{}: write a long, detailed story about {topic}.",
        run * 2 + side + 1
    )
}

pub(crate) async fn run(args: CompareArgs) -> anyhow::Result<()> {
    // A new connection for every run: llama-server closes a kept-alive connection it has been
    // idle on, and a run that reused one failed with "connection closed before message
    // completed". Connecting costs well under a millisecond on loopback, the same for both.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut bases = vec![args.base.clone()];
    bases.extend(args.against.clone());
    let mut models = Vec::new();
    for base in &bases {
        models.push(first_model_at(&client, base, None).await?);
    }
    let mut sides: Vec<Side> = [&args.label, &args.against_label]
        .into_iter()
        .take(bases.len())
        .map(|label| Side {
            label: label.clone(),
            ..Side::default()
        })
        .collect();
    // One short request each first: loads, allocations and thread pools are warm before the
    // first measured run.
    for (base, model) in bases.iter().zip(&models) {
        let sample = timed(&client, base, None, model, "Say hello.", 8).await;
        if let Some(error) = sample.error {
            bail!("{base}: {error}");
        }
    }
    let nonce = fastrand::u32(..);
    for run in 0..args.runs {
        // Alternate which server goes first.
        let order: Vec<usize> = match bases.len() {
            1 => vec![0],
            _ if run % 2 == 0 => vec![0, 1],
            _ => vec![1, 0],
        };
        for side in order {
            let started = Instant::now();
            let sample: Sample = timed(
                &client,
                &bases[side],
                None,
                &models[side],
                &prompt(nonce, run, side),
                args.max_tokens,
            )
            .await;
            if let Some(error) = &sample.error {
                bail!("{}: {error}", bases[side]);
            }
            let decode_seconds: f64 = sample.inter_token.iter().sum();
            let rate = if decode_seconds > 0.0 {
                sample.inter_token.len() as f64 / decode_seconds
            } else {
                0.0
            };
            let ttft = sample
                .ttft
                .unwrap_or_else(|| started.elapsed().as_secs_f64())
                * 1e3;
            eprintln!(
                "run {} {:<14} {:>6.1} tok/s after the first token, TTFT {ttft:>5.0} ms, {} tokens",
                run + 1,
                sides[side].label,
                rate,
                sample.tokens
            );
            sides[side].decode_tokens_per_second.push(rate);
            sides[side].ttft_ms.push(ttft);
            sides[side].tokens.push(sample.tokens);
        }
    }
    let ratios: Vec<f64> = match sides.get(1) {
        Some(other) => sides[0]
            .decode_tokens_per_second
            .iter()
            .zip(&other.decode_tokens_per_second)
            .map(|(ours, theirs)| if *theirs > 0.0 { ours / theirs } else { 0.0 })
            .collect(),
        None => Vec::new(),
    };
    let cpu = llm_engine::cpu_description();
    let mut table = String::from(
        "| server | runs | generated tok/s min / median / max | TTFT min / median / max (ms) | tokens per run |\n\
         |---|---:|---|---|---|\n",
    );
    for side in &sides {
        let (low, mid, high) = spread(&side.decode_tokens_per_second);
        let (ttft_low, ttft_mid, ttft_high) = spread(&side.ttft_ms);
        let tokens: Vec<String> = side.tokens.iter().map(u64::to_string).collect();
        table.push_str(&format!(
            "| {} | {} | {low:.1} / {mid:.1} / {high:.1} | {ttft_low:.0} / {ttft_mid:.0} / {ttft_high:.0} | {} |\n",
            side.label,
            side.decode_tokens_per_second.len(),
            tokens.join(", ")
        ));
    }
    let (ratio_low, ratio_mid, ratio_high) = spread(&ratios);
    let summary = if ratios.is_empty() {
        String::new()
    } else {
        format!(
            "{} / {}: {ratio_mid:.2}x at the median of the paired runs (min {ratio_low:.2}x, \
             max {ratio_high:.2}x).\n",
            args.label, args.against_label
        )
    };
    let name = match &args.against {
        Some(_) => format!("compare-{}-{}", args.label, args.against_label),
        None => format!("single-{}", args.label),
    };
    eprintln!("\n{table}\n{summary}{cpu}");
    stats::write_json(
        &name,
        &serde_json::json!({"cpu": cpu, "weights": args.weights, "max_tokens": args.max_tokens,
                            "sides": sides, "ratios": ratios}),
    )?;
    if args.write_docs {
        let weights = if args.weights.is_empty() {
            String::new()
        } else {
            format!(" Weights: {}.", args.weights)
        };
        let text = format!(
            "One stream at a time, temperature 0, up to {} tokens, a fresh prompt each run; {} \
             runs per server, alternating, back to back. {cpu}.{weights}\n\n{table}\n{summary}",
            args.max_tokens, args.runs
        );
        stats::write_section("benchmarks.md", &name, &text)?;
    }
    Ok(())
}
