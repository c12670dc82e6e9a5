//! Engine benchmark: time to first token, prompt and generation speed of one stream, and the
//! aggregate generation speed of 1, 2, 4 and 8 concurrent streams.
//!
//! Throughput counts only correct work: every answer of a concurrent run must be the bytes the
//! same request gives alone (temperature 0). A run whose answers differ prints the first
//! difference and no figure, and the benchmark fails. The report names the CPU it ran on.
//!
//! ```sh
//! cargo run -p llm-engine --bin engine-bench [-- --model PATH.gguf] [--rounds N]
//! cargo run -p llm-engine --bin engine-bench -- --formats   # every weight format
//! cargo run -p llm-engine --bin engine-bench -- --structured   # the cost of a JSON constraint
//! ```
//!
//! Figures are printed and written into `docs/benchmarks.md` between the `engine` markers
//! (`engine-formats`, `engine-structured`).
//! Dependencies are optimised in the dev profile, so this measures the speed `cargo run` gives.

#![allow(clippy::print_stdout, missing_docs)] // A benchmark binary reports on stdout.

use std::time::{Duration, Instant};

use llm_engine::{convert_gguf, converted_path, Engine, EngineEvent, ModelSource, WeightFormat};
use llm_protocol::format::ResponseFormat;
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
    text: String,
    ttft: Duration,
    total: Duration,
    prompt_tokens: u32,
    generated: u32,
}

async fn run_one(engine: &Engine, request: &ChatCompletionRequest) -> Run {
    let started = Instant::now();
    let mut stream = engine.submit(request).expect("accepted");
    let mut ttft = None;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            EngineEvent::Delta(delta) => {
                ttft.get_or_insert_with(|| started.elapsed());
                text.push_str(&delta.text);
            }
            EngineEvent::Finished(finish) => {
                return Run {
                    text,
                    ttft: ttft.unwrap_or_default(),
                    total: started.elapsed(),
                    prompt_tokens: finish.usage.prompt_tokens,
                    generated: finish.usage.completion_tokens,
                }
            }
            EngineEvent::Error(error) => panic!("generation failed: {error}"),
        }
    }
    panic!("stream ended without a final event")
}

/// Single-stream figures: medians over the rounds.
struct SingleStream {
    ttft_cold_ms: f64,
    ttft_warm_ms: f64,
    prompt_tokens: u32,
    prefill: f64,
    decode: f64,
}

/// Short questions, a different one each round, so that none is answered from the prefix cache
/// as a whole.
const SHORT: [&str; 5] = [
    "Hi!",
    "Name a colour.",
    "What is two plus two?",
    "Say hello.",
    "Is water wet?",
];

/// `prompt` under a system message no earlier request used, so that nothing but the chat
/// template's first tokens can come from the prefix cache.
fn uncached(round: usize, prompt: &str, max_tokens: u32) -> ChatCompletionRequest {
    let mut request = request(prompt, max_tokens);
    request.messages.insert(
        0,
        ChatMessage::new(
            Role::System,
            format!("Benchmark round {round}: you are a helpful assistant."),
        ),
    );
    request
}

async fn single_stream(engine: &Engine, rounds: usize) -> SingleStream {
    let long_prompt = format!(
        "Summarise this text in one sentence: {}",
        "The river flows through the valley, past farms and small towns, to the sea. ".repeat(24)
    );
    let (mut cold, mut warm, mut prefill, mut decode) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prompt_tokens = 0;
    for round in 0..rounds {
        let question = SHORT[round % SHORT.len()];
        // A new question under the default system prompt, which earlier requests cached.
        let short = run_one(engine, &request(question, 1)).await;
        warm.push(short.ttft.as_secs_f64() * 1e3);
        let short = run_one(engine, &uncached(round, question, 1)).await;
        cold.push(short.ttft.as_secs_f64() * 1e3);
        let long = run_one(engine, &uncached(round + rounds, &long_prompt, 1)).await;
        prompt_tokens = long.prompt_tokens;
        prefill.push(f64::from(long.prompt_tokens) / long.ttft.as_secs_f64());
        let story = run_one(engine, &request(PROMPTS[0], 128)).await;
        let decode_time = story.total.saturating_sub(story.ttft).as_secs_f64();
        decode.push(f64::from(story.generated.saturating_sub(1)) / decode_time);
    }
    SingleStream {
        ttft_cold_ms: median(cold),
        ttft_warm_ms: median(warm),
        prompt_tokens,
        prefill: median(prefill),
        decode: median(decode),
    }
}

