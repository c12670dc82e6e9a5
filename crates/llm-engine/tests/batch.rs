//! Batch invariance against the real default model: at temperature 0 a request's answer is the
//! same bytes whether it runs alone or batched with others, whatever its neighbours are (other
//! prompts and lengths, prefix-cache hits, other `max_tokens`, cancelled mid-stream), and an
//! engine failure fails every request it touches instead of ending them as if they succeeded.

use std::time::Duration;

use llm_engine::{Completion, Engine, EngineEvent, Error};
use llm_protocol::ChatCompletionRequest;

mod common;

use common::ask;

/// The eight requests of the report that found batched sequences mixing.
const PROMPTS: [(&str, u32); 8] = [
    ("Name three colours.", 64),
    ("Explain why the sky is blue in two sentences.", 56),
    ("Write a haiku about autumn leaves.", 48),
    ("What is the capital of Japan? Answer briefly.", 48),
    ("List four animals that live in the ocean.", 64),
    (
        "Describe a cup of coffee to someone who has never seen one.",
        64,
    ),
    ("Give me a short tip for learning to play the guitar.", 56),
    ("한국의 4계절을 설명해줘", 64),
];

async fn engine() -> Engine {
    Engine::builder()
        .build()
        .await
        .expect("the default model loads")
}

async fn alone(engine: &Engine, request: &ChatCompletionRequest) -> Completion {
    engine
        .submit(request)
        .expect("accepted")
        .collect()
        .await
        .expect("answers alone")
}

/// Submits every request, the i-th after `i * stagger`, and collects all answers.
async fn together(
    engine: &Engine,
    requests: &[ChatCompletionRequest],
    stagger: Duration,
) -> Vec<Result<Completion, Error>> {
    let mut running = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        if i > 0 && !stagger.is_zero() {
            tokio::time::sleep(stagger).await;
        }
        running.push(tokio::spawn(
            engine.submit(request).expect("accepted").collect(),
        ));
    }
    let mut answers = Vec::new();
    for task in running {
        answers.push(task.await.expect("the task ends"));
    }
    answers
}

