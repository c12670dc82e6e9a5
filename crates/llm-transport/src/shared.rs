//! State that replicas share through Redis (`--state-url redis://...`): the rate limits'
//! buckets and concurrency slots.
//!
//! Every decision is one atomic Lua script, one round trip: the script reads Redis's own
//! clock (`TIME`), so that replicas whose clocks differ still agree, and runs the same GCRA
//! arithmetic as [`LocalStore`](crate::ratelimit::LocalStore), in whole microseconds. Buckets
//! are strings holding their theoretical arrival time, set to expire when they are full
//! again; a client's running requests are a sorted set of slot ids scored by the end of their
//! lease, renewed while they run, so that a replica that dies frees its slots within a lease.
//! A client's three keys share a hash tag (`{client}`), so that they live on one node of a
//! cluster.
//!
//! The connection is `redis`'s `ConnectionManager`, made on first use, which reconnects by
//! itself; every call is bounded by [`SharedState::timeout`], so that an unreachable Redis
//! costs a request at most that long, and never hangs it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::Script;
use tokio::sync::mpsc;

use crate::config::{RateLimits, SharedState};
use crate::ratelimit::{Charge, LimitStore, Refusal, Status, StoreError, Verdict};
use crate::replay::ReplayLog;

/// How long a concurrency slot lasts without renewal; a running request renews it every
/// third of this.
const LEASE: Duration = Duration::from_secs(30);

/// The clock, a microsecond count, and the GCRA charge, shared by every script.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local minute = 60000000
local function int(x) return string.format('%d', x) end
local function tat_of(key) return tonumber(redis.call('GET', key) or '0') end
local function store(key, tat)
  if tat > now then
    redis.call('SET', key, int(tat), 'PX', int(math.ceil((tat - now) / 1000) + 1))
  else
    redis.call('DEL', key)
  end
end
";

/// KEYS: requests bucket, tokens bucket, running set. ARGV: requests per minute, tokens per
/// minute, concurrency (0 for none of each), tokens, slot id, lease in microseconds.
/// Returns `{1, 0, 0, requests ahead, tokens ahead}` when admitted, or `{0, limit, retry
/// after}` (limit 1: concurrency, 2: requests, 3: tokens), all in microseconds.
const ADMIT: &str = r"
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, lease = tonumber(ARGV[4]), tonumber(ARGV[6])
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', int(now))
  if redis.call('ZCARD', KEYS[3]) >= conc then return {0, 1, 1000000} end
end
local rtat, ttat = 0, 0
if rpm > 0 then
  rtat = math.max(tat_of(KEYS[1]), now) + math.floor(minute / rpm)
  if rtat - now > minute then return {0, 2, rtat - now - minute} end
end
if tpm > 0 then
  ttat = math.max(tat_of(KEYS[2]), now) + math.floor(minute / tpm) * math.min(tokens, tpm)
  if ttat - now > minute then return {0, 3, ttat - now - minute} end
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], int(now + lease), ARGV[5])
  redis.call('PEXPIRE', KEYS[3], int(math.ceil(lease / 1000)))
end
if rpm > 0 then store(KEYS[1], rtat) end
if tpm > 0 then store(KEYS[2], ttat) end
return {1, 0, 0, math.max(rtat - now, 0), math.max(ttat - now, 0)}
";

/// KEYS: tokens bucket, running set. ARGV: tokens per minute (0 for none), tokens to give
/// back, slot id.
const SETTLE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[3])
local tpm, units = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and units > 0 then
  store(KEYS[1], math.max(tat_of(KEYS[1]) - math.floor(minute / tpm) * units, now))
end
return 1
";

/// KEYS: running set. ARGV: slot id, lease in microseconds.
const RENEW: &str = r"
redis.call('ZADD', KEYS[1], 'XX', int(now + tonumber(ARGV[2])), ARGV[1])
redis.call('PEXPIRE', KEYS[1], int(math.ceil(tonumber(ARGV[2]) / 1000)))
return 1
";

