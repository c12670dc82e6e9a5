//! Counters for metrics, shared by every handle of one engine.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A snapshot of an engine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Requests holding a running slot (generating, or about to).
    pub running: usize,
    /// Requests waiting for a running slot.
    pub waiting: usize,
    /// Requests handed to mistral.rs to generate. A request cancelled while it waited for a
    /// slot is never counted here.
    pub started: u64,
    /// Prompt tokens of every request that started generating.
    pub prompt_tokens: u64,
    /// Tokens generated, all requests together.
    pub generated_tokens: u64,
    /// Requests that finished with `stop` or `length`.
    pub finished: u64,
    /// Requests cancelled by their consumer (dropped, or too slow).
    pub cancelled: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests refused because the queue was full.
    pub rejected: u64,
    /// Times mistral.rs's engine thread died (a panic, failing every request it held) and was
    /// started again.
    pub engine_restarts: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) running: AtomicUsize,
    pub(crate) waiting: AtomicUsize,
    pub(crate) started: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    pub(crate) generated_tokens: AtomicU64,
    pub(crate) finished: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> EngineStats {
        EngineStats {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            generated_tokens: self.generated_tokens.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            // Counted by mistral.rs; `Engine::stats` fills it in.
            engine_restarts: 0,
        }
    }

    pub(crate) fn add(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// Decrements a gauge when dropped, so it stays right on every exit path, panics included.
#[derive(Debug)]
pub(crate) struct GaugeGuard<'a>(&'a AtomicUsize);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn enter(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }

    /// Takes over an increment made earlier (by admission control).
    pub(crate) fn adopt(gauge: &'a AtomicUsize) -> Self {
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
