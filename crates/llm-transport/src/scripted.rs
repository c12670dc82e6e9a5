//! A scripted engine: tokens at exact times and faults on demand, for testing and benchmarking
//! the transport without a model. It is never a stand-in for the real engine in an end-to-end
//! test.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use llm_engine::{EngineEvent, EngineStats, Finish, ModelInfo, Timings};
use llm_protocol::tokenize::TokenizeRequest;
use llm_protocol::{FinishReason, GenerateRequest, Prompt, Usage};
use tokio::time::Instant;

use crate::backend::{Backend, EventStream};

/// What every generation of a [`ScriptedEngine`] does.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Script {
    /// The deltas, in order.
    pub tokens: Vec<String>,
    /// Wait before the first delta (queue plus prefill).
    pub first_token_delay: Duration,
    /// Wait between deltas.
    pub interval: Duration,
    /// After this many deltas, end with an error event instead of finishing.
    pub fail_after: Option<usize>,
    /// Replace each token's text by the moment it is emitted, in microseconds since the Unix
    /// epoch, and a space: a client on the same machine measures the latency the transport
    /// adds by comparing it with its own clock.
    pub stamp: bool,
    /// The finish reason when all tokens are sent.
    pub finish_reason: FinishReason,
}

impl Script {
    /// A script sending `text` word by word (each word keeps its leading space).
    pub fn words(text: &str) -> Self {
        let mut tokens = Vec::new();
        let mut current = String::new();
        for ch in text.chars() {
            if ch == ' ' && !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
            current.push(ch);
        }
        if !current.is_empty() {
            tokens.push(current);
        }
        Self {
            tokens,
            first_token_delay: Duration::ZERO,
            interval: Duration::ZERO,
            fail_after: None,
            finish_reason: FinishReason::Stop,
            stamp: false,
        }
    }

    /// Sets the wait before the first delta.
    #[must_use]
    pub fn first_token_delay(mut self, delay: Duration) -> Self {
        self.first_token_delay = delay;
        self
    }

    /// Sets the wait between deltas.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Ends every generation with an error after `deltas` deltas.
    #[must_use]
    pub fn fail_after(mut self, deltas: usize) -> Self {
        self.fail_after = Some(deltas);
        self
    }

    /// `count` tokens, each stamped with its emission time (see [`Script::stamp`]).
    pub fn stamped(count: usize) -> Self {
        Self {
            tokens: vec![String::new(); count],
            stamp: true,
            ..Self::words("")
        }
    }

    /// The whole text, as a client should receive it (unless stamped).
    pub fn text(&self) -> String {
        let end = self.fail_after.unwrap_or(usize::MAX).min(self.tokens.len());
        self.tokens[..end].concat()
    }
}

/// An engine that plays a [`Script`] for every request, counting like the real one.
#[derive(Debug, Clone)]
pub struct ScriptedEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    info: ModelInfo,
    script: Script,
    capacity: usize,
    closed: AtomicBool,
    running: AtomicUsize,
    started: AtomicU64,
    generated: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
}

impl ScriptedEngine {
    /// An engine serving the model name `scripted`, with no limit on concurrent requests.
    pub fn new(script: Script) -> Self {
        Self {
            inner: Arc::new(Inner {
                info: ModelInfo::new("scripted", 8192, 0),
                script,
                capacity: usize::MAX,
                closed: AtomicBool::new(false),
                running: AtomicUsize::new(0),
                started: AtomicU64::new(0),
                generated: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
        }
    }

    /// Refuses requests with `Overloaded` while `capacity` are running.
    ///
    /// # Panics
    /// When called on a clone of an engine already shared.
    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("capacity is set before the engine is shared")
            .capacity = capacity;
        self
    }
}

impl Backend for ScriptedEngine {
    fn model(&self) -> &ModelInfo {
        &self.inner.info
    }