/// KEYS: requests bucket, tokens bucket. Returns how far ahead each is, in microseconds.
const STATUS: &str = r"
return {math.max(tat_of(KEYS[1]) - now, 0), math.max(tat_of(KEYS[2]) - now, 0)}
";

/// The shared store in Redis.
pub(crate) struct RedisStore {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    prefix: String,
    replay_max_events: usize,
    /// Whether the last call was answered.
    reachable: AtomicBool,
    admit: Script,
    settle: Script,
    renew: Script,
    status: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("reachable", &self.reachable)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `config.url`; nothing is connected until the first call.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub(crate) fn new(config: &SharedState) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|error| StoreError(format!("`--state-url` is not a Redis URL: {error}")))?;
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Ok(Self {
            client,
            connection: Mutex::new(None),
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
            replay_max_events: config.replay_max_events,
            reachable: AtomicBool::new(true),
            admit: script(ADMIT),
            settle: script(SETTLE),
            renew: script(RENEW),
            status: script(STATUS),
        })
    }

    /// Whether the last call to Redis was answered.
    #[cfg(test)]
    pub(crate) fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Asks Redis whether it is there (for `/health`), within the timeout.
    pub(crate) async fn ping(&self) -> bool {
        let mut connection = self.connection();
        self.call(async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .await
        .is_ok()
    }

    /// The connection, made on first use. `ConnectionManager` reconnects by itself after
    /// losing it.
    fn connection(&self) -> ConnectionManager {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(connection) = &*slot {
            return connection.clone();
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(self.timeout);
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .expect("a connection manager without push subscriptions is valid");
        *slot = Some(connection.clone());
        connection
    }

    /// Runs one call within the timeout, noting whether Redis answered.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError(format!("Redis: {error}"))),
            Err(_) => Err(StoreError(format!(
                "Redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        };
        let was = self.reachable.swap(result.is_ok(), Ordering::Relaxed);
        match (&result, was) {
            (Err(error), true) => tracing::warn!(%error, "the shared state store is unreachable"),
            (Ok(_), false) => tracing::info!("the shared state store is reachable again"),
            _ => {}
        }
        result
    }

    /// The key of one of `client`'s values: `kind` is `rq`, `tk` or `run`.
    fn key(&self, client: &str, kind: &str) -> String {
        format!("{}rl:{{{client}}}:{kind}", self.prefix)
    }
}

/// A limit as the scripts take it: 0 for none.
fn arg(limit: Option<u32>) -> u32 {
    limit.unwrap_or(0)
}

fn micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}

/// The refusal the admit script's answer `{0, limit, retry after}` stands for.
fn refusal(limits: &RateLimits, code: i64, retry: i64) -> Refusal {
    let (limit, value) = match code {
        1 => ("concurrent requests", limits.concurrency),
        2 => ("requests", limits.requests_per_minute),
        _ => ("tokens", limits.tokens_per_minute),
    };
    Refusal {
        limit,
        value: value.unwrap_or(0),
        retry_after: micros(retry),
    }
}

impl LimitStore for RedisStore {
    fn admit<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<Verdict, StoreError>> {
        async move {
            let limits = &charge.limits;
            let mut connection = self.connection();
            let mut invocation = self.admit.prepare_invoke();
            invocation
                .key(self.key(&charge.client, "rq"))
                .key(self.key(&charge.client, "tk"))
                .key(self.key(&charge.client, "run"))
                .arg(arg(limits.requests_per_minute))
                .arg(arg(limits.tokens_per_minute))
                .arg(arg(limits.concurrency))
                .arg(charge.tokens)
                .arg(charge.id)
                .arg(u64::try_from(LEASE.as_micros()).unwrap_or(u64::MAX));
            let answer: Vec<i64> = self
                .call(async move { invocation.invoke_async(&mut connection).await })
                .await?;
            match answer.as_slice() {
                [1, _, _, requests, tokens] => Ok(Ok(Status::ahead(
                    limits,
                    micros(*requests),
                    micros(*tokens),
                ))),
                [0, code, retry, ..] => Ok(Err(refusal(limits, *code, *retry))),
                other => Err(StoreError(format!(
                    "the rate-limit script answered {other:?}"
                ))),
            }
        }
        .boxed()
    }

    fn settle<'a>(
        &'a self,
        charge: &'a Charge,
        used: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let refund = used.map_or(0, |used| charge.tokens.saturating_sub(used));
            let mut connection = self.connection();
            let mut invocation = self.settle.prepare_invoke();
            invocation
                .key(self.key(&charge.client, "tk"))
                .key(self.key(&charge.client, "run"))
                .arg(arg(charge.limits.tokens_per_minute))
                .arg(refund)
                .arg(charge.id);
            self.call(async move { invocation.invoke_async::<i64>(&mut connection).await })
                .await
                .map(drop)
        }
        .boxed()
    }

    fn renew<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut connection = self.connection();
            let mut invocation = self.renew.prepare_invoke();
            invocation
                .key(self.key(&charge.client, "run"))
                .arg(charge.id)
                .arg(u64::try_from(LEASE.as_micros()).unwrap_or(u64::MAX));
            self.call(async move { invocation.invoke_async::<i64>(&mut connection).await })
                .await
                .map(drop)
        }
        .boxed()
    }

    fn lease(&self) -> Option<Duration> {
        Some(LEASE)
    }

    fn status<'a>(
        &'a self,
        client: &'a str,
        limits: &'a RateLimits,
    ) -> BoxFuture<'a, Result<Status, StoreError>> {
        async move {
            let mut connection = self.connection();
            let mut invocation = self.status.prepare_invoke();
            invocation
                .key(self.key(client, "rq"))
                .key(self.key(client, "tk"));
            let answer: Vec<i64> = self
                .call(async move { invocation.invoke_async(&mut connection).await })
                .await?;
            match answer.as_slice() {
                [requests, tokens] => Ok(Status::ahead(limits, micros(*requests), micros(*tokens))),
                other => Err(StoreError(format!("the status script answered {other:?}"))),
            }
        }
        .boxed()
    }
}