/// Converts the default model to every weight format (once; cached next to it) and measures
/// each on one stream, with a greedy answer to check the output stays sensible.
async fn formats(rounds: usize) -> String {
    let source = llm_engine::ensure_default_model(&llm_engine::default_cache_dir())
        .expect("the default model is available");
    let mut table = String::from(
        "| weights | file | tensors converted | time to first token | prompt tok/s | generated tok/s | greedy answer to \"What is the capital of France?\" |\n|---|---|---|---|---|---|---|\n",
    );
    for format in WeightFormat::ALL {
        let path = if format == WeightFormat::Q4_1 {
            source.clone()
        } else {
            converted_path(&source, format)
        };
        let converted = if path.exists() || path == source {
            "-".to_owned()
        } else {
            let (from, to) = (source.clone(), path.clone());
            let stats = tokio::task::spawn_blocking(move || convert_gguf(&from, &to, format))
                .await
                .expect("conversion task")
                .expect("conversion succeeds");
            format!("{} of {}", stats.converted, stats.converted + stats.kept)
        };
        let size = std::fs::metadata(&path).map_or(0, |meta| meta.len()) >> 20;
        let engine = match Engine::builder()
            .model(ModelSource::Gguf(path))
            .build()
            .await
        {
            Ok(engine) => engine,
            Err(error) => {
                table.push_str(&format!(
                    "| {} | {size} MiB | {converted} | load failed: {error} | | | |\n",
                    format.name()
                ));
                continue;
            }
        };
        run_one(&engine, &request("Hi", 8)).await;
        let figures = single_stream(&engine, rounds).await;
        let answer = engine
            .submit(request("What is the capital of France?", 24))
            .expect("accepted")
            .collect()
            .await
            .expect("answers")
            .text
            .replace(['\n', '|'], " ");
        let row = format!(
            "| {} | {size} MiB | {converted} | {:.0} ms | {:.0} | {:.1} | {answer} |\n",
            format.name(),
            figures.ttft_cold_ms,
            figures.prefill,
            figures.decode
        );
        println!("{row}");
        table.push_str(&row);
    }
    table
}

