//! Engine benchmark: time to first token, prompt and generation speed of one stream, and the
//! aggregate generation speed of 1, 2, 4 and 8 concurrent streams.
//!
//! ```sh
//! cargo run -p llm-engine --bin engine-bench [-- --model PATH.gguf] [--rounds N]
//! ```
//!
//! Figures are printed and written into `docs/benchmarks.md` between the `engine` markers.
//! Dependencies are optimised in the dev profile, so this measures the speed `cargo run` gives.

#![allow(clippy::print_stdout, missing_docs)] // A benchmark binary reports on stdout.

use std::time::{Duration, Instant};

use llm_engine::{Engine, EngineEvent, ModelSource};
use llm_protocol::{ChatCompletionRequest, ChatMessage, Role};

const PROMPTS: [&str; 8] = [
    "Write a story about a lighthouse keeper.",
    "Explain how rain forms, step by step.",
    "Describe a walk through a busy market.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain why the sea is salty.",
    "Describe the life of a honey bee.",
    "Write a story about a robot learning to paint.",
    "Explain how a bicycle stays upright.",
];

fn request(prompt: &str, max_tokens: u32) -> ChatCompletionRequest {
    ChatCompletionRequest {
        messages: vec![ChatMessage::new(Role::User, prompt)],
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..ChatCompletionRequest::default()
    }
}

/// One measured request.
struct Run {
    ttft: Duration,
    total: Duration,
    prompt_tokens: u32,
    generated: u32,
}

async fn run_one(engine: &Engine, request: &ChatCompletionRequest) -> Run {
    let started = Instant::now();
    let mut stream = engine.submit(request).expect("accepted");
    let mut ttft = None;
    while let Some(event) = stream.next().await {
        match event {
            EngineEvent::Delta(_) => {
                ttft.get_or_insert_with(|| started.elapsed());
            }
            EngineEvent::Finished(finish) => {
                return Run {
                    ttft: ttft.unwrap_or_default(),
                    total: started.elapsed(),
                    prompt_tokens: finish.usage.prompt_tokens,
                    generated: finish.usage.completion_tokens,
                }
            }
            EngineEvent::Error(error) => panic!("generation failed: {error}"),
            _ => {}
        }
    }
    panic!("stream ended without a final event")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut model, mut rounds) = (ModelSource::Default, 3usize);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => {
                let path = args.next().expect("--model needs a value");
                model = ModelSource::parse(&path).expect("a valid model");
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--rounds needs a number");
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let engine = Engine::builder()
        .model(model)
        .max_num_seqs(8)
        .build()
        .await
        .expect("the model loads");
    // Warm up caches and thread pools.
    run_one(&engine, &request("Hi", 8)).await;

    let mut short_ttft = Vec::new();
    let mut decode_rates = Vec::new();
    let mut prefill_rates = Vec::new();
    let long_prompt = format!(
        "Summarise this text in one sentence: {}",
        "The river flows through the valley, past farms and small towns, to the sea. ".repeat(24)
    );
    for _ in 0..rounds {
        let short = run_one(&engine, &request("Hi!", 1)).await;
        short_ttft.push(short.ttft.as_secs_f64() * 1e3);
        let long = run_one(&engine, &request(&long_prompt, 1)).await;
        prefill_rates.push(f64::from(long.prompt_tokens) / long.ttft.as_secs_f64());
        let story = run_one(&engine, &request(PROMPTS[0], 128)).await;
        let decode_time = story.total.saturating_sub(story.ttft).as_secs_f64();
        decode_rates.push(f64::from(story.generated.saturating_sub(1)) / decode_time);
    }
    let single = format!(
        "| metric | median of {rounds} |\n|---|---|\n\
         | time to first token, short prompt, idle engine | {:.0} ms |\n\
         | prompt processing ({} tokens) | {:.0} tok/s |\n\
         | generation, one stream | {:.1} tok/s |\n",
        median(short_ttft),
        run_one(&engine, &request(&long_prompt, 1))
            .await
            .prompt_tokens,
        median(prefill_rates),
        median(decode_rates),
    );
    println!("{single}");

    let mut concurrency = String::from(
        "| concurrent streams | aggregate generated tok/s | per stream tok/s | speed-up over 1 |\n|---|---|---|---|\n",
    );
    let mut base = None;
    for streams in [1usize, 2, 4, 8] {
        let mut rates = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            let runs = run_concurrently(&engine, streams).await;
            let generated: u32 = runs.iter().map(|run| run.generated).sum();
            rates.push(f64::from(generated) / started.elapsed().as_secs_f64());
        }
        let rate = median(rates);
        let base_rate = *base.get_or_insert(rate);
        concurrency.push_str(&format!(
            "| {streams} | {rate:.1} | {:.1} | {:.2}x |\n",
            rate / streams as f64,
            rate / base_rate
        ));
        println!("{streams} streams: {rate:.1} tok/s");
    }
    println!("{concurrency}");
    write_report(&format!("{single}\n{concurrency}"));
}

/// Runs `streams` requests at once, each generating 128 tokens from its own prompt.
async fn run_concurrently(engine: &Engine, streams: usize) -> Vec<Run> {
    let tasks: Vec<_> = (0..streams)
        .map(|index| {
            let engine = engine.clone();
            tokio::spawn(async move { run_one(&engine, &request(PROMPTS[index % 8], 128)).await })
        })
        .collect();
    let mut runs = Vec::new();
    for task in tasks {
        runs.push(task.await.expect("the stream task completes"));
    }
    runs
}

/// Replaces the section between the markers in `docs/benchmarks.md`.
fn write_report(report: &str) {
    const BEGIN: &str = "<!-- engine:begin -->";
    const END: &str = "<!-- engine:end -->";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/benchmarks.md");
    let current = std::fs::read_to_string(path).unwrap_or_default();
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
    if let Err(error) = std::fs::write(path, updated) {
        println!("could not write docs/benchmarks.md: {error}");
    }
}
