//! Memory over many requests, in a process of its own so that no other test's model shares the
//! measurement. mistral.rs keeps each finished conversation's attention cache for its prefix
//! cache; the engine bounds how many (`prefix_cache_entries`), so serving many requests must not
//! keep growing the process. Without the bound each request of the default model kept about
//! 24 MB for good.

use llm_engine::Engine;
use llm_protocol::{ChatCompletionRequest, ChatMessage, Role};

/// The resident set size of this process, in bytes (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_requests_do_not_accumulate_memory() {
    let engine = Engine::builder()
        .prefix_cache_entries(2)
        .max_num_seqs(1)
        .build()
        .await
        .expect("the default model loads");
    let ask = |indices: std::ops::Range<usize>| {
        let engine = engine.clone();
        async move {
            for index in indices {
                let request = ChatCompletionRequest {
                    messages: vec![ChatMessage::new(
                        Role::User,
                        format!("Question number {index}: name a colour."),
                    )],
                    temperature: Some(0.0),
                    max_tokens: Some(4),
                    ..ChatCompletionRequest::default()
                };
                let answer = engine.submit(&request).expect("accepted").collect().await;
                answer.expect("finishes");
            }
        }
    };
    // Warm up: thread pools, allocator arenas, the first prefix-cache entries.
    ask(0..4).await;
    let Some(before) = resident_bytes() else {
        return; // Not Linux: nothing to measure.
    };
    let requests = 40;
    ask(4..4 + requests).await;
    let after = resident_bytes().expect("readable");
    let grown_mib = after.saturating_sub(before) as f64 / f64::from(1 << 20);
    // Unbounded, 40 requests would keep about 940 MiB.
    assert!(
        grown_mib < 200.0,
        "{requests} requests grew the process by {grown_mib:.0} MiB"
    );
}