    fn submit(&self, request: &GenerateRequest) -> llm_engine::Result<EventStream> {
        request.validate()?;
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(llm_engine::Error::ShuttingDown);
        }
        let running = inner.running.fetch_add(1, Ordering::AcqRel);
        if running >= inner.capacity {
            inner.running.fetch_sub(1, Ordering::AcqRel);
            inner.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(llm_engine::Error::Overloaded {
                waiting: 0,
                limit: 0,
            });
        }
        inner.started.fetch_add(1, Ordering::Relaxed);
        let limit = request.max_tokens.map_or(usize::MAX, |n| n as usize);
        let run = Run {
            inner: Arc::clone(inner),
            submitted: Instant::now(),
            sent: 0,
            limit,
            ended: false,
            token_times: Vec::new(),
        };
        Ok(Box::pin(futures_util::stream::unfold(run, Run::step)))
    }

    /// One token per word of the prompt, and one per message: a stand-in tokenization, stable
    /// for tests. Ids count up from 0.
    fn tokenize(
        &self,
        request: &TokenizeRequest,
    ) -> BoxFuture<'static, llm_engine::Result<Vec<u32>>> {
        let count: usize = match &request.prompt {
            Prompt::Chat(messages) => messages
                .iter()
                .map(|message| 1 + message.text().split_whitespace().count())
                .sum(),
            Prompt::Text(text) => text.split_whitespace().count(),
        };
        let closed = self.inner.closed.load(Ordering::Acquire);
        Box::pin(async move {
            if closed {
                return Err(llm_engine::Error::ShuttingDown);
            }
            Ok((0..count)
                .map(|id| u32::try_from(id).unwrap_or(u32::MAX))
                .collect())
        })
    }

    /// Each id as `<id>`: a stand-in text.
    fn detokenize(&self, tokens: Vec<u32>) -> BoxFuture<'static, llm_engine::Result<String>> {
        let text: String = tokens.iter().map(|id| format!("<{id}>")).collect();
        Box::pin(async move { Ok(text) })
    }

    fn stats(&self) -> EngineStats {
        let inner = &self.inner;
        let mut stats = EngineStats::default();
        stats.running = inner.running.load(Ordering::Acquire);
        stats.started = inner.started.load(Ordering::Relaxed);
        stats.generated_tokens = inner.generated.load(Ordering::Relaxed);
        stats.finished = inner.finished.load(Ordering::Relaxed);
        stats.cancelled = inner.cancelled.load(Ordering::Relaxed);
        stats.failed = inner.failed.load(Ordering::Relaxed);
        stats.rejected = inner.rejected.load(Ordering::Relaxed);
        stats
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

/// One generation in progress. Dropping it before the end counts as a cancellation.
struct Run {
    inner: Arc<Inner>,
    submitted: Instant,
    sent: usize,
    limit: usize,
    ended: bool,
    token_times: Vec<Duration>,
}

impl Run {
    async fn step(mut self) -> Option<(EngineEvent, Self)> {
        if self.ended {
            return None;
        }
        let inner = Arc::clone(&self.inner);
        let script = &inner.script;
        if self.sent < script.tokens.len() && self.sent < self.limit {
            if script.fail_after == Some(self.sent) {
                self.end(&inner.failed);
                let error = llm_engine::Error::Generation {
                    source: "the scripted engine failed on purpose".into(),
                };
                return Some((EngineEvent::Error(error), self));
            }
            let due = self.submitted
                + script.first_token_delay
                + script.interval * u32::try_from(self.sent).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due).await;
            let token = if script.stamp {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                format!("{} ", now.as_micros())
            } else {
                script.tokens[self.sent].clone()
            };
            self.sent += 1;
            self.token_times.push(self.submitted.elapsed());
            inner.generated.fetch_add(1, Ordering::Relaxed);
            return Some((EngineEvent::Delta(token.into()), self));
        }
        let reason = if self.sent < script.tokens.len() {
            FinishReason::Length
        } else {
            script.finish_reason.clone()
        };
        self.end(&inner.finished);
        let completion = u32::try_from(self.sent).unwrap_or(u32::MAX);
        let finish = Finish {
            reason,
            stop_sequence: None,
            usage: Usage::new(8, completion),
            timings: Timings {
                queue: Duration::ZERO,
                time_to_first_token: self.token_times.first().copied(),
                token_times: std::mem::take(&mut self.token_times),
                total: self.submitted.elapsed(),
            },
        };
        Some((EngineEvent::Finished(finish), self))
    }

    fn end(&mut self, counter: &AtomicU64) {
        self.ended = true;
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.ended {
            self.inner.cancelled.fetch_add(1, Ordering::Relaxed);
            self.inner.running.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