/// What a constraint costs: free and constrained requests measured in turn, one stream and
/// four, with the time to first token (which includes compiling the grammar) and the generation
/// speed. Every constrained answer must parse as JSON, or no figure is printed.
async fn structured(engine: &Engine, rounds: usize) -> String {
    let format = |value: serde_json::Value| {
        Some(serde_json::from_value::<ResponseFormat>(value).expect("a format"))
    };
    let list = serde_json::json!({"type": "json_schema", "json_schema": {"name": "facts",
        "schema": {"type": "array", "items": {"type": "object", "properties": {
            "topic": {"type": "string", "maxLength": 30},
            "fact": {"type": "string", "maxLength": 80},
            "year": {"type": "integer", "minimum": 0}},
            "required": ["topic", "fact", "year"], "additionalProperties": false}}}});
    let nested = serde_json::json!({"type": "json_schema", "json_schema": {"name": "cat",
        "schema": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 20},
            "colours": {"type": "array", "items": {"enum": ["black", "white", "grey", "ginger"]}},
            "habits": {"type": "array", "items": {"type": "object", "properties": {
                "habit": {"type": "string", "maxLength": 40}, "hours": {"type": "number"}},
                "required": ["habit", "hours"]}}},
        "required": ["name", "colours", "habits"], "additionalProperties": false}}});
    // Prompts and formats whose answers run to the token limit, so that every row times the
    // same number of tokens.
    let cases = [
        ("free text", "Describe a cat as JSON.", None),
        (
            "`json_object`",
            "Describe a cat as JSON.",
            format(serde_json::json!({"type": "json_object"})),
        ),
        (
            "JSON schema: an array of objects",
            "List facts about Paris with their years as JSON.",
            format(list),
        ),
        (
            "JSON schema: enums, nested arrays, numbers",
            "Describe a cat and all its habits as JSON.",
            format(nested),
        ),
    ];
    let mut table = String::from(
        "| output | streams | generated tokens per stream | time to first token | generated tok/s (all streams) | time per token against free text |\n|---|---|---|---|---|---|\n",
    );
    let mut free_rate = [0.0f64; 2];
    for (index, (case, prompt, response_format)) in cases.iter().enumerate() {
        for (slot, streams) in [1usize, 4].into_iter().enumerate() {
            let (mut ttft, mut rates, mut generated) = (Vec::new(), Vec::new(), 0);
            for round in 0..rounds {
                let mut request = uncached(index * 100 + round * 8 + streams, prompt, 128);
                request.response_format.clone_from(response_format);
                let tasks: Vec<_> = (0..streams)
                    .map(|_| {
                        let (engine, request) = (engine.clone(), request.clone());
                        tokio::spawn(async move { run_one(&engine, &request).await })
                    })
                    .collect();
                let mut runs = Vec::new();
                for task in tasks {
                    runs.push(task.await.expect("the stream task completes"));
                }
                for run in &runs {
                    if response_format.is_some() && run.generated < 128 {
                        if let Err(error) = serde_json::from_str::<serde_json::Value>(&run.text) {
                            println!(
                                "{case}: {:?} is not JSON ({error}); no figure is printed",
                                run.text
                            );
                            std::process::exit(1);
                        }
                    }
                }
                ttft.push(runs[0].ttft.as_secs_f64() * 1e3);
                generated = runs[0].generated;
                let tokens: u32 = runs.iter().map(|run| run.generated.saturating_sub(1)).sum();
                let decoding = runs
                    .iter()
                    .map(|run| run.total.saturating_sub(run.ttft))
                    .max();
                rates.push(f64::from(tokens) / decoding.unwrap_or_default().as_secs_f64());
            }
            let rate = median(rates);
            let cost = if response_format.is_none() {
                free_rate[slot] = rate;
                "-".to_owned()
            } else {
                let per_token = (1.0 / rate - 1.0 / free_rate[slot]) * 1e3 * streams as f64;
                format!(
                    "{per_token:+.2} ms ({:+.0}%)",
                    (free_rate[slot] / rate - 1.0) * 100.0
                )
            };
            let row = format!(
                "| {case} | {streams} | {generated} | {:.0} ms | {rate:.1} | {cost} |\n",
                median(ttft)
            );
            print!("{row}");
            table.push_str(&row);
        }
    }
    table
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

const USAGE: &str = "\
usage: engine-bench [--model PATH.gguf] [--rounds N]   one stream, then 1, 2, 4 and 8 streams
       engine-bench --formats [--rounds N]              one stream per weight format
       engine-bench --structured [--rounds N]           the cost of a JSON constraint

