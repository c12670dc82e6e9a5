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
        .submit(&ask("What is the capital of France?", 24))
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

/// Deterministic values in -1..1 (a linear congruential generator: no dependency, same on every
/// machine).
pub(crate) fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            #[allow(clippy::cast_precision_loss)]
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            unit * 2.0 - 1.0
        })
        .collect()
}