/// How long a follower's claim on a stream lasts: the owner keeps the generation going past
/// its resume grace while a follower on another replica holds one.
const WATCH: Duration = Duration::from_secs(10);
/// How often a follower on another replica renews its claim, and the longest it blocks on
/// one read.
const WATCH_RENEW: Duration = Duration::from_secs(3);
/// How long the copy of a stream still running lives without news from its owner: a replica
/// that dies mid-stream leaves a copy that expires after this.
const LIVE_EXPIRY: Duration = Duration::from_secs(60);
/// Entries one read of a follower takes at most.
const READ_COUNT: usize = 512;

/// What Redis holds of a resumable stream, for a replica that does not own it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteLog {
    /// The keep-alive frame of the stream's dialect.
    pub(crate) keep_alive: Bytes,
    /// The first event still held: events before it were trimmed (`--state-replay-max-events`).
    pub(crate) first: usize,
    /// How many events there are so far.
    pub(crate) available: usize,
    /// Whether the last event is in.
    pub(crate) finished: bool,
}

/// The stream entry id of event `n`: `1-n`. The end of a stream is `2-0`, after every event.
fn entry_id(n: usize) -> String {
    format!("1-{n}")
}

/// The event number of an entry id, or `None` for the end.
fn event_number(id: &str) -> Option<usize> {
    id.strip_prefix("1-").and_then(|n| n.parse().ok())
}

const END_ID: &str = "2-0";

/// How far a copy has got.
enum Copied {
    /// Events `0..n` are in.
    Events(usize),
    /// The whole stream is in.
    Ended,
}

impl RedisStore {
    /// The keys of response `id`'s copy: its events (a stream), its keep-alive frame, and the
    /// claim of followers on other replicas. One hash tag keeps them on one node.
    fn replay_keys(&self, id: &str) -> (String, String, String) {
        let base = format!("{}replay:{{{id}}}", self.prefix);
        (base.clone(), format!("{base}:ka"), format!("{base}:watch"))
    }

