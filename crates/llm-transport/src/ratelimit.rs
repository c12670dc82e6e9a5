//! Per-client rate limits: requests per minute and tokens per minute (GCRA, the generic cell
//! rate algorithm: a bucket that refills continuously, with no window edges to burst at), and
//! concurrent requests.
//!
//! A client is its API key (by the key's name) or, with authentication off, its address. A
//! request is admitted before any work, charging one request and its tokens: the prompt's
//! estimated tokens plus `max_tokens`. When it ends, the charge is settled to the tokens it
//! really used, giving back what it did not.
//!
//! The state lives in a [`LimitStore`]: this process's ([`LocalStore`]), or one that replicas
//! share (Redis, in `shared.rs`), which runs the same arithmetic in one atomic script per
//! decision. When a shared store cannot be reached, [`OnFailure`] says whether this replica
//! enforces the limits alone (open) or refuses (closed).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::config::{OnFailure, RateLimits};

/// The window every per-minute limit refills over.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);

/// The most clients whose state is kept; past it, clients idle for a whole window are
/// forgotten (their buckets are full again anyway).
const MAX_CLIENTS: usize = 100_000;

/// The time one unit of a `per_minute` limit takes to refill, in whole microseconds: the
/// shared store's script computes the same.
pub(crate) fn interval(per_minute: u32) -> Duration {
    Duration::from_micros(60_000_000 / u64::from(per_minute.max(1)))
}

/// A GCRA bucket: the theoretical arrival time of the next unit, as an offset from the
/// limiter's start. A bucket whose time is in the past is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bucket {
    pub(crate) tat: Duration,
}

impl Bucket {
    /// Charging `cost` units of a `per_minute` limit at `now`: the new arrival time, or how
    /// long until the charge would fit.
    fn charge(self, per_minute: u32, cost: u64, now: Duration) -> Result<Bucket, Duration> {
        let start = self.tat.max(now);
        let tat =
            start + interval(per_minute).saturating_mul(u32::try_from(cost).unwrap_or(u32::MAX));
        let ahead = tat - now;
        if ahead > MINUTE {
            return Err(ahead - MINUTE);
        }
        Ok(Bucket { tat })
    }

    /// Gives back `units`, never past full.
    fn refund(self, per_minute: u32, units: u64, now: Duration) -> Bucket {
        let back = interval(per_minute).saturating_mul(u32::try_from(units).unwrap_or(u32::MAX));
        Bucket {
            tat: self.tat.saturating_sub(back).max(now),
        }
    }

    /// What a client may still spend now, and how long until the bucket is full again.
    pub(crate) fn status(self, per_minute: u32, now: Duration) -> Quota {
        let interval = interval(per_minute);
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

impl Status {
    /// The status of buckets that are `requests` and `tokens` ahead of now.
    pub(crate) fn ahead(limits: &RateLimits, requests: Duration, tokens: Duration) -> Self {
        Self {
            requests: limits
                .requests_per_minute
                .map(|limit| Bucket { tat: requests }.status(limit, Duration::ZERO)),
            tokens: limits
                .tokens_per_minute
                .map(|limit| Bucket { tat: tokens }.status(limit, Duration::ZERO)),
        }
    }
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

/// Why [`Limiter::admit`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A limit is reached.
    Limit(Refusal),
    /// The shared store cannot be reached and the limits fail closed.
    Unavailable,
}

/// A shared store that did not answer (unreachable, too slow, or an error reply).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StoreError(pub(crate) String);

/// One request's charge: whose, under which limits, how many tokens (at most the whole
/// tokens-per-minute limit), and an id for the concurrency slot it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Charge {
    pub(crate) client: String,
    pub(crate) limits: RateLimits,
    pub(crate) tokens: u64,
    pub(crate) id: u64,
}

/// A decision: admitted (with the client's limits after the charge), or refused.
pub(crate) type Verdict = Result<Status, Refusal>;

/// Where the limits' state lives. Each call is one decision, taken atomically.
pub(crate) trait LimitStore: Send + Sync + Debug {
    /// Charges one request, or refuses it and changes nothing.
    fn admit<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<Verdict, StoreError>>;

