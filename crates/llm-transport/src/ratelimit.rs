//! Per-client rate limits: requests per minute and tokens per minute (GCRA, the generic cell
//! rate algorithm: a bucket that refills continuously, with no window edges to burst at), and
//! concurrent requests.
//!
//! A client is its API key (by the key's name) or, with authentication off, its address. A
//! request is admitted before any work, charging one request and its tokens: the prompt's
//! estimated tokens plus `max_tokens`. When it ends, the charge is settled to the tokens it
//! really used, giving back what it did not. The state lives in this process; the decision
//! (`decide`) is a pure function of the state, the limits and the time, so that a shared store
//! can run the same arithmetic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RateLimits;

/// The window every per-minute limit refills over.
const MINUTE: Duration = Duration::from_secs(60);

/// The most clients whose state is kept; past it, clients idle for a whole window are
/// forgotten (their buckets are full again anyway).
const MAX_CLIENTS: usize = 100_000;

/// A GCRA bucket: the theoretical arrival time of the next unit, as an offset from the
/// limiter's start. A bucket whose time is in the past is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    tat: Duration,
}

impl Bucket {
    /// Charging `cost` units of a `per_minute` limit at `now`: the new arrival time, or how
    /// long until the charge would fit.
    fn charge(self, per_minute: u32, cost: u64, now: Duration) -> Result<Bucket, Duration> {
        let interval = MINUTE / per_minute.max(1);
        let start = self.tat.max(now);
        let tat = start + interval.saturating_mul(u32::try_from(cost).unwrap_or(u32::MAX));
        let ahead = tat - now;
        if ahead > MINUTE {
            return Err(ahead - MINUTE);
        }
        Ok(Bucket { tat })
    }

    /// Gives back `units`, never past full.
    fn refund(self, per_minute: u32, units: u64, now: Duration) -> Bucket {
        let interval = MINUTE / per_minute.max(1);
        let back = interval.saturating_mul(u32::try_from(units).unwrap_or(u32::MAX));
        Bucket {
            tat: self.tat.saturating_sub(back).max(now),
        }
    }

    /// What a client may still spend now, and how long until the bucket is full again.
    fn status(self, per_minute: u32, now: Duration) -> Quota {
        let interval = MINUTE / per_minute.max(1);
        let ahead = self.tat.saturating_sub(now);
        let used = ahead.as_nanos().div_ceil(interval.as_nanos().max(1));
        Quota {
            limit: per_minute,
            remaining: u32::try_from(u128::from(per_minute).saturating_sub(used)).unwrap_or(0),
            reset: ahead,
        }
    }
}

/// One limit's state for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// Until the bucket is full again.
    pub(crate) reset: Duration,
}

/// What the headers of an answer say of its client's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) requests: Option<Quota>,
    pub(crate) tokens: Option<Quota>,
}

/// Why a request was refused, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `requests`, `tokens` or `concurrent requests`.
    pub(crate) limit: &'static str,
    /// The limit's value.
    pub(crate) value: u32,
    /// When the request would fit.
    pub(crate) retry_after: Duration,
}

/// One client's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Client {
    requests: Bucket,
    tokens: Bucket,
    running: u32,
}

/// Admits `tokens` for one request of `client` at `now` under `limits`: the client's new
/// state, or the refusal (the state then unchanged).
fn decide(
    client: Client,
    limits: &RateLimits,
    tokens: u64,
    now: Duration,
) -> Result<Client, Refusal> {
    let mut next = client;
    let refuse = |limit, value, retry_after| Refusal {
        limit,
        value,
        retry_after,
    };
    if let Some(limit) = limits.concurrency {
        if client.running >= limit {
            return Err(refuse("concurrent requests", limit, Duration::from_secs(1)));
        }
        next.running += 1;
    }
    if let Some(limit) = limits.requests_per_minute {
        next.requests = client
            .requests
            .charge(limit, 1, now)
            .map_err(|wait| refuse("requests", limit, wait))?;
    }
    if let Some(limit) = limits.tokens_per_minute {
        next.tokens = client
            .tokens
            .charge(limit, tokens.min(u64::from(limit)), now)
            .map_err(|wait| refuse("tokens", limit, wait))?;
    }
    Ok(next)
}