/// Asserts that every batched answer is the solo answer, byte for byte, with its finish.
fn assert_same(label: &str, solo: &[Completion], batched: &[Result<Completion, Error>]) {
    let mut differing = Vec::new();
    for (i, (solo, batched)) in solo.iter().zip(batched).enumerate() {
        match batched {
            Ok(batched)
                if batched.text == solo.text
                    && batched.tool_calls == solo.tool_calls
                    && batched.finish.reason == solo.finish.reason
                    && batched.finish.usage == solo.finish.usage => {}
            Ok(batched) => differing.push(format!(
                "request {i}: alone {:?} ({:?}), batched {:?} ({:?})",
                solo.text, solo.finish.reason, batched.text, batched.finish.reason
            )),
            Err(error) => differing.push(format!("request {i}: batched failed: {error}")),
        }
    }
    assert!(
        differing.is_empty(),
        "{label}: {} of {} answers differ from the same request alone:\n{}",
        differing.len(),
        solo.len(),
        differing.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_requests_answer_as_alone_sent_at_once_and_staggered() {
    let engine = engine().await;
    let requests: Vec<_> = PROMPTS
        .iter()
        .map(|&(prompt, max_tokens)| ask(prompt, max_tokens))
        .collect();
    let mut solo = Vec::new();
    for request in &requests {
        solo.push(alone(&engine, request).await);
    }
    let at_once = together(&engine, &requests, Duration::ZERO).await;
    assert_same("sent at once", &solo, &at_once);
    let staggered = together(&engine, &requests, Duration::from_millis(120)).await;
    assert_same("staggered by 120 ms", &solo, &staggered);
}

/// A prompt of about `words` words, different for each `seed`.
fn long_prompt(seed: usize, words: usize) -> String {
    const WORDS: [&str; 16] = [
        "river", "stone", "lantern", "harbour", "meadow", "copper", "window", "falcon", "garden",
        "engine", "winter", "violin", "pepper", "canyon", "ribbon", "marble",
    ];
    let text: Vec<&str> = (0..words)
        .map(|i| WORDS[(i * 7 + seed * 3 + i / 5) % WORDS.len()])
        .collect();
    format!(
        "Here is a list of words: {}. Which word comes first in the list?",
        text.join(" ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_short_prompts_batched_across_cache_growth_answer_as_alone() {
    let engine = engine().await;
    // Prompts on both sides of every 128-position growth of the KV cache up to past 512, answers
    // that grow a cache past a boundary while batched with one that has not, and exact repeats
    // and shared prefixes that come from the prefix cache with a larger cache than their length.
    let mut requests = vec![
        ask("Name three colours.", 150),
        ask(&long_prompt(1, 90), 40),
        ask(&long_prompt(2, 200), 40),
        ask("What is the capital of Japan? Answer briefly.", 24),
        ask(&long_prompt(3, 420), 32),
        ask("Write a haiku about autumn leaves.", 140),
    ];
    let mut solo = Vec::new();
    for request in &requests {
        solo.push(alone(&engine, request).await);
    }
    // The same requests again (prefix-cache hits), and one that shares a long prompt's prefix.
    requests.push(ask(
        &format!("{} Answer in one word.", long_prompt(2, 200)),
        16,
    ));
    solo.push(alone(&engine, &requests[6]).await);
    for round in 0..2 {
        let batched = together(&engine, &requests, Duration::from_millis(40 * round)).await;
        assert_same(&format!("round {round}"), &solo, &batched);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_and_free_requests_batched_together_answer_as_alone() {
    use llm_protocol::format::ResponseFormat;
    let json = |prompt: &str, format: serde_json::Value| ChatCompletionRequest {
        response_format: Some(serde_json::from_value::<ResponseFormat>(format).expect("a format")),
        ..ask(prompt, 64)
    };
    let called = |prompt: &str, choice: &str| ChatCompletionRequest {
        tools: Some(
            serde_json::from_value(serde_json::json!([{"type": "function", "function": {
                "name": "get_weather", "parameters": {"type": "object", "properties": {
                    "city": {"type": "string", "maxLength": 20}}, "required": ["city"],
                    "additionalProperties": false}}}]))
            .expect("tools"),
        ),
        tool_choice: Some(serde_json::from_value(serde_json::json!(choice)).expect("a choice")),
        ..ask(prompt, 48)
    };
    // No other properties: the answer closes after its list, well within its tokens, whatever
    // the weight format (with them allowed, the Q4_1 weights go on to a description).
    let schema = serde_json::json!({"type": "json_schema", "json_schema": {"name": "colours",
        "schema": {"type": "object", "properties": {"colours": {"type": "array",
            "items": {"type": "string", "maxLength": 20}, "maxItems": 3}},
            "required": ["colours"], "additionalProperties": false}}});
    // Each sequence's grammar masks only its own logits: a constrained neighbour changes no
    // free answer, and a free one no constrained answer.
    let requests = vec![
        json(PROMPTS[0].0, schema.clone()),
        ask(PROMPTS[1].0, 48),
        json(PROMPTS[3].0, serde_json::json!({"type": "json_object"})),
        ask(PROMPTS[7].0, 48),
        json(PROMPTS[4].0, schema),
        // A forced tool call is a constrained answer too, and `auto` a free one.
        called("What is the weather in Paris?", "required"),
        called(PROMPTS[2].0, "auto"),
    ];
    let engine = engine().await;
    let mut solo = Vec::new();
    for request in &requests {
        solo.push(alone(&engine, request).await);
    }
    for (request, answer) in requests.iter().zip(&solo) {
        if request.response_format.is_some() {
            let value: serde_json::Value =
                serde_json::from_str(&answer.text).expect("a constrained answer is JSON");
            assert!(value.is_object(), "{}", answer.text);
        }
    }
    let forced = &solo[5];
    assert_eq!(forced.tool_calls.len(), 1, "{forced:?}");
    let arguments: serde_json::Value =
        serde_json::from_str(&forced.tool_calls[0].arguments).expect("JSON arguments");
    assert!(arguments["city"].is_string(), "{arguments}");
    for stagger in [0, 60] {
        let batched = together(&engine, &requests, Duration::from_millis(stagger)).await;
        assert_same(&format!("staggered by {stagger} ms"), &solo, &batched);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_gives_the_same_sampled_answer_alone_after_others_and_batched() {
    let engine = engine().await;
    let sampled = |prompt: &str, seed: Option<i64>| ChatCompletionRequest {
        temperature: Some(1.0),
        seed,
        ..ask(prompt, 48)
    };
    let story = "Write a story about a dragon.";
    let first = alone(&engine, &sampled(story, Some(42))).await;
    // Unseeded sampling in between draws from the engine's shared RNG; a seeded request's own
    // RNG does not notice.
    alone(&engine, &sampled(story, None)).await;
    let again = alone(&engine, &sampled(story, Some(42))).await;
    assert_eq!(first.text, again.text, "the same seed, the same answer");
    let other = alone(&engine, &sampled(story, Some(43))).await;
    assert_ne!(first.text, other.text, "another seed samples other tokens");
    let negative = alone(&engine, &sampled(story, Some(-42))).await;

    let requests = vec![
        sampled(story, Some(42)),
        sampled(PROMPTS[1].0, None),
        sampled(story, Some(43)),
        ask(PROMPTS[3].0, 48),
        sampled(story, Some(-42)),
        sampled(PROMPTS[2].0, None),
    ];
    for stagger in [0, 50] {
        let batched = together(&engine, &requests, Duration::from_millis(stagger)).await;
        let seeded: Vec<_> = batched
            .into_iter()
            .enumerate()
            .filter(|(i, _)| [0, 2, 4].contains(i))
            .map(|(_, answer)| answer)
            .collect();
        assert_same(
            &format!("seeded, staggered by {stagger} ms"),
            &[first.clone(), other.clone(), negative.clone()],
            &seeded,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_batched_are_the_logprobs_alone() {
    let engine = engine().await;
    let requests: Vec<_> = PROMPTS
        .iter()
        .take(6)
        .enumerate()
        .map(|(i, &(prompt, max_tokens))| ChatCompletionRequest {
            logprobs: i % 3 != 2,
            top_logprobs: Some(if i % 3 == 0 { 3 } else { 0 }),
            ..ask(prompt, max_tokens)
        })
        .collect();
    let mut solo = Vec::new();
    for request in &requests {
        solo.push(alone(&engine, request).await);
    }
    for stagger in [0, 80] {
        let batched = together(&engine, &requests, Duration::from_millis(stagger)).await;
        for (i, (solo, batched)) in solo.iter().zip(&batched).enumerate() {
            let batched = batched.as_ref().expect("answers");
            // Bit for bit: the same floats, whatever the neighbours.
            assert_eq!(
                batched.logprobs, solo.logprobs,
                "request {i}, stagger {stagger}"
            );
            assert_eq!(batched.logprobs.is_empty(), i % 3 == 2, "request {i}");
        }
        assert_same(&format!("staggered by {stagger} ms"), &solo, &batched);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_cancelled_mid_stream_do_not_change_an_answer() {
    let engine = engine().await;
    let request = ask(
        "Describe a cup of coffee to someone who has never seen one.",
        96,
    );
    let solo = alone(&engine, &request).await;
    let kept = tokio::spawn(engine.submit(&request).expect("accepted").collect());
    for (i, &(prompt, _)) in PROMPTS.iter().enumerate().take(4) {
        let mut stream = engine.submit(ask(prompt, 200)).expect("accepted");
        // Each neighbour reads a few deltas (a different number each), then goes away.
        for _ in 0..(3 + 4 * i) {
            if !matches!(stream.next().await, Some(EngineEvent::Delta(_))) {
                break;
            }
        }
        drop(stream);
    }
    let kept = kept.await.expect("the task ends").expect("answers");
    assert_eq!(kept.text, solo.text);
    assert_eq!(kept.finish.reason, solo.finish.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_turn_of_a_chat_answers_as_without_a_prefix_cache() {
    use llm_protocol::{ChatMessage, Role};
    let cached = engine().await;
    let uncached = Engine::builder()
        .prefix_cache_entries(0)
        .build()
        .await
        .expect("the default model loads");
    for (first, max_tokens) in [
        ("Give me a short tip for learning to play the guitar.", 8),
        ("Name three colours.", 20),
    ] {
        let opening = ask(first, max_tokens);
        let reply = alone(&cached, &opening).await;
        // The next turn: the earlier prompt and answer are all in the prefix cache, up to the
        // answer's last token, which the model sampled but never computed.
        let mut next = opening.clone();
        next.messages
            .push(ChatMessage::new(Role::Assistant, reply.text.as_str()));
        next.messages
            .push(ChatMessage::new(Role::User, "Why do cats purr?"));
        next.max_tokens = Some(96);
        let from_cache = alone(&cached, &next).await;
        let from_scratch = alone(&uncached, &next).await;
        assert_eq!(from_cache.text, from_scratch.text, "after {first:?}");
        assert_eq!(from_cache.finish.reason, from_scratch.finish.reason);
    }
}