    /// Ends a request: frees its concurrency slot and gives back the tokens it was charged
    /// but did not use (`used`; `None` keeps the whole charge).
    fn settle<'a>(
        &'a self,
        charge: &'a Charge,
        used: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Keeps a running request's concurrency slot, which lapses after [`lease`](Self::lease)
    /// without renewal (so that a replica that dies does not hold slots forever).
    fn renew<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<(), StoreError>>;

    /// How long a concurrency slot lasts unrenewed; `None` for as long as the request runs.
    fn lease(&self) -> Option<Duration>;

    /// `client`'s limits now, without charging anything.
    fn status<'a>(
        &'a self,
        client: &'a str,
        limits: &'a RateLimits,
    ) -> BoxFuture<'a, Result<Status, StoreError>>;
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
    Status::ahead(
        limits,
        client.requests.tat.saturating_sub(now),
        client.tokens.tat.saturating_sub(now),
    )
}

/// Where the limiter reads the time: the real clock, or a test's.
pub(crate) trait Clock: Send + Sync + Debug {
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

/// The limits' state in this process.
#[derive(Debug)]
pub(crate) struct LocalStore {
    clock: Box<dyn Clock>,
    clients: Mutex<HashMap<String, Client>>,
}

impl LocalStore {
    pub(crate) fn new() -> Self {
        Self::with_clock(Box::new(Monotonic(Instant::now())))
    }

    pub(crate) fn with_clock(clock: Box<dyn Clock>) -> Self {
        Self {
            clock,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit_now(&self, charge: &Charge) -> Verdict {
        let now = self.clock.now();
        let mut clients = self.lock();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&charge.client) {
            clients.retain(|_, state| {
                state.running > 0 || state.requests.tat.max(state.tokens.tat) > now
            });
        }
        let state = clients.get(&charge.client).copied().unwrap_or_default();
        let next = decide(state, &charge.limits, charge.tokens, now)?;
        clients.insert(charge.client.clone(), next);
        Ok(status_of(&next, &charge.limits, now))
    }

    fn settle_now(&self, charge: &Charge, used: Option<u64>) {
        let now = self.clock.now();
        let mut clients = self.lock();
        let Some(state) = clients.get_mut(&charge.client) else {
            return;
        };
        if charge.limits.concurrency.is_some() {
            state.running = state.running.saturating_sub(1);
        }
        if let (Some(limit), Some(used)) = (charge.limits.tokens_per_minute, used) {
            state.tokens = state
                .tokens
                .refund(limit, charge.tokens.saturating_sub(used), now);
        }
    }

    fn status_now(&self, client: &str, limits: &RateLimits) -> Status {
        let state = self.lock().get(client).copied().unwrap_or_default();
        status_of(&state, limits, self.clock.now())
    }
}

impl LimitStore for LocalStore {
    fn admit<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<Verdict, StoreError>> {
        std::future::ready(Ok(self.admit_now(charge))).boxed()
    }

    fn settle<'a>(
        &'a self,
        charge: &'a Charge,
        used: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.settle_now(charge, used);
        std::future::ready(Ok(())).boxed()
    }

    fn renew<'a>(&'a self, _charge: &'a Charge) -> BoxFuture<'a, Result<(), StoreError>> {
        std::future::ready(Ok(())).boxed()
    }

    fn lease(&self) -> Option<Duration> {
        None
    }

    fn status<'a>(
        &'a self,
        client: &'a str,
        limits: &'a RateLimits,
    ) -> BoxFuture<'a, Result<Status, StoreError>> {
        std::future::ready(Ok(self.status_now(client, limits))).boxed()
    }
}

/// The limits: every client's state, in the shared store when there is one, and this
/// process's store for when it cannot be reached.
#[derive(Debug)]
pub(crate) struct Limiter {
    local: Arc<LocalStore>,
    shared: Option<Arc<dyn LimitStore>>,
    on_failure: OnFailure,
}

impl Limiter {
    /// Limits kept in this process.
    pub(crate) fn new() -> Self {
        Self::with_local(LocalStore::new())
    }

    pub(crate) fn with_local(local: LocalStore) -> Self {
        Self {
            local: Arc::new(local),
            shared: None,
            on_failure: OnFailure::Open,
        }
    }

