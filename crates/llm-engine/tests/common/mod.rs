//! Helpers shared by the engine's test binaries.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use llm_engine::{Completion, Engine};
use llm_protocol::{ChatCompletionRequest, ChatMessage, Role};

/// A greedy (temperature 0) request with one user message.
pub(crate) fn ask(prompt: &str, max_tokens: u32) -> ChatCompletionRequest {
    ChatCompletionRequest {
        messages: vec![ChatMessage::new(Role::User, prompt)],
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..ChatCompletionRequest::default()
    }
}

/// Asks the engine's model for the capital of France and checks the answer names Paris: a model
/// that loaded wrongly (weights, tokenizer or chat template) does not.
pub(crate) async fn answers_sensibly(engine: &Engine) -> Completion {
    let answer = engine
        .submit(ask("What is the capital of France?", 24))
        .expect("accepted")
        .collect()
        .await
        .expect("answers");
    assert!(
        answer.text.contains("Paris"),
        "a sensible answer: {:?}",
        answer.text
    );
    answer
}

/// Deterministic values in -1..1, the same on every machine for a seed.
pub(crate) fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(|_| rng.f32() * 2.0 - 1.0).collect()
}
