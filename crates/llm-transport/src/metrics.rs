//! `/metrics`: Prometheus (OpenMetrics) text with request counts, latency histograms, and the
//! engine's gauges and token counters.

use std::sync::atomic::AtomicI64;
use std::sync::Mutex;
use std::time::Instant;

use llm_engine::{EngineStats, Finish};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of the exposition.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    /// The API key's name; `address` for clients without a key (addresses would make the
    /// label unbounded).
    client: String,
    /// `requests`, `tokens` or `concurrent requests`.
    limit: &'static str,
}

/// Every metric of one server.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    running: Gauge,
    waiting: Gauge,
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    e2e_latency: Histogram,
    queue_time: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    requests: Family<RequestLabels, Counter>,
    rate_limited: Family<RateLimitLabels, Counter>,
    cancelled: Counter,
    engine_restarts: Counter,
    open_connections: Gauge<i64, AtomicI64>,
    /// Serialises scrapes, which bring the engine's cumulative counters up to date.
    scrape: Mutex<()>,
}

fn histogram(buckets: &[f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            time_to_first_token: histogram(&[
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            inter_token_latency: histogram(&[
                0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25,
                0.5, 1.0,
            ]),
            e2e_latency: histogram(&[
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
            ]),
            queue_time: histogram(&[
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            requests: Family::default(),
            rate_limited: Family::default(),
            cancelled: Counter::default(),
            engine_restarts: Counter::default(),
            open_connections: Gauge::default(),
            scrape: Mutex::new(()),
        };
        let r = &mut metrics.registry;
        r.register(
            "llm_requests_running",
            "Requests generating now",
            metrics.running.clone(),
        );
        r.register(
            "llm_requests_waiting",
            "Requests waiting for a running slot",
            metrics.waiting.clone(),
        );
        r.register_with_unit(
            "llm_time_to_first_token",
            "Time from receiving a request to its first token",
            prometheus_client::registry::Unit::Seconds,
            metrics.time_to_first_token.clone(),
        );
        r.register_with_unit(
            "llm_inter_token_latency",
            "Time between consecutive tokens of a stream",
            prometheus_client::registry::Unit::Seconds,
            metrics.inter_token_latency.clone(),
        );
        r.register_with_unit(
            "llm_e2e_request_latency",
            "Time from receiving a request to its last token",
            prometheus_client::registry::Unit::Seconds,
            metrics.e2e_latency.clone(),
        );
        r.register_with_unit(
            "llm_request_queue_time",
            "Time a request waited for a running slot",
            prometheus_client::registry::Unit::Seconds,
            metrics.queue_time.clone(),
        );
        r.register(
            "llm_prompt_tokens",
            "Prompt tokens processed",
            metrics.prompt_tokens.clone(),
        );
        r.register(
            "llm_generation_tokens",
            "Tokens generated",
            metrics.generation_tokens.clone(),
        );
        r.register(
            "llm_requests",
            "Requests answered, by endpoint and status",
            metrics.requests.clone(),
        );
        r.register(
            "llm_rate_limited",
            "Requests refused by a rate limit, by client (key name) and limit",
            metrics.rate_limited.clone(),
        );
        r.register(
            "llm_requests_cancelled",
            "Generations cancelled before their end (client gone, too slow, or stopped)",
            metrics.cancelled.clone(),
        );
        r.register(
            "llm_engine_restarts",
            "Times the model engine died, failing the requests it held, and was started again",
            metrics.engine_restarts.clone(),
        );
        r.register(
            "llm_open_connections",
            "Open client connections",
            metrics.open_connections.clone(),
        );
        metrics
    }

    /// Counts an answered request.
    pub(crate) fn request(&self, endpoint: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    /// Counts a request refused by a rate limit: by its key's name, or as `address` when
    /// keys are off (addresses are too many to be labels).
    pub(crate) fn rate_limited(&self, key: Option<&str>, limit: &'static str) {
        let client = key.unwrap_or("address").to_owned();
        self.rate_limited
            .get_or_create(&RateLimitLabels { client, limit })
            .inc();
    }

    /// Counts an open connection until the guard is dropped.
    pub(crate) fn connection(&self) -> ConnectionGuard {
        self.open_connections.inc();
        ConnectionGuard(self.open_connections.clone())
    }

    /// Renders the exposition with the engine's current counters.
    pub(crate) fn render(&self, stats: Option<EngineStats>) -> String {
        let _scrape = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(stats) = stats {
            self.running
                .set(i64::try_from(stats.running).unwrap_or(i64::MAX));
            self.waiting
                .set(i64::try_from(stats.waiting).unwrap_or(i64::MAX));
            catch_up(&self.prompt_tokens, stats.prompt_tokens);
            catch_up(&self.generation_tokens, stats.generated_tokens);
            catch_up(&self.cancelled, stats.cancelled);
            catch_up(&self.engine_restarts, stats.engine_restarts);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Brings a counter up to the engine's cumulative value (engine counters only grow).
fn catch_up(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

/// Decrements the open connection gauge when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Gauge<i64, AtomicI64>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Watches one generation and records its latencies.
#[derive(Debug)]
pub(crate) struct RequestObserver {
    received: Instant,
    last_token: Option<Instant>,
    /// Time to the first token, for the request's log line.
    pub(crate) time_to_first_token: Option<std::time::Duration>,
    /// Deltas seen.
    pub(crate) deltas: usize,
}

impl RequestObserver {
    pub(crate) fn new(received: Instant) -> Self {
        Self {
            received,
            last_token: None,
            time_to_first_token: None,
            deltas: 0,
        }
    }

    pub(crate) fn delta(&mut self, metrics: &Metrics) {
        let now = Instant::now();
        match self.last_token {
            None => {
                let ttft = now - self.received;
                self.time_to_first_token = Some(ttft);
                metrics.time_to_first_token.observe(ttft.as_secs_f64());
            }
            Some(last) => metrics
                .inter_token_latency
                .observe((now - last).as_secs_f64()),
        }
        self.last_token = Some(now);
        self.deltas += 1;
    }

    pub(crate) fn finished(&self, metrics: &Metrics, finish: &Finish) {
        metrics
            .queue_time
            .observe(finish.timings.queue.as_secs_f64());
        metrics
            .e2e_latency
            .observe(self.received.elapsed().as_secs_f64());
    }

    pub(crate) fn failed(&self, metrics: &Metrics) {
        metrics
            .e2e_latency
            .observe(self.received.elapsed().as_secs_f64());
    }

    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.received.elapsed()
    }
}