    /// Limits kept in `shared`, with `on_failure` for when it cannot be reached.
    pub(crate) fn shared(mut self, shared: Arc<dyn LimitStore>, on_failure: OnFailure) -> Self {
        self.shared = Some(shared);
        self.on_failure = on_failure;
        self
    }

    /// Admits one request of `client` that may use `tokens` under `limits`; the admission
    /// settles the charge when it is dropped.
    ///
    /// # Errors
    /// [`Refused::Limit`] with the first limit the request would pass;
    /// [`Refused::Unavailable`] when the shared store cannot be reached and limits fail
    /// closed.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        client: &str,
        limits: RateLimits,
        tokens: u64,
    ) -> Result<Admission, Refused> {
        let charge = Charge {
            client: client.to_owned(),
            limits,
            tokens: tokens.min(limits.tokens_per_minute.map_or(u64::MAX, u64::from)),
            id: slot_id(),
        };
        if let Some(shared) = &self.shared {
            match shared.admit(&charge).await {
                Ok(verdict) => {
                    let status = verdict.map_err(Refused::Limit)?;
                    return Ok(Admission::new(
                        Held::Shared(Arc::clone(shared)),
                        charge,
                        status,
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "the shared rate-limit store did not answer");
                    if self.on_failure == OnFailure::Closed {
                        return Err(Refused::Unavailable);
                    }
                }
            }
        }
        let status = self.local.admit_now(&charge).map_err(Refused::Limit)?;
        Ok(Admission::new(
            Held::Local(Arc::clone(&self.local)),
            charge,
            status,
        ))
    }

    /// `client`'s limits now, without charging anything: the shared store's, or this
    /// process's when it cannot be reached.
    pub(crate) async fn status(&self, client: &str, limits: &RateLimits) -> Status {
        if !limits.any() {
            return Status::default();
        }
        if let Some(shared) = &self.shared {
            if let Ok(status) = shared.status(client, limits).await {
                return status;
            }
        }
        self.local.status_now(client, limits)
    }
}

/// A concurrency slot's id: random, so that replicas sharing a store never collide.
fn slot_id() -> u64 {
    // A failed read of the OS generator gives 0: ids then collide only within one client's
    // concurrency set, whose slots still lapse with their lease.
    getrandom::u64().unwrap_or_default()
}

/// The store that holds an admission's charge.
#[derive(Debug, Clone)]
enum Held {
    Local(Arc<LocalStore>),
    Shared(Arc<dyn LimitStore>),
}

