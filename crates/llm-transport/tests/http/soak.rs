//! The differential soak: a seeded random schedule of requests against the real default model,
//! every answer compared with the same request run alone.
//!
//! Waves of concurrent requests mix prompt lengths (a few tokens to past 1,000, across every
//! growth of the KV cache), arrival times, exact repeats, a shared system prompt and the next
//! turn of an earlier chat (prefix-cache hits), stop sequences and `max_tokens`, streaming and
//! non-streaming requests and WebSocket turns, neighbours cancelled mid-stream, seeded requests
//! sampled at temperature 1, JSON-constrained ones (`response_format`) and forced tool calls
//! (compared by their streamed pieces). After each
//! wave, each distinct request is run alone (nothing else running) once, and every batched
//! answer must equal it byte for byte, with the same finish reason and token count; a cancelled
//! request's text must be a prefix of it. Any error is a failure too: nothing in this schedule
//! may fail.
//!
//! It runs for `LLM_STREAM_SOAK_SECS` seconds (default 150) with the seed in
//! `LLM_STREAM_SOAK_SEED` (default: from the clock). A failure prints the seed and the first
//! request whose answer differs. `cargo xtask soak MINUTES` runs it for longer. With
//! `LLM_STREAM_SOAK_REPORT` set, a passing run writes what it compared there as JSON.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{connect, receive};
use super::*;

/// The schedule's seeded generator, with the draws the schedule makes.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const QUESTIONS: [&str; 12] = [
    "Name three colours.",
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about autumn leaves.",
    "What is the capital of Japan? Answer briefly.",
    "List four animals that live in the ocean.",
    "Describe a cup of coffee to someone who has never seen one.",
    "Give me a short tip for learning to play the guitar.",
    "한국의 4계절을 설명해줘",
    "Hi",
    "What is 12 times 12?",
    "Write two sentences about the moon.",
    "Why do cats purr?",
];

const SYSTEM: &str = "You are a concise assistant for a public library. Answer in plain words, \
                      in at most three sentences, and never invent facts you are unsure of.";

const STOPS: [&str; 4] = ["\n", ".", " and", ","];

/// A list of about `words` words, different for each `seed`: prompts of any length.
fn word_list(seed: usize, words: usize) -> String {
    const WORDS: [&str; 16] = [
        "river", "stone", "lantern", "harbour", "meadow", "copper", "window", "falcon", "garden",
        "engine", "winter", "violin", "pepper", "canyon", "ribbon", "marble",
    ];
    let text: Vec<&str> = (0..words)
        .map(|i| WORDS[(i * 7 + seed * 3 + i / 5) % WORDS.len()])
        .collect();
    text.join(" ")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Stream,
    Whole,
    WebSocket,
}

/// One request of the schedule.
#[derive(Clone, Debug)]
struct Planned {
    messages: Value,
    max_tokens: u32,
    stop: Option<&'static str>,
    mode: Mode,
    /// When it is sent, from the start of its wave.
    delay: Duration,
    /// Leave after this many deltas (not for whole responses).
    cancel_after: Option<usize>,
    /// Sampled at temperature 1 with this seed, instead of greedy.
    seed: Option<i64>,
    /// Constrained to a JSON object.
    json: bool,
    /// Made to call a tool (`tool_choice: required`).
    tool: bool,
}

impl Planned {
    /// What makes two requests the same request: their answers must be equal.
    fn key(&self) -> String {
        json!({"messages": self.messages, "max_tokens": self.max_tokens, "stop": self.stop,
            "seed": self.seed, "json": self.json, "tool": self.tool})
        .to_string()
    }

    fn body(&self, stream: bool) -> Value {
        let mut body = json!({
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": stream,
        });
        if let Some(stop) = self.stop {
            body["stop"] = json!([stop]);
        }
        if let Some(seed) = self.seed {
            body["seed"] = json!(seed);
            body["temperature"] = json!(1);
        }
        if self.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        if self.tool {
            body["tools"] = json!([{"type": "function", "function": {"name": "lookup",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                "required": ["query"]}}}]);
            body["tool_choice"] = json!("required");
        }
        body
    }
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    text: String,
    finish: String,
    completion_tokens: Option<u64>,
}