Writes its table into docs/benchmarks.md (sections `engine`, `engine-formats`,
`engine-structured`) and prints it. --rounds: medians of N rounds (default 3).
";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut model, mut rounds, mut by_format, mut constrained) =
        (ModelSource::Default, 3usize, false, false);
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
            "--formats" => by_format = true,
            "--structured" => constrained = true,
            "--help" | "-h" => {
                print!("{USAGE}");
                return;
            }
            other => {
                eprint!("engine-bench: unknown argument `{other}`\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if by_format {
        let table = formats(rounds).await;
        write_report("engine-formats", &table);
        return;
    }
    let engine = Engine::builder()
        .model(model)
        .max_num_seqs(8)
        .build()
        .await
        .expect("the model loads");
    // Warm up caches and thread pools.
    run_one(&engine, &request("Hi", 8)).await;
    if constrained {
        let table = structured(&engine, rounds).await;
        let cpu = llm_engine::cpu_description();
        println!("{cpu}");
        write_report("engine-structured", &format!("{cpu}\n\n{table}"));
        return;
    }

    let single = single_stream(&engine, rounds).await;
    let single = format!(
        "| metric | median of {rounds} |\n|---|---|\n\
         | time to first token, new short question, system prompt in the prefix cache | {:.0} ms |\n\
         | time to first token, short prompt, nothing cached | {:.0} ms |\n\
         | prompt processing ({} tokens, nothing cached) | {:.0} tok/s |\n\
         | generation, one stream | {:.1} tok/s |\n",
        single.ttft_warm_ms,
        single.ttft_cold_ms,
        single.prompt_tokens,
        single.prefill,
        single.decode,
    );
    println!("{single}");

    // The answers alone, to check every concurrent answer against.
    let mut solo = Vec::new();
    for prompt in PROMPTS {
        solo.push(run_one(&engine, &request(prompt, 128)).await.text);
    }
    let mut concurrency = String::from(
        "| concurrent streams | aggregate generated tok/s | per stream tok/s | speed-up over 1 | answers equal to alone |\n|---|---|---|---|---|\n",
    );
    let mut base = None;
    for streams in [1usize, 2, 4, 8] {
        let mut rates = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            let runs = run_concurrently(&engine, streams).await;
            let elapsed = started.elapsed();
            for (index, run) in runs.iter().enumerate() {
                if run.text != solo[index % PROMPTS.len()] {
                    println!(
                        "{streams} streams: the answer to {:?} differs from the same request alone:\n  alone:   {:?}\n  batched: {:?}\nno figure is printed for wrong answers",
                        PROMPTS[index % PROMPTS.len()],
                        solo[index % PROMPTS.len()],
                        run.text
                    );
                    std::process::exit(1);
                }
            }
            let generated: u32 = runs.iter().map(|run| run.generated).sum();
            rates.push(f64::from(generated) / elapsed.as_secs_f64());
        }
        let rate = median(rates);
        let base_rate = *base.get_or_insert(rate);
        concurrency.push_str(&format!(
            "| {streams} | {rate:.1} | {:.1} | {:.2}x | {} of {} |\n",
            rate / streams as f64,
            rate / base_rate,
            streams * rounds,
            streams * rounds,
        ));
        println!("{streams} streams: {rate:.1} tok/s");
    }
    println!("{concurrency}");
    let cpu = llm_engine::cpu_description();
    println!("{cpu}");
    write_report("engine", &format!("{cpu}\n\n{single}\n{concurrency}"));
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

/// Replaces the section between `<!-- MARKER:begin -->` and `<!-- MARKER:end -->` in
/// `docs/benchmarks.md`, or appends one.
fn write_report(marker: &str, report: &str) {
    let (begin, end) = (
        format!("<!-- {marker}:begin -->"),
        format!("<!-- {marker}:end -->"),
    );
    // `cargo run` sets CARGO_MANIFEST_DIR for the process: it wins over the compile-time value,
    // which names the checkout that built the binary (checkouts can share a target directory).
    // Only this crate's value: a process started by another cargo command inherits its own.
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .filter(|dir| dir.ends_with("crates/llm-engine"))
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../docs/benchmarks.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let section = format!("{begin}\n{report}{end}");
    let updated = match (current.find(&begin), current.find(&end)) {
        (Some(from), Some(to)) if from < to => {
            format!(
                "{}{section}{}",
                &current[..from],
                &current[to + end.len()..]
            )
        }
        _ => format!("{current}\n{section}\n"),
    };
    if let Err(error) = std::fs::write(path, updated) {
        println!("could not write docs/benchmarks.md: {error}");
    }
}