/// An admitted request: its place under the concurrency limit and its token charge, settled
/// when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    held: Held,
    charge: Charge,
    used: Option<u64>,
    status: Status,
    /// Renews the concurrency slot in a shared store while the request runs.
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Admission {
    fn new(held: Held, charge: Charge, status: Status) -> Self {
        let renewal = match &held {
            Held::Shared(store) if charge.limits.concurrency.is_some() => {
                store.lease().and_then(|lease| {
                    let handle = tokio::runtime::Handle::try_current().ok()?;
                    let (store, charge) = (Arc::clone(store), charge.clone());
                    Some(handle.spawn(async move {
                        let mut every = tokio::time::interval(lease / 3);
                        every.tick().await;
                        loop {
                            every.tick().await;
                            if let Err(error) = store.renew(&charge).await {
                                tracing::debug!(%error, "a concurrency slot was not renewed");
                            }
                        }
                    }))
                })
            }
            _ => None,
        };
        Self {
            held,
            charge,
            used: None,
            status,
            renewal,
        }
    }

    /// The tokens the request really used (prompt and generated): what it did not use is
    /// given back when the admission is dropped. Without it, the whole charge stands (a
    /// request that failed or was cancelled keeps what it was charged).
    pub(crate) fn used(&mut self, tokens: u64) {
        self.used = Some(tokens);
    }

    /// The client's limits just after this admission's charge.
    pub(crate) fn status(&self) -> Status {
        self.status
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        match &self.held {
            Held::Local(store) => store.settle_now(&self.charge, self.used),
            Held::Shared(store) => {
                let Ok(handle) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let (store, charge, used) = (Arc::clone(store), self.charge.clone(), self.used);
                handle.spawn(async move {
                    if let Err(error) = store.settle(&charge, used).await {
                        // The slot lapses with its lease; the unused tokens stay charged.
                        tracing::debug!(%error, "a rate-limit charge was not settled");
                    }
                });
            }
        }
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

    /// A limiter on a clock the test moves, with a way to admit and read `limits` at once.
    struct Test {
        limiter: Arc<Limiter>,
        limits: RateLimits,
    }

    impl Test {
        fn admit(&self, client: &str, tokens: u64) -> Result<Admission, Refusal> {
            self.limiter
                .admit(client, self.limits, tokens)
                .now_or_never()
                .expect("local decisions are immediate")
                .map_err(|refused| match refused {
                    Refused::Limit(refusal) => refusal,
                    Refused::Unavailable => panic!("no shared store"),
                })
        }

        fn status(&self, client: &str) -> Status {
            self.limiter
                .status(client, &self.limits)
                .now_or_never()
                .expect("local status is immediate")
        }
    }

    fn limiter(limits: RateLimits) -> (Test, Arc<AtomicU64>) {
        let millis = Arc::new(AtomicU64::new(1_000_000));
        let clock = Manual(Arc::clone(&millis));
        let limiter = Arc::new(Limiter::with_local(LocalStore::with_clock(Box::new(clock))));
        (Test { limiter, limits }, millis)
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

    /// A shared store that never answers.
    #[derive(Debug)]
    struct Unreachable;

    impl LimitStore for Unreachable {
        fn admit<'a>(&'a self, _: &'a Charge) -> BoxFuture<'a, Result<Verdict, StoreError>> {
            std::future::ready(Err(StoreError("down".to_owned()))).boxed()
        }
        fn settle<'a>(
            &'a self,
            _: &'a Charge,
            _: Option<u64>,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            std::future::ready(Err(StoreError("down".to_owned()))).boxed()
        }
        fn renew<'a>(&'a self, _: &'a Charge) -> BoxFuture<'a, Result<(), StoreError>> {
            std::future::ready(Err(StoreError("down".to_owned()))).boxed()
        }
        fn lease(&self) -> Option<Duration> {
            None
        }
        fn status<'a>(
            &'a self,
            _: &'a str,
            _: &'a RateLimits,
        ) -> BoxFuture<'a, Result<Status, StoreError>> {
            std::future::ready(Err(StoreError("down".to_owned()))).boxed()
        }
    }

    #[test]
    fn an_unreachable_shared_store_fails_open_to_local_limits_or_closed() {
        let limits = RateLimits {
            requests_per_minute: Some(2),
            ..RateLimits::default()
        };
        let admit = |limiter: &Arc<Limiter>| {
            limiter
                .admit("a", limits, 0)
                .now_or_never()
                .expect("an unreachable store answers at once here")
        };
        // Open: this process enforces the same limits on its own.
        let open = Arc::new(Limiter::new().shared(Arc::new(Unreachable), OnFailure::Open));
        let kept = [admit(&open).expect("first"), admit(&open).expect("second")];
        assert!(
            matches!(admit(&open), Err(Refused::Limit(refusal)) if refusal.limit == "requests")
        );
        let status = open.status("a", &limits).now_or_never().expect("immediate");
        assert_eq!(status.requests.expect("limited").remaining, 0);
        drop(kept);
        // Closed: refused without a decision.
        let closed = Arc::new(Limiter::new().shared(Arc::new(Unreachable), OnFailure::Closed));
        assert_eq!(admit(&closed).err(), Some(Refused::Unavailable));
    }

    #[test]
    fn the_interval_is_whole_microseconds_as_in_the_shared_script() {
        assert_eq!(interval(3), Duration::from_secs(20));
        assert_eq!(interval(7), Duration::from_micros(8_571_428));
        assert_eq!(interval(600), Duration::from_millis(100));
        assert_eq!(interval(0), MINUTE);
        // Status from how far a bucket is ahead: as the script reports it.
        let limits = RateLimits {
            requests_per_minute: Some(3),
            tokens_per_minute: Some(600),
            concurrency: None,
        };
        let status = Status::ahead(&limits, Duration::from_secs(40), Duration::from_millis(150));
        assert_eq!(status.requests.expect("limited").remaining, 1);
        assert_eq!(status.tokens.expect("limited").remaining, 598);
        assert_eq!(
            status.tokens.expect("limited").reset,
            Duration::from_millis(150)
        );
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