/// The schedule's generator: the prompt pool and the conversations seen so far.
struct Schedule {
    rng: Rng,
    /// Earlier requests with their solo answers, for next turns and exact repeats.
    history: Vec<(Value, String)>,
}

impl Schedule {
    fn question(&mut self) -> &'static str {
        QUESTIONS[self.rng.below(QUESTIONS.len())]
    }

    fn messages(&mut self) -> Value {
        let user = |text: &str| json!([{"role": "user", "content": text}]);
        match self.rng.below(10) {
            0..=2 => user(self.question()),
            3 => {
                // Long prompts: 60 to 1,100 words, a token or two each.
                let words = 60 + self.rng.below(1040);
                let seed = self.rng.below(4);
                user(&format!(
                    "Here is a list of words: {}. Which word comes first in the list?",
                    word_list(seed, words)
                ))
            }
            4 | 5 => json!([
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": self.rng.pick(&QUESTIONS)},
            ]),
            6 | 7 if !self.history.is_empty() => {
                // The next turn of an earlier chat: its whole context is in the prefix cache.
                let (messages, answer) = self.history[self.rng.below(self.history.len())].clone();
                let mut messages = messages.as_array().cloned().unwrap_or_default();
                messages.push(json!({"role": "assistant", "content": answer}));
                messages.push(json!({"role": "user", "content": self.rng.pick(&QUESTIONS)}));
                Value::Array(messages)
            }
            8 if !self.history.is_empty() => {
                self.history[self.rng.below(self.history.len())].0.clone()
            }
            _ => user(self.question()),
        }
    }

    fn wave(&mut self) -> Vec<Planned> {
        let size = 1 + self.rng.below(10);
        let spread = *self.rng.pick(&[0u64, 200, 1500]);
        (0..size)
            .map(|_| {
                let mode =
                    *self
                        .rng
                        .pick(&[Mode::Stream, Mode::Stream, Mode::Whole, Mode::WebSocket]);
                let cancel_after =
                    (mode != Mode::Whole && self.rng.chance(15)).then(|| 1 + self.rng.below(20));
                let json = self.rng.chance(10);
                Planned {
                    messages: self.messages(),
                    max_tokens: *self.rng.pick(&[1, 8, 24, 48, 64, 96, 160]),
                    stop: self.rng.chance(20).then(|| *self.rng.pick(&STOPS)),
                    mode,
                    delay: Duration::from_millis(if spread == 0 {
                        0
                    } else {
                        self.rng.0.u64(..spread)
                    }),
                    cancel_after,
                    seed: self
                        .rng
                        .chance(15)
                        .then(|| self.rng.below(1000) as i64 - 500),
                    json,
                    tool: !json && self.rng.chance(10),
                }
            })
            .collect()
    }
}

/// Reads an SSE response: the text, the finish reason, the usage, or the error event.
async fn stream(address: SocketAddr, planned: &Planned) -> Result<Answer, String> {
    let mut body = planned.body(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut reader = send(address, &post("/v1/chat/completions", &body.to_string())).await;
    let (status, _) = read_head(&mut reader).await;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let mut answer = Answer {
        text: String::new(),
        finish: String::new(),
        completion_tokens: None,
    };
    let mut deltas = 0;
    while let Some(chunk) = read_chunk(&mut reader).await {
        let frame = String::from_utf8(chunk).map_err(|_| "a frame is not UTF-8".to_owned())?;
        for data in frame.lines().filter_map(|line| line.strip_prefix("data: ")) {
            if data == "[DONE]" {
                return Ok(answer);
            }
            let value: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
            if value.get("error").is_some() {
                return Err(format!("error event {data}"));
            }
            if let Some(tokens) = value["usage"]["completion_tokens"].as_u64() {
                answer.completion_tokens = Some(tokens);
            }
            let choice = &value["choices"][0];
            if let Some(content) = choice["delta"]["content"].as_str() {
                if !content.is_empty() {
                    answer.text.push_str(content);
                    deltas += 1;
                }
            }
            for piece in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let function = &piece["function"];
                push_call(
                    &mut answer.text,
                    function["name"].as_str(),
                    &function["arguments"],
                );
                deltas += 1;
            }
            if let Some(finish) = choice["finish_reason"].as_str() {
                answer.finish = finish.to_owned();
            }
            if planned.cancel_after == Some(deltas) && answer.finish.is_empty() {
                answer.finish = "cancelled".to_owned();
                return Ok(answer);
            }
        }
    }
    Err("the stream ended without [DONE]".to_owned())
}