    /// Copies a replay log into Redis as it grows, until it ends: every new batch of events is
    /// one round trip (`XADD` with the events' own numbers as ids, in order). When Redis
    /// cannot be reached the copy waits and catches up from the local log, so that it is
    /// always a prefix of the stream: a follower elsewhere sees no gap and no duplicate. The
    /// finished copy expires `ttl` after the stream's end; one still running expires a minute
    /// after its owner's last word.
    pub(crate) async fn mirror(self: Arc<Self>, log: Arc<ReplayLog>, ttl: Duration) {
        let (key, keep_alive_key, _) = self.replay_keys(log.id());
        let mut events = log.subscribe();
        let mut cursor = 0usize;
        let mut started = false;
        let mut given_up_at: Option<tokio::time::Instant> = None;
        let mut resync = false;
        loop {
            if resync {
                // A batch failed part way: start again after what Redis holds, so that no
                // event is written twice.
                match self.copied(&key).await {
                    Ok(Copied::Ended) => return,
                    Ok(Copied::Events(count)) => cursor = count,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
                resync = false;
            }
            let (frames, finished) = {
                let state = events.borrow_and_update();
                let frames = state.frames.get(cursor..).unwrap_or_default().to_vec();
                (frames, state.finished)
            };
            let expiry = if finished { ttl } else { LIVE_EXPIRY.max(ttl) };
            let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut pipe = redis::pipe();
            if !started {
                pipe.cmd("SET")
                    .arg(&keep_alive_key)
                    .arg(log.keep_alive().as_ref())
                    .arg("PX")
                    .arg(expiry_ms)
                    .ignore();
            }
            for (offset, frame) in frames.iter().enumerate() {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg(self.replay_max_events)
                    .arg(entry_id(cursor + offset))
                    .arg("f")
                    .arg(frame.as_ref())
                    .ignore();
            }
            if finished {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg(self.replay_max_events)
                    .arg(END_ID)
                    .arg("end")
                    .arg(1)
                    .ignore();
            }
            pipe.cmd("PEXPIRE").arg(&key).arg(expiry_ms).ignore();
            pipe.cmd("PEXPIRE")
                .arg(&keep_alive_key)
                .arg(expiry_ms)
                .ignore();
            let mut connection = self.connection();
            match self
                .call(async move { pipe.query_async::<()>(&mut connection).await })
                .await
            {
                Ok(()) => {
                    cursor += frames.len();
                    started = true;
                    given_up_at = None;
                    if finished {
                        return;
                    }
                }
                Err(error) => {
                    resync = true;
                    // Retry from the local log; past the TTL there is nothing worth copying.
                    let since = *given_up_at.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > LIVE_EXPIRY.max(ttl) {
                        tracing::warn!(%error, id = log.id(), "a resumable stream was not copied to the shared store");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
            tokio::select! {
                changed = events.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                // Silence (a long prefill): keep the copy from expiring.
                () = tokio::time::sleep(LIVE_EXPIRY / 3) => {}
            }
        }
    }

    /// How far the copy at `key` has got.
    async fn copied(&self, key: &str) -> Result<Copied, StoreError> {
        let mut connection = self.connection();
        let mut command = redis::cmd("XREVRANGE");
        command.arg(key).arg("+").arg("-").arg("COUNT").arg(1);
        let last: StreamRangeReply = self
            .call(async move { command.query_async(&mut connection).await })
            .await?;
        Ok(match last.ids.first() {
            Some(entry) if entry.id == END_ID => Copied::Ended,
            Some(entry) => Copied::Events(event_number(&entry.id).map_or(0, |n| n + 1)),
            None => Copied::Events(0),
        })
    }

    /// What Redis holds of response `id`, in one round trip; `None` when nothing.
    ///
    /// # Errors
    /// Redis did not answer.
    pub(crate) async fn remote_log(&self, id: &str) -> Result<Option<RemoteLog>, StoreError> {
        let (key, keep_alive_key, _) = self.replay_keys(id);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&keep_alive_key);
        pipe.cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        pipe.cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(2);
        let mut connection = self.connection();
        let (keep_alive, first, last): (Option<Vec<u8>>, StreamRangeReply, StreamRangeReply) = self
            .call(async move { pipe.query_async(&mut connection).await })
            .await?;
        let Some(keep_alive) = keep_alive else {
            return Ok(None);
        };
        let finished = last.ids.first().is_some_and(|entry| entry.id == END_ID);
        let available = last
            .ids
            .iter()
            .find_map(|entry| event_number(&entry.id))
            .map_or(0, |n| n + 1);
        let first = first
            .ids
            .first()
            .and_then(|entry| event_number(&entry.id))
            .unwrap_or(available);
        Ok(Some(RemoteLog {
            keep_alive: Bytes::from(keep_alive),
            first,
            available,
            finished,
        }))
    }

    /// Whether a follower on another replica holds a claim on response `id`: its owner then
    /// keeps the generation going past its grace. Unreachable Redis counts as none.
    pub(crate) async fn watched(&self, id: &str) -> bool {
        let (_, _, watch) = self.replay_keys(id);
        let mut connection = self.connection();
        self.call(async move {
            redis::cmd("EXISTS")
                .arg(&watch)
                .query_async::<i64>(&mut connection)
                .await
        })
        .await
        .is_ok_and(|count| count > 0)
    }

    /// Sends response `id`'s events from number `from` to one client, from Redis, then
    /// follows them live as the owner copies them (`XREAD BLOCK` on a connection of its own,
    /// so that blocking reads never hold up the limits' calls). The follower renews its claim
    /// on the stream with each read. It ends at the stream's end, when the client leaves, or
    /// when Redis or the copy goes away (the client then reconnects with its last id).
    pub(crate) async fn follow(
        self: Arc<Self>,
        id: String,
        remote: RemoteLog,
        from: usize,
        prelude: Option<Bytes>,
        body: mpsc::Sender<Bytes>,
        keep_alive: Duration,
    ) {
        if let Some(prelude) = prelude {
            if body.send(prelude).await.is_err() {
                return;
            }
        }
        let (key, _, watch) = self.replay_keys(&id);
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None);
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let Ok(mut connection) = self.call(connect).await else {
            return;
        };
        let block = WATCH_RENEW.min(keep_alive).max(Duration::from_millis(100));
        let mut after = from
            .checked_sub(1)
            .map_or_else(|| "0-0".to_owned(), entry_id);
        let mut next = from;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&watch)
                .arg(1)
                .arg("PX")
                .arg(u64::try_from(WATCH.as_millis()).unwrap_or(u64::MAX))
                .ignore();
            pipe.cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(1000))
                .arg("STREAMS")
                .arg(&key)
                .arg(&after);
            pipe.cmd("EXISTS").arg(&key);
            let read = tokio::time::timeout(block + self.timeout, async {
                pipe.query_async::<(Option<StreamReadReply>, i64)>(&mut connection)
                    .await
            });
            let (reply, exists) = tokio::select! {
                biased;
                () = body.closed() => return,
                read = read => match read {
                    Ok(Ok(reply)) => reply,
                    // Redis went away, or too slow: the client reconnects with its last id.
                    _ => return,
                },
            };
            let entries = reply
                .map(|reply| {
                    reply
                        .keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            if entries.is_empty() {
                if exists == 0 {
                    // The copy expired: its owner is gone.
                    return;
                }
                if quiet_since.elapsed() >= keep_alive {
                    if body.send(remote.keep_alive.clone()).await.is_err() {
                        return;
                    }
                    quiet_since = tokio::time::Instant::now();
                }
                continue;
            }
            for entry in entries {
                if entry.id == END_ID {
                    return;
                }
                // Events arrive in order from `from`; anything else is a copy that lost events
                // (trimmed), which a client must not read as whole.
                if event_number(&entry.id) != Some(next) {
                    return;
                }
                let Some(frame) = entry.get::<Vec<u8>>("f") else {
                    return;
                };
                if body.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
                quiet_since = tokio::time::Instant::now();
                next += 1;
                after = entry.id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a real `redis-server` of the test's own (`.ci/run` installs it; set
    //! `LLM_STREAM_SKIP_REDIS=1` to skip these where it cannot be installed).

    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;

    use super::*;
    use crate::ratelimit::{Limiter, LocalStore, Refused};

    /// A `redis-server` on a free port, killed when dropped.
    struct Server {
        child: Child,
        port: u16,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn redis() -> Option<Server> {
        if std::env::var_os("LLM_STREAM_SKIP_REDIS").is_some() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect(
                "redis-server runs (apt-get install -y redis-server, or set \
                 LLM_STREAM_SKIP_REDIS=1 to skip the tests that need it)",
            );
        let server = Server { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not listen on {port}");
    }

    fn store(server: &Server) -> Arc<Limiter> {
        let config = SharedState::new(format!("redis://127.0.0.1:{}", server.port));
        let store = RedisStore::new(&config).expect("a valid URL");
        Arc::new(Limiter::new().shared(Arc::new(store), crate::config::OnFailure::Closed))
    }

    async fn admit(
        limiter: &Arc<Limiter>,
        client: &str,
        limits: RateLimits,
        tokens: u64,
    ) -> Result<crate::ratelimit::Admission, Refusal> {
        limiter
            .admit(client, limits, tokens)
            .await
            .map_err(|refused| match refused {
                Refused::Limit(refusal) => refusal,
                Refused::Unavailable => panic!("Redis is up"),
            })
    }

    #[tokio::test]
    async fn the_script_decides_as_the_local_limiter_does() {
        let Some(server) = redis() else { return };
        let shared = store(&server);
        let local = Arc::new(Limiter::with_local(LocalStore::new()));
        // Units of 12 s and 2 s: the two clocks, a fraction of a millisecond apart, then agree
        // on every count as long as the test runs under 2 s.
        let limits = RateLimits {
            requests_per_minute: Some(5),
            tokens_per_minute: Some(30),
            concurrency: Some(3),
        };
        // One schedule, both limiters: the same admissions, refusals and remaining counts.
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut held_shared, mut held_local) = (Vec::new(), Vec::new());
        for step in 0..40 {
            let tokens = rng.u64(0..12);
            let (a, b) = (
                admit(&shared, "c", limits, tokens).await,
                admit(&local, "c", limits, tokens).await,
            );
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        a.status().requests.map(|q| q.remaining),
                        b.status().requests.map(|q| q.remaining),
                        "step {step}"
                    );
                    assert_eq!(
                        a.status().tokens.map(|q| q.remaining),
                        b.status().tokens.map(|q| q.remaining),
                        "step {step}"
                    );
                    held_shared.push(a);
                    held_local.push(b);
                }
                (Err(a), Err(b)) => {
                    assert_eq!((a.limit, a.value), (b.limit, b.value), "step {step}");
                    let gap = a.retry_after.abs_diff(b.retry_after);
                    assert!(
                        gap < Duration::from_millis(500),
                        "step {step}: {a:?} vs {b:?}"
                    );
                }
                (a, b) => panic!("step {step}: Redis {a:?}, local {b:?}"),
            }
            if rng.bool() && !held_shared.is_empty() {
                let used = rng.u64(0..8);
                let (mut a, mut b) = (held_shared.remove(0), held_local.remove(0));
                a.used(used);
                b.used(used);
                drop((a, b));
                // The shared settle runs in a task: let it land before the next decision.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    #[tokio::test]
    async fn slots_and_unused_tokens_come_back_when_a_request_ends() {
        let Some(server) = redis() else { return };
        let limiter = store(&server);
        let limits = RateLimits {
            requests_per_minute: None,
            tokens_per_minute: Some(600),
            concurrency: Some(2),
        };
        let mut first = admit(&limiter, "k", limits, 500).await.expect("fits");
        assert_eq!(first.status().tokens.expect("limited").remaining, 100);
        let second = admit(&limiter, "k", limits, 50).await.expect("fits");
        let refused = admit(&limiter, "k", limits, 1)
            .await
            .expect_err("two running");
        assert_eq!(refused.limit, "concurrent requests");
        first.used(120);
        drop((first, second));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // 380 came back: 430 left; both slots are free.
        let third = admit(&limiter, "k", limits, 430)
            .await
            .expect("the refund made room");
        assert_eq!(third.status().tokens.expect("limited").remaining, 0);
        let refused = admit(&limiter, "k", limits, 20).await.expect_err("tokens");
        assert_eq!(refused.limit, "tokens");
        assert!(refused.retry_after > Duration::from_secs(1));
        // Another client, and the status read for the headers.
        let other = limiter.status("other", &limits).await;
        assert_eq!(other.tokens.expect("limited").remaining, 600);
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_reported_within_the_timeout_and_recovers() {
        let Some(server) = redis() else { return };
        let port = server.port;
        let config = SharedState::new(format!("redis://127.0.0.1:{port}"));
        let store = Arc::new(RedisStore::new(&config).expect("a valid URL"));
        assert!(store.ping().await);
        drop(server);
        let started = std::time::Instant::now();
        assert!(!store.ping().await);
        assert!(!store.reachable());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // The same port again: the connection comes back by itself.
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let _server = Server { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.ping().await {
            assert!(
                std::time::Instant::now() < deadline,
                "no reconnection in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(store.reachable());
    }

    #[tokio::test]
    async fn a_copied_log_is_followed_from_another_replica_with_no_gap_or_duplicate() {
        use crate::config::ResumeConfig;
        use crate::replay::ReplayStore;

        let Some(server) = redis() else { return };
        let mut config = SharedState::new(format!("redis://127.0.0.1:{}", server.port));
        config.replay_max_events = 1000;
        let store = Arc::new(RedisStore::new(&config).expect("a valid URL"));
        let logs = ReplayStore::new(ResumeConfig::default());
        let log = logs
            .create("chatcmpl-x", Bytes::from_static(b": keep-alive\n\n"))
            .expect("room");
        let frame = |n: usize| Bytes::from(format!("id: chatcmpl-x:{n}\ndata: {n}\n\n"));
        log.append((0..3).map(frame).collect());
        let mirror =
            tokio::spawn(Arc::clone(&store).mirror(Arc::clone(&log), Duration::from_secs(60)));
        // The copy arrives: three events, still running.
        let mut remote = None;
        for _ in 0..100 {
            remote = store.remote_log("chatcmpl-x").await.expect("Redis answers");
            if remote.as_ref().is_some_and(|remote| remote.available == 3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let remote = remote.expect("the copy exists");
        assert_eq!(
            (remote.first, remote.available, remote.finished),
            (0, 3, false)
        );
        assert_eq!(&remote.keep_alive[..], b": keep-alive\n\n");
        assert_eq!(store.remote_log("unknown").await.expect("answers"), None);

        // A follower from event 1 gets 1, 2, then the live rest as it is copied.
        let (sender, mut receiver) = mpsc::channel(64);
        let follower = tokio::spawn(Arc::clone(&store).follow(
            "chatcmpl-x".to_owned(),
            remote,
            1,
            None,
            sender,
            Duration::from_secs(15),
        ));
        for batch in [3..5, 5..6, 6..9] {
            tokio::time::sleep(Duration::from_millis(30)).await;
            logs.append(&log, batch.map(frame).collect()).expect("room");
        }
        assert!(
            store.watched("chatcmpl-x").await,
            "the follower claims the stream"
        );
        logs.finish(&log);
        mirror.await.expect("the mirror ends with the stream");
        follower
            .await
            .expect("the follower ends at the stream's end");
        let mut got = Vec::new();
        while let Ok(frame) = receiver.try_recv() {
            got.push(frame);
        }
        let want: Vec<Bytes> = (1..9).map(frame).collect();
        assert_eq!(got, want);
        let remote = store
            .remote_log("chatcmpl-x")
            .await
            .expect("answers")
            .expect("kept");
        assert_eq!((remote.available, remote.finished), (9, true));
    }

    #[test]
    fn entry_ids_are_the_event_numbers_and_the_end_sorts_after_them() {
        assert_eq!(entry_id(0), "1-0");
        assert_eq!(event_number(&entry_id(41)), Some(41));
        assert_eq!(event_number(END_ID), None);
        assert_eq!(event_number("0-1"), None);
    }
}