/// What `client`'s buckets hold at `now`.
fn status_of(client: &Client, limits: &RateLimits, now: Duration) -> Status {
    Status {
        requests: limits
            .requests_per_minute
            .map(|limit| client.requests.status(limit, now)),
        tokens: limits
            .tokens_per_minute
            .map(|limit| client.tokens.status(limit, now)),
    }
}

/// Where the limiter reads the time: the real clock, or a test's.
pub(crate) trait Clock: Send + Sync + std::fmt::Debug {
    /// Time since the clock's start.
    fn now(&self) -> Duration;
}

/// The monotonic clock.
#[derive(Debug)]
struct Monotonic(Instant);

impl Clock for Monotonic {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// The clients' limits and state.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: RateLimits,
    clock: Box<dyn Clock>,
    clients: Mutex<HashMap<String, Client>>,
}

impl Limiter {
    pub(crate) fn new(limits: RateLimits) -> Self {
        Self::with_clock(limits, Box::new(Monotonic(Instant::now())))
    }

    pub(crate) fn with_clock(limits: RateLimits, clock: Box<dyn Clock>) -> Self {
        Self {
            limits,
            clock,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any limit is set.
    pub(crate) fn enabled(&self) -> bool {
        self.limits.any()
    }

    /// Admits one request of `client` that may use `tokens`; the admission settles the charge
    /// when it is dropped.
    ///
    /// # Errors
    /// The [`Refusal`] of the first limit the request would pass.
    pub(crate) fn admit(self: &Arc<Self>, client: &str, tokens: u64) -> Result<Admission, Refusal> {
        let now = self.clock.now();
        let mut clients = self.lock();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(client) {
            clients.retain(|_, state| {
                state.running > 0 || state.requests.tat.max(state.tokens.tat) > now
            });
        }
        let state = clients.get(client).copied().unwrap_or_default();
        let next = decide(state, &self.limits, tokens, now)?;
        clients.insert(client.to_owned(), next);
        Ok(Admission {
            limiter: Arc::clone(self),
            client: client.to_owned(),
            charged: tokens.min(self.limits.tokens_per_minute.map_or(u64::MAX, u64::from)),
            used: None,
        })
    }

    /// `client`'s limits now, without charging anything.
    pub(crate) fn status(&self, client: &str) -> Status {
        if !self.enabled() {
            return Status::default();
        }
        let state = self.lock().get(client).copied().unwrap_or_default();
        status_of(&state, &self.limits, self.clock.now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn settle(&self, client: &str, charged: u64, used: Option<u64>) {
        let now = self.clock.now();
        let mut clients = self.lock();
        let Some(state) = clients.get_mut(client) else {
            return;
        };
        if self.limits.concurrency.is_some() {
            state.running = state.running.saturating_sub(1);
        }
        if let (Some(limit), Some(used)) = (self.limits.tokens_per_minute, used) {
            state.tokens = state
                .tokens
                .refund(limit, charged.saturating_sub(used), now);
        }
    }
}

/// An admitted request: its place under the concurrency limit and its token charge, settled
/// when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    limiter: Arc<Limiter>,
    client: String,
    charged: u64,
    used: Option<u64>,
}

impl Admission {
    /// The tokens the request really used (prompt and generated): what it did not use is
    /// given back when the admission is dropped. Without it, the whole charge stands (a
    /// request that failed or was cancelled keeps what it was charged).
    pub(crate) fn used(&mut self, tokens: u64) {
        self.used = Some(tokens);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.limiter.settle(&self.client, self.charged, self.used);
    }
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`.
pub(crate) fn reset_text(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        let text = format!("{seconds:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let whole = duration.as_secs();
    format!("{}m{}s", whole / 60, whole % 60)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A clock the test moves.
    #[derive(Debug, Default)]
    struct Manual(Arc<AtomicU64>);

    impl Clock for Manual {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
    }

    fn limiter(limits: RateLimits) -> (Arc<Limiter>, Arc<AtomicU64>) {
        let millis = Arc::new(AtomicU64::new(1_000_000));
        let clock = Manual(Arc::clone(&millis));
        (
            Arc::new(Limiter::with_clock(limits, Box::new(clock))),
            millis,
        )
    }

    #[test]
    fn requests_per_minute_allow_a_burst_then_refill_evenly() {
        let (limiter, millis) = limiter(RateLimits {
            requests_per_minute: Some(3),
            ..RateLimits::default()
        });
        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                let _admission = limiter.admit("a", 0).expect("within the burst");
                limiter.status("a").requests.expect("limited").remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.admit("a", 0).expect_err("the fourth in a minute");
        assert_eq!(refused.limit, "requests");
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        // Another client has its own bucket.
        limiter.admit("b", 0).expect("another client");
        // One request's worth refills in 20 s, not at a window's edge.
        millis.fetch_add(19_999, Ordering::SeqCst);
        assert!(limiter.admit("a", 0).is_err());
        millis.fetch_add(1, Ordering::SeqCst);
        let _admitted = limiter.admit("a", 0).expect("refilled one");
        let quota = limiter.status("a").requests.expect("limited");
        assert_eq!((quota.remaining, quota.reset), (0, Duration::from_secs(60)));
    }

    #[test]
    fn tokens_are_charged_at_admission_and_the_unused_part_given_back() {
        let (limiter, millis) = limiter(RateLimits {
            tokens_per_minute: Some(600),
            ..RateLimits::default()
        });
        let mut first = limiter.admit("a", 500).expect("fits");
        assert_eq!(limiter.status("a").tokens.expect("limited").remaining, 100);
        let refused = limiter.admit("a", 200).expect_err("500 + 200 > 600");
        assert_eq!(refused.limit, "tokens");
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        first.used(120);
        drop(first);
        // 380 given back: 480 left.
        let second = limiter.admit("a", 480).expect("the refund made room");
        assert_eq!(limiter.status("a").tokens.expect("limited").remaining, 0);
        drop(second);
        // Without `used` (a failed request), the charge stands.
        millis.fetch_add(60_000, Ordering::SeqCst);
        drop(limiter.admit("a", 600).expect("full again"));
        assert!(limiter.admit("a", 1).is_err());
        // A request larger than the whole limit is charged the whole limit.
        millis.fetch_add(60_000, Ordering::SeqCst);
        assert!(limiter.admit("a", 10_000).is_ok());
    }

    #[test]
    fn concurrency_counts_running_requests_until_they_end() {
        let (limiter, _) = limiter(RateLimits {
            concurrency: Some(2),
            ..RateLimits::default()
        });
        let one = limiter.admit("a", 0).expect("first");
        let two = limiter.admit("a", 0).expect("second");
        let refused = limiter.admit("a", 0).expect_err("third at once");
        assert_eq!(refused.limit, "concurrent requests");
        drop(one);
        let three = limiter.admit("a", 0).expect("a slot freed");
        drop((two, three));
    }

    #[test]
    fn a_refusal_changes_nothing() {
        let (limiter, _) = limiter(RateLimits {
            requests_per_minute: Some(10),
            tokens_per_minute: Some(100),
            concurrency: Some(5),
        });
        let held = limiter.admit("a", 90).expect("fits");
        assert!(limiter.admit("a", 50).is_err(), "tokens");
        let next = limiter
            .admit("a", 10)
            .expect("the refused one took nothing");
        let status = limiter.status("a");
        assert_eq!(status.requests.expect("limited").remaining, 8);
        assert_eq!(status.tokens.expect("limited").remaining, 0);
        drop((held, next));
    }

    #[test]
    fn reset_times_read_as_openai_writes_them() {
        for (millis, text) in [
            (20, "20ms"),
            (999, "999ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (59_250, "59.25s"),
            (360_000, "6m0s"),
            (61_000, "1m1s"),
        ] {
            assert_eq!(reset_text(Duration::from_millis(millis)), text);
        }
    }
}