async fn whole(address: SocketAddr, planned: &Planned) -> Result<Answer, String> {
    let body = planned.body(false).to_string();
    let response = exchange(address, &post("/v1/chat/completions", &body)).await;
    let value: Value = serde_json::from_slice(&response.body()).map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("status {}: {value}", response.status));
    }
    let message = &value["choices"][0]["message"];
    let mut text = message["content"].as_str().unwrap_or_default().to_owned();
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let function = &call["function"];
        push_call(&mut text, function["name"].as_str(), &function["arguments"]);
    }
    Ok(Answer {
        text,
        finish: value["choices"][0]["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        completion_tokens: value["usage"]["completion_tokens"].as_u64(),
    })
}

async fn websocket(address: SocketAddr, planned: &Planned) -> Result<Answer, String> {
    let mut socket = connect(address, "").await;
    let mut chat = planned.body(false);
    chat["type"] = json!("chat");
    socket
        .send(Message::text(chat.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    let mut deltas = 0;
    loop {
        let message = receive(&mut socket).await;
        match message["type"].as_str() {
            Some(kind @ ("token" | "tool_call")) => {
                if kind == "token" {
                    text.push_str(message["content"].as_str().unwrap_or_default());
                } else {
                    push_call(&mut text, message["name"].as_str(), &message["arguments"]);
                }
                deltas += 1;
                if planned.cancel_after == Some(deltas) {
                    socket
                        .send(Message::text(r#"{"type":"cancel"}"#))
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Some("done") => {
                return Ok(Answer {
                    text,
                    finish: message["finish_reason"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    completion_tokens: message["usage"]["completion_tokens"].as_u64(),
                })
            }
            _ => return Err(format!("WebSocket message {message}")),
        }
    }
}

/// Writes a piece of a tool call into an answer's text, its name marked, so that calls are
/// compared like text.
fn push_call(text: &mut String, name: Option<&str>, arguments: &Value) {
    if let Some(name) = name {
        text.push_str(&format!("\u{1}call {name}\u{1}"));
    }
    text.push_str(arguments.as_str().unwrap_or_default());
}

async fn run(address: SocketAddr, planned: &Planned) -> Result<Answer, String> {
    let answer = async {
        match planned.mode {
            Mode::Stream => stream(address, planned).await,
            Mode::Whole => whole(address, planned).await,
            Mode::WebSocket => websocket(address, planned).await,
        }
    };
    // A hung engine fails the soak instead of hanging it.
    tokio::time::timeout(Duration::from_secs(300), answer)
        .await
        .unwrap_or_else(|_| Err("no answer within 300 s".to_owned()))
}

/// Why a batched answer is not the solo one, if it is not.
fn difference(planned: &Planned, solo: &Answer, batched: &Answer) -> Option<String> {
    if batched.finish == "cancelled" {
        return (!solo.text.starts_with(&batched.text)).then(|| {
            format!(
                "cancelled after {:?} deltas, its text is no prefix of the answer alone",
                planned.cancel_after
            )
        });
    }
    let tokens_differ = matches!(
        (batched.completion_tokens, solo.completion_tokens),
        (Some(a), Some(b)) if a != b
    );
    (batched.text != solo.text || batched.finish != solo.finish || tokens_differ)
        .then(|| "the answer differs from the same request alone".to_owned())
}

fn seconds_from_env() -> u64 {
    std::env::var("LLM_STREAM_SOAK_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(150)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_batched_answers_equal_solo_answers() {
    let seed = std::env::var("LLM_STREAM_SOAK_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |since| since.as_secs())
        });
    let seconds = seconds_from_env();
    eprintln!("soak: seed {seed}, {seconds} s (LLM_STREAM_SOAK_SEED={seed} repeats this schedule)");
    let test = start(Engine::builder(), TransportConfig::default()).await;
    let mut schedule = Schedule {
        rng: Rng::new(seed),
        history: Vec::new(),
    };
    let mut solo: HashMap<String, Answer> = HashMap::new();
    let started = Instant::now();
    let (mut waves, mut compared, mut cancelled) = (0, 0, 0);
    while started.elapsed() < Duration::from_secs(seconds) {
        let wave = schedule.wave();
        let address = test.address;
        let tasks: Vec<_> = wave
            .iter()
            .cloned()
            .map(|planned| {
                tokio::spawn(async move {
                    tokio::time::sleep(planned.delay).await;
                    run(address, &planned).await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.expect("a request task ends"));
        }
        // Alone: one at a time, nothing else running.
        for planned in &wave {
            if solo.contains_key(&planned.key()) {
                continue;
            }
            let reference = Planned {
                mode: Mode::Whole,
                cancel_after: None,
                ..planned.clone()
            };
            let answer = whole(address, &reference).await.unwrap_or_else(|error| {
                panic!("seed {seed}, wave {waves}: a request alone failed: {error}\n{planned:?}")
            });
            if schedule.history.len() < 24 {
                schedule
                    .history
                    .push((planned.messages.clone(), answer.text.clone()));
            }
            solo.insert(planned.key(), answer);
        }
        let mut failures = Vec::new();
        for (planned, answer) in wave.iter().zip(&answers) {
            let reference = &solo[&planned.key()];
            let why = match answer {
                Err(error) => Some(format!("it failed: {error}")),
                Ok(answer) => difference(planned, reference, answer),
            };
            if let Some(why) = why {
                failures.push(format!(
                    "{why}\n  request: {} ({:?}, sent at +{:?}, cancel after {:?})\n  \
                     alone:   {reference:?}\n  batched: {answer:?}",
                    planned.body(planned.mode == Mode::Stream),
                    planned.mode,
                    planned.delay,
                    planned.cancel_after,
                ));
            }
            if matches!(answer, Ok(answer) if answer.finish == "cancelled") {
                cancelled += 1;
            }
            compared += 1;
        }
        assert!(
            failures.is_empty(),
            "seed {seed}, wave {waves} of {} requests: {} differ; the first:\n{}\n\
             (LLM_STREAM_SOAK_SEED={seed} repeats this schedule)",
            wave.len(),
            failures.len(),
            failures[0]
        );
        waves += 1;
    }
    let stats = test.engine.stats();
    eprintln!(
        "soak: seed {seed}: {compared} answers in {waves} waves equal their solo answers \
         ({cancelled} cancelled mid-stream, {} distinct requests); engine {stats:?}",
        solo.len()
    );
    assert!(compared > 0);
    assert_eq!(stats.failed, 0);
    // For `docs/reliability.md`: `cargo xtask reliability --write-docs` reads it.
    if let Some(path) = std::env::var_os("LLM_STREAM_SOAK_REPORT") {
        let report = json!({
            "seed": seed, "seconds": seconds, "waves": waves, "compared": compared,
            "differed": 0, "cancelled": cancelled, "distinct": solo.len(),
        });
        std::fs::write(path, report.to_string()).expect("the soak report is written");
    }
}
